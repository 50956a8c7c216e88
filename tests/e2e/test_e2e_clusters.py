"""End to end, real processes: what an agent does with awkward clusters.

A static cluster shadowing a dynamic one of the same name; dynamic label commands that hang, fail or do
not exist (and one whose output flips registration); a kubeconfig the registry accepts but the agent cannot
use; a cluster whose API server is unreachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.core.resources import ORIGIN_LABEL
from tests.e2e.e2e_helpers import (
    AgentProc,
    Harness,
    RegistryProc,
    cluster_doc,
    free_port,
    parse_table,
    served,
    server_of,
    write_agent_config,
)
from tests.fakes.kube_api import FakeKube
from tests.helpers import kpctl

pytestmark = pytest.mark.slow

EVERYTHING = [{"labels": {"*": "*"}}]


async def start(h: Harness, **config: Any) -> tuple[RegistryProc, AgentProc]:
    health_interval = config.pop("health_interval", None)
    label_timeout = config.pop("label_timeout", None)
    registry = await h.start_registry()
    path, data_dir = await write_agent_config(h, registry, "agent", **config)
    agent = await h.start_agent(
        path, registry, data_dir=data_dir, health_interval=health_interval, label_timeout=label_timeout
    )
    return registry, agent


def dynamic_results(server: dict[str, Any]) -> dict[str, str]:
    labels = server["spec"]["cluster"]["spec"].get("dynamic_labels") or {}
    return {key: str(value.get("result", "")) for key, value in labels.items()}


async def test_static_cluster_shadows_a_dynamic_one(fake_kube: FakeKube, tmp_path: Path) -> None:
    static = tmp_path / "static-kubeconfig.yaml"
    static.write_bytes(fake_kube.kubeconfig_yaml(token="admin-token", context="shadow"))
    async with Harness(tmp_path) as h:
        registry, agent = await start(h, resources=EVERYTHING, kubeconfig_file=static)
        assert "static clusters: shadow" in agent.child.stdout()

        async def origin_of_shadow() -> str | None:
            server = await server_of(registry, "shadow", agent.host_id)
            return None if server is None else str(server["spec"]["cluster"]["metadata"]["labels"].get(ORIGIN_LABEL))

        assert await h.wait_for(origin_of_shadow, timeout=10, what="the static shadow to be served") == "config-file"

        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
        await registry.client.create(cluster_doc("shadow", kubeconfig, {"env": "dynamic"}))
        # Watch events arrive in order: once "marker" is served the agent has reconciled "shadow" too.
        await registry.client.create(cluster_doc("marker", kubeconfig, {"env": "marker"}))

        async def marker_served() -> bool:
            return await served(registry, agent.host_id) == {"shadow", "marker"}

        await h.wait_for(marker_served, timeout=10, what="marker to be served next to the static shadow")
        server = await server_of(registry, "shadow", agent.host_id)
        assert server is not None
        labels = server["spec"]["cluster"]["metadata"]["labels"]
        assert labels[ORIGIN_LABEL] == "config-file"
        assert "env" not in labels

        # Deleting the dynamic one leaves the static one alone.
        await registry.client.delete("kube_cluster", "shadow")
        await registry.client.delete("kube_cluster", "marker")

        async def marker_gone() -> bool:
            return await served(registry, agent.host_id) == {"shadow"}

        await h.wait_for(marker_gone, timeout=10, what="marker to go while the static shadow stays")
        assert await origin_of_shadow() == "config-file"
        assert "unregistered kube_cluster shadow" not in agent.child.stderr()


async def test_hung_failing_missing_and_flipping_label_commands(fake_kube: FakeKube, tmp_path: Path) -> None:
    flag = tmp_path / "tier"
    flag.write_text("gold\n")
    resources = [{"labels": {"kind": "probe"}}, {"labels": {"tier": "gold"}}]
    service_command = {"name": "agent-host", "command": ["echo", "e2e-host"], "period": "1h"}
    async with Harness(tmp_path) as h:
        registry, agent = await start(
            h,
            resources=resources,
            commands=[service_command],
            label_timeout=1.0,
            allowed_label_commands=["sleep", "sh", "cat"],  # the host admin allows these, and only these
        )
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
        commands = {
            "hung": ["sleep", "30"],
            "failing": ["sh", "-c", "echo oops; exit 3"],
            "missing": ["/nonexistent/label-command"],
        }
        for name, argv in commands.items():
            spec = {"dynamic_labels": {"probe": {"period": "1h", "command": argv}}}
            await registry.client.create(cluster_doc(name, kubeconfig, {"kind": "probe"}, **spec))
        await registry.client.create(cluster_doc("plain", kubeconfig, {"kind": "probe"}))
        flip = {"dynamic_labels": {"tier": {"period": "1s", "command": ["cat", str(flag)]}}}
        await registry.client.create(cluster_doc("flip", kubeconfig, {"kind": "flip"}, **flip))

        everything = {"hung", "failing", "missing", "plain", "flip"}

        async def all_served() -> bool:
            return await served(registry, agent.host_id) == everything

        # The hung command holds its cluster back only until the 1 s label timeout.
        await h.wait_for(all_served, timeout=15, what="every probe cluster to be served")
        results = {}
        for name in everything:
            server = await server_of(registry, name, agent.host_id)
            assert server is not None
            results[name] = dynamic_results(server)
        assert "timed out after 1s" in results["hung"]["probe"]
        assert "exit status 3" in results["failing"]["probe"]
        assert "oops" in results["failing"]["probe"]
        assert "command not allowed on this agent" in results["missing"]["probe"]  # not on the allow-list
        assert results["flip"]["tier"] == "gold"
        # The service's own command label rides on every heartbeat.
        assert {r["agent-host"] for r in results.values()} == {"e2e-host"}

        # A dynamic label whose output changes flips registration both ways.
        flag.write_text("silver\n")

        async def flip_gone() -> bool:
            return "flip" not in await served(registry, agent.host_id)

        await h.wait_for(flip_gone, timeout=5, what="flip to be unregistered once its tier label is silver")
        flag.write_text("gold\n")

        async def flip_back() -> bool:
            return "flip" in await served(registry, agent.host_id)

        await h.wait_for(flip_back, timeout=5, what="flip to be registered again once its tier label is gold")
        assert agent.child.returncode is None
        assert await served(registry, agent.host_id) == everything


def proxied_kubeconfig(fake_kube: FakeKube) -> bytes:
    """A kubeconfig the registry accepts (valid Kubernetes: a proxy plus a TLS server name) but this agent's
    HTTP client cannot honour (its proxy tunnel ignores tls-server-name), so registration fails there."""
    config = fake_kube.kubeconfig(token="admin-token")
    cluster = config["clusters"][0]["cluster"]
    cluster["proxy-url"] = "http://127.0.0.1:9"
    cluster["tls-server-name"] = "kubernetes"
    return yaml.safe_dump(config).encode()


async def test_kubeconfig_the_agent_cannot_use_is_explained(fake_kube: FakeKube, tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry, agent = await start(h, resources=EVERYTHING)
        await registry.client.create(cluster_doc("proxied", proxied_kubeconfig(fake_kube), {"env": "bad"}))
        await registry.client.create(cluster_doc("good", fake_kube.kubeconfig_yaml(token="admin-token"), {}))

        async def reported() -> str | None:
            for record in await registry.client.list_agents():
                if record["host_id"] == agent.host_id:
                    return (record.get("failed") or {}).get("proxied")
            return None

        error = await h.wait_for(reported, timeout=10, what="the agent to report the registration error")
        assert "proxy" in error
        assert await served(registry, agent.host_id) == {"good"}

        explain = await kpctl("kube", "explain", "proxied", "--data-dir", str(registry.data_dir))
        assert explain.code == 0, explain.err
        assert "(no agent)" in explain.out
        assert f"(host {agent.host_id}): registration failed: {error}" in explain.out
        assert agent.child.returncode is None


async def test_unreachable_cluster_stays_registered_and_unhealthy(fake_kube: FakeKube, tmp_path: Path) -> None:
    closed = free_port()
    async with Harness(tmp_path) as h:
        registry, agent = await start(h, resources=EVERYTHING, health_interval=1.0)
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token", server=f"https://127.0.0.1:{closed}")
        await registry.client.create(cluster_doc("unreachable", kubeconfig, {"env": "gone"}))

        async def unhealthy() -> dict[str, Any] | None:
            server = await server_of(registry, "unreachable", agent.host_id)
            health = (server or {}).get("spec", {}).get("health") or {}
            return health if health.get("status") == "unhealthy" else None

        health = await h.wait_for(unhealthy, timeout=10, what="the unreachable cluster to be reported unhealthy")
        assert health.get("reason")

        result = await h.kpctl("get", "kube_servers", "--format", "text", "--data-dir", str(registry.data_dir))
        assert result.code == 0, result.err
        (row,) = parse_table(result.out)
        assert row["Cluster"] == "unreachable"
        assert row["Health"].startswith("unhealthy: ")
        assert len(row["Health"]) > len("unhealthy: ")
        # Still registered on the next health rounds: unhealthy is not a reason to let go.
        assert "unreachable" in await served(registry, agent.host_id)
        assert "unregistered" not in agent.child.stderr()
