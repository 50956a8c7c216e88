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

Layout: this module is the entry point (parsing, dispatch by kind, kube_cluster and kube_server, dumping);
role, user and token live in ``codec_access``, the oidc connector in ``codec_oidc``, and the pieces
every kind shares in ``codec_common``. The names listed in ``__all__`` are the codec's public API, whichever
module defines them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import yaml

from labels import MIN_PERIOD, parse_go_duration, validate_label_key
from labels.schedule import validate_cron
from registry.core import validation
from registry.core.codec_access import (
    KUBE_VERBS,
    USER_NAME_RE,
    decode_role,
    decode_token,
    decode_user,
    role_to_dict,
    token_to_dict,
    user_to_dict,
)
from registry.core.codec_common import (
    NAME_RE,
    check_version,
    decode_metadata,
    decode_timestamp,
    envelope,
    metadata_dict,
    plain,
)
from registry.core.codec_oidc import decode_oidc, oidc_to_dict
from registry.core.errors import BadParameter, TooLarge
from registry.core.kubeconfig import check_kubeconfig, decode_base64_kubeconfig
from registry.core.resources import (
    HEALTH_STATUSES,
    KIND_ALIASES,
    AWSSpec,
    AzureSpec,
    CommandLabel,
    GCPSpec,
    Health,
    KubeCluster,
    KubeServer,
    OIDCConnector,
    Resource,
    Role,
    Token,
    User,
)
from registry.core.timefmt import format_rfc3339
from registry.core.validation import Fields, check_name, describe, label_errors, quote

MAX_DOCUMENT_BYTES = validation.MAX_DOCUMENT_BYTES
KINDS = ("kube_cluster", "kube_server", "role", "user", "token", "oidc")
MAX_DYNAMIC_LABELS = 64  # each one is a process every agent serving the cluster runs periodically


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


# Per call (a context variable, so concurrent decodes in threads or tasks cannot see each other's setting).
_VERIFY_KUBECONFIG: ContextVar[bool] = ContextVar("verify_kubeconfig", default=True)


def resource_from_dict(doc: Mapping[str, Any], *, source: str = "", verify_kubeconfig: bool = True) -> Resource:
    """Validate one wire dict and return its model; errors are prefixed with ``source`` when given.

    ``verify_kubeconfig=False`` skips only the kubeconfig check, for resources the registry already validated
    (an agent's watch of 10k clusters): the agent checks the kubeconfig of a cluster when it registers it.
    """
    token = _VERIFY_KUBECONFIG.set(verify_kubeconfig)
    try:
        return _decode(doc)
    except (BadParameter, TooLarge) as err:
        if not source:
            raise
        raise type(err)(_prefix(source, err.message)) from None
    finally:
        _VERIFY_KUBECONFIG.reset(token)


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
        with label_errors(item.at("period"), value=period, fail=item.fail):
            seconds = parse_go_duration(period, what=item.at("period"))
        if seconds < MIN_PERIOD:
            item.fail(
                f"{item.at('period')} {quote(period)} is below the minimum of 1s "
                "(use at least 1s; kubeport rejects it where Teleport would silently raise it)"
            )
    if schedule is not None:
        with label_errors(item.at("schedule"), value=schedule, fail=item.fail):
            schedule = validate_cron(schedule)
    result = item.string("result", limit=64 * 1024) if keep_result else ""
    return CommandLabel(command=tuple(command), period=period, schedule=schedule, result=result)


def _dynamic_labels(spec: Fields, *, keep_results: bool) -> dict[str, CommandLabel]:
    labels = spec.mapping("dynamic_labels")
    if len(labels.data) > MAX_DYNAMIC_LABELS:
        labels.fail(f"{labels.path} has {len(labels.data)} labels; at most {MAX_DYNAMIC_LABELS} are allowed")
    result: dict[str, CommandLabel] = {}
    for key in labels:
        with label_errors(labels.path, fail=labels.fail):
            validate_label_key(key)
        result[key] = _command_label(labels.mapping(key), keep_result=keep_results)
    return result


_C = TypeVar("_C", AWSSpec, AzureSpec, GCPSpec)


def _cloud(spec: Fields, key: str, cls: Callable[..., _C], names: Sequence[str], required: Sequence[str]) -> _C | None:
    if spec.raw(key) is None:
        return None  # absent (or null, which Fields reads as {}): most clusters; skip building and checking
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
    top, subject = envelope(doc, "kube_cluster", path, subject)
    if in_server:
        if top.raw("kind") not in (None, "kube_cluster"):
            top.fail(f"{top.at('kind')} must be kube_cluster (got {describe(top.raw('kind'))})")
        check_version(top, (KubeCluster.VERSION,), KubeCluster.VERSION)
    else:
        check_version(top, (KubeCluster.VERSION,), None)
    metadata = decode_metadata(top, subject)
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
    if kubeconfig and _VERIFY_KUBECONFIG.get():
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
    top, subject = envelope(doc, "kube_server")
    check_version(top, (KubeServer.VERSION,), None)
    metadata = decode_metadata(top, subject)
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
            checked_at=decode_timestamp(health, "checked_at"),
        ),
    )


_DECODERS: dict[str, Callable[[Mapping[str, Any]], Resource]] = {
    "kube_cluster": _decode_kube_cluster,
    "kube_server": _decode_kube_server,
    "role": decode_role,
    "user": decode_user,
    "token": decode_token,
    "oidc": decode_oidc,
}


# -- encoding -----------------------------------------------------------------------------------------------


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
        "metadata": metadata_dict(cluster.metadata),
        "spec": spec,
    }


def resource_to_dict(r: Resource, *, with_secrets: bool = True) -> dict[str, Any]:
    """The wire dict of a model. ``with_secrets=False`` drops a kube_cluster's kubeconfig and an oidc
    connector's client_secret, and masks a token's value; a kube_server's embedded cluster never carries a
    kubeconfig."""
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
            health["checked_at"] = format_rfc3339(r.health.checked_at)
        spec["health"] = health
        return {"kind": r.KIND, "version": r.VERSION, "metadata": metadata_dict(r.metadata), "spec": spec}
    if isinstance(r, Role):
        return role_to_dict(r)
    if isinstance(r, User):
        return user_to_dict(r)
    if isinstance(r, Token):
        return token_to_dict(r, with_secrets=with_secrets)
    if isinstance(r, OIDCConnector):
        return oidc_to_dict(r, with_secrets=with_secrets)
    raise TypeError(f"not a resource: {type(r).__name__}")


# -- dumping ------------------------------------------------------------------------------------------------


_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(docs: Sequence[Mapping[str, Any]]) -> str:
    """YAML documents separated by ``---``, keys sorted (kind, metadata, spec, version, as Teleport prints)."""
    return yaml.dump_all(
        [plain(doc) for doc in docs],
        Dumper=_Dumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 20,  # never fold long values (a kubeconfig is one long base64 line)
    )


def dump_json(docs: Sequence[Mapping[str, Any]]) -> str:
    """A JSON list of the documents, indented, keys sorted, ending with a newline."""
    return json.dumps([plain(doc) for doc in docs], indent=2, sort_keys=True, ensure_ascii=False) + "\n"


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
    "parse_documents",
    "resource_from_dict",
    "resource_to_dict",
]
