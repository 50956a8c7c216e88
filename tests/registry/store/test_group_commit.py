"""SQLite group commit: concurrent single writes share one transaction (one fsync) and each still gets its
own outcome, revision and watch event; a failing op fails alone; a cancelled write is withdrawn or finished,
never half-known. Then the queue both durable stores share: a writer learns the outcome its group's committer
set without taking the lock in turn, and a cancelled writer whose unit was taken still waits for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

from registry.core.errors import AlreadyExists, CompareFailed, NotFound
from registry.store import SQLiteStore
from registry.store._group import WriteQueue
from registry.store._plan import WriteOp
from tests.registry.store.store_helpers import take

K = "kube_cluster"


async def _count_commits(store: SQLiteStore) -> list[str]:
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    return statements


async def test_concurrent_writes_commit_together_each_with_its_own_revision(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    statements = await _count_commits(store)
    results: dict[str, int] = {}

    async def create(name: str) -> None:
        results[name] = (await store.create(K, name, {"n": name})).revision

    async with store.watch([K], since=0) as events:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(create, f"c{i}")
        seen = await take(events, 40)
    commits = sum(1 for s in statements if s.strip().upper() == "COMMIT")
    assert sorted(results.values()) == list(range(1, 41))  # gapless, one each
    assert [e.record.revision for e in seen] == list(range(1, 41))  # every event once, in revision order
    assert {e.record.name: e.record.revision for e in seen} == results
    assert commits < 40, f"{commits} commits for 40 concurrent writes: no grouping"
    assert len(await store.list(K)) == 40
    await store.aclose()
    reopened = await SQLiteStore.open(tmp_path / "s.db")
    assert await reopened.revision() == 40 and len(await reopened.list(K)) == 40
    await reopened.aclose()


async def test_a_failing_op_fails_alone_and_consumes_no_revision(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    await store.create(K, "taken", {})
    outcomes: dict[str, object] = {}

    async def attempt(label: str, coro_fn: object) -> None:
        try:
            outcomes[label] = (await coro_fn()).revision  # type: ignore[operator]
        except (AlreadyExists, NotFound, CompareFailed) as exc:
            outcomes[label] = type(exc)

    # Hold the lock so every op queues and the whole lot is committed as one group.
    async with trio.open_nursery() as nursery, store._lock:
        nursery.start_soon(attempt, "dup", lambda: store.create(K, "taken", {}))
        nursery.start_soon(attempt, "a", lambda: store.create(K, "a", {}))
        nursery.start_soon(attempt, "missing", lambda: store.update(K, "nope", {}))
        nursery.start_soon(attempt, "stale", lambda: store.update(K, "taken", {}, expected_revision=99))
        nursery.start_soon(attempt, "a-again", lambda: store.create(K, "a", {}))  # sees "a" from this group
        nursery.start_soon(attempt, "b", lambda: store.create(K, "b", {}))
        with trio.fail_after(5):
            while len(store._queue.pending) < 6:
                await trio.lowlevel.checkpoint()
    # Within the group, ops are planned in queue order (trio may start the tasks in any order).
    assert (outcomes["dup"], outcomes["missing"], outcomes["stale"]) == (AlreadyExists, NotFound, CompareFailed)
    first_a = [outcomes["a"], outcomes["a-again"]]
    assert first_a.count(AlreadyExists) == 1  # the second create of "a" sees the first one of the same group
    assert sorted([o for o in (*first_a, outcomes["b"]) if isinstance(o, int)]) == [2, 3]
    assert await store.revision() == 3
    await store.aclose()


async def test_a_write_cancelled_while_queued_is_never_written(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    async with trio.open_nursery() as nursery, store._lock:
        cancel = trio.CancelScope()

        async def doomed() -> None:
            with cancel:
                await store.create(K, "doomed", {})

        nursery.start_soon(doomed)
        nursery.start_soon(store.create, K, "kept", {})
        with trio.fail_after(5):
            while len(store._queue.pending) < 2:
                await trio.lowlevel.checkpoint()
        cancel.cancel()
        with trio.fail_after(5):
            while len(store._queue.pending) > 1:
                await trio.lowlevel.checkpoint()
    assert [r.name for r in await store.list(K)] == ["kept"]
    assert await store.revision() == 1
    await store.aclose()


async def test_a_group_failure_fails_every_op_and_writes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    real = store._apply_sync
    calls = 0

    def failing_second(changes: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            import sqlite3

            raise sqlite3.OperationalError("disk I/O error")
        real(changes)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_apply_sync", failing_second)
    errors: list[str] = []

    async def attempt(name: str) -> None:
        try:
            await store.create(K, name, {})
        except Exception as exc:
            errors.append(f"{name}: {exc}")

    async with trio.open_nursery() as nursery, store._lock:
        for name in ("x", "y", "z"):
            nursery.start_soon(attempt, name)
        with trio.fail_after(5):
            while len(store._queue.pending) < 3:
                await trio.lowlevel.checkpoint()
    assert len(errors) == 3 and all("disk I/O error" in e for e in errors)
    monkeypatch.setattr(store, "_apply_sync", real)
    assert await store.list(K) == [] and await store.revision() == 0
    assert (await store.create(K, "after", {})).revision == 1  # the store keeps working
    await store.aclose()


# --- the queue itself (shared by SQLite and etcd) ----------------------------------------------------------


def _op(name: str) -> WriteOp:
    return WriteOp("create", K, name, "{}")


async def test_a_writer_another_committed_for_returns_while_the_committer_still_holds_the_lock() -> None:
    # The committer settles the group, then keeps the lock a while (as etcd's does for its shielded txn's
    # aftermath): the other writers of the group must not have to take the lock, one after another, to learn
    # an outcome they already have.
    queue, lock, release = WriteQueue(), trio.Lock(), trio.Event()
    returned: list[str] = []

    async def commit() -> None:
        for slot in queue.take_all():
            slot.settle([])
        await release.wait()

    async def write(name: str) -> None:
        await queue.submit((_op(name),), atomic=False, lock=lock, commit=commit)
        returned.append(name)

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(write, name)
        await trio.testing.wait_all_tasks_blocked()
        assert lock.locked() and len(returned) == 2  # all but the committer, whichever task that was
        release.set()
    assert sorted(returned) == ["a", "b", "c"] and not lock.locked()


async def test_a_writer_cancelled_after_its_unit_was_taken_still_waits_for_the_outcome() -> None:
    queue, lock = WriteQueue(), trio.Lock()
    releases = [trio.Event(), trio.Event()]  # one per group commit, in order
    settled: list[str] = []

    async def commit() -> None:
        group, release = queue.take_all(), releases[len(settled) and 1]
        await release.wait()  # the group's commit is in flight
        for slot in group:
            slot.settle([])
            settled.append(slot.ops[0].name)

    async def write(name: str) -> None:
        await queue.submit((_op(name),), atomic=False, lock=lock, commit=commit)

    cancelled = trio.CancelScope()
    outcome: list[str] = []

    async def doomed() -> None:
        with cancelled:
            await write("doomed")
        outcome.extend(["cancelled" if cancelled.cancelled_caught else "returned", ",".join(settled)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "first")
        await trio.testing.wait_all_tasks_blocked()  # the first group's commit is in flight
        nursery.start_soon(write, "second")  # first in line for the lock: commits the second group
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        releases[0].set()
        await trio.testing.wait_all_tasks_blocked()
        assert settled == ["first"] and queue.pending == [] and lock.locked()  # doomed's group in flight
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == []  # taken: the cancel is seen only once the commit is done
        releases[1].set()
    assert outcome == ["cancelled", "first,second,doomed"]
