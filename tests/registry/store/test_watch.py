"""Watch: live events, catch-up from history, resume without gap or duplicate, compaction, slow watchers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from registry.core.errors import BadParameter, Compacted
from registry.store._common import BaseStore
from registry.store._plan import Change
from tests.registry.store.store_helpers import BACKENDS, open_backend, revisions, take, wait_until

K = "kube_cluster"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[BaseStore]:
    s = await open_backend(backend, tmp_path)
    yield s
    await s.aclose()


async def write_n(store: BaseStore, n: int, kind: str = K, start: int = 0) -> None:
    for i in range(start, start + n):
        await store.put(kind, f"n{i}", {"i": i})


async def nothing(call: int) -> None:
    pass


def hook_history(
    store: BaseStore,
    before_read: Callable[[int], Awaitable[None]],
    after_read: Callable[[int], Awaitable[None]] = nothing,
) -> list[tuple[int, int]]:
    """Run ``before_read(n)`` / ``after_read(n)`` around the n-th history read of ``store``.

    Returns the list of reads made, as (after, limit).
    """
    original = store._read_history
    calls: list[tuple[int, int]] = []

    async def read(kinds: frozenset[str], after: int, limit: int) -> Sequence[Change]:
        call = len(calls)
        calls.append((after, limit))
        await before_read(call)
        page = await original(kinds, after, limit)
        await after_read(call)
        return page

    store._read_history = read  # type: ignore[method-assign]
    return calls


async def test_live_events_in_order(store: BaseStore) -> None:
    await write_n(store, 2)  # before the watch: not delivered with since=None
    async with store.watch([K]) as events:
        await store.create(K, "a", {"v": 1})
        await store.update(K, "a", {"v": 2})
        await store.delete(K, "a")
        got = await take(events, 3)
    assert [(e.type, e.record.name, e.record.value, e.record.revision) for e in got] == [
        ("PUT", "a", {"v": 1}, 3),
        ("PUT", "a", {"v": 2}, 4),
        ("DELETE", "a", {"v": 2}, 5),
    ]
    assert got[2].record.created_revision == 3


async def test_catch_up_from_since_then_live(store: BaseStore) -> None:
    await write_n(store, 10)
    async with store.watch([K], since=4) as events:
        got = await take(events, 6)
        await store.put(K, "live", {})
        got += await take(events, 1)
    assert revisions(got) == list(range(5, 12))


async def test_since_zero_replays_everything_and_since_current_replays_nothing(store: BaseStore) -> None:
    await write_n(store, 3)
    async with store.watch([K], since=0) as events:
        assert revisions(await take(events, 3)) == [1, 2, 3]
    async with store.watch([K], since=3) as events:
        await store.put(K, "x", {})
        assert revisions(await take(events, 1)) == [4]


async def test_kinds_filter(store: BaseStore) -> None:
    await store.put("token", "t0", {})
    await store.put(K, "c0", {})
    async with store.watch([K, "role"], since=0) as events:
        await store.put("token", "t1", {})
        await store.put("role", "r1", {})
        await store.put(K, "c1", {})
        got = await take(events, 3)
    assert [(e.record.kind, e.record.name) for e in got] == [(K, "c0"), ("role", "r1"), (K, "c1")]


async def test_resume_after_reconnect_gets_exactly_the_missed_events(store: BaseStore) -> None:
    async with store.watch([K]) as events:
        await write_n(store, 5)
        first = await take(events, 3)  # the client dies after three events
    last = first[-1].record.revision
    await write_n(store, 5, start=5)  # written while disconnected
    async with store.watch([K], since=last) as events:
        await store.put(K, "after", {})
        rest = await take(events, 8)
    assert revisions(first + rest) == list(range(1, 12))


async def test_write_between_subscribe_and_history_read_is_delivered_once(store: BaseStore) -> None:
    await write_n(store, 10)

    async def race(call: int) -> None:
        if call == 0:  # subscribed already, history not read yet
            await store.put(K, "racer", {})

    hook_history(store, race)
    async with store.watch([K], since=5) as events:
        got = await take(events, 6)
        for name in ("live", "live2"):
            await store.put(K, name, {})
            got += await take(events, 1)
    assert revisions(got) == list(range(6, 14))


async def test_write_right_after_the_last_history_read_is_delivered(store: BaseStore) -> None:
    await write_n(store, 4)

    async def race(call: int) -> None:
        # History has been read, the watcher has not switched to live events yet.
        await store.put(K, f"after-read{call}", {})

    calls = hook_history(store, nothing, race)
    async with store.watch([K], since=2) as events:
        got = await take(events, 3)
    assert len(calls) == 1
    assert [e.record.name for e in got] == ["n2", "n3", "after-read0"]
    assert revisions(got) == [3, 4, 5]


async def test_writes_racing_a_paged_catch_up(store: BaseStore) -> None:
    store.history_page = 3
    await write_n(store, 20)
    await write_n(store, 20, kind="token")  # interleaved noise of another kind

    async def race(call: int) -> None:
        if call < 5:
            await store.put(K, f"race{call}", {})
            await store.put("token", f"race{call}", {})

    calls = hook_history(store, race)
    async with store.watch([K], since=7) as events:
        got = await take(events, 13 + 5)
        for name in ("live", "live2"):  # the second one surely comes through the live buffer
            await store.put(K, name, {})
            got += await take(events, 1)
    assert len(calls) > 5  # several pages, with writes before each of the first five
    names = [e.record.name for e in got]
    assert names == [f"n{i}" for i in range(7, 20)] + [f"race{i}" for i in range(5)] + ["live", "live2"]
    assert revisions(got) == sorted(set(revisions(got)))


async def test_concurrent_writer_and_catching_up_watcher_see_no_gap(backend: str, tmp_path: Path) -> None:
    store = await open_backend(backend, tmp_path, watch_buffer=4)
    store.history_page = 7
    await write_n(store, 50)
    total = 50 + 100

    async def writer() -> None:
        for i in range(100):
            await store.put(K, f"w{i}", {})

    async with trio.open_nursery() as nursery, store.watch([K], since=0) as events:
        nursery.start_soon(writer)
        got = await take(events, total, timeout=30)
    assert revisions(got) == list(range(1, total + 1))
    await store.aclose()


async def test_buffer_overflow_during_catch_up_recovers_from_history(backend: str, tmp_path: Path) -> None:
    store = await open_backend(backend, tmp_path, watch_buffer=2)
    store.history_page = 3
    await write_n(store, 6)

    async def burst(call: int) -> None:
        if call in (1, 2):  # more than the live buffer holds, while catching up
            await write_n(store, 5, start=100 + 10 * call)

    hook_history(store, burst)
    async with store.watch([K], since=0) as events:
        got = await take(events, 16)
        await store.put(K, "live", {})
        got += await take(events, 1)
    assert revisions(got) == list(range(1, 18))
    assert store.statistics()["watcher_overflows"] >= 1
    await store.aclose()


async def test_slow_live_watcher_gets_compacted_then_resumes(backend: str, tmp_path: Path) -> None:
    store = await open_backend(backend, tmp_path, watch_buffer=4)
    async with store.watch([K]) as events:
        await write_n(store, 10)  # never blocks although nobody reads
        received = await take(events, 4)  # the buffered events still arrive first
        with pytest.raises(Compacted, match=r"watcher fell behind .* watch again from revision 4"):
            await anext(events)
    assert revisions(received) == [1, 2, 3, 4]
    assert store.statistics()["watcher_overflows"] == 1
    async with store.watch([K], since=received[-1].record.revision) as events:
        assert revisions(await take(events, 6)) == list(range(5, 11))
    await store.aclose()


async def test_slow_watcher_does_not_disturb_other_watchers(backend: str, tmp_path: Path) -> None:
    store = await open_backend(backend, tmp_path, watch_buffer=2)
    async with store.watch([K]) as slow, store.watch([K]) as fast:
        for i in range(6):
            await store.put(K, f"n{i}", {})
            assert revisions(await take(fast, 1)) == [i + 1]
        with pytest.raises(Compacted):
            await take(slow, 3)
    await store.aclose()


async def test_since_older_than_floor_is_compacted_on_entry(store: BaseStore) -> None:
    await write_n(store, 10)
    assert await store.compact(keep=2) == 8
    assert store.statistics()["history"] == 2
    with pytest.raises(
        Compacted,
        match=r"^watch from revision 3 is too old \(history starts after revision 8\): relist and watch again$",
    ):
        async with store.watch([K], since=3):
            pytest.fail("entered a compacted watch")
    async with store.watch([K], since=8) as events:
        assert revisions(await take(events, 2)) == [9, 10]
    # Compacting to keep more than exists changes nothing.
    assert await store.compact(keep=100) == 8


async def test_compaction_during_catch_up_ends_the_watch_with_compacted(store: BaseStore) -> None:
    store.history_page = 2
    await write_n(store, 10)
    async with store.watch([K], since=0) as events:
        assert revisions(await take(events, 2)) == [1, 2]
        await store.compact(keep=3)
        with pytest.raises(Compacted, match="watch from revision 2 is too old"):
            await anext(events)


async def test_since_ahead_of_the_store_is_compacted(store: BaseStore) -> None:
    await write_n(store, 2)
    with pytest.raises(Compacted, match=r"revision 5 is ahead of the store \(current revision 2\)"):
        async with store.watch([K], since=5):
            pytest.fail("entered")


async def test_auto_compaction_bounds_history(backend: str, tmp_path: Path) -> None:
    store = await open_backend(backend, tmp_path, max_history=10)
    await write_n(store, 35)
    # A write that leaves history at max_history + slack (11 here) or more compacts it back to max_history.
    # etcd compacts in the background, off the writers' path: history at 11 can still have a compaction
    # queued (the floor then moves while the watch below opens), so wait for the state at rest, <= 10.
    await wait_until(lambda: store.statistics()["history"] <= 10)
    stats = store.statistics()
    assert stats["compactions"] >= 1
    floor = stats["compacted_floor"]
    assert floor == 25
    async with store.watch([K], since=floor) as events:
        assert revisions(await take(events, 35 - floor)) == list(range(floor + 1, 36))
    with pytest.raises(Compacted):
        async with store.watch([K], since=floor - 1):
            pass
    await store.aclose()


async def test_leaving_the_context_unsubscribes(store: BaseStore) -> None:
    async with store.watch([K]), store.watch(["token"]):
        assert store.statistics()["watchers"] == 2
    assert store.statistics()["watchers"] == 0
    await write_n(store, 3)  # publishing to nobody is fine


async def test_closing_the_store_ends_watches(store: BaseStore) -> None:
    await write_n(store, 1)
    async with store.watch([K]) as events:
        await store.put(K, "last", {})
        await store.aclose()
        remaining = [e async for e in events]
    assert [e.record.name for e in remaining] == ["last"]


@pytest.mark.parametrize(
    ("kinds", "since", "message"),
    [
        ("kube_cluster", None, "collection of kinds"),
        ([], None, "at least one kind"),
        ([""], None, "invalid kind"),
        ([f"k{i}" for i in range(65)], None, "limit is 64"),
        ([K], -1, "since must be a non-negative integer"),
        ([K], True, "since must be"),
        ([K], "3", "since must be"),
    ],
)
async def test_bad_watch_arguments(store: BaseStore, kinds: Any, since: Any, message: str) -> None:
    with pytest.raises(BadParameter, match=message):
        async with store.watch(kinds, since=since):
            pass


async def test_a_live_change_is_decoded_once_for_every_watcher(store: BaseStore, monkeypatch: Any) -> None:
    decoded: list[int] = []
    to_event = Change.to_event

    def counting(change: Change, published: float | None = None) -> Any:
        decoded.append(change.revision)
        return to_event(change, published)

    monkeypatch.setattr(Change, "to_event", counting)
    async with (
        store.watch([K]) as a,
        store.watch([K]) as b,
        store.watch([K, "audit"]) as c,
        store.watch(["audit"]) as unrelated,
    ):
        await store.put(K, "x", {"i": 1})
        got = [await take(stream, 1) for stream in (a, b, c)]
        assert decoded == [1]  # one decode, shared; a watcher of other kinds costs nothing
        assert [events[0].record.value for events in got] == [{"i": 1}] * 3
        await store.put("audit", "e", {"i": 2})
        assert [e.record.name for e in await take(unrelated, 1)] == ["e"]
        assert [e.record.name for e in await take(c, 1)] == ["e"]
        assert decoded == [1, 2]


async def test_take_ready_hands_out_buffered_events_without_waiting(store: BaseStore) -> None:
    async with store.watch([K]) as events:
        take_ready = events.take_ready  # type: ignore[attr-defined]
        assert take_ready(10) == []  # nothing buffered: no wait, nothing
        await write_n(store, 5)
        first = await anext(events)
        ready = take_ready(2)  # at most the limit
        ready += take_ready(10)
        assert revisions([first, *ready]) == [1, 2, 3, 4, 5]
        assert take_ready(10) == []
        await write_n(store, 1, start=5)  # iteration goes on after it, with nothing twice
        assert revisions(await take(events, 1)) == [6]


async def test_take_ready_replays_history_then_live_without_duplicates(store: BaseStore) -> None:
    await write_n(store, 3)
    async with store.watch([K], since=1) as events:
        await write_n(store, 2, start=3)  # live (also in history once read): delivered once
        got = [await anext(events)]
        while len(got) < 4:
            more = events.take_ready(10)  # type: ignore[attr-defined]
            got += more or [await anext(events)]  # a history page needs a read: __anext__ does it
        assert revisions(got) == [2, 3, 4, 5]
        assert events.take_ready(10) == []  # type: ignore[attr-defined]


async def test_take_ready_leaves_an_overflow_to_iteration(backend: str, tmp_path: Path) -> None:
    store = await open_backend(backend, tmp_path, watch_buffer=3)
    async with store.watch([K]) as events:
        await write_n(store, 6)  # overflows the buffer of 3
        ready = events.take_ready(10)  # type: ignore[attr-defined]
        assert revisions(ready) == [1, 2, 3]
        assert events.take_ready(10) == []  # type: ignore[attr-defined]
        with pytest.raises(Compacted, match="watch again from revision 3"):
            await anext(events)
    await store.aclose()
