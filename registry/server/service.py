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
- The audit log is bounded: events expire after 30 days, and beyond ``max_audit_events`` rows the oldest are
  deleted. Rows are not counted per write (a COUNT is O(rows)): each registry keeps an estimate (its last
  count + its own writes - its own trims) and counts again only when the estimate passes the cap, after
  writing a quarter of the room its last count left (at least the headroom, 2% of the cap), and at least
  every ``AUDIT_RECOUNT_INTERVAL`` seconds while it writes (other replicas' writes, expiry). Deletions are
  decided on a fresh count only (an estimate never deletes a row the cap allows), and a trim goes down to
  the cap less the headroom, so the next count is a headroom of writes away. One registry: the table
  exceeds the cap by at most one write (a batch) until that write's own trim (writes landing while a trim
  runs are trimmed by the next write's). R registries on one store: each
  writes at most max(headroom, room/4) + one batch between its counts, so the table exceeds the cap by at
  most (R - 1) x that (less if AUDIT_RECOUNT_INTERVAL comes first), until their next counts trim it.
  Event names sort by time, so listing is a reverse range read of one page, never a read of every row.
- Failures anyone can cause (a join with a bad token) are aggregated (``registry.server.aggregate``): at
  most one row per (event, source, reason) per ``audit_window`` seconds, with a ``count``. The first
  failure of a quiet source is written at once; the rest when the window closes (``flush_audit``, run
  every second by ``serve_registry``) or on shutdown (``flush_audit(drain=True)``): a crash loses at most
  the counts of the current window.
- kube_clusters written through the API always carry ``kubeport.dev/origin: dynamic``.
- Every request acts with the caller's *current* standing: a user's certificate is checked against the
  stored user on every request (deleted user -> 401; its roles are the certificate's roles that the user
  still holds), and renewal never moves a user certificate's expiry later than the one it replaces
  (bots excepted: they renew with a fresh short TTL while they exist, see ``registry.server.bots``).
- kube_server (and kube_agent) writes and deletes go through :meth:`Registry._check_host_write`, whatever
  the route, so an agent touches only its own host's records; heartbeats name clusters that exist.
- Agent host ids are assigned by the registry at join; a join naming a host id that is already in use
  (issued, heartbeating or described) is refused, so a token holder cannot take over another agent.
- One token policy (:func:`registry.core.resources.check_token_value` / ``check_token_expiry``) guards
  every route that writes a token.
"""

from __future__ import annotations

import builtins
import contextlib
import re
import secrets
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import NoneType
from typing import Any, cast

from labels import validate_labels, validate_selector_items
from registry import __version__
from registry.core import codec, validation
from registry.core.errors import AccessDenied, AlreadyExists, BadParameter, KubeportError, NotFound, TooLarge
from registry.core.identity import (
    AGENT_TTL,
    USER_TTL,
    CertAuthority,
    Identity,
)
from registry.core.resources import (
    MAX_TOKEN_TTL,
    ORIGIN_LABEL,
    CommandLabel,
    KubeCluster,
    KubeServer,
    OIDCConnector,
    Resource,
    Role,
    Token,
    User,
    check_token_expiry,
    check_token_value,
    mask_token,
    max_session_ttl,
)
from registry.core.timefmt import format_epoch, format_rfc3339
from registry.core.watch import Delete, Put, ResourceEvent, encode_line
from registry.core.wire import (
    AgentRecord,
    AuditEvent,
    CaBundle,
    Certificate,
    HeartbeatResult,
    JoinResult,
    Ping,
    ResourceBody,
)
from registry.host.metrics import HEARTBEATS
from registry.server import authz
from registry.server.admission import source_of_client
from registry.server.aggregate import FailureAggregator, FailureRow
from registry.server.authz import Caller, effective_roles, user_gone
from registry.server.bots import BotService
from registry.server.frontdoors import FrontDoorDirectory
from registry.store import EncodedValue, Event, Record, Store, Write, encode_value, without_secret_fields

AUDIT_KIND = "audit"
AGENT_KIND = "kube_agent"
HOST_KIND = "agent_host"  # one record per host id the registry issued (kept past the certificate, see join)
HOST_RECORD_GRACE = 30 * 24 * 3600.0  # seconds a host id stays reserved after its last certificate expires
MAX_AGENT_FAILURES = 1000
MAX_LABEL_ERRORS_PER_CLUSTER = 64
AUDIT_COMMAND_CHARS = 500
EVENT_LINE_CACHE = 4096
AUDIT_RETENTION = 30 * 24 * 3600.0  # seconds an audit event is kept (it expires like any TTL record)
MAX_AUDIT_EVENTS = 100_000  # rows kept at most; the oldest go first
AUDIT_WINDOW = 60.0  # seconds over which repeated failures of one source share one audit row
MAX_AUDIT_TRIM = 1000  # rows deleted per store commit of a trim (a trim may take several)
AUDIT_RECOUNT_INTERVAL = 60.0  # seconds after which a writing registry counts the audit rows again
MAX_EVENTS_PAGE = 1000  # events per page of GET /v1/events
EVENTS_SCAN = 10_000  # rows one page may look at to find matches of an ``event`` filter
MAX_USER_CERT_TTL = timedelta(days=7)
MAX_HEARTBEAT_TTL = 3600.0
MAX_HEARTBEAT_BATCH = 512  # kube_servers per batch heartbeat request (the agent sends at most 256)
# What agents may report about the requests they forward (agent/forward/audit.py), and how much.
AGENT_EVENT_TYPES = frozenset({"kube.request", "session.start", "session.end", "audit.dropped"})
MAX_AGENT_EVENTS = 500
MAX_AGENT_EVENT_BYTES = 8192
# The types an agent event's fields may have (JSON's scalars, and lists of them) and its keys.
_AGENT_ITEM_TYPES = frozenset({str, int, float, bool, NoneType})
_AGENT_FIELD_TYPES = _AGENT_ITEM_TYPES | {list}
_STR_TYPE = frozenset({str})
HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Audit event names per (kind, action), Teleport's where it has one.
_AUDIT_NAMES = {"kube_cluster": "kube"}


_FAILURE_ROW_KEYS = frozenset({"event", "time", "success", "client", "error", "count", "first_time", "last_time"})


def _flat_lists(event: dict[str, Any], types: set[type]) -> bool:
    """Whether every list among ``event``'s values (whose types are ``types``) holds only scalars."""
    if list in types:
        for value in event.values():
            if type(value) is list and not set(map(type, value)) <= _AGENT_ITEM_TYPES:
                return False
    return True


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
    with validation.label_errors(subject="kube_agent"):
        resources = validate_selector_items(body.get("resources", []))
        labels = validate_labels(body.get("labels", {}), what="kube_agent labels")
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


def record_to_wire(record: Record, *, with_secrets: bool) -> ResourceBody:
    """The stored wire dict with the store revision filled in and secrets removed unless asked for."""
    value = dict(record.value)
    metadata = dict(value.get("metadata") or {})
    metadata["revision"] = str(record.revision)
    value["metadata"] = metadata
    if not with_secrets:
        value = without_secret_fields(record.kind, value)  # the store's one table of secret fields
        if record.kind == "token":
            metadata["name"] = mask_token(str(metadata.get("name", "")))
    return cast(ResourceBody, value)


def _claimed_name(body: object) -> str:
    """The ``metadata.name`` a refused wire body claims (bounded), to label its error; "" when none."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name[:253] if isinstance(name, str) else ""


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

    # How agents reach this registry, set by serve_registry once it listens (ping reports both, so
    # ``kpctl tokens add`` prints an address agents on other hosts can use, or says why there is none).
    public_addr: str = ""  # the first --public-addr, or "" when none was given
    loopback_only: bool = False  # listening on a loopback address: other hosts cannot connect
    # The Kubernetes front door's address for kubeconfigs (``--kube-public-addr``, else its listen address),
    # set by whoever starts the front door; "" while this registry serves none (kpctl then assumes port 3026).
    kube_public_addr: str = ""
    # "otp" or "off": how local users log in, set by registry.server.local_auth.LocalAuth; ping reports it.
    second_factor: str = "otp"

    def __init__(
        self,
        store: Store,
        ca: CertAuthority,
        *,
        cluster_name: str,
        clock: Any = time.time,
        max_audit_events: int = MAX_AUDIT_EVENTS,
        audit_window: float = AUDIT_WINDOW,
    ) -> None:
        self.store = store
        self.ca = ca
        self.cluster_name = cluster_name
        self.clock = clock
        self._event_lines: dict[tuple[int, str, bool, str, bool], bytes] = {}
        if isinstance(max_audit_events, bool) or not isinstance(max_audit_events, int) or max_audit_events < 1:
            raise BadParameter(f"max_audit_events must be a positive integer (got {max_audit_events!r})")
        self.max_audit_events = max_audit_events
        self.failures = FailureAggregator(clock=clock, window=audit_window)
        # The audit row estimate (module docstring): None until first counted; the own writes since that
        # count; when it was taken (registry clock). A trim leaves the cap less the headroom.
        self._audit_headroom = max(1, max_audit_events // 50)
        self._audit_rows: int | None = None
        self._audit_counted_rows = 0
        self._audit_since_count = 0
        self._audit_counted_at = 0.0
        self._audit_trimming = False
        self._last_audit_ns = 0
        self.bots = BotService(self)  # machine identity: bot-NAME users, their join tokens and renewal
        # The live front doors of every registry sharing the store (ping lists them for agents).
        self.front_doors = FrontDoorDirectory(store, clock=clock)
        # Called with the name after a user is deleted (local credentials register here: registry.server.local_auth).
        self.on_user_deleted: builtins.list[Callable[[str], Awaitable[None]]] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    # -- callers -------------------------------------------------------------------------------------

    def ca_bundle(self) -> CaBundle:
        """What ``GET /v1/ca`` answers (public: joiners check it against their pin)."""
        return {"ca_pems": [self.ca.cert_pem.decode()]}

    async def authenticate(self, peer_cert: bytes) -> Caller:
        """The caller behind a client certificate (DER): verified against the CA now, then resolved with
        its current standing (:meth:`caller_for`)."""
        return await self.caller_for(self.ca.verify(peer_cert, now=self.now()))

    async def caller_for(self, identity: Identity) -> Caller:
        """Resolve a verified identity to a Caller, with the caller's standing *now*, on every request.

        A user certificate is only as good as the stored user behind it: a deleted user is Unauthenticated
        (401) at once, and the roles in effect are the certificate's roles that the user *still* holds (the
        intersection). Removing a role from a user therefore takes its grants away on the next request,
        while adding a role widens no certificate already issued (the user gets a new one, as in Teleport,
        whose certificates also name their roles). A deleted role grants nothing. ``caller.identity.roles``
        is that effective set, so ``whoami`` and renewal see exactly what authorization uses.

        Cost: one store read for the user and one per effective role (no cache: correctness first, and a
        store read is a primary-key lookup).
        """
        if identity.kind == "registry":
            raise AccessDenied("access denied: the registry's own certificate cannot be used as a client")
        if identity.kind != "user":
            return Caller(identity=identity)
        try:
            record = await self.store.get("user", identity.name)
        except NotFound:
            raise user_gone(identity.name) from None
        user = codec.resource_from_dict(record.value)
        assert isinstance(user, User)
        names = effective_roles(identity, user)
        roles = await self._roles(names)
        return Caller(identity=replace(identity, roles=names), roles=roles)

    async def roles_of(self, names: tuple[str, ...]) -> tuple[Role, ...]:
        """The stored roles of ``names`` (a deleted one grants nothing); for login routes outside this class."""
        return await self._roles(names)

    async def _roles(self, names: tuple[str, ...]) -> tuple[Role, ...]:
        """The stored roles of ``names``; a deleted role is skipped (it grants nothing)."""
        roles: list[Role] = []
        for role_name in names:
            try:
                record = await self.store.get("role", role_name)
            except NotFound:
                continue
            role = codec.resource_from_dict(record.value)
            assert isinstance(role, Role)
            roles.append(role)
        return tuple(roles)

    # -- audit ---------------------------------------------------------------------------------------

    async def audit(self, event: str, caller: Caller | None, **fields: Any) -> None:
        name, value = self._audit_entry(event, caller, fields)
        await self.store.create(AUDIT_KIND, name, value, expires=self._audit_expiry())
        await self._audit_written(1)

    def _audit_entry(self, event: str, caller: Caller | None, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self._audit_name(), self._audit_value(event, caller, fields)

    def _audit_expiry(self) -> float:
        return float(self.clock()) + AUDIT_RETENTION

    async def _write_audited(self, write: Write, event: str, caller: Caller, **fields: Any) -> Record:
        """``write`` and its audit event in ONE store commit (``Store.write_many``): a crash keeps both or
        neither, so no change is ever missing from the audit log (and no event names a change that did not
        happen). Returns the written record."""
        name, value = self._audit_entry(event, caller, fields)
        record, _ = await self.store.write_many(
            [write, Write("create", AUDIT_KIND, name, value, expires=self._audit_expiry())]
        )
        await self._audit_written(1)
        return record

    async def audit_many(self, events: builtins.list[tuple[str, Caller | None, dict[str, Any]]]) -> None:
        """Several audit events (``(event, caller, fields)``) in ONE store write (``Store.append_many``: one
        commit, one fsync with SQLite), in order; all are written or none."""
        if not events:
            return
        when = format_epoch(self.clock())  # one receipt time per batch: the events arrived together
        names = self._audit_names(len(events))
        await self._append_audit(
            [
                (name, encode_value(AUDIT_KIND, name, self._audit_value(event, caller, dict(fields), when)))
                for name, (event, caller, fields) in zip(names, events, strict=True)
            ]
        )

    async def _append_audit(self, items: builtins.list[tuple[str, EncodedValue]]) -> None:
        """Write encoded audit rows in one store commit, records not read back, then count them for the trim."""
        await self.store.append_many(AUDIT_KIND, items, expires=self._audit_expiry())
        await self._audit_written(len(items))

    def _audit_value(
        self, event: str, caller: Caller | None, fields: dict[str, Any], when: str | None = None
    ) -> dict[str, Any]:
        value: dict[str, Any] = {
            "event": event,
            "time": when if when is not None else format_epoch(self.clock()),
            "success": fields.pop("success", True),
        }
        if caller is not None:
            value["user"] = caller.name
            value["identity_kind"] = caller.kind
        value.update({k: v for k, v in fields.items() if v is not None})
        return value

    async def _audit_written(self, count: int) -> None:
        """Count ``count`` new audit rows into the estimate; count the table (and trim) when it is due."""
        self._audit_since_count += count
        if self._audit_rows is not None:
            self._audit_rows += count
        if self._audit_trimming or not self._audit_recount_due():
            return
        await self._trim_audit()

    def _audit_recount_due(self) -> bool:
        """Whether the estimate is too stale to trust (module docstring): never counted, over the cap, a quarter
        of the last count's room written by this registry, or the recount interval passed (or the clock
        went back)."""
        if self._audit_rows is None or self._audit_rows > self.max_audit_events:
            return True
        room = (self.max_audit_events - self._audit_counted_rows) // 4
        if self._audit_since_count > max(self._audit_headroom, room):
            return True
        return not 0.0 <= float(self.clock()) - self._audit_counted_at < AUDIT_RECOUNT_INTERVAL

    async def record_agent_events(self, caller: Caller, events: builtins.list[Any]) -> int:
        """Audit events an agent reports for the requests it forwarded (``kube.request``, ``session.*``,
        ``audit.dropped``): only agents may report, each event is a mapping of one of those types, at most
        MAX_AGENT_EVENT_BYTES as stored, of flat fields (strings, numbers, booleans, nulls, lists of those),
        and ``reported_by`` is the caller's host id whatever the body says. Returns how many were kept."""
        if caller.kind != "agent" or not caller.identity.host_id:
            raise AccessDenied(f"access denied: {caller.describe()} may not report access events")
        if len(events) > MAX_AGENT_EVENTS:
            raise BadParameter(f"at most {MAX_AGENT_EVENTS} events per request (got {len(events)})")
        host = caller.identity.host_id
        when = format_epoch(self.clock())  # the registry's receipt time (the agent's own is not trusted)
        names = self._audit_names(len(events))
        items: builtins.list[tuple[str, EncodedValue]] = []
        for index, (name, event) in enumerate(zip(names, events, strict=True)):
            kind = event.get("event") if type(event) is dict else None
            if type(kind) is not str or kind not in AGENT_EVENT_TYPES:
                raise BadParameter(
                    f"event {index}: expected a mapping whose event is one of {', '.join(sorted(AGENT_EVENT_TYPES))}"
                )
            # Flat fields only (the types of keys and values gathered in C, not per field in Python): this
            # also bounds the nesting the API's decode did not walk (api._post_events).
            types = set(map(type, event.values()))
            if (
                not types <= _AGENT_FIELD_TYPES
                or not set(map(type, event)) <= _STR_TYPE
                or not _flat_lists(event, types)
            ):
                raise BadParameter(
                    f"event {index}: fields must be named by strings and hold strings, numbers, booleans, "
                    "nulls or lists of those"
                )
            # The stored row in one pass (what _audit_value makes of it): None values left out, the
            # registry's time, reported_by from the caller whatever the body says.
            value = {k: v for k, v in event.items() if v is not None} if NoneType in types else dict(event)
            value["time"] = when
            value["success"] = event.get("success", True)
            value["reported_by"] = host
            try:  # encoded once: the size bound applies to exactly the text the store writes
                encoded = encode_value(AUDIT_KIND, name, value, MAX_AGENT_EVENT_BYTES)
            except TooLarge:
                raise BadParameter(f"event {index}: more than {MAX_AGENT_EVENT_BYTES} bytes") from None
            except BadParameter:
                raise BadParameter(f"event {index}: not a JSON object of JSON values") from None
            items.append((name, encoded))
        # Validated as a whole first, then written as one store write: a bad batch writes nothing, and a
        # batch of 500 costs one commit (one fsync), not 500.
        await self._append_audit(items)
        return len(items)

    def _audit_names(self, count: int) -> builtins.list[str]:
        """``count`` names as :meth:`_audit_name` makes them, sharing one random suffix (a batch's names
        still differ, by their strictly increasing times)."""
        start = max(time.time_ns(), self._last_audit_ns + 1)
        self._last_audit_ns = start + count - 1
        suffix = secrets.token_hex(4)
        return [f"{start + offset:020d}-{suffix}" for offset in range(count)]

    def _audit_name(self) -> str:
        """A name that sorts by time and, within this process, strictly by write order (pages never
        reorder); the random suffix keeps replicas sharing a store apart."""
        now = max(time.time_ns(), self._last_audit_ns + 1)
        self._last_audit_ns = now
        return f"{now:020d}-{secrets.token_hex(4)}"

    async def _trim_audit(self) -> None:
        """Count the audit rows and, over the cap, delete the oldest down to the cap less the headroom, at most
        MAX_AUDIT_TRIM per commit (one trim at a time; writes meanwhile only add to the estimate)."""
        if self._audit_trimming:
            return
        self._audit_trimming = True
        try:
            self._audit_counted_at = float(self.clock())
            self._audit_since_count = 0
            rows = await self.store.count(AUDIT_KIND)
            # Own writes that landed during the count may be in it or not: count them again (an estimate
            # over the truth only brings the next count closer; one under it would let the table grow).
            self._audit_counted_rows = rows
            self._audit_rows = rows + self._audit_since_count
            excess = rows - self.max_audit_events
            if excess <= 0:
                return
            excess += min(self._audit_headroom, self.max_audit_events - 1)  # leave room for the next writes
            while excess > 0:
                oldest = await self.store.list(AUDIT_KIND, limit=min(excess, MAX_AUDIT_TRIM))
                if not oldest:
                    break
                deleted = await self._delete_audit([record.name for record in oldest])
                excess -= len(oldest)
                self._audit_rows -= deleted
                self._audit_counted_rows -= deleted
        finally:
            self._audit_trimming = False

    async def _delete_audit(self, names: builtins.list[str]) -> int:
        """Delete audit rows in one commit; how many this call deleted (rows that expired or another
        replica trimmed meanwhile are skipped, one at a time)."""
        try:
            await self.store.delete_many(AUDIT_KIND, names)
            return len(names)
        except NotFound:
            deleted = 0
            for name in names:
                with contextlib.suppress(NotFound):
                    await self.store.delete(AUDIT_KIND, name)
                    deleted += 1
            return deleted

    async def audit_failure(self, event: str, *, client: str, reason: str, **fields: Any) -> None:
        """Audit a failure anyone can cause, aggregated per (event, source, reason) (module docstring)."""
        rows = self.failures.record(event, source_of_client(client), reason, fields)
        await self._write_failure_rows(rows)

    async def flush_audit(self, *, drain: bool = False) -> int:
        """Write the aggregated failure rows whose window closed (``drain``: every pending one, for
        shutdown); returns how many rows were written."""
        rows = self.failures.drain() if drain else self.failures.due()
        await self._write_failure_rows(rows)
        return len(rows)

    async def _write_failure_rows(self, rows: builtins.list[FailureRow]) -> None:
        for row in rows:
            extra = {k: v for k, v in row.fields.items() if k not in _FAILURE_ROW_KEYS}
            await self.audit(
                row.event,
                None,
                success=False,
                client=row.source,
                error=row.reason,
                count=row.count,
                first_time=format_epoch(row.first),
                last_time=format_epoch(row.last),
                **extra,
            )

    async def events(
        self, caller: Caller, *, limit: int = 100, event: str | None = None, before: str | None = None
    ) -> tuple[builtins.list[AuditEvent], str | None]:
        """One page of the audit log: up to ``limit`` events older than the cursor ``before`` (newest page
        first; each page oldest first), and the cursor of the next (older) page, None at the end.

        Reads pages of rows newest first and stops at ``limit`` matches or :data:`EVENTS_SCAN` rows, so a
        page costs the same with 100 rows or 10 million. Each event carries its ``id`` (the cursor).
        """
        authz.check(caller, "event", "list")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise BadParameter(f"limit must be a non-negative integer (got {limit!r})")
        limit = min(limit or MAX_EVENTS_PAGE, MAX_EVENTS_PAGE)
        items: builtins.list[AuditEvent] = []
        cursor = before
        scanned = 0
        while len(items) < limit and scanned < EVENTS_SCAN:
            want = limit - len(items) if event is None else min(EVENTS_SCAN - scanned, max(limit, 256))
            page = await self.store.list(AUDIT_KIND, before=cursor, limit=want, reverse=True)
            for record in page:
                scanned += 1
                cursor = record.name
                if event is None or record.value.get("event") == event:
                    items.append({"id": record.name, **record.value})
                    if len(items) >= limit:
                        break
            if len(items) < limit and len(page) < want:  # every row was read: the log ends here
                cursor = None
                break
        items.reverse()
        return items, cursor

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
        if isinstance(resource, Token):
            self._check_token(resource.metadata.name, resource.metadata.expires)
        return resource

    def _check_token(self, value: str, expires: datetime | None) -> None:
        """The one token policy, for every route that writes a token (the value is never echoed)."""
        problem = check_token_value(value) or check_token_expiry(expires, self.now())
        if problem is not None:
            raise BadParameter(f'token "{mask_token(value)}": {problem}')

    def _check_dynamic_labels(self, caller: Caller, resource: Resource, action: str, stored: Resource | None) -> None:
        """Setting or changing ``spec.dynamic_labels`` needs the kube_cluster_dynamic_labels grant (create for a
        new cluster, update for a change); a write that leaves them as stored, or only removes some, does not."""
        if isinstance(resource, KubeCluster):
            before = stored.dynamic_labels if isinstance(stored, KubeCluster) else {}
            if changed_dynamic_labels(resource.dynamic_labels, before):
                authz.check_dynamic_labels(caller, action, resource.name)

    async def create(self, caller: Caller, resource: Resource) -> ResourceBody:
        authz.check(caller, resource.KIND, "create")
        resource = self._prepare(caller, resource)
        self._check_dynamic_labels(caller, resource, "create", None)
        write = Write(
            "create", resource.KIND, _store_name(resource), _to_store_value(resource), expires=_expires_ts(resource)
        )
        record = await self._audit_write(write, caller, resource, "create", _dynamic_label_audit(resource, None))
        return record_to_wire(record, with_secrets=False)

    async def update(self, caller: Caller, resource: Resource) -> ResourceBody:
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
        if isinstance(resource, OIDCConnector) and not resource.client_secret:
            # As for a kubeconfig: get (secret hidden) -> edit -> create -f keeps the stored client secret.
            kept = current.value.get("spec", {}).get("client_secret", "")
            resource = replace(resource, client_secret=kept if isinstance(kept, str) else "")
        expected = int(resource.metadata.revision) if resource.metadata.revision.isdigit() else None
        if (
            expected is None
            and isinstance(resource, KubeCluster)
            and not authz.allowed(caller, authz.DYNAMIC_LABELS, "update")
        ):
            # The dynamic labels were checked against this revision: a concurrent change must not be
            # overwritten (reverted) by a caller who may not change them.
            expected = current.revision
        write = Write(
            "update",
            resource.KIND,
            name,
            _to_store_value(resource),
            expires=_expires_ts(resource),
            expected_revision=expected,
        )
        record = await self._audit_write(write, caller, resource, "update", _dynamic_label_audit(resource, stored))
        return record_to_wire(record, with_secrets=False)

    async def delete(self, caller: Caller, kind: str, name: str) -> None:
        authz.check(caller, kind, "delete")
        if kind == "kube_server":
            host_id, sep, cluster = name.partition("/")
            if not sep:
                raise BadParameter(f'kube_server "{name}": name the heartbeat as <host_id>/<cluster name>')
            await self.delete_heartbeat(caller, host_id, cluster)
            await self.audit("kube_server.delete", caller, kind=kind, name=name)
            return
        audit_kind = _AUDIT_NAMES.get(kind, kind)
        shown = mask_token(name) if kind == "token" else name
        await self._write_audited(Write("delete", kind, name), f"{audit_kind}.delete", caller, kind=kind, name=shown)
        if kind == "user":  # a user created again later must not inherit this one's password or tokens
            for hook in self.on_user_deleted:
                await hook(name)

    async def _audit_write(
        self, write: Write, caller: Caller, resource: Resource, action: str, extra: Mapping[str, Any] | None = None
    ) -> Record:
        """``write`` of ``resource`` with its ``<kind>.<action>`` audit event, in one commit."""
        audit_kind = _AUDIT_NAMES.get(resource.KIND, resource.KIND)
        name = resource.metadata.name
        if isinstance(resource, Token):
            name = mask_token(name)
        return await self._write_audited(
            write, f"{audit_kind}.{action}", caller, kind=resource.KIND, name=name, **(extra or {})
        )

    async def get(self, caller: Caller, kind: str, name: str, *, with_secrets: bool = False) -> ResourceBody:
        authz.check(caller, kind, "read")
        return record_to_wire(await self.store.get(kind, name), with_secrets=with_secrets)

    async def list(
        self,
        caller: Caller,
        kind: str,
        *,
        with_secrets: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[ResourceBody]:
        authz.check(caller, kind, "list")
        if with_secrets:
            authz.check(caller, kind, "read")
        records = await self.store.list(kind, labels=labels or None)
        return [record_to_wire(r, with_secrets=with_secrets) for r in records]

    # -- heartbeats ----------------------------------------------------------------------------------

    def _check_host_write(self, caller: Caller, host_id: str, verb: str) -> None:
        """The one check for every write or delete of a kube_server or kube_agent record, on every route:
        the caller may ``verb`` kube_server, and an agent only for its own host id."""
        authz.check(caller, "kube_server", verb)
        authz.check_heartbeat_owner(caller, host_id)

    async def _check_may_serve(self, server: KubeServer) -> None:
        """A heartbeat names a cluster that exists: a stored kube_cluster (every agent may read and serve
        those), or a static cluster the host declared in its kube_agent record (``static_clusters``)."""
        name = server.metadata.name
        try:
            await self.store.get("kube_cluster", name)
            return
        except NotFound:
            pass
        try:
            record = await self.store.get(AGENT_KIND, server.host_id)
        except NotFound:
            record = None
        if record is not None and name in record.value.get("static_clusters", []):
            return
        raise self._not_served(server)

    async def _may_serve_many(self, host_id: str, names: builtins.list[str]) -> set[str]:
        """The names among ``names`` that host ``host_id`` may heartbeat (the batch form of
        :meth:`_check_may_serve`, same rule): stored kube_clusters, read at once, then the host's static
        clusters for the rest (its kube_agent record, read only when some name is not a stored cluster)."""
        found = await self.store.existing("kube_cluster", names) if names else set()
        rest = [name for name in names if name not in found]
        if rest:
            try:
                record = await self.store.get(AGENT_KIND, host_id)
            except NotFound:
                record = None
            static = record.value.get("static_clusters", []) if record is not None else []
            found.update(name for name in rest if name in static)
        return found

    @staticmethod
    def _not_served(server: KubeServer) -> NotFound:
        name = server.metadata.name
        return NotFound(
            f'kube_server "{server.store_name()}": there is no kube_cluster "{name}" and host '
            f'"{server.host_id}" declares no static cluster of that name (heartbeats name clusters that exist)'
        )

    async def heartbeat(self, caller: Caller, server: KubeServer) -> ResourceBody:
        self._check_host_write(caller, server.host_id, "update")
        await self._check_may_serve(server)
        (record,) = await self.store.write_many([self._heartbeat_write(server)])
        HEARTBEATS.labels("written").inc()
        return record_to_wire(record, with_secrets=False)

    def _heartbeat_write(self, server: KubeServer) -> Write:
        now = self.clock()
        expires = _expires_ts(server)
        if expires is None or expires <= now:
            raise BadParameter(f'kube_server "{server.metadata.name}": metadata.expires must be in the future')
        expires = min(expires, now + MAX_HEARTBEAT_TTL)
        return Write("put", "kube_server", server.store_name(), _to_store_value(server), expires=expires)

    async def heartbeat_many(
        self, caller: Caller, host_id: str, bodies: builtins.list[Any]
    ) -> builtins.list[HeartbeatResult]:
        """One agent's heartbeats for many clusters in ONE store commit (10 agents x 10,000 clusters is
        ~250 heartbeats/s; one commit each would be the registry's whole write budget).

        The caller must be allowed to write this host's heartbeats (else the whole request is refused);
        each heartbeat is then checked on its own (shape, host id, a cluster that exists, expiry), so one
        bad entry (a cluster deleted a moment ago) fails alone: its result carries the Status, the others
        are written together. Results are in the order given."""
        self._check_host_write(caller, host_id, "update")
        if not isinstance(bodies, builtins.list) or len(bodies) > MAX_HEARTBEAT_BATCH:
            raise BadParameter(f"a batch heartbeat takes a list of at most {MAX_HEARTBEAT_BATCH} kube_servers")
        results: builtins.list[HeartbeatResult] = []
        decoded: dict[int, KubeServer] = {}  # index -> a well-formed heartbeat of this host
        seen: set[str] = set()
        for index, body in enumerate(bodies):
            name = ""
            try:
                server = codec.resource_from_dict(body, source=f"heartbeat {index}")
                if not isinstance(server, KubeServer):
                    raise BadParameter(f"heartbeat {index} must be a kube_server")
                name = server.metadata.name
                if server.host_id != host_id:
                    raise BadParameter(f'heartbeat {index}: host_id "{server.host_id}" does not match the URL')
                if name in seen:
                    raise BadParameter(f'heartbeat {index}: kube_server "{name}" is given twice')
                seen.add(name)
                decoded[index] = server
                results.append({"name": name})
            except KubeportError as err:
                if not name:
                    name = _claimed_name(body)
                results.append({"name": name, "error": err.to_status()})
        # Which clusters exist: one store read for the whole batch (one per heartbeat was most of its cost).
        may_serve = await self._may_serve_many(host_id, [server.metadata.name for server in decoded.values()])
        writes: builtins.list[Write] = []
        for index, server in decoded.items():
            try:
                if server.metadata.name not in may_serve:
                    raise self._not_served(server)
                writes.append(self._heartbeat_write(server))
            except KubeportError as err:
                results[index] = {"name": server.metadata.name, "error": err.to_status()}
        if writes:
            await self.store.write_many(writes)  # puts: nothing in the batch can fail to plan
        HEARTBEATS.labels("written").inc(len(writes))
        if len(writes) < len(results):
            HEARTBEATS.labels("refused").inc(len(results) - len(writes))
        return results

    async def delete_heartbeat(self, caller: Caller, host_id: str, name: str) -> None:
        self._check_host_write(caller, host_id, "delete")
        await self.store.delete("kube_server", f"{host_id}/{name}")

    # -- agent records (what each agent selects, for kpctl kube explain) ----------------------------

    async def put_agent(self, caller: Caller, host_id: str, body: Mapping[str, Any]) -> AgentRecord:
        self._check_host_write(caller, host_id, "update")
        record = validate_agent_record(host_id, body)
        now = self.clock()
        expires = min(float(record.pop("expires_in")), MAX_HEARTBEAT_TTL)
        record["expires"] = format_epoch(now + expires)
        stored = await self.store.put(AGENT_KIND, host_id, record, expires=now + expires)
        return cast(AgentRecord, dict(stored.value))

    async def list_agents(self, caller: Caller) -> builtins.list[AgentRecord]:
        authz.check(caller, "kube_server", "list")
        return [cast(AgentRecord, dict(r.value)) for r in await self.store.list(AGENT_KIND)]

    async def delete_agent(self, caller: Caller, host_id: str) -> None:
        self._check_host_write(caller, host_id, "delete")
        await self.store.delete(AGENT_KIND, host_id)

    # -- tokens and joining --------------------------------------------------------------------------

    async def generate_token(
        self, caller: Caller, *, roles: tuple[str, ...], ttl: timedelta, value: str | None = None
    ) -> ResourceBody:
        authz.check(caller, "token", "create")
        if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
            raise BadParameter(f"token ttl must be between 1s and {MAX_TOKEN_TTL.days} days (got {ttl})")
        token_value = value or secrets.token_hex(16)
        expires = self.now() + ttl
        self._check_token(token_value, expires)
        doc = {
            "kind": "token",
            "version": "v2",
            "metadata": {"name": token_value, "expires": format_rfc3339(expires, fraction="micro")},
            "spec": {"roles": list(roles), "join_method": "token"},
        }
        token = codec.resource_from_dict(doc, source="token")
        assert isinstance(token, Token)
        write = Write("create", "token", token.metadata.name, _to_store_value(token), expires=_expires_ts(token))
        record = await self._audit_write(write, caller, token, "create")
        return record_to_wire(record, with_secrets=True)

    async def join(self, *, token: str, host_id: str | None, nodename: str, csr_pem: bytes, client: str) -> JoinResult:
        """Exchange a valid ``Kube`` token and a CSR for an agent certificate (the key stays on the agent).

        The registry assigns the host id (a fresh UUID). A joiner may still name one (agents before this
        rule did), but only an id nobody holds: one the registry ever issued (an ``agent_host`` record,
        kept for :data:`HOST_RECORD_GRACE` after its last certificate expires), or with live heartbeats or
        a kube_agent record, is refused, so a token holder cannot take over another agent's heartbeats.
        An agent keeps its id by renewing with its certificate, never by joining again.
        """
        requested = host_id
        host_id = host_id or str(uuid.uuid4())
        if not HOST_ID_RE.match(host_id):
            raise BadParameter(f"invalid host_id {host_id[:140]!r}: use letters, digits, '.', '_' and '-' (max 128)")
        if not nodename or len(nodename) > 64:  # it becomes the certificate's CN (X.509: at most 64)
            raise BadParameter(f"nodename must be 1..64 characters (got {len(nodename)})")
        try:
            record = await self.store.get("token", token)
        except NotFound:
            await self.audit_failure(
                "instance.join",
                client=client,
                reason="unknown or expired token",
                host_id=host_id,
                nodename=nodename,
                token=mask_token(token),
            )
            raise AccessDenied(
                f'"{nodename}" can not join the cluster with role "Kube": the token is not valid (unknown or expired)'
            ) from None
        roles = [str(r) for r in record.value.get("spec", {}).get("roles", [])]
        if "Kube" not in roles:
            raise AccessDenied(f'"{nodename}" can not join the cluster with role "Kube": the token grants {roles}')
        now = self.now()
        not_after = min(now + AGENT_TTL, self.ca.expires)
        try:
            if requested is not None and await self._host_in_use(host_id):
                raise AlreadyExists(host_id)
            # Claiming the id is one atomic create: two joins racing for the same id cannot both win.
            await self.store.create(
                HOST_KIND, host_id, self._host_record(host_id, nodename), expires=self._host_expiry(not_after)
            )
        except AlreadyExists:
            await self.audit_failure(
                "instance.join",
                client=client,
                reason="host id already in use",
                host_id=host_id,
                nodename=nodename,
                token=mask_token(token),
            )
            raise AccessDenied(
                f'"{nodename}" can not join with host id "{host_id}": that host id belongs to an agent that already '
                "joined. Host ids are assigned by the registry: join without one (delete the agent's host_uuid "
                "file); a joined agent keeps its id by renewing its certificate"
            ) from None
        identity = Identity(name=nodename, kind="agent", roles=("Kube",), host_id=host_id)
        cert = self.ca.sign_csr(csr_pem, identity, ttl=not_after - now, now=now)
        await self.audit(
            "instance.join", None, host_id=host_id, nodename=nodename, client=client, token=mask_token(token)
        )
        return {"host_id": host_id, "cert_pem": cert.decode(), "ca_pems": [self.ca.cert_pem.decode()]}

    async def _host_in_use(self, host_id: str) -> bool:
        """Whether anything already speaks for ``host_id``: an issued id, heartbeats or a kube_agent record."""
        for kind in (HOST_KIND, AGENT_KIND):
            try:
                await self.store.get(kind, host_id)
                return True
            except NotFound:
                pass
        return bool(await self.store.list("kube_server", prefix=f"{host_id}/"))

    def _host_record(self, host_id: str, nodename: str) -> dict[str, Any]:
        return {"host_id": host_id, "nodename": nodename, "issued": format_rfc3339(self.now(), fraction="micro")}

    def _host_expiry(self, not_after: datetime) -> float:
        return not_after.timestamp() + HOST_RECORD_GRACE

    async def renew(self, caller: Caller, csr_pem: bytes, ttl: timedelta | None = None) -> Certificate:
        """Re-issue the caller's own identity for a new key (agents and users renew before expiry).

        A user certificate never outlives the one it replaces: the new expiry is the earliest of the
        presented certificate's expiry (the one the admin chose, carried through every renewal), now plus
        the ``max_session_ttl`` of the user's current roles, and now plus USER_TTL. Its roles are the
        effective ones (:meth:`caller_for`), so a renewal never brings back a removed role. Agents get a
        fresh AGENT_TTL and their host id stays reserved. A bot's certificate renews by the bots' rules
        (:meth:`registry.server.bots.BotService.renew`: a fresh short TTL, ``ttl`` when given).
        """
        identity = caller.identity
        bot = await self.bots.is_bot(identity)
        if bot is not None:
            return cast(Certificate, await self.bots.renew(caller, bot, csr_pem, ttl))
        if identity.kind not in ("agent", "user"):
            raise AccessDenied(f"access denied: {caller.describe()} cannot renew its certificate")
        now = self.now()
        fresh = Identity(name=identity.name, kind=identity.kind, roles=identity.roles, host_id=identity.host_id)
        if identity.kind == "user":
            if identity.expires is None:  # always set for an identity read from a verified certificate
                raise AccessDenied("access denied: the certificate's expiry is unknown, so it cannot be renewed")
            not_after = min(identity.expires, now + max_session_ttl(caller.roles), now + USER_TTL)
        else:
            not_after = min(now + AGENT_TTL, self.ca.expires)
        if not_after <= now:
            raise AccessDenied(f"access denied: the certificate of {caller.describe()} has no time left to renew")
        cert = self.ca.sign_csr(csr_pem, fresh, ttl=not_after - now, now=now)
        if identity.kind == "agent" and identity.host_id is not None:
            await self.store.put(
                HOST_KIND,
                identity.host_id,
                self._host_record(identity.host_id, identity.name),
                expires=self._host_expiry(not_after),
            )
        return {"cert_pem": cert.decode(), "ca_pems": [self.ca.cert_pem.decode()]}

    async def sign_user(self, caller: Caller, *, user: str, csr_pem: bytes, ttl: timedelta) -> Certificate:
        """Admin-only: a certificate for an existing user (like ``tctl auth sign``), roles from the user.

        The TTL asked for is capped by the strictest ``max_session_ttl`` of the user's roles (Teleport
        adjusts the TTL the same way); the answer says when the certificate really expires.
        """
        authz.check_admin(caller, "sign user certificates")
        if ttl <= timedelta(0) or ttl > MAX_USER_CERT_TTL:
            raise BadParameter(f"ttl must be between 1s and {MAX_USER_CERT_TTL.days} days (got {ttl})")
        try:
            record = await self.store.get("user", user)
        except NotFound:
            raise NotFound(f'user "{user}" not found; create it first with kpctl create') from None
        model = codec.resource_from_dict(record.value)
        assert isinstance(model, User)
        ttl = min(ttl, max_session_ttl(await self._roles(tuple(model.roles))))
        identity = Identity(name=user, kind="user", roles=tuple(model.roles))
        now = self.now()
        cert = self.ca.sign_csr(csr_pem, identity, ttl=ttl, now=now)
        expires = min(now + ttl, self.ca.expires)
        await self.audit("cert.create", caller, name=user, ttl=str(ttl))
        return {
            "cert_pem": cert.decode(),
            "ca_pems": [self.ca.cert_pem.decode()],
            "expires": format_rfc3339(expires, fraction="micro"),
        }

    # -- watch ---------------------------------------------------------------------------------------

    async def check_watch(self, caller: Caller, kinds: tuple[str, ...], with_secrets: bool) -> None:
        for kind in kinds:
            authz.check(caller, kind, "list")
            authz.check(caller, kind, "read")

    async def revision(self) -> int:
        """The store revision now (a list answers it, so its reader can watch from there)."""
        return await self.store.revision()

    def watch(self, kinds: tuple[str, ...], *, since: int) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """The store's events of ``kinds`` after ``since`` (raises Compacted when that history is gone).
        Callers ran :meth:`check_watch` for the caller first; :meth:`event_line` encodes each event."""
        return self.store.watch(kinds, since=since)

    def event_to_wire(self, event_type: str, record: Record, *, with_secrets: bool) -> ResourceEvent:
        """A store event as a watch event: the record as the API shows it (revision set, secrets as asked)."""
        cls = Put if event_type == "PUT" else Delete
        return cls(record.revision, record.kind, record.name, record_to_wire(record, with_secrets=with_secrets))

    def event_line(self, event_type: str, record: Record, *, with_secrets: bool) -> bytes:
        """One watch line, encoded once and shared by every watcher (100 watchers, one json.dumps).

        A revision's stored copy loses its secrets once a newer version supersedes it (the store's
        ``_secrets``), so the key says which copy was encoded: a replay never gets a cached line that still
        holds a rotated kubeconfig."""
        spec = record.value.get("spec")
        holds_secret = isinstance(spec, dict) and "kubeconfig" in spec
        key = (record.revision, event_type, with_secrets, record.name, holds_secret)
        line = self._event_lines.get(key)
        if line is None:
            line = encode_line(self.event_to_wire(event_type, record, with_secrets=with_secrets))
            self._event_lines[key] = line
            if len(self._event_lines) > EVENT_LINE_CACHE:
                self._event_lines.pop(next(iter(self._event_lines)))  # oldest first (insertion order)
        return line

    def ping(self) -> Ping:
        ping: Ping = {
            "cluster_name": self.cluster_name,
            "version": __version__,
            "ca_pin": self.ca.pin,
            "server_time": format_rfc3339(self.now(), fraction="micro"),
            "public_addr": self.public_addr,
            "loopback_only": self.loopback_only,
            "kube_public_addr": self.kube_public_addr,
            "second_factor": self.second_factor,
        }
        if self.front_doors.known:  # never a partial list (registry.server.frontdoors)
            ping["kube_front_doors"] = list(self.front_doors.addresses)
        return ping
