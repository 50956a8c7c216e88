"""The smallest parking place for one task: what a trio ``ParkingLot`` (or ``Event``) does where at most one
task ever waits, without its memory.

An idle watch keeps, per process, a few objects that a task may wait on (a tunnel stream's receive and send
sides, an HTTP/2 stream's news). A ``ParkingLot`` costs ~250 bytes (an ``OrderedDict``) and an ``Event``
~280, whether anybody waits or not; :class:`Waiter` is one slot (~40 bytes) and :func:`park` /
:func:`unpark` do the same for a slot in a dict keyed by the caller.

Invariants: at most one task waits on a :class:`Waiter` (a second one gets ``trio.BusyResourceError``: the
users already refuse concurrent receivers or senders); a waiting task that is cancelled leaves the slot
empty; ``unpark_all`` wakes the waiter, if any, once, and a wake-up with nobody waiting is not remembered
(the callers re-check their condition in a loop, as with a ParkingLot).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import trio


class Waiter:
    """One task's parking place (a ``ParkingLot`` for a single task; see the module docstring)."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def park(self) -> None:
        """Wait until :meth:`unpark_all` (or cancellation)."""
        if self._task is not None:
            raise trio.BusyResourceError("another task is already waiting here")
        task = self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            if self._task is task:
                self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def unpark_all(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    @property
    def waiting(self) -> bool:
        return self._task is not None


async def park(slots: dict[Any, trio.lowlevel.Task], key: Hashable) -> None:
    """Wait as ``slots[key]`` until :func:`unpark` of that key (or cancellation, which frees the key)."""
    if key in slots:
        raise trio.BusyResourceError("another task is already waiting here")
    task = slots[key] = trio.lowlevel.current_task()

    def abort(_: Any) -> trio.lowlevel.Abort:
        if slots.get(key) is task:
            del slots[key]
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


def unpark(slots: dict[Any, trio.lowlevel.Task], key: Hashable) -> None:
    """Wake the task waiting as ``slots[key]``, if any."""
    task = slots.pop(key, None)
    if task is not None:
        trio.lowlevel.reschedule(task)
