"""The storage seam of the registry: values, events, the ``Store`` protocol and the expiry loop.

A store holds JSON objects keyed by ``(kind, name)``. It knows no resource schema; the one exception is the
label filter of :meth:`Store.list`, which reads ``value["metadata"]["labels"]``.

Invariants every backend keeps (the shared tests in ``tests/registry/store`` check them against each backend):

* **One global revision.** Every write (create, update, put, delete, and each record removed by expiry)
  takes the next integer; the first write of a new store is revision 1 and ``revision()`` of an empty store
  is 0. A record's ``revision`` is the revision of the write that produced that version.
* **Every write is one event.** Watchers see each revision of their kinds exactly once, in order, with no
  gap: first the stored history after ``since`` (catch-up), then live events. ``create_many`` is several
  writes in one commit (one durable sync): each record its own revision and event, consecutive, all or none.
* **Every write replaces the whole record**, value *and* expiry: ``expires=None`` means "never expires",
  also on ``update`` and ``put``.
* **Expired records are invisible** (``expires <= clock()``) to ``get``, ``list``, ``update`` and
  ``delete``. A ``create`` or ``put`` that meets an expired record first removes it with its own DELETE
  event (one revision), then writes the new record (the next revision), as an etcd lease expiry would.
  ``expire()`` removes every expired record, one DELETE event each.
* **DELETE carries the last version**, with ``revision`` set to the delete's own revision. ``delete()``
  returns that same record, so a caller can tell which store revision its delete has.
* Values handed out are fresh copies; mutating them never changes the store.
"""

from __future__ import annotations

import builtins
import logging
import math
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from registry.core.errors import BadParameter, ConnectionProblem, KubeportError

__all__ = ["Event", "Record", "Store", "StoreClosed", "serve_expiry"]

log = logging.getLogger(__name__)


class StoreClosed(ConnectionProblem):
    """The store was closed (``aclose``): no call on it will work again. Other ConnectionProblems (etcd
    unreachable for a while) may pass; callers that loop tell the two apart by this class."""


@dataclass(frozen=True)
class Record:
    """One version of one stored object."""

    kind: str
    name: str
    value: dict[str, Any]  # treat as immutable; backends return fresh copies
    revision: int  # store revision of the write that produced this version
    created_revision: int  # revision of the write that created the object (kept by update/put)
    expires: float | None  # unix seconds (wall clock); None = never


@dataclass(frozen=True)
class Event:
    """One write as a watcher sees it."""

    type: Literal["PUT", "DELETE"]
    # PUT: the new version; DELETE: the last version, with .revision = the delete's revision
    record: Record
    # trio.current_time() when the store published this change live (for the watch-lag metric); None for
    # an event read from history. Not part of the event's identity. A live event is one object shared by
    # every watcher of the store: its record (value included) is read-only, as every record is.
    published: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Write:
    """One write of :meth:`Store.write_many`: ``op`` with the arguments of the method of that name."""

    op: Literal["create", "update", "put", "delete"]
    kind: str
    name: str
    value: dict[str, Any] | None = None  # None only for delete
    expires: float | None = None
    expected_revision: int | None = None  # update and delete only


@dataclass(frozen=True, slots=True)
class EncodedValue:
    """A record value already checked and encoded by ``registry.store.encode_value`` (never built by hand):
    its canonical JSON text and its labels' JSON text. :meth:`Store.append_many` takes these, so a caller
    that must bound a value's encoded size (the agents' audit events) encodes it once, not twice."""

    data: str
    labels: str


MAX_EXISTING = 4096  # names per Store.existing call (a heartbeat batch is at most 512)


class Store(Protocol):
    """What the registry needs from storage. Errors come from :mod:`registry.core.errors`."""

    async def get(self, kind: str, name: str) -> Record:
        """The live record, or NotFound (``kube_cluster "x" not found``)."""
        ...

    async def existing(self, kind: str, names: Sequence[str]) -> set[str]:
        """Which of ``names`` have a live record of ``kind``: one read of the store however many names (at
        most ``MAX_EXISTING``), nothing decoded. For checks over a batch (a heartbeat batch's clusters)."""
        ...

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
        """Live records of ``kind`` sorted by name (``reverse``: highest name first).

        ``labels=None`` means no label filter; any other selector goes through ``labels.match_labels``
        (so an empty selector matches nothing). ``prefix`` keeps names starting with it; ``after`` and
        ``before`` keep names strictly greater / smaller than theirs. ``limit`` returns at most that many
        (matching) records, and a backend reads no more rows than it needs to find them: with names that
        sort by time (audit events), ``list(kind, before=cursor, limit=n, reverse=True)`` is one page
        of the newest ``n`` before ``cursor``, however large the table.
        """
        ...

    async def count(self, kind: str) -> int:
        """How many live records of ``kind`` there are (no value is decoded)."""
        ...

    async def create(self, kind: str, name: str, value: dict[str, Any], *, expires: float | None = None) -> Record:
        """Write a new record; AlreadyExists when a live one has the name."""
        ...

    async def create_many(
        self, kind: str, items: Sequence[tuple[str, dict[str, Any]]], *, expires: float | None = None
    ) -> builtins.list[Record]:
        """Create several ``(name, value)`` records of ``kind`` in ONE write: all or nothing (AlreadyExists for
        any live name, or a name given twice, writes none), one durable commit, consecutive revisions in the
        order given, and watchers see one PUT event per record. Returns the records in that order."""
        ...

    async def append_many(
        self, kind: str, items: Sequence[tuple[str, EncodedValue]], *, expires: float | None = None
    ) -> int:
        """:meth:`create_many` for values already encoded (``registry.store.encode_value``): the same single
        all-or-nothing commit, revisions and watch events, but it answers only how many records it wrote
        (nothing is decoded back). For bulk appends whose records the caller does not read (audit)."""
        ...

    async def write_many(self, writes: Sequence[Write]) -> builtins.list[Record]:
        """Several writes of any kinds in ONE durable commit, all or nothing: each is planned after the ones
        before it (as if called one by one), and if any would fail (NotFound, AlreadyExists, CompareFailed)
        none is written and that error is raised. Consecutive revisions, one event per change, in order.
        Returns one record per write: the new version, or for a delete the last version with the delete's
        revision (as watchers see it). The registry writes a change and its audit event this way, so a crash
        can never keep one without the other."""
        ...

    async def delete_many(self, kind: str, names: Sequence[str]) -> builtins.list[Record]:
        """Remove several live records of ``kind`` in ONE write, all or nothing (NotFound for any name that is
        not live, or given twice, removes none); one DELETE event each, in the order given. Returns their last
        versions with the deletes' revisions."""
        ...

    async def update(
        self,
        kind: str,
        name: str,
        value: dict[str, Any],
        *,
        expected_revision: int | None = None,
        expires: float | None = None,
    ) -> Record:
        """Replace a live record; NotFound, or CompareFailed when ``expected_revision`` is not current."""
        ...

    async def put(self, kind: str, name: str, value: dict[str, Any], *, expires: float | None = None) -> Record:
        """Create or replace (upsert)."""
        ...

    async def delete(self, kind: str, name: str, *, expected_revision: int | None = None) -> Record:
        """Remove a live record; returns its last version with the delete's revision."""
        ...

    async def revision(self) -> int:
        """The current store revision (0 for a new store)."""
        ...

    async def expire(self) -> int:
        """Remove every expired record now (one DELETE event each); returns how many."""
        ...

    def watch(
        self, kinds: Collection[str], *, since: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Events of ``kinds`` with revision > ``since`` (None: from now on), in order, no gap, no dup.

        Entering raises Compacted when ``since`` is older than the history (or newer than the store).
        Iteration raises Compacted when this watcher fell behind its buffer: resume from the last revision
        seen. Iteration ends when the store closes.
        """
        ...

    async def compact(self, *, keep: int) -> int:
        """Keep only the newest ``keep`` history events; returns the new floor (history starts after it)."""
        ...

    def statistics(self) -> dict[str, int]:
        """Counters: revision, writes, watchers, history, floor, records, ..."""
        ...

    async def aclose(self) -> None:
        """Release resources and end every watch; idempotent."""
        ...


async def serve_expiry(
    store: Store, *, interval: float = 1.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Call ``store.expire()`` now and then every ``interval`` seconds, until cancelled or the store closes.

    A failing sweep is logged and retried at the next tick: a transient storage error must not take the
    registry down, and the next sweep removes whatever this one missed. That includes an unreachable etcd
    (ConnectionProblem): only a closed store (StoreClosed) ends the loop, else one etcd outage longer than the
    client's retry window would stop expiry in this registry for good.
    """
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not math.isfinite(interval):
        raise BadParameter(f"expiry interval must be a positive number of seconds, got {interval!r}")
    if interval <= 0:
        raise BadParameter(f"expiry interval must be a positive number of seconds, got {interval!r}")
    task_status.started()
    while True:
        try:
            await store.expire()
        except StoreClosed:
            # Nothing left to expire, end quietly.
            return
        except KubeportError as exc:
            log.warning("expiry sweep failed (retrying in %ss): %s", interval, exc)
        await trio.sleep(interval)
