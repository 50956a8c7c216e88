"""Authorization and impersonation of the fake API server, evaluated the way kube-apiserver does.

Pure (reads stored RBAC objects through the small :class:`RbacObjects` protocol; no I/O).

Faithful:
- RBAC: ClusterRoleBindings grant everywhere, RoleBindings in their namespace (roleRef Role or ClusterRole);
  subjects User (by name), Group (by membership) and ServiceAccount (``system:serviceaccount:<ns>:<name>``,
  namespace defaulting to the binding's); rules match verbs, apiGroups, resources (``*``, ``res/sub``,
  ``*/sub``), resourceNames and nonResourceURLs (``*`` and ``prefix*``). Members of ``system:masters`` are
  allowed everything before RBAC is consulted. Denials carry the real message shape
  (``User "bob" cannot create resource "clusterroles" in API group "rbac.authorization.k8s.io" at the
  cluster scope``) and, when a binding names a missing role, the ``RBAC: ... not found`` reason.
- Impersonation (``Impersonate-User``, repeated ``Impersonate-Group``, ``Impersonate-Uid``,
  ``Impersonate-Extra-<key>``): each requested item is authorized as verb ``impersonate`` on ``users``,
  ``serviceaccounts`` (namespaced), ``groups`` (core group) or ``uids``/``userextras/<key>``
  (authentication.k8s.io) with the item as resourceName; the first denial is a 403; groups, extras or a uid
  without a user is the real server's 500 plain-text error. The resulting user gets ``system:authenticated``
  unless it asked for it or ``system:unauthenticated``; a service account without explicit groups gets its
  fixed ones.

Simplified: no aggregated ClusterRoles, no Node/Webhook authorizers, no escalation/bind checks on writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from tests.fakes.kube_discovery import (
    AUTHN,
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    NAMESPACES,
    ROLE_BINDINGS,
    ROLES,
    SERVICE_ACCOUNTS,
    ResourceType,
)
from tests.fakes.kube_objects import name_problems
from tests.fakes.kube_status import KubeStatusError, PlainTextError, forbidden

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Attributes:
    """What is being asked (authorizer.Attributes)."""

    user: UserInfo
    verb: str
    resource_request: bool
    api_group: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class RbacObjects(Protocol):
    """Read-only access to stored objects (KubeStore satisfies it)."""

    def peek(self, rt: ResourceType, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def iter_objects(self, rt: ResourceType, namespace: str | None = None) -> Iterable[Mapping[str, Any]]: ...


def sa_username(namespace: str, name: str) -> str:
    return f"{SA_PREFIX}{namespace}:{name}"


def sa_groups(namespace: str) -> tuple[str, ...]:
    return ("system:serviceaccounts", f"system:serviceaccounts:{namespace}")


def split_sa_username(username: str) -> tuple[str, str] | None:
    """(namespace, name) of a service-account user name, or None (serviceaccount.SplitUsername)."""
    if not username.startswith(SA_PREFIX):
        return None
    parts = username[len(SA_PREFIX) :].split(":")
    if len(parts) != 2 or name_problems(NAMESPACES, parts[0]) or name_problems(SERVICE_ACCOUNTS, parts[1]):
        return None
    return parts[0], parts[1]


# ------------------------------------------------------------------------------------------ rule matching


def _strings(rule: Mapping[str, Any], key: str) -> list[str]:
    value = rule.get(key) or []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def rule_allows(attrs: Attributes, rule: Mapping[str, Any]) -> bool:
    verbs = _strings(rule, "verbs")
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        return any(
            url in ("*", attrs.path) or (url.endswith("*") and attrs.path.startswith(url.rstrip("*")))
            for url in _strings(rule, "nonResourceURLs")
        )
    groups = _strings(rule, "apiGroups")
    if "*" not in groups and attrs.api_group not in groups:
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = _strings(rule, "resources")
    if not any(r in ("*", combined) or (attrs.subresource and r == f"*/{attrs.subresource}") for r in resources):
        return False
    names = _strings(rule, "resourceNames")
    return not names or attrs.name in names


def _applies(subject: Any, user: UserInfo, binding_namespace: str) -> bool:
    if not isinstance(subject, Mapping):
        return False
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.name == sa_username(namespace, str(name))
    return False


def _describe_subject(subject: Mapping[str, Any], binding_namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or binding_namespace}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


@dataclass(frozen=True)
class _Grant:
    """A role reached through a binding that applies to the user."""

    source: str  # for "allowed by ..." reasons
    rules: tuple[Mapping[str, Any], ...]


def _grants(objects: RbacObjects, user: UserInfo, namespace: str, errors: list[str]) -> Iterable[_Grant]:
    """Every role granted to ``user`` by cluster-wide bindings, then by bindings in ``namespace``."""
    sources = [(CLUSTER_ROLE_BINDINGS, "")] + ([(ROLE_BINDINGS, namespace)] if namespace else [])
    for binding_type, binding_ns in sources:
        for binding in objects.iter_objects(binding_type, binding_ns if binding_type.namespaced else None):
            subjects = binding.get("subjects") or []
            applying = [s for s in subjects if _applies(s, user, binding_ns)] if isinstance(subjects, list) else []
            if not applying:
                continue
            ref = binding.get("roleRef") or {}
            ref_kind, ref_name = ref.get("kind"), str(ref.get("name", ""))
            role_type = ROLES if ref_kind == "Role" else CLUSTER_ROLES
            role = objects.peek(role_type, binding_ns if role_type is ROLES else "", ref_name)
            if role is None:
                errors.append(f'{role_type.singular}.{role_type.group} "{ref_name}" not found')
                continue
            rules = role.get("rules") or []
            name = binding["metadata"]["name"]
            label = (
                f'ClusterRoleBinding "{name}"'
                if binding_type is CLUSTER_ROLE_BINDINGS
                else f'RoleBinding "{name}/{binding_ns}"'
            )
            source = f'{label} of {ref_kind} "{ref_name}" to {_describe_subject(applying[0], binding_ns)}'
            yield _Grant(source, tuple(r for r in rules if isinstance(r, Mapping)) if isinstance(rules, list) else ())


def authorize(objects: RbacObjects, attrs: Attributes) -> Decision:
    if MASTERS in attrs.user.groups:
        return Decision(True)
    errors: list[str] = []
    for grant in _grants(objects, attrs.user, attrs.namespace, errors):
        if any(rule_allows(attrs, rule) for rule in grant.rules):
            return Decision(True, f"RBAC: allowed by {grant.source}")
    if not errors:
        return Decision(False)
    joined = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return Decision(False, f"RBAC: {joined}")


def forbidden_error(attrs: Attributes, reason: str = "") -> KubeStatusError:
    """The 403 the real server writes for a denied request (responsewriters.Forbidden)."""
    who = attrs.user.name
    if not attrs.resource_request:
        message = f'User "{who}" cannot {attrs.verb} path "{attrs.path}"'
        return forbidden("", "", "", message + (f": {reason}" if reason else ""))
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    message = f'User "{who}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.api_group}" {scope}'
    return forbidden(attrs.resource, attrs.api_group, attrs.name, message + (f": {reason}" if reason else ""))


def rules_for(
    objects: RbacObjects, user: UserInfo, namespace: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(resourceRules, nonResourceRules) for a SelfSubjectRulesReview in ``namespace``."""
    resource_rules: list[dict[str, Any]] = []
    non_resource_rules: list[dict[str, Any]] = []
    for grant in _grants(objects, user, namespace, []):
        for rule in grant.rules:
            if _strings(rule, "nonResourceURLs"):
                non_resource_rules.append(
                    {"verbs": _strings(rule, "verbs"), "nonResourceURLs": _strings(rule, "nonResourceURLs")}
                )
            else:
                entry: dict[str, Any] = {
                    "verbs": _strings(rule, "verbs"),
                    "apiGroups": _strings(rule, "apiGroups"),
                    "resources": _strings(rule, "resources"),
                }
                if _strings(rule, "resourceNames"):
                    entry["resourceNames"] = _strings(rule, "resourceNames")
                resource_rules.append(entry)
    return resource_rules, non_resource_rules


# ----------------------------------------------------------------------------------------- impersonation


@dataclass(frozen=True)
class _Requested:
    """One thing the caller asks to act as (the apiserver builds a v1.ObjectReference per item)."""

    kind: str  # ServiceAccount | User | Group | UserExtra | UID
    name: str
    namespace: str = ""
    api_version: str = ""
    field_path: str = ""

    def go_repr(self) -> str:
        # Go's %v of an ObjectReference: Kind Namespace Name UID APIVersion ResourceVersion FieldPath.
        return "{" + " ".join([self.kind, self.namespace, self.name, "", self.api_version, "", self.field_path]) + "}"


def _requested(headers: list[tuple[str, str]]) -> tuple[list[_Requested], bool]:
    """Everything the impersonation headers ask for, and whether a user was named."""
    first = {name: value for name, value in reversed(headers)}  # Go's Header.Get: the first value
    wanted: list[_Requested] = []
    user = first.get("impersonate-user", "")
    if user:
        sa = split_sa_username(user)
        wanted.append(_Requested("ServiceAccount", sa[1], sa[0]) if sa else _Requested("User", user))
    wanted += [_Requested("Group", value) for name, value in headers if name == "impersonate-group"]
    for name, value in headers:
        if name.startswith("impersonate-extra-"):
            key = unquote(name[len("impersonate-extra-") :].lower())
            wanted.append(_Requested("UserExtra", value, api_version=f"{AUTHN}/v1", field_path=key))
    uid = first.get("impersonate-uid", "")
    if uid:
        wanted.append(_Requested("UID", uid, api_version=f"{AUTHN}/v1"))
    return wanted, bool(user)


def impersonate(
    objects: RbacObjects, requester: UserInfo, headers: list[tuple[str, str]], request_uri: str
) -> UserInfo | None:
    """The identity a request runs as after its impersonation headers, or None when it has none.

    Raises a 403 KubeStatusError when the requester may not impersonate an item, and the real server's
    500 PlainTextError for groups/extras/uid without a user."""
    wanted, has_user = _requested(headers)
    if not wanted:
        return None
    if not has_user:
        listed = "[" + " ".join(item.go_repr() for item in wanted) + "]"
        raise PlainTextError(
            500, f'Internal Server Error: "{request_uri}": requested {listed} without impersonating a user'
        )
    groups_given = any(item.kind == "Group" for item in wanted)
    username, uid = "", ""
    groups: list[str] = []
    extra: dict[str, tuple[str, ...]] = {}
    for item in wanted:
        if item.kind == "ServiceAccount":
            attrs = Attributes(requester, "impersonate", True, "", item.namespace, "serviceaccounts", name=item.name)
            username = sa_username(item.namespace, item.name)
            if not groups_given:
                groups = list(sa_groups(item.namespace))
        elif item.kind == "User":
            attrs = Attributes(requester, "impersonate", True, "", "", "users", name=item.name)
            username = item.name
        elif item.kind == "Group":
            attrs = Attributes(requester, "impersonate", True, "", "", "groups", name=item.name)
            groups.append(item.name)
        elif item.kind == "UserExtra":
            attrs = Attributes(requester, "impersonate", True, AUTHN, "", "userextras", item.field_path, item.name)
            extra[item.field_path] = (*extra.get(item.field_path, ()), item.name)
        else:
            attrs = Attributes(requester, "impersonate", True, AUTHN, "", "uids", name=item.name)
            uid = item.name
        decision = authorize(objects, attrs)
        if not decision.allowed:
            raise forbidden_error(attrs, decision.reason)
    if username != ANONYMOUS:
        if AUTHENTICATED not in groups and UNAUTHENTICATED not in groups:
            groups.append(AUTHENTICATED)
    elif UNAUTHENTICATED not in groups:
        groups.append(UNAUTHENTICATED)
    return UserInfo(username, tuple(groups), uid, extra)
