"""Resource models: frozen values for every kind the registry stores.

Kinds: ``kube_cluster`` (a cluster an agent may serve: kubeconfig, static and dynamic labels),
``kube_server`` (an agent's heartbeat for one served cluster), ``role``, ``user``, ``token`` (join token) and
``oidc`` (a single sign-on connector).
The wire shape (YAML/JSON, Teleport compatible) and all validation live in :mod:`registry.core.codec`.

Invariants:

* Models are values: frozen dataclasses, compared field by field. Mapping fields are copied into a fresh
  ``dict`` on construction (so the caller's dict can change without changing the model) and must be
  treated as read-only. Tuples are used for sequences.
* Models do not validate: build them from untrusted input only through ``codec.resource_from_dict``
  (or ``codec.decode_resources``). Constructors only normalise representation: timestamps become aware UTC,
  command lists become tuples, an all-empty cloud spec becomes ``None`` (``aws: {}`` means "absent").
* Secrets never appear in ``repr``: ``KubeCluster.kubeconfig`` is excluded from it, and a ``Token``'s
  repr hides its name (the name *is* the secret).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal, TypeAlias

from labels import LabelError, combine, parse_go_duration

ORIGIN_LABEL = "kubeport.dev/origin"
ORIGIN_VALUES = ("dynamic", "config-file", "defaults", "cloud", "kubernetes")

# CLI spellings (``kpctl get kube_clusters``) -> canonical kind.
KIND_ALIASES: Mapping[str, str] = {
    "kube_cluster": "kube_cluster",
    "kube_clusters": "kube_cluster",
    "kube_server": "kube_server",
    "kube_servers": "kube_server",
    "role": "role",
    "roles": "role",
    "user": "user",
    "users": "user",
    "token": "token",
    "tokens": "token",
    "oidc": "oidc",
    "oidcs": "oidc",
}

# kube_cluster_dynamic_labels: a pseudo-resource, the grant to set or change a kube_cluster's
# spec.dynamic_labels (commands agents run); see registry.server.authz.
RULE_RESOURCES = ("kube_cluster", "kube_server", "token", "role", "user", "event", "kube_cluster_dynamic_labels", "*")
# Kinds only the admin identity may touch, whatever a role's rules say (a connector decides who becomes whom).
ADMIN_ONLY_KINDS = frozenset({"oidc"})
RULE_VERBS = ("list", "create", "read", "update", "delete", "*")
TOKEN_ROLES = ("Kube",)

DEFAULT_MAX_SESSION_TTL = timedelta(hours=30)
"""A role without ``spec.options.max_session_ttl`` caps user certificates at this (Teleport's default)."""

# The join token policy, applied by every route that writes a token (generate, generic create/update).
MIN_TOKEN_LENGTH = 16  # generated tokens are 32 hex digits; anything shorter is guessable or a typo
MAX_TOKEN_LENGTH = 253  # a resource name's limit
MAX_TOKEN_TTL = timedelta(days=30)
TOKEN_VALUE_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MASK_MAX_KEEP = 4
_MASK_MIN_STARS = 8


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC; a naive timestamp is taken to be UTC already (YAML timestamps without an offset are)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # the documented way to normalise a frozen dataclass


@dataclass(frozen=True)
class Metadata:
    name: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    expires: datetime | None = None
    revision: str = ""  # opaque, server-assigned; echoed back for compare-and-swap

    def __post_init__(self) -> None:
        _set(self, "labels", dict(self.labels))
        _set(self, "expires", _utc(self.expires))


@dataclass(frozen=True)
class CommandLabel:
    """A dynamic label: ``command`` (argv, no shell) run every ``period`` or on a cron ``schedule``."""

    command: tuple[str, ...]
    period: str | None = None  # Go duration text as written ("24h")
    schedule: str | None = None  # cron expression (a kubeport extension)
    result: str = ""  # filled in by the agent, only ever carried by kube_server heartbeats

    def __post_init__(self) -> None:
        _set(self, "command", tuple(self.command))

    def period_seconds(self) -> float | None:
        return parse_go_duration(self.period) if self.period is not None else None


class _CloudSpec:
    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class AWSSpec(_CloudSpec):
    region: str = ""
    account_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class AzureSpec(_CloudSpec):
    resource_name: str = ""
    resource_group: str = ""
    tenant_id: str = ""
    subscription_id: str = ""


@dataclass(frozen=True)
class GCPSpec(_CloudSpec):
    location: str = ""
    project_id: str = ""
    name: str = ""


CloudSpec: TypeAlias = AWSSpec | AzureSpec | GCPSpec


def _present(spec: CloudSpec | None) -> Any:
    return None if spec is None or spec.is_empty() else spec


@dataclass(frozen=True)
class KubeCluster:
    KIND: ClassVar[str] = "kube_cluster"
    VERSION: ClassVar[str] = "v3"

    metadata: Metadata
    kubeconfig: bytes = field(default=b"", repr=False)
    dynamic_labels: Mapping[str, CommandLabel] = field(default_factory=dict)
    aws: AWSSpec | None = None
    azure: AzureSpec | None = None
    gcp: GCPSpec | None = None
    allow_exec_plugins: bool = False  # kubeport extension: the kubeconfig may use an exec credential plugin

    def __post_init__(self) -> None:
        _set(self, "dynamic_labels", dict(self.dynamic_labels))
        for name in ("aws", "azure", "gcp"):
            _set(self, name, _present(getattr(self, name)))

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def origin(self) -> str:
        return self.metadata.labels.get(ORIGIN_LABEL, "")

    def static_labels(self) -> dict[str, str]:
        return dict(self.metadata.labels)

    def results(self) -> dict[str, str]:
        """Dynamic label key -> last result (``""`` until the agent has run the command)."""
        return {key: label.result for key, label in self.dynamic_labels.items()}

    def all_labels(self) -> dict[str, str]:
        """Static labels overlaid with dynamic results; a dynamic label wins a key conflict (Teleport),
        even before its command has run (its value is then ``""``)."""
        return combine(self.metadata.labels, self.results())

    def without_secrets(self) -> KubeCluster:
        """What may leave the registry without ``--with-secrets``: no kubeconfig and no cloud specs."""
        return replace(self, kubeconfig=b"", aws=None, azure=None, gcp=None)

    def with_results(self, results: Mapping[str, str]) -> KubeCluster:
        """A copy whose dynamic labels carry ``results``; keys that are not dynamic labels are ignored."""
        dynamic = {
            key: replace(label, result=results[key]) if key in results else label
            for key, label in self.dynamic_labels.items()
        }
        return replace(self, dynamic_labels=dynamic)

    def same_content(self, other: object) -> bool:
        """Equal apart from ``metadata.revision`` (the agent's "has it changed?" test)."""
        if not isinstance(other, KubeCluster):
            return False
        return _without_revision(self) == _without_revision(other)


def _without_revision(cluster: KubeCluster) -> KubeCluster:
    return replace(cluster, metadata=replace(cluster.metadata, revision=""))


HealthStatus: TypeAlias = Literal["healthy", "unhealthy", "unknown"]
HEALTH_STATUSES: tuple[HealthStatus, ...] = ("healthy", "unhealthy", "unknown")


@dataclass(frozen=True)
class Health:
    status: HealthStatus = "unknown"
    reason: str = ""
    checked_at: datetime | None = None

    def __post_init__(self) -> None:
        _set(self, "checked_at", _utc(self.checked_at))


@dataclass(frozen=True)
class KubeServer:
    """One agent's heartbeat for one cluster it serves (stored under ``<host_id>/<cluster name>``)."""

    KIND: ClassVar[str] = "kube_server"
    VERSION: ClassVar[str] = "v3"

    metadata: Metadata  # name = the cluster name; expires = heartbeat TTL; labels = service labels
    host_id: str
    hostname: str  # the agent's public proxy address
    version: str  # the agent's kubeport version
    cluster: KubeCluster  # secret-free, with dynamic label results
    health: Health = field(default_factory=Health)

    @property
    def name(self) -> str:
        return self.metadata.name

    def store_name(self) -> str:
        return f"{self.host_id}/{self.metadata.name}"

    def all_labels(self) -> dict[str, str]:
        """Teleport's precedence, lowest first: cluster static labels, the server's (service) labels,
        dynamic label results."""
        return combine(combine(self.cluster.metadata.labels, self.metadata.labels), self.cluster.results())


@dataclass(frozen=True)
class Rule:
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def __post_init__(self) -> None:
        _set(self, "resources", tuple(self.resources))
        _set(self, "verbs", tuple(self.verbs))


@dataclass(frozen=True)
class RoleConditions:
    rules: tuple[Rule, ...] = ()
    # label key -> one value or several (glob, or ^regex$), as in Teleport roles
    kubernetes_labels: Mapping[str, str | list[str]] = field(default_factory=dict)
    kubernetes_groups: tuple[str, ...] = ()
    kubernetes_users: tuple[str, ...] = ()
    # {kind, namespace, name, verbs} (+ api_group in v8), as written; verbs default to ["*"] before v7 (the
    # codec fills them in); the defaults per role version are applied by authorization (kube_access)
    kubernetes_resources: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _set(self, "rules", tuple(self.rules))
        _set(self, "kubernetes_labels", dict(self.kubernetes_labels))
        for name in ("kubernetes_groups", "kubernetes_users", "kubernetes_resources"):
            _set(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class Role:
    KIND: ClassVar[str] = "role"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v3", "v4", "v5", "v6", "v7", "v8")
    VERSION: ClassVar[str] = "v7"  # the default for new roles

    metadata: Metadata
    allow: RoleConditions = field(default_factory=RoleConditions)
    deny: RoleConditions = field(default_factory=RoleConditions)
    options: Mapping[str, Any] = field(default_factory=dict)
    version: str = "v7"  # stored as given: kubernetes_resources defaults depend on it

    def __post_init__(self) -> None:
        _set(self, "options", dict(self.options))

    @property
    def name(self) -> str:
        return self.metadata.name

    def max_session_ttl(self) -> timedelta:
        """``spec.options.max_session_ttl`` (a Go duration), or :data:`DEFAULT_MAX_SESSION_TTL` when unset or
        zero (Teleport's reading of both). The codec validated the text; anything unparsable here (a record
        written by a newer registry) falls back to the default rather than failing every request."""
        raw = self.options.get("max_session_ttl")
        if raw is None:
            return DEFAULT_MAX_SESSION_TTL
        try:
            seconds = parse_go_duration(raw, what="max_session_ttl")
        except LabelError:
            return DEFAULT_MAX_SESSION_TTL
        return timedelta(seconds=seconds) if seconds > 0 else DEFAULT_MAX_SESSION_TTL


def max_session_ttl(roles: Sequence[Role]) -> timedelta:
    """The session cap of a set of roles: the strictest of them (Teleport); the default with no roles."""
    return min((role.max_session_ttl() for role in roles), default=DEFAULT_MAX_SESSION_TTL)


@dataclass(frozen=True)
class User:
    KIND: ClassVar[str] = "user"
    VERSION: ClassVar[str] = "v2"

    metadata: Metadata
    roles: tuple[str, ...] = ()
    traits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _set(self, "roles", tuple(self.roles))
        _set(self, "traits", {key: tuple(values) for key, values in self.traits.items()})

    @property
    def name(self) -> str:
        return self.metadata.name


@dataclass(frozen=True)
class Token:
    """A join token. ``metadata.name`` is the secret value itself (Teleport's ``ProvisionTokenV2``)."""

    KIND: ClassVar[str] = "token"
    VERSION: ClassVar[str] = "v2"

    metadata: Metadata
    roles: tuple[str, ...] = ("Kube",)
    join_method: str = "token"

    def __post_init__(self) -> None:
        _set(self, "roles", tuple(self.roles))

    @property
    def name(self) -> str:
        return self.metadata.name

    def __repr__(self) -> str:
        return f"Token(roles={self.roles!r}, join_method={self.join_method!r}, expires={self.metadata.expires!r})"


@dataclass(frozen=True)
class ClaimMapping:
    """One ``claims_to_roles`` entry of an OIDC connector: when ID token claim ``claim`` equals ``value`` (or,
    for a list claim such as ``groups``, contains it), the user gets ``roles``."""

    claim: str
    value: str
    roles: tuple[str, ...]

    def __post_init__(self) -> None:
        _set(self, "roles", tuple(self.roles))


@dataclass(frozen=True)
class OIDCConnector:
    """An OIDC single sign-on connector (Teleport's ``kind: oidc``, ``version: v3``); see ``codec_oidc``.

    ``client_secret`` is a secret: excluded from ``repr`` and only shown with ``--with-secrets``."""

    KIND: ClassVar[str] = "oidc"
    VERSION: ClassVar[str] = "v3"

    metadata: Metadata
    issuer_url: str
    client_id: str
    redirect_url: str
    claims_to_roles: tuple[ClaimMapping, ...]
    client_secret: str = field(default="", repr=False)
    scope: tuple[str, ...] = ()  # extra scopes; "openid" is always asked for
    max_age: str | None = None  # Go duration: how recent the provider's own login must be
    username_claim: str = "email"  # the claim that names the kubeport user
    display: str = ""

    def __post_init__(self) -> None:
        _set(self, "claims_to_roles", tuple(self.claims_to_roles))
        _set(self, "scope", tuple(self.scope))

    @property
    def name(self) -> str:
        return self.metadata.name

    def max_age_seconds(self) -> int | None:
        return int(parse_go_duration(self.max_age)) if self.max_age is not None else None


Resource: TypeAlias = KubeCluster | KubeServer | Role | User | Token | OIDCConnector


# -- join token policy ------------------------------------------------------------------------------------


def mask_token(value: str) -> str:
    """A token value as listings and audit events show it: enough to tell tokens apart, never enough to use.

    At most one eighth of the value (and never more than 4 characters) stays visible; a value shorter than
    :data:`MIN_TOKEN_LENGTH` (legacy or hostile) is masked whole.
    """
    keep = min(_MASK_MAX_KEEP, len(value) // 8) if len(value) >= MIN_TOKEN_LENGTH else 0
    return value[:keep] + "*" * max(len(value) - keep, _MASK_MIN_STARS)


def check_token_value(value: str) -> str | None:
    """Why ``value`` cannot be a join token (None when it can). Messages never include the value."""
    if len(value) < MIN_TOKEN_LENGTH:
        return f"a join token must be at least {MIN_TOKEN_LENGTH} characters long (got {len(value)})"
    if len(value) > MAX_TOKEN_LENGTH:
        return f"a join token must be at most {MAX_TOKEN_LENGTH} characters long (got {len(value)})"
    if not TOKEN_VALUE_RE.match(value):
        return "a join token may contain only ASCII letters, digits, '.', '_' and '-'"
    return None


def check_token_expiry(expires: datetime | None, now: datetime) -> str | None:
    """Why a token expiring at ``expires`` cannot be stored at ``now`` (None when it can): tokens always
    expire, in the future, and at most :data:`MAX_TOKEN_TTL` from now."""
    if expires is None:
        return "metadata.expires is required (join tokens always expire)"
    expires = _utc(expires)
    assert expires is not None
    if expires <= now:
        return f"metadata.expires {expires.isoformat()} is not in the future"
    if expires - now > MAX_TOKEN_TTL:
        return f"metadata.expires must be at most {MAX_TOKEN_TTL.days} days from now (got {expires.isoformat()})"
    return None
