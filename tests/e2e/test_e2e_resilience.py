"""End to end, real processes: a registry restart unregisters nothing and changes made meanwhile (while it
was down, and right after it came back) still arrive; a SIGKILLed agent's kube_servers are removed by the
registry's expiry loop within the TTL."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from registry.core import codec
from registry.core.identity import Identity
from registry.core.watch import Delete
from registry.host.paths import STORE_FILE
from registry.server.authz import Caller
from registry.server.serve import load_or_create_ca
from registry.server.service import Registry
from registry.store import SQLiteStore
from tests.e2e.e2e_helpers import Harness, RegistryProc, cluster_doc, served, server_of, write_agent_config
from tests.fakes.kube_api import FakeKube

pytestmark = pytest.mark.slow

EVERYTHING = [{"labels": {"*": "*"}}]


async def write_while_down(registry: RegistryProc, *, create: dict[str, Any], delete: str) -> None:
    """Create and delete kube_clusters through the registry's service layer on its store file, with no
    registry process running (validation, origin label and audit as through the API)."""
    assert registry.child.returncode is not None, "the registry must be stopped"
    store = await SQLiteStore.open(registry.data_dir / STORE_FILE)
    try:
        ca = await load_or_create_ca(store, "unused: the CA exists", datetime.now(tz=UTC))
        service = Registry(store, ca, cluster_name=ca.cluster_name)
        admin = Caller(Identity(name="admin", kind="admin", roles=("admin",)))
        await service.create(admin, codec.resource_from_dict(create, source="test"))
        await service.delete(admin, "kube_cluster", delete)
    finally:
        await store.aclose()


async def test_registry_restart_with_changes_made_while_it_was_down(fake_kube: FakeKube, tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry = await h.start_registry()
        config, data_dir = await write_agent_config(h, registry, "agent", resources=EVERYTHING)
        agent = await h.start_agent(config, registry, data_dir=data_dir)
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
        await registry.client.create(cluster_doc("alpha", kubeconfig, {"env": "a"}))

        async def alpha_only() -> bool:
            return await served(registry, agent.host_id) == {"alpha"}

        await h.wait_for(alpha_only, timeout=10, what="alpha to be served")

        assert await registry.child.stop(signal.SIGTERM) == 0

        # The outage, as the agent sees it: its watch breaks and it keeps retrying, serving what it had.
        async def noticed() -> bool:
            return "registry watch interrupted" in agent.child.stderr()

        await h.wait_for(noticed, timeout=10, what="the agent to notice the registry is gone")
        assert agent.child.returncode is None
        assert "unregistered" not in agent.child.stderr()

        # Changes made while the daemon is down, written by the registry's own service code into its store
        # (the agent cannot have seen them: it has no registry to talk to).
        await write_while_down(registry, create=cluster_doc("beta", kubeconfig, {"env": "b"}), delete="alpha")

        restarted = await h.start_registry(data_dir=registry.data_dir, port=registry.port, name="registry-again")
        # alpha's heartbeat survived the outage in the store (the TTL is far away) ...
        alpha = await server_of(restarted, "alpha", agent.host_id)
        assert alpha is not None, "alpha's kube_server must still be there when the registry comes back"
        # ... and a change made right after the restart, likely before the agent's backed-off watch reconnects.
        await restarted.client.create(cluster_doc("gamma", kubeconfig, {"env": "c"}))
        started = trio.current_time()

        async def converged() -> bool:
            return await served(restarted, agent.host_id) == {"beta", "gamma"}

        # The watcher's full-jitter backoff may have grown to a few seconds during the outage.
        await h.wait_for(converged, timeout=30, what="the agent to serve beta and gamma and drop alpha")
        print(f"converged {trio.current_time() - started:.2f}s after the restart")
        assert agent.child.returncode is None
        assert "unregistered kube_cluster alpha" in agent.child.stderr()


async def test_sigkilled_agent_heartbeats_expire_by_ttl(fake_kube: FakeKube, tmp_path: Path) -> None:
    ttl = 3.0
    async with Harness(tmp_path) as h:
        registry = await h.start_registry()
        config, data_dir = await write_agent_config(h, registry, "agent", resources=EVERYTHING, heartbeat_ttl="3s")
        agent = await h.start_agent(config, registry, data_dir=data_dir)
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
        for name in ("one", "two"):
            await registry.client.create(cluster_doc(name, kubeconfig, {"env": name}))

        async def both() -> bool:
            return await served(registry, agent.host_id) == {"one", "two"}

        await h.wait_for(both, timeout=10, what="both clusters to be served")

        deleted: dict[str, float] = {}
        all_deleted = trio.Event()

        async def follow(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with registry.client.watch(["kube_server"]) as events:
                task_status.started()
                async for event in events:
                    if isinstance(event, Delete) and event.resource.get("spec", {}).get("host_id") == agent.host_id:
                        deleted[str(event.resource["metadata"]["name"])] = trio.current_time()
                        if set(deleted) == {"one", "two"}:
                            all_deleted.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(follow)
            assert await agent.child.stop(signal.SIGKILL) == -signal.SIGKILL
            killed = trio.current_time()
            # Nothing can delete them now but the registry's expiry loop (the agent is gone, not stopping).
            with trio.move_on_after(ttl + 2):
                await all_deleted.wait()
            nursery.cancel_scope.cancel()
        assert set(deleted) == {"one", "two"}, f"expired within {ttl + 2}s: {sorted(deleted)}"
        print("expired after " + ", ".join(f"{n} {t - killed:.2f}s" for n, t in sorted(deleted.items())))
        assert await served(registry) == set()

        async def agent_record_gone() -> bool:
            return agent.host_id not in {a["host_id"] for a in await registry.client.list_agents()}

        # The kube_agent record (kpctl kube explain) has the same TTL; it may have been refreshed last.
        await h.wait_for(agent_record_gone, timeout=ttl + 2, what="the agent's kube_agent record to expire")
