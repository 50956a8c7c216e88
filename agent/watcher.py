"""List, then watch, the registry's kube_clusters; keep the last known set through any outage.

Invariants:
- ``clusters`` is the last known state of every kube_cluster. It is only changed by what the registry
  says (a list or an event), never by an error: a registry restart or outage unregisters nothing.
- After a disconnect the watch resumes from the last revision seen, so events made meanwhile arrive once;
  when that history is gone (``Compacted``) the watcher relists, and the relist replaces the set whole.
- Reconnects back off exponentially with full jitter (a fleet of agents does not stampede a restarted
  registry) and reset after a healthy watch.
- A watch that stays silent longer than ``idle_limit`` (the registry sends bookmarks every 10 s) is
  treated as dead, so a vanished peer cannot hang the agent on a half-open connection.
- Resources that fail validation here (e.g. written by a newer registry) are kept aside in ``invalid``
  with the reason, not served and not fatal.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import trio

from registry.client import RegistryClient, StreamEvent
from registry.core import codec
from registry.core.errors import Compacted, ConnectionProblem, KubeportError
from registry.core.resources import KubeCluster
from registry.core.watch import Bookmark, Init, Put

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with "equal jitter": a random time in [c/2, c] for c = min(cap, base * 2**n), so a
    fleet spreads out while no agent retries immediately."""

    def __init__(self, *, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.failures))
        self.failures = min(self.failures + 1, 30)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


class ClusterWatcher:
    def __init__(
        self,
        get_client: Callable[[], RegistryClient],
        *,
        on_change: Callable[[], None],
        idle_limit: float = 45.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._get_client = get_client
        self._on_change = on_change
        self.idle_limit = idle_limit
        self.backoff = backoff or Backoff()
        self.clusters: dict[str, KubeCluster] = {}
        self.invalid: dict[str, str] = {}
        self.revision: int | None = None
        self.synced = trio.Event()
        self.connected = False
        # Names changed since take_changes() (None: everything, after a relist); the agent reconciles those.
        self._changed: set[str] | None = None
        self._stats = {
            "lists": 0,
            "watches": 0,
            "events": 0,
            "errors": 0,
            "malformed": 0,
            "relists_after_compaction": 0,
        }

    def take_changes(self) -> set[str] | None:
        changed, self._changed = self._changed, set()
        return changed

    def _mark(self, name: str) -> None:
        if self._changed is not None:
            self._changed.add(name)

    def statistics(self) -> dict[str, Any]:
        return {**self._stats, "clusters": len(self.clusters), "invalid": len(self.invalid), "revision": self.revision}

    def _decode(self, resource: object, name: str) -> KubeCluster | str | None:
        """The model, why it is invalid, or None for another kind (never raises for what the registry sent)."""
        try:
            # The registry validated it; its kubeconfig is checked when (if) this agent registers it.
            model = codec.resource_from_dict(resource, source="registry", verify_kubeconfig=False)  # type: ignore[arg-type]
        except KubeportError as err:
            return err.message
        if not isinstance(model, KubeCluster):
            return None  # not ours to track: it must not evict a kube_cluster of the same name
        return model

    def _store(self, clusters: dict[str, KubeCluster], invalid: dict[str, str], resource: object) -> str | None:
        """Record one resource; a resource without a name cannot be keyed: it is skipped and counted (resuming
        would only replay it)."""
        name = self._name_of(resource)
        if name is None:
            self._stats["malformed"] += 1
            log.warning("ignoring a kube_cluster without a name from the registry")
            return None
        decoded = self._decode(resource, name)
        if decoded is None:
            return None
        if isinstance(decoded, str):
            clusters.pop(name, None)
            invalid[name] = decoded
            log.warning("ignoring kube_cluster %r from the registry: %s", name, decoded)
        else:
            invalid.pop(name, None)
            clusters[name] = decoded
        return name

    def _apply(self, resource: object) -> None:
        name = self._store(self.clusters, self.invalid, resource)
        if name is not None:
            self._mark(name)

    async def _relist(self, client: RegistryClient) -> None:
        items, revision = await client.list("kube_cluster", with_secrets=True)
        # Built aside and swapped in whole: a list that fails half-way leaves the last known state.
        clusters: dict[str, KubeCluster] = {}
        invalid: dict[str, str] = {}
        for item in items:
            self._store(clusters, invalid, item)
        self.clusters, self.invalid = clusters, invalid
        self.revision = revision
        self._changed = None  # a relist may have added, changed or dropped anything
        self._stats["lists"] += 1
        self.synced.set()
        self._on_change()

    async def _follow(self, client: RegistryClient) -> None:
        async with client.watch(["kube_cluster"], revision=self.revision, with_secrets=True) as events:
            self._stats["watches"] += 1
            self.connected = True
            async with aclosing(_with_idle_limit(events, self.idle_limit)) as stream:
                async for event in stream:
                    self.backoff.reset()
                    self._handle(event)

    def _handle(self, event: StreamEvent) -> None:
        """One watch event, as the client decoded it (``registry.core.watch``: a malformed stream is a
        ConnectionProblem there, so it reconnects and resumes from the last revision and never gets here)."""
        if isinstance(event, Init | Bookmark):
            self.revision = event.revision
            return
        if isinstance(event, Put):
            self._apply(event.resource)
        else:
            name = self._name_of(event.resource)
            if name is None:
                self._stats["malformed"] += 1
                log.warning("ignoring a DELETE without a name from the registry")
            else:
                self._mark(name)
                self.clusters.pop(name, None)
                self.invalid.pop(name, None)
        self.revision = event.revision
        self._stats["events"] += 1
        self._on_change()

    @staticmethod
    def _name_of(resource: object) -> str | None:
        metadata = resource.get("metadata") if isinstance(resource, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        return name if isinstance(name, str) and name else None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``started`` is reported at once: an agent serves static clusters and keeps
        trying even while the registry is unreachable."""
        task_status.started()
        while True:
            client = self._get_client()
            try:
                if self.revision is None:
                    await self._relist(client)
                await self._follow(client)
            except Compacted as err:
                log.info("watch history too old (%s): relisting", err.message)
                self.revision = None
                self._stats["relists_after_compaction"] += 1
                continue
            except KubeportError as err:
                self._stats["errors"] += 1
                delay = self.backoff.next()
                log.warning("registry watch interrupted: %s (retrying in %.1fs)", err.message, delay)
                self.connected = False
                await trio.sleep(delay)
            finally:
                self.connected = False


async def _with_idle_limit(events: AsyncIterator[StreamEvent], limit: float) -> AsyncGenerator[StreamEvent, None]:
    while True:
        event: StreamEvent | None = None
        with trio.move_on_after(limit):
            event = await events.__anext__()
        if event is None:
            raise ConnectionProblem(f"the registry watch was silent for {limit:.0f}s (no bookmark): reconnecting")
        yield event
