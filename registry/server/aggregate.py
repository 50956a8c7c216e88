"""Aggregation of repeated failures into counted audit rows (sans-IO: the clock is injected).

Anyone can fail to join (issue 7 §7): one audit row per failed attempt let an unauthenticated caller write
and fsync rows as fast as it could send requests. Instead, failures are grouped by (event, source, reason)
into windows of ``window`` seconds, and each group writes at most one row per window, carrying ``count``:

- The first failure of a quiet group is written at once (``count: 1``), so a single failure shows in the
  audit log immediately. It opens a window.
- Further failures in that window are only counted. When the window closes (:meth:`due`, called by the
  registry's flush loop about once a second) a group that saw failures writes one row with their ``count``
  and the first/last time, and a new window opens; a group that saw none is forgotten (it is quiet again).
- On shutdown the registry writes what every open window holds (:meth:`drain`). So a graceful stop loses
  nothing, and a crash loses at most the counts of the current window (never the first failure of a
  quiet group, which was written already).

Memory is bounded: at most ``max_keys`` groups; failures of new groups beyond that are counted under the
source ``*`` (many sources), so a distributed flood still ends in a bounded number of rows. Reasons should
come from a small fixed set (they are part of the key).

Invariants: every failure recorded is counted in exactly one row (``count`` sums to the number of
failures recorded, once every row has been emitted); rows of one group come out in time order.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.core.errors import BadParameter

Clock = Callable[[], float]
MANY_SOURCES = "*"


@dataclass(frozen=True)
class FailureRow:
    """One audit row to write: ``count`` failures of one group between ``first`` and ``last``."""

    event: str
    source: str
    reason: str
    count: int
    first: float
    last: float
    fields: Mapping[str, Any] = field(default_factory=dict)  # what the first failure counted here said


@dataclass
class _Window:
    end: float
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    fields: Mapping[str, Any] = field(default_factory=dict)


class FailureAggregator:
    """Counts failures per (event, source, reason); see the module docstring."""

    def __init__(self, *, clock: Clock, window: float = 60.0, max_keys: int = 10_000) -> None:
        if isinstance(window, bool) or not isinstance(window, int | float) or not math.isfinite(window) or window <= 0:
            raise BadParameter(f"aggregation window must be a positive number of seconds (got {window!r})")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise BadParameter(f"max_keys must be a positive integer (got {max_keys!r})")
        self.window = float(window)
        self._clock = clock
        self._max_keys = max_keys
        # Ordered by window end: every window opens at "now + window" and moves to the end.
        self._windows: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()
        self._recorded = 0
        self._rows = 0

    def record(self, event: str, source: str, reason: str, fields: Mapping[str, Any] | None = None) -> list[FailureRow]:
        """Count one failure; return the rows to write now (the first failure of a quiet group, and the
        row of a window that closed but was not collected by :meth:`due` yet)."""
        now = self._clock()
        self._recorded += 1
        key = (event, source, reason)
        if key not in self._windows and len(self._windows) >= self._max_keys:
            key = (event, MANY_SOURCES, reason)
        rows: list[FailureRow] = []
        window = self._windows.get(key)
        if window is not None and window.end <= now:
            rows += self._close(key, window, now)
            window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(end=now + self.window)
            rows.append(FailureRow(key[0], key[1], key[2], 1, now, now, dict(fields or {})))
        else:
            if window.count == 0:
                window.first = now
                window.fields = dict(fields or {})
            window.count += 1
            window.last = now
        self._rows += len(rows)
        return rows

    def due(self) -> list[FailureRow]:
        """Rows of the windows that have closed by now."""
        now = self._clock()
        rows: list[FailureRow] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if window.end > now:
                break
            rows += self._close(key, window, now)
        self._rows += len(rows)
        return rows

    def drain(self) -> list[FailureRow]:
        """Rows of every open window, whether closed or not (shutdown); forgets every group."""
        rows = [self._row(key, w) for key, w in self._windows.items() if w.count]
        self._windows.clear()
        self._rows += len(rows)
        return rows

    def next_due(self) -> float | None:
        """When the earliest open window closes (clock time), or None when there is none."""
        if not self._windows:
            return None
        return next(iter(self._windows.values())).end

    def statistics(self) -> dict[str, int]:
        return {
            "groups": len(self._windows),
            "pending": sum(w.count for w in self._windows.values()),
            "recorded_total": self._recorded,
            "rows_total": self._rows,
        }

    def _close(self, key: tuple[str, str, str], window: _Window, now: float) -> list[FailureRow]:
        if not window.count:
            del self._windows[key]
            return []
        row = self._row(key, window)
        self._windows[key] = _Window(end=now + self.window)
        self._windows.move_to_end(key)
        return [row]

    @staticmethod
    def _row(key: tuple[str, str, str], window: _Window) -> FailureRow:
        return FailureRow(key[0], key[1], key[2], window.count, window.first, window.last, window.fields)
