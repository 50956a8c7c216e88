"""``BaseStore``: the public Store methods, written once over a handful of backend primitives.

This layer validates input, encodes values, turns items into records, runs the watch machinery and
decides when to auto-compact. A backend supplies only the I/O primitives (the abstract methods below); it
must apply each write's changes atomically and then call :meth:`BaseStore._published` with them before it
lets any other write start, which is what keeps fan-out in revision order.

Auto-compaction is amortised: history may grow to ``max_history + slack`` before it is cut back to
``max_history``, with ``slack = clamp(max_history // 10, 1, 1000)``, so compaction runs at most once per
``slack`` writes and costs O(slack) each time.
"""

from __future__ import annotations

import abc
import builtins
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypedDict

import trio

from registry.core.errors import BadParameter, KubeportError, LimitExceeded, TooLarge
from registry.store import _plan
from registry.store._plan import Change, Item, WriteKind, WriteOp
from registry.store._watch import Hub, open_watch
from registry.store.base import MAX_EXISTING, EncodedValue, Event, Record, StoreClosed, Write

Clock = Callable[[], float]

log = logging.getLogger(__name__)


class StoreOptions(TypedDict, total=False):
    """The tuning options every backend takes; their defaults are those of :meth:`BaseStore.__init__`."""

    clock: Clock
    max_history: int
    watch_buffer: int
    max_value_bytes: int


class BaseStore(abc.ABC):
    """Shared implementation of :class:`registry.store.base.Store`."""

    # Events per history read during catch-up: bounds the memory a catching-up watcher holds.
    history_page = 512
    backend = "base"

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        max_history: int = 100_000,
        watch_buffer: int = 1024,
        max_value_bytes: int = _plan.DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if not callable(clock):
            raise BadParameter(f"clock must be callable, got {clock!r}")
        self._clock = clock
        self._max_history = _plan.check_positive("max_history", max_history)
        self._slack = min(1000, max(1, self._max_history // 10))
        self._max_value_bytes = _plan.check_positive("max_value_bytes", max_value_bytes)
        self._hub = Hub(_plan.check_positive("watch_buffer", watch_buffer))
        self._closed = False
        # Mirrors of durable state, updated only by _published/_compacted (single writer at a time).
        self._revision = 0
        self._floor = 0
        self._records = 0
        self._writes = 0
        self._expired = 0
        self._compactions = 0

    # --- backend primitives ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _read(self, kind: str, name: str) -> Item | None:
        """The stored item, expired or not."""

    @abc.abstractmethod
    async def _list(
        self, kind: str, bounds: _plan.ListRange, labels: Mapping[str, str | list[str]] | None, now: float
    ) -> list[Record]:
        """Live records within ``bounds`` in name order (use ``_plan.to_records`` for the label filter);
        with ``bounds.limit``, read only as many rows as it takes to find that many matches."""

    @abc.abstractmethod
    async def _count(self, kind: str, now: float) -> int:
        """How many live records of ``kind`` there are."""

    @abc.abstractmethod
    async def _write(self, op: WriteOp) -> list[Change]:
        """Plan (``_plan.plan_write``) and apply ``op`` atomically, then call ``_published``."""

    @abc.abstractmethod
    async def _write_batch(self, ops: Sequence[WriteOp]) -> list[Change]:
        """Plan (``_plan.plan_batch``) and apply every op in ONE atomic commit (all or nothing), then call
        ``_published`` with all the changes."""

    @abc.abstractmethod
    async def _expire(self) -> list[Change]:
        """Plan (``_plan.plan_expiry``) and apply expiry atomically, then call ``_published``."""

    @abc.abstractmethod
    async def _read_history(self, kinds: frozenset[str], after: int, limit: int) -> Sequence[Change]:
        """Changes of ``kinds`` after ``after`` (check with ``_check_since`` under the same lock)."""

    @abc.abstractmethod
    async def _compact(self, keep: int) -> int:
        """Drop all but the newest ``keep`` history entries; update ``_floor``; return it."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release backend resources."""

    # --- helpers for backends ----------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

    def _published(self, changes: Sequence[Change]) -> None:
        """Count committed changes and fan them out; call with no checkpoint since the commit."""
        if not changes:
            return
        for change in changes:
            if change.type == "DELETE":
                self._records -= 1
            elif change.item.created_revision == change.revision:
                self._records += 1
        self._revision = changes[-1].revision
        self._writes += len(changes)
        self._hub.publish(changes)

    def _compacted(self, floor: int) -> int:
        """Record a new history floor (after the backend dropped history up to it)."""
        if floor > self._floor:
            self._floor = floor
            self._compactions += 1
        return self._floor

    def _check_since(self, after: int) -> None:
        if after < self._floor:
            raise _plan.too_old(after, self._floor)
        if after > self._revision:
            raise _plan.too_new(after, self._revision)

    def _history_over(self) -> bool:
        return self._revision - self._floor >= self._max_history + self._slack

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the {self.backend} store is closed")

    # --- the Store protocol ------------------------------------------------------------------------------

    async def get(self, kind: str, name: str) -> Record:
        kind = _plan.check_kind(kind)
        name = _plan.check_name(kind, name)
        self._check_open()
        item = await self._read(kind, name)
        if item is None or item.expired(self._now()):
            raise _plan.not_found(kind, name)
        return item.to_record()

    async def existing(self, kind: str, names: Sequence[str]) -> set[str]:
        kind = _plan.check_kind(kind)
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise BadParameter("existing takes a sequence of names")
        if len(names) > MAX_EXISTING:
            raise LimitExceeded(f"existing takes at most {MAX_EXISTING} names at once, got {len(names)}")
        wanted = list(dict.fromkeys(_plan.check_name(kind, name) for name in names))
        self._check_open()
        if not wanted:
            await trio.lowlevel.checkpoint()
            return set()
        now = self._now()
        return {item.name for item in await self._read_many(kind, wanted) if not item.expired(now)}

    async def _read_many(self, kind: str, names: Sequence[str]) -> Sequence[Item]:
        """The stored items of ``kind`` among ``names`` (expired ones too), in any order. Backends with a
        cheaper way than one read per name override this."""
        found = [await self._read(kind, name) for name in names]
        return [item for item in found if item is not None]

    async def list(
        self,
        kind: str,
        *,
        labels: Mapping[str, str | list[str]] | None = None,
        prefix: str | None = None,
        after: str | None = None,
        before: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[Record]:
        kind = _plan.check_kind(kind)
        prefix = _plan.check_prefix(prefix)
        bounds = _plan.check_range(prefix, after, before, limit, reverse)
        selector = _plan.check_selector(labels)
        self._check_open()
        if bounds.limit == 0 or (bounds.upper is not None and bounds.upper <= bounds.lower):
            await trio.lowlevel.checkpoint()
            return []
        return await self._list(kind, bounds, selector, self._now())

    async def count(self, kind: str) -> int:
        kind = _plan.check_kind(kind)
        self._check_open()
        return await self._count(kind, self._now())

    async def create(self, kind: str, name: str, value: dict[str, Any], *, expires: float | None = None) -> Record:
        return await self._write_record("create", kind, name, value, expires=expires, expected_revision=None)

    async def create_many(
        self, kind: str, items: Sequence[tuple[str, dict[str, Any]]], *, expires: float | None = None
    ) -> builtins.list[Record]:
        for entry in items:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise BadParameter(f"create_many takes (name, value) pairs, got {entry!r:.100}")
        return await self.write_many([Write("create", kind, name, value, expires=expires) for name, value in items])

    async def append_many(
        self, kind: str, items: Sequence[tuple[str, EncodedValue]], *, expires: float | None = None
    ) -> int:
        kind = _plan.check_kind(kind)
        when = _plan.check_expires(kind, "", expires)
        ops: list[WriteOp] = []
        for entry in items:  # every item is checked before anything is written
            if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[1], EncodedValue):
                raise BadParameter(f"append_many takes (name, EncodedValue) pairs, got {entry!r:.100}")
            name, value = entry
            name = _plan.check_name(kind, name)
            if len(value.data) > self._max_value_bytes:  # encoded against another bound than this store's
                raise TooLarge(
                    f"{kind} {name!r}: value is {len(value.data)} bytes as JSON, the limit is {self._max_value_bytes}"
                )
            ops.append(WriteOp("create", kind, name, value.data, value.labels, when))
        self._check_open()
        if not ops:
            await trio.lowlevel.checkpoint()
            return 0
        await self._write_batch(ops)
        await self._maybe_compact()
        return len(ops)

    async def delete_many(self, kind: str, names: Sequence[str]) -> builtins.list[Record]:
        if isinstance(names, str):
            raise BadParameter("delete_many takes a sequence of names, not one name")
        return await self.write_many([Write("delete", kind, name) for name in names])  # as watchers see them

    async def write_many(self, writes: Sequence[Write]) -> builtins.list[Record]:
        if isinstance(writes, Write) or not isinstance(writes, Sequence):
            raise BadParameter("write_many takes a sequence of Write")
        ops: list[WriteOp] = []
        for write in writes:  # every write is checked before anything is written
            if not isinstance(write, Write):
                raise BadParameter(f"write_many takes Write items, got {write!r:.100}")
            ops.append(self._write_op(write))
        self._check_open()
        if not ops:
            await trio.lowlevel.checkpoint()
            return []
        changes = await self._write_batch(ops)
        await self._maybe_compact()
        return _per_write(ops, changes)

    def _write_op(self, write: Write) -> WriteOp:
        if write.op not in ("create", "update", "put", "delete"):
            raise BadParameter(f"unknown write op {write.op!r}")
        kind = _plan.check_kind(write.kind)
        name = _plan.check_name(kind, write.name)
        expected = _plan.check_optional_revision("expected_revision", write.expected_revision)
        if expected is not None and write.op not in ("update", "delete"):
            raise BadParameter(f"{write.op} takes no expected_revision")
        if write.op == "delete":
            if write.value is not None or write.expires is not None:
                raise BadParameter("delete takes no value and no expiry")
            return WriteOp("delete", kind, name, expected_revision=expected)
        if not isinstance(write.value, dict):
            raise BadParameter(f"{write.op} of {kind} {name!r} needs a value (a mapping)")
        data = _plan.encode_value(kind, name, write.value, self._max_value_bytes)
        when = _plan.check_expires(kind, name, write.expires)
        return WriteOp(write.op, kind, name, data, _plan.encode_labels(write.value), when, expected)

    async def update(
        self,
        kind: str,
        name: str,
        value: dict[str, Any],
        *,
        expected_revision: int | None = None,
        expires: float | None = None,
    ) -> Record:
        return await self._write_record(
            "update", kind, name, value, expires=expires, expected_revision=expected_revision
        )

    async def put(self, kind: str, name: str, value: dict[str, Any], *, expires: float | None = None) -> Record:
        return await self._write_record("put", kind, name, value, expires=expires, expected_revision=None)

    async def delete(self, kind: str, name: str, *, expected_revision: int | None = None) -> Record:
        kind = _plan.check_kind(kind)
        name = _plan.check_name(kind, name)
        expected = _plan.check_optional_revision("expected_revision", expected_revision)
        self._check_open()
        changes = await self._write(WriteOp("delete", kind, name, expected_revision=expected))
        await self._maybe_compact()
        return changes[-1].recorded.to_record()  # as watchers see the DELETE: without secrets

    async def revision(self) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._revision

    async def expire(self) -> int:
        self._check_open()
        changes = await self._expire()
        self._expired += len(changes)
        await self._maybe_compact()
        return len(changes)

    def watch(
        self, kinds: Collection[str], *, since: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        checked = _plan.check_kinds(kinds)
        start = _plan.check_optional_revision("since", since)
        self._check_open()
        return open_watch(
            self._hub,
            checked,
            self._read_history,
            lambda: self._revision,
            since=start,
            page_size=self.history_page,
        )

    async def compact(self, *, keep: int) -> int:
        keep = _plan.check_revision("keep", keep)
        self._check_open()
        return await self._compact(keep)

    def statistics(self) -> dict[str, int]:
        return {
            "revision": self._revision,
            "records": self._records,  # includes expired records not yet removed
            "writes": self._writes,  # changes committed since this store object was opened
            "expired": self._expired,
            "history": self._revision - self._floor,
            "compacted_floor": self._floor,
            "compactions": self._compactions,
            "watchers": len(self._hub),
            "watcher_overflows": self._hub.overflows,
            "max_history": self._max_history,
            "watch_buffer": self._hub.buffer,
        }

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        await self._close()

    async def __aenter__(self) -> BaseStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- internals ---------------------------------------------------------------------------------------

    async def _write_record(
        self,
        op: WriteKind,
        kind: str,
        name: str,
        value: dict[str, Any],
        *,
        expires: float | None,
        expected_revision: int | None,
    ) -> Record:
        kind = _plan.check_kind(kind)
        name = _plan.check_name(kind, name)
        data = _plan.encode_value(kind, name, value, self._max_value_bytes)
        when = _plan.check_expires(kind, name, expires)
        expected = _plan.check_optional_revision("expected_revision", expected_revision)
        self._check_open()
        labels = _plan.encode_labels(value)
        changes = await self._write(WriteOp(op, kind, name, data, labels, when, expected))
        await self._maybe_compact()
        return changes[-1].item.to_record()

    async def _maybe_compact(self) -> None:
        """Compact after a committed write, best effort.

        The caller's write has already succeeded, so neither a cancellation nor a failure here may make it
        look failed (a retried create would then hit AlreadyExists): shield the short compaction, log errors.
        """
        if not self._history_over() or self._closed:
            return
        with trio.CancelScope(shield=True):
            try:
                await self._compact(self._max_history)
            except KubeportError as exc:
                log.warning("%s store: automatic compaction failed (retried after later writes): %s", self.backend, exc)


def _per_write(ops: Sequence[WriteOp], changes: Sequence[Change]) -> list[Record]:
    """One record per op from a batch's changes: an op's changes end with its own (a create or put that met
    an expired record starts with that record's removal, which this skips)."""
    records: list[Record] = []
    position = 0
    for op in ops:
        change = changes[position]
        if op.op != "delete" and change.type == "DELETE":
            position += 1  # the expired record's removal
            change = changes[position]
        records.append(change.recorded.to_record() if change.type == "DELETE" else change.item.to_record())
        position += 1
    return records
