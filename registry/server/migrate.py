"""``kubeport registry migrate``: copy a registry's SQLite store into an empty etcd prefix.

Why a registry command and not ``kpctl export/import``: kpctl talks to the API, which never hands out what a
registry must keep to itself (the CA's private key, local users' password hashes, token names, bot and
internal records) and renumbers nothing it does not see. The migration reads the store file directly, with the
registry stopped (SQLite's exclusive lock refuses a running one), and writes through the etcd store, so every
value is sealed with the data dir's ``etcd.key`` exactly as a registry would write it.

Invariants:

* Every live record of every kind is copied with its value and its expiry (``expires``, wall-clock seconds,
  the same clock on both backends): resources, users, roles, tokens, heartbeats, the CA, audit events and
  internal kinds alike. Expired records are not live and are not copied. Revisions are not kept: the etcd
  store numbers its writes from 1, so a watcher resuming from an old SQLite revision gets Compacted and
  relists, as after any compaction.
* The target must be empty (store revision 0): a migration never merges into, or overwrites, a cluster.
* The source is never written (only read), so a failed migration leaves the SQLite registry as it was; the
  target prefix may then hold a partial copy, and the error says how to clear it before running again.
* The etcd key file is the one ``registry start --store etcd://`` uses (``DATA_DIR/etcd.key``): created here
  when missing (0600), so the registry started on the result in the same data dir opens it. A key this run
  created is removed again when the target is refused before anything was copied.
* Writes go in batches bounded by count and by bytes, under etcd's per-txn and per-request limits; each batch
  is one all-or-nothing store write.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from registry.core.errors import BadParameter, ConnectionProblem, KubeportError
from registry.host.paths import STORE_FILE
from registry.server.store_config import ETCD_KEY_FILE, StoreConfig, open_registry_store
from registry.store import SQLiteStore, Store, Write

__all__ = ["MigrationReport", "migrate_sqlite_to_etcd", "sqlite_source_path"]

BATCH_RECORDS = 200
# a batch's values, counted once; the etcd store writes each twice (record and history) under etcd's
# 1.5 MiB request limit, so half a MiB leaves room for the sealing and the JSON around them
BATCH_BYTES = 512 * 1024
_SCHEME_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")


@dataclass
class MigrationReport:
    """What was copied: records per kind, and the target's description."""

    target: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def sqlite_source_path(source: str | None, data_dir: Path) -> Path:
    """The SQLite file ``--from`` names (``sqlite:///path`` or a path; default DATA_DIR/registry.db)."""
    if source is None or source in ("", "sqlite"):
        return data_dir / STORE_FILE
    if not isinstance(source, str) or "\x00" in source or len(source) > 4096:
        raise BadParameter(f"--from {source!r:.100}: give sqlite:///path/registry.db or a file path")
    match = _SCHEME_RE.match(source)
    if match is None:
        return Path(source)
    if match.group(1).lower() != "sqlite" or not source[match.end() :]:
        raise BadParameter(
            f"--from {source!r:.100}: only a SQLite store can be migrated (sqlite:///path/registry.db or a path)"
        )
    return Path(source[match.end() :])


def _stored_kinds(path: Path) -> list[str]:
    """Every kind with a record in the SQLite file, read before the store opens it (the store locks the file
    exclusively, and the Store protocol lists one kind at a time)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=0.5)
    except sqlite3.Error as exc:
        raise BadParameter(f"--from {path}: not a readable registry store ({exc})") from None
    try:
        conn.execute("PRAGMA query_only = 1")
        rows = conn.execute("SELECT DISTINCT kind FROM items ORDER BY kind").fetchall()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise ConnectionProblem(
                f"--from {path} is in use: stop the registry that serves it before migrating"
            ) from None
        raise BadParameter(f"--from {path}: not a kubeport registry store ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise BadParameter(f"--from {path}: not a kubeport registry store ({exc})") from None
    finally:
        conn.close()
    return [str(row[0]) for row in rows]


def _batches(writes: Sequence[Write]) -> list[list[Write]]:
    out: list[list[Write]] = []
    current: list[Write] = []
    size = 0
    for write in writes:
        weight = len(json.dumps(write.value, separators=(",", ":"))) + len(write.name) + len(write.kind)
        if current and (len(current) >= BATCH_RECORDS or size + weight > BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(write)
        size += weight
    if current:
        out.append(current)
    return out


async def _copy(source: Store, target: Store, kinds: Sequence[str], report: MigrationReport) -> None:
    for kind in kinds:
        records = await source.list(kind)
        writes = [Write("create", r.kind, r.name, r.value, expires=r.expires) for r in records]
        for batch in _batches(writes):
            await target.write_many(batch)
        if records:
            report.counts[kind] = len(records)
    for kind, expected in report.counts.items():
        copied = await target.count(kind)
        if copied < expected:  # a heartbeat may expire in between; more than sent would be a bug
            raise ConnectionProblem(f"the target holds {copied} {kind} records after copying {expected}")


async def migrate_sqlite_to_etcd(source: str | None, target: StoreConfig, data_dir: Path) -> MigrationReport:
    """Copy the SQLite store ``source`` names into the empty etcd store ``target`` names; see the module
    docstring. ``data_dir`` holds (or receives) ``etcd.key``."""
    target.check()
    if target.store in ("", "sqlite"):
        raise BadParameter("--to must name an etcd cluster: etcd://HOST:PORT[,HOST:PORT...]")
    path = sqlite_source_path(source, data_dir)
    if not path.is_file():
        raise BadParameter(f"--from {path}: no registry store there (is --data-dir right?)")
    kinds = _stored_kinds(path)
    where = target.describe() or target.store
    report = MigrationReport(target=where)
    key_file = data_dir / ETCD_KEY_FILE
    key_existed = key_file.exists()
    source_store = await SQLiteStore.open(str(path))
    try:
        target_store = await open_registry_store(target, data_dir)
        try:
            if await target_store.revision() != 0:
                if not key_existed:
                    key_file.unlink(missing_ok=True)
                raise BadParameter(
                    f"{where} is not empty: a migration only writes to an empty prefix (pick another "
                    "--etcd-prefix, or delete this one with `etcdctl del --prefix` if it is a failed migration)"
                )
            try:
                await _copy(source_store, target_store, kinds, report)
            except KubeportError as exc:
                raise type(exc)(
                    f"{exc.message}; {where} now holds a partial copy: delete it (`etcdctl del --prefix "
                    f"{target.etcd_prefix}`) and run the migration again"
                ) from None
        finally:
            await target_store.aclose()
    finally:
        await source_store.aclose()
    return report
