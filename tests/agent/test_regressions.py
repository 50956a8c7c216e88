"""Regression tests for bugs found in the agent's runtime pieces (all fixed): malformed watch events or list
items crashing the watcher, the announcer spinning after a removal raced an in-flight heartbeat, stale
registration failures, and the unbounded fingerprint cache."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing

from agent.clusters import Supervisor
from agent.heartbeat import Announcer, ServiceInfo
from agent.watcher import ClusterWatcher
from registry.client import RegistryClient
from tests.agent.agent_fakes import (
    FakeAnnouncer,
    FakeRegistryClient,
    HealthMonitors,
    cluster,
    cluster_wire,
    refused_kubeconfig,
)

# ------------------------------------------------------------------------------------------------ watcher


@asynccontextmanager
async def watching(client: FakeRegistryClient) -> AsyncIterator[ClusterWatcher]:
    watcher = ClusterWatcher(lambda: cast(RegistryClient, client), on_change=lambda: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.serve)
        yield watcher
        nursery.cancel_scope.cancel()


MALFORMED_EVENTS: dict[str, dict[str, Any]] = {
    "metadata-not-a-mapping": {"type": "PUT", "revision": 6, "resource": {"kind": "kube_cluster", "metadata": "x"}},
    "resource-not-a-mapping": {"type": "PUT", "revision": 6, "resource": ["kube_cluster"]},
    "put-without-resource": {"type": "PUT", "revision": 6},
    "put-without-revision": {"type": "PUT", "resource": cluster_wire("b")},
    "delete-resource-null": {"type": "DELETE", "revision": 6, "resource": None},
    "bookmark-revision-garbage": {"type": "BOOKMARK", "revision": "soon"},
}


@pytest.mark.parametrize("event", MALFORMED_EVENTS.values(), ids=MALFORMED_EVENTS.keys())
async def test_a_malformed_watch_event_does_not_crash_the_watcher(
    autojump_clock: trio.abc.Clock, event: dict[str, Any]
) -> None:
    """agent/watcher.py ``_apply``/``_follow`` index events and resources without checking their shape, so a
    KeyError/AttributeError/ValueError/TypeError escapes ``serve()`` and takes the whole agent down (every
    served cluster unregisters). Expected: the resource is set aside or the event is treated as a broken
    stream (reconnect and resume); the known clusters stay and later events still apply."""
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=5)
    async with watching(client) as watcher:
        session = await client.next_session(0)
        await session.event(event)
        await trio.sleep(60)  # long enough for any reconnect
        assert set(watcher.clusters) >= {"a"}
        latest = client.sessions()[-1]
        await latest.event({"type": "PUT", "revision": 50, "resource": cluster_wire("late", revision=50)})
        await trio.sleep(1)
        assert "late" in watcher.clusters


async def test_a_malformed_item_in_a_list_does_not_crash_the_watcher(autojump_clock: trio.abc.Clock) -> None:
    """Same cause in ``_relist``: a non-mapping item raises AttributeError out of ``serve()`` (and the set was
    already emptied). Expected: the item is ignored or reported in ``invalid``; the others are served."""
    client = FakeRegistryClient(items=[cluster_wire("a"), "garbage", cluster_wire("b")], revision=5)
    async with watching(client) as watcher:
        await client.next_session(0)
        assert set(watcher.clusters) == {"a", "b"}


# ---------------------------------------------------------------------------------------------- announcer


async def test_removing_a_name_while_its_heartbeat_is_in_flight_does_not_spin() -> None:
    """agent/heartbeat.py ``_flush.announce``: after ``await client.heartbeat(...)`` it records
    ``_last_sent[name]`` (and ``_last_content``) even if ``remove(name)`` ran meanwhile. The stale entry is
    never cleared (the builder is gone, so ``_mark_periodic`` skips it) and ``_next_periodic`` keeps returning
    its past due time: ``serve()`` loops without sleeping and burns a CPU core for the agent's lifetime.
    Expected: a removed name leaves no trace; the announcer sleeps.

    Real clock on purpose: under an autojump MockClock the busy loop would stop virtual time and hang the test.
    """
    client = FakeRegistryClient(hang={"a"})
    announcer = Announcer(
        lambda: cast(RegistryClient, client), host_id="host-1", ttl=0.15, clock=time.time, flush_delay=0.005
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(announcer.serve)
        announcer.set("a", lambda expires: {"metadata": {"name": "a", "expires": expires}})
        with trio.fail_after(5):
            await client.wait_for(lambda: client.in_flight == 1)
            announcer.remove("a")  # the cluster was unregistered while its heartbeat was on the wire
            client.release.set()
            await client.wait_for(lambda: "a" in client.delete_names())
        await trio.sleep(0.3)  # past the stale entry's periodic due time (2/3 of the ttl)
        cpu, wall = time.process_time(), time.monotonic()
        await trio.sleep(0.5)
        busy = (time.process_time() - cpu) / (time.monotonic() - wall)
        nursery.cancel_scope.cancel()
    assert busy < 0.1, f"the announcer kept a CPU {busy:.0%} busy with nothing to do"


# --------------------------------------------------------------------------------------------- supervisor


def supervisor(nursery: trio.Nursery, announcer: FakeAnnouncer) -> Supervisor:
    return Supervisor(
        nursery,
        resources=[{"labels": {"env": "prod"}}],
        service=ServiceInfo(host_id="host-1", hostname="agent.example", labels={}, commands={}),
        service_results=dict,
        announcer=announcer,
        wake=lambda: None,
        health_interval=3600.0,
        health_monitors=HealthMonitors(),
    )


async def test_reverting_a_failed_update_clears_the_failure() -> None:
    """agent/clusters.py ``_update``: when the desired cluster has the served kubeconfig again (the admin
    reverted a bad edit, perhaps with another label change), the early-return branch never pops
    ``failed[name]``, and when the revert restores the served candidate exactly, ``plan`` produces no action at
    all. Either way ``kube explain`` keeps saying "update failed (still serving the previous version)" about a
    cluster that is fine, and the agent keeps a 30 s retry timer running for it. Expected: cleared."""
    announcer = FakeAnnouncer()
    async with trio.open_nursery() as nursery:
        sup = supervisor(nursery, announcer)
        good = cluster("a", {"env": "prod"}, revision=1)
        sup.reconcile({"a": good}, [])
        sup.reconcile({"a": cluster("a", {"env": "prod"}, config=refused_kubeconfig(), revision=2)}, [])
        assert "update failed" in sup.failed["a"]
        sup.reconcile({"a": cluster("a", {"env": "prod"}, revision=3)}, [])  # reverted
        assert sup.failed == {}
        nursery.cancel_scope.cancel()


async def test_a_failed_registration_is_forgotten_when_the_cluster_stops_matching() -> None:
    """agent/clusters.py ``reconcile``: ``failed`` entries are dropped only when the cluster is deleted. A
    cluster whose registration failed and whose labels were then changed so this agent no longer selects it
    keeps "cannot register ..." in ``kube explain`` (and the agent's 30 s retry timer) for as long as the
    cluster exists. Expected: a cluster this agent does not want to serve has no failure recorded."""
    async with trio.open_nursery() as nursery:
        sup = supervisor(nursery, FakeAnnouncer())
        sup.reconcile({"a": cluster("a", {"env": "prod"}, config=b"not a kubeconfig")}, [])
        assert "a" in sup.failed
        sup.reconcile({"a": cluster("a", {"env": "dev"}, config=b"not a kubeconfig", revision=2)}, [])
        assert sup.failed == {}
        nursery.cancel_scope.cancel()


async def test_fingerprint_cache_does_not_grow_with_every_revision() -> None:
    """agent/clusters.py ``reconcile``: ``_fingerprints`` (keyed by name and revision) is pruned only on full
    passes, and the agent makes full passes only at start and after a relist. With partial passes every
    update of a cluster adds an entry that is never dropped: an agent watching clusters that some controller
    relabels every minute grows without bound. Expected: the cache holds about one entry per live cluster."""
    async with trio.open_nursery() as nursery:
        sup = supervisor(nursery, FakeAnnouncer())
        sup.reconcile({"a": cluster("a", {"env": "prod"}, revision=1)}, [])
        for revision in range(2, 500):
            labels = {"env": "prod", "generation": str(revision)}
            sup.reconcile({"a": cluster("a", labels, revision=revision)}, [], only={"a"})
        cached = sup.table.cached_fingerprints()
        assert cached <= 2, f"{cached} cached fingerprints for one cluster"
        nursery.cancel_scope.cancel()
