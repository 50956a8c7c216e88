"""Names for the raw JSON shapes that travel between the store, the service, the API, the client and the CLI.

These are TypedDicts, not models: they describe what is on the wire (and in the store) *before* or *instead
of* validation through :mod:`registry.core.codec`, so a signature says which shape flows through it rather
than ``dict[str, Any]``. They check nothing at run time; a value typed as one of them is only as trustworthy
as the code that produced it (the service's own answers are; anything read off the network is decoded
through the codec, or through :mod:`registry.core.watch` for the watch stream, before it is relied on).

Invariants:
- Key names are the wire format; renaming a key here is a protocol change.
- ``total=False`` where the wire omits keys (e.g. a resource without ``spec``, a page without ``continue``).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class MetadataBody(TypedDict, total=False):
    """``metadata`` of a resource: ``revision`` is the store revision as a string (set on the way out)."""

    name: str
    description: str
    labels: dict[str, str]
    expires: str
    revision: str


class ResourceBody(TypedDict, total=False):
    """A resource as JSON (kube_cluster, kube_server, role, user, token). ``spec`` is kind-specific and
    validated by the codec; the registry stores these without ``metadata.revision``."""

    kind: str
    version: str
    metadata: MetadataBody
    spec: dict[str, Any]


class StatusBody(TypedDict, total=False):
    """A Kubernetes ``Status``: every error answer, the in-band watch error, and delete confirmations."""

    kind: str
    apiVersion: str
    metadata: dict[str, Any]
    status: str
    message: str
    reason: str
    code: int
    details: dict[str, Any]


class HeartbeatResult(TypedDict, total=False):
    """One entry of a batch heartbeat's answer (``POST /v1/kube_servers/{host_id}``), in request order:
    the cluster name, and ``error`` (a Status) when that heartbeat was refused; the others were written."""

    name: str
    error: StatusBody


class HeartbeatBatch(TypedDict):
    """The answer to a batch heartbeat."""

    results: list[HeartbeatResult]


class ResourceList(TypedDict):
    """``GET /v1/resources/{kind}``: the items and the store revision they were read at (watch from it)."""

    items: list[ResourceBody]
    revision: int


AuditEvent = dict[str, Any]
"""One audit row: ``event``, ``time``, ``success`` and event-specific fields (an open set, so a plain dict)."""


# ``continue`` is a Python keyword, hence the functional form.
EventsPage = TypedDict("EventsPage", {"items": list[AuditEvent], "continue": str}, total=False)
"""``GET /v1/events``: one page, oldest first; ``continue`` names the next older page (absent: none)."""


class Ping(TypedDict):
    """``GET /v1/ping`` (public)."""

    cluster_name: str
    version: str
    ca_pin: str
    server_time: str
    public_addr: str
    loopback_only: bool
    # The Kubernetes front door for kubeconfigs; "" when none is served. Absent from older registries.
    kube_public_addr: NotRequired[str]
    # How local users log in: "otp" (password + one-time code) or "off" (password only). Absent from older registries.
    second_factor: NotRequired[str]
    # Every live front door of the registries sharing this one's store (agents keep a tunnel to each).
    # Absent from older registries: agents then use kube_public_addr.
    kube_front_doors: NotRequired[list[str]]


class Whoami(TypedDict):
    """``GET /v1/whoami``: the caller's effective identity."""

    name: str
    kind: str
    roles: list[str]
    host_id: str | None
    expires: str | None


class CaBundle(TypedDict):
    """``GET /v1/ca`` (public)."""

    ca_pems: list[str]


class Certificate(TypedDict, total=False):
    """A signed certificate: renewals and user certificates (``expires`` is set for user certificates)."""

    cert_pem: str
    ca_pems: list[str]
    expires: str


class JoinResult(TypedDict):
    """``POST /v1/join``: the host id the registry assigned and the agent's certificate."""

    host_id: str
    cert_pem: str
    ca_pems: list[str]


class AgentRecord(TypedDict, total=False):
    """``kube_agent``: what one agent says about itself (``kpctl kube explain``); see
    ``registry.server.service.validate_agent_record`` for the rules."""

    host_id: str
    nodename: str
    hostname: str
    version: str
    resources: list[dict[str, Any]]
    labels: dict[str, str]
    static_clusters: list[str]
    failed: dict[str, str]
    label_errors: dict[str, dict[str, str]]
    expires_in: float
    expires: str


class KubeClusterView(TypedDict):
    """One cluster of ``GET /v1/kube_clusters``: what a user may see of a cluster they may reach."""

    name: str
    labels: dict[str, str]
    health: dict[str, str]  # {"status": healthy|unhealthy|unknown[, "reason": ...]}


class KubeAccessView(TypedDict):
    """``GET /v1/kube_clusters``: the caller (a user), their current roles, the Kubernetes groups and users
    those roles grant at most, and the clusters they may reach (``registry.core.kube_listing``)."""

    user: str
    roles: list[str]
    kubernetes_groups: list[str]
    kubernetes_users: list[str]
    expires: str | None
    items: list[KubeClusterView]
