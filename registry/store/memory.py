"""``MemoryStore``: the Store kept in process memory, for tests, benchmarks and ``memory://``.

It is a verified fake: the same shared tests run against it and against SQLite, and every rule comes from
the shared planner (``_plan``), so it behaves like the durable backend except that nothing survives the
process.

Invariants:

* Each primitive is synchronous after one checkpoint, so a write's plan, apply and publish happen without
  any other task running in between: writes are atomic and fan-out is in revision order without a lock.
* ``_history[i].revision == floor + 1 + i`` (history is contiguous), so a catch-up read starts by index.
* History entries of versions that are no longer current hold no secrets (``_secrets``): their
  ``history`` item is the redacted copy, and nothing else in this store refers to the old value.
* ``_deadlines`` is a heap of (expires, revision, kind, name) pushed on every write with an expiry; entries
  whose item has since changed are stale and skipped when they surface, so expire() only looks at records
  that may actually have expired instead of scanning everything.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Unpack

import trio

from registry.store import _plan
from registry.store._common import BaseStore, StoreOptions
from registry.store._plan import Change, Item, WriteOp
from registry.store.base import Record


class MemoryStore(BaseStore):
    """An in-process Store; see the module docstring."""

    backend = "memory"

    def __init__(self, **options: Unpack[StoreOptions]) -> None:
        super().__init__(**options)
        self._items: dict[str, dict[str, Item]] = {}
        self._history: list[Change] = []
        self._deadlines: list[tuple[float, int, str, str]] = []

    async def _read(self, kind: str, name: str) -> Item | None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._items.get(kind, {}).get(name)

    async def _list(
        self, kind: str, bounds: _plan.ListRange, labels: Mapping[str, str | list[str]] | None, now: float
    ) -> list[Record]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        by_name = self._items.get(kind, {})
        names = sorted(name for name in by_name if bounds.contains(name))
        if bounds.reverse:
            names.reverse()
        out: list[Record] = []
        for name in names:
            item = by_name[name]
            if item.expired(now):
                continue
            out += _plan.to_records([item], labels)
            if bounds.limit is not None and len(out) >= bounds.limit:
                break
        return out

    async def _count(self, kind: str, now: float) -> int:
        await trio.lowlevel.checkpoint()
        self._check_open()
        return sum(1 for item in self._items.get(kind, {}).values() if not item.expired(now))

    async def _write(self, op: WriteOp) -> list[Change]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        current = self._items.get(op.kind, {}).get(op.name)
        changes = _plan.plan_write(op, current, now=self._now(), revision=self._revision)
        self._apply(changes)
        return changes

    async def _write_batch(self, ops: Sequence[WriteOp]) -> list[Change]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        changes = _plan.plan_batch(
            ops, lambda kind, name: self._items.get(kind, {}).get(name), now=self._now(), revision=self._revision
        )
        self._apply(changes)  # planned in full first: a refused op leaves the store as it was
        return changes

    async def _expire(self) -> list[Change]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        now = self._now()
        candidates: list[Item] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, revision, kind, name = heapq.heappop(self._deadlines)
            item = self._items.get(kind, {}).get(name)
            if item is not None and item.revision == revision:
                candidates.append(item)
        changes = _plan.plan_expiry(candidates, now=now, revision=self._revision)
        self._apply(changes)
        return changes

    async def _read_history(self, kinds: frozenset[str], after: int, limit: int) -> Sequence[Change]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._check_since(after)
        page: list[Change] = []
        for index in range(after - self._floor, len(self._history)):
            change = self._history[index]
            if change.item.kind in kinds:
                page.append(change)
                if len(page) >= limit:
                    break
        return page

    async def _compact(self, keep: int) -> int:
        await trio.lowlevel.checkpoint()
        self._check_open()
        drop = len(self._history) - keep
        if drop > 0:
            floor = self._history[drop - 1].revision
            del self._history[:drop]
            self._compacted(floor)
        return self._floor

    async def _close(self) -> None:
        await trio.lowlevel.checkpoint()
        self._items.clear()
        self._history.clear()
        self._deadlines.clear()

    def _apply(self, changes: Sequence[Change]) -> None:
        for change in changes:
            item = change.item
            by_name = self._items.setdefault(item.kind, {})
            if change.type == "DELETE":
                del by_name[item.name]
                if not by_name:
                    del self._items[item.kind]
            else:
                by_name[item.name] = item
                if item.expires is not None:
                    heapq.heappush(self._deadlines, (item.expires, item.revision, item.kind, item.name))
            if change.supersedes is not None:
                self._redact_history(change.supersedes)
            self._history.append(change)
        self._published(changes)

    def _redact_history(self, redacted: Item) -> None:
        """Write ``redacted`` over the history entry of its revision (gone already if compacted)."""
        index = redacted.revision - self._floor - 1
        if 0 <= index < len(self._history) and self._history[index].revision == redacted.revision:
            old = self._history[index]
            self._history[index] = Change(old.type, redacted)  # the old value is not kept anywhere
