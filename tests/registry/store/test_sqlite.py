"""SQLite backend: durability across restarts and crashes, file safety, damaged files, atomic writes."""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
from pathlib import Path

import pytest
import trio

from registry.core.errors import BadParameter, KubeportError, NotFound
from registry.store import SQLiteStore
from tests.registry.store.store_helpers import FakeClock, revisions, take

K = "kube_cluster"
ROOT = Path(__file__).resolve().parents[3]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_restart_keeps_data_revision_and_history(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await SQLiteStore.open(path)
    for i in range(5):
        await store.put(K, f"c{i}", {"i": i}, expires=4_000_000_000.0 if i == 0 else None)
    await store.delete(K, "c4")
    await store.compact(keep=4)
    await store.aclose()

    store = await SQLiteStore.open(path)
    try:
        assert await store.revision() == 6
        assert [r.name for r in await store.list(K)] == ["c0", "c1", "c2", "c3"]
        record = await store.get(K, "c0")
        assert (record.value, record.revision, record.expires) == ({"i": 0}, 1, 4_000_000_000.0)
        stats = store.statistics()
        assert (stats["records"], stats["compacted_floor"], stats["history"]) == (4, 2, 4)
        assert (await store.create(K, "new", {})).revision == 7  # revisions continue
        # A client that saw revision 3 before the restart resumes with exactly what it missed.
        async with store.watch([K], since=3) as events:
            got = await take(events, 4)
        assert [(e.type, e.record.name) for e in got] == [
            ("PUT", "c3"),
            ("PUT", "c4"),
            ("DELETE", "c4"),
            ("PUT", "new"),
        ]
        assert revisions(got) == [4, 5, 6, 7]
        with pytest.raises(Exception, match="too old"):
            async with store.watch([K], since=1):
                pass
    finally:
        await store.aclose()


CRASHING_WRITER = """
import os, sys, trio
from registry.store import SQLiteStore

async def main(path, count):
    store = await SQLiteStore.open(path)
    for i in range(count):
        await store.create("kube_cluster", f"c{i}", {"i": i})
    print("written", flush=True)
    os._exit(0)  # no close, no checkpoint, no cleanup

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


async def test_acknowledged_writes_survive_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-c", CRASHING_WRITER, str(path), "40"], capture_stdout=True, env=env
        )
    assert result.stdout == b"written\n"
    assert await trio.Path(f"{path}-wal").exists()  # the crash left an un-checkpointed WAL behind
    store = await SQLiteStore.open(path)
    try:
        assert await store.revision() == 40
        records = await store.list(K)
        assert sorted(r.value["i"] for r in records) == list(range(40))
    finally:
        await store.aclose()


async def test_files_are_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "secret.db"
    old = os.umask(0)
    try:
        store = await SQLiteStore.open(path)
        await store.create(K, "x", {"kubeconfig": "c2VjcmV0"})
        assert mode_of(path) == 0o600
        assert mode_of(Path(str(path) + "-wal")) == 0o600
        await store.aclose()
    finally:
        os.umask(old)


async def test_existing_loose_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "loose.db"
    store = await SQLiteStore.open(path)
    await store.aclose()
    path.chmod(0o644)
    store = await SQLiteStore.open(path)
    await store.aclose()
    assert mode_of(path) == 0o600


async def test_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    store = await SQLiteStore.open(path)
    try:
        await store.create(K, "x", {})
        with pytest.raises(BadParameter, match="in use by another process"):
            await SQLiteStore.open(path)
    finally:
        await store.aclose()
    reopened = await SQLiteStore.open(path)  # the lock goes with the store
    await reopened.aclose()


def _make_foreign_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()


def _set_meta(path: Path, key: str, value: int | None) -> None:
    conn = sqlite3.connect(path)
    with conn:
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.close()


async def _make_store(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.create(K, "x", {})
    await store.aclose()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage", "is not a usable kubeport SQLite store"),
        ("foreign", "is an SQLite database but not a kubeport store"),
        ("newer", "has schema version 99, newer than this kubeport understands"),
        ("no-revision", "is damaged"),
        ("bad-floor", "is damaged"),
    ],
)
async def test_unusable_files_are_refused_with_the_path(tmp_path: Path, damage: str, message: str) -> None:
    path = tmp_path / "bad.db"
    if damage == "garbage":
        path.write_bytes(b"this is not a database, just some bytes " * 200)
    elif damage == "foreign":
        _make_foreign_db(path)
    else:
        await _make_store(path)
        if damage == "newer":
            _set_meta(path, "schema_version", 99)
        elif damage == "no-revision":
            _set_meta(path, "revision", None)
        else:
            _set_meta(path, "floor", 5)  # above the revision
    with pytest.raises(BadParameter, match=message) as info:
        await SQLiteStore.open(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing" / "x.db", "does not exist"),
        (lambda p: p, "not a regular file"),
        (lambda p: ":memory:", "memory://"),
        (lambda p: "", "invalid SQLite store path"),
        (lambda p: "a\x00b", "invalid SQLite store path"),
        (lambda p: 42, "must be a string"),
    ],
)
async def test_bad_paths(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(BadParameter, match=message):
        await SQLiteStore.open(path)


async def test_a_write_failing_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "atomic.db"
    await _make_store(path)  # revision 1
    # Make the history insert fail for one name: the item row is written first, so only a real rollback
    # can remove it again.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.name = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    conn.close()
    store = await SQLiteStore.open(path)
    try:
        async with store.watch([K]) as events:
            with pytest.raises(KubeportError, match=r"create failed: injected failure") as info:
                await store.create(K, "boom", {"v": 1})
            assert str(path) in str(info.value)
            with pytest.raises(NotFound):
                await store.get(K, "boom")
            assert await store.revision() == 1
            assert store.statistics()["records"] == 1
            # The store keeps working, and watchers see no gap.
            assert (await store.create(K, "fine", {})).revision == 2
            assert [e.record.name for e in await take(events, 1)] == ["fine"]
    finally:
        await store.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM items WHERE name = 'boom'").fetchone() == (0,)
    conn.close()


async def test_expiry_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "ttl.db"
    clock = FakeClock()
    store = await SQLiteStore.open(path, clock=clock)
    await store.create("kube_server", "h/c", {}, expires=clock() + 10)
    await store.aclose()
    clock.advance(11)
    store = await SQLiteStore.open(path, clock=clock)
    try:
        with pytest.raises(NotFound):
            await store.get("kube_server", "h/c")
        assert await store.expire() == 1
        assert store.statistics()["records"] == 0
    finally:
        await store.aclose()


async def test_cancellation_never_tears_a_write(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "cancel.db")
    try:
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.create(K, "x", {})
        # Cancellation arrived before the write started (the lock is a checkpoint): nothing was written.
        assert await store.revision() == 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.create, K, "y", {})
            await trio.testing.wait_all_tasks_blocked()  # the write is now in its worker thread
            nursery.cancel_scope.cancel()
        # A transaction in flight is never abandoned: it commits, and the store's view matches the disk.
        assert await store.revision() == 1
        assert [r.name for r in await store.list(K)] == ["y"]
        async with store.watch([K], since=0) as events:
            assert [e.record.name for e in await take(events, 1)] == ["y"]
    finally:
        await store.aclose()
