"""ClusterWatcher and Backoff under trio's MockClock (autojump).

The watcher talks to the registry's real API handlers over a MemoryStore, in process
(``registry.testing.InProcessRegistry``), with an agent identity: what it lists and watches is what a
registry answers, through the real client and the real watch protocol. Outages are injected at the
transport (``fail_next``, ``break_watches``); resources only a newer or broken registry would hold are
written straight into the store. A few tests that need a stream no registry would send use
``FakeRegistryClient`` (marked below).

What a user would notice if these broke: clusters vanishing during a registry outage, events missed or
replayed after a reconnect, clusters deleted while the agent was away staying served, one bad resource
taking the agent down, reconnect storms, or an agent hanging on a dead connection.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
import trio

from agent.watcher import Backoff, ClusterWatcher
from registry.client import RegistryClient
from registry.core.errors import (
    AccessDenied,
    Compacted,
    Unauthenticated,
)
from registry.testing import InProcessRegistry, agent_identity
from tests.agent.agent_fakes import FakeRegistryClient, UpperBoundRng, cluster_wire, kubeconfig

WATCH = "/v1/watch"
LIST = "/v1/resources/kube_cluster"


class Changes:
    """Counts ``on_change`` calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def until(predicate: Callable[[], object], *, within: float = 600.0) -> None:
    """Poll ``predicate`` with a deadline (virtual seconds under the MockClock)."""
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.001)


@asynccontextmanager
async def registry(**kwargs: Any) -> AsyncIterator[InProcessRegistry]:
    async with InProcessRegistry.open(**kwargs) as reg:
        yield reg


@asynccontextmanager
async def watching(reg: InProcessRegistry, **kwargs: Any) -> AsyncIterator[tuple[ClusterWatcher, Changes]]:
    changes = Changes()
    async with reg.client(agent_identity()) as client:
        watcher = ClusterWatcher(lambda: client, on_change=changes, **kwargs)
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.serve)
            yield watcher, changes
            nursery.cancel_scope.cancel()


async def put(reg: InProcessRegistry, name: str, labels: dict[str, str] | None = None, **kwargs: Any) -> int:
    """Store a kube_cluster as the registry stores it (the wire dict, with its secrets); its revision."""
    wire = cluster_wire(name, labels, **kwargs)
    return (await reg.store.put("kube_cluster", name, wire)).revision


async def put_raw(reg: InProcessRegistry, name: str, wire: dict[str, Any]) -> int:
    return (await reg.store.put("kube_cluster", name, wire)).revision


async def delete(reg: InProcessRegistry, name: str) -> int:
    return (await reg.store.delete("kube_cluster", name)).revision


async def watch_opened(reg: InProcessRegistry, count: int) -> list[str | None]:
    """Wait for ``count`` watch requests; the revision each asked to resume from."""
    with trio.fail_after(600):
        requests = await reg.wait_requests(WATCH, count)
    return [r.params.get("revision") for r in requests]


def labels_of(watcher: ClusterWatcher) -> dict[str, dict[str, str]]:
    return {name: cluster.static_labels() for name, cluster in watcher.clusters.items()}


# ---------------------------------------------------------------------------------------------- Backoff


def test_backoff_ceiling_doubles_up_to_the_cap_and_reset_starts_over() -> None:
    rng = UpperBoundRng()
    backoff = Backoff(base=0.5, cap=8.0, rng=cast(random.Random, rng))
    delays = [backoff.next() for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [high for _, high in rng.calls] == delays
    backoff.reset()
    assert backoff.next() == 0.5


def test_backoff_is_jittered_within_its_ceiling() -> None:
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(7))
    for failures in range(12):
        ceiling = min(30.0, 2.0**failures)
        delay = backoff.next()
        assert 0.0 <= delay <= ceiling
    # Spread: many draws at the cap are not all the same value (a fleet must not reconnect in lockstep).
    assert len({round(backoff.next(), 6) for _ in range(50)}) > 40


def test_backoff_survives_an_endless_outage() -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(5000)]  # days of failures: no overflow, never above the cap
    assert max(delays) <= 30.0


# --------------------------------------------------------------------------------------- list + watch


async def test_lists_then_watches_from_the_listed_revision(autojump_clock: trio.abc.Clock) -> None:
    async with registry() as reg:
        await put(reg, "a", {"env": "prod"})
        listed = await put(reg, "b")
        async with watching(reg) as (watcher, changes):
            assert await watch_opened(reg, 1) == [str(listed)]
            await until(lambda: watcher.connected)
            assert watcher.synced.is_set()
            assert labels_of(watcher) == {"a": {"env": "prod"}, "b": {}}
            assert changes.count == 1


async def test_events_are_applied_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with registry() as reg:
        await put(reg, "a")
        async with watching(reg) as (watcher, changes):
            await watch_opened(reg, 1)
            await until(lambda: watcher.connected)
            await put(reg, "b", {"env": "prod"})
            await put(reg, "a", {"env": "dev"})
            last = await delete(reg, "b")
            await until(lambda: watcher.revision == last)
            assert labels_of(watcher) == {"a": {"env": "dev"}}
            assert changes.count == 1 + 3  # the list, then each PUT/DELETE; bookmarks change nothing served
            assert watcher.statistics()["events"] == 3


# What the agent meets when a watch cannot be reopened: transport errors as the client maps them, or the
# registry's own refusals (a Status answer).
REOPEN_FAILURES: dict[str, Exception] = {
    "ConnectionProblem": httpx.ConnectError("connection refused"),
    "Timeout": httpx.ConnectTimeout("registry too slow"),
    "Unauthenticated": Unauthenticated("certificate expired"),
    "AccessDenied": AccessDenied("not allowed yet"),
}


@pytest.mark.parametrize("failure", REOPEN_FAILURES.values(), ids=REOPEN_FAILURES.keys())
async def test_keeps_clusters_through_repeated_errors_and_resumes_from_the_last_revision(
    autojump_clock: trio.abc.Clock, failure: Exception
) -> None:
    async with registry() as reg:
        await put(reg, "a", {"env": "prod"})
        listed = await put(reg, "b")
        async with watching(reg) as (watcher, _):
            await watch_opened(reg, 1)
            await until(lambda: watcher.connected)
            seen = await put(reg, "c")
            await until(lambda: watcher.revision == seen)
            known = labels_of(watcher)
            assert set(known) == {"a", "b", "c"}

            reg.fail_next(WATCH, failure, times=3)
            reg.break_watches(httpx.ReadError("connection reset by peer"))
            await watch_opened(reg, 2)
            for attempts in range(2, 5):
                await watch_opened(reg, attempts)
                assert labels_of(watcher) == known, "an outage must never unregister anything"

            assert await watch_opened(reg, 5) == [str(listed)] + [str(seen)] * 4
            await until(lambda: watcher.connected)
            assert len(reg.requests_to(LIST)) == 1, "resuming must not relist"
            assert labels_of(watcher) == known
            await delete(reg, "a")
            await until(lambda: "a" not in watcher.clusters)
            assert watcher.statistics()["errors"] == 4


async def test_a_registry_that_closes_the_watch_is_resumed(autojump_clock: trio.abc.Clock) -> None:
    async with registry() as reg:
        await put(reg, "a")
        async with watching(reg) as (watcher, _):
            await watch_opened(reg, 1)
            await until(lambda: watcher.connected)
            seen = await put(reg, "b")
            await until(lambda: watcher.revision == seen)
            reg.break_watches()  # the registry restarted: the stream just ends
            assert (await watch_opened(reg, 2))[1] == str(seen)
            assert set(watcher.clusters) == {"a", "b"}


async def test_failing_first_list_is_retried_and_nothing_is_served_meanwhile(autojump_clock: trio.abc.Clock) -> None:
    async with registry() as reg:
        listed = await put(reg, "a")
        reg.fail_next(LIST, httpx.ConnectError("down"))
        reg.fail_next(LIST, httpx.ReadTimeout("slow"))
        async with watching(reg) as (watcher, changes):
            with trio.fail_after(600):
                await reg.wait_requests(LIST, 2)
            assert watcher.clusters == {}
            assert not watcher.synced.is_set()
            assert changes.count == 0
            assert await watch_opened(reg, 1) == [str(listed)]
            assert set(watcher.clusters) == {"a"}
            assert watcher.synced.is_set()


async def away_and_compacted(reg: InProcessRegistry, writes: Callable[[], Any]) -> None:
    """The agent loses its watch; while it backs off, ``writes`` happen and the history is compacted past
    the agent's revision, so its resume is answered ``Compacted`` (in-band, as the registry does)."""
    reg.fail_next(WATCH, httpx.ConnectError("blip"))
    reg.break_watches(httpx.ReadError("blip"))
    await writes()
    await reg.store.compact(keep=0)


async def test_compacted_relists_and_replaces_the_whole_set(autojump_clock: trio.abc.Clock) -> None:
    async with registry() as reg:
        await put(reg, "a", {"env": "prod"})
        await put(reg, "b")
        await put(reg, "gone-later")
        async with watching(reg) as (watcher, changes):
            await watch_opened(reg, 1)
            await until(lambda: watcher.connected)
            assert set(watcher.clusters) == {"a", "b", "gone-later"}

            async def meanwhile() -> None:  # b deleted, a relabelled, c created
                await delete(reg, "b")
                await put(reg, "a", {"env": "dev"})
                await put(reg, "c")

            await away_and_compacted(reg, meanwhile)
            latest = await reg.store.revision()
            await watch_opened(reg, 4)  # the failed reopen, the compacted resume, the watch after the relist
            assert (await watch_opened(reg, 4))[-1] == str(latest)
            assert labels_of(watcher) == {"a": {"env": "dev"}, "c": {}, "gone-later": {}}
            assert len(reg.requests_to(LIST)) == 2
            assert watcher.statistics()["relists_after_compaction"] == 1
            assert changes.count == 2


async def test_compacted_in_the_stream_relists_at_once(autojump_clock: trio.abc.Clock) -> None:
    """Fake client: a watcher that fell behind gets ``Compacted`` mid-stream. History is gone, not the
    registry: relist at once rather than after a backoff sleep."""
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=5)
    changes = Changes()
    watcher = ClusterWatcher(lambda: cast(RegistryClient, client), on_change=changes)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.serve)
        first = await client.next_session(0)
        client.items = [cluster_wire("b")]
        client.revision = 40
        failed_at = trio.current_time()
        await first.fail(Compacted("revision 5 is compacted"))
        second = await client.next_session(1)
        assert second.revision == 40
        assert set(watcher.clusters) == {"b"}
        assert second.opened_at - failed_at < 0.01
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------ invalid resources


def _future_field() -> dict[str, Any]:
    wire = cluster_wire("from-the-future")
    wire["spec"]["quantum_tunnel"] = {"enabled": True}
    return wire


def _bad_base64() -> dict[str, Any]:
    wire = cluster_wire("bad-base64")
    wire["spec"]["kubeconfig"] = "!!not base64!!"
    return wire


def _bad_dynamic() -> dict[str, Any]:
    wire = cluster_wire("bad-dynamic")
    wire["spec"]["dynamic_labels"] = {"env": {"command": [], "period": "1m"}}
    return wire


def _bad_name() -> dict[str, Any]:
    wire = cluster_wire("x")
    wire["metadata"]["name"] = "../../etc/passwd"
    return wire


# What a newer (or broken) registry might hold, by the name the watcher keys it under ("": none at all).
INVALID: dict[str, Callable[[], dict[str, Any]]] = {
    "from-the-future": _future_field,
    "bad-base64": _bad_base64,
    "bad-dynamic": _bad_dynamic,
    "bad-label": lambda: cluster_wire("bad-label", {"not a key!": "x"}),
    "../../etc/passwd": _bad_name,
    "": lambda: {"kind": "kube_cluster", "version": "v3", "spec": {}},
}


async def test_invalid_resources_are_set_aside_and_do_not_crash(autojump_clock: trio.abc.Clock) -> None:
    async with registry() as reg:
        await put(reg, "good", {"env": "prod"})
        for index, (name, make) in enumerate(INVALID.items()):
            await put_raw(reg, f"stored-{index}" if name in ("", "../../etc/passwd") else name, make())
        async with watching(reg) as (watcher, _):
            await watch_opened(reg, 1)
            await until(lambda: watcher.connected)
            assert set(watcher.clusters) == {"good"}
            # a resource without a name cannot be keyed: it is skipped and counted, the rest is set aside by name
            assert set(watcher.invalid) == set(INVALID) - {""}
            assert watcher.statistics()["malformed"] == 1
            assert "quantum_tunnel" in watcher.invalid["from-the-future"]
            assert "base64" in watcher.invalid["bad-base64"]
            assert all(reason for reason in watcher.invalid.values())

            # A served cluster updated into something invalid stops being served and is reported ...
            broken = cluster_wire("good")
            broken["spec"]["kubeconfig"] = "!!!"
            await put_raw(reg, "good", broken)
            await until(lambda: "good" in watcher.invalid)
            assert "good" not in watcher.clusters
            # ... and a fixed version brings it back; a delete forgets an invalid one.
            await put(reg, "good", {"env": "prod"})
            last = await delete(reg, "bad-label")
            await until(lambda: watcher.revision == last)
            assert set(watcher.clusters) == {"good"}
            assert set(watcher.invalid) == set(INVALID) - {"bad-label", ""}
            assert watcher.connected, "bad resources must not cost the connection"
            assert len(reg.requests_to(WATCH)) == 1


async def test_kubeconfig_contents_are_left_to_registration(autojump_clock: trio.abc.Clock) -> None:
    """The registry validated them; the supervisor checks a kubeconfig only for clusters it registers, so
    even a hostile one (garbage, or 600 KiB: big, yet under the store's 1 MiB limit per value) reaches it as a
    cluster rather than being dropped here."""
    async with registry() as reg:
        await put(reg, "garbage", config=b"not a kubeconfig")
        await put(reg, "huge", config=b"# " + b"x" * (600 << 10) + b"\n" + kubeconfig())
        async with watching(reg) as (watcher, _):
            await watch_opened(reg, 1)
            await until(watcher.synced.is_set)
            assert watcher.clusters["garbage"].kubeconfig == b"not a kubeconfig"
            assert len(watcher.clusters["huge"].kubeconfig) > 600 << 10
            assert watcher.invalid == {}


async def test_other_kinds_in_the_stream_are_ignored(autojump_clock: trio.abc.Clock) -> None:
    """Fake client: the registry only sends the kinds asked for, but a resource of another kind must not
    evict a kube_cluster of the same name."""
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=1)
    watcher = ClusterWatcher(lambda: cast(RegistryClient, client), on_change=Changes())
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.serve)
        session = await client.next_session(0)
        role = {"kind": "role", "version": "v7", "metadata": {"name": "a"}, "spec": {}}
        await session.event({"type": "PUT", "revision": 2, "resource": role})
        await until(lambda: watcher.revision == 2)
        assert set(watcher.clusters) == {"a"}
        assert watcher.invalid == {}
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------ backoff in serve


async def test_reconnect_delays_grow_and_reset_after_a_healthy_watch(autojump_clock: trio.abc.Clock) -> None:
    async with registry() as reg:
        await put(reg, "a")
        reg.fail_next(WATCH, httpx.ConnectError("down"), times=5)
        backoff = Backoff(base=1.0, cap=8.0, rng=cast(random.Random, UpperBoundRng()))
        async with watching(reg, backoff=backoff) as (watcher, _):
            await watch_opened(reg, 6)
            # The INIT event: a healthy watch resets the backoff (``connected`` is set before it arrives).
            await until(lambda: watcher.connected and backoff.failures == 0)
            times = [r.time for r in reg.requests_to(WATCH)]
            assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [1.0, 2.0, 4.0, 8.0, 8.0]

            failed_at = trio.current_time()
            reg.break_watches(httpx.ReadError("blip"))
            await watch_opened(reg, 7)
            assert reg.requests_to(WATCH)[-1].time - failed_at == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ idle limit


async def test_a_silent_watch_is_abandoned_after_the_idle_limit(autojump_clock: trio.abc.Clock) -> None:
    async with registry(bookmark_interval=1e6) as reg:  # a half-open connection: nothing ever arrives
        listed = await put(reg, "a")
        backoff = Backoff(base=1.0, cap=8.0, rng=cast(random.Random, UpperBoundRng()))
        async with watching(reg, idle_limit=45.0, backoff=backoff) as (watcher, _):
            assert await watch_opened(reg, 2) == [str(listed)] * 2
            first, second = reg.requests_to(WATCH)
            assert second.time - first.time == pytest.approx(45.0 + 1.0)
            assert reg.open_watches == 1  # the silent one was closed
            assert set(watcher.clusters) == {"a"}
            assert len(reg.requests_to(LIST)) == 1


async def test_bookmarks_keep_a_quiet_watch_alive(autojump_clock: trio.abc.Clock) -> None:
    async with registry(bookmark_interval=10.0) as reg, watching(reg, idle_limit=45.0) as (watcher, _):
        await watch_opened(reg, 1)
        await trio.sleep(300)  # five minutes of bookmarks every 10 s (virtual time)
        assert len(reg.requests_to(WATCH)) == 1
        assert watcher.connected
        assert reg.open_watches == 1


# ----------------------------------------------------------------------------------- changed names


async def test_changed_names_are_reported_for_partial_reconciles(autojump_clock: trio.abc.Clock) -> None:
    """The agent reconciles only the names the watcher reports; a relist reports "everything" (None)."""
    async with registry() as reg:
        await put(reg, "a")
        await put(reg, "b")
        async with watching(reg) as (watcher, _):
            await watch_opened(reg, 1)
            await until(lambda: watcher.connected)
            assert watcher.take_changes() is None
            assert watcher.take_changes() == set()

            await put(reg, "b", {"env": "prod"})
            await put(reg, "c", {"bad key!": "x"})
            last = await delete(reg, "a")
            await until(lambda: watcher.revision == last)
            assert watcher.take_changes() == {"a", "b", "c"}
            assert watcher.take_changes() == set()

            async def meanwhile() -> None:
                await put(reg, "d")

            await away_and_compacted(reg, meanwhile)
            await until(lambda: len(reg.requests_to(LIST)) == 2 and watcher.connected)
            assert watcher.take_changes() is None
