"""Group commit, shared by the durable backends (SQLite, etcd): writes that queue while another commits
are committed together, each with its own outcome.

A writer submits a *unit* (one op, or an atomic batch) with :meth:`WriteQueue.submit`. The first writer to
hold the backend's lock takes queued units (all of them, or as many as fit, the backend decides) and commits
them; the others find theirs already taken and only wait for its outcome.

Invariants:

* every unit gets exactly one outcome: its changes, or the error that failed it (a plan error fails that unit
  alone; a failure of the commit itself is *shared* by every unit of the group, and each caller raises its
  own copy of it);
* a caller cancelled before its unit was taken withdraws it, so it is never written; once taken, the caller
  waits (shielded) for the commit, so a cancelled write is never left half-known;
* a caller whose unit another committer took stops waiting for the lock at once (:meth:`Pending.take`
  cancels that wait) and waits for its outcome only: the writers of one group do not pass the lock from
  one to the next, each in its own turn of the scheduler, before the next group can form. In the registry,
  where each turn also runs other requests' handlers, that relay cost 1.7 ms per write on average (p90
  4.4 ms) between a group's commit and its writers' return on etcd with 8 API clients; now 0.6 ms (p90
  1.3 ms), and the next group is taken 1.4 ms after the last one committed instead of 3.9 ms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from registry.core.errors import KubeportError
from registry.store._plan import Change, WriteOp


class Pending:
    """One queued unit and, once committed, its outcome."""

    __slots__ = ("atomic", "done", "lock_wait", "ops", "outcome", "shared", "taken")

    def __init__(self, ops: tuple[WriteOp, ...], atomic: bool) -> None:
        self.ops = ops
        self.atomic = atomic
        self.taken = False  # a group holds it: it will be committed (or fail) with that group
        self.shared = False  # the outcome is an exception raised for the whole group
        self.outcome: list[Change] | BaseException | None = None
        self.done = trio.Event()
        self.lock_wait: trio.CancelScope | None = None  # while its writer waits for the lock

    def take(self) -> None:
        """Into a group (the caller holds the lock): the unit will be committed, or fail, with it."""
        self.taken = True
        if self.lock_wait is not None:
            self.lock_wait.cancel()  # its writer now only waits for the outcome

    def settle(self, outcome: list[Change] | KubeportError) -> None:
        self.outcome = outcome
        self.done.set()


class WriteQueue:
    """The units waiting for the next group commit of one store."""

    def __init__(self) -> None:
        self.pending: list[Pending] = []

    async def submit(
        self, ops: tuple[WriteOp, ...], *, atomic: bool, lock: trio.Lock, commit: Callable[[], Awaitable[None]]
    ) -> list[Change]:
        """Queue a unit and return its changes once committed (raising its error). ``commit`` runs under
        ``lock`` when this unit is still queued: it takes units (:meth:`take_all` or its own choice), commits
        them and settles each (:meth:`Pending.settle`, :func:`fail_group`)."""
        slot = Pending(ops, atomic)
        self.pending.append(slot)
        try:
            holding = False
            with trio.CancelScope() as slot.lock_wait:
                await lock.acquire()
                holding = True
            slot.lock_wait = None
            if holding:
                try:
                    if not slot.taken:
                        await commit()
                finally:
                    lock.release()
            if not slot.done.is_set():
                await slot.done.wait()
        except trio.Cancelled:
            if not slot.taken:
                self.pending.remove(slot)
                raise
            with trio.CancelScope(shield=True):
                await slot.done.wait()
            raise
        outcome = slot.outcome
        if isinstance(outcome, KubeportError) and slot.shared:
            raise type(outcome)(outcome.message) from outcome  # one exception per caller, never a shared one
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    def take_all(self) -> list[Pending]:
        group, self.pending = self.pending, []
        for slot in group:
            slot.take()
        return group


def fail_group(group: Sequence[Pending], exc: BaseException) -> None:
    """The commit of ``group`` failed as a whole: every unit not settled yet gets ``exc``."""
    for slot in group:
        if not slot.done.is_set():
            slot.outcome = exc
            slot.shared = len(group) > 1
            slot.done.set()
