"""The front door's reads of the store: a cluster's resource, its heartbeats, a user and the user's roles.

Heartbeats (``kube_server``) are stored under ``<host_id>/<cluster>``, so the heartbeats of one cluster are
not one range read. :meth:`ClusterLookup.feed` (run by the front door) keeps them indexed by cluster name: it
lists them once, then applies the store's watch events, so finding a cluster's heartbeats costs a dict
lookup however many there are (100,000 kube_servers would cost seconds to list per connection). Only the
values of the clusters connections ask for are decoded, each once per stored version (the decoded resource
is kept with the value), and expired ones are dropped on read. Every value is held as its JSON text, not as
nested dicts: 100,000 heartbeats as dicts are ~1,000,000 objects that Python's cyclic garbage collector walks
on every full collection (0.4-1.3 s pauses of the whole registry, every few seconds while they were
announced), while strings are not tracked at all.

Without a live feed (before it has listed, after the watch failed and while it relists, or in code that
never starts it) heartbeats are listed instead, at most once per ``max_age`` seconds (one listing at a time;
concurrent connections wait for it). :meth:`ClusterLookup.invalidate` makes the next read list, so a caller
that just wrote sees its write.

Why slightly stale heartbeats are safe here: heartbeats only say which agents serve a cluster, their health
and their dynamic label results. The tunnel's liveness comes from the hub, and the agent re-authorizes
every request with its own current labels.

Users, roles and ``kube_cluster`` resources come from the same feed (one watch over the four kinds): it
keeps every one of them by name, decoded once on first use, so a kubectl connection costs no store read
(a store read is a worker-thread round trip with SQLite, a network one with etcd; at four per connection
they were a large part of the front door's CPU per new connection). What invalidates an entry is the
store's watch. A write made through this registry is published to the watch before the write returns and
applied as soon as the feed task runs, before any connection accepted after the write got through its TLS
handshake, so a deleted user, a removed role or a deleted cluster is refused on the next connection
(tests/registry/frontdoor/test_access_feed.py). A write made through another registry sharing an etcd
store arrives with that store's watch delay (milliseconds), as it already did for heartbeats. An entry's
store TTL is checked on every read, as ``Store.get`` does. While the feed is not live (before its first
listing, while it relists after a failed watch, once it stopped) these kinds are read from the store, as
before; so is a value that does not decode (a broken or newer writer's: the store read raises as it did).
Memory: one entry per user, role and kube_cluster, as the store holds them.

Heartbeats and the objects have a watch each. The heartbeat watch is the one that falls behind (a batch of
512 heartbeats, or several grouped, is a burst of events); when it fails after taking events it resumes from
the last revision applied, which the store's history normally still has, and relists only when that does not
work (history compacted past it, or the store failing): a relist of 100,000 heartbeats costs seconds of CPU.
Meanwhile heartbeats stay served from the index: a slightly stale heartbeat is safe (the agent re-authorizes,
the hub knows the tunnels). The objects' watch sees only admin-paced writes; when it fails, users, roles and
kube_clusters are read from the store until they are listed again, so a change is still refused on the next
connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import trio

from registry.core import codec
from registry.core.errors import BadParameter, KubeportError, NotFound, TooLarge
from registry.core.resources import KubeCluster, KubeServer, Resource, Role, User
from registry.store import Record, Store

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 1.0
# Kept by name from the feed (module docstring); with kube_server, what the feed watches.
OBJECT_KINDS = ("user", "role", "kube_cluster")
FEED_KINDS = ("kube_server", *OBJECT_KINDS)


class _Entry:
    """One stored object as the feed last saw it, its value as JSON text (module docstring); ``decoded`` is
    filled on first use (never for a value that fails to decode: such an entry is read from the store,
    which raises as it always did)."""

    __slots__ = ("decoded", "expires", "text")

    def __init__(self, value: Mapping[str, Any], expires: float | None) -> None:
        self.text = _text(value)
        self.expires = expires
        self.decoded: Resource | None = None

    @property
    def value(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.text)
        return value


class ClusterLookup:
    """Reads what routing one kubectl connection needs (module docstring)."""

    def __init__(self, store: Store, *, now: Callable[[], datetime], max_age: float = DEFAULT_MAX_AGE) -> None:
        self.store = store
        self.now = now
        self.max_age = max_age
        self._lock = trio.Lock()
        self._by_cluster: Mapping[str, list[tuple[str, str]]] = {}  # the listing: (store name, JSON text)
        self._loaded_at: float | None = None
        self.listings = 0
        # The watch-fed index (feed): cluster name -> {store name: value}; used only while ``_live``.
        # Heartbeats as JSON text only (no per-heartbeat object the GC tracks: module docstring); decoded ones
        # are kept by store name with the text they came from, so a new version is decoded again.
        self._index: dict[str, dict[str, str]] = {}
        self._decoded: dict[str, tuple[str, KubeServer]] = {}
        self._live = False
        # False while a resumed watch catches up: objects are read from the store meanwhile (module docstring).
        self._objects_live = False
        self._force_list = False
        self.relists = 0  # listings of every heartbeat by the feed
        self.object_relists = 0  # listings of users, roles and kube_clusters by the feed
        # The feed's objects (OBJECT_KINDS): kind -> store name -> entry; used only while ``_live``.
        self._objects: dict[str, dict[str, _Entry]] = {kind: {} for kind in OBJECT_KINDS}
        self._force_read: set[str] = set()  # kinds whose next read goes to the store (invalidate)
        self.object_reads = 0  # reads that went to the store (the feed was not live, or invalidated)

    async def cluster(self, name: str) -> KubeCluster | None:
        """The ``kube_cluster`` resource (without checking its kubeconfig), or None when there is none."""
        resource = await self._object("kube_cluster", name)
        return resource if isinstance(resource, KubeCluster) else None

    async def user(self, name: str) -> User | None:
        """The ``user`` resource, or None when there is none (or it expired)."""
        resource = await self._object("user", name)
        return resource if isinstance(resource, User) else None

    async def roles(self, names: Iterable[str]) -> tuple[Role, ...]:
        """The stored roles of ``names``, in that order; a missing one is skipped (it grants nothing)."""
        roles: list[Role] = []
        for name in names:
            resource = await self._object("role", name)
            if isinstance(resource, Role):
                roles.append(resource)
        return tuple(roles)

    async def _object(self, kind: str, name: str) -> Resource | None:
        """``kind``/``name`` decoded, from the feed while it is live, else (or when the feed's value does not
        decode) from the store. None when there is none or its TTL has passed."""
        if self._objects_live and kind not in self._force_read:
            await trio.lowlevel.checkpoint()
            entry = self._objects[kind].get(name)
            if entry is None or (entry.expires is not None and entry.expires <= self.now().timestamp()):
                return None
            if entry.decoded is None:
                try:
                    entry.decoded = _decode(kind, entry.value)
                except (BadParameter, TooLarge):
                    entry = None  # the store read below raises as it always did
            if entry is not None:
                return entry.decoded
        self._force_read.discard(kind)
        self.object_reads += 1
        try:
            record = await self.store.get(kind, name)
        except NotFound:
            return None
        return _decode(kind, record.value)

    async def heartbeats(self, name: str) -> list[KubeServer]:
        """The live heartbeats of cluster ``name`` (expired ones dropped): from the watch-fed index while the
        feed is live, else from a listing at most ``max_age`` seconds old."""
        entries: Iterable[tuple[str, str]]
        if self._live and not self._force_list:
            await trio.lowlevel.checkpoint()
            entries = list(self._index.get(name, {}).items())
        else:
            self._force_list = False
            await self._refresh()
            entries = self._by_cluster.get(name, ())
        now = self.now()
        servers = []
        for store_name, text in entries:
            server = self._heartbeat(store_name, text, name)
            if server is None:
                continue
            expires = server.metadata.expires
            if expires is not None and expires <= now:
                continue
            servers.append(server)
        return servers

    def _heartbeat(self, store_name: str, text: str, cluster: str) -> KubeServer | None:
        """``text`` decoded, once per stored version (not once per connection); None for a value a newer or
        broken writer left (skipped with a warning)."""
        cached = self._decoded.get(store_name)
        if cached is not None and cached[0] == text:
            return cached[1]
        try:
            server = codec.resource_from_dict(json.loads(text), verify_kubeconfig=False)
        except (BadParameter, TooLarge) as err:
            log.warning("ignoring an unreadable kube_server heartbeat for %r: %s", cluster, err)
            return None
        if not isinstance(server, KubeServer):
            return None
        self._decoded[store_name] = (text, server)
        return server

    async def _refresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():  # another connection listed while this one waited
                return
            records = await self.store.list("kube_server")
            grouped: dict[str, list[tuple[str, str]]] = {}
            for record in records:
                cluster = _cluster_of(record.value)
                if cluster is not None:
                    grouped.setdefault(cluster, []).append((record.name, _text(record.value)))
            self._by_cluster = grouped
            self._loaded_at = trio.current_time()
            self.listings += 1

    def _fresh(self) -> bool:
        return self._loaded_at is not None and trio.current_time() - self._loaded_at < self.max_age

    def invalidate(self) -> None:
        """Forget the cached heartbeats and objects: the next heartbeat lookup lists them again, and the next
        read of each object kind reads the store (the index catches up by itself)."""
        self._loaded_at = None
        self._force_list = True
        self._force_read.update(OBJECT_KINDS)

    async def feed(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the heartbeat index and the objects, each with its own watch (module docstring): list once,
        then apply watch events. Reads go to the store instead while a part is not live. Runs until
        cancelled; ``task_status`` is started once both first listings are indexed (or failed)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._follow_heartbeats)
                await nursery.start(self._follow_objects)
                task_status.started()
        finally:
            self._live = self._objects_live = False  # cancelled or the store closed: reads go to the store

    async def _follow_heartbeats(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        revision: int | None = None  # the index is complete up to this revision; None: list first
        failed_at: int | None = None  # where the last watch failed: failing there again means relist
        while True:
            try:
                if revision is None:
                    start = await self.store.revision()  # before the list: a write between them is replayed
                    records = await self.store.list("kube_server")
                    index: dict[str, dict[str, str]] = {}
                    for record in records:
                        _index_put(index, record)
                    del records
                    self._index = index
                    self._decoded = {}
                    revision = start
                    self._live = True
                    self.relists += 1
                    if not started:
                        started = True
                        task_status.started()
                async with self.store.watch(["kube_server"], since=revision) as events:
                    async for event in events:
                        if event.type == "DELETE":
                            _index_delete(self._index, event.record.name, event.record.value)
                            self._decoded.pop(event.record.name, None)
                        else:
                            _index_put(self._index, event.record)
                        revision = event.record.revision
                self._live = False
                return  # the store closed
            except KubeportError as err:
                if revision is not None and revision != failed_at:
                    failed_at = revision  # the index stays live while the watch resumes (module docstring)
                    log.info(
                        "front door: the heartbeat index resumes its watch at revision %d (%s)", revision, err.message
                    )
                    continue
                self._live = False
                revision = failed_at = None
                log.warning("front door: the heartbeat index is relisting (%s)", err.message)
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(self.max_age)

    async def _follow_objects(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                revision = await self.store.revision()  # before the lists: a write between them is replayed
                objects: dict[str, dict[str, _Entry]] = {}
                for kind in OBJECT_KINDS:
                    objects[kind] = {r.name: _Entry(r.value, r.expires) for r in await self.store.list(kind)}
                self._objects = objects
                self._objects_live = True
                self.object_relists += 1
                if not started:
                    started = True
                    task_status.started()
                async with self.store.watch(OBJECT_KINDS, since=revision) as events:
                    async for event in events:
                        self._apply_object(event.type, event.record)
                self._objects_live = False
                return  # the store closed
            except KubeportError as err:
                self._objects_live = False  # reads go to the store until the relist (never a stale user)
                log.warning("front door: users, roles and kube_clusters are relisted (%s)", err.message)
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(self.max_age)

    def _apply_object(self, kind: Literal["PUT", "DELETE"], record: Record) -> None:
        entries = self._objects.get(record.kind)
        if entries is None:  # a kind this feed did not ask for: nothing to keep
            return
        if kind == "DELETE":
            entries.pop(record.name, None)
        else:
            entries[record.name] = _Entry(record.value, record.expires)


def _decode(kind: str, value: Mapping[str, Any]) -> Resource:
    # Clusters were validated when written; their kubeconfig is not needed here (nor checked per connection).
    return codec.resource_from_dict(value, verify_kubeconfig=kind != "kube_cluster")


def _cluster_of(value: Mapping[str, Any]) -> str | None:
    metadata = value.get("metadata")
    cluster = metadata.get("name") if isinstance(metadata, dict) else None
    return cluster if isinstance(cluster, str) else None


def _text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _index_put(index: dict[str, dict[str, str]], record: Record) -> None:
    cluster = _cluster_of(record.value)
    if cluster is not None:
        index.setdefault(cluster, {})[record.name] = _text(record.value)


def _index_delete(index: dict[str, dict[str, str]], store_name: str, value: Mapping[str, Any]) -> None:
    cluster = _cluster_of(value)
    entries = index.get(cluster, {}) if cluster is not None else {}
    entries.pop(store_name, None)
