"""End to end, real processes: which kube_clusters an agent serves, and how fast it lets go of them.

Seed 003's selector example with an agent installed the documented way (``kpctl tokens add`` →
``kubeport configure`` → edit ``resources`` → ``kubeport agent start``), label edits with ``kpctl create -f``
and ``kpctl rm`` (each must unregister within 2 s of the command returning), and two agents with different
selectors (``kube ls`` shows a cluster once, ``kpctl get kube_servers`` once per agent).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from tests.e2e.e2e_helpers import (
    SEED_SELECTORS,
    AgentProc,
    Harness,
    RegistryProc,
    cluster_doc,
    gather,
    parse_table,
    served,
    write_agent_config,
)
from tests.fakes.kube_api import FakeKube
from tests.helpers import CliResult, kpctl, seed_kube_cluster_yaml

pytestmark = pytest.mark.slow

PROD_WEST = {"env": "prod", "region": "us-west-1"}
TEST_WEST = {"env": "test", "region": "us-west-1"}


async def configure_agent(h: Harness, registry: RegistryProc, name: str) -> tuple[Path, Path]:
    """The walkthrough: a token from kpctl, ``kubeport configure``, then the admin edits ``resources``."""
    token = await kpctl("tokens", "add", "--type=kube", "--format", "text", "--data-dir", str(registry.data_dir))
    assert token.code == 0, token.err
    config, data_dir = h.tmp / f"{name}.yaml", h.tmp / f"{name}-data"
    result = await h.kubeport(
        "configure",
        f"--registry={registry.address}",
        "--roles=kube",
        f"--token={token.out.strip()}",
        f"--ca-pin={registry.ca_pin}",
        "--data-dir",
        str(data_dir),
        "-o",
        str(config),
    )
    assert result.code == 0, result.err
    assert f"kubeport agent start -c {config}" in result.out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600, "the config holds the join token"
    text = config.read_text()
    everything = '  resources: [{labels: {"*": "*"}}]\n'
    assert everything in text, text
    seed = "  resources:\n" + "".join(
        f"  - labels: {{env: {item['labels']['env']}, region: {item['labels']['region']}}}\n" for item in SEED_SELECTORS
    )
    config.write_text(text.replace(everything, seed))
    return config, data_dir


async def kpctl_create(registry: RegistryProc, path: Path, *flags: str) -> CliResult:
    result = await kpctl("create", *flags, str(path), "--data-dir", str(registry.data_dir))
    assert result.code == 0, result.err
    return result


def seed_file(tmp: Path, name: str, kubeconfig: bytes, labels: dict[str, str]) -> Path:
    path = tmp / f"{name}-{labels['env']}.yaml"
    path.write_text(seed_kube_cluster_yaml(name, kubeconfig, labels))
    return path


async def test_seed_selector_example_with_a_configured_agent(fake_kube: FakeKube, tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry = await h.start_registry()
        config, data_dir = await configure_agent(h, registry, "agent")
        agent = await h.start_agent(config, registry, data_dir=data_dir)
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
        # prod-west first: once test-west (created later) is served, the agent has seen prod-west too.
        await kpctl_create(registry, seed_file(tmp_path, "prod-west", kubeconfig, PROD_WEST))
        await kpctl_create(registry, seed_file(tmp_path, "test-west", kubeconfig, TEST_WEST))

        async def only_test_west() -> bool:
            return await served(registry) == {"test-west"}

        await h.wait_for(only_test_west, timeout=10, what="test-west (and only it) to be served")

        data = str(registry.data_dir)
        ls, servers = await gather(
            lambda: h.kubeport("kube", "ls", "--data-dir", data),
            lambda: h.kpctl("get", "kube_servers", "--format", "text", "--data-dir", data),
        )
        assert ls.code == 0, ls.err
        rows = parse_table(ls.out)
        assert list(rows[0]) == ["Kube Cluster Name", "Health", "Labels", "Selected"]
        assert [r["Kube Cluster Name"] for r in rows] == ["test-west"]
        assert "env=test" in rows[0]["Labels"]
        assert "region=us-west-1" in rows[0]["Labels"]
        assert servers.code == 0, servers.err
        (row,) = parse_table(servers.out)
        assert (row["Cluster"], row["Host ID"]) == ("test-west", agent.host_id)
        assert agent.child.returncode is None


async def serving_agent(h: Harness, fake: FakeKube) -> tuple[RegistryProc, AgentProc]:
    """A registry and an agent with seed 003's selectors serving ``test-west``."""
    registry = await h.start_registry()
    config, data_dir = await write_agent_config(h, registry, "agent", resources=SEED_SELECTORS)
    agent = await h.start_agent(config, registry, data_dir=data_dir)
    await registry.client.create(cluster_doc("test-west", fake.kubeconfig_yaml(token="admin-token"), TEST_WEST))

    async def up() -> bool:
        return "test-west" in await served(registry, agent.host_id)

    await h.wait_for(up, timeout=10, what="test-west to be served")
    return registry, agent


async def test_label_edit_with_kpctl_create_f_unregisters_within_2s(fake_kube: FakeKube, tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry, agent = await serving_agent(h, fake_kube)
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")

        async def gone() -> bool:
            return "test-west" not in await served(registry)

        async def back() -> bool:
            return "test-west" in await served(registry)

        staging = seed_file(tmp_path, "test-west", kubeconfig, {**TEST_WEST, "env": "staging"})
        result = await kpctl_create(registry, staging, "-f")
        assert 'kubernetes cluster "test-west" has been updated' in result.out
        started = trio.current_time()
        await h.wait_for(gone, timeout=2, what="test-west to be unregistered after its labels stopped matching")
        print(f"label edit -> unregistered in {trio.current_time() - started:.3f}s")
        # Still registered in the registry: only the agent let go of it.
        assert (await registry.client.get("kube_cluster", "test-west"))["metadata"]["labels"]["env"] == "staging"

        await kpctl_create(registry, seed_file(tmp_path, "test-west", kubeconfig, TEST_WEST), "-f")
        await h.wait_for(back, timeout=2, what="test-west to be served again once its labels match again")
        assert agent.child.returncode is None


async def test_kpctl_rm_unregisters_within_2s(fake_kube: FakeKube, tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry, agent = await serving_agent(h, fake_kube)
        result = await kpctl("rm", "kube_clusters/test-west", "--data-dir", str(registry.data_dir))
        assert result.code == 0, result.err
        started = trio.current_time()

        async def gone() -> bool:
            return not await served(registry)

        await h.wait_for(gone, timeout=2, what="test-west to be unregistered after kpctl rm")
        print(f"rm -> unregistered in {trio.current_time() - started:.3f}s")
        assert agent.child.returncode is None
        assert "unregistered kube_cluster test-west" in agent.child.stderr()


async def test_two_agents_with_different_selectors(fake_kube: FakeKube, tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry = await h.start_registry()
        prod_config, prod_dir = await write_agent_config(h, registry, "prod", resources=[{"labels": {"env": "prod"}}])
        west_config, west_dir = await write_agent_config(
            h, registry, "west", resources=[{"labels": {"region": "us-west-1"}}]
        )
        agents: dict[str, AgentProc] = {}

        async def start(name: str, config: Path, data_dir: Path) -> None:
            agents[name] = await h.start_agent(config, registry, data_dir=data_dir, name=name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start, "prod", prod_config, prod_dir)
            nursery.start_soon(start, "west", west_config, west_dir)
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
        for name, labels in [
            ("prod-only", {"env": "prod", "region": "eu-central-1"}),
            ("west-only", {"env": "dev", "region": "us-west-1"}),
            ("both", PROD_WEST),
        ]:
            await registry.client.create(cluster_doc(name, kubeconfig, labels))

        async def settled() -> bool:
            return await served(registry, agents["prod"].host_id) == {"prod-only", "both"} and await served(
                registry, agents["west"].host_id
            ) == {"west-only", "both"}

        await h.wait_for(settled, timeout=10, what="each agent to serve exactly its own clusters")

        ls = await h.kubeport("kube", "ls", "--format", "text", "--data-dir", str(registry.data_dir))
        assert ls.code == 0, ls.err
        assert [r["Kube Cluster Name"] for r in parse_table(ls.out)] == ["both", "prod-only", "west-only"]

        servers = await kpctl("get", "kube_servers", "--format", "text", "--data-dir", str(registry.data_dir))
        assert servers.code == 0, servers.err
        both = [r for r in parse_table(servers.out) if r["Cluster"] == "both"]
        assert sorted(r["Host ID"] for r in both) == sorted(a.host_id for a in agents.values())
