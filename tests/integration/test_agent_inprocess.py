"""The agent against a real registry (mutual TLS, SQLite) and the fake Kubernetes API, all in this trio loop:
seed 003's selector example, label edits, deletes, dynamic labels, health, static shadowing and explain."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from agent.config import AgentConfig, parse_config
from agent.identity import HOST_ID_FILE, obtain_identity
from agent.service import Agent
from registry.client import RegistryClient, join
from registry.core.errors import AccessDenied
from registry.core.identity import generate_private_key, make_csr
from registry.server.serve import RegistryInfo
from tests.fakes.kube_api import FakeKube
from tests.helpers import cluster_doc, kpctl

SEED_SELECTORS = [
    {"labels": {"env": "prod", "region": "us-east-2"}},
    {"labels": {"env": "test", "region": "us-west-1"}},
]


def agent_config(
    registry: RegistryInfo, token: str, data_dir: Path, resources: list[dict[str, Any]], **kube: Any
) -> AgentConfig:
    doc: dict[str, Any] = {
        "kubeport": {
            "registry": registry.address,
            "token": token,
            "ca_pin": registry.ca_pin,
            "data_dir": str(data_dir),
        },
        "kubernetes_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "resources": resources, **kube},
    }
    return parse_config(yaml.safe_dump(doc), source="test agent")


async def admin(registry: RegistryInfo) -> RegistryClient:
    return RegistryClient.from_identity_file(registry.admin_identity)


async def new_token(registry: RegistryInfo) -> str:
    async with await admin(registry) as client:
        return str((await client.generate_token(ttl_seconds=600))["metadata"]["name"])


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll an async predicate until it returns something truthy (never sleeps blindly: bounded polling)."""
    with trio.move_on_after(timeout):
        while True:
            result = await predicate()
            if result:
                return result
            await trio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def served_names(registry: RegistryInfo) -> set[str]:
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    return {s["metadata"]["name"] for s in servers}


async def test_seed_selector_example_and_lifecycle(
    registry: RegistryInfo, fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path
) -> None:
    kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
    config = agent_config(registry, await new_token(registry), tmp_path / "agent", SEED_SELECTORS)
    agent = Agent(config)
    await nursery.start(agent.serve)

    async with await admin(registry) as client:
        await client.create(cluster_doc("prod-west", kubeconfig, {"env": "prod", "region": "us-west-1"}))
        await client.create(cluster_doc("test-west", kubeconfig, {"env": "test", "region": "us-west-1"}))

    await wait_for(lambda: _has(registry, "test-west"), what="test-west to be served")
    assert await served_names(registry) == {"test-west"}

    # the heartbeat: secret-free copy, labels, health from the fake (the admin token may impersonate)
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    (server,) = servers
    assert "kubeconfig" not in server["spec"]["cluster"].get("spec", {})
    assert server["spec"]["cluster"]["metadata"]["labels"]["env"] == "test"

    async def healthy() -> bool:
        async with await admin(registry) as client:
            items, _ = await client.list("kube_server")
        return bool(items) and items[0]["spec"].get("health", {}).get("status") == "healthy"

    await wait_for(healthy, what="health to become healthy")

    # explain says why prod-west is not served
    r = await kpctl("kube", "explain", "prod-west")
    assert r.code == 0, r.err
    assert 'label "region" is "us-west-1"' in r.out or "region" in r.out

    # a label edit that stops matching unregisters within 2 s
    async with await admin(registry) as client:
        current = await client.get("kube_cluster", "test-west")
        current["metadata"]["labels"]["env"] = "staging"
        with trio.fail_after(2):
            await client.update(current)
            await wait_for(lambda: _gone(registry, "test-west"), timeout=2, what="test-west to be unregistered")

    # and one that matches again registers it again; delete unregisters
    async with await admin(registry) as client:
        current = await client.get("kube_cluster", "test-west")
        current["metadata"]["labels"]["env"] = "test"
        await client.update(current)
    await wait_for(lambda: _has(registry, "test-west"), what="test-west to be served again")
    assert (await kpctl("rm", "kube_clusters/test-west")).code == 0
    await wait_for(lambda: _gone(registry, "test-west"), timeout=2, what="test-west to go after rm")


async def _has(registry: RegistryInfo, name: str) -> bool:
    return name in await served_names(registry)


async def _gone(registry: RegistryInfo, name: str) -> bool:
    return name not in await served_names(registry)


async def test_dynamic_label_flips_registration(
    registry: RegistryInfo, fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path
) -> None:
    flag = tmp_path / "tier"
    flag.write_text("gold\n")
    config = agent_config(
        registry,
        await new_token(registry),
        tmp_path / "agent",
        [{"labels": {"tier": "gold"}}],
        allowed_label_commands=["cat"],
    )
    agent = Agent(config)
    await nursery.start(agent.serve)
    async with await admin(registry) as client:
        await client.create(
            cluster_doc(
                "dyn",
                fake_kube.kubeconfig_yaml(token="admin-token"),
                {"env": "x"},
                dynamic_labels={"tier": {"period": "1s", "command": ["cat", str(flag)]}},
            )
        )
    await wait_for(lambda: _has(registry, "dyn"), what="dyn to be served via its dynamic label")
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    assert servers[0]["spec"]["cluster"]["spec"]["dynamic_labels"]["tier"]["result"] == "gold"
    flag.write_text("silver\n")
    await wait_for(lambda: _gone(registry, "dyn"), timeout=5, what="dyn to be unregistered after its label changed")
    flag.write_text("gold\n")
    await wait_for(lambda: _has(registry, "dyn"), timeout=5, what="dyn to come back")


@pytest.mark.parametrize(
    ("command", "expect"),
    [
        (["sh", "-c", "echo why >&2; exit 3"], "exit status 3 output:  stderr: why"),
        (["/nonexistent/label-command"], 'command not allowed on this agent: "/nonexistent/label-command"'),
        (["sh-but-not-quite", "-c", "exit 0"], "command not allowed on this agent"),
    ],
)
async def test_failing_label_commands_report_their_error(
    registry: RegistryInfo, fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path, command: list[str], expect: str
) -> None:
    config = agent_config(
        registry, await new_token(registry), tmp_path / "agent", [{"labels": {"*": "*"}}], allowed_label_commands=["sh"]
    )
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        await client.create(
            cluster_doc(
                "broken-label",
                fake_kube.kubeconfig_yaml(token="admin-token"),
                {},
                dynamic_labels={"x": {"period": "1h", "command": command}},
            )
        )
    await wait_for(lambda: _has(registry, "broken-label"), what="cluster with a failing label to be served")
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    assert expect in servers[0]["spec"]["cluster"]["spec"]["dynamic_labels"]["x"]["result"]


async def test_host_ids_come_from_the_registry_and_cannot_be_taken_over(registry: RegistryInfo, tmp_path: Path) -> None:
    """Issue 7 section 6: the agent stores the id the registry assigned; a second joiner that copied the
    first agent's host_uuid file (and holds a valid token) gets a new id instead of the first agent's."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    token = await new_token(registry)
    everything = [{"labels": {"*": "*"}}]
    first_identity = await obtain_identity(agent_config(registry, token, first_dir, everything))
    first = first_identity.identity()
    assert first.host_id is not None
    assert (first_dir / HOST_ID_FILE).read_text().strip() == first.host_id

    second_dir.mkdir(mode=0o700)
    (second_dir / HOST_ID_FILE).write_text(first.host_id + "\n")  # a copied (or guessed) host id
    second = (await obtain_identity(agent_config(registry, token, second_dir, everything))).identity()
    assert second.host_id not in (None, first.host_id)
    assert (second_dir / HOST_ID_FILE).read_text().strip() == second.host_id

    # Asking for the first agent's id outright is refused, with a reason.
    with pytest.raises(AccessDenied, match="already joined"):
        await join(
            registry.address,
            token=token,
            nodename="intruder",
            csr_pem=make_csr(generate_private_key(), "intruder"),
            ca_pems=first_identity.ca_pems,
            host_id=first.host_id,
        )
