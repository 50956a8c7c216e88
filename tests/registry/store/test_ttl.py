"""Expiry: expired records are invisible, expire() removes them with DELETE events, serve_expiry runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from registry.core.errors import BadParameter, NotFound
from registry.store import MemoryStore, serve_expiry
from registry.store._common import BaseStore
from tests.registry.store.store_helpers import BACKENDS, START, FakeClock, open_backend, revisions, take

K = "kube_server"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[BaseStore]:
    s = await open_backend(request.param, tmp_path, clock=clock)
    yield s
    await s.aclose()


async def test_record_is_visible_until_its_expiry(store: BaseStore, clock: FakeClock) -> None:
    created = await store.create(K, "h/c", {"v": 1}, expires=START + 10)
    assert created.expires == START + 10
    clock.advance(9.999)
    assert (await store.get(K, "h/c")).expires == START + 10
    assert [r.name for r in await store.list(K)] == ["h/c"]
    clock.advance(0.001)  # expires <= now: gone
    with pytest.raises(NotFound):
        await store.get(K, "h/c")
    assert await store.list(K) == []
    with pytest.raises(NotFound):
        await store.update(K, "h/c", {"v": 2})
    with pytest.raises(NotFound):
        await store.delete(K, "h/c")
    assert await store.revision() == 1  # hiding is not a write


async def test_expire_removes_expired_records_with_delete_events(store: BaseStore, clock: FakeClock) -> None:
    await store.create(K, "late", {"v": "late"}, expires=START + 20)
    await store.create(K, "early", {"v": "early"}, expires=START + 10)
    await store.create(K, "forever", {"v": "forever"})
    await store.create("user", "t", {}, expires=START + 5)
    async with store.watch([K, "user"]) as events:
        assert await store.expire() == 0
        clock.advance(30)
        assert await store.expire() == 3
        got = await take(events, 3)
    # Oldest expiry first, each with its own revision; the record is the last version.
    assert [(e.type, e.record.kind, e.record.name) for e in got] == [
        ("DELETE", "user", "t"),
        ("DELETE", K, "early"),
        ("DELETE", K, "late"),
    ]
    assert revisions(got) == [5, 6, 7]
    assert got[1].record.value == {"v": "early"}
    assert got[1].record.created_revision == 2
    assert await store.expire() == 0
    assert [r.name for r in await store.list(K)] == ["forever"]
    stats = store.statistics()
    assert (stats["records"], stats["expired"], stats["revision"]) == (1, 3, 7)


async def test_refreshing_expiry_keeps_the_record(store: BaseStore, clock: FakeClock) -> None:
    await store.put(K, "h/c", {}, expires=START + 10)
    clock.advance(8)
    await store.put(K, "h/c", {}, expires=clock() + 10)  # heartbeat
    clock.advance(8)
    assert await store.expire() == 0
    assert (await store.get(K, "h/c")).created_revision == 1


async def test_update_without_expires_makes_the_record_permanent(store: BaseStore, clock: FakeClock) -> None:
    await store.create(K, "x", {}, expires=START + 10)
    await store.update(K, "x", {"v": 2})
    clock.advance(100)
    assert (await store.get(K, "x")).expires is None


@pytest.mark.parametrize("method", ["create", "put"])
async def test_writing_over_an_expired_record_deletes_it_first(store: BaseStore, clock: FakeClock, method: str) -> None:
    await store.create(K, "x", {"v": "old"}, expires=START + 10)
    clock.advance(10)
    async with store.watch([K]) as events:
        record = await getattr(store, method)(K, "x", {"v": "new"})
        got = await take(events, 2)
    assert [(e.type, e.record.value, e.record.revision) for e in got] == [
        ("DELETE", {"v": "old"}, 2),
        ("PUT", {"v": "new"}, 3),
    ]
    # It is a new object: created by this write.
    assert (record.revision, record.created_revision) == (3, 3)
    assert store.statistics()["records"] == 1


async def test_record_written_already_expired_is_invisible(store: BaseStore) -> None:
    await store.create(K, "x", {}, expires=START - 1)
    with pytest.raises(NotFound):
        await store.get(K, "x")
    assert await store.expire() == 1


async def test_serve_expiry_sweeps_periodically(autojump_clock: trio.testing.MockClock) -> None:
    wall = FakeClock()
    store = MemoryStore(clock=wall)
    await store.create(K, "x", {}, expires=START + 60)
    async with trio.open_nursery() as nursery, store.watch([K]) as events:
        await nursery.start(serve_expiry, store)
        wall.advance(60)
        with trio.fail_after(5):  # virtual seconds: at most one interval
            event = await anext(events)
        assert (event.type, event.record.name) == ("DELETE", "x")
        nursery.cancel_scope.cancel()
    await store.aclose()


async def test_serve_expiry_ends_when_the_store_closes(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    returned = trio.Event()

    async def expiry(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_expiry(store, interval=1.0, task_status=task_status)
        returned.set()  # only reached when serve_expiry returns by itself (a cancellation raises)

    with trio.fail_after(5):  # virtual seconds: far more than the one interval it may take
        async with trio.open_nursery() as nursery:
            await nursery.start(expiry)
            await store.aclose()
            closed_at = trio.current_time()
            await returned.wait()
            assert trio.current_time() - closed_at <= 1.0  # the next sweep sees the closed store and stops
            assert not nursery.cancel_scope.cancel_called
    assert returned.is_set()
    assert not [r for r in caplog.records if "expiry sweep failed" in r.getMessage()]  # ended, not retrying


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf"), "1", True])
async def test_serve_expiry_rejects_bad_intervals(interval: object) -> None:
    store = MemoryStore()
    with pytest.raises(BadParameter, match="expiry interval"):
        await serve_expiry(store, interval=interval)  # type: ignore[arg-type]
    await store.aclose()


async def test_a_watch_resumed_across_an_expiry_sees_its_delete_exactly_once(
    store: BaseStore, clock: FakeClock
) -> None:
    """A heartbeat's expiry is a DELETE in the history like any other: a watcher that resumes from before it
    gets it once, with its own revision, and one resuming from that revision does not get it again."""
    await store.put(K, "hb", {"v": 1}, expires=START + 10)
    await store.put("frontdoor", "fd1", {"addr": "a:1"}, expires=START + 30)
    before = await store.revision()
    clock.advance(40)
    assert await store.expire() == 2
    assert await store.expire() == 0  # a second sweep finds nothing: no second event
    await store.create(K, "after", {"v": 2})
    async with store.watch([K, "frontdoor"], since=before) as events:
        got = await take(events, 3)
    assert [(e.type, e.record.kind, e.record.name) for e in got] == [
        ("DELETE", K, "hb"),
        ("DELETE", "frontdoor", "fd1"),
        ("PUT", K, "after"),
    ]
    assert revisions(got) == [before + 1, before + 2, before + 3]
    assert got[0].record.value == {"v": 1}  # the last version, as a DELETE event carries
    async with store.watch([K, "frontdoor"], since=before + 2) as events:
        (only,) = await take(events, 1)
    assert (only.type, only.record.name, only.record.revision) == ("PUT", "after", before + 3)
