"""The front door's reads of the store: a cluster's resource, its heartbeats, and a user's resource.

Heartbeats (``kube_server``) are stored under ``<host_id>/<cluster>``, so the heartbeats of one cluster are
not one range read. :meth:`ClusterLookup.feed` (run by the front door) keeps them indexed by cluster name: it
lists them once, then applies the store's watch events, so finding a cluster's heartbeats costs a dict
lookup however many there are (100,000 kube_servers would cost seconds to list per connection). Only the
few values of the cluster a connection asks for are decoded, and expired ones are dropped on read. The index
holds each value as its JSON text, not as nested dicts: 100,000 heartbeats as dicts are ~1,000,000 objects
that Python's cyclic garbage collector walks on every full collection (0.4-1.3 s pauses of the whole registry,
every few seconds while they are announced), while strings are not tracked at all.

Without a live feed (before it has listed, after the watch failed and while it relists, or in code that
never starts it) heartbeats are listed instead, at most once per ``max_age`` seconds (one listing at a time;
concurrent connections wait for it). :meth:`ClusterLookup.invalidate` makes the next read list, so a caller
that just wrote sees its write.

Why slightly stale heartbeats are safe here: heartbeats only say which agents serve a cluster, their health
and their dynamic label results. Users, roles and the ``kube_cluster`` resource (static labels, existence)
are read fresh on every connection, the tunnel's liveness comes from the hub, and the agent re-authorizes
every request with its own current labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import trio

from registry.core import codec
from registry.core.errors import BadParameter, KubeportError, NotFound, TooLarge
from registry.core.resources import KubeCluster, KubeServer, User
from registry.store import Store

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 1.0


class ClusterLookup:
    """Reads what routing one kubectl connection needs (module docstring)."""

    def __init__(self, store: Store, *, now: Callable[[], datetime], max_age: float = DEFAULT_MAX_AGE) -> None:
        self.store = store
        self.now = now
        self.max_age = max_age
        self._lock = trio.Lock()
        self._by_cluster: Mapping[str, list[dict[str, Any]]] = {}
        self._loaded_at: float | None = None
        self.listings = 0
        # The watch-fed index (feed): cluster name -> {store name: value}; used only while ``_live``.
        self._index: dict[str, dict[str, str]] = {}  # values as JSON text (module docstring)
        self._live = False
        self._force_list = False
        self.relists = 0

    async def cluster(self, name: str) -> KubeCluster | None:
        """The ``kube_cluster`` resource (without checking its kubeconfig), or None when there is none."""
        try:
            record = await self.store.get("kube_cluster", name)
        except NotFound:
            return None
        resource = codec.resource_from_dict(record.value, verify_kubeconfig=False)
        return resource if isinstance(resource, KubeCluster) else None

    async def user(self, name: str) -> User | None:
        try:
            record = await self.store.get("user", name)
        except NotFound:
            return None
        resource = codec.resource_from_dict(record.value)
        return resource if isinstance(resource, User) else None

    async def heartbeats(self, name: str) -> list[KubeServer]:
        """The live heartbeats of cluster ``name`` (expired ones dropped): from the watch-fed index while the
        feed is live, else from a listing at most ``max_age`` seconds old."""
        values: Iterable[dict[str, Any]]
        if self._live and not self._force_list:
            await trio.lowlevel.checkpoint()
            values = [json.loads(text) for text in self._index.get(name, {}).values()]
        else:
            self._force_list = False
            await self._refresh()
            values = self._by_cluster.get(name, ())
        now = self.now()
        servers = []
        for value in values:
            try:
                server = codec.resource_from_dict(value, verify_kubeconfig=False)
            except (BadParameter, TooLarge) as err:  # a stored value a newer or broken writer left: skip it
                log.warning("ignoring an unreadable kube_server heartbeat for %r: %s", name, err)
                continue
            if not isinstance(server, KubeServer):
                continue
            expires = server.metadata.expires
            if expires is not None and expires <= now:
                continue
            servers.append(server)
        return servers

    async def _refresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():  # another connection listed while this one waited
                return
            records = await self.store.list("kube_server")
            grouped: dict[str, list[dict[str, Any]]] = {}
            for record in records:
                metadata = record.value.get("metadata")
                cluster = metadata.get("name") if isinstance(metadata, dict) else None
                if isinstance(cluster, str):
                    grouped.setdefault(cluster, []).append(record.value)
            self._by_cluster = grouped
            self._loaded_at = trio.current_time()
            self.listings += 1

    def _fresh(self) -> bool:
        return self._loaded_at is not None and trio.current_time() - self._loaded_at < self.max_age

    def invalidate(self) -> None:
        """Forget the cached heartbeats: the next lookup lists them again (the index catches up by itself)."""
        self._loaded_at = None
        self._force_list = True

    async def feed(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the heartbeat index: list once, then apply watch events. When the watch fails after the
        index took events (it fell behind: a batch of 512 heartbeats, or several grouped, is a burst of
        events), resume it from the last revision applied, which the store's history normally still has;
        relist only when that does not work (history compacted past it, or the store failing). A relist
        of 100,000 heartbeats costs seconds of CPU and a million short-lived objects, and every announce
        burst used to cause one. Reads list instead while the index is not live. Runs until cancelled;
        ``task_status`` is started once the first listing is indexed (or failed)."""
        started = False
        revision: int | None = None  # the index is complete up to this revision; None: list first
        failed_at: int | None = None  # where the last watch failed: failing again there means relist
        while True:
            try:
                if revision is None:
                    start = await self.store.revision()  # before the list: a write between them is replayed
                    records = await self.store.list("kube_server")
                    index: dict[str, dict[str, str]] = {}
                    for record in records:
                        _index_put(index, record.name, record.value)
                    del records
                    self._index = index
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
                        else:
                            _index_put(self._index, event.record.name, event.record.value)
                        revision = event.record.revision
                return  # the store closed
            except KubeportError as err:
                if revision is not None and revision != failed_at:
                    failed_at = revision  # the index stays live: slightly stale heartbeats are safe (above)
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


def _cluster_of(value: Mapping[str, Any]) -> str | None:
    metadata = value.get("metadata")
    cluster = metadata.get("name") if isinstance(metadata, dict) else None
    return cluster if isinstance(cluster, str) else None


def _index_put(index: dict[str, dict[str, str]], store_name: str, value: dict[str, Any]) -> None:
    cluster = _cluster_of(value)
    if cluster is not None:
        index.setdefault(cluster, {})[store_name] = json.dumps(value, separators=(",", ":"))


def _index_delete(index: dict[str, dict[str, str]], store_name: str, value: Mapping[str, Any]) -> None:
    cluster = _cluster_of(value)
    entries = index.get(cluster, {}) if cluster is not None else {}
    entries.pop(store_name, None)
    if not entries and cluster is not None:
        index.pop(cluster, None)
