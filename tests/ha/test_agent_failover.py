"""Issue 11 §5: an AGENT whose registry is killed (-9) fails over to another registry of the same etcd
prefix and keeps serving; no cluster it serves is unregistered because of the fault.

The other fault tests (test_etcd_faults.py) give the real agent the surviving registry's address only, so
they never exercise the agent's own failover. Here the agent's ``kubeport.registry`` lists the victim first
(``r0,r1``: it joins, watches and heartbeats through r0), r0 is killed, and then, through r1 alone:

- heartbeats go on: every served cluster's kube_server is re-announced after the kill (its expiry moves past
  what the last pre-kill heartbeat gave it), with a short heartbeat TTL so a stalled agent would show;
- the watch goes on: a kube_cluster created after the kill is picked up and served;
- no kube_server of the agent is ever deleted (a watcher on r1 rode through the whole test);
- the agent process is still running.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from registry.client import RegistryClient
from registry.core.identity_file import IdentityFile
from tests.e2e.e2e_helpers import Harness, RegistryProc, kube_servers, new_token, served
from tests.fakes.etcd_server import shared_etcd, unique_prefix
from tests.fakes.kube_api import FakeKube
from tests.ha.churn import Recorder
from tests.helpers import cluster_doc

pytestmark = pytest.mark.slow

HEARTBEAT_TTL = 6.0  # re-announced every 2/3 of it (4 s): a stalled agent's servers expire within the test
BEFORE = ["agent-0", "agent-1"]
AFTER = "agent-2"  # created after the kill: proves the agent's watch moved to the other registry


def expiry_of(server: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(server["metadata"]["expires"])).timestamp()


async def expiries(registry: RegistryProc, host_id: str) -> dict[str, float]:
    return {
        str(s["metadata"]["name"]): expiry_of(s)
        for s in await kube_servers(registry)
        if s["spec"].get("host_id") == host_id
    }


async def test_an_agent_fails_over_from_a_killed_registry_and_keeps_serving(
    tmp_path: Path, fake_kube: FakeKube
) -> None:
    etcd = shared_etcd()
    store = ("--store", f"etcd://{etcd.endpoint}", "--etcd-prefix", unique_prefix())
    async with Harness(tmp_path) as h:
        victim = await h.start_registry(data_dir=tmp_path / "r0", extra=store, name="registry-0")
        (tmp_path / "r1").mkdir(mode=0o700)
        shutil.copy2(tmp_path / "r0" / "etcd.key", tmp_path / "r1" / "etcd.key")
        survivor = await h.start_registry(data_dir=tmp_path / "r1", extra=store, name="registry-1")
        kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
        for name in BEFORE:
            await victim.client.create(cluster_doc(name, kubeconfig, {"served": "yes"}))

        data_dir = tmp_path / "agent-data"
        config = tmp_path / "agent.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": "v1",
                    "kubeport": {
                        "registry": f"{victim.address},{survivor.address}",  # the victim first: it is used
                        "token": await new_token(victim),
                        "ca_pin": victim.ca_pin,
                        "data_dir": str(data_dir),
                        "heartbeat_ttl": f"{HEARTBEAT_TTL:g}s",
                    },
                    "kubernetes_service": {
                        "enabled": True,
                        "listen_addr": "127.0.0.1:0",
                        "resources": [{"labels": {"served": "yes"}}],
                    },
                }
            )
        )
        agent = await h.start_agent(config, victim, data_dir=data_dir)

        async def serving(names: set[str]) -> bool:
            return await served(survivor, agent.host_id) == names

        await h.wait_for(lambda: serving(set(BEFORE)), timeout=20, what="the agent to serve its clusters")

        admin = IdentityFile.parse(survivor.admin_identity.read_bytes(), source="admin identity")
        watcher = RegistryClient(
            survivor.address, ca_pems=admin.ca_pems, cert_pem=admin.cert_pem, key_pem=admin.key_pem, timeout=5
        )
        h.clients.append(watcher)
        _, since = await watcher.list("kube_server")
        recorder = Recorder(watcher, ["kube_server"], since=since)
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)

            victim.child.process.kill()
            assert await victim.child.wait_exit(5) != 0
            killed = time.time()
            before_kill = await expiries(survivor, agent.host_id)
            assert set(before_kill) == set(BEFORE)
            assert max(before_kill.values()) <= killed + HEARTBEAT_TTL + 1

            await survivor.client.create(cluster_doc(AFTER, kubeconfig, {"served": "yes"}))
            await h.wait_for(
                lambda: serving({*BEFORE, AFTER}),
                timeout=30,
                what="the agent to serve a cluster created after the kill",
            )

            async def reannounced() -> bool:
                now = await expiries(survivor, agent.host_id)
                return all(now.get(n, 0) > before_kill[n] + 1 for n in BEFORE)

            await h.wait_for(reannounced, timeout=3 * HEARTBEAT_TTL, what="heartbeats through the other registry")
            # Past the TTL of every pre-kill heartbeat: had the agent stalled, they would have expired by now.
            await h.wait_for(
                lambda: _after(max(before_kill.values()) + 1.0), timeout=2 * HEARTBEAT_TTL, what="the old TTLs to pass"
            )
            assert await served(survivor, agent.host_id) == {*BEFORE, AFTER}
            deleted = [e.name for e in recorder.events if e.type == "Delete"]
            assert not deleted, f"kube_servers deleted during the fault: {deleted}"
            assert agent.child.returncode is None, "the agent died"
            nursery.cancel_scope.cancel()


async def _after(deadline: float) -> bool:
    await trio.lowlevel.checkpoint()
    return time.time() >= deadline
