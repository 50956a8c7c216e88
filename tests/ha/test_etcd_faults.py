"""Fault tests on etcd (issue 11 §5): real registry processes on a real three-member etcd cluster, under churn.

Every test runs churn (:mod:`tests.ha.churn`: creates, updates and deletes through a client that fails over
between registries, plus an agent-like heartbeater keeping four ``kube_server`` records alive) while it
breaks something, and then checks what a user would notice:

- nothing acknowledged is lost, and nothing deleted comes back (:meth:`Churn.check`);
- a watcher that rode through the fault saw exactly the store's history: compared event by event with a
  watch replayed from the same revision afterwards (no gap, no duplicate; the recorder also refuses any
  revision that does not increase);
- no live heartbeat was deleted (no agent's cluster unregistered because of the fault), and heartbeats that
  stopped expire within their TTL plus the expiry sweep's period.

The faults: kill -9 one of two registries (the watcher on it resumes on the other from its last revision);
kill an etcd follower (the one the registry talks to); kill the etcd leader (writes resume after the
election); kill everything and restart it (the data is there).

Slow: each test starts its own registries (about 2 s each on a loaded machine) and is budgeted at about 20 s;
the etcd cluster is started once for the module. The etcd members run with ``--unsafe-no-fsync``: a killed
process loses nothing the kernel has (a power loss would), which is what kill -9 tests.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from registry.client import RegistryClient, join
from registry.core.identity import generate_private_key, make_csr
from registry.core.identity_file import IdentityFile
from tests.e2e.e2e_helpers import AgentProc, Harness, RegistryProc, cluster_doc, new_token, served, write_agent_config
from tests.fakes.etcd_server import EtcdCluster, EtcdServer, etcd_cluster, unique_prefix
from tests.fakes.kube_api import FakeKube
from tests.ha.churn import Churn, Heartbeater, Recorder, cluster, heartbeat

pytestmark = pytest.mark.slow

LIVE = [f"live-{i}" for i in range(4)]
AGENT_CLUSTERS = ["agent-0", "agent-1"]  # served by a real agent process
STALE = [f"stale-{i}" for i in range(2)]
STALE_TTL = 3.0
SWEEP_SLACK = 3.0  # the registry sweeps expired records every second; a loaded machine adds the rest
WATCH_KINDS = ("kube_cluster", "kube_server")
CLIENT_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def etcd3_members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    root = tmp_path_factory.mktemp("etcd3")
    members = etcd_cluster(root)
    yield members
    members.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def etcd3(etcd3_members: EtcdCluster) -> Iterator[EtcdCluster]:
    """The module's three members, settled before each test (all running, one leader, a restarted member
    caught up); after the test their state and log tails are printed, which pytest shows when it failed."""
    etcd3_members.settle()
    yield etcd3_members
    print(etcd3_members.describe())


@dataclass
class Setup:
    registries: list[RegistryProc]
    identity: IdentityFile
    host_id: str
    agent_key: bytes
    agent_cert: bytes
    h: Harness

    def client(self, registries: Sequence[RegistryProc] | None = None, *, agent: bool = False) -> RegistryClient:
        """A client over ``registries`` (all by default), tried in that order, as the admin or the agent."""
        addresses = ",".join(r.address for r in (registries or self.registries))
        cert, key = (self.agent_cert, self.agent_key) if agent else (self.identity.cert_pem, self.identity.key_pem)
        client = RegistryClient(
            addresses, ca_pems=self.identity.ca_pems, cert_pem=cert, key_pem=key, timeout=CLIENT_TIMEOUT
        )
        self.h.clients.append(client)
        return client


async def start_registries(h: Harness, tmp: Path, store: str, count: int) -> Setup:
    """``count`` registries on one etcd prefix, the live and stale clusters, and an agent identity."""
    prefix = unique_prefix()
    extra = ("--store", store, "--etcd-prefix", prefix)
    first = await h.start_registry(data_dir=tmp / "r0", extra=extra, name="registry-0")
    registries = [first]
    for i in range(1, count):
        (tmp / f"r{i}").mkdir(mode=0o700)
        shutil.copy2(tmp / "r0" / "etcd.key", tmp / f"r{i}" / "etcd.key")
        registries.append(await h.start_registry(data_dir=tmp / f"r{i}", extra=extra, name=f"registry-{i}"))
    identity = IdentityFile.parse(first.admin_identity.read_bytes(), source="admin identity")
    key = generate_private_key()
    joined = await join(
        first.address, token=await new_token(first), nodename="node-1", csr_pem=make_csr(key, "node-1"),
        ca_pems=identity.ca_pems,
    )  # fmt: skip
    setup = Setup(registries, identity, joined["host_id"], key, joined["cert_pem"].encode(), h)
    admin = first.client
    for name in LIVE + STALE:
        await admin.create(cluster(name, 0))
    return setup


async def restart_registry(h: Harness, proc: RegistryProc, store: Sequence[str]) -> RegistryProc:
    return await h.start_registry(data_dir=proc.data_dir, port=proc.port, extra=store, name=proc.child.name + "-again")


def live_deletes(recorder: Recorder) -> list[str]:
    """kube_server DELETEs of clusters an agent (the real one, or the heartbeater) still serves."""
    live = [f"/{n}" for n in LIVE + AGENT_CLUSTERS]
    return [e.name for e in recorder.events if e.type == "Delete" and any(e.name.endswith(n) for n in live)]


async def start_real_agent(h: Harness, registry: RegistryProc, fake_kube: FakeKube) -> AgentProc:
    """``kubeport agent start`` serving AGENT_CLUSTERS (on the fake Kubernetes API) through ``registry``."""
    kubeconfig = fake_kube.kubeconfig_yaml(token="admin-token")
    for name in AGENT_CLUSTERS:
        await registry.client.create(cluster_doc(name, kubeconfig, {"served": "yes"}))
    config, data_dir = await write_agent_config(h, registry, "agent", resources=[{"labels": {"served": "yes"}}])
    agent = await h.start_agent(config, registry, data_dir=data_dir)

    async def serving() -> bool:
        return await served(registry, agent.host_id) == set(AGENT_CLUSTERS)

    await h.wait_for(serving, timeout=15, what="the agent to serve its clusters")
    return agent


async def assert_agent_still_serving(h: Harness, registry: RegistryProc, agent: AgentProc) -> None:
    assert agent.child.returncode is None, "the agent died"
    assert await served(registry, agent.host_id) == set(AGENT_CLUSTERS)


async def stale_heartbeats(setup: Setup) -> float:
    """Heartbeat the STALE clusters once (an agent that then stopped serving them); returns their expiry."""
    agent = setup.client(agent=True)
    expires = time.time() + STALE_TTL
    results = await agent.heartbeat_many(setup.host_id, [heartbeat(n, setup.host_id, STALE_TTL) for n in STALE])
    assert not [r for r in results if "error" in r], results
    return expires


async def assert_stale_expired(recorder: Recorder, setup: Setup, expires: float) -> None:
    for name in STALE:
        seen = await recorder.wait_for("Delete", f"{setup.host_id}/{name}", timeout=STALE_TTL + 2 * SWEEP_SLACK)
        assert seen.at <= expires + SWEEP_SLACK, f"{name} expired {seen.at - expires:.1f}s after its TTL"


async def assert_history_exact(setup: Setup, client: RegistryClient, recorders: Sequence[Recorder]) -> None:
    """A marker write, then every recorder (which rode through the fault) must match, event by event, a
    watch replayed from the same revision now."""
    await client.create(cluster("marker", 0))
    for recorder in recorders:
        await recorder.wait_for("Put", "marker", timeout=10)
    async with trio.open_nursery() as nursery:
        replay = Recorder(client, WATCH_KINDS, since=recorders[0].since)
        await nursery.start(replay.run)
        await replay.wait_for("Put", "marker", timeout=10)
        nursery.cancel_scope.cancel()
    for recorder in recorders:
        assert recorder.since == replay.since
        assert recorder.history() == replay.history(), "a watcher through the fault missed or repeated events"


@dataclass
class Load:
    churn: Churn
    heartbeater: Heartbeater
    recorders: list[Recorder]


async def start_load(nursery: trio.Nursery, setup: Setup, watch_on: Sequence[Sequence[RegistryProc]]) -> Load:
    admin = setup.client()
    _, since = await admin.list("kube_cluster")
    recorders = [Recorder(setup.client(regs), WATCH_KINDS, since=since) for regs in watch_on]
    for recorder in recorders:
        await nursery.start(recorder.run)
    heartbeater = Heartbeater(setup.client(agent=True), setup.host_id, LIVE)
    await nursery.start(heartbeater.run)
    churn = Churn(admin)
    await nursery.start(churn.run)
    return Load(churn, heartbeater, recorders)


async def test_kill_9_one_registry_loses_nothing_and_its_watcher_resumes_on_the_other(
    tmp_path: Path, etcd3: EtcdCluster, fake_kube: FakeKube
) -> None:
    async with Harness(tmp_path) as harness:
        await _kill_one_registry(tmp_path, harness, etcd3, fake_kube)


async def _kill_one_registry(tmp_path: Path, harness: Harness, etcd3: EtcdCluster, fake_kube: FakeKube) -> None:
    setup = await start_registries(harness, tmp_path, f"etcd://{etcd3.endpoints}", 2)
    first, second = setup.registries
    agent = await start_real_agent(harness, second, fake_kube)  # an agent takes one registry address
    async with trio.open_nursery() as nursery:
        # churn and one watcher go to the first registry (the second only after it dies)
        load = await start_load(nursery, setup, [[first, second], [second]])
        expires = await stale_heartbeats(setup)
        await load.churn.wait_acked(20, timeout=30)
        killed = trio.current_time()
        first.child.process.kill()
        assert await first.child.wait_exit(5) != 0
        await load.churn.wait_acked(20, timeout=30)
        await assert_stale_expired(load.recorders[1], setup, expires)
        await load.churn.stop()
        print(
            f"registry killed: writes paused at most {load.churn.longest_pause(killed):.2f}s; "
            f"{load.churn.retries} client retries; the watcher resumed {load.recorders[0].resumes}x"
        )
        survivor = setup.client([second])
        await load.churn.check(survivor)
        await assert_history_exact(setup, survivor, load.recorders)
        assert load.recorders[0].resumes >= 1, "the watcher on the killed registry never had to resume"
        assert not live_deletes(load.recorders[1])
        await assert_agent_still_serving(harness, second, agent)
        nursery.cancel_scope.cancel()


async def _kill_member_under_churn(
    tmp_path: Path, etcd3: EtcdCluster, harness: Harness, victim: EtcdServer, fake_kube: FakeKube
) -> tuple[Load, float]:
    """One registry talking first to ``victim``: churn, kill it, churn on; returns the load and the outage
    (the longest pause between acknowledged writes after the kill). Heartbeats that stopped before the kill
    still expire within their TTL."""
    others = [m for m in etcd3.members if m is not victim]
    store = f"etcd://{','.join(m.endpoint for m in [victim, *others])}"
    setup = await start_registries(harness, tmp_path, store, 1)
    agent = await start_real_agent(harness, setup.registries[0], fake_kube)
    try:
        async with trio.open_nursery() as nursery:
            load = await start_load(nursery, setup, [setup.registries])
            expires = await stale_heartbeats(setup)
            await load.churn.wait_acked(20, timeout=30)
            killed = trio.current_time()
            victim.kill()
            await load.churn.wait_acked(20, timeout=40)
            outage = load.churn.longest_pause(killed)
            await assert_stale_expired(load.recorders[0], setup, expires)
            await load.churn.stop()
            admin = setup.client()
            await load.churn.check(admin)
            await assert_history_exact(setup, admin, load.recorders)
            assert not live_deletes(load.recorders[0])
            await assert_agent_still_serving(harness, setup.registries[0], agent)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(victim.start)  # the next test gets three members again
    return load, outage


async def test_kill_an_etcd_follower_writes_go_on(tmp_path: Path, etcd3: EtcdCluster, fake_kube: FakeKube) -> None:
    async with Harness(tmp_path) as harness:
        load, outage = await _kill_member_under_churn(tmp_path, etcd3, harness, etcd3.follower(), fake_kube)
    print(f"follower killed: writes paused at most {outage:.2f}s; {load.churn.retries} client retries")


async def test_kill_the_etcd_leader_writes_resume_after_the_election(
    tmp_path: Path, etcd3: EtcdCluster, fake_kube: FakeKube
) -> None:
    leader = etcd3.leader()
    async with Harness(tmp_path) as harness:
        load, outage = await _kill_member_under_churn(tmp_path, etcd3, harness, leader, fake_kube)
    assert etcd3.leader() is not leader
    # about one election; a write stuck on a member for its whole timeout (tests/ha/test_abandoned_member.py)
    # paused every write for over 5 s
    assert outage < CLIENT_TIMEOUT
    print(f"leader killed: writes paused at most {outage:.2f}s; {load.churn.retries} client retries")


async def test_restart_everything_the_data_is_there(tmp_path: Path, etcd3: EtcdCluster) -> None:
    async with Harness(tmp_path) as harness:
        await _restart_everything(tmp_path, harness, etcd3)


async def _restart_everything(tmp_path: Path, harness: Harness, etcd3: EtcdCluster) -> None:
    store = f"etcd://{etcd3.endpoints}"
    setup = await start_registries(harness, tmp_path, store, 2)
    prefix_flags = next(a for a in [setup.registries[0].child.argv] if "--etcd-prefix" in a)
    extra = ("--store", store, "--etcd-prefix", prefix_flags[prefix_flags.index("--etcd-prefix") + 1])
    try:
        async with trio.open_nursery() as nursery:
            load = await start_load(nursery, setup, [setup.registries])
            await load.churn.wait_acked(20, timeout=30)
            for proc in setup.registries:
                proc.child.process.kill()
            etcd3.kill()
            for proc in setup.registries:
                await proc.child.wait_exit(5)
            acked = load.churn.acked
            await trio.to_thread.run_sync(etcd3.start)
            for proc in setup.registries:
                await restart_registry(harness, proc, extra)
            await load.churn.wait_acked(20, timeout=40)
            assert load.churn.acked > acked
            await load.churn.stop()
            print(f"everything restarted: {acked} writes acknowledged before, {load.churn.acked - acked} after")
            admin = setup.client()
            await load.churn.check(admin)
            await assert_history_exact(setup, admin, load.recorders)
            assert load.recorders[0].resumes >= 1
            assert not live_deletes(load.recorders[0])
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(etcd3.start)
