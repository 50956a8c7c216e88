"""Validation and defaulting of objects written to the fake, per kind, with the real server's messages.

Pure. What is faithful:

- names: namespaces are RFC 1123 labels, services RFC 1035 labels, RBAC objects path segments (so
  ``system:basic-user`` is fine), everything else RFC 1123 subdomains; violations are 422 Invalid with the
  real wording; ``generateName`` is honoured;
- body ``kind``/``apiVersion`` must match the URL (400), body namespace must match the URL's (400);
- Namespace: label ``kubernetes.io/metadata.name``, ``spec.finalizers: [kubernetes]``, ``status.phase: Active``;
- Secret: ``type`` defaults to Opaque, ``stringData`` is folded into ``data``, ``data`` must be base64
  (400) and at most 1 MiB (422); ``kubernetes.io/service-account-token`` secrets need the
  ``kubernetes.io/service-account.name`` annotation (422);
- Pod: ``status.phase: Pending``;
- (Cluster)RoleBindings: ``roleRef`` is required and immutable, subjects need kind and name; rules need verbs.

Simplified: no other schema validation (unknown fields are kept), no RBAC escalation checks, no
managedFields, no generation bumps.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from tests.fakes.kube_discovery import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    NAMESPACES,
    PODS,
    RBAC,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    SERVICES,
    ResourceType,
)
from tests.fakes.kube_status import bad_request, invalid

SA_TOKEN_TYPE = "kubernetes.io/service-account-token"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
SA_UID_ANNOTATION = "kubernetes.io/service-account.uid"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
MAX_SECRET_BYTES = 1024 * 1024

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(rf"^{_DNS1123_LABEL}$")
_DNS1123_SUBDOMAIN_RE = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_DNS1035_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def _quote(value: str) -> str:
    """Go's %q for the strings the fake deals with (enough for messages)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def name_problems(rt: ResourceType, name: str) -> list[str]:
    """Why ``name`` is not a valid name for ``rt`` (empty when it is)."""
    if rt.group == RBAC:
        problems = [f"may not contain '{bad}'" for bad in ("/", "%") if bad in name]
        if name in (".", ".."):
            problems.append(f"may not be '{name}'")
        return problems
    if rt is NAMESPACES:
        problems = [] if _DNS1123_LABEL_RE.match(name) else [_LABEL_MSG]
        limit = 63
    elif rt is SERVICES:
        problems = [] if _DNS1035_LABEL_RE.match(name) else [_DNS1035_MSG]
        limit = 63
    else:
        problems = [] if _DNS1123_SUBDOMAIN_RE.match(name) else [_SUBDOMAIN_MSG]
        limit = 253
    if len(name) > limit:
        problems.insert(0, f"must be no more than {limit} characters")
    return problems


def check_name(rt: ResourceType, name: str) -> None:
    problems = name_problems(rt, name)
    if problems:
        causes = [("metadata.name", "FieldValueInvalid", f"Invalid value: {_quote(name)}: {p}") for p in problems]
        raise invalid(rt.kind, rt.group, name, causes)


def check_body_shape(rt: ResourceType, body: Any) -> dict[str, Any]:
    """The request body as an object whose kind/apiVersion (if given) fit the URL."""
    if not isinstance(body, dict):
        raise bad_request(f"the body of the request must be a {rt.kind} object, got JSON {type(body).__name__}")
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    if kind not in (None, "", rt.kind) or api_version not in (None, "", rt.api_version):
        raise bad_request(
            f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
            if api_version not in (None, "", rt.api_version)
            else f"the object provided is unrecognized (must be of type {rt.kind}): kind {kind!r}"
        )
    metadata = body.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise bad_request(f"{rt.kind} in version {rt.version!r} cannot be handled as a {rt.kind}: metadata")
    for key in ("name", "namespace", "generateName", "resourceVersion", "uid"):
        if key in metadata and not isinstance(metadata[key], str):
            raise bad_request(
                f"{rt.kind} in version {rt.version!r} cannot be handled as a {rt.kind}: "
                f"json: cannot unmarshal {type(metadata[key]).__name__} into Go struct field "
                f"ObjectMeta.metadata.{key} of type string"
            )
    for key in ("labels", "annotations"):
        value = metadata.get(key)
        if value is not None and (not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())):
            raise bad_request(
                f"{rt.kind} in version {rt.version!r} cannot be handled as a {rt.kind}: "
                f"metadata.{key} must map strings to strings"
            )
    return {**body, "metadata": dict(metadata)}


def check_namespace(rt: ResourceType, body: dict[str, Any], url_namespace: str) -> None:
    given = body["metadata"].get("namespace", "")
    if rt.namespaced and given and given != url_namespace:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")


def default_and_validate(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """Kind-specific defaulting and validation of an object about to be stored (``old`` on updates)."""
    name = obj["metadata"]["name"]
    if rt is NAMESPACES:
        labels = dict(obj["metadata"].get("labels") or {})
        labels[NAMESPACE_NAME_LABEL] = name
        obj["metadata"]["labels"] = labels
        raw_spec = obj.get("spec")
        spec = raw_spec if isinstance(raw_spec, dict) else {}
        obj["spec"] = {"finalizers": ["kubernetes"], **spec}
        obj["status"] = {"phase": "Active"}
    elif rt is SECRETS:
        _secret(obj, name)
    elif rt is PODS:
        raw_status = obj.get("status")
        status = raw_status if isinstance(raw_status, dict) else {}
        obj["status"] = {"phase": "Pending", **status}
    elif rt in (CLUSTER_ROLE_BINDINGS, ROLE_BINDINGS):
        _binding(rt, obj, name, old)
    elif rt in (CLUSTER_ROLES, ROLES):
        _role(rt, obj, name)
    return obj


def _secret(obj: dict[str, Any], name: str) -> None:
    obj.setdefault("type", "Opaque")
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise bad_request('Secret in version "v1" cannot be handled as a Secret: data must be an object')
    size = 0
    for key, value in data.items():
        if not isinstance(value, str):
            raise bad_request(f'Secret in version "v1" cannot be handled as a Secret: data[{key!r}] is not a string')
        try:
            size += len(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data in data[{key!r}]'
            ) from exc
    string_data = obj.pop("stringData", None) or {}
    if not isinstance(string_data, dict) or not all(isinstance(v, str) for v in string_data.values()):
        raise bad_request('Secret in version "v1" cannot be handled as a Secret: stringData must map strings')
    data = dict(data)
    for key, value in string_data.items():
        raw = value.encode()
        size += len(raw)
        data[key] = base64.b64encode(raw).decode()
    if data:
        obj["data"] = data
    if size > MAX_SECRET_BYTES:
        raise invalid(
            "Secret", "", name, [("data", "FieldValueTooLong", f"Too long: must have at most {MAX_SECRET_BYTES} bytes")]
        )
    annotations = obj["metadata"].get("annotations") or {}
    if obj["type"] == SA_TOKEN_TYPE and not annotations.get(SA_NAME_ANNOTATION):
        field = f"metadata.annotations[{SA_NAME_ANNOTATION}]"
        raise invalid("Secret", "", name, [(field, "FieldValueRequired", "Required value")])


def _unsupported(field: str, value: object, supported: tuple[str, ...]) -> tuple[str, str, str]:
    allowed = ", ".join(_quote(k) for k in supported)
    return (field, "FieldValueNotSupported", f"Unsupported value: {_quote(str(value))}: supported values: {allowed}")


def _binding(rt: ResourceType, obj: dict[str, Any], name: str, old: dict[str, Any] | None) -> None:
    ref = obj.get("roleRef")
    kinds = ("ClusterRole",) if rt is CLUSTER_ROLE_BINDINGS else ("Role", "ClusterRole")
    causes: list[tuple[str, str, str]] = []
    if not isinstance(ref, dict):
        ref = {}
    if ref.get("kind") not in kinds:
        causes.append(_unsupported("roleRef.kind", ref.get("kind", ""), kinds))
    if not ref.get("name") or not isinstance(ref.get("name"), str):
        causes.append(("roleRef.name", "FieldValueRequired", "Required value"))
    if ref.get("apiGroup", RBAC) != RBAC:
        causes.append(_unsupported("roleRef.apiGroup", ref.get("apiGroup"), (RBAC,)))
    subjects = obj.get("subjects") or []
    if not isinstance(subjects, list):
        causes.append(("subjects", "FieldValueInvalid", "Invalid value: must be a list"))
        subjects = []
    for i, subject in enumerate(subjects):
        kind = subject.get("kind", "") if isinstance(subject, dict) else ""
        if kind not in ("ServiceAccount", "User", "Group"):
            causes.append(_unsupported(f"subjects[{i}].kind", kind, ("ServiceAccount", "User", "Group")))
        elif not subject.get("name") or not isinstance(subject.get("name"), str):
            causes.append((f"subjects[{i}].name", "FieldValueRequired", "Required value"))
    if old is not None and old.get("roleRef") != obj.get("roleRef") and not causes:
        causes.append(("roleRef", "FieldValueInvalid", f"Invalid value: {ref!r}: cannot change roleRef"))
    if causes:
        raise invalid(rt.kind, rt.group, name, causes)


def _role(rt: ResourceType, obj: dict[str, Any], name: str) -> None:
    rules = obj.get("rules") or []
    causes: list[tuple[str, str, str]] = []
    if not isinstance(rules, list):
        raise invalid(rt.kind, rt.group, name, [("rules", "FieldValueInvalid", "Invalid value: must be a list")])
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            causes.append((f"rules[{i}]", "FieldValueInvalid", "Invalid value: must be an object"))
            continue
        for key in ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"):
            value = rule.get(key)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                causes.append((f"rules[{i}].{key}", "FieldValueInvalid", "Invalid value: must be a list of strings"))
        if not rule.get("verbs"):
            causes.append(
                (f"rules[{i}].verbs", "FieldValueRequired", "Required value: verbs must contain at least one value")
            )
    if causes:
        raise invalid(rt.kind, rt.group, name, causes)
