"""The access-control kinds of the wire codec: role, user and token, decoded and encoded.

Reached through :mod:`registry.core.codec` (``resource_from_dict``/``resource_to_dict`` dispatch here);
the envelope, metadata and timestamp rules shared with the other kinds are in ``codec_common``.

Invariants:

* Roles accept only what kubeport enforces (rules, kubernetes_labels/groups/users/resources and the
  ``max_session_ttl`` option); anything else Teleport knows is rejected with its path, never ignored, so a
  role never grants or denies less than its author believes.
* An empty or missing ``kubernetes_labels`` selects no cluster (Teleport v4+); a ``kubernetes_resources``
  entry without verbs grants every verb before v7 and is an error in v7.
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
        if len(key) > 256:
            traits_fields.fail(f"{traits_fields.path} has a key longer than 256 characters")
        values = traits_fields.raw(key)
        if values is None:
            values = []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            traits_fields.fail(f"{traits_fields.at(key)} must be a list of strings (got {describe(values)})")
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
