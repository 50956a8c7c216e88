"""The wire codec: YAML/JSON text <-> wire dicts <-> validated resource models.

The wire shape is Teleport's (``kind``, ``version``, ``metadata``, ``spec``), so a file written for
Teleport's dynamic Kubernetes registration works unchanged; see ``resources`` for the models.

Decoding rules (every failure is a BadParameter, TooLarge above :data:`MAX_DOCUMENT_BYTES`):

* Input is checked for size before parsing, must be UTF-8, and is parsed by ``validation.load_yaml``
  (no anchors/aliases, no merge or duplicate keys, bounded nesting) or, when it looks like JSON, as one
  JSON object or a list of them.
* Every field is checked and unknown fields are rejected with their path. Messages name the resource,
  the field, the rule and the bad value: ``kube_cluster "a/b": metadata.name must match ...``.
* ``decode_resources`` validates every document before returning any, so a caller writes nothing when
  one document is bad.
* ``spec.dynamic_labels.*.result`` is accepted and dropped on a ``kube_cluster`` (results are the agent's
  and only ever travel inside ``kube_server`` heartbeats, which keep them).
* Documented deviations from Teleport: a dynamic label period below 1s is rejected (Teleport silently
  raises it to 1s); a stored kubeconfig is checked at create time (``kubeconfig.check_kubeconfig``);
  ``version`` is required for kube_cluster/kube_server but defaults for role (v7), user and token (v2).

Encoding (``resource_to_dict``) omits empty optional fields, writes the kubeconfig as one line of standard
base64 and timestamps as RFC 3339 UTC (``Z``). Invariant: ``resource_from_dict(resource_to_dict(r)) == r``
for every model ``resource_from_dict`` can return.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, NoReturn, TypeVar

import yaml

from labels import MIN_PERIOD, LabelError, parse_go_duration, validate_label_key, validate_labels
from labels import validate_selector_items as _validate_selector_items
from labels.schedule import validate_cron
from registry.core import validation
from registry.core.errors import BadParameter, TooLarge
from registry.core.kubeconfig import check_kubeconfig, decode_base64_kubeconfig
from registry.core.resources import (
    HEALTH_STATUSES,
    KIND_ALIASES,
    ORIGIN_LABEL,
    ORIGIN_VALUES,
    RULE_RESOURCES,
    RULE_VERBS,
    TOKEN_ROLES,
    AWSSpec,
    AzureSpec,
    CommandLabel,
    GCPSpec,
    Health,
    KubeCluster,
    KubeServer,
    Metadata,
    Resource,
    Role,
    RoleConditions,
    Rule,
    Token,
    User,
)
from registry.core.validation import Fields, check_name, describe, quote

MAX_DOCUMENT_BYTES = validation.MAX_DOCUMENT_BYTES
KINDS = ("kube_cluster", "kube_server", "role", "user", "token")

NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")  # Teleport's kube cluster name rule; also roles, hosts, tokens
USER_NAME_RE = re.compile(r"^[a-zA-Z0-9._@+-]+$")  # user names are often e-mail addresses
MAX_DYNAMIC_LABELS = 64  # each one is a process every agent serving the cluster runs periodically
KUBE_VERBS = (
    "*",
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "exec",
    "portforward",
    "proxy",
)
ROLE_OPTIONS = ("max_session_ttl",)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_MASK_KEEP = 4


# -- parsing ------------------------------------------------------------------------------------------------


def _prefix(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def parse_documents(data: bytes | str, *, source: str) -> list[dict[str, Any]]:
    """The mappings in ``data``: a JSON object, a JSON list of objects, or a YAML (multi-)document stream.

    Empty YAML documents are skipped; anything that is not a mapping, and an input with no documents at
    all, is an error. See ``validation`` for what the parsers refuse.
    """
    raw = validation.check_size(data, source=source)
    text = data if isinstance(data, str) else validation.decode_utf8(raw, source=source)
    documents: list[Any]
    if text.lstrip()[:1] in ("{", "["):
        try:
            value = validation.load_json(text, source=source)
        except BadParameter as json_error:
            # YAML flow style ({kind: role}) also starts with a brace; if YAML fails too, the JSON error is
            # the one that describes what the author most likely wrote.
            try:
                documents = [d for d in validation.load_yaml(text, source=source) if d is not None]
            except BadParameter:
                raise json_error from None
        else:
            documents = value if isinstance(value, list) else [value]
    else:
        documents = [d for d in validation.load_yaml(text, source=source) if d is not None]
    if not documents:
        raise BadParameter(f"{source}: no resources found (the input is empty)")
    for index, document in enumerate(documents, 1):
        if not isinstance(document, dict):
            where = f"{source} document {index}" if len(documents) > 1 else source
            raise BadParameter(
                f"{where}: expected a mapping with kind, version, metadata and spec (got {describe(document)})"
            )
    return documents


def decode_resources(data: bytes | str, *, source: str) -> list[Resource]:
    """Parse and validate every document, then return them all (or raise for the first bad one)."""
    documents = parse_documents(data, source=source)
    resources: list[Resource] = []
    seen: dict[tuple[str, str], int] = {}
    for index, document in enumerate(documents, 1):
        where = f"{source} document {index}" if len(documents) > 1 else source
        try:
            resource = _decode(document)
        except (BadParameter, TooLarge) as err:
            raise type(err)(_prefix(where, err.message)) from None
        key = (resource.KIND, _identity(resource))
        if key in seen:
            raise BadParameter(f"{where}: {_subject_of(resource)} is already defined by document {seen[key]}")
        seen[key] = index
        resources.append(resource)
    return resources


def resource_from_dict(doc: Mapping[str, Any], *, source: str = "") -> Resource:
    """Validate one wire dict and return its model; errors are prefixed with ``source`` when given."""
    try:
        return _decode(doc)
    except (BadParameter, TooLarge) as err:
        if not source:
            raise
        raise type(err)(_prefix(source, err.message)) from None


def _identity(resource: Resource) -> str:
    return resource.store_name() if isinstance(resource, KubeServer) else resource.metadata.name


def _subject_of(resource: Resource) -> str:
    if isinstance(resource, Token):
        return "token (the same value)"
    return f"{resource.KIND} {quote(_identity(resource))}"


def _decode(doc: object) -> Resource:
    if not isinstance(doc, Mapping):
        raise BadParameter(f"expected a mapping with kind, version, metadata and spec (got {describe(doc)})")
    kind = doc.get("kind")
    supported = ", ".join(KINDS)
    if kind is None or kind == "":
        raise BadParameter(f"missing kind; supported kinds: {supported}")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        canonical = KIND_ALIASES.get(kind.lower()) if isinstance(kind, str) else None
        hint = f" (did you mean {canonical}?)" if canonical else ""
        raise BadParameter(f"unknown kind {describe(kind)}{hint}; supported kinds: {supported}")
    return decoder(doc)


def _subject(kind: str, doc: Mapping[str, Any]) -> str:
    """How messages name the resource: ``kube_cluster "x"``, or the bare kind when the name is unusable."""
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if kind == "token" or not isinstance(name, str) or not name:
        return kind  # a token's name is its secret value: never shown
    return f"{kind} {quote(name)}"


def _envelope(doc: Mapping[str, Any], kind: str, path: str = "", subject: str = "") -> tuple[Fields, str]:
    subject = subject or _subject(kind, doc)
    top = Fields(doc, subject=subject, path=path)
    top.reject_unknown(("kind", "version", "sub_kind", "metadata", "spec"))
    sub_kind = top.raw("sub_kind")
    if sub_kind not in (None, ""):
        top.fail(f"{top.at('sub_kind')} must be empty (got {describe(sub_kind)})")
    return top, subject


def _version(top: Fields, supported: Sequence[str], default: str | None) -> str:
    version = top.raw("version")
    if version is None and default is not None:
        return default
    if version is None:
        top.fail(f"{top.at('version')} is required (use {supported[-1]})")
    if version not in supported:
        wanted = f"only {supported[0]}" if len(supported) == 1 else f"supported: {', '.join(supported)}"
        top.fail(f"unsupported version {describe(version)} ({wanted})")
    return str(version)


# -- shared pieces ------------------------------------------------------------------------------------------


def _timestamp(fields: Fields, key: str) -> datetime | None:
    """An aware UTC datetime from an RFC 3339 string or a YAML timestamp (naive ones are UTC, as in YAML)."""
    value = fields.raw(key)
    if value is None:
        return None
    rule = "must be an RFC 3339 timestamp such as 2027-01-01T00:00:00Z"
    parsed: datetime | None = None
    if isinstance(value, datetime):  # YAML already parsed it
        parsed = value
    elif isinstance(value, str) and _RFC3339.fullmatch(value):
        # fromisoformat takes at most 6 fractional digits: drop nanoseconds as Go's JSON would round them.
        text = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("z", "Z").replace("t", "T")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            fields.fail(f"{fields.at(key)} {rule} (got {describe(value)}: not a real date or time)")
    elif isinstance(value, date):
        fields.fail(f"{fields.at(key)} {rule}, with a time of day (got date {value})")
    if parsed is None:
        fields.fail(f"{fields.at(key)} {rule} (got {describe(value)})")
    try:
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        fields.fail(f"{fields.at(key)} is out of range (got {describe(str(value))})")


def _format_time(value: datetime) -> str:
    value = value.astimezone(UTC) if value.tzinfo is not None else value
    # Not strftime: glibc's %Y does not zero-pad years below 1000.
    text = f"{value.year:04d}-{value:%m-%dT%H:%M:%S}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def _labels(fields: Fields, key: str) -> dict[str, str]:
    try:
        return validate_labels(fields.raw(key) or {}, what=fields.at(key))
    except LabelError as err:
        fields.fail(str(err))


def _metadata(top: Fields, subject: str, *, pattern: re.Pattern[str] = NAME_RE, secret: bool = False) -> Metadata:
    meta = top.mapping("metadata")
    meta.reject_unknown(("name", "description", "labels", "expires", "revision", "id", "namespace"))
    name = check_name(meta.raw("name"), subject=subject, path=meta.at("name"), pattern=pattern, show=not secret)
    namespace = meta.raw("namespace")
    if namespace not in (None, "", "default"):
        meta.fail(f'{meta.at("namespace")} must be "default" (got {describe(namespace)})')
    # metadata.id: Teleport's legacy resource id (still shown by `tctl get` -> edit); accepted and ignored.
    labels = _labels(meta, "labels")
    origin = labels.get(ORIGIN_LABEL)
    if origin and origin not in ORIGIN_VALUES:
        meta.fail(f"{meta.at('labels')}.{ORIGIN_LABEL} must be one of {', '.join(ORIGIN_VALUES)} (got {quote(origin)})")
    revision = meta.raw("revision")
    if isinstance(revision, int) and not isinstance(revision, bool) and revision >= 0:
        revision = str(revision)  # an unquoted YAML revision; the server treats it as text anyway
    if revision is not None and (not isinstance(revision, str) or len(revision) > 64):
        meta.fail(f"{meta.at('revision')} must be the string the registry returned (got {describe(revision)})")
    return Metadata(
        name=name,
        description=meta.string("description", limit=4096),
        labels=labels,
        expires=_timestamp(meta, "expires"),
        revision=revision or "",
    )


def _label_error(fields: Fields, key: str, value: object, err: LabelError) -> NoReturn:
    """Phrase a labels-library error under the field path: ``<path> "1d": unknown unit "d" (use 24h)``."""
    message = str(err)
    path = fields.at(key)
    if message.startswith(path) or message.startswith(key):
        fields.fail(message if message.startswith(path) else f"{fields.path}.{message}")
    if isinstance(value, str) and message.startswith('"'):
        fields.fail(f"{path} {message}")
    fields.fail(f"{path}: {message}")


# -- kube_cluster -------------------------------------------------------------------------------------------


def _command_label(item: Fields, *, keep_result: bool) -> CommandLabel:
    item.reject_unknown(("period", "schedule", "command", "result"))
    command = item.raw("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) for arg in command)
        or not command[0]
        or any("\0" in arg for arg in command)
    ):
        item.fail(f"{item.at('command')} must be a non-empty list of strings (got {describe(command)})")
    if len(command) > 256 or any(len(arg) > 4096 for arg in command):
        item.fail(f"{item.at('command')} is too long (at most 256 arguments of at most 4096 characters)")
    period, schedule = item.raw("period"), item.raw("schedule")
    if period is None and schedule is None:
        item.fail(f'{item.path} needs a period (a Go duration such as "1h") or a schedule (a cron expression)')
    if period is not None and schedule is not None:
        item.fail(f"{item.path} has both a period and a schedule; keep one")
    if period is not None:
        try:
            seconds = parse_go_duration(period, what=item.at("period"))
        except LabelError as err:
            _label_error(item, "period", period, err)
        if seconds < MIN_PERIOD:
            item.fail(
                f"{item.at('period')} {quote(period)} is below the minimum of 1s "
                "(use at least 1s; kubeport rejects it where Teleport would silently raise it)"
            )
    if schedule is not None:
        try:
            schedule = validate_cron(schedule)
        except LabelError as err:
            _label_error(item, "schedule", schedule, err)
    result = item.string("result", limit=64 * 1024) if keep_result else ""
    return CommandLabel(command=tuple(command), period=period, schedule=schedule, result=result)


def _dynamic_labels(spec: Fields, *, keep_results: bool) -> dict[str, CommandLabel]:
    labels = spec.mapping("dynamic_labels")
    if len(labels.data) > MAX_DYNAMIC_LABELS:
        labels.fail(f"{labels.path} has {len(labels.data)} labels; at most {MAX_DYNAMIC_LABELS} are allowed")
    result: dict[str, CommandLabel] = {}
    for key in labels:
        try:
            validate_label_key(key)
        except LabelError as err:
            labels.fail(f"{labels.path}: {err}")
        result[key] = _command_label(labels.mapping(key), keep_result=keep_results)
    return result


_C = TypeVar("_C", AWSSpec, AzureSpec, GCPSpec)


def _cloud(spec: Fields, key: str, cls: Callable[..., _C], names: Sequence[str], required: Sequence[str]) -> _C | None:
    cloud = spec.mapping(key)
    cloud.reject_unknown(names)
    values = {name: cloud.string(name, limit=256) for name in names}
    if not any(values.values()):
        return None  # `aws: {}` as `tctl get` prints it means "not an AWS cluster"
    for name in required:  # Teleport's order of checks
        if not values[name]:
            cloud.fail(f"{cloud.at(name)} is required when {cloud.path} is set")
    return cls(**values)


def _decode_kube_cluster(
    doc: Mapping[str, Any], *, path: str = "", subject: str = "", in_server: bool = False
) -> KubeCluster:
    """A kube_cluster; ``in_server`` for the copy inside a kube_server (``path``/``subject`` are then the
    server's): no kubeconfig allowed, dynamic label results kept, kind and version optional."""
    top, subject = _envelope(doc, "kube_cluster", path, subject)
    if in_server:
        if top.raw("kind") not in (None, "kube_cluster"):
            top.fail(f"{top.at('kind')} must be kube_cluster (got {describe(top.raw('kind'))})")
        _version(top, (KubeCluster.VERSION,), KubeCluster.VERSION)
    else:
        _version(top, (KubeCluster.VERSION,), None)
    metadata = _metadata(top, subject)
    spec = top.mapping("spec")
    spec.reject_unknown(("kubeconfig", "dynamic_labels", "aws", "azure", "gcp", "allow_exec_plugins"))
    allow_exec = spec.boolean("allow_exec_plugins")
    raw = spec.raw("kubeconfig")
    kubeconfig = b""
    if in_server and raw:
        spec.fail(f"{spec.at('kubeconfig')} must not be set: heartbeats never carry credentials")
    if isinstance(raw, bytes):  # YAML !!binary
        kubeconfig = raw
    elif isinstance(raw, str):
        try:
            kubeconfig = decode_base64_kubeconfig(raw)
        except BadParameter as err:
            spec.fail(f"{spec.at('kubeconfig')}: {err.message}")
    elif raw is not None:
        spec.fail(f"{spec.at('kubeconfig')} must be the base64 text of a kubeconfig file (got {describe(raw)})")
    if kubeconfig:
        # Raises with its own full message: kube_cluster "<name>": spec.kubeconfig ...
        check_kubeconfig(kubeconfig, cluster_name=metadata.name, allow_exec=allow_exec)
    return KubeCluster(
        metadata=metadata,
        kubeconfig=kubeconfig,
        dynamic_labels=_dynamic_labels(spec, keep_results=in_server),
        aws=_cloud(spec, "aws", AWSSpec, ("region", "account_id", "name"), ("region", "name", "account_id")),
        azure=_cloud(
            spec,
            "azure",
            AzureSpec,
            ("resource_name", "resource_group", "tenant_id", "subscription_id"),
            ("resource_group", "resource_name", "subscription_id"),
        ),
        gcp=_cloud(spec, "gcp", GCPSpec, ("location", "project_id", "name"), ("location", "project_id", "name")),
        allow_exec_plugins=allow_exec,
    )


def _decode_kube_server(doc: Mapping[str, Any]) -> KubeServer:
    top, subject = _envelope(doc, "kube_server")
    _version(top, (KubeServer.VERSION,), None)
    metadata = _metadata(top, subject)
    spec = top.mapping("spec")
    spec.reject_unknown(("host_id", "hostname", "version", "cluster", "health"))
    host_id = check_name(spec.raw("host_id"), subject=subject, path=spec.at("host_id"), pattern=NAME_RE)
    cluster_doc = spec.raw("cluster")
    if not isinstance(cluster_doc, Mapping):
        spec.fail(f"{spec.at('cluster')} must be the kube_cluster this server serves (got {describe(cluster_doc)})")
    cluster = _decode_kube_cluster(cluster_doc, path=spec.at("cluster"), subject=subject, in_server=True)
    if cluster.name != metadata.name:
        spec.fail(f"{spec.at('cluster')}.metadata.name must equal metadata.name (got {quote(cluster.name)})")
    health = spec.mapping("health")
    health.reject_unknown(("status", "reason", "checked_at"))
    status = health.string("status", default="unknown")
    if status not in HEALTH_STATUSES:
        health.fail(f"{health.at('status')} must be one of {', '.join(HEALTH_STATUSES)} (got {quote(status)})")
    return KubeServer(
        metadata=metadata,
        host_id=host_id,
        hostname=spec.string("hostname", limit=1024),
        version=spec.string("version", limit=256),
        cluster=cluster,
        health=Health(
            status=status,  # narrowed to the Literal by the membership test above
            reason=health.string("reason", limit=4096),
            checked_at=_timestamp(health, "checked_at"),
        ),
    )


# -- role, user, token --------------------------------------------------------------------------------------

_CONDITION_FIELDS = ("rules", "kubernetes_labels", "kubernetes_groups", "kubernetes_users", "kubernetes_resources")


def _one_of(fields: Fields, path: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    for index, value in enumerate(values):
        if value not in allowed:
            fields.fail(f"{path}[{index}] must be one of {', '.join(allowed)} (got {quote(value)})")


def _rules(conditions: Fields) -> tuple[Rule, ...]:
    raw = conditions.raw("rules")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        conditions.fail(f"{conditions.at('rules')} must be a list of {{resources, verbs}} (got {describe(raw)})")
    rules = []
    for index, item in enumerate(raw):
        rule = Fields(item, subject=conditions.subject, path=f"{conditions.at('rules')}[{index}]")
        rule.reject_unknown(("resources", "verbs"), hint=" (kubeport rules have only resources and verbs)")
        resources = rule.strings("resources", required=True)
        verbs = rule.strings("verbs", required=True)
        _one_of(rule, rule.at("resources"), resources, RULE_RESOURCES)
        _one_of(rule, rule.at("verbs"), verbs, RULE_VERBS)
        rules.append(Rule(resources=resources, verbs=verbs))
    return tuple(rules)


def _selector(conditions: Fields) -> dict[str, str | list[str]]:
    raw = conditions.raw("kubernetes_labels")
    if not raw:
        return {}  # no labels: this condition matches no cluster (Teleport v4+ default)
    path = conditions.at("kubernetes_labels")
    try:
        (item,) = _validate_selector_items([{"labels": raw}], what=path)
    except LabelError as err:
        conditions.fail(str(err).replace(f"{path}[0].labels", path))
    return {key: list(value) if isinstance(value, list) else value for key, value in item["labels"].items()}


def _kube_resources(conditions: Fields, version: str) -> tuple[dict[str, Any], ...]:
    raw = conditions.raw("kubernetes_resources")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        conditions.fail(
            f"{conditions.at('kubernetes_resources')} must be a list of {{kind, namespace, name, verbs}} "
            f"(got {describe(raw)})"
        )
    result = []
    for index, item in enumerate(raw):
        entry = Fields(item, subject=conditions.subject, path=f"{conditions.at('kubernetes_resources')}[{index}]")
        entry.reject_unknown(("kind", "namespace", "name", "verbs"))
        verbs = entry.strings("verbs")
        if not verbs:
            if version == "v7":
                entry.fail(f"{entry.at('verbs')} is required in a v7 role (use ['*'] for every verb)")
            verbs = ("*",)  # before v7 a kubernetes_resources entry granted every verb
        _one_of(entry, entry.at("verbs"), verbs, KUBE_VERBS)
        result.append(
            {
                "kind": entry.string("kind", required=True, limit=253),
                "namespace": entry.string("namespace", limit=253),
                "name": entry.string("name", required=True, limit=253),
                "verbs": list(verbs),
            }
        )
    return tuple(result)


def _conditions(spec: Fields, key: str, version: str) -> RoleConditions:
    conditions = spec.mapping(key)
    supported = ", ".join(_CONDITION_FIELDS)
    conditions.reject_unknown(_CONDITION_FIELDS, hint=f" (kubeport does not support it; supported: {supported})")
    return RoleConditions(
        rules=_rules(conditions),
        kubernetes_labels=_selector(conditions),
        kubernetes_groups=conditions.strings("kubernetes_groups"),
        kubernetes_users=conditions.strings("kubernetes_users"),
        kubernetes_resources=_kube_resources(conditions, version),
    )


def _decode_role(doc: Mapping[str, Any]) -> Role:
    top, subject = _envelope(doc, "role")
    version = _version(top, Role.VERSIONS, Role.VERSION)
    metadata = _metadata(top, subject)
    spec = top.mapping("spec")
    spec.reject_unknown(("allow", "deny", "options"), hint=" (kubeport roles have allow, deny and options)")
    options = spec.mapping("options")
    supported = ", ".join(ROLE_OPTIONS)
    options.reject_unknown(ROLE_OPTIONS, hint=f" (kubeport does not support it; supported: {supported})")
    ttl = options.raw("max_session_ttl")
    if ttl is not None:
        try:
            parse_go_duration(ttl, what=options.at("max_session_ttl"))
        except LabelError as err:
            _label_error(options, "max_session_ttl", ttl, err)
    return Role(
        metadata=metadata,
        allow=_conditions(spec, "allow", version),
        deny=_conditions(spec, "deny", version),
        options=dict(options.data),
        version=version,
    )


def _decode_user(doc: Mapping[str, Any]) -> User:
    top, subject = _envelope(doc, "user")
    _version(top, (User.VERSION,), User.VERSION)
    metadata = _metadata(top, subject, pattern=USER_NAME_RE)
    spec = top.mapping("spec")
    spec.reject_unknown(("roles", "traits"), hint=" (kubeport users have roles and traits)")
    roles = spec.strings("roles")
    for index, role in enumerate(roles):
        check_name(role, subject=subject, path=f"{spec.at('roles')}[{index}]", pattern=NAME_RE)
    traits_fields = spec.mapping("traits")
    traits: dict[str, tuple[str, ...]] = {}
    for key in traits_fields:
        if len(key) > 256:
            traits_fields.fail(f"{traits_fields.path} has a key longer than 256 characters")
        values = traits_fields.raw(key)
        if values is None:
            values = []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            traits_fields.fail(f"{traits_fields.at(key)} must be a list of strings (got {describe(values)})")
        traits[key] = tuple(values)
    return User(metadata=metadata, roles=roles, traits=traits)


def _decode_token(doc: Mapping[str, Any]) -> Token:
    top, subject = _envelope(doc, "token")
    _version(top, (Token.VERSION,), Token.VERSION)
    metadata = _metadata(top, subject, secret=True)
    spec = top.mapping("spec")
    spec.reject_unknown(("roles", "join_method"), hint=" (kubeport tokens have roles and join_method)")
    canonical = {role.lower(): role for role in TOKEN_ROLES}
    roles: list[str] = []
    for role in spec.strings("roles", required=True):
        normalised = canonical.get(role.lower())
        if normalised is None:
            spec.fail(f"{spec.at('roles')}: invalid role {quote(role)} (supported: {', '.join(TOKEN_ROLES)})")
        if normalised not in roles:
            roles.append(normalised)
    join_method = spec.string("join_method", default="token") or "token"
    if join_method != "token":
        spec.fail(f"{spec.at('join_method')} {quote(join_method)} is not supported (only token)")
    return Token(metadata=metadata, roles=tuple(roles), join_method=join_method)


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Resource]] = {
    "kube_cluster": _decode_kube_cluster,
    "kube_server": _decode_kube_server,
    "role": _decode_role,
    "user": _decode_user,
    "token": _decode_token,
}


# -- encoding -----------------------------------------------------------------------------------------------


def mask_secret(value: str) -> str:
    """Enough of a token to tell tokens apart, never enough to use it."""
    return value[:_MASK_KEEP] + "*" * max(len(value) - _MASK_KEEP, _MASK_KEEP)


def _metadata_dict(metadata: Metadata, *, name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": metadata.name if name is None else name}
    if metadata.description:
        out["description"] = metadata.description
    if metadata.labels:
        out["labels"] = dict(metadata.labels)
    if metadata.expires is not None:
        out["expires"] = _format_time(metadata.expires)
    if metadata.revision:
        out["revision"] = metadata.revision
    return out


def _cloud_dict(spec: AWSSpec | AzureSpec | GCPSpec) -> dict[str, str]:
    return {key: value for key, value in vars(spec).items() if value}


def _cluster_dict(cluster: KubeCluster, *, with_secrets: bool, results: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if with_secrets and cluster.kubeconfig:
        spec["kubeconfig"] = base64.b64encode(cluster.kubeconfig).decode("ascii")
    if cluster.dynamic_labels:
        dynamic: dict[str, Any] = {}
        for key, label in cluster.dynamic_labels.items():
            item: dict[str, Any] = {"command": list(label.command)}
            if label.period is not None:
                item["period"] = label.period
            if label.schedule is not None:
                item["schedule"] = label.schedule
            if results:
                item["result"] = label.result
            dynamic[key] = item
        spec["dynamic_labels"] = dynamic
    for key in ("aws", "azure", "gcp"):
        cloud = getattr(cluster, key)
        if cloud is not None:
            spec[key] = _cloud_dict(cloud)
    if cluster.allow_exec_plugins:
        spec["allow_exec_plugins"] = True
    return {
        "kind": cluster.KIND,
        "version": cluster.VERSION,
        "metadata": _metadata_dict(cluster.metadata),
        "spec": spec,
    }


def _conditions_dict(conditions: RoleConditions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if conditions.rules:
        out["rules"] = [{"resources": list(r.resources), "verbs": list(r.verbs)} for r in conditions.rules]
    if conditions.kubernetes_labels:
        out["kubernetes_labels"] = {
            k: list(v) if isinstance(v, list | tuple) else v for k, v in conditions.kubernetes_labels.items()
        }
    if conditions.kubernetes_groups:
        out["kubernetes_groups"] = list(conditions.kubernetes_groups)
    if conditions.kubernetes_users:
        out["kubernetes_users"] = list(conditions.kubernetes_users)
    if conditions.kubernetes_resources:
        out["kubernetes_resources"] = [_plain(dict(r)) for r in conditions.kubernetes_resources]
    return out


def resource_to_dict(r: Resource, *, with_secrets: bool = True) -> dict[str, Any]:
    """The wire dict of a model. ``with_secrets=False`` drops a kube_cluster's kubeconfig and masks a
    token's value; a kube_server's embedded cluster never carries a kubeconfig."""
    if isinstance(r, KubeCluster):
        return _cluster_dict(r, with_secrets=with_secrets, results=False)
    if isinstance(r, KubeServer):
        spec: dict[str, Any] = {
            "host_id": r.host_id,
            "cluster": _cluster_dict(r.cluster, with_secrets=False, results=True),
        }
        if r.hostname:
            spec["hostname"] = r.hostname
        if r.version:
            spec["version"] = r.version
        health: dict[str, Any] = {"status": r.health.status}
        if r.health.reason:
            health["reason"] = r.health.reason
        if r.health.checked_at is not None:
            health["checked_at"] = _format_time(r.health.checked_at)
        spec["health"] = health
        return {"kind": r.KIND, "version": r.VERSION, "metadata": _metadata_dict(r.metadata), "spec": spec}
    if isinstance(r, Role):
        role_spec: dict[str, Any] = {"allow": _conditions_dict(r.allow), "deny": _conditions_dict(r.deny)}
        if r.options:
            role_spec["options"] = _plain(dict(r.options))
        return {"kind": r.KIND, "version": r.version, "metadata": _metadata_dict(r.metadata), "spec": role_spec}
    if isinstance(r, User):
        user_spec: dict[str, Any] = {}
        if r.roles:
            user_spec["roles"] = list(r.roles)
        if r.traits:
            user_spec["traits"] = {key: list(values) for key, values in r.traits.items()}
        return {"kind": r.KIND, "version": r.VERSION, "metadata": _metadata_dict(r.metadata), "spec": user_spec}
    if isinstance(r, Token):
        name = r.metadata.name if with_secrets else mask_secret(r.metadata.name)
        return {
            "kind": r.KIND,
            "version": r.VERSION,
            "metadata": _metadata_dict(r.metadata, name=name),
            "spec": {"roles": list(r.roles), "join_method": r.join_method},
        }
    raise TypeError(f"not a resource: {type(r).__name__}")


# -- dumping ------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Plain dict/list/str/number/bool/None for the dumpers (mappings, tuples and datetimes converted)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return _format_time(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(docs: Sequence[Mapping[str, Any]]) -> str:
    """YAML documents separated by ``---``, keys sorted (kind, metadata, spec, version, as Teleport prints)."""
    return yaml.dump_all(
        [_plain(doc) for doc in docs],
        Dumper=_Dumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 20,  # never fold long values (a kubeconfig is one long base64 line)
    )


def dump_json(docs: Sequence[Mapping[str, Any]]) -> str:
    """A JSON list of the documents, indented, keys sorted, ending with a newline."""
    return json.dumps([_plain(doc) for doc in docs], indent=2, sort_keys=True, ensure_ascii=False) + "\n"


__all__ = [
    "KINDS",
    "KUBE_VERBS",
    "MAX_DOCUMENT_BYTES",
    "MAX_DYNAMIC_LABELS",
    "NAME_RE",
    "USER_NAME_RE",
    "decode_resources",
    "dump_json",
    "dump_yaml",
    "mask_secret",
    "parse_documents",
    "resource_from_dict",
    "resource_to_dict",
]
