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
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import Compacted, ConnectionProblem, KubeportError
from registry.core.resources import KubeCluster

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with full jitter: sleep a random time in [0, min(cap, base * 2**n)]."""

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
        self._stats = {"lists": 0, "watches": 0, "events": 0, "errors": 0, "relists_after_compaction": 0}

    def take_changes(self) -> set[str] | None:
        changed, self._changed = self._changed, set()
        return changed

    def _mark(self, name: str) -> None:
        if self._changed is not None:
            self._changed.add(name)

    def statistics(self) -> dict[str, Any]:
        return {**self._stats, "clusters": len(self.clusters), "invalid": len(self.invalid), "revision": self.revision}

    def _apply(self, resource: dict[str, Any]) -> None:
        name = str(resource.get("metadata", {}).get("name", ""))
        self._mark(name)
        try:
            # The registry validated it; its kubeconfig is checked when (if) this agent registers it.
            model = codec.resource_from_dict(resource, source="registry", verify_kubeconfig=False)
        except KubeportError as err:
            self.clusters.pop(name, None)
            self.invalid[name] = err.message
            log.warning("ignoring kube_cluster %r from the registry: %s", name, err.message)
            return
        if not isinstance(model, KubeCluster):
            return
        self.invalid.pop(name, None)
        self.clusters[name] = model

    async def _relist(self, client: RegistryClient) -> None:
        items, revision = await client.list("kube_cluster", with_secrets=True)
        self.clusters = {}
        self.invalid = {}
        for item in items:
            self._apply(item)
        self.revision = revision
        self._changed = None  # a relist may have added, changed or dropped anything
        self._stats["lists"] += 1
        self.synced.set()
        self._on_change()

    async def _follow(self, client: RegistryClient) -> None:
        async with client.watch(["kube_cluster"], revision=self.revision, with_secrets=True) as events:
            self._stats["watches"] += 1
            self.connected = True
            async for event in _with_idle_limit(events, self.idle_limit):
                self.backoff.reset()
                kind = event.get("type")
                if kind in ("INIT", "BOOKMARK"):
                    self.revision = int(event.get("revision", self.revision or 0))
                    continue
                if kind == "PUT":
                    self._apply(event["resource"])
                elif kind == "DELETE":
                    name = str(event.get("resource", {}).get("metadata", {}).get("name", ""))
                    self._mark(name)
                    self.clusters.pop(name, None)
                    self.invalid.pop(name, None)
                else:
                    continue
                self.revision = int(event["revision"])
                self._stats["events"] += 1
                self._on_change()

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


async def _with_idle_limit(events: AsyncIterator[dict[str, Any]], limit: float) -> AsyncIterator[dict[str, Any]]:
    while True:
        event: dict[str, Any] | None = None
        with trio.move_on_after(limit):
            event = await events.__anext__()
        if event is None:
            raise ConnectionProblem(f"the registry watch was silent for {limit:.0f}s (no bookmark): reconnecting")
        yield event
