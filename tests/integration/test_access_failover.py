"""Agent failover (issue 9 §9): two agents serve one cluster; the agent carrying a ``kubectl get pods -w`` loses
its tunnel mid-watch. The watch ends cleanly (kubectl exits, saying the watch broke, instead of hanging), and
the next kubectl call is routed through the other agent.

Which agent carried a connection is read from the front door's ``kube.connection.start`` audit events (their
``agent`` field is the host id of the agent whose tunnel carried it).
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import AgentConfig
from agent.service import Agent, AgentInfo
from registry.server.serve import RegistryInfo
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import SKIP_REASON, find_kubectl, read_until, started_kubectl
from tests.helpers import KUBE_ACCESS, cluster_doc, kpctl
from tests.integration.access_setup import AccessRegistry, access_registry, kubectl_until_routed  # noqa: F401
from tests.integration.test_agent_inprocess import admin, agent_config, new_token, wait_for


async def start_agent(nursery: trio.Nursery, config: AgentConfig) -> tuple[AgentInfo, trio.CancelScope]:
    """An agent in its own cancel scope: cancelling the scope stops the agent and drops its tunnel."""
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[AgentInfo]) -> None:
        with scope:
            await Agent(config).serve(task_status=task_status)

    info: AgentInfo = await nursery.start(run)
    return info, scope


async def serving_hosts(registry: RegistryInfo, cluster: str) -> set[str]:
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    return {str(s["spec"]["host_id"]) for s in servers if s["metadata"]["name"] == cluster}


async def connection_events(registry: RegistryInfo, event: str) -> list[dict[str, Any]]:
    async with await admin(registry) as client:
        page, _ = await client.events_page(limit=500, event=event)
    return [dict(e) for e in page if e.get("user") == "alice"]


async def open_connections(registry: RegistryInfo) -> list[dict[str, Any]]:
    """alice's routed connections the front door has seen start and not (yet) end."""
    ended = {(e["agent"], e["client"]) for e in await connection_events(registry, "kube.connection.end")}
    return [
        e for e in await connection_events(registry, "kube.connection.start") if (e["agent"], e["client"]) not in ended
    ]


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_a_tunnel_dropped_mid_watch_ends_the_watch_and_the_next_call_uses_another_agent(
    version: str,
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    kubectl = find_kubectl(version)
    if kubectl is None:
        pytest.skip(SKIP_REASON)
    registry = access_registry.info
    fake_kube.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake_kube.add_pod("web-1")

    agents: dict[str, trio.CancelScope] = {}
    for name in ("agent-a", "agent-b"):
        config = agent_config(registry, await new_token(registry), tmp_path / name, [{"labels": {"*": "*"}}])
        info, scope = await start_agent(nursery, config)
        agents[info.host_id] = scope
    assert len(agents) == 2
    async with await admin(registry) as client:
        await client.create(cluster_doc("mycluster", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "prod"}))
    both = set(agents)
    await wait_for(lambda: _contains(serving_hosts(registry, "mycluster"), both), what="both agents serving mycluster")

    (tmp_path / "kube-access.yaml").write_text(KUBE_ACCESS)
    assert (await kpctl("create", "-f", str(tmp_path / "kube-access.yaml"))).code == 0
    assert (await kpctl("users", "add", "alice", "--roles=kube-access")).code == 0
    kubeconfig = tmp_path / "kubeconfig"
    signed = await kpctl("auth", "sign", "--user=alice", "--format=kubernetes", f"--out={kubeconfig}", "--ttl=1h")
    assert signed.code == 0, signed.err
    home = tmp_path / "h"
    # Until both tunnels are up the front door may answer 503; one routed call proves at least one is.
    code, out, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=home)
    assert code == 0 and "web-1" in out, err
    await wait_for(lambda: _all_ended(registry), what="the first call's connection to end")

    async with started_kubectl(kubectl, ["get", "pods", "-w", "-v=4"], kubeconfig=kubeconfig, home=home) as watch:
        await read_until(watch.stdout, b"web-1", timeout=30)
        await fake_kube.wait_request(lambda r: r.query.get("watch") in (["true"], ["1"]))
        opened = await wait_for(lambda: open_connections(registry), what="the watch's connection in the audit log")
        carriers = {e["agent"] for e in opened}
        assert len(carriers) == 1, opened
        (carrier,) = carriers
        assert carrier in agents
        other = (both - {carrier}).pop()

        assert watch.returncode is None, "the watch is open when the tunnel drops"
        agents[carrier].cancel()  # the carrying agent stops: its tunnel drops under the open watch
        with trio.fail_after(30):
            returncode = await watch.wait()
        stderr = (await _read_all(watch.stderr)).decode()
    # What real kubectl (1.27 and 1.33) does when the connection under its watch is cut: client-go's stream
    # watcher reports the truncated body ("Unexpected EOF during watch stream event decoding", logged at -v=4)
    # and closes the watch, and ``kubectl get -w`` returns with exit 0, as for a watch the server ended. It
    # does not hang, and the cut is visible as a broken stream, not a clean end of the watch.
    assert returncode == 0, stderr
    assert "Unexpected EOF during watch stream event decoding" in stderr, stderr

    # The next call goes through the other agent, the dropped one is never tried again.
    before = {(e["agent"], e["client"]) for e in await connection_events(registry, "kube.connection.start")}
    code, out, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=home)
    assert code == 0 and "web-1" in out, err

    async def new_starts() -> list[dict[str, Any]]:
        starts = await connection_events(registry, "kube.connection.start")
        return [e for e in starts if (e["agent"], e["client"]) not in before]

    routed = await wait_for(new_starts, what="the audit event of the call after the drop")
    assert {e["agent"] for e in routed} == {other}


async def _read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def _contains(hosts: Awaitable[set[str]], wanted: set[str]) -> bool:
    return wanted <= await hosts


async def _all_ended(registry: RegistryInfo) -> bool:
    return not await open_connections(registry)
