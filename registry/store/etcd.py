"""``EtcdStore``: the Store on an etcd cluster, so several registry processes can share one state.

Layout under the key prefix (default ``/kubeport/``; one prefix per kubeport cluster sharing an etcd)::

    meta/revision      kubeport's store revision, decimal (plain)
    meta/floor         kubeport's history floor, decimal (plain)
    meta/keycheck      a sealed canary: proves this registry holds the key file the data was written with
    items/<kind>/<name>   the current version of each record (sealed: a JSON line with labels, revisions and
                          expiry, then the value's canonical JSON as it is)
    hist/<revision:020>   one history entry per store revision (sealed the same way, plus type and write id)

Revisions. The store contract wants one global, gap-free revision that starts at 1, with every change its
own revision (a create over an expired record is a DELETE then a PUT, two revisions; ``create_many`` of N
records is N revisions in one commit). etcd's own revision cannot give that: a prefix shares etcd with
other tenants (their writes make gaps), an etcd txn is ONE revision however many changes it holds, and a
fresh etcd already starts at revision 1. So kubeport's revision is a counter kept *in* etcd, advanced in the
same etcd txn as the changes, and etcd's revision serves underneath: every write is a txn that compares
``meta/revision``'s ``mod_revision`` with the one read before planning (compare-and-swap through etcd's
txn), so writes from all registries are serialised by etcd, each store revision is committed exactly once,
and the etcd revision order of ``hist/`` keys is the store revision order. ``Record.revision`` is the store
revision; etcd's ``mod_revision`` stays internal. A write whose answer was lost (``request timed out``,
a dropped connection) is resolved by reading back ``hist/<its first revision>`` for its write id.

Every rule of a write (expiry visibility, CAS, created_revision, secret redaction) comes from the shared
planner (``_plan``), exactly as for the other backends; this module only reads a consistent snapshot (one
read-only txn), plans, and commits the plan as one etcd txn.

Grouping (as SQLite's group commit): the writes of this process that queue while one commits go together
into the next snapshot read and txn, each planned in arrival order against the state the earlier ones leave,
so N concurrent writers cost about one round trip set, not N. Each keeps its own outcome and revisions: a
write whose plan fails (NotFound, AlreadyExists, CompareFailed) fails alone and consumes no revision; a group
etcd refuses as too large is split in halves and committed in turn; any other failure of the txn is the
outcome of every write of the group, and then none of them landed (or, Ambiguous and read back, all did).
Once a txn is sent it finishes (shielded, bounded by the client's timeouts) before a cancelled caller sees
its cancel, so no write is left half-known.

Watch. A background feed watches ``hist/`` in etcd and publishes each new store revision to the local
watch hub, in order, whoever wrote it (this process or another registry). A write returns only once the
feed has published it here, so a caller's own write is in ``revision()`` and in every local watch when it
returns. When etcd's watch breaks or is compacted past the feed's position, the feed re-reads ``hist/``
after the last published revision (a range read, which compaction of etcd's MVCC history does not affect)
and watches again: no gap, no duplicate. A watch that goes silent without breaking (a member cut off from
the cluster) is caught by a watchdog comparing the counter in etcd with what was published. Catch-up for
``watch(since=...)`` reads ``hist/`` directly. The feed does not unseal and decode the entries this process
wrote itself: each write keeps (bounded) the sealed bytes it puts at ``hist/<revision>`` with the change they
hold, and an event carrying exactly those bytes is published from memory; anything else (other registries'
writes, entries rewritten since, whatever was dropped from the bound) is decoded from etcd as always.

History compaction is kubeport's: ``compact(keep)`` deletes ``hist/`` entries up to the new floor, and asks
etcd to compact its own MVCC history up to the etcd revision of the *previous* kubeport compaction, so old
versions of values do not pile up in etcd, while lagging watchers still have a window. It is never on a
writer's path: a write that finds history over its bound only wakes a background compactor (in the feed's
nursery), which deletes at most ``_COMPACT_BATCH`` entries per txn, each txn moving ``meta/floor`` with them,
without the write lock. A compaction txn compares the floor's mod_revision (compactions of several
registries never interleave wrongly); every write compares it too, so a write planned against the old floor
(which might rewrite a superseded history entry the compaction just deleted) is planned again. Before, one
compaction deleted ~1,000 entries (after a 100,000-heartbeat announce, ~10,000) in one txn under the write
lock, and the writer that triggered it also waited for etcd's compaction. etcd compaction is cluster-wide:
on an etcd shared with other applications it compacts their history too, as etcd's own
``--auto-compaction-*`` would (kubeport's feed does not depend on etcd history, so it copes with either).

TTL. Records carry ``expires`` (store clock) and every read filters on the store's ``clock()``, as the other
backends do; the registry's expiry sweep (``serve_expiry`` → :meth:`expire`) removes expired records with
DELETE events. Each record with an expiry is also attached to an etcd lease that ends ``lease_grace`` seconds
after it (an hour by default), rounded up to a ``lease_bucket`` (10 s): one lease per bucket (cached, as
Teleport does), never one per key; the next bucket's lease is granted in the background as soon as a write
uses one, so a write crossing into a new bucket does not wait for a grant. Leases are the backstop that frees
the keys of a cluster whose registries are all gone. The grace is long so that a registry coming back within
it sweeps the expired records itself, with DELETE events. A key a lease did delete produced no store event
(nobody was there to write one): the first registry to open the prefix again finds the ``items/`` keys that
existed at kubeport's last write (etcd's MVCC history at that revision) and are gone now, and records a DELETE
of each one's last version, once (:meth:`_reap_lease_removals`), so watchers resuming from a revision miss
nothing. A registry that kept running while it could not reach etcd does the same when etcd answers
again (a failed watchdog reading, or none for half the grace, makes the check due): before its next write,
since a write would move "kubeport's last write" past the removals, and from :meth:`_lease_checker` when
idle. A lease that expired under the cache (``requested lease not found``) is dropped from the cache and
the write retried with a new one.

Secrets at rest: every value under ``items/`` and ``hist/`` is sealed with AES-GCM (``etcd_seal``) using the
key file from the registry's data dir; ``open`` refuses a key that does not open ``meta/keycheck``. History
entries of superseded versions are rewritten without secrets (``_secrets``), as in SQLite; etcd's MVCC keeps
the sealed old version until the next etcd compaction.

Limits: one write is one etcd txn, and etcd allows ``--max-txn-ops`` operations per txn (128 by default).
A write needs one operation per key it touches: per change the record and its history entry (plus the
rewrite of a superseded version's entry for kinds with secrets), plus the counter. etcd checks the limit per
nesting level, so a larger write goes as one txn of nested txns (:func:`nest_ops`; up to 4096 operations,
about 2000 records, still one atomic revision); beyond that it is refused whole with LimitExceeded before
anything is written. etcd also caps a request at ``--max-request-bytes`` (1.5 MiB by default): a batch of
large values can meet that first (TooLarge). ``expire`` splits its work into as many txns as it needs.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson
import trio

from registry.core.errors import BadParameter, Compacted, ConnectionProblem, KubeportError, LimitExceeded, TooLarge
from registry.store import _plan
from registry.store._common import BaseStore, Clock
from registry.store._group import Pending, WriteQueue, fail_group
from registry.store._plan import Change, Item, WriteOp
from registry.store.base import Record
from registry.store.etcd_client import (
    Ambiguous,
    EtcdClient,
    KeyValue,
    LeaseNotFound,
    TxnResult,
    WatchEvent,
    compare_mod,
    delete_op,
    parse_endpoints,
    prefix_end,
    put_op,
    range_op,
)
from registry.store.etcd_seal import Sealer, Unsealable
from registry.store.etcd_versions import known_problem

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/kubeport/"
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")
MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL; a farther expiry gets no lease (the sweep still removes it)
_PAGE = 500  # keys per range read
# A write puts a value twice (the record and its history entry) in one request, and etcd refuses requests
# over --max-request-bytes (1.5 MiB by default): 640 KiB values keep the largest single write under it.
MAX_VALUE_BYTES = 640 * 1024
# A group commit stops adding writes at this many bytes of values (each is sent twice, base64: about 2.7x on
# the wire), well under etcd's --max-request-bytes; a group etcd still refuses is split (_commit_units).
_GROUP_BYTES = 384 * 1024
# History entries deleted per compaction txn: small txns, so etcd's commit of one never stalls the writes
# queued behind it for long (a compaction after 100,000 announced heartbeats deletes 1,000s of entries).
_COMPACT_BATCH = 256
# Bucket ends waiting to be granted ahead at most (one per expiry pattern in use: heartbeats, audit events...).
_LEASES_AHEAD = 16
_EXPIRE_BATCH = 256  # expired records per txn to start with; halved while etcd finds the request too large
_CANARY = b"kubeport etcd key check"
# History entries of this process's own writes kept for the feed at most (see EtcdStore._remember_own), in
# number and in sealed bytes: a group commit is a few hundred entries and _GROUP_BYTES of values at most;
# more means the feed lags (or etcd refused txns), and then decoding those entries again is fine.
_OWN_MAX = 4096
_OWN_MAX_BYTES = 8 * 1024 * 1024

Snapshot = dict[tuple[str, str], Item | None]


def check_prefix(prefix: object) -> str:
    """An etcd key prefix: starts and ends with ``/``, tame characters, no ``..`` (BadParameter otherwise)."""
    if not isinstance(prefix, str) or not prefix:
        raise BadParameter(f"etcd prefix must be a non-empty string such as /kubeport/, got {prefix!r:.80}")
    if len(prefix) > 200 or not set(prefix) <= _PREFIX_CHARS or ".." in prefix:
        raise BadParameter(f"etcd prefix {prefix!r:.80} may only hold letters, digits and - _ . / (at most 200)")
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    if not prefix.endswith("/"):
        prefix += "/"
    return prefix


class EtcdStore(BaseStore):
    """The Store on etcd; see the module docstring. Open with :meth:`open`."""

    backend = "etcd"

    def __init__(
        self,
        client: EtcdClient,
        sealer: Sealer,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = time.time,
        max_history: int = 100_000,
        watch_buffer: int = 1024,
        max_value_bytes: int = MAX_VALUE_BYTES,
        lease_bucket: float = 10.0,
        lease_grace: float = 3600.0,
        max_txn_ops: int = 128,
        publish_timeout: float = 5.0,
        watchdog_interval: float = 5.0,
    ) -> None:
        super().__init__(
            clock=clock, max_history=max_history, watch_buffer=watch_buffer, max_value_bytes=max_value_bytes
        )
        for what, number in (
            ("lease_bucket", lease_bucket),
            ("lease_grace", lease_grace),
            ("publish_timeout", publish_timeout),
            ("watchdog_interval", watchdog_interval),
        ):
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 < number < 1e6:
                raise BadParameter(f"{what} must be a positive number of seconds, got {number!r}")
        self._max_txn_ops = _plan.check_positive("max_txn_ops", max_txn_ops)
        if self._max_txn_ops < 4:
            raise BadParameter(f"max_txn_ops must be at least 4 (etcd's default is 128), got {max_txn_ops}")
        # Expired records removed per txn (nested, see nest_ops): each is an item delete, its DELETE entry and
        # the redaction of its last version's history entry; the counter once.
        self._max_batch = max(1, ((self._max_txn_ops // 2) ** 2 - 1) // 3)
        self._client = client
        self._sealer = sealer
        self.prefix = check_prefix(prefix)
        base = self.prefix.encode()
        self._rev_key = base + b"meta/revision"
        self._floor_key = base + b"meta/floor"
        self._check_key = base + b"meta/keycheck"
        self._items = base + b"items/"
        self._hist = base + b"hist/"
        self._bucket = float(lease_bucket)
        self._grace = float(lease_grace)
        self._publish_timeout = float(publish_timeout)
        self._watchdog_interval = float(watchdog_interval)
        self._leases: dict[float, int] = {}  # bucket end (store clock) -> lease id
        self._leases_wanted: set[float] = set()  # bucket ends to grant ahead (see _lease_granter)
        self._lease_kick = trio.Event()
        self._deadlines: list[tuple[float, int, str, str]] = []  # as MemoryStore: (expires, revision, kind, name)
        self._lock = trio.Lock()  # one write of this process at a time (other processes: the txn compare)
        self._compact_lock = trio.Lock()  # one compaction of this process at a time
        self._compact_wanted = trio.Event()  # set by a write that found history over its bound
        self._queue = WriteQueue()  # writes waiting for the next group commit (see _queue_write)
        self._progress = trio.Event()  # set (and replaced) whenever the feed publishes
        self._feed_scope = trio.CancelScope()
        self._kick_scope: trio.CancelScope | None = None
        self._feed_done = trio.Event()
        self._last_etcd_compaction = 0
        # (counter, its mod_revision, floor, its mod_revision) as this process's last commit left them: what a
        # create plans against without reading first (see _commit); None when unknown
        self._known: tuple[int, int, int, int] | None = None
        # this process's own history entries, sent and not yet published by the feed: store revision ->
        # (the sealed value put at hist/<revision>, the change it holds); see _remember_own and _take
        self._own: dict[int, tuple[bytes, Change]] = {}
        self._own_bytes = 0
        self.resyncs = 0
        # the lease-removal check (_reap_lease_removals): due after etcd was out of reach (_note_contact)
        self._last_contact = 0.0  # store clock, of the last reading of etcd known to have succeeded
        self._lease_check_wanted = False
        self._lease_check_wake = trio.Event()
        self._reaping = False
        self._reap_seen = 0  # the highest store revision a lease-removal check read (see _start)
        self.lease_checks = 0

    @classmethod
    async def open(
        cls,
        endpoints: str | Sequence[str],
        *,
        key: bytes,
        prefix: str = DEFAULT_PREFIX,
        tls: ssl.SSLContext | None = None,
        **options: Any,
    ) -> EtcdStore:
        """Connect, check the key against ``meta/keycheck`` (writing it on first use), load the expiry
        index, and start the feed. ConnectionProblem when etcd cannot be reached, BadParameter for a key
        that does not match the data."""
        urls = parse_endpoints(endpoints, tls=tls is not None) if isinstance(endpoints, str) else list(endpoints)
        client = EtcdClient(urls, tls=tls)
        try:
            store = cls(client, Sealer(key), prefix=prefix, **options)
            await store._start()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def _start(self) -> None:
        canary = self._sealer.seal(self._check_key, _CANARY)
        result = await self._client.txn(
            [compare_mod(self._check_key, 0)], [put_op(self._check_key, canary)], [range_op(self._check_key)],
            idempotent=True,  # creating it twice is the same as once
        )  # fmt: skip
        if not result.succeeded:
            stored = result.ranges()[0]
            try:
                if stored and self._sealer.open(self._check_key, stored[0].value) != _CANARY:
                    raise Unsealable("wrong canary")
            except Unsealable:
                raise BadParameter(
                    f"the data under etcd prefix {self.prefix} was written with another key file: copy etcd.key "
                    "from the data dir of a registry already serving this cluster"
                ) from None
        await self._warn_known_problem()
        every_item = range_op(self._items, prefix_end(self._items), count_only=True)
        snapshot = await self._client.txn(
            [], [range_op(self._rev_key), range_op(self._floor_key), every_item], idempotent=True
        )
        counter, floor = (_decimal(kvs) for kvs in snapshot.ranges()[:2])
        records = int(_count_of(snapshot.responses[2]))
        self._revision = counter
        self._floor = floor
        self._records = records
        await self._load_deadlines(snapshot.revision)
        self._last_contact = self._now()
        trio.lowlevel.spawn_system_task(self._feed_main, snapshot.revision, name=f"etcd feed {self.prefix}")
        counter_kvs = snapshot.ranges()[0]
        if counter_kvs:
            async with self._lock:
                state = (counter_kvs[0].mod_revision, counter, records)
                changes = await self._reap_lease_removals(state, strict=False)
            # What this check wrote, or found another registry opening at the same time had written: in this
            # store's revision() and watches before open returns.
            last = max(changes[-1].revision if changes else 0, self._reap_seen)
            if last > self._revision:
                await self._wait_published(last)

    async def _warn_known_problem(self) -> None:
        """Log a warning when the etcd member this registry talks to runs a release with a known fault that
        breaks kubeport's promises (:mod:`registry.store.etcd_versions`). Best effort: a member that does not
        say its version (or refuses the status call) is not a reason to refuse to start."""
        try:
            status = await self._client.call("maintenance/status", {})
        except KubeportError as exc:
            log.debug("etcd did not tell its version: %s", exc)
            return
        version = status.get("version")
        problem = known_problem(version) if isinstance(version, str) else None
        if problem is not None:
            log.warning("%s (the member at %s)", problem, self._client.endpoint)

    async def _reap_lease_removals(self, state: tuple[int, int, int] | None, *, strict: bool) -> list[Change]:
        """Give the records a lease removed while no registry was sweeping their DELETE events; the caller
        holds the write lock. Run when a registry opens the prefix, and again before this registry's next
        write (and by :meth:`_lease_checker` when idle) once etcd was out of reach (:meth:`_lease_check_due`).

        ``state`` is (``written_at``, ``counter``, ``records``) read in one txn (None: read it now):
        ``written_at`` the etcd revision of kubeport's last write to this prefix (the one that set the store
        revision to ``counter``), ``records`` the number of ``items/`` keys now. No kubeport write came after
        ``written_at``, so an ``items/`` key that existed then and is gone now was removed by its lease,
        without a store event: each becomes a DELETE of its last version (read from etcd's MVCC history at
        ``written_at``), with a store revision like any expiry. The common case costs one count read: nothing
        vanished. The DELETEs go in txns of at most ``max_batch`` records, each committing only if the store
        revision is still the one the check read; before each, the store history written since ``counter``
        is read, and a record any write touched in between (another registry recording the same removal, a
        re-create) is left out, so each removal is recorded once however many registries check at once.

        Best effort when opening (``strict`` False): when etcd compacted that history or is unreachable, a
        warning is logged and the store opens anyway (unreachable: the check stays due for the next write).
        Before a write (``strict``), an unreachable etcd fails the write: a write must not move
        ``written_at`` past removals nobody recorded."""
        assert self._lock.locked()
        self._reaping = True
        self.lease_checks += 1
        recorded: list[Change] = []
        try:
            if state is None:
                state = await self._lease_state()
            written_at, counter, records = state
            if written_at:
                lower, upper = self._items, prefix_end(self._items)
                _, then, _, _ = await self._client.range(lower, upper, count_only=True, revision=written_at)
                if then > records:
                    recorded = await self._record_vanished(await self._vanished_since(written_at), counter)
        except ConnectionProblem as exc:
            self._lease_check_wanted = True  # try again before the next write
            if strict:
                raise
            log.warning("etcd prefix %s: cannot check for records removed by leases: %s", self.prefix, exc)
            return recorded
        except KubeportError as exc:  # e.g. etcd compacted that history: nothing can be done about it
            log.warning("etcd prefix %s: cannot check for records removed by leases: %s", self.prefix, exc)
        finally:
            self._reaping = False
        self._lease_check_wanted = False
        self._last_contact = self._now()
        if recorded:
            log.warning(
                "etcd prefix %s: %d expired records had been removed by their leases while no registry was "
                "sweeping; their DELETE events are recorded now",
                self.prefix,
                len(recorded),
            )
        return recorded

    async def _lease_state(self) -> tuple[int, int, int]:
        """(etcd revision of kubeport's last write, the store revision, ``items/`` keys now), in one read."""
        every_item = range_op(self._items, prefix_end(self._items), count_only=True)
        result = await self._client.txn([], [range_op(self._rev_key), every_item], idempotent=True)
        counter_kvs = result.ranges()[0]
        if not counter_kvs:
            return 0, 0, 0
        return counter_kvs[0].mod_revision, _decimal(counter_kvs), _count_of(result.responses[1])

    async def _record_vanished(self, vanished: dict[tuple[str, str], Item], counter: int) -> list[Change]:
        """DELETEs of ``vanished`` (gone since store revision ``counter``) that no write since recorded."""
        seen = counter
        recorded: list[Change] = []
        for _ in range(1000 + len(vanished)):
            seen, touched = await self._touched_since(seen)
            for key in touched:  # recorded by another registry (or by us), or written again: not ours to record
                vanished.pop(key, None)
            if not vanished:
                return recorded
            chunk = dict(sorted(vanished.items())[: self._max_batch])
            changes = await self._commit(list(chunk), functools.partial(_reap_plan, chunk, seen))
            recorded += changes  # none: a write came in between, whose history the next round reads
        raise ConnectionProblem("etcd: too much write contention while recording records removed by leases")

    async def _touched_since(self, after: int) -> tuple[int, set[tuple[str, str]]]:
        """(the store revision, the records its history after ``after`` wrote), read at one etcd revision."""
        ops = [
            range_op(self._rev_key),
            range_op(self._floor_key),
            range_op(self._hist_key(after + 1), prefix_end(self._hist), limit=_PAGE),
        ]
        result = await self._client.txn([], ops, idempotent=True)
        counter_kvs, floor_kvs, kvs = result.ranges()
        if _decimal(floor_kvs) > after:
            # what was recorded since is gone: give up rather than risk recording a DELETE twice
            raise Compacted(f"the store history after revision {after} was compacted")
        touched: set[tuple[str, str]] = set()
        while kvs:
            for kv in kvs:
                item = self._decode_change(kv)[0].item
                touched.add((item.kind, item.name))
            if len(kvs) < _PAGE:
                break
            kvs, *_ = await self._client.range(
                kvs[-1].key + b"\x00", prefix_end(self._hist), limit=_PAGE, revision=result.revision
            )
        self._reap_seen = max(self._reap_seen, _decimal(counter_kvs))
        return _decimal(counter_kvs), touched

    async def _vanished_since(self, written_at: int) -> dict[tuple[str, str], Item]:
        """The ``items/`` present at etcd revision ``written_at`` and absent now, by (kind, name)."""
        then = {kv.key: kv async for kv in self._all_items(revision=written_at)}
        for kv in [kv async for kv in self._all_items()]:
            then.pop(kv.key, None)
        gone = [self._decode_item(kv) for kv in then.values()]
        return {(item.kind, item.name): item for item in gone}

    def _lease_check_due(self) -> bool:
        """Whether a write must first look for records leases removed (see :meth:`_note_contact`)."""
        if self._reaping:
            return False
        return self._lease_check_wanted or self._now() - self._last_contact >= self._grace / 2

    def _note_contact(self, ok: bool) -> None:
        """The watchdog's periodic reading of etcd, ``ok`` or failed. Leases remove records only when no
        registry swept them for ``lease_grace``, i.e. while every registry was out of reach of etcd (or
        stopped, or suspended): after a failed reading, or a gap of half the grace between two (a suspended
        process, a clock jump), the check is due before this registry's next write, and :meth:`_lease_checker`
        runs it at once when the next reading succeeds."""
        now = self._now()
        if not ok:
            self._lease_check_wanted = True
            return
        if self._lease_check_wanted or now - self._last_contact >= self._grace / 2:
            self._lease_check_wanted = True
            self._lease_check_wake.set()
        self._last_contact = now

    async def _lease_checker(self) -> None:
        """Run a due lease-removal check after etcd came back, writes or not (part of the feed's nursery), so
        watchers of an idle registry get the DELETEs too."""
        while True:
            await self._lease_check_wake.wait()
            self._lease_check_wake = trio.Event()
            changes: list[Change] = []
            async with self._lock:
                if self._lease_check_wanted:  # else a write ran it meanwhile
                    changes = await self._reap_lease_removals(None, strict=False)
            if changes:
                await self._wait_published(changes[-1].revision)

    async def _all_items(self, *, revision: int = 0) -> AsyncIterator[KeyValue]:
        lower, upper = self._items, prefix_end(self._items)
        while True:
            kvs, _, more, _ = await self._client.range(lower, upper, limit=_PAGE, revision=revision)
            for kv in kvs:
                yield kv
            if not more or not kvs:
                return
            lower = kvs[-1].key + b"\x00"

    # --- keys and encoding -----------------------------------------------------------------------------

    def _item_key(self, kind: str, name: str) -> bytes:
        return self._items + kind.encode() + b"/" + name.encode()

    def _hist_key(self, revision: int) -> bytes:
        return self._hist + f"{revision:020d}".encode()

    def _seal_item(self, key: bytes, item: Item, **extra: str) -> bytes:
        """Sealed ``meta JSON + "\\n" + value``: the value's canonical JSON goes in as it is (escaping it into
        another JSON string could double its size against etcd's request limit)."""
        meta = {**_item_meta(item), **extra}
        # orjson, as json.dumps would write it (compact; a raw newline is escaped in strings), but faster
        return self._sealer.seal(key, orjson.dumps(meta) + b"\n" + item.data.encode())

    def _open_item(self, kv: KeyValue) -> tuple[Item, dict[str, Any]]:
        plain = self._sealer.open(kv.key, kv.value)
        head, _, data = plain.partition(b"\n")  # JSON text never holds a raw newline
        try:
            meta = orjson.loads(head)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
            expires = meta.get("e")
            item = Item(
                kind=str(meta["k"]),
                name=str(meta["n"]),
                data=data.decode(),
                revision=int(meta["r"]),
                created_revision=int(meta["c"]),
                expires=None if expires is None else float(expires),
                labels=str(meta.get("l", "{}")),
            )
        except (KeyError, TypeError, ValueError, RecursionError):
            raise ConnectionProblem(f"etcd value at {kv.key!r:.80} is damaged") from None
        return item, meta

    def _decode_item(self, kv: KeyValue) -> Item:
        return self._open_item(kv)[0]

    def _decode_change(self, kv: KeyValue) -> tuple[Change, str]:
        item, meta = self._open_item(kv)
        kind = meta.get("t")
        if kind not in ("PUT", "DELETE"):
            raise ConnectionProblem(f"etcd history entry {kv.key!r:.80} is damaged")
        return Change(kind, item), str(meta.get("w", ""))

    def _hist_revision(self, key: bytes) -> int | None:
        if not key.startswith(self._hist):
            return None
        tail = key[len(self._hist) :]
        return int(tail) if tail.isdigit() else None

    # --- reads -----------------------------------------------------------------------------------------

    async def _read(self, kind: str, name: str) -> Item | None:
        kvs, *_ = await self._client.range(self._item_key(kind, name))
        self._check_open()
        return self._decode_item(kvs[0]) if kvs else None

    async def _read_many(self, kind: str, names: Sequence[str]) -> Sequence[Item]:
        """One read-only txn per ``(max_txn_ops / 2)^2 - 1`` names (nested, see nest_ops)."""
        per_txn = (self._max_txn_ops // 2) ** 2 - 1
        out: list[Item] = []
        for lo in range(0, len(names), per_txn):
            ops = [range_op(self._item_key(kind, name)) for name in names[lo : lo + per_txn]]
            result = await self._client.txn([], nest_ops(ops, self._max_txn_ops, what="this read"), idempotent=True)
            self._check_open()
            out += [self._decode_item(kvs[0]) for kvs in result.ranges() if kvs]
        return out

    async def _list(
        self, kind: str, bounds: _plan.ListRange, labels: Mapping[str, str | list[str]] | None, now: float
    ) -> list[Record]:
        base = self._items + kind.encode() + b"/"
        lower = base + bounds.lower.encode()
        upper = base + bounds.upper.encode() if bounds.upper is not None else prefix_end(base)
        out: list[Record] = []
        revision = 0
        while True:
            page = _PAGE if bounds.limit is None else min(_PAGE, max(bounds.limit - len(out), 1) * 2)
            kvs, _, more, header = await self._client.range(
                lower, upper, limit=page, descending=bounds.reverse, revision=revision
            )
            self._check_open()
            revision = revision or header  # every page from the same snapshot
            items = [self._decode_item(kv) for kv in kvs]
            live = [i for i in items if not i.expired(now) and bounds.contains(i.name)]
            out += _plan.to_records(live, labels)
            if bounds.limit is not None and len(out) >= bounds.limit:
                return out[: bounds.limit]
            if not more or not kvs:
                return out
            if bounds.reverse:
                upper = kvs[-1].key
            else:
                lower = kvs[-1].key + b"\x00"

    async def _count(self, kind: str, now: float) -> int:
        """etcd's count of the kind's keys, less those already expired by the store clock (the expiry index
        names the candidates; with more than one txn holds, every record of the kind is read instead)."""
        base = self._items + kind.encode() + b"/"
        due = _due(self._deadlines, kind, now)
        if len(due) >= self._max_txn_ops:
            return len(await self._list(kind, _plan.ListRange(), None, now))
        ops = [range_op(base, prefix_end(base), count_only=True)]
        ops += [range_op(self._item_key(kind, name)) for name in due]
        result = await self._client.txn([], ops, idempotent=True)
        self._check_open()
        total = _count_of(result.responses[0])
        for kvs in result.ranges()[1:]:
            if kvs and self._decode_item(kvs[0]).expired(now):
                total -= 1
        return total

    def _snapshot_ops(self, keys: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        ops = [range_op(self._rev_key), range_op(self._floor_key)]
        ops += [range_op(self._item_key(kind, name)) for kind, name in keys]
        return nest_ops(ops, self._max_txn_ops, what="this read")

    async def _snapshot(self, keys: Sequence[tuple[str, str]]) -> tuple[int, int, int, int, Snapshot]:
        """(counter, its mod_revision, floor, its mod_revision, items) read in one consistent txn."""
        result = await self._client.txn([], self._snapshot_ops(keys), idempotent=True)
        return self._parse_snapshot(keys, result)

    def _parse_snapshot(
        self, keys: Sequence[tuple[str, str]], result: TxnResult
    ) -> tuple[int, int, int, int, Snapshot]:
        """The answer of :meth:`_snapshot_ops` (a read txn's, or a refused write's failure branch)."""
        ranges = result.ranges()
        if len(ranges) != 2 + len(keys):
            raise ConnectionProblem("etcd answered a malformed txn")
        counter_kvs = ranges[0]
        counter = _decimal(counter_kvs)
        mod = counter_kvs[0].mod_revision if counter_kvs else 0
        items: Snapshot = {}
        for key, kvs in zip(keys, ranges[2:], strict=True):
            items[key] = self._decode_item(kvs[0]) if kvs else None
        floor_mod = ranges[1][0].mod_revision if ranges[1] else 0
        return counter, mod, _decimal(ranges[1]), floor_mod, items

    # --- writes ----------------------------------------------------------------------------------------

    async def _write(self, op: WriteOp) -> list[Change]:
        return await self._queue_write((op,), atomic=False)

    async def _write_batch(self, ops: Sequence[WriteOp]) -> list[Change]:
        return await self._queue_write(tuple(ops), atomic=True)

    async def _queue_write(self, ops: tuple[WriteOp, ...], *, atomic: bool) -> list[Change]:
        """Group commit, as SQLite's: writes that queue up while another commits go to etcd together, in
        ONE snapshot read and ONE txn, each planned in arrival order against the state the earlier ones left.
        The lock holder lets the scheduler run one pass before it takes the group, so the writes of
        requests being handled at that moment join it (8 API clients: about 6-7 creates per txn, not 5).

        A batch joins a group as one unit, all or nothing. Each caller keeps its own outcome: an op whose plan
        fails (NotFound, AlreadyExists, CompareFailed) fails alone and consumes no revision. A group etcd
        finds too large (TooLarge, LimitExceeded) is split in halves and committed in turn, so only a unit
        that is too large on its own fails with that. Any other failure of the txn fails every unit of the
        group, and then none is written (or, Ambiguous and checked, all are). A caller cancelled before its
        unit was taken into a group withdraws it; once taken, the group's txn finishes (shielded) before any
        caller sees the cancel, so a write is never left half-known.
        """
        outcome = await self._queue.submit(ops, atomic=atomic, lock=self._lock, commit=self._commit_group)
        if outcome:
            await self._wait_published(outcome[-1].revision)
        return outcome

    def _take_group(self) -> list[Pending]:
        """The queued units that fit one etcd txn (estimated), in arrival order; the first always."""
        budget_ops = (self._max_txn_ops // 2) ** 2 // 2  # nested txn capacity, half to leave room for redactions
        group: list[Pending] = []
        ops = size = 0
        queue = self._queue.pending
        while queue:
            slot = queue[0]
            slot_ops = 3 * len(slot.ops) + 1
            slot_size = sum(len(op.data or "") for op in slot.ops)
            if group and (ops + slot_ops > budget_ops or size + slot_size > _GROUP_BYTES):
                break
            group.append(queue.pop(0))
            ops += slot_ops
            size += slot_size
            slot.take()
        return group

    async def _commit_group(self) -> None:
        """Under the lock: take queued writes and commit them together (see :meth:`_queue_write`); writes
        that did not fit are left queued for the next lock holder."""
        # One pass of the scheduler first: requests already read and being handled (other tasks, runnable
        # now) queue their writes before the group is taken, so they share this txn instead of waiting a
        # whole etcd round trip for the next one. One pass only: more let freshly woken requests run their
        # validation first, which delays the txn (measured: no more creates per txn than one pass).
        await trio.lowlevel.cancel_shielded_checkpoint()
        group = self._take_group()
        try:
            self._check_open()
            # Shielded: a txn cancelled in flight may or may not land, and its callers (other tasks) would
            # never know. The etcd client bounds it (request timeout, retry_for); the cancel is seen after.
            with trio.CancelScope(shield=True):
                await self._commit_units(group)
        except BaseException as exc:
            fail_group(group, exc)
            raise

    async def _commit_units(self, units: Sequence[Pending]) -> None:
        """Plan and commit ``units`` in one txn, setting each unit's outcome; split when etcd finds the
        group too large."""
        keys = list(dict.fromkeys((op.kind, op.name) for slot in units for op in slot.ops))
        outcomes: list[list[Change] | KubeportError] = []

        def plan(items: Snapshot, now: float, revision: int) -> list[Change]:
            outcomes.clear()
            overlay: Snapshot = dict(items)
            applied: list[Change] = []
            for slot in units:
                try:
                    if slot.atomic:
                        changes = _plan.plan_batch(
                            slot.ops, lambda kind, name: overlay[(kind, name)], now=now, revision=revision
                        )
                    else:
                        (op,) = slot.ops
                        changes = _plan.plan_write(op, overlay[(op.kind, op.name)], now=now, revision=revision)
                except KubeportError as exc:
                    outcomes.append(exc)
                    continue
                for change in changes:
                    key = (change.item.kind, change.item.name)
                    overlay[key] = None if change.type == "DELETE" else change.item
                if changes:
                    revision = changes[-1].revision
                applied += changes
                outcomes.append(changes)
            return applied

        # Only creates: each key is expected absent, so the txn can go out without reading first.
        absent = all(op.op == "create" for slot in units for op in slot.ops)
        try:
            await self._commit(keys, plan, expect_absent=absent)
        except (TooLarge, LimitExceeded):
            if len(units) == 1:
                raise
            half = len(units) // 2
            await self._commit_units(units[:half])
            await self._commit_units(units[half:])
            return
        for slot, outcome in zip(units, outcomes, strict=True):
            slot.settle(outcome)

    async def _expire(self) -> list[Change]:
        """Remove every expired record, as many etcd txns as it takes (each holds at most ``max_batch``)."""

        def plan(items: Snapshot, now: float, revision: int) -> list[Change]:
            return _plan.plan_expiry([i for i in items.values() if i is not None], now=now, revision=revision)

        removed: list[Change] = []
        batch = min(self._max_batch, _EXPIRE_BATCH)
        while True:
            now = self._now()
            due: dict[tuple[str, str], tuple[float, int, str, str]] = {}
            while self._deadlines and self._deadlines[0][0] <= now and len(due) < batch:
                entry = heapq.heappop(self._deadlines)
                due[(entry[2], entry[3])] = entry
            if not due:
                break
            try:
                async with self._lock:
                    changes = await self._commit(list(due), plan)
                if changes:
                    await self._wait_published(changes[-1].revision)
                removed += changes
            except BaseException as exc:
                for entry in due.values():  # not removed: the next sweep must still find them
                    heapq.heappush(self._deadlines, entry)
                if isinstance(exc, TooLarge) and len(due) > 1:
                    batch = max(1, len(due) // 2)  # large values: fewer per request
                    continue
                raise
        if not removed:
            await trio.lowlevel.checkpoint()
        return removed

    async def _commit(
        self,
        keys: Sequence[tuple[str, str]],
        plan: Callable[[Snapshot, float, int], list[Change]],
        *,
        expect_absent: bool = False,
    ) -> list[Change]:
        """Read, plan and commit as one etcd txn guarded by the revision counter; retry (planning again)
        when another registry wrote in between. The caller holds the write lock (one write of this process at
        a time) and then waits for the feed to publish the changes here (:meth:`_wait_published`), after
        releasing the lock so that the next group's round trips overlap the feed's.

        ``expect_absent`` (every key is created): the first attempt skips the read. It plans against what
        this process's last commit left (``_known``: the counter, the floor and their mod_revisions) with
        every key absent, and the txn also compares each key's create_revision with 0; its failure branch
        reads the snapshot, so a wrong guess (another registry wrote, a compaction moved the floor, a key
        exists) costs no extra round trip: the next attempt plans against that snapshot as usual. When the
        compares hold, etcd's state is exactly the one planned against, so the outcome is the read path's.
        A write that needs nested txns (over ``--max-txn-ops``) always reads first: etcd counts the compares
        against the nested txns' allowance.
        """
        assert self._lock.locked()
        if self._lease_check_due():  # etcd was out of reach: first record what leases removed meanwhile
            await self._reap_lease_removals(None, strict=True)
        speculate = expect_absent and self._known is not None and len(keys) + 2 <= self._max_txn_ops
        fresh: tuple[int, int, int, int, Snapshot] | None = None  # a snapshot a refused txn answered
        for _ in range(1000):
            if speculate and self._known is not None:
                counter, mod, floor, floor_mod = self._known
                items: Snapshot = dict.fromkeys(keys)
            else:
                speculate = False
                if fresh is None:
                    fresh = await self._snapshot(keys)
                counter, mod, floor, floor_mod, items = fresh
                fresh = None
            self._check_open()
            changes = plan(items, self._now(), counter)
            if not changes:
                if speculate:
                    speculate = False  # nothing to do against a guess: decide on the real state
                    continue
                return []
            write_id = os.urandom(8).hex()
            # The floor is compared too: a compaction that moved it since the snapshot may have deleted a
            # history entry this write rewrites (redaction), which must not come back below the floor.
            guard = [compare_mod(self._rev_key, mod), compare_mod(self._floor_key, floor_mod)]
            failure: list[dict[str, Any]] = []
            if speculate:
                guard += [compare_mod(self._item_key(kind, name), 0) for kind, name in keys]
                failure = self._snapshot_ops(keys)
            self._known = None  # until this txn's outcome is known
            entries: dict[int, tuple[bytes, Change]] = {}
            try:
                ops = await self._ops_for(changes, floor, write_id, entries)
                if speculate and any("request_txn" in op for op in ops):
                    # etcd gives nested txns what the outer level leaves (--max-txn-ops less its compares):
                    # a write that needs nesting takes the read path, with its two compares only.
                    speculate = False
                    continue
                self._remember_own(entries)  # before sending: the feed may see the entries before the answer
                result = await self._client.txn(guard, ops, failure)
            except LeaseNotFound:
                self._leases.clear()  # a cached lease ran out under us: take fresh ones
                speculate = False
                continue
            except Ambiguous:
                result = TxnResult(await self._landed(changes[0].revision, write_id), 0)
                speculate = False
            if result.succeeded:
                if result.revision:  # the txn's own etcd revision: the counter's mod_revision now
                    self._known = (changes[-1].revision, result.revision, floor, floor_mod)
                break
            if speculate:
                fresh = self._parse_snapshot(keys, result)
                speculate = False
        else:
            raise ConnectionProblem("etcd: too much write contention on the store revision, try again")
        return changes

    async def _landed(self, revision: int, write_id: str) -> bool:
        """Whether the write that was to commit ``revision`` with ``write_id`` did (its answer was lost)."""
        kvs, *_ = await self._client.range(self._hist_key(revision))
        return bool(kvs) and self._decode_change(kvs[0])[1] == write_id

    async def _ops_for(
        self,
        changes: Sequence[Change],
        floor: int,
        write_id: str,
        entries: dict[int, tuple[bytes, Change]] | None = None,
    ) -> list[dict[str, Any]]:
        """The txn's operations; ``entries`` (when given) gets, per store revision, the sealed value of each
        history entry put here and the change the feed would decode from it (the last put of a key wins, as
        in ``final``)."""
        final: dict[bytes, dict[str, Any]] = {}  # etcd refuses a key twice in one txn: keep each key's last op
        for change in changes:
            hist_key = self._hist_key(change.revision)
            recorded = change.recorded
            sealed = self._seal_item(hist_key, recorded, t=change.type, w=write_id)
            final[hist_key] = put_op(hist_key, sealed)
            if entries is not None:
                entries[change.revision] = (sealed, Change(change.type, recorded))
            old = change.supersedes
            if old is not None and old.revision > floor:  # at or below the floor the entry is gone already
                old_key = self._hist_key(old.revision)
                sealed = self._seal_item(old_key, old, t="PUT", w=write_id)
                final[old_key] = put_op(old_key, sealed)
                if entries is not None:
                    entries[old.revision] = (sealed, Change("PUT", old))
            item_key = self._item_key(change.item.kind, change.item.name)
            if change.type == "DELETE":
                final[item_key] = delete_op(item_key)
            else:
                lease = await self._lease_for(change.item.expires)
                final[item_key] = put_op(item_key, self._seal_item(item_key, change.item), lease=lease)
        final[self._rev_key] = put_op(self._rev_key, str(changes[-1].revision).encode())
        return nest_ops(list(final.values()), self._max_txn_ops, what=f"this write of {len(changes)} changes")

    async def _lease_for(self, expires: float | None) -> int:
        """The lease of ``expires``' bucket (0: no lease), granted on first use and cached."""
        if expires is None:
            return 0
        now = self._now()
        end = math.ceil((expires + self._grace) / self._bucket) * self._bucket
        ttl = max(math.ceil(end - now), math.ceil(self._grace))
        if ttl > MAX_LEASE_TTL:
            return 0
        lease = self._leases.get(end)
        if lease is None:
            for old in [b for b in self._leases if b <= now]:
                del self._leases[old]
            lease, _ = await self._client.lease_grant(ttl)
            self._leases[end] = lease
        following = end + self._bucket
        if following not in self._leases and len(self._leases_wanted) < _LEASES_AHEAD:
            self._leases_wanted.add(following)
            self._lease_kick.set()
        return lease

    async def _lease_granter(self) -> None:
        """Grant the lease of the bucket after each one a write used, before a write needs it (part of the
        feed's nursery). Expiries that follow the clock (heartbeats, audit events) start a new bucket every
        ``lease_bucket`` seconds, and that bucket's grant (an etcd raft write, fsync'd) would otherwise be one
        more round trip in that write's txn preparation, under the write lock, holding up every queued write.
        A grant that fails here is simply made by the write that needs it; two grants of one bucket (the
        write came first) leave one unused lease, which ends on its own."""
        while True:
            await self._lease_kick.wait()
            self._lease_kick = trio.Event()
            for end in sorted(self._leases_wanted):
                self._leases_wanted.discard(end)
                if end in self._leases:
                    continue
                ttl = max(math.ceil(end - self._now()), math.ceil(self._grace))
                try:
                    lease, _ = await self._client.lease_grant(ttl)
                except KubeportError as exc:
                    log.debug("etcd store: granting a lease ahead failed (a write grants it): %s", exc)
                    continue
                self._leases.setdefault(end, lease)

    async def _maybe_compact(self) -> None:
        """Auto-compaction is never on a writer's path: wake the background compactor (:meth:`_compactor`)."""
        if self._history_over() and not self._closed:
            self._compact_wanted.set()

    async def _compactor(self) -> None:
        """Compact history whenever a write found it over ``max_history + slack`` (part of the feed's nursery)."""
        while True:
            await self._compact_wanted.wait()
            self._compact_wanted = trio.Event()
            try:
                await self._compact(self._max_history)
            except KubeportError as exc:
                log.warning("etcd store: automatic compaction failed (retried after later writes): %s", exc)

    async def _compact(self, keep: int) -> int:
        """Delete ``hist/`` up to ``counter - keep`` in txns of at most ``_COMPACT_BATCH`` entries, each moving
        the floor with it, then ask etcd to compact its MVCC history. The write lock is never held: a compaction
        txn compares the floor's mod_revision (two compactions, of this registry or another, never interleave
        wrongly), and writes compare it too (a write planned against the old floor is planned again)."""
        async with self._compact_lock:
            last = 0
            for _ in range(100_000):
                snapshot = await self._client.txn(
                    [], [range_op(self._rev_key), range_op(self._floor_key)], idempotent=True
                )
                self._check_open()
                counter_kvs, floor_kvs = snapshot.ranges()
                counter, floor = _decimal(counter_kvs), _decimal(floor_kvs)
                floor_mod = floor_kvs[0].mod_revision if floor_kvs else 0
                target = counter - keep
                if target <= floor:
                    self._compacted(floor)
                    break
                new_floor = min(target, floor + _COMPACT_BATCH)
                result = await self._client.txn(
                    [compare_mod(self._floor_key, floor_mod)],
                    [
                        # From the start of hist/, not floor + 1: also clears an entry a registry of an older
                        # version rewrote below the floor while a compaction ran.
                        delete_op(self._hist, self._hist_key(new_floor + 1)),
                        put_op(self._floor_key, str(new_floor).encode()),
                    ],
                    idempotent=True,  # compacting to the same floor twice is harmless
                )
                self._check_open()
                if result.succeeded:
                    self._compacted(new_floor)
                    last = result.revision
                # else another registry moved the floor in between: read it again
            if last:
                previous, self._last_etcd_compaction = self._last_etcd_compaction, last
                if previous:
                    try:
                        await self._client.compact(previous)
                    except KubeportError as exc:
                        log.warning("etcd compaction to revision %d failed: %s", previous, exc)
        return self._floor

    # --- history and the feed --------------------------------------------------------------------------

    async def _read_history(self, kinds: frozenset[str], after: int, limit: int) -> Sequence[Change]:
        ops = [
            range_op(self._rev_key),
            range_op(self._floor_key),
            range_op(self._hist_key(after + 1), prefix_end(self._hist), limit=_PAGE),
        ]
        result = await self._client.txn([], ops, idempotent=True)
        self._check_open()
        ranges = result.ranges()
        counter, floor = _decimal(ranges[0]), _decimal(ranges[1])
        self._compacted(floor)
        if after < floor:
            raise _plan.too_old(after, floor)
        if after > max(counter, self._revision):
            raise _plan.too_new(after, max(counter, self._revision))
        page: list[Change] = []
        kvs = ranges[2]
        while True:
            for kv in kvs:
                change, _ = self._decode_change(kv)
                if change.item.kind in kinds:
                    page.append(change)
                    if len(page) >= limit:
                        return page
            if len(kvs) < _PAGE:
                return page
            kvs, *_ = await self._client.range(
                kvs[-1].key + b"\x00", prefix_end(self._hist), limit=_PAGE, revision=result.revision
            )
            self._check_open()

    async def _feed_main(self, etcd_revision: int) -> None:
        """Publish every new store revision here, in order (a system task: it must never raise)."""
        try:
            with self._feed_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watchdog)
                    nursery.start_soon(self._compactor)
                    nursery.start_soon(self._lease_checker)
                    nursery.start_soon(self._lease_granter)
                    while True:
                        try:
                            etcd_revision = await self._feed_watch(etcd_revision)
                        except (KubeportError, ValueError) as exc:
                            if not isinstance(exc, Compacted | _Kicked):
                                log.warning("etcd feed for %s: %s (re-reading history)", self.prefix, exc)
                                await trio.sleep(0.2)  # back off before reconnecting (not a wait for a condition)
                        etcd_revision = await self._resync_until_done(etcd_revision)
        except Exception:  # pragma: no cover - the feed must not take the process down
            log.exception("etcd feed for %s ended", self.prefix)
        finally:
            self._hub.close()  # watchers end rather than hang
            self._feed_done.set()

    async def _watchdog(self) -> None:
        """Kick the feed when a watch went silent: a member cut off without closing the connection sends
        nothing, and a registry with no writes of its own would never notice. Every ``watchdog_interval``
        it reads the revision counter; still behind the previous reading one interval later means stuck."""
        behind = 0
        while True:
            await trio.sleep(self._watchdog_interval)  # a periodic check, not a wait for a condition
            if self._revision < behind and self._kick_scope is not None:
                log.warning("etcd feed for %s is stuck below revision %d: re-reading history", self.prefix, behind)
                self._kick_scope.cancel()
            try:
                kvs, *_ = await self._client.range(self._rev_key)
                behind = _decimal(kvs)
                self._note_contact(True)
            except KubeportError:
                behind = 0  # etcd unreachable: the watch itself reports that
                self._note_contact(False)

    async def _feed_watch(self, etcd_revision: int) -> int:
        with trio.CancelScope() as kick:
            self._kick_scope = kick
            async with self._client.watch(
                self._hist, prefix_end(self._hist), start_revision=etcd_revision + 1
            ) as stream:
                async for header, events in stream:
                    self._take(events)
                    etcd_revision = max([etcd_revision, header] + [e.kv.mod_revision for e in events])
        self._kick_scope = None
        if kick.cancelled_caught:
            raise _Kicked("kicked")
        raise ConnectionProblem("etcd watch ended")

    def _remember_own(self, entries: Mapping[int, tuple[bytes, Change]]) -> None:
        """Keep the history entries a txn of this process is about to put, for the feed to publish without
        unsealing and decoding them again (:meth:`_take`). Kept before the txn is sent, as the feed may see
        the entries before the txn's answer comes back; a txn etcd refuses leaves entries no event matches
        (another write's value at that revision differs), dropped as the feed passes their revisions.
        Entries at or below what the feed already published are of no use (redaction rewrites of published
        ones). Bounded: past ``_OWN_MAX`` entries or ``_OWN_MAX_BYTES`` (a feed lagging far behind) the
        oldest go, and the feed decodes those from etcd as for any other write."""
        own = self._own
        for revision, entry in entries.items():
            expires = entry[1].item.expires
            # an expiry that is not a float comes back from the entry's JSON as one: let the feed decode it
            if revision > self._revision and (expires is None or type(expires) is float):
                replaced = own.pop(revision, None)  # a retry of a refused txn, or a later rewrite
                if replaced is not None:
                    self._own_bytes -= len(replaced[0])
                own[revision] = entry
                self._own_bytes += len(entry[0])
        if len(own) > _OWN_MAX or self._own_bytes > _OWN_MAX_BYTES:
            for revision in sorted(own):
                if len(own) <= _OWN_MAX and self._own_bytes <= _OWN_MAX_BYTES:
                    break
                self._own_bytes -= len(own.pop(revision)[0])

    def _forget_own(self) -> None:
        """Drop the remembered entries the feed has passed (published, or skipped over by a relist)."""
        if self._own:
            for revision in [r for r in self._own if r <= self._revision]:
                self._own_bytes -= len(self._own.pop(revision)[0])

    def _take(self, events: Sequence[WatchEvent]) -> None:
        fresh: list[tuple[int, WatchEvent]] = []
        for event in events:
            revision = self._hist_revision(event.kv.key)
            if event.type == "PUT" and revision is not None and revision > self._revision:
                fresh.append((revision, event))  # older ones are redaction rewrites: already published
        fresh.sort(key=lambda pair: pair[0])
        changes: list[Change] = []
        own = self._own
        for revision, event in fresh:
            if revision != self._revision + 1 + len(changes):
                raise ConnectionProblem(f"etcd feed saw revision {revision} after {self._revision + len(changes)}")
            # The very bytes this process sealed for that entry (AES-GCM with a random nonce: no other write
            # puts the same bytes) decode to the change it already holds. Anything else is decoded from etcd.
            mine = own.get(revision)
            if mine is not None and mine[0] == event.kv.value:
                changes.append(mine[1])
            else:
                changes.append(self._decode_change(event.kv)[0])
        self._publish(changes)
        self._forget_own()

    def _publish(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        for change in changes:
            item = change.item
            if change.type == "PUT" and item.expires is not None:
                heapq.heappush(self._deadlines, (item.expires, item.revision, item.kind, item.name))
        self._published(changes)
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    async def _resync_until_done(self, etcd_revision: int) -> int:
        while True:
            try:
                return await self._resync()
            except KubeportError as exc:
                log.warning("etcd feed for %s: re-reading history failed: %s", self.prefix, exc)
                await trio.sleep(0.5)  # back off before retrying (not a wait for a condition)

    async def _resync(self) -> int:
        """Publish the history after the last published revision by range reads; return the etcd revision
        they were read at (the feed's watch continues after it)."""
        self.resyncs += 1
        unpublished = range_op(self._hist_key(self._revision + 1), prefix_end(self._hist), limit=_PAGE)
        result = await self._client.txn([], [range_op(self._floor_key), unpublished], idempotent=True)
        floor_kvs, kvs = result.ranges()
        floor = _decimal(floor_kvs)
        if floor > self._revision:
            # History we never published was compacted away: local watchers cannot be served without a gap.
            log.warning("etcd feed for %s fell behind compaction (floor %d): watchers must relist", self.prefix, floor)
            self._hub.cut_all()
            self._revision = floor
            self._forget_own()
        while kvs:
            self._take([WatchEvent("PUT", kv) for kv in kvs])
            if len(kvs) < _PAGE:
                break
            kvs, *_ = await self._client.range(
                kvs[-1].key + b"\x00", prefix_end(self._hist), limit=_PAGE, revision=result.revision
            )
        return result.revision

    async def _wait_published(self, revision: int) -> None:
        """Wait for the feed to publish ``revision`` here; kick it once if it seems stuck."""
        for attempt in range(2):
            with trio.move_on_after(self._publish_timeout):
                while self._revision < revision and not self._feed_done.is_set():
                    await self._progress.wait()
                return
            if attempt == 0 and self._kick_scope is not None:
                self._kick_scope.cancel()
        log.warning(
            "etcd feed for %s has not published revision %d yet (the write is committed)", self.prefix, revision
        )

    async def _load_deadlines(self, revision: int) -> None:
        lower, upper = self._items, prefix_end(self._items)
        while True:
            kvs, _, more, _ = await self._client.range(lower, upper, limit=_PAGE, revision=revision)
            for kv in kvs:
                item = self._decode_item(kv)
                if item.expires is not None:
                    self._deadlines.append((item.expires, item.revision, item.kind, item.name))
            if not more or not kvs:
                break
            lower = kvs[-1].key + b"\x00"
        heapq.heapify(self._deadlines)

    async def _close(self) -> None:
        self._feed_scope.cancel()
        with trio.CancelScope(shield=True):
            await self._feed_done.wait()
            await self._client.aclose()


class _Kicked(KubeportError):
    """A writer found the feed stuck and asked it to re-read history."""


def _reap_plan(
    vanished: Mapping[tuple[str, str], Item], counter: int, items: Snapshot, now: float, revision: int
) -> list[Change]:
    """DELETEs of the ``vanished`` records still absent, if the store revision is still ``counter`` (else
    none: a write came in between, and the caller reads what it touched before trying again)."""
    if revision != counter:
        return []  # a write came in between: the caller starts over from the newer state
    gone = [vanished[key] for key in sorted(vanished) if items.get(key) is None]
    return [_plan._removal(item, revision + n) for n, item in enumerate(gone, 1)]


def nest_ops(ops: list[dict[str, Any]], max_ops: int, *, what: str) -> list[dict[str, Any]]:
    """``ops`` as the success list of ONE etcd txn within ``--max-txn-ops``: as they are when they fit, else
    split over nested txns (etcd checks the limit per level: an outer list of ``k`` nested txns may give each
    ``max_ops - k`` operations, so up to (max_ops / 2)^2 = 4096 by default, all still one atomic revision)."""
    if len(ops) <= max_ops:
        return ops
    for nested in range(2, max_ops):
        per = max_ops - nested
        if nested * per >= len(ops):
            size = math.ceil(len(ops) / nested)
            return [{"request_txn": {"success": ops[i : i + size]}} for i in range(0, len(ops), size)]
        if nested > max_ops // 2:
            break
    raise LimitExceeded(
        f"{what} needs {len(ops)} etcd operations in one txn, more than etcd's --max-txn-ops ({max_ops}) allows "
        "even nested: split it (or raise --max-txn-ops on etcd and max_txn_ops here together)"
    )


def _due(heap: Sequence[tuple[float, int, str, str]], kind: str, now: float) -> list[str]:
    """The names of ``kind`` in the expiry heap that are due at ``now``, sorted. Only the due part of the heap
    is visited (a node's children expire no earlier than it): an audit trim's count at 100,000 heartbeats
    does not walk all of them, which blocked the registry's event loop for tens of ms."""
    names: set[str] = set()
    stack = [0]
    while stack:
        index = stack.pop()
        if index < len(heap) and heap[index][0] <= now:
            if heap[index][2] == kind:
                names.add(heap[index][3])
            stack += (2 * index + 1, 2 * index + 2)
    return sorted(names)


def _decimal(kvs: Sequence[KeyValue]) -> int:
    if not kvs:
        return 0
    try:
        return int(kvs[0].value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ConnectionProblem(f"etcd value at {kvs[0].key!r:.80} is not a number") from None


def _count_of(response: dict[str, Any]) -> int:
    rng = response.get("response_range") or {}
    count = rng.get("count", 0) if isinstance(rng, dict) else 0
    try:
        return int(count)
    except (TypeError, ValueError):
        raise ConnectionProblem("etcd answered a malformed count") from None


def _item_meta(item: Item) -> dict[str, Any]:
    return {
        "k": item.kind,
        "n": item.name,
        "l": item.labels,
        "r": item.revision,
        "c": item.created_revision,
        "e": item.expires,
    }
