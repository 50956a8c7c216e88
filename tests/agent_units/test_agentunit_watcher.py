"""ClusterWatcher and Backoff against a fake registry client, under trio's MockClock (autojump).

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

import pytest
import trio
from agentunit_fakes import FakeRegistryClient, UpperBoundRng, cluster_wire, kubeconfig

from agent.watcher import Backoff, ClusterWatcher
from registry.client import RegistryClient
from registry.core.errors import (
    AccessDenied,
    Compacted,
    ConnectionProblem,
    KubeportError,
    Timeout,
    Unauthenticated,
)


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
async def watching(client: FakeRegistryClient, **kwargs: Any) -> AsyncIterator[tuple[ClusterWatcher, Changes]]:
    changes = Changes()
    watcher = ClusterWatcher(lambda: cast(RegistryClient, client), on_change=changes, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.serve)
        yield watcher, changes
        nursery.cancel_scope.cancel()


def put(name: str, revision: int, labels: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    return {"type": "PUT", "revision": revision, "resource": cluster_wire(name, labels, revision=revision, **kwargs)}


def delete(name: str, revision: int) -> dict[str, Any]:
    return {"type": "DELETE", "revision": revision, "resource": {"kind": "kube_cluster", "metadata": {"name": name}}}


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
    client = FakeRegistryClient(items=[cluster_wire("a", {"env": "prod"}), cluster_wire("b")], revision=5)
    async with watching(client) as (watcher, changes):
        session = await client.next_session(0)
        assert session.revision == 5
        assert watcher.synced.is_set()
        assert labels_of(watcher) == {"a": {"env": "prod"}, "b": {}}
        assert changes.count == 1
        assert watcher.connected


async def test_events_are_applied_in_order(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=5)
    async with watching(client) as (watcher, changes):
        session = await client.next_session(0)
        await session.event({"type": "INIT", "revision": 5})
        await session.event(put("b", 6, {"env": "prod"}))
        await session.event(put("a", 7, {"env": "dev"}))
        await session.event(delete("b", 8))
        await session.event({"type": "SOMETHING_NEW", "revision": 99})  # from a newer registry: ignored
        await session.event({"type": "BOOKMARK", "revision": 12})
        await until(lambda: watcher.revision == 12)
        assert labels_of(watcher) == {"a": {"env": "dev"}}
        assert changes.count == 1 + 3  # the list, then each PUT/DELETE; bookmarks change nothing served
        assert watcher.statistics()["events"] == 3


@pytest.mark.parametrize(
    "error",
    [
        ConnectionProblem("registry unreachable"),
        Timeout("registry too slow"),
        Unauthenticated("certificate expired"),
        AccessDenied("not allowed yet"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_keeps_clusters_through_repeated_errors_and_resumes_from_the_last_revision(
    autojump_clock: trio.abc.Clock, error: KubeportError
) -> None:
    client = FakeRegistryClient(items=[cluster_wire("a", {"env": "prod"}), cluster_wire("b")], revision=5)
    async with watching(client) as (watcher, _):
        first = await client.next_session(0)
        await first.event(put("c", 6))
        await first.event({"type": "BOOKMARK", "revision": 9})
        await until(lambda: watcher.revision == 9)
        known = labels_of(watcher)
        assert set(known) == {"a", "b", "c"}

        client.watch_errors.extend([error, error, error])
        await first.fail(error)
        await until(lambda: len(client.watch_calls) >= 2)
        assert not watcher.connected
        for attempts in range(2, 5):
            await client.wait_for(lambda: len(client.watch_calls) >= attempts)  # noqa: B023 - awaited at once
            assert labels_of(watcher) == known, "an outage must never unregister anything"

        second = await client.next_session(1)
        assert client.watch_revisions == [5, 9, 9, 9, 9]
        assert second.revision == 9
        assert len(client.list_calls) == 1, "resuming must not relist"
        assert labels_of(watcher) == known
        await second.event(delete("a", 10))
        await until(lambda: "a" not in watcher.clusters)
        assert watcher.statistics()["errors"] == 4


async def test_a_registry_that_closes_the_watch_is_resumed(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=3)
    async with watching(client) as (watcher, _):
        first = await client.next_session(0)
        await first.event(put("b", 4))
        await first.send.aclose()  # the registry restarted: the stream just ends
        second = await client.next_session(1)
        assert second.revision == 4
        assert set(watcher.clusters) == {"a", "b"}


async def test_failing_first_list_is_retried_and_nothing_is_served_meanwhile(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=2)
    client.list_errors.extend([ConnectionProblem("down"), Timeout("slow")])
    async with watching(client) as (watcher, changes):
        await until(lambda: len(client.list_calls) == 2)
        assert watcher.clusters == {}
        assert not watcher.synced.is_set()
        assert changes.count == 0
        session = await client.next_session(0)
        assert session.revision == 2
        assert set(watcher.clusters) == {"a"}
        assert watcher.synced.is_set()


@pytest.mark.parametrize("where", ["in the stream", "when opening"])
async def test_compacted_relists_and_replaces_the_whole_set(autojump_clock: trio.abc.Clock, where: str) -> None:
    client = FakeRegistryClient(
        items=[cluster_wire("a", {"env": "prod"}), cluster_wire("b"), cluster_wire("gone-later")], revision=5
    )
    async with watching(client) as (watcher, changes):
        first = await client.next_session(0)
        assert set(watcher.clusters) == {"a", "b", "gone-later"}

        # While the agent was away: b deleted, a relabelled, c created, and the history compacted.
        client.items = [cluster_wire("a", {"env": "dev"}), cluster_wire("c"), cluster_wire("gone-later")]
        client.revision = 40
        failed_at = trio.current_time()
        if where == "when opening":
            client.watch_errors.append(Compacted("revision 5 is compacted"))
            await first.fail(ConnectionProblem("blip"))
        else:
            await first.fail(Compacted("revision 5 is compacted"))
        second = await client.next_session(1)

        assert second.revision == 40
        assert labels_of(watcher) == {"a": {"env": "dev"}, "c": {}, "gone-later": {}}
        assert len(client.list_calls) == 2
        assert watcher.statistics()["relists_after_compaction"] == 1
        assert changes.count == 2
        if where == "in the stream":
            # History is gone, not the registry: relist at once rather than after a backoff sleep.
            assert second.opened_at - failed_at < 0.01


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


INVALID: dict[str, Callable[[], dict[str, Any]]] = {
    "from-the-future": _future_field,
    "bad-base64": _bad_base64,
    "bad-dynamic": _bad_dynamic,
    "bad-label": lambda: cluster_wire("bad-label", {"not a key!": "x"}),
    "../../etc/passwd": _bad_name,
    "": lambda: {"kind": "kube_cluster", "version": "v3", "spec": {}},
}


async def test_invalid_resources_are_set_aside_and_do_not_crash(autojump_clock: trio.abc.Clock) -> None:
    items = [cluster_wire("good", {"env": "prod"}), *(make() for make in INVALID.values())]
    client = FakeRegistryClient(items=items, revision=5)
    async with watching(client) as (watcher, _):
        session = await client.next_session(0)
        assert set(watcher.clusters) == {"good"}
        # a resource without a name cannot be keyed: it is skipped and counted, the rest is set aside by name
        assert set(watcher.invalid) == set(INVALID) - {""}
        assert watcher.statistics()["malformed"] == 1
        assert "quantum_tunnel" in watcher.invalid["from-the-future"]
        assert "base64" in watcher.invalid["bad-base64"]
        assert all(reason for reason in watcher.invalid.values())

        # A served cluster updated into something invalid stops being served and is reported ...
        broken = put("good", 6)
        broken["resource"]["spec"]["kubeconfig"] = "!!!"
        await session.event(broken)
        await until(lambda: "good" in watcher.invalid)
        assert "good" not in watcher.clusters
        # ... and a fixed version brings it back; a delete forgets an invalid one.
        await session.event(put("good", 7, {"env": "prod"}))
        await session.event(delete("bad-label", 8))
        await until(lambda: watcher.revision == 8)
        assert set(watcher.clusters) == {"good"}
        assert set(watcher.invalid) == set(INVALID) - {"bad-label", ""}
        assert watcher.connected, "bad resources must not cost the connection"
        assert len(client.watch_calls) == 1


async def test_kubeconfig_contents_are_left_to_registration(autojump_clock: trio.abc.Clock) -> None:
    """The registry validated them; the supervisor checks a kubeconfig only for clusters it registers, so
    even a hostile one (garbage, 2 MiB) reaches it as a cluster rather than being dropped here."""
    garbage = cluster_wire("garbage", config=b"not a kubeconfig")
    huge = cluster_wire("huge", config=b"# " + b"x" * (2 << 20) + b"\n" + kubeconfig())
    client = FakeRegistryClient(items=[garbage, huge], revision=5)
    async with watching(client) as (watcher, _):
        await client.next_session(0)
        assert watcher.clusters["garbage"].kubeconfig == b"not a kubeconfig"
        assert len(watcher.clusters["huge"].kubeconfig) > 2 << 20
        assert watcher.invalid == {}


async def test_other_kinds_in_the_stream_are_ignored(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=1)
    async with watching(client) as (watcher, _):
        session = await client.next_session(0)
        role = {"kind": "role", "version": "v7", "metadata": {"name": "a"}, "spec": {}}
        await session.event({"type": "PUT", "revision": 2, "resource": role})
        await until(lambda: watcher.revision == 2)
        assert set(watcher.clusters) == {"a"}
        assert watcher.invalid == {}


# ------------------------------------------------------------------------------------ backoff in serve


async def test_reconnect_delays_grow_and_reset_after_a_healthy_watch(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=1)
    client.watch_errors.extend(ConnectionProblem(f"down {i}") for i in range(5))
    backoff = Backoff(base=1.0, cap=8.0, rng=cast(random.Random, UpperBoundRng()))
    async with watching(client, backoff=backoff) as (watcher, _):
        first = await client.next_session(0)
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(client.watch_times)]
        assert gaps == [1.0, 2.0, 4.0, 8.0, 8.0]

        await first.event({"type": "BOOKMARK", "revision": 2})  # a healthy watch resets the backoff
        await until(lambda: watcher.revision == 2)
        failed_at = trio.current_time()
        await first.fail(ConnectionProblem("blip"))
        second = await client.next_session(1)
        assert second.opened_at - failed_at == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ idle limit


async def test_a_silent_watch_is_abandoned_after_the_idle_limit(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(items=[cluster_wire("a")], revision=7)
    backoff = Backoff(base=1.0, cap=8.0, rng=cast(random.Random, UpperBoundRng()))
    async with watching(client, idle_limit=45.0, backoff=backoff) as (watcher, _):
        first = await client.next_session(0)
        second = await client.next_session(1)
        assert first.closed
        assert second.opened_at - first.opened_at == pytest.approx(45.0 + 1.0)
        assert second.revision == 7
        assert set(watcher.clusters) == {"a"}
        assert len(client.list_calls) == 1


async def test_bookmarks_keep_a_quiet_watch_alive(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(items=[], revision=7)
    async with watching(client, idle_limit=45.0) as (watcher, _):
        first = await client.next_session(0)
        for revision in range(8, 38):  # five minutes of bookmarks every 10 s
            await trio.sleep(10)
            await first.event({"type": "BOOKMARK", "revision": revision})
        await until(lambda: watcher.revision == 37)
        assert len(client.watch_calls) == 1
        assert not first.closed


# ----------------------------------------------------------------------------------- changed names


async def test_changed_names_are_reported_for_partial_reconciles(autojump_clock: trio.abc.Clock) -> None:
    """The agent reconciles only the names the watcher reports; a relist reports "everything" (None)."""
    client = FakeRegistryClient(items=[cluster_wire("a"), cluster_wire("b")], revision=5)
    async with watching(client) as (watcher, _):
        first = await client.next_session(0)
        assert watcher.take_changes() is None
        assert watcher.take_changes() == set()

        broken = put("c", 7)
        broken["resource"]["metadata"]["labels"] = {"bad key!": "x"}
        await first.event(put("b", 6, {"env": "prod"}))
        await first.event(broken)
        await first.event(delete("a", 8))
        await first.event({"type": "BOOKMARK", "revision": 9})
        await until(lambda: watcher.revision == 9)
        assert watcher.take_changes() == {"a", "b", "c"}
        assert watcher.take_changes() == set()

        client.revision = 20
        await first.fail(Compacted("gone"))
        await client.next_session(1)
        assert watcher.take_changes() is None
