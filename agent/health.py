"""Health of one served Kubernetes cluster, as the kube_server heartbeat reports it (``spec.health``).

A check is ``GET /version`` and then three SelfSubjectAccessReviews, run concurrently, asking whether the
agent's identity may ``impersonate`` users, groups and serviceaccounts at cluster scope — what the proxy
will need for every request (teleport-behaviour §4.5). The outcome is one of:

* ``healthy`` — reachable, credentials accepted, every impersonation allowed (``kube_version`` from
  ``gitVersion``);
* ``unhealthy`` with a reason a person can act on — unreachable, credentials rejected, or the missing
  impersonation rights;
* ``unknown`` — not checked yet.

Invariants: a check never raises for a problem of the cluster (only cancellation and our own bugs escape);
reasons never contain credentials (they come from :mod:`agent.kube.client`, which scrubs them); warnings such as
a disabled TLS verification ride along in ``reason`` even when healthy. :class:`HealthMonitor` calls
``on_change`` only when status or reason changes, and checks run one at a time, so results are reported in
the order they were taken.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import trio

from registry.core.errors import BadParameter, KubeportError
from registry.core.timefmt import format_rfc3339

HealthStatus = Literal["healthy", "unhealthy", "unknown"]

SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
IMPERSONATED_RESOURCES = ("users", "groups", "serviceaccounts")
DEFAULT_INTERVAL = 60.0
JITTER = 0.1  # ±10% so that a thousand clusters added at once do not get checked in lockstep forever
_FIX_HINT = "grant the service account the impersonate verb (see scripts/get_kubeconfig.py)"


class KubeCalls(Protocol):
    """What a health check needs from a Kubernetes client; :class:`agent.kube.client.KubeAPI` is the real one."""

    @property
    def warnings(self) -> tuple[str, ...]: ...

    async def get_json(self, path: str, *, timeout: float = ...) -> Any: ...

    async def post_json(self, path: str, body: Any, *, timeout: float = ...) -> Any: ...


@dataclass(frozen=True)
class HealthResult:
    status: HealthStatus
    reason: str
    checked_at: datetime
    kube_version: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The ``spec.health`` object of a kube_server."""
        return {
            "status": self.status,
            "reason": self.reason,
            "checked_at": format_rfc3339(self.checked_at, fraction="none"),
            "kube_version": self.kube_version,
        }


def _access_review(resource: str) -> dict[str, Any]:
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "impersonate", "resource": resource, "group": ""}},
    }


def _with_warnings(reason: str, api: KubeCalls) -> str:
    return "; ".join(part for part in (reason, *api.warnings) if part)


async def check_health(api: KubeCalls, *, now: Callable[[], datetime]) -> HealthResult:
    """Check one cluster once. Reports cluster problems as ``unhealthy``; never raises for them."""
    try:
        version = await api.get_json("/version")
    except KubeportError as exc:
        return HealthResult("unhealthy", _with_warnings(exc.message, api), now())
    git_version = version.get("gitVersion") if isinstance(version, dict) else None
    kube_version = git_version[:64] if isinstance(git_version, str) and git_version else None

    allowed: dict[str, bool] = {}
    errors: dict[str, str] = {}

    async def review(resource: str) -> None:
        try:
            answer = await api.post_json(SSAR_PATH, _access_review(resource))
        except KubeportError as exc:
            errors[resource] = exc.message
            return
        status = answer.get("status") if isinstance(answer, dict) else None
        allowed[resource] = isinstance(status, dict) and status.get("allowed") is True

    # One after another on the keep-alive connection /version opened: concurrent reviews would each open a
    # TLS connection, tripling the handshakes when thousands of clusters are checked (measured: the agent's
    # start-up was dominated by TLS handshakes).
    for resource in IMPERSONATED_RESOURCES:
        await review(resource)

    if errors:
        first = next(r for r in IMPERSONATED_RESOURCES if r in errors)
        reason = f"failed to verify impersonation permissions: {errors[first]}"
        return HealthResult("unhealthy", _with_warnings(reason, api), now(), kube_version)
    missing = [r for r in IMPERSONATED_RESOURCES if not allowed.get(r)]
    if missing:
        reason = f"cannot impersonate {', '.join(missing)} at the cluster level: {_FIX_HINT}"
        return HealthResult("unhealthy", _with_warnings(reason, api), now(), kube_version)
    return HealthResult("healthy", _with_warnings("", api), now(), kube_version)


@dataclass(frozen=True)
class HealthMonitorStatistics:
    checks: int
    changes: int
    status: HealthStatus
    reason: str


class HealthMonitor:
    """Checks one cluster now and then every ``interval`` seconds (±10%), reporting transitions.

    ``on_change`` is called from the monitor's task with the new result whenever status or reason differ
    from the previous result (the first check always counts, since the start is ``unknown``). It must not
    block for long; an exception from it ends :meth:`serve`.
    """

    def __init__(
        self,
        api: KubeCalls,
        *,
        interval: float = DEFAULT_INTERVAL,
        on_change: Callable[[HealthResult], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if not interval > 0:
            raise BadParameter(f"health check interval must be positive, got {interval!r}")
        self._api = api
        self._interval = interval
        self._on_change = on_change
        self._now = now
        self._latest = HealthResult("unknown", "not checked yet", now())
        self._lock = trio.Lock()
        # Shared by every monitor of an agent: 10,000 clusters registering at once must not open 30,000
        # TLS connections at once (they would time out and be reported unhealthy for nothing).
        self._limiter = limiter
        self._checks = 0
        self._changes = 0

    @property
    def latest(self) -> HealthResult:
        return self._latest

    def statistics(self) -> HealthMonitorStatistics:
        return HealthMonitorStatistics(self._checks, self._changes, self._latest.status, self._latest.reason)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Reports started at once: an unreachable cluster must not delay the caller
        by a whole connect timeout, and ``latest`` says ``unknown`` until the first check completes."""
        task_status.started()
        while True:
            await self.check_now()
            # Not a secret: jitter only spreads load.
            await trio.sleep(self._interval * random.uniform(1 - JITTER, 1 + JITTER))  # noqa: S311

    async def check_now(self) -> HealthResult:
        """Check immediately (e.g. after the cluster's registration changed) and return the result."""
        async with self._lock:
            if self._limiter is None:
                result = await check_health(self._api, now=self._now)
            else:
                async with self._limiter:
                    result = await check_health(self._api, now=self._now)
            self._checks += 1
            previous, self._latest = self._latest, result
            if (result.status, result.reason) != (previous.status, previous.reason):
                self._changes += 1
                self._on_change(result)
            return result
