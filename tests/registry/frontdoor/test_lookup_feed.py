"""The front door's heartbeat index (``ClusterLookup.feed``): it lists kube_servers once and then follows the
store's watch, so a kubectl connection finds its cluster's heartbeats without listing every heartbeat (at
100,000 kube_servers a listing costs seconds); when the watch fails it relists."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime

import trio
import trio.lowlevel

from registry.core.errors import Compacted
from registry.frontdoor.lookup import ClusterLookup
from registry.store import Event, MemoryStore
from tests.helpers import kube_server_doc

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _lookup(store: MemoryStore) -> ClusterLookup:
    return ClusterLookup(store, now=lambda: NOW, max_age=0.01)


async def _put(store: MemoryStore, host: str, cluster: str, *, expires_in: float = 300) -> None:
    await store.put(
        "kube_server", f"{host}/{cluster}", kube_server_doc(host, cluster, expires=NOW.timestamp() + expires_in)
    )


async def _hosts(lookup: ClusterLookup, cluster: str) -> list[str]:
    return sorted(server.host_id for server in await lookup.heartbeats(cluster))


async def _until(lookup: ClusterLookup, cluster: str, hosts: list[str]) -> None:
    with trio.fail_after(5):
        while await _hosts(lookup, cluster) != hosts:
            await trio.lowlevel.checkpoint()


async def test_the_index_follows_writes_without_listing_again(nursery: trio.Nursery) -> None:
    store = MemoryStore(clock=NOW.timestamp)
    for i in range(2000):
        await _put(store, f"h{i}", f"c{i % 500}")
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    assert await _hosts(lookup, "c7") == ["h1007", "h1507", "h507", "h7"]
    await _put(store, "new", "c7")
    await _until(lookup, "c7", ["h1007", "h1507", "h507", "h7", "new"])
    await store.delete("kube_server", "h7/c7")
    await _until(lookup, "c7", ["h1007", "h1507", "h507", "new"])
    for i in range(200):  # many connections: none lists the 2,000 heartbeats
        await lookup.heartbeats(f"c{i}")
    assert (lookup.listings, lookup.relists) == (0, 1)
    assert await lookup.heartbeats("unknown") == []


async def test_expired_heartbeats_are_dropped_on_read(nursery: trio.Nursery) -> None:
    store = MemoryStore(clock=lambda: NOW.timestamp() - 100)  # the store has not expired it yet
    await _put(store, "old", "c", expires_in=-10)
    await _put(store, "fresh", "c")
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    assert await _hosts(lookup, "c") == ["fresh"]


async def test_invalidate_reads_a_fresh_listing_once(nursery: trio.Nursery) -> None:
    store = MemoryStore(clock=NOW.timestamp)
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    await _put(store, "a", "c")
    lookup.invalidate()
    assert await _hosts(lookup, "c") == ["a"]  # seen at once, whether or not the event was applied yet
    assert lookup.listings == 1
    await _until(lookup, "c", ["a"])
    assert lookup.listings == 1  # later reads use the index again


class BrokenOnce(MemoryStore):
    """A store whose first watch fails after one event, as a watcher that fell behind does."""

    broke = False

    def watch(
        self, kinds: Collection[str], *, since: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        inner = super().watch(kinds, since=since)
        if self.broke:
            return inner
        self.broke = True

        @asynccontextmanager
        async def failing() -> AsyncIterator[AsyncIterator[Event]]:
            async with inner as events:

                async def once() -> AsyncIterator[Event]:
                    yield await anext(events)
                    raise Compacted("watcher fell behind")

                yield once()

        return failing()


async def test_a_watch_that_fell_behind_resumes_without_relisting(nursery: trio.Nursery) -> None:
    store = BrokenOnce(clock=NOW.timestamp)
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    await _put(store, "a", "c")  # delivered, then the watch fails
    await _put(store, "b", "c")  # replayed from history by the resumed watch
    await _until(lookup, "c", ["a", "b"])
    await _put(store, "d", "c")
    await _until(lookup, "c", ["a", "b", "d"])
    assert (lookup.relists, lookup.listings) == (1, 0)  # no listing of every heartbeat for a burst


class HistoryGone(BrokenOnce):
    """After the first watch fails, resuming is refused once (history compacted past it), as a store does
    when the index fell further behind than its history reaches."""

    refused = False

    def watch(
        self, kinds: Collection[str], *, since: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        if self.broke and not self.refused:
            self.refused = True

            @asynccontextmanager
            async def too_old() -> AsyncIterator[AsyncIterator[Event]]:
                raise Compacted(f"revision {since} is older than the history kept")
                yield  # pragma: no cover

            return too_old()
        return super().watch(kinds, since=since)


async def test_a_watch_that_cannot_resume_relists_and_the_index_is_right_again(nursery: trio.Nursery) -> None:
    store = HistoryGone(clock=NOW.timestamp)
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    await _put(store, "a", "c")  # delivered, then the watch fails; resuming is refused
    await _put(store, "b", "c")
    with trio.fail_after(5):
        while lookup.relists < 2:  # noqa: ASYNC110 - polling a counter with a deadline
            await trio.sleep(0.01)
    await _until(lookup, "c", ["a", "b"])
    await _put(store, "d", "c")
    await _until(lookup, "c", ["a", "b", "d"])
