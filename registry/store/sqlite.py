"""``SQLiteStore``: the default, embedded, durable Store (stdlib ``sqlite3``, nothing to install).

Durability and atomicity:

* WAL journal with ``synchronous=FULL``: a write is acknowledged only after its commit is on disk, so a
  crash (even ``os._exit`` or power loss) loses nothing that was acknowledged.
* Every write is ONE transaction over ``items`` (current versions), ``events`` (history for resumable
  watches) and ``meta`` (schema version, current revision, compaction floor). Any failure rolls the whole
  transaction back: no half-written record, no revision consumed.
* ``locking_mode=EXCLUSIVE``: the file is locked for as long as the store is open, so a second registry
  process cannot silently share it (its watchers would never see our writes); it gets a clear error.
* The file is created 0600 (it holds kubeconfigs with credentials); a looser existing file is tightened.

Concurrency: one connection, used from worker threads (``trio.to_thread.run_sync``) so the trio thread
never blocks on disk, and serialised by a trio lock. A write holds the lock from BEGIN through publishing
its events to watchers, which keeps fan-out in revision order. Single writes that queue while another
commits are committed together (group commit, :meth:`SQLiteStore._write`): one transaction and one fsync
for the group, each op still planned, revisioned and answered on its own. Thread calls are never abandoned on
cancellation, so a transaction always finishes (commit or rollback) before the caller sees the cancel.

Deleted values stay readable in ``events`` until compaction drops them (at most ``max_history`` plus the
amortisation slack of later writes); size ``max_history`` with that in mind. Secrets do not (``_secrets``):
a write that supersedes or removes a version rewrites that version's history row without them, in the same
transaction. So that no copy survives in the file either, the connection runs with ``secure_delete`` (freed
content is zeroed) and a write that removed a secret ends with a ``wal_checkpoint(TRUNCATE)``, which moves
the WAL's old page images into the database and empties the WAL. Stores written before this (schema 1) are
scrubbed once when opened.

The etcd backend (``etcd.py``) keeps the same tables as etcd keys (``items/``, ``hist/``, ``meta/``) under
a key prefix, with the store revision as a counter advanced in the same etcd txn as each change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import trio

from registry.core.errors import BadParameter, KubeportError
from registry.store import _plan, _secrets
from registry.store._common import BaseStore, Clock
from registry.store._group import WriteQueue, fail_group
from registry.store._plan import Change, Item, WriteOp
from registry.store.base import Record

SCHEMA_VERSION = 2  # 2: history rows of superseded versions hold no secrets (1 is scrubbed on open)

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    # items: the current version of each record. The primary key serves get, list (ordered by name) and
    # the prefix range scan.
    """CREATE TABLE items (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_revision INTEGER NOT NULL,
        expires REAL,
        labels TEXT NOT NULL,  -- value["metadata"]["labels"] as JSON, for filtering without decoding value
        PRIMARY KEY (kind, name)
    )""",
    # expire() looks only at records that have an expiry.
    "CREATE INDEX items_expires ON items (expires) WHERE expires IS NOT NULL",
    # events: one row per revision (history is contiguous); DELETE rows keep the last value.
    """CREATE TABLE events (
        revision INTEGER PRIMARY KEY,
        type TEXT NOT NULL CHECK (type IN ('PUT', 'DELETE')),
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        created_revision INTEGER NOT NULL,
        expires REAL,
        labels TEXT NOT NULL
    )""",
)

# Constant SQL only (no string building): every value travels as a parameter. Item columns are selected
# in the order of Item's fields.
_SELECT_ITEM = (
    "SELECT kind, name, value, revision, created_revision, expires, labels FROM items WHERE kind = ? AND name = ?"
)
# A name range as an index range: lower <= name [< upper], ascending or descending; LIMIT -1 is no limit.
# (_plan.check_range turns prefix/after/before into these two bounds, so four statements cover every list.)
_LIST_FROM = (
    "SELECT kind, name, value, revision, created_revision, expires, labels FROM items"
    " WHERE kind = ? AND name >= ? AND (expires IS NULL OR expires > ?) ORDER BY name LIMIT ?"
)
_LIST_FROM_DESC = (
    "SELECT kind, name, value, revision, created_revision, expires, labels FROM items"
    " WHERE kind = ? AND name >= ? AND (expires IS NULL OR expires > ?) ORDER BY name DESC LIMIT ?"
)
_LIST_RANGE = (
    "SELECT kind, name, value, revision, created_revision, expires, labels FROM items"
    " WHERE kind = ? AND name >= ? AND name < ? AND (expires IS NULL OR expires > ?) ORDER BY name LIMIT ?"
)
_LIST_RANGE_DESC = (
    "SELECT kind, name, value, revision, created_revision, expires, labels FROM items"
    " WHERE kind = ? AND name >= ? AND name < ? AND (expires IS NULL OR expires > ?) ORDER BY name DESC LIMIT ?"
)
_COUNT = "SELECT COUNT(*) FROM items WHERE kind = ? AND (expires IS NULL OR expires > ?)"
_SELECT_EXPIRED = (
    "SELECT kind, name, value, revision, created_revision, expires, labels FROM items"
    " WHERE expires IS NOT NULL AND expires <= ?"
)
# The kinds arrive as one JSON array parameter (json_each), so the statement text never varies.
_HISTORY = (
    "SELECT type, kind, name, value, revision, created_revision, expires, labels FROM events"
    " WHERE revision > ? AND kind IN (SELECT value FROM json_each(?)) ORDER BY revision LIMIT ?"
)
_UPSERT_ITEM = (
    "INSERT OR REPLACE INTO items (kind, name, value, revision, created_revision, expires, labels)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Several names at once: they arrive as one JSON array parameter (json_each), so the statement never varies.
_SELECT_ITEMS = (
    "SELECT kind, name, value, revision, created_revision, expires, labels FROM items"
    " WHERE kind = ? AND name IN (SELECT value FROM json_each(?))"
)
_DELETE_ITEM = "DELETE FROM items WHERE kind = ? AND name = ?"
_REDACT_EVENT = "UPDATE events SET name = ?, value = ? WHERE revision = ?"
_INSERT_EVENT = (
    "INSERT INTO events (revision, type, kind, name, value, created_revision, expires, labels)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

T = TypeVar("T")


class SQLiteStore(BaseStore):
    """A durable Store in one SQLite file. Create it with :meth:`open`."""

    backend = "SQLite"

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        state: tuple[int, int, int],
        *,
        clock: Clock,
        max_history: int,
        watch_buffer: int,
        max_value_bytes: int,
    ) -> None:
        """Internal: use :meth:`open`, which prepares ``conn`` and reads ``state``."""
        super().__init__(
            clock=clock, max_history=max_history, watch_buffer=watch_buffer, max_value_bytes=max_value_bytes
        )
        self.path = path
        self._conn = conn
        self._revision, self._floor, self._records = state
        self._lock = trio.Lock()
        self._queue = WriteQueue()  # writes waiting for the next group commit (see _queue_write)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        max_history: int = 100_000,
        watch_buffer: int = 1024,
        max_value_bytes: int = _plan.DEFAULT_MAX_VALUE_BYTES,
    ) -> SQLiteStore:
        """Open (creating if needed) the store at ``path``; BadParameter names the path on any problem."""
        if not isinstance(path, str | os.PathLike):
            raise BadParameter(f"SQLite store path must be a string, got {path!r}")
        text = os.fspath(path)
        if not isinstance(text, str) or not text or text == ":memory:" or "\x00" in text:
            raise BadParameter(f"invalid SQLite store path {text!r} (for an in-memory store use memory://)")
        # Check the options before touching the file, so a bad call leaves no file behind.
        _plan.check_positive("max_history", max_history)
        _plan.check_positive("watch_buffer", watch_buffer)
        _plan.check_positive("max_value_bytes", max_value_bytes)
        if not callable(clock):
            raise BadParameter(f"clock must be callable, got {clock!r}")
        conn, state = await trio.to_thread.run_sync(_open_sync, text)
        try:
            return cls(
                text,
                conn,
                state,
                clock=clock,
                max_history=max_history,
                watch_buffer=watch_buffer,
                max_value_bytes=max_value_bytes,
            )
        except BaseException:
            conn.close()
            raise

    # --- primitives --------------------------------------------------------------------------------------

    async def _read(self, kind: str, name: str) -> Item | None:
        async with self._lock:
            self._check_open()
            return await self._run("read", self._select_item, kind, name)

    async def _read_many(self, kind: str, names: Sequence[str]) -> Sequence[Item]:
        async with self._lock:
            self._check_open()
            return await self._run("read", self._select_items, kind, json.dumps(list(names)))

    async def _list(
        self, kind: str, bounds: _plan.ListRange, labels: Mapping[str, str | list[str]] | None, now: float
    ) -> list[Record]:
        # A limited list with a label filter filters while it reads (it stops at ``limit`` matches);
        # otherwise filtering and decoding need no connection: do them after releasing the lock.
        early = labels if bounds.limit is not None else None
        async with self._lock:
            self._check_open()
            items = await self._run("list", self._list_sync, kind, bounds, early, now)
        return await trio.to_thread.run_sync(_plan.to_records, items, None if early is not None else labels)

    async def _count(self, kind: str, now: float) -> int:
        async with self._lock:
            self._check_open()
            return await self._run("count", self._count_sync, kind, now)

    async def _write(self, op: WriteOp) -> list[Change]:
        return await self._queue_write((op,), atomic=False)

    async def _write_batch(self, ops: Sequence[WriteOp]) -> list[Change]:
        return await self._queue_write(tuple(ops), atomic=True)

    async def _queue_write(self, ops: tuple[WriteOp, ...], *, atomic: bool) -> list[Change]:
        """Group commit: writes that queue up while another commits go to disk together, in ONE transaction
        (one fsync), each planned in arrival order against the state the earlier ones left.

        A batch (``create_many``, ``write_many``) joins a group as one unit, all or nothing within it.
        Each caller still gets its own outcome: an op whose plan fails (NotFound, AlreadyExists,
        CompareFailed) fails alone and consumes no revision; the others commit. Only a failure of the
        transaction itself (disk full, I/O error) fails every op of the group, and then none is written.
        A caller cancelled before its op was taken into a group withdraws it; once taken, it waits (shielded)
        for the commit to finish, so a cancelled write is never left half-known: as before, a transaction
        always finishes before its caller sees the cancel.
        """
        return await self._queue.submit(ops, atomic=atomic, lock=self._lock, commit=self._commit_group)

    async def _commit_group(self) -> None:
        """Under the lock: take every queued write and commit them together (see :meth:`_write`)."""
        group = self._queue.take_all()
        try:
            self._check_open()
            units = [(slot.ops, slot.atomic) for slot in group]
            single = len(group) == 1 and not group[0].atomic
            what = group[0].ops[0].op if single else f"group of {len(group)} writes"
            outcomes = await self._run(what, self._group_sync, units, self._now(), self._revision)
        except BaseException as exc:
            fail_group(group, exc)
            raise
        # No checkpoint since the thread returned: publish before anyone else can write.
        self._published([change for outcome in outcomes if isinstance(outcome, list) for change in outcome])
        for slot, outcome in zip(group, outcomes, strict=True):
            slot.settle(outcome)

    async def _expire(self) -> list[Change]:
        async with self._lock:
            self._check_open()
            changes = await self._run("expire", self._expire_sync, self._now(), self._revision)
            self._published(changes)
            return changes

    async def _read_history(self, kinds: frozenset[str], after: int, limit: int) -> Sequence[Change]:
        async with self._lock:
            self._check_open()
            self._check_since(after)
            return await self._run("history read", self._history_sync, sorted(kinds), after, limit)

    async def _compact(self, keep: int) -> int:
        async with self._lock:
            self._check_open()
            floor = self._revision - keep
            if floor <= self._floor:
                return self._floor
            await self._run("compaction", self._compact_sync, floor)
            return self._compacted(floor)

    async def _close(self) -> None:
        # Shielded: a cancelled aclose must still release the file lock.
        with trio.CancelScope(shield=True):
            async with self._lock:
                await trio.to_thread.run_sync(self._conn.close)

    # --- thread side -------------------------------------------------------------------------------------

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a worker thread; SQLite errors become KubeportError naming the file."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except sqlite3.Error as exc:
            raise KubeportError(f"SQLite store {self.path!r}: {what} failed: {exc}") from exc

    def _select_item(self, kind: str, name: str) -> Item | None:
        row = self._conn.execute(_SELECT_ITEM, (kind, name)).fetchone()
        return None if row is None else Item(*row)

    def _select_items(self, kind: str, names: str) -> list[Item]:
        return [Item(*row) for row in self._conn.execute(_SELECT_ITEMS, (kind, names))]

    def _list_sync(
        self, kind: str, bounds: _plan.ListRange, labels: Mapping[str, str | list[str]] | None, now: float
    ) -> list[Item]:
        # With a label filter the SQL limit cannot count matches: read lazily and stop at enough of them.
        sql_limit = -1 if bounds.limit is None or labels is not None else bounds.limit
        if bounds.upper is None:
            statement = _LIST_FROM_DESC if bounds.reverse else _LIST_FROM
            rows = self._conn.execute(statement, (kind, bounds.lower, now, sql_limit))
        else:
            statement = _LIST_RANGE_DESC if bounds.reverse else _LIST_RANGE
            rows = self._conn.execute(statement, (kind, bounds.lower, bounds.upper, now, sql_limit))
        out: list[Item] = []
        for row in rows:
            item = Item(*row)
            if not _plan.has_prefix(item.name, bounds.prefix):
                continue
            if labels is not None and not _plan.labels_match(labels, item):
                continue
            out.append(item)
            if bounds.limit is not None and len(out) >= bounds.limit:
                break
        return out

    def _count_sync(self, kind: str, now: float) -> int:
        (count,) = self._conn.execute(_COUNT, (kind, now)).fetchone()
        return int(count)

    def _history_sync(self, kinds: list[str], after: int, limit: int) -> list[Change]:
        rows = self._conn.execute(_HISTORY, (after, json.dumps(kinds), limit)).fetchall()
        return [Change(row[0], Item(*row[1:])) for row in rows]

    def _group_sync(
        self, units: Sequence[tuple[tuple[WriteOp, ...], bool]], now: float, revision: int
    ) -> list[list[Change] | KubeportError]:
        """Plan and apply ``units`` (one op, or an atomic batch) in order in one transaction; a plan error is
        that unit's outcome (planning changes nothing, and a batch is planned in full before it is applied,
        so the others are unaffected). A SQLite error rolls back the whole group."""
        outcomes: list[list[Change] | KubeportError] = []
        applied: list[Change] = []
        with _transaction(self._conn):
            for ops, atomic in units:
                try:
                    if atomic:
                        changes = _plan.plan_batch(ops, self._batch_reader(ops), now=now, revision=revision)
                    else:
                        (op,) = ops
                        current = self._select_item(op.kind, op.name)
                        changes = _plan.plan_write(op, current, now=now, revision=revision)
                except KubeportError as exc:
                    outcomes.append(exc)
                    continue
                self._apply_sync(changes)
                if changes:
                    revision = changes[-1].revision
                applied.extend(changes)
                outcomes.append(changes)
        _purge_wal_if_redacted(self._conn, applied)
        return outcomes

    def _batch_reader(self, ops: Sequence[WriteOp]) -> Callable[[str, str], Item | None]:
        """What plan_batch reads: a batch's stored items fetched with one statement per kind (an agent's
        audit batch is 500 creates: one SELECT, not 500), inside the group's transaction."""
        if len(ops) == 1:
            return self._select_item
        names: dict[str, set[str]] = {}
        for op in ops:
            names.setdefault(op.kind, set()).add(op.name)
        found: dict[tuple[str, str], Item] = {}
        for kind, group in names.items():
            for item in self._select_items(kind, json.dumps(sorted(group))):
                found[(item.kind, item.name)] = item
        return lambda kind, name: found.get((kind, name))

    def _expire_sync(self, now: float, revision: int) -> list[Change]:
        with _transaction(self._conn):
            rows = self._conn.execute(_SELECT_EXPIRED, (now,)).fetchall()
            changes = _plan.plan_expiry((Item(*row) for row in rows), now=now, revision=revision)
            self._apply_sync(changes)
        _purge_wal_if_redacted(self._conn, changes)
        return changes

    def _compact_sync(self, floor: int) -> None:
        with _transaction(self._conn):
            self._conn.execute("DELETE FROM events WHERE revision <= ?", (floor,))
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'floor'", (floor,))

    def _apply_sync(self, changes: Sequence[Change]) -> None:
        conn = self._conn
        if len(changes) > 1 and all(c.type == "PUT" and c.supersedes is None and c.history is None for c in changes):
            # Only new records (a batch of creates, as audit appends are): nothing any statement depends on
            # is touched by another, so two executemany calls do it with far less per-row Python work.
            items = [c.item for c in changes]
            conn.executemany(
                _UPSERT_ITEM,
                [(i.kind, i.name, i.data, i.revision, i.created_revision, i.expires, i.labels) for i in items],
            )
            conn.executemany(
                _INSERT_EVENT,
                [(i.revision, "PUT", i.kind, i.name, i.data, i.created_revision, i.expires, i.labels) for i in items],
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (items[-1].revision,))
            return
        last = None
        for change in changes:
            item = change.item
            if change.type == "DELETE":
                conn.execute(_DELETE_ITEM, (item.kind, item.name))
            else:
                conn.execute(
                    _UPSERT_ITEM,
                    (item.kind, item.name, item.data, item.revision, item.created_revision, item.expires, item.labels),
                )
            if change.supersedes is not None:
                old = change.supersedes
                conn.execute(_REDACT_EVENT, (old.name, old.data, old.revision))
            item = change.recorded
            conn.execute(
                _INSERT_EVENT,
                (
                    item.revision,
                    change.type,
                    item.kind,
                    item.name,
                    item.data,
                    item.created_revision,
                    item.expires,
                    item.labels,
                ),
            )
            last = item.revision
        if last is not None:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (last,))


def _purge_wal_if_redacted(conn: sqlite3.Connection, changes: Sequence[Change]) -> None:
    """After a committed write that removed a secret: copy the WAL into the database and empty it, so the
    old page images (which still hold the secret) leave the disk. Writes without secrets skip this."""
    if any(c.history is not None or c.supersedes is not None for c in changes):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


# --- opening --------------------------------------------------------------------------------


def _open_sync(path: str) -> tuple[sqlite3.Connection, tuple[int, int, int]]:
    """Create/secure the file, connect, set pragmas, create or check the schema; return (conn, state)."""
    _prepare_file(path)
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0.0)
    except sqlite3.Error as exc:
        raise BadParameter(f"cannot open SQLite store {path!r}: {exc}") from None
    try:
        # EXCLUSIVE before WAL: SQLite then keeps the WAL index in heap memory (no -shm file) and holds the
        # file lock from the first transaction until close.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        # Freed content is zeroed, so a redacted or deleted secret leaves no copy in free space.
        conn.execute("PRAGMA secure_delete = ON")
        with _transaction(conn):
            state, scrubbed = _check_schema(conn, path)
        if scrubbed:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise BadParameter(f"SQLite store {path!r} is in use by another process") from None
        raise BadParameter(f"{path!r} is not a usable kubeport SQLite store: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn, state


def _prepare_file(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BadParameter(f"cannot open SQLite store {path!r}: directory {parent!r} does not exist")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BadParameter(f"cannot create SQLite store {path!r}: {exc.strerror}") from None
    else:
        os.close(fd)
    try:
        for name in (path, path + "-wal", path + "-shm", path + "-journal"):
            try:
                mode = os.stat(name).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(mode):
                raise BadParameter(f"SQLite store {name!r} is not a regular file")
            if mode & 0o077:
                os.chmod(name, 0o600)  # it holds credentials: owner only
    except OSError as exc:
        raise BadParameter(f"cannot secure SQLite store {path!r}: {exc.strerror}") from None


def _check_schema(conn: sqlite3.Connection, path: str) -> tuple[tuple[int, int, int], bool]:
    """Create the schema in an empty file or check an existing one (scrubbing a schema 1 store's history);
    return ((revision, floor, records), whether history was scrubbed)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", SCHEMA_VERSION), ("revision", 0), ("floor", 0)],
        )
    elif not {"meta", "items", "events"} <= tables:
        raise BadParameter(f"{path!r} is an SQLite database but not a kubeport store")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    version, revision, floor = (meta.get(key) for key in ("schema_version", "revision", "floor"))
    if not (isinstance(version, int) and isinstance(revision, int) and isinstance(floor, int)):
        raise BadParameter(f"SQLite store {path!r} is damaged: its meta table lacks schema_version, revision or floor")
    if version > SCHEMA_VERSION:
        raise BadParameter(
            f"SQLite store {path!r} has schema version {version}, newer than this kubeport understands "
            f"({SCHEMA_VERSION}): upgrade kubeport"
        )
    if version < 1 or not 0 <= floor <= revision:
        raise BadParameter(
            f"SQLite store {path!r} is damaged: schema version {version}, revision {revision}, floor {floor}"
        )
    scrubbed = False
    if version < 2:
        _scrub_history(conn)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        scrubbed = True
    (records,) = conn.execute("SELECT COUNT(*) FROM items").fetchone()
    return (revision, floor, int(records)), scrubbed


def _scrub_history(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: redact every history row of a secret-holding kind that is not a current version."""
    current = {
        (kind, name): rev
        for kind, name, rev in conn.execute("SELECT kind, name, revision FROM items")
        if _secrets.has_secrets(kind)
    }
    kinds = json.dumps(sorted({*_secrets.SECRET_FIELDS, *_secrets.SECRET_NAMES}))
    rows = conn.execute(
        "SELECT type, kind, name, value, revision, created_revision, expires, labels FROM events"
        " WHERE kind IN (SELECT value FROM json_each(?))",
        (kinds,),
    )
    for row in rows.fetchall():
        item = Item(*row[1:])
        if row[0] == "PUT" and current.get((item.kind, item.name)) == item.revision:
            continue  # the live version keeps its secret, as the items table does
        redacted = _secrets.redact(item)
        if redacted is not None:
            conn.execute(_REDACT_EVENT, (redacted.name, redacted.data, redacted.revision))
