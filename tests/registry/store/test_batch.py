"""``create_many`` / ``delete_many``: several creates (deletes) in one commit, for every backend. All or
nothing, revisions consecutive in the order given, one watch event per record, and (SQLite) one
transaction, so one durable sync per batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry.core.errors import AlreadyExists, BadParameter, NotFound, TooLarge
from registry.store import SQLiteStore
from registry.store._common import BaseStore
from tests.registry.store.store_helpers import BACKENDS, FakeClock, open_backend, revisions, take

K = "audit"


def batch(count: int, start: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [(f"e{n:04d}", {"event": "kube.request", "n": n}) for n in range(start, start + count)]


async def test_a_batch_gets_consecutive_revisions_in_the_order_given(store: BaseStore) -> None:
    await store.create("role", "first", {})
    records = await store.create_many(K, batch(5), expires=2e9)
    assert [r.name for r in records] == [f"e{n:04d}" for n in range(5)]
    assert [r.revision for r in records] == [2, 3, 4, 5, 6]
    assert all(r.created_revision == r.revision and r.expires == 2e9 for r in records)
    assert await store.revision() == 6
    listed = await store.list(K)
    assert [(r.name, r.value["n"], r.revision) for r in listed] == [(f"e{n:04d}", n, n + 2) for n in range(5)]
    stats = store.statistics()
    assert stats["writes"] == 6 and stats["records"] == 6
    assert await store.create_many(K, []) == []
    assert await store.revision() == 6


async def test_watchers_see_one_put_per_record_live_and_from_history(store: BaseStore) -> None:
    async with store.watch([K]) as live:
        await store.create_many(K, batch(3))
        events = await take(live, 3)
    assert [e.type for e in events] == ["PUT"] * 3
    assert revisions(events) == [1, 2, 3]
    assert [e.record.name for e in events] == ["e0000", "e0001", "e0002"]
    async with store.watch([K], since=1) as replay:
        again = await take(replay, 2)
    assert revisions(again) == [2, 3]


@pytest.mark.parametrize(
    "bad",
    [
        [("e0001", {"dup": "in the store already"})],
        [("x-dup", {}), ("x-dup", {})],  # a name given twice
        [("big", {"pad": "x" * 2_000_000})],
        [("", {})],
    ],
    ids=["exists", "twice", "too-large", "bad-name"],
)
async def test_a_failing_batch_writes_nothing(store: BaseStore, bad: list[tuple[str, dict[str, Any]]]) -> None:
    await store.create_many(K, batch(2))
    before = (await store.revision(), store.statistics()["writes"])
    async with store.watch([K, "role"]) as live:
        with pytest.raises((AlreadyExists, BadParameter, TooLarge)):
            await store.create_many(K, [*batch(3, start=10), *bad, *batch(3, start=20)])
        await store.create("role", "after", {})  # the next write takes the very next revision
        (seen,) = await take(live, 1)  # watchers saw nothing of the failed batch
    assert (seen.record.kind, seen.record.revision) == ("role", before[0] + 1)
    assert (await store.revision() - 1, store.statistics()["writes"] - 1) == before
    assert [r.name for r in await store.list(K)] == ["e0000", "e0001"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_expired_record_in_the_way_is_removed_first_as_by_create(tmp_path: Path, backend: str) -> None:
    clock = FakeClock()
    store = await open_backend(backend, tmp_path, clock=clock)
    try:
        await store.create(K, "e0001", {"old": True}, expires=clock.now + 10)
        clock.advance(11)
        async with store.watch([K]) as live:
            records = await store.create_many(K, batch(3))
            events = await take(live, 4)
        assert [(e.type, e.record.name, e.record.revision) for e in events] == [
            ("PUT", "e0000", 2),
            ("DELETE", "e0001", 3),
            ("PUT", "e0001", 4),
            ("PUT", "e0002", 5),
        ]
        assert [r.revision for r in records] == [2, 4, 5]
    finally:
        await store.aclose()


async def test_sqlite_batch_is_one_transaction_and_survives_reopening(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        await store.create_many(K, batch(500))
    finally:
        store._conn.set_trace_callback(None)
        await store.aclose()
    assert sum(1 for s in statements if s.strip().upper() == "COMMIT") == 1
    assert sum(1 for s in statements if s.strip().upper().startswith("BEGIN")) == 1
    reopened = await SQLiteStore.open(tmp_path / "store.db")
    try:
        assert await reopened.revision() == 500
        assert await reopened.count(K) == 500
    finally:
        await reopened.aclose()


async def test_delete_many_is_one_write_all_or_nothing(store: BaseStore) -> None:
    await store.create_many(K, batch(5))
    async with store.watch([K]) as live:
        for bad in (["e0001", "nope"], ["e0002", "e0002"]):
            with pytest.raises(NotFound):
                await store.delete_many(K, bad)
        assert await store.revision() == 5 and await store.count(K) == 5
        removed = await store.delete_many(K, ["e0003", "e0000"])
        events = await take(live, 2)
    assert [(r.name, r.revision) for r in removed] == [("e0003", 6), ("e0000", 7)]
    assert [(e.type, e.record.name, e.record.revision) for e in events] == [
        ("DELETE", "e0003", 6),
        ("DELETE", "e0000", 7),
    ]
    assert [r.name for r in await store.list(K)] == ["e0001", "e0002", "e0004"]
    assert await store.delete_many(K, []) == []
    with pytest.raises(BadParameter):
        await store.delete_many(K, "e0001")
