"""The access-control kinds of the wire codec: role, user and token, decoded and encoded.

Reached through :mod:`registry.core.codec` (``resource_from_dict``/``resource_to_dict`` dispatch here);
the envelope, metadata and timestamp rules shared with the other kinds are in ``codec_common``.

Invariants:

* Roles accept only what kubeport enforces (rules, kubernetes_labels/groups/users/resources and the
  ``max_session_ttl`` option); anything else Teleport knows is rejected with its path, never ignored, so a
  role never grants or denies less than its author believes.
* Role versions v3 to v8 are accepted, each with Teleport's rules (``validateKubeResources``), so the role
  engine (:mod:`registry.core.kube_access`) never meets an entry it would read differently from Teleport:

  - v3-v6: ``kubernetes_resources`` restrict pods only: ``kind: pod`` and verbs ``["*"]`` (the default when
    verbs are missing); anything else is refused with a hint to move to v7/v8. Seed 004's v6 role with
    ``kind: '*'`` is therefore refused, as Teleport refuses it (``KubernetesResource kind "*" is not supported
    in role version "v6"``); written as v7 it means what its author meant.
  - v7: singular kinds from Teleport's list (:data:`~registry.core.kube_access.V7_KINDS`) or ``*``; verbs
    required; ``namespace`` required except for cluster-wide kinds; no ``api_group``.
  - v8: ``kind`` is a plural resource name (or ``*``) and ``api_group`` says which group (``*`` any);
    ``api_group`` may be empty only for the core API's resources (``pods``, ...), a v7 singular kind with a
    ``*`` or its v7 group is refused as a mistake, ``namespace`` is required for known namespaced resources.
  - every version: ``name`` required; ``*`` is not combined with other verbs.
* An empty or missing ``kubernetes_labels`` selects no cluster (Teleport v4+; a v3 role without them
  selects every cluster, which the role engine applies).
* User traits are lists of printable strings: they become impersonation headers and label values.
* A token's name is its secret value: messages never show it, and ``token_to_dict(..., with_secrets=False)``
  masks it with :func:`registry.core.resources.mask_token` (the one masking rule).
* ``decode_X(X_to_dict(r)) == r`` for every role, user and token model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from labels import parse_go_duration, validate_selector
from registry.core.codec_common import (
    NAME_RE,
    check_version,
    decode_metadata,
    envelope,
    metadata_dict,
    plain,
)
from registry.core.kube_access import V7_CLUSTER_WIDE_KINDS, V7_KINDS, WILDCARD
from registry.core.resources import (
    RULE_RESOURCES,
    RULE_VERBS,
    TOKEN_ROLES,
    Role,
    RoleConditions,
    Rule,
    Token,
    User,
    mask_token,
)
from registry.core.validation import Fields, check_name, describe, label_errors, quote

USER_NAME_RE = re.compile(r"^[a-zA-Z0-9._@+-]+$")  # user names are often e-mail addresses
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
LEGACY_POD_VERSIONS = ("v3", "v4", "v5", "v6")  # kubernetes_resources restrict pods only, every verb
# The core API group's resources (api_group "" in a v8 role), namespaced and cluster-wide.
_CORE_NAMESPACED = (
    "pods",
    "services",
    "configmaps",
    "secrets",
    "serviceaccounts",
    "persistentvolumeclaims",
    "endpoints",
    "events",
    "limitranges",
    "replicationcontrollers",
    "resourcequotas",
    "podtemplates",
    "bindings",
)
CORE_RESOURCES = frozenset((*_CORE_NAMESPACED, "namespaces", "nodes", "persistentvolumes", "componentstatuses"))
# (api_group, resource) pairs that live in a namespace: a v8 entry for one must name its namespace (Teleport's
# best-effort check; resources it does not know are not checked).
NAMESPACED_RESOURCES = frozenset(
    [("", name) for name in _CORE_NAMESPACED]
    + [("apps", n) for n in ("deployments", "replicasets", "statefulsets", "daemonsets", "controllerrevisions")]
    + [("batch", "jobs"), ("batch", "cronjobs")]
    + [("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings")]
    + [("networking.k8s.io", "ingresses"), ("networking.k8s.io", "networkpolicies")]
    + [("autoscaling", "horizontalpodautoscalers"), ("policy", "poddisruptionbudgets")]
    + [("coordination.k8s.io", "leases"), ("discovery.k8s.io", "endpointslices"), ("events.k8s.io", "events")]
)
_CONDITION_FIELDS = ("rules", "kubernetes_labels", "kubernetes_groups", "kubernetes_users", "kubernetes_resources")


# -- decoding -----------------------------------------------------------------------------------------------


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
    with label_errors(fail=conditions.fail):  # the library names the path (what=)
        selector = validate_selector(raw, what=path)
    return {key: list(value) if isinstance(value, list) else value for key, value in selector.items()}


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
        entry.reject_unknown(("kind", "api_group", "namespace", "name", "verbs"))
        verbs = entry.strings("verbs")
        if not verbs:
            if version in ("v7", "v8"):
                entry.fail(f"{entry.at('verbs')} is required in a {version} role (use ['*'] for every verb)")
            verbs = ("*",)  # before v7 a kubernetes_resources entry granted every verb (setDefaultKubernetesVerbs)
        _one_of(entry, entry.at("verbs"), verbs, KUBE_VERBS)
        if "*" in verbs and len(verbs) > 1:
            entry.fail(f'{entry.at("verbs")}: "*" cannot be used with other verbs')
        resource = {
            "kind": entry.string("kind", required=True, limit=253),
            "namespace": entry.string("namespace", limit=253),
            "name": entry.string("name", required=True, limit=253),
            "verbs": list(verbs),
        }
        if version == "v8":
            resource["api_group"] = entry.string("api_group", limit=253)
            _check_v8_entry(entry, resource)
        else:
            _check_legacy_entry(entry, resource, version, str(entry.raw("api_group") or ""))
        result.append(resource)
    return tuple(result)


def _check_legacy_entry(entry: Fields, resource: Mapping[str, Any], version: str, api_group: str) -> None:
    """Teleport's ``validateKubeResources`` for roles before v8 (their kinds are singular names)."""
    kind, upgrade = resource["kind"], "upgrade the role to version v7 (kinds as listed) or v8 (plural resources)"
    if version in LEGACY_POD_VERSIONS:
        if kind != "pod":
            entry.fail(f"{entry.at('kind')} {quote(kind)} is not supported in a {version} role (only pod); {upgrade}")
        if list(resource["verbs"]) != ["*"]:
            entry.fail(f'{entry.at("verbs")}: a {version} role supports only ["*"]; {upgrade}')
    if api_group:
        entry.fail(f"{entry.at('api_group')} is not supported in a {version} role; upgrade the role to version v8")
    if kind != WILDCARD and kind not in V7_KINDS:
        entry.fail(f"{entry.at('kind')} {quote(kind)} is not supported (supported: *, {', '.join(V7_KINDS)})")
    if not resource["namespace"] and kind not in V7_CLUSTER_WIDE_KINDS:
        entry.fail(f"{entry.at('namespace')} is required for kind {quote(kind)}")


def _check_v8_entry(entry: Fields, resource: Mapping[str, Any]) -> None:
    """Teleport's v8 rules: plural resource names, ``api_group`` empty only for the core API's resources."""
    kind, group = resource["kind"], resource["api_group"]
    if kind in V7_KINDS and group in (WILDCARD, V7_KINDS[kind][1]):
        plural = V7_KINDS[kind][0]
        entry.fail(f"{entry.at('kind')} {quote(kind)} is a v7 kind name: a v8 role names plural resources ({plural})")
    if not group and kind not in CORE_RESOURCES:
        entry.fail(
            f"{entry.at('api_group')} is required for resource {quote(kind)} in a v8 role "
            '("" only for the core API\'s resources such as pods; "*" for every group)'
        )
    if not resource["namespace"] and (group, kind) in NAMESPACED_RESOURCES:
        entry.fail(f"{entry.at('namespace')} is required for resource {quote(kind)}")


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


def decode_role(doc: Mapping[str, Any]) -> Role:
    top, subject = envelope(doc, "role")
    version = check_version(top, Role.VERSIONS, Role.VERSION)
    metadata = decode_metadata(top, subject)
    spec = top.mapping("spec")
    spec.reject_unknown(("allow", "deny", "options"), hint=" (kubeport roles have allow, deny and options)")
    options = spec.mapping("options")
    supported = ", ".join(ROLE_OPTIONS)
    options.reject_unknown(ROLE_OPTIONS, hint=f" (kubeport does not support it; supported: {supported})")
    ttl = options.raw("max_session_ttl")
    if ttl is not None:
        with label_errors(options.at("max_session_ttl"), value=ttl, fail=options.fail):
            parse_go_duration(ttl, what=options.at("max_session_ttl"))
    return Role(
        metadata=metadata,
        allow=_conditions(spec, "allow", version),
        deny=_conditions(spec, "deny", version),
        options=dict(options.data),
        version=version,
    )


def decode_user(doc: Mapping[str, Any]) -> User:
    top, subject = envelope(doc, "user")
    check_version(top, (User.VERSION,), User.VERSION)
    metadata = decode_metadata(top, subject, pattern=USER_NAME_RE)
    spec = top.mapping("spec")
    spec.reject_unknown(("roles", "traits"), hint=" (kubeport users have roles and traits)")
    roles = spec.strings("roles")
    for index, role in enumerate(roles):
        check_name(role, subject=subject, path=f"{spec.at('roles')}[{index}]", pattern=NAME_RE)
    traits_fields = spec.mapping("traits")
    traits: dict[str, tuple[str, ...]] = {}
    for key in traits_fields:
        if not isinstance(key, str) or len(key) > 256 or not key.isprintable():
            traits_fields.fail(
                f"{traits_fields.path} key {describe(key)} must be printable text of at most 256 characters"
            )
        values = traits_fields.raw(key)
        if values is None:
            values = []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            traits_fields.fail(f"{traits_fields.at(key)} must be a list of strings (got {describe(values)})")
        for index, value in enumerate(values):
            if not value.isprintable() or len(value) > 1024:
                traits_fields.fail(
                    f"{traits_fields.at(key)}[{index}] must be printable text of at most 1024 characters "
                    f"(got {quote(value)})"
                )
        traits[key] = tuple(values)
    return User(metadata=metadata, roles=roles, traits=traits)


def decode_token(doc: Mapping[str, Any]) -> Token:
    top, subject = envelope(doc, "token")
    check_version(top, (Token.VERSION,), Token.VERSION)
    metadata = decode_metadata(top, subject, secret=True)
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


# -- encoding -----------------------------------------------------------------------------------------------


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
        out["kubernetes_resources"] = [plain(dict(r)) for r in conditions.kubernetes_resources]
    return out


def role_to_dict(r: Role) -> dict[str, Any]:
    role_spec: dict[str, Any] = {"allow": _conditions_dict(r.allow), "deny": _conditions_dict(r.deny)}
    if r.options:
        role_spec["options"] = plain(dict(r.options))
    return {"kind": r.KIND, "version": r.version, "metadata": metadata_dict(r.metadata), "spec": role_spec}


def user_to_dict(r: User) -> dict[str, Any]:
    user_spec: dict[str, Any] = {}
    if r.roles:
        user_spec["roles"] = list(r.roles)
    if r.traits:
        user_spec["traits"] = {key: list(values) for key, values in r.traits.items()}
    return {"kind": r.KIND, "version": r.VERSION, "metadata": metadata_dict(r.metadata), "spec": user_spec}


def token_to_dict(r: Token, *, with_secrets: bool) -> dict[str, Any]:
    """``with_secrets=False`` masks the token's value (its name)."""
    name = r.metadata.name if with_secrets else mask_token(r.metadata.name)
    return {
        "kind": r.KIND,
        "version": r.VERSION,
        "metadata": metadata_dict(r.metadata, name=name),
        "spec": {"roles": list(r.roles), "join_method": r.join_method},
    }
