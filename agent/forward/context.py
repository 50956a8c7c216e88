"""What the forwarder needs from the rest of the agent, and the production source of users and roles.

:class:`ForwardContext` is the forwarder's one seam (tests build it from fakes): the user's current
user resource and roles, the served-cluster table, the audit callback, the upstream pool and limits.

:class:`RegistryAccessSource` is the production ``user_access``: it reads the ``user`` and its ``role``
resources from the registry (agents may read both) and caches each answer for at most ``ttl`` seconds (1
by default), so a deleted user or a removed role loses access within about a second while a busy
``kubectl`` does not cost a registry round trip per request. Concurrent lookups of one name share one
registry call; a user that does not exist is cached as such for the same ``ttl``; a role a user names but
that does not exist (deleted) is skipped — it grants nothing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import trio

from agent.forward.audit import AuditEvent
from agent.forward.decide import DecisionCache
from agent.forward.upstream import Endpoints, UpstreamPool
from agent.forward.upstream_h2 import H2Pool
from agent.kube.exec_plugin import ExecCredential
from registry.core import codec
from registry.core.errors import AccessDenied, ConnectionProblem, KubeportError, NotFound
from registry.core.resources import KubeCluster, Role, User

log = logging.getLogger(__name__)

UserAccess = Callable[[str], Awaitable[tuple[User, tuple[Role, ...]]]]
ClusterLookup = Callable[[str], tuple[KubeCluster, Mapping[str, str]] | None]
Audit = Callable[[AuditEvent], Awaitable[None]]
ExecCredentials = Callable[[str], Awaitable[ExecCredential]]

ACCESS_TTL: Final = 1.0


@dataclass(frozen=True)
class ForwardLimits:
    """Bounds on what one kubectl connection may cost the agent."""

    max_head_bytes: int = 64 * 1024  # one request head (registry.core.http1.Reader's max_head: 431 beyond)
    head_timeout: float = 30.0  # a request head, once its first byte arrived
    idle_timeout: float = 600.0  # a kept-alive connection waiting for its next request
    response_head_timeout: float = 120.0  # the API server's answer head (bodies may stream for hours)
    replay_body_bytes: int = 64 * 1024  # a request body this small is replayed on a fresh connection once
    splice_chunk: int = 64 * 1024
    # A streamed answer's bytes already received are written to the client together up to this size (fewer
    # tunnel frames and TLS writes per MiB); reads stay at splice_chunk.
    relay_write: int = 256 * 1024

    def __post_init__(self) -> None:
        for name in ("head_timeout", "idle_timeout", "response_head_timeout"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ValueError(f"ForwardLimits.{name} must be a positive number of seconds (got {value!r})")


@dataclass
class ForwardContext:
    """Everything :func:`agent.forward.handle_stream` uses besides the stream itself.

    ``user_access(name)``: the user's current resource and roles (raises ``NotFound`` for a deleted user).
    ``cluster(name)``: the served cluster and its labels (static ∪ dynamic), None when not served.
    ``audit(event)``: must not block (see :class:`~agent.forward.audit.AuditBatcher`).
    ``exec_credential(name)``: the cluster's cached exec-plugin credential (clusters using ``exec`` only).
    """

    user_access: UserAccess
    cluster: ClusterLookup
    audit: Audit
    host: str = ""  # this agent's host id, for audit events
    pool: UpstreamPool = field(default_factory=UpstreamPool)
    endpoints: Endpoints = field(default_factory=Endpoints)
    # Watches to an API server that speaks h2 share HTTP/2 connections (None: every request on ``pool``).
    h2: H2Pool | None = field(default_factory=H2Pool)
    exec_credential: ExecCredentials | None = None
    limits: ForwardLimits = field(default_factory=ForwardLimits)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    decisions: DecisionCache = field(default_factory=DecisionCache)


class ServedTable(Protocol):
    """The part of :class:`agent.clusters.Supervisor` that :func:`served_clusters` reads."""

    @property
    def served(self) -> Mapping[str, Any]: ...

    def announced_labels(self, served: Any) -> Mapping[str, str]: ...


def served_clusters(table: ServedTable) -> tuple[ClusterLookup, ExecCredentials]:
    """``ForwardContext.cluster`` and ``.exec_credential`` backed by the agent's served-cluster table.

    The labels are exactly what this agent's heartbeat announces (static, service and dynamic labels), so
    the forwarder authorizes against the labels the front door routed with; the exec credential comes from
    the cluster's own :class:`~agent.kube.client.KubeAPI` cache.
    """

    def cluster(name: str) -> tuple[KubeCluster, Mapping[str, str]] | None:
        served = table.served.get(name)
        if served is None:
            return None
        return served.cluster, table.announced_labels(served)

    async def exec_credential(name: str) -> ExecCredential:
        served = table.served.get(name)
        if served is None:
            raise NotFound(f'Kubernetes cluster "{name}" is not served by this agent')
        credential: ExecCredential = await served.api.exec_credential()
        return credential

    return cluster, exec_credential


class ResourceReader(Protocol):
    """The part of :class:`registry.client.RegistryClient` this module uses."""

    async def get(self, kind: str, name: str, *, with_secrets: bool = False) -> Any: ...


@dataclass
class _Entry:
    expires: float
    value: Any = None  # the model, or None for "does not exist"
    error: KubeportError | None = None
    ready: trio.Event = field(default_factory=trio.Event)


class RegistryAccessSource:
    """``user_access`` backed by the registry, cached <= ``ttl`` seconds (module docstring)."""

    def __init__(self, client: ResourceReader, *, ttl: float = ACCESS_TTL, max_entries: int = 10_000) -> None:
        if not 0 <= ttl <= ACCESS_TTL:
            raise ValueError(f"ttl must be between 0 and {ACCESS_TTL} seconds (got {ttl!r})")
        self._client = client
        self.ttl = ttl
        self._max = max_entries
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.fetches = 0

    async def __call__(self, user: str) -> tuple[User, tuple[Role, ...]]:
        model = await self._get("user", user)
        if model is None:
            raise AccessDenied(f'kubeport user "{user}" does not exist (any more): access denied')
        if not isinstance(model, User):
            raise ConnectionProblem(f'the registry answered a {type(model).__name__} for user "{user}"')
        roles: list[Role] = []
        for name in model.roles:
            role = await self._get("role", name)
            if isinstance(role, Role):
                roles.append(role)
            elif role is None:
                log.debug("user %s names role %s, which does not exist: it grants nothing", user, name)
        return model, tuple(roles)

    async def _get(self, kind: str, name: str) -> Any:
        key = (kind, name)
        now = trio.current_time()
        entry = self._cache.get(key)
        if entry is not None and entry.ready.is_set() and entry.expires > now:
            # A fresh answer: returned without Event.wait(), which would still yield to the scheduler (a
            # task switch per lookup, two or more per request).
            if entry.error is not None:
                raise entry.error
            return entry.value
        if entry is not None and not entry.ready.is_set():
            await entry.ready.wait()
            if entry.error is not None:
                raise entry.error
            return entry.value
        entry = _Entry(expires=now + self.ttl)
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        try:
            entry.value = await self._fetch(kind, name)
        except KubeportError as err:
            entry.error = err
            entry.expires = now  # errors other than "not found" are not cached
            raise
        except BaseException:
            # Cancelled: whoever shares this lookup gets an error, never a "does not exist".
            entry.error = ConnectionProblem(f"the lookup of {kind} {name!r} in the registry was cancelled")
            entry.expires = now
            raise
        finally:
            entry.ready.set()
        return entry.value

    async def _fetch(self, kind: str, name: str) -> Any:
        self.fetches += 1
        try:
            body = await self._client.get(kind, name)
        except NotFound:
            return None
        try:
            return codec.resource_from_dict(body, source="registry")
        except KubeportError as err:
            raise ConnectionProblem(
                f"the registry answered {kind} {name!r} with a bad resource: {err.message}"
            ) from None
