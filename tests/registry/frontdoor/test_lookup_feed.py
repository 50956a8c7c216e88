"""The front door's heartbeat index (``ClusterLookup.feed``): it lists kube_servers once and then follows the
store's watch, so a kubectl connection finds its cluster's heartbeats without listing every heartbeat (at
100,000 kube_servers a listing costs seconds); when the watch fails it relists."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.lowlevel

from registry.core.errors import Compacted, KubeportError
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


@asynccontextmanager
async def _fails_after_one_event(
    inner: AbstractAsyncContextManager[AsyncIterator[Event]],
) -> AsyncIterator[AsyncIterator[Event]]:
    """``inner``'s watch, failing after its first event as a watcher that fell behind does."""
    async with inner as events:

        async def once() -> AsyncIterator[Event]:
            yield await anext(events)
            raise Compacted("watcher fell behind")

        yield once()


class BrokenOnce(MemoryStore):
    """A store whose first heartbeat watch fails after one event, as a watcher that fell behind does."""

    broke = False

    def watch(
        self, kinds: Collection[str], *, since: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        inner = super().watch(kinds, since=since)
        if self.broke or "kube_server" not in kinds:  # the heartbeat index's watch only
            return inner
        self.broke = True
        return _fails_after_one_event(inner)


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
        if self.broke and not self.refused and "kube_server" in kinds:
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


# --- users, roles and kube_clusters from the same feed -----------------------------------------------------


def _user(name: str, roles: list[str]) -> dict[str, object]:
    return {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": roles}}


def _role(name: str) -> dict[str, object]:
    spec = {"allow": {"kubernetes_labels": {"env": "dev"}, "kubernetes_groups": ["viewers"]}}
    return {"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": spec}


async def _user_roles(lookup: ClusterLookup, name: str) -> list[str] | None:
    found = await lookup.user(name)
    return None if found is None else list(found.roles)


async def test_users_and_roles_come_from_the_feed_and_follow_the_watch(nursery: trio.Nursery) -> None:
    store = MemoryStore(clock=NOW.timestamp)
    await store.put("user", "alice", _user("alice", ["a", "b"]))
    await store.put("role", "a", _role("a"))
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    assert await _user_roles(lookup, "alice") == ["a", "b"]
    assert [r.name for r in await lookup.roles(["b", "a", "nope"])] == ["a"]  # a missing role grants nothing
    assert await lookup.user("bob") is None
    assert lookup.object_reads == 0
    await store.put("role", "b", _role("b"))
    await store.put("user", "alice", _user("alice", ["b"]))
    with trio.fail_after(5):
        while await _user_roles(lookup, "alice") != ["b"]:
            await trio.lowlevel.checkpoint()
    assert [r.name for r in await lookup.roles(["a", "b"])] == ["a", "b"]
    await store.delete("role", "a")
    await store.delete("user", "alice")
    with trio.fail_after(5):
        while await lookup.user("alice") is not None or len(await lookup.roles(["a", "b"])) != 1:
            await trio.lowlevel.checkpoint()
    assert lookup.object_reads == 0


async def test_a_user_past_its_store_ttl_is_gone_before_the_store_expires_it(nursery: trio.Nursery) -> None:
    store = MemoryStore(clock=lambda: NOW.timestamp() - 100)  # the store has not expired it yet
    await store.put("user", "temp", _user("temp", []), expires=NOW.timestamp() - 10)
    await store.put("user", "kept", _user("kept", []), expires=NOW.timestamp() + 10)
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    assert await lookup.user("temp") is None
    assert await lookup.user("kept") is not None


async def test_without_a_live_feed_and_after_invalidate_the_store_is_read() -> None:
    store = MemoryStore(clock=NOW.timestamp)
    await store.put("user", "alice", _user("alice", []))
    lookup = _lookup(store)  # feed never started
    assert await _user_roles(lookup, "alice") == []
    assert lookup.object_reads == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(lookup.feed)
        await lookup.user("alice")
        assert lookup.object_reads == 1
        lookup.invalidate()  # a caller that just wrote: the next read of each kind goes to the store
        await store.put("user", "alice", _user("alice", ["x"]))
        assert await _user_roles(lookup, "alice") == ["x"]
        assert lookup.object_reads == 2
        nursery.cancel_scope.cancel()
    await store.delete("user", "alice")  # the feed is gone: nothing would tell a cache
    assert await lookup.user("alice") is None
    assert lookup.object_reads == 3


@pytest.mark.parametrize(
    "value",
    [
        {"kind": "user", "version": "v2", "metadata": {"name": "alice"}, "spec": {"roles": "not-a-list"}},
        {"kind": "user", "version": "v99", "metadata": {"name": "alice"}, "spec": {}},
        {"kind": "user", "metadata": {"name": "alice" * 10_000}},
        {},
    ],
)
async def test_an_unreadable_stored_user_is_read_from_the_store_which_refuses_it(
    nursery: trio.Nursery, value: dict[str, object]
) -> None:
    """A value a broken or newer writer left is not cached as anything: the read goes to the store and fails
    as a store read did before the feed (never a user with default roles)."""
    store = MemoryStore(clock=NOW.timestamp)
    await store.put("user", "alice", value)
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    with pytest.raises(KubeportError):
        await lookup.user("alice")
    assert lookup.object_reads == 1


class ObjectsWatchBreaks(MemoryStore):
    """The first watch of users, roles and kube_clusters fails after one event; the relist that follows
    waits at ``gate`` (so a test can act while the objects are not live)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.broke = False
        self.gate = trio.Event()
        self.user_lists = 0

    async def list(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        if kind == "user":
            self.user_lists += 1
            if self.user_lists > 1:
                await self.gate.wait()
        return await super().list(kind, *args, **kwargs)

    def watch(
        self, kinds: Collection[str], *, since: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        inner = super().watch(kinds, since=since)
        if self.broke or "user" not in kinds:
            return inner
        self.broke = True
        return _fails_after_one_event(inner)


async def test_while_the_objects_watch_is_down_users_come_from_the_store(nursery: trio.Nursery) -> None:
    store = ObjectsWatchBreaks(clock=NOW.timestamp)
    await store.put("user", "alice", _user("alice", ["a"]))
    await store.put("user", "bob", _user("bob", []))
    lookup = _lookup(store)
    await nursery.start(lookup.feed)
    assert await _user_roles(lookup, "alice") == ["a"] and lookup.object_reads == 0
    await store.put("role", "a", _role("a"))  # delivered, then the objects' watch fails
    with trio.fail_after(5):
        while store.user_lists < 2:  # noqa: ASYNC110 - polling a counter with a deadline
            await trio.sleep(0.01)
    # The relist is held: a user deleted now must not be served from what the feed last saw.
    await store.delete("user", "alice")
    assert await lookup.user("alice") is None
    assert await _user_roles(lookup, "bob") == []
    assert lookup.object_reads == 2
    store.gate.set()
    with trio.fail_after(5):
        while lookup.object_relists < 2:  # noqa: ASYNC110 - polling a counter with a deadline
            await trio.sleep(0.01)
    assert await lookup.user("alice") is None and await _user_roles(lookup, "bob") == []
    assert lookup.object_reads == 2, "once relisted, users come from the feed again"
    assert lookup.relists == 1, "the heartbeat index was not relisted for it"
