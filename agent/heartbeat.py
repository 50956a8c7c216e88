"""Heartbeats: one ``kube_server`` per served cluster, announced at once on change and periodically.

The supervisor tells the announcer *what* to say (``set(name, build)`` / ``remove(name)``) and *that*
something changed (``touch(name)``); the announcer decides *when* to talk to the registry:

- a changed or new entry is sent within ``flush_delay`` (default 20 ms, coalescing bursts such as a
  dozen label results arriving together), newest changes first, ``chunk`` names per round; an entry whose
  content did not change since it was last sent is not re-sent (until its periodic re-announce);
- every entry is re-announced every ``2/3 * ttl`` (jittered), so a registry that lost it (restart with a
  fresh store, TTL expiry while partitioned) gets it back, and a killed agent's entries expire by TTL;
- removals delete the kube_server; on shutdown every entry is deleted (shielded, bounded in time);
- a round's announces go in ONE batch request (``heartbeat_many``: one registry commit for up to ``chunk``
  clusters; an entry the registry refuses fails alone); a registry without that route gets one request per
  entry, at most ``concurrency`` in flight so 1,000 clusters do not open 1,000 connections;
- a failed send keeps the entry dirty and is retried with backoff.

What a heartbeat says is :func:`kube_server` (pure): a secret-free copy of the served cluster with its
dynamic label results, the agent's service labels (which win) and the cluster's health. The supervisor
hands the announcer a builder that calls it; :class:`Heartbeats` is the seam the supervisor sees.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from agent.health import HealthResult
from registry import __version__
from registry.client import RegistryClient
from registry.core.errors import KubeportError, NotFound
from registry.core.resources import CommandLabel, Health, KubeCluster, KubeServer, Metadata
from registry.host.metrics import AGENT_HEARTBEATS

log = logging.getLogger(__name__)

Builder = Callable[[float], dict[str, Any]]  # expires (unix seconds) -> kube_server wire dict


class Heartbeats(Protocol):
    """What the supervisor tells the heartbeat side; :class:`Announcer` is the real one."""

    def set(self, name: str, build: Builder) -> None: ...

    def remove(self, name: str) -> None: ...

    def touch(self, name: str | None = None) -> None: ...


@dataclass(frozen=True)
class ServiceInfo:
    """What every heartbeat of this agent carries besides the cluster itself."""

    host_id: str
    hostname: str
    labels: Mapping[str, str]
    commands: Mapping[str, CommandLabel]


def kube_server(
    cluster: KubeCluster,
    *,
    results: Mapping[str, str],
    service: ServiceInfo,
    service_results: Mapping[str, str],
    health: HealthResult,
    expires: float,
) -> KubeServer:
    """The heartbeat: a secret-free copy of the cluster with dynamic results, service labels (which win)
    and health. ``results``: the cluster's dynamic label values; ``service_results``: the agent's own."""
    dynamic = {key: replace(label, result=results.get(key, "")) for key, label in cluster.dynamic_labels.items()}
    for key, label in service.commands.items():
        dynamic[key] = replace(label, result=service_results.get(key, ""))
    labels = {**cluster.static_labels(), **service.labels}
    copy = replace(
        cluster.without_secrets(),
        metadata=replace(cluster.metadata, labels=labels, revision="", expires=None),
        dynamic_labels=dynamic,
    )
    return KubeServer(
        metadata=Metadata(name=cluster.name, expires=datetime.fromtimestamp(expires, tz=UTC)),
        host_id=service.host_id,
        hostname=service.hostname,
        version=__version__,
        cluster=copy,
        health=Health(status=health.status, reason=health.reason, checked_at=health.checked_at),
    )


def _content_key(wire: dict[str, Any]) -> str:
    """The heartbeat without its expiry: equal keys mean re-sending would tell the registry nothing new."""
    metadata = {k: v for k, v in (wire.get("metadata") or {}).items() if k != "expires"}
    return json.dumps({**wire, "metadata": metadata}, sort_keys=True, separators=(",", ":"))


class Announcer:
    def __init__(
        self,
        get_client: Callable[[], RegistryClient],
        *,
        host_id: str,
        ttl: float,
        clock: Callable[[], float],
        flush_delay: float = 0.02,
        concurrency: int = 16,
        chunk: int = 256,
    ) -> None:
        self._get_client = get_client
        self.host_id = host_id
        self.ttl = ttl
        self._clock = clock
        self.flush_delay = flush_delay
        self._builders: dict[str, Builder] = {}
        self.chunk = chunk
        # Ordered: the most recently touched names are sent first, so a new cluster is not queued behind a
        # backlog (10,000 clusters registering at start).
        self._dirty: dict[str, None] = {}
        self._deleted: set[str] = set()
        self._due: set[str] = set()  # periodic re-announces: sent even when nothing changed
        self._last_content: dict[str, str] = {}
        self._last_sent: dict[str, float] = {}  # trio time of the last successful announce
        self._wake = trio.Event()
        self._limit = trio.CapacityLimiter(concurrency)
        self._failures = 0
        self._batch = True  # one request per flush (POST /v1/kube_servers/{host_id}); False: per entry
        self._stats = {"announces": 0, "unchanged_skipped": 0, "deletes": 0, "errors": 0}
        self.idle = trio.Event()  # set whenever nothing is pending (tests and benchmarks wait on it)

    @property
    def failing(self) -> bool:
        """The last round of sends failed (cleared by the next one that succeeds)."""
        return self._failures > 0

    def statistics(self) -> dict[str, int]:
        return {
            **self._stats,
            "entries": len(self._builders),
            "dirty": len(self._dirty),
            "pending_deletes": len(self._deleted),
        }

    # -- what to say ---------------------------------------------------------------------------------

    def set(self, name: str, build: Builder) -> None:
        self._builders[name] = build
        self._deleted.discard(name)
        self.touch(name)

    def remove(self, name: str) -> None:
        if self._builders.pop(name, None) is not None or name in self._last_sent:
            self._dirty.pop(name, None)
            self._due.discard(name)
            self._last_sent.pop(name, None)
            self._last_content.pop(name, None)
            self._deleted.add(name)
            self._kick()

    def touch(self, name: str | None = None) -> None:
        """Something about ``name`` (or every entry, for None) changed: announce it soon."""
        if name is None:
            self._dirty.update(dict.fromkeys(self._builders))
        elif name in self._builders:
            self._dirty.pop(name, None)
            self._dirty[name] = None
        self._kick()

    def _kick(self) -> None:
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        self._wake.set()

    # -- when to say it ------------------------------------------------------------------------------

    def _period(self) -> float:
        base = self.ttl * 2 / 3
        return random.uniform(base * 6 / 7, base)  # noqa: S311 - jitter spreads announces, not security

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                if not self._dirty and not self._deleted:
                    self.idle.set()
                    due = self._next_periodic()
                    with trio.move_on_at(due):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    self._mark_periodic()
                    if not self._dirty and not self._deleted:
                        continue
                await trio.sleep(self.flush_delay)
                ok = await self._flush()
                if ok:
                    self._failures = 0
                else:
                    self._failures += 1
                    await trio.sleep(min(30.0, 0.5 * 2 ** min(self._failures, 6)) * random.uniform(0.5, 1.0))  # noqa: S311
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._delete_all()

    def _next_periodic(self) -> float:
        if not self._last_sent:
            return trio.current_time() + 3600
        return min(self._last_sent.values()) + self._period()

    def _mark_periodic(self) -> None:
        now = trio.current_time()
        period = self.ttl * 2 / 3
        for name, sent in self._last_sent.items():
            if now - sent >= period * 6 / 7 and name in self._builders:
                self._dirty.setdefault(name, None)
                self._due.add(name)

    async def _flush(self) -> bool:
        """Send one chunk (newest changes first) and every pending delete; the loop comes back for more."""
        dirty = list(self._dirty)[-self.chunk :]
        for name in dirty:
            del self._dirty[name]
        deleted, self._deleted = self._deleted, set()
        failed: list[str] = []
        failed_deletes: list[str] = []
        client = self._get_client()

        # What to send: every dirty entry whose content changed (or whose periodic re-announce is due).
        outgoing: list[tuple[str, dict[str, Any], str]] = []
        for name in sorted(dirty):
            build = self._builders.get(name)
            if build is None:
                continue
            wire = build(self._clock() + self.ttl)
            content = _content_key(wire)
            forced = name in self._due
            self._due.discard(name)
            if not forced and self._last_content.get(name) == content:
                self._stats["unchanged_skipped"] += 1
                continue
            outgoing.append((name, wire, content))

        def sent(name: str, content: str) -> None:
            AGENT_HEARTBEATS.labels("sent").inc()
            if name in self._builders:  # removed while in flight: remember nothing (it is being deleted)
                self._last_sent[name] = trio.current_time()
                self._last_content[name] = content
            self._stats["announces"] += 1

        def refused(name: str, message: str) -> None:
            AGENT_HEARTBEATS.labels("failed").inc()
            self._stats["errors"] += 1
            failed.append(name)
            log.warning("heartbeat for %s failed: %s", name, message)

        async def announce(name: str, wire: dict[str, Any], content: str) -> None:
            async with self._limit:
                try:
                    await client.heartbeat(wire)
                except KubeportError as err:
                    refused(name, err.message)
                    return
            sent(name, content)

        async def announce_batch() -> None:
            """All of ``outgoing`` in one request (one registry commit); per-entry errors come back as
            results. A registry without the batch route gets one request per entry from then on."""
            try:
                results = await client.heartbeat_many(self.host_id, [wire for _, wire, _ in outgoing])
            except NotFound as err:
                if not err.message.startswith("no route"):
                    raise
                self._batch = False
                log.info("the registry has no batch heartbeat route: sending one heartbeat per request")
                async with trio.open_nursery() as inner:
                    for name, wire, content in outgoing:
                        inner.start_soon(announce, name, wire, content)
                return
            except KubeportError as err:
                for name, _, _ in outgoing:
                    refused(name, err.message)
                return
            for (name, _, content), result in zip(outgoing, results, strict=False):
                error = result.get("error")
                if error is None:
                    sent(name, content)
                else:
                    refused(name, str(error.get("message", "refused")))
            for name, _, _ in outgoing[len(results) :]:  # a short answer: retry what it did not cover
                refused(name, "no result in the registry's answer")

        async def delete(name: str) -> None:
            async with self._limit:
                try:
                    await client.delete_heartbeat(self.host_id, name)
                except NotFound:
                    pass
                except KubeportError as err:
                    self._stats["errors"] += 1
                    failed_deletes.append(name)
                    log.warning("deleting heartbeat %s failed: %s", name, err.message)
                    return
            self._stats["deletes"] += 1

        async with trio.open_nursery() as nursery:
            for name in sorted(deleted):
                nursery.start_soon(delete, name)
            if outgoing and self._batch:
                nursery.start_soon(announce_batch)
            elif outgoing:
                for name, wire, content in outgoing:
                    nursery.start_soon(announce, name, wire, content)
        # Anything that changed meanwhile is already in the fresh sets; retry what failed.
        for name in failed:
            if name in self._builders:
                self._dirty.setdefault(name, None)
        self._deleted.update(n for n in failed_deletes if n not in self._builders)
        return not failed and not failed_deletes

    async def _delete_all(self) -> None:
        names = set(self._builders) | set(self._last_sent) | self._deleted
        self._builders.clear()
        if not names:
            return
        client = self._get_client()

        async def delete(name: str) -> None:
            async with self._limit:
                try:
                    await client.delete_heartbeat(self.host_id, name)
                except KubeportError as err:
                    if not isinstance(err, NotFound):
                        log.warning("could not delete heartbeat %s on shutdown: %s", name, err.message)

        async with trio.open_nursery() as nursery:
            for name in sorted(names):
                nursery.start_soon(delete, name)
