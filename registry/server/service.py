"""The registry's rules over a Store: resources with authorization and audit, tokens, joining, certificates.

HTTP handlers (``registry.server.api``) parse requests and call this; this module never sees HTTP.

Invariants:
- Every write is validated as a model first (``registry.core.codec``); stored values are wire dicts
  *with* secrets and *without* ``metadata.revision`` (the store's revision is the truth and is added on
  the way out). Reads work on those dicts directly, so listing 10k clusters re-validates nothing.
- Secrets leave only on request (``with_secrets``) and only to callers allowed to ``read`` the kind;
  token values are masked in listings and never written to the audit log.
- Every mutation is followed by one audit event (kind ``audit`` in the same store). The mutation and its
  event are two writes: a crash between them loses the event, never the mutation.
- kube_clusters written through the API always carry ``kubeport.dev/origin: dynamic``.
"""

from __future__ import annotations

import builtins
import json
import re
import secrets
import shlex
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from labels import LabelError, validate_labels, validate_selector_items
from registry import __version__
from registry.core import codec
from registry.core.errors import AccessDenied, BadParameter, NotFound
from registry.core.identity import (
    AGENT_TTL,
    USER_TTL,
    CertAuthority,
    Identity,
)
from registry.core.resources import (
    ORIGIN_LABEL,
    CommandLabel,
    KubeCluster,
    KubeServer,
    Resource,
    Role,
    Token,
    User,
)
from registry.server import authz
from registry.server.authz import Caller
from registry.store import Record, Store

AUDIT_KIND = "audit"
AGENT_KIND = "kube_agent"
MAX_AGENT_FAILURES = 1000
MAX_LABEL_ERRORS_PER_CLUSTER = 64
AUDIT_COMMAND_CHARS = 500
EVENT_LINE_CACHE = 4096
AUDIT_RETENTION = 30 * 24 * 3600.0  # seconds an audit event is kept (it expires like any TTL record)
MAX_TOKEN_TTL = timedelta(days=30)
MAX_USER_CERT_TTL = timedelta(days=7)
MAX_HEARTBEAT_TTL = 3600.0
HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Audit event names per (kind, action), Teleport's where it has one.
_AUDIT_NAMES = {"kube_cluster": "kube"}


def mask_token(value: str) -> str:
    """Enough of a token to tell tokens apart in listings and audit events, never enough to use it."""
    return value[:4] + "****"


def validate_agent_record(host_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """An agent's self-description: who it is, what its ``resources`` select, what failed to register, and
    which dynamic labels fail there (``label_errors``: cluster -> key -> error value, refusals included)."""
    known = {
        "host_id",
        "nodename",
        "hostname",
        "version",
        "resources",
        "labels",
        "static_clusters",
        "failed",
        "label_errors",
        "expires_in",
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadParameter(f"kube_agent: unknown field {unknown[0]}")
    if body.get("host_id") != host_id:
        raise BadParameter("kube_agent: host_id does not match the URL")
    for key in ("nodename", "hostname", "version"):
        if not isinstance(body.get(key, ""), str) or len(body.get(key, "")) > 253:
            raise BadParameter(f"kube_agent: {key} must be a string of at most 253 characters")
    try:
        resources = validate_selector_items(body.get("resources", []))
        labels = validate_labels(body.get("labels", {}), what="kube_agent labels")
    except LabelError as err:
        raise BadParameter(f"kube_agent: {err}") from None
    static = body.get("static_clusters", [])
    if not isinstance(static, list) or not all(isinstance(n, str) for n in static):
        raise BadParameter("kube_agent: static_clusters must be a list of names")
    failed = body.get("failed", {})
    if not isinstance(failed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in failed.items()):
        raise BadParameter("kube_agent: failed must map cluster names to error messages")
    label_errors = body.get("label_errors", {})
    if not isinstance(label_errors, dict) or not all(
        isinstance(name, str)
        and isinstance(errors, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in errors.items())
        for name, errors in label_errors.items()
    ):
        raise BadParameter("kube_agent: label_errors must map cluster names to {label key: error value}")
    expires_in = body.get("expires_in", 600)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in < 1:
        raise BadParameter("kube_agent: expires_in must be a number of seconds >= 1")
    return {
        "host_id": host_id,
        "nodename": body.get("nodename", ""),
        "hostname": body.get("hostname", ""),
        "version": body.get("version", ""),
        "resources": resources,
        "labels": labels,
        "static_clusters": static[:10_000],
        "failed": {k: v[:1000] for k, v in list(failed.items())[:MAX_AGENT_FAILURES]},
        "label_errors": {
            name: {k: v[:1000] for k, v in list(errors.items())[:MAX_LABEL_ERRORS_PER_CLUSTER]}
            for name, errors in list(label_errors.items())[:MAX_AGENT_FAILURES]
        },
        "expires_in": expires_in,
    }


def changed_dynamic_labels(new: Mapping[str, CommandLabel], old: Mapping[str, CommandLabel]) -> list[str]:
    """Keys ``new`` adds or changes (command, period or schedule) compared with ``old``. Removing a label
    is not a change that needs the grant: it starts no command (deleting the cluster does not either)."""
    return sorted(key for key, label in new.items() if old.get(key) != label)


def _dynamic_label_audit(resource: Resource, stored: Resource | None) -> dict[str, Any]:
    """Audit fields naming the dynamic labels a write set or changed, with their commands (shortened)."""
    if not isinstance(resource, KubeCluster):
        return {}
    before = stored.dynamic_labels if isinstance(stored, KubeCluster) else {}
    changed = changed_dynamic_labels(resource.dynamic_labels, before)
    if not changed:
        return {}
    return {
        "dynamic_labels": {
            key: shlex.join(resource.dynamic_labels[key].command)[:AUDIT_COMMAND_CHARS] for key in changed[:64]
        }
    }


def record_to_wire(record: Record, *, with_secrets: bool) -> dict[str, Any]:
    """The stored wire dict with the store revision filled in and secrets removed unless asked for."""
    value = dict(record.value)
    metadata = dict(value.get("metadata") or {})
    metadata["revision"] = str(record.revision)
    value["metadata"] = metadata
    if not with_secrets:
        if record.kind == "kube_cluster" and isinstance(value.get("spec"), dict):
            spec = dict(value["spec"])
            spec.pop("kubeconfig", None)
            value["spec"] = spec
        if record.kind == "token":
            metadata["name"] = mask_token(str(metadata.get("name", "")))
    return value


def _store_name(resource: Resource) -> str:
    if isinstance(resource, KubeServer):
        return resource.store_name()
    return resource.metadata.name


def _expires_ts(resource: Resource) -> float | None:
    expires = resource.metadata.expires
    return expires.timestamp() if expires is not None else None


def _to_store_value(resource: Resource) -> dict[str, Any]:
    value = codec.resource_to_dict(resource, with_secrets=True)
    value.get("metadata", {}).pop("revision", None)
    return value


class Registry:
    """Business operations; one instance per running registry, shared by all requests."""

    def __init__(
        self,
        store: Store,
        ca: CertAuthority,
        *,
        cluster_name: str,
        clock: Any = time.time,
    ) -> None:
        self.store = store
        self.ca = ca
        self.cluster_name = cluster_name
        self.clock = clock
        self._event_lines: dict[tuple[int, str, bool], bytes] = {}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    # -- callers -------------------------------------------------------------------------------------

    async def caller_for(self, identity: Identity) -> Caller:
        """Resolve a verified identity to a Caller; users get the roles their certificate names."""
        if identity.kind == "registry":
            raise AccessDenied("access denied: the registry's own certificate cannot be used as a client")
        roles: list[Role] = []
        if identity.kind == "user":
            for role_name in identity.roles:
                try:
                    record = await self.store.get("role", role_name)
                except NotFound:
                    continue  # a deleted role grants nothing
                role = codec.resource_from_dict(record.value)
                assert isinstance(role, Role)
                roles.append(role)
        return Caller(identity=identity, roles=tuple(roles))

    # -- audit ---------------------------------------------------------------------------------------

    async def audit(self, event: str, caller: Caller | None, **fields: Any) -> None:
        value: dict[str, Any] = {
            "event": event,
            "time": self.now().isoformat().replace("+00:00", "Z"),
            "success": fields.pop("success", True),
        }
        if caller is not None:
            value["user"] = caller.name
            value["identity_kind"] = caller.kind
        value.update({k: v for k, v in fields.items() if v is not None})
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        await self.store.create(AUDIT_KIND, name, value, expires=self.clock() + AUDIT_RETENTION)

    async def events(self, caller: Caller, *, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        authz.check(caller, "event", "list")
        records = await self.store.list(AUDIT_KIND)
        values = [r.value for r in records if event is None or r.value.get("event") == event]
        return values[-limit:] if limit > 0 else values

    # -- resources -----------------------------------------------------------------------------------

    def _prepare(self, caller: Caller, resource: Resource) -> Resource:
        if isinstance(resource, KubeCluster):
            labels = dict(resource.metadata.labels)
            labels[ORIGIN_LABEL] = "dynamic"
            resource = replace(resource, metadata=replace(resource.metadata, labels=labels))
            if resource.allow_exec_plugins and caller.kind != "admin":
                raise AccessDenied(
                    f'access denied: kube_cluster "{resource.name}": only the admin identity may set '
                    "spec.allow_exec_plugins (exec plugins run code on every agent that serves the cluster)"
                )
        if isinstance(resource, KubeServer):
            raise BadParameter("kube_server resources are written by agents through the heartbeat API")
        if isinstance(resource, Token) and resource.metadata.expires is None:
            raise BadParameter(f'token "{mask_token(resource.metadata.name)}": metadata.expires is required')
        return resource

    def _check_dynamic_labels(self, caller: Caller, resource: Resource, action: str, stored: Resource | None) -> None:
        """Setting or changing ``spec.dynamic_labels`` needs the kube_cluster_dynamic_labels grant (create for a
        new cluster, update for a change); a write that leaves them as stored, or only removes some, does not."""
        if isinstance(resource, KubeCluster):
            before = stored.dynamic_labels if isinstance(stored, KubeCluster) else {}
            if changed_dynamic_labels(resource.dynamic_labels, before):
                authz.check_dynamic_labels(caller, action, resource.name)

    async def create(self, caller: Caller, resource: Resource) -> dict[str, Any]:
        authz.check(caller, resource.KIND, "create")
        resource = self._prepare(caller, resource)
        self._check_dynamic_labels(caller, resource, "create", None)
        record = await self.store.create(
            resource.KIND, _store_name(resource), _to_store_value(resource), expires=_expires_ts(resource)
        )
        await self._audit_write(caller, resource, "create", _dynamic_label_audit(resource, None))
        return record_to_wire(record, with_secrets=False)

    async def update(self, caller: Caller, resource: Resource) -> dict[str, Any]:
        """Replace a resource. A kube_cluster without ``spec.kubeconfig`` (and no cloud spec) keeps the stored
        kubeconfig, so ``kpctl get`` (secrets hidden) -> edit -> ``kpctl create -f`` round-trips."""
        authz.check(caller, resource.KIND, "update")
        resource = self._prepare(caller, resource)
        name = _store_name(resource)
        current = await self.store.get(resource.KIND, name)
        stored = codec.resource_from_dict(current.value) if isinstance(resource, KubeCluster) else None
        self._check_dynamic_labels(caller, resource, "update", stored)
        if (
            isinstance(resource, KubeCluster)
            and not resource.kubeconfig
            and not (resource.aws or resource.azure or resource.gcp)
        ):
            assert isinstance(stored, KubeCluster)
            resource = replace(resource, kubeconfig=stored.kubeconfig)
        expected = int(resource.metadata.revision) if resource.metadata.revision.isdigit() else None
        if (
            expected is None
            and isinstance(resource, KubeCluster)
            and not authz.allowed(caller, authz.DYNAMIC_LABELS, "update")
        ):
            # The dynamic labels were checked against this revision: a concurrent change must not be
            # overwritten (reverted) by a caller who may not change them.
            expected = current.revision
        record = await self.store.update(
            resource.KIND,
            name,
            _to_store_value(resource),
            expected_revision=expected,
            expires=_expires_ts(resource),
        )
        await self._audit_write(caller, resource, "update", _dynamic_label_audit(resource, stored))
        return record_to_wire(record, with_secrets=False)

    async def delete(self, caller: Caller, kind: str, name: str) -> None:
        authz.check(caller, kind, "delete")
        await self.store.delete(kind, name)
        audit_kind = _AUDIT_NAMES.get(kind, kind)
        shown = mask_token(name) if kind == "token" else name
        await self.audit(f"{audit_kind}.delete", caller, kind=kind, name=shown)

    async def _audit_write(
        self, caller: Caller, resource: Resource, action: str, extra: Mapping[str, Any] | None = None
    ) -> None:
        audit_kind = _AUDIT_NAMES.get(resource.KIND, resource.KIND)
        name = resource.metadata.name
        if isinstance(resource, Token):
            name = mask_token(name)
        await self.audit(f"{audit_kind}.{action}", caller, kind=resource.KIND, name=name, **(extra or {}))

    async def get(self, caller: Caller, kind: str, name: str, *, with_secrets: bool = False) -> dict[str, Any]:
        authz.check(caller, kind, "read")
        return record_to_wire(await self.store.get(kind, name), with_secrets=with_secrets)

    async def list(
        self,
        caller: Caller,
        kind: str,
        *,
        with_secrets: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        authz.check(caller, kind, "list")
        if with_secrets:
            authz.check(caller, kind, "read")
        records = await self.store.list(kind, labels=labels or None)
        return [record_to_wire(r, with_secrets=with_secrets) for r in records]

    # -- heartbeats ----------------------------------------------------------------------------------

    async def heartbeat(self, caller: Caller, server: KubeServer) -> dict[str, Any]:
        authz.check(caller, "kube_server", "update")
        authz.check_heartbeat_owner(caller, server.host_id)
        now = self.clock()
        expires = _expires_ts(server)
        if expires is None or expires <= now:
            raise BadParameter(f'kube_server "{server.metadata.name}": metadata.expires must be in the future')
        expires = min(expires, now + MAX_HEARTBEAT_TTL)
        record = await self.store.put("kube_server", server.store_name(), _to_store_value(server), expires=expires)
        return record_to_wire(record, with_secrets=False)

    async def delete_heartbeat(self, caller: Caller, host_id: str, name: str) -> None:
        authz.check(caller, "kube_server", "delete")
        authz.check_heartbeat_owner(caller, host_id)
        await self.store.delete("kube_server", f"{host_id}/{name}")

    # -- agent records (what each agent selects, for kpctl kube explain) ----------------------------

    async def put_agent(self, caller: Caller, host_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        authz.check(caller, "kube_server", "update")
        authz.check_heartbeat_owner(caller, host_id)
        record = validate_agent_record(host_id, body)
        now = self.clock()
        expires = min(float(record.pop("expires_in")), MAX_HEARTBEAT_TTL)
        record["expires"] = datetime.fromtimestamp(now + expires, tz=UTC).isoformat().replace("+00:00", "Z")
        stored = await self.store.put(AGENT_KIND, host_id, record, expires=now + expires)
        return dict(stored.value)

    async def list_agents(self, caller: Caller) -> builtins.list[dict[str, Any]]:
        authz.check(caller, "kube_server", "list")
        return [dict(r.value) for r in await self.store.list(AGENT_KIND)]

    async def delete_agent(self, caller: Caller, host_id: str) -> None:
        authz.check(caller, "kube_server", "delete")
        authz.check_heartbeat_owner(caller, host_id)
        await self.store.delete(AGENT_KIND, host_id)

    # -- tokens and joining --------------------------------------------------------------------------

    async def generate_token(
        self, caller: Caller, *, roles: tuple[str, ...], ttl: timedelta, value: str | None = None
    ) -> dict[str, Any]:
        authz.check(caller, "token", "create")
        if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
            raise BadParameter(f"token ttl must be between 1s and {MAX_TOKEN_TTL.days} days (got {ttl})")
        token_value = value or secrets.token_hex(16)
        doc = {
            "kind": "token",
            "version": "v2",
            "metadata": {
                "name": token_value,
                "expires": (self.now() + ttl).isoformat().replace("+00:00", "Z"),
            },
            "spec": {"roles": list(roles), "join_method": "token"},
        }
        token = codec.resource_from_dict(doc, source="token")
        assert isinstance(token, Token)
        record = await self.store.create(
            "token", token.metadata.name, _to_store_value(token), expires=_expires_ts(token)
        )
        await self._audit_write(caller, token, "create")
        return record_to_wire(record, with_secrets=True)

    async def join(
        self, *, token: str, host_id: str | None, nodename: str, csr_pem: bytes, client: str
    ) -> dict[str, Any]:
        """Exchange a valid ``Kube`` token and a CSR for an agent certificate (the key stays on the agent)."""
        host_id = host_id or str(uuid.uuid4())
        if not HOST_ID_RE.match(host_id):
            raise BadParameter(f"invalid host_id {host_id!r}: use letters, digits, '.', '_' and '-' (max 128)")
        if not nodename or len(nodename) > 64:  # it becomes the certificate's CN (X.509: at most 64)
            raise BadParameter(f"nodename must be 1..64 characters (got {len(nodename)})")
        try:
            record = await self.store.get("token", token)
        except NotFound:
            await self.audit(
                "instance.join",
                None,
                success=False,
                host_id=host_id,
                nodename=nodename,
                client=client,
                token=mask_token(token),
                error="unknown or expired token",
            )
            raise AccessDenied(
                f'"{nodename}" can not join the cluster with role "Kube": the token is not valid (unknown or expired)'
            ) from None
        roles = [str(r) for r in record.value.get("spec", {}).get("roles", [])]
        if "Kube" not in roles:
            raise AccessDenied(f'"{nodename}" can not join the cluster with role "Kube": the token grants {roles}')
        identity = Identity(name=nodename, kind="agent", roles=("Kube",), host_id=host_id)
        cert = self.ca.sign_csr(csr_pem, identity, ttl=AGENT_TTL, now=self.now())
        await self.audit(
            "instance.join", None, host_id=host_id, nodename=nodename, client=client, token=mask_token(token)
        )
        return {"host_id": host_id, "cert_pem": cert.decode(), "ca_pems": [self.ca.cert_pem.decode()]}

    async def renew(self, caller: Caller, csr_pem: bytes) -> dict[str, Any]:
        """Re-issue the caller's own identity for a new key (agents and users renew before expiry)."""
        identity = caller.identity
        if identity.kind not in ("agent", "user"):
            raise AccessDenied(f"access denied: {caller.describe()} cannot renew its certificate")
        ttl = AGENT_TTL if identity.kind == "agent" else USER_TTL
        fresh = Identity(name=identity.name, kind=identity.kind, roles=identity.roles, host_id=identity.host_id)
        cert = self.ca.sign_csr(csr_pem, fresh, ttl=ttl, now=self.now())
        return {"cert_pem": cert.decode(), "ca_pems": [self.ca.cert_pem.decode()]}

    async def sign_user(self, caller: Caller, *, user: str, csr_pem: bytes, ttl: timedelta) -> dict[str, Any]:
        """Admin-only: a certificate for an existing user (like ``tctl auth sign``), roles from the user."""
        authz.check_admin(caller, "sign user certificates")
        if ttl <= timedelta(0) or ttl > MAX_USER_CERT_TTL:
            raise BadParameter(f"ttl must be between 1s and {MAX_USER_CERT_TTL.days} days (got {ttl})")
        try:
            record = await self.store.get("user", user)
        except NotFound:
            raise NotFound(f'user "{user}" not found; create it first with kpctl create') from None
        model = codec.resource_from_dict(record.value)
        assert isinstance(model, User)
        identity = Identity(name=user, kind="user", roles=tuple(model.roles))
        cert = self.ca.sign_csr(csr_pem, identity, ttl=ttl, now=self.now())
        await self.audit("cert.create", caller, name=user, ttl=str(ttl))
        return {"cert_pem": cert.decode(), "ca_pems": [self.ca.cert_pem.decode()]}

    # -- watch ---------------------------------------------------------------------------------------

    async def check_watch(self, caller: Caller, kinds: tuple[str, ...], with_secrets: bool) -> None:
        for kind in kinds:
            authz.check(caller, kind, "list")
            authz.check(caller, kind, "read")

    def event_to_wire(self, event_type: str, record: Record, *, with_secrets: bool) -> dict[str, Any]:
        return {
            "type": event_type,
            "revision": record.revision,
            "kind": record.kind,
            "name": record.name,
            "resource": record_to_wire(record, with_secrets=with_secrets),
        }

    def event_line(self, event_type: str, record: Record, *, with_secrets: bool) -> bytes:
        """One watch line, encoded once and shared by every watcher (100 watchers, one json.dumps)."""
        key = (record.revision, event_type, with_secrets)
        line = self._event_lines.get(key)
        if line is None:
            wire = self.event_to_wire(event_type, record, with_secrets=with_secrets)
            line = json.dumps(wire, separators=(",", ":")).encode() + b"\n"
            self._event_lines[key] = line
            if len(self._event_lines) > EVENT_LINE_CACHE:
                self._event_lines.pop(next(iter(self._event_lines)))  # oldest first (insertion order)
        return line

    def ping(self) -> dict[str, Any]:
        return {
            "cluster_name": self.cluster_name,
            "version": __version__,
            "ca_pin": self.ca.pin,
            "server_time": self.now().isoformat().replace("+00:00", "Z"),
        }
