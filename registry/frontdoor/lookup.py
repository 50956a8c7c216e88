"""The front door's reads of the store: a cluster's resource, its heartbeats, and a user's resource.

Heartbeats (``kube_server``) are stored under ``<host_id>/<cluster>``, so the heartbeats of one cluster are
not one range read. Listing every heartbeat for every kubectl connection would cost O(heartbeats) per
connection; instead :class:`ClusterLookup` lists them at most once per ``max_age`` seconds (one listing at a
time, concurrent connections wait for it) and groups the raw values by cluster name. Only the few values of
the cluster a connection asks for are decoded.

Why a short cache is safe here: heartbeats only say which agents serve a cluster, their health and their
dynamic label results. Users, roles and the ``kube_cluster`` resource (static labels, existence) are read
fresh on every connection, the tunnel's liveness comes from the hub, and the agent re-authorizes every
request with its own current labels. A heartbeat at most ``max_age`` seconds old changes nothing a user
could exploit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import trio

from registry.core import codec
from registry.core.errors import BadParameter, NotFound, TooLarge
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
        """The live heartbeats of cluster ``name`` (at most ``max_age`` seconds stale; expired ones dropped)."""
        await self._refresh()
        now = self.now()
        servers = []
        for value in self._by_cluster.get(name, ()):
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
        """Forget the cached heartbeats (the next lookup lists them again)."""
        self._loaded_at = None
