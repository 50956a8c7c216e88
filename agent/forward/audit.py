"""Audit events of the forwarder, and the batching adapter that keeps auditing off the request path.

Events (plain dicts, the registry's audit shape: ``event`` names the type; ``time`` is the agent's clock in
Unix seconds, a float, not formatted per event: the registry stores its own receipt time, RFC 3339, in its
place; fields that would be null are left out, as the registry leaves them out of the stored row):

* ``kube.request`` — one per forwarded or refused request: user, roles, cluster, host (this agent),
  client address, method, path (without the cluster prefix, query included), verb, resource, namespace,
  name, impersonated user and groups, response status, duration in ms, and ``error`` for refusals and
  broken exchanges;
* ``session.start`` / ``session.end`` — around an upgraded exec/attach/port-forward stream: session id,
  kind, pod, namespace, protocol; the end adds bytes each way, duration, and ``exit_code`` (read from the
  error channel by :mod:`agent.forward.exit_taps`; ``None`` with ``exit_code_reason`` when it cannot be
  known).

:class:`AuditBatcher` is the production ``audit`` callback: calling it never waits for I/O. Events go into
a bounded queue that :meth:`AuditBatcher.serve` flushes in batches to a ``sink`` (one write per batch, not
per event); a failing sink is retried with backoff while the queue holds the events. When the queue is
full an event is dropped, counted, logged, and reported in the next batch as an ``audit.dropped`` event:
never silently.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import trio

from registry.core.errors import KubeportError
from registry.core.kube_access import Identity
from registry.core.kube_request import KubeRequest
from registry.core.tunnel_info import StreamInfo

log = logging.getLogger(__name__)

AuditEvent = dict[str, Any]
AuditSink = Callable[[list[AuditEvent]], Awaitable[None]]

KUBE_REQUEST: Final = "kube.request"
SESSION_START: Final = "session.start"
SESSION_END: Final = "session.end"
AUDIT_DROPPED: Final = "audit.dropped"


def request_event(
    *,
    info: StreamInfo,
    host: str,
    now: datetime,
    method: str,
    path: str,
    request: KubeRequest | None,
    roles: tuple[str, ...],
    identity: Identity | None,
    status: int,
    duration_ms: float,
    error: str | None = None,
) -> AuditEvent:
    """One ``kube.request`` event (``request`` None when the path could not be mapped)."""
    event: AuditEvent = {
        "event": KUBE_REQUEST,
        "time": now.timestamp(),
        "success": 100 <= status < 400,
        "user": info.user,
        "roles": list(roles),
        "cluster": info.cluster,
        "host": host,
        "client_addr": info.client_addr,
        "method": method,
        "path": path[:2048],
        "verb": request.verb if request else "",
        "resource": _resource(request),
        "namespace": request.namespace if request else "",
        "name": request.name if request else "",
        "impersonated_groups": list(identity.groups) if identity else [],
        "status": status,
        "duration_ms": round(duration_ms, 3),
    }
    if identity is not None:
        event["impersonated_user"] = identity.user
    if error is not None:
        event["error"] = error[:2048]
    return event


def _resource(request: KubeRequest | None) -> str:
    if request is None or not request.is_resource:
        return ""
    resource = f"{request.resource}.{request.api_group}" if request.api_group else request.resource
    return f"{resource}/{request.subresource}" if request.subresource else resource


def session_event(
    kind: str,
    *,
    session_id: str,
    info: StreamInfo,
    host: str,
    now: datetime,
    request: KubeRequest,
    identity: Identity,
    protocol: str,
    extra: dict[str, Any] | None = None,
) -> AuditEvent:
    """A ``session.start`` or ``session.end`` event for an upgraded stream."""
    event: AuditEvent = {
        "event": kind,
        "time": now.timestamp(),
        "success": True,
        "session_id": session_id,
        "session_kind": request.subresource or "upgrade",
        "user": info.user,
        "cluster": info.cluster,
        "host": host,
        "client_addr": info.client_addr,
        "namespace": request.namespace,
        "pod": request.name,
        "protocol": protocol[:200],
        "impersonated_user": identity.user,
        "impersonated_groups": list(identity.groups),
    }
    event.update(extra or {})
    return event


@dataclass(frozen=True)
class AuditStatistics:
    queued: int
    written: int
    dropped: int
    failed_writes: int


class AuditBatcher:
    """A non-blocking ``audit`` callback backed by a bounded queue and a flushing task (module docstring).

    ``sink`` writes one batch (e.g. one registry call); ``capacity`` bounds the queue; a batch is at most
    ``batch_size`` events and is sent at the latest ``flush_interval`` seconds after its first event.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be positive")
        self._sink = sink
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self._queue: deque[AuditEvent] = deque()
        self._wake = trio.Event()
        self._written = 0
        self._dropped = 0
        self._unreported = 0
        self._failed = 0

    def statistics(self) -> AuditStatistics:
        return AuditStatistics(
            queued=len(self._queue), written=self._written, dropped=self._dropped, failed_writes=self._failed
        )

    def submit(self, event: AuditEvent) -> bool:
        """Queue ``event``; False (and counted) when the queue is full."""
        if len(self._queue) >= self.capacity:
            self._dropped += 1
            self._unreported += 1
            if self._unreported == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "audit queue full (%d events): dropped %d audit events so far (reported in the audit log)",
                    self.capacity,
                    self._dropped,
                )
            return False
        self._queue.append(event)
        if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
            self._wake.set()
        return True

    async def __call__(self, event: AuditEvent) -> None:
        self.submit(event)

    async def wait_flushed(self) -> None:
        """Wait until the queue is empty (tests, shutdown)."""
        while self._queue or self._unreported:
            self._wake.set()
            await trio.sleep(0.01)

    def _take(self) -> list[AuditEvent]:
        batch: list[AuditEvent] = []
        if self._unreported:
            batch.append({"event": AUDIT_DROPPED, "success": False, "count": self._unreported})
        while self._queue and len(batch) < self.batch_size:
            batch.append(self._queue.popleft())
        return batch

    async def _write(self, batch: list[AuditEvent]) -> None:
        delay = 0.5
        while True:
            try:
                await self._sink(batch)
            except (KubeportError, OSError) as err:
                self._failed += 1
                log.warning("writing %d audit events failed (retrying in %.1fs): %s", len(batch), delay, err)
                await trio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self._written += sum(1 for e in batch if e.get("event") != AUDIT_DROPPED)
            return

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush batches until cancelled; on cancellation, a last bounded flush."""
        task_status.started()
        try:
            while True:
                if not self._queue and not self._unreported:
                    await self._wake.wait()
                self._wake = trio.Event()
                if len(self._queue) < self.batch_size:
                    with trio.move_on_after(self.flush_interval):
                        while len(self._queue) < self.batch_size:
                            await self._wake.wait()
                            self._wake = trio.Event()
                batch = self._take()
                # The batch is out of the queue while it is written: count it back if the write is cut short.
                if batch:
                    dropped_report = self._unreported
                    self._unreported = 0
                    try:
                        await self._write(batch)
                    except BaseException:
                        self._unreported += dropped_report
                        self._queue.extendleft(reversed([e for e in batch if e.get("event") != AUDIT_DROPPED]))
                        raise
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                while self._queue or self._unreported:
                    batch = self._take()
                    self._unreported = 0
                    try:
                        await self._sink(batch)
                    except (KubeportError, OSError) as err:
                        log.error("lost %d audit events at shutdown: %s", len(batch), err)
                        break
                    self._written += sum(1 for e in batch if e.get("event") != AUDIT_DROPPED)
