"""``write_many``: writes of any kinds in one commit, all or nothing, for every backend (the registry writes
each change together with its audit event this way). On SQLite a batch also joins the group commit."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel

from registry.core.errors import AlreadyExists, BadParameter, CompareFailed, NotFound
from registry.store import SQLiteStore, Write
from registry.store._common import BaseStore
from tests.registry.store.store_helpers import BACKENDS, FakeClock, open_backend, take


async def test_a_change_and_its_audit_event_commit_together(store: BaseStore) -> None:
    await store.create("role", "dev", {"v": 1})
    async with store.watch(["role", "audit"], since=1) as events:
        records = await store.write_many(
            [
                Write("update", "role", "dev", {"v": 2}, expected_revision=1),
                Write("create", "audit", "e1", {"event": "role.update"}, expires=2e9),
                Write("delete", "role", "dev"),
                Write("create", "audit", "e2", {"event": "role.delete"}, expires=2e9),
            ]
        )
        seen = await take(events, 4)
    assert [(r.kind, r.name, r.revision) for r in records] == [
        ("role", "dev", 2),
        ("audit", "e1", 3),
        ("role", "dev", 4),
        ("audit", "e2", 5),
    ]
    assert records[0].value == {"v": 2} and records[2].value == {"v": 2}  # a delete returns the last version
    assert [(e.type, e.record.revision) for e in seen] == [("PUT", 2), ("PUT", 3), ("DELETE", 4), ("PUT", 5)]
    assert await store.revision() == 5


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Write("create", "role", "dev", {}), AlreadyExists),
        (Write("update", "role", "nope", {}), NotFound),
        (Write("update", "role", "dev", {}, expected_revision=99), CompareFailed),
        (Write("delete", "role", "nope"), NotFound),
    ],
)
async def test_one_failing_write_writes_none(store: BaseStore, bad: Write, error: type[Exception]) -> None:
    await store.create("role", "dev", {})
    with pytest.raises(error):
        await store.write_many([Write("create", "audit", "e1", {"x": 1}), bad, Write("put", "role", "other", {})])
    assert await store.revision() == 1
    assert await store.list("audit") == [] and [r.name for r in await store.list("role")] == ["dev"]


@pytest.mark.parametrize(
    "bad",
    [
        Write("create", "role", "x"),  # no value
        Write("delete", "role", "x", {"v": 1}),
        Write("put", "role", "x", {}, expected_revision=3),
        Write("upsert", "role", "x", {}),  # type: ignore[arg-type]
        Write("create", "", "x", {}),
        Write("create", "role", "", {}),
        Write("create", "role", "x", {"v": float("nan")}),
    ],
)
async def test_malformed_writes_are_refused_before_anything_is_written(store: BaseStore, bad: Write) -> None:
    with pytest.raises(BadParameter):
        await store.write_many([Write("create", "role", "first", {}), bad])
    assert await store.revision() == 0


async def test_not_a_sequence_of_writes_is_refused(store: BaseStore) -> None:
    with pytest.raises(BadParameter):
        await store.write_many(Write("create", "role", "x", {}))  # type: ignore[arg-type]
    with pytest.raises(BadParameter):
        await store.write_many([("create", "role", "x", {})])  # type: ignore[list-item]
    assert await store.write_many([]) == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_create_over_an_expired_record_returns_the_new_version(backend: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store = await open_backend(backend, tmp_path, clock=clock)
    await store.create("kube_server", "h/a", {"v": 1}, expires=clock.now + 10)
    clock.advance(20)
    (record,) = await store.write_many([Write("create", "kube_server", "h/a", {"v": 2}, expires=clock.now + 10)])
    assert (record.value, record.revision) == ({"v": 2}, 3)  # revision 2 removed the expired one
    await store.aclose()


async def test_sqlite_batches_and_single_writes_share_one_group(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    await store.create("role", "dev", {})
    outcomes: dict[str, object] = {}

    async def batch(label: str, writes: list[Write]) -> None:
        try:
            outcomes[label] = [r.revision for r in await store.write_many(writes)]
        except AlreadyExists:
            outcomes[label] = AlreadyExists

    async def single(label: str, name: str) -> None:
        outcomes[label] = (await store.create("role", name, {})).revision

    async with trio.open_nursery() as nursery, store._lock:
        nursery.start_soon(batch, "good", [Write("create", "role", "b1", {}), Write("create", "audit", "e", {})])
        nursery.start_soon(batch, "bad", [Write("create", "role", "b2", {}), Write("create", "role", "dev", {})])
        nursery.start_soon(single, "single", "s1")
        with trio.fail_after(5):
            while len(store._queue.pending) < 3:
                await trio.lowlevel.checkpoint()
    assert outcomes["bad"] is AlreadyExists
    assert sorted([*outcomes["good"], outcomes["single"]]) == [2, 3, 4]  # type: ignore[misc]
    assert [r.name for r in await store.list("role")] == ["b1", "dev", "s1"]  # nothing of the failed batch
    await store.aclose()
