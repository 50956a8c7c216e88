"""The role engine of the kubectl path: who may reach which cluster, do what, and as whom.

Pure (no I/O): the front door calls :func:`cluster_visible` to route and to answer like a missing cluster;
the agent's forwarder calls :func:`authorize` on every request (with the user's *current* roles and the
cluster's static ∪ dynamic labels from heartbeats) and then :func:`choose_identity` with the client's
``Impersonate-*`` request (parsed by :mod:`registry.core.kube_headers`). It lives in ``registry.core``
because DESIGN.md puts the shared, pure role engine there: the registry (front door, ``kpctl auth sign``)
and the agent both need it, and ``registry`` must not import ``agent``.

Teleport's semantics (teleport-behaviour.md §3.4, §3.5, §5.3, §5.4):

* ``kubernetes_labels`` select clusters with :func:`labels.match_labels` (globs, ``^re$`` RE2, ``'*': '*'``).
  An allow condition with no labels selects nothing (v4+); a v3 role without allow labels selects every
  cluster. A deny condition whose labels match hides the cluster. Hidden or unselected clusters fail with
  the same :class:`NotFound` as an unknown name (:func:`cluster_not_found`): existence is not leaked.
* Deny wins and is greedy: a deny ``kubernetes_resources`` entry that matches the request refuses it on
  every cluster; a deny pattern that cannot be evaluated counts as a match, an allow one as no match.
* ``kubernetes_groups`` / ``kubernetes_users`` come from the allow roles that select the cluster *and*
  allow the request's resource, minus the deny lists of every role (an empty deny selector means all
  clusters for this purpose). None at all → :class:`NotFound` with Teleport's "does not allow Kubernetes
  access" wording. No users → the kubeport user name; ``system:authenticated`` is always a group.
* Templates ``{{internal.kubernetes_groups}}``, ``{{internal.kubernetes_users}}`` (and the other internal
  names Teleport allows, and ``{{external.<trait>}}``), optionally with a literal prefix/suffix, expand from
  the user's traits into one value per trait value. A missing trait drops the value; anything else that
  looks like a template (functions, unknown namespaces) is dropped too: a template never grants its literal
  text. In a label selector a template that does not expand matches nothing.
* ``kubernetes_resources`` are normalised to role-v8 rules (plural ``resource`` + ``api_group``) exactly as
  Teleport converts older versions (:func:`resource_rules`): v3–v6 restrict pods only (every other kind is
  allowed), v7 kinds map to plural resources and their groups (``namespace`` kind = everything in the
  namespace; ``kind: '*'`` also grants the cluster-wide kinds), v8 is taken as written. Defaults when a
  role selects clusters but lists no resources: v3–v6 every pod, v7/v8 everything.
* The role verb of exec/attach is ``exec``, of port-forward ``portforward``, of ``.../proxy`` ``proxy``;
  otherwise it is the Kubernetes verb from :mod:`registry.core.kube_request`.

Deliberate difference: Teleport lets a list/watch across names or namespaces through and filters the
items it returns; kubeport forwards bytes and never filters, so such a request is allowed only by a rule
whose name (and namespace) patterns also match the empty string (``*``) — a narrower rule must name the
object or the namespace. It fails closed instead of leaking unfiltered lists (security-checklist #8).

Invariant: every refusal is a :class:`KubeportError` whose ``to_status()`` is the Kubernetes ``Status``
kubectl prints (teleport-behaviour.md §5.5).

Wiring, per request read by the agent (every step raises a Status-shaped error to send back)::

    head = kube_headers.inspect(h11_request.headers)
    request = kube_request.parse_request(method, path_without_prefix, query)
    access = kube_access.authorize(user, current_roles, cluster_name, labels, request)
    identity = kube_access.choose_identity(access, head.requested_user, head.requested_groups)
    upstream_headers = kube_headers.outbound(head, identity)  # + Authorization and Host, by the forwarder
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product

from labels import LabelError, match_labels
from registry.core.errors import AccessDenied, NotFound
from registry.core.kube_request import KubeRequest
from registry.core.resources import Role, RoleConditions, User

WILDCARD = "*"
SYSTEM_AUTHENTICATED = "system:authenticated"
READ_ONLY_VERBS = frozenset({"get", "list", "watch"})

# Teleport's role-v7 kinds -> (plural resource, API group); the order is Teleport's.
V7_KINDS: Mapping[str, tuple[str, str]] = {
    "pod": ("pods", ""),
    "secret": ("secrets", ""),
    "configmap": ("configmaps", ""),
    "namespace": ("namespaces", ""),
    "service": ("services", ""),
    "serviceaccount": ("serviceaccounts", ""),
    "kube_node": ("nodes", ""),
    "persistentvolume": ("persistentvolumes", ""),
    "persistentvolumeclaim": ("persistentvolumeclaims", ""),
    "deployment": ("deployments", "apps"),
    "replicaset": ("replicasets", "apps"),
    "statefulset": ("statefulsets", "apps"),
    "daemonset": ("daemonsets", "apps"),
    "clusterrole": ("clusterroles", "rbac.authorization.k8s.io"),
    "kube_role": ("roles", "rbac.authorization.k8s.io"),
    "clusterrolebinding": ("clusterrolebindings", "rbac.authorization.k8s.io"),
    "rolebinding": ("rolebindings", "rbac.authorization.k8s.io"),
    "cronjob": ("cronjobs", "batch"),
    "job": ("jobs", "batch"),
    "certificatesigningrequest": ("certificatesigningrequests", "certificates.k8s.io"),
    "ingress": ("ingresses", "networking.k8s.io"),
}
V7_CLUSTER_WIDE_KINDS = (
    "namespace",
    "kube_node",
    "persistentvolume",
    "clusterrole",
    "clusterrolebinding",
    "certificatesigningrequest",
)
INTERNAL_TRAITS = frozenset(
    {
        "logins",
        "windows_logins",
        "kubernetes_groups",
        "kubernetes_users",
        "db_names",
        "db_users",
        "db_roles",
        "aws_role_arns",
        "azure_identities",
        "gcp_service_accounts",
        "jwt",
        "github_orgs",
    }
)

NO_KUBE_ACCESS = (
    "Your user's kubeport role does not allow Kubernetes access. Please ask cluster administrator to ensure "
    "your role has appropriate kubernetes_groups and kubernetes_users set."
)
_DENIED = "impersonation request has been denied"
SEVERAL_USERS = (
    "please select a user to impersonate, refusing to select a user due to several kubernetes_users set up "
    "for this user"
)

_TEMPLATE = re.compile(r"^(?P<prefix>[^{}]*)\{\{\s*(?P<ns>[A-Za-z_]+)\.(?P<key>[^{}\s()]+)\s*\}\}(?P<suffix>[^{}]*)$")


# -- values -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeResourceRule:
    """One ``kubernetes_resources`` entry in role-v8 form (``resource`` is a plural name or ``*``)."""

    resource: str
    api_group: str
    namespace: str
    name: str
    verbs: tuple[str, ...]


@dataclass(frozen=True)
class KubeAccess:
    """What the user may be on one cluster for one request: the sets impersonation may pick from."""

    cluster: str
    user: str  # the kubeport user name
    roles: tuple[str, ...]  # the allow roles that granted this request
    kube_users: tuple[str, ...]
    kube_groups: tuple[str, ...]  # always includes system:authenticated


@dataclass(frozen=True)
class Identity:
    """Whom the API server will see: one ``Impersonate-User`` and one ``Impersonate-Group`` per group."""

    user: str
    groups: tuple[str, ...]


def cluster_not_found(cluster: str) -> NotFound:
    """The one answer for an unknown cluster and for a cluster the user's roles do not select."""
    return NotFound(f'Kubernetes cluster "{cluster}" not found')


# -- templates ----------------------------------------------------------------------------------------------


def expand_template(value: str, traits: Mapping[str, Sequence[str]]) -> list[str]:
    """``value`` with a ``{{internal.x}}`` / ``{{external.x}}`` template replaced by each trait value.

    A plain value is returned as is. A missing or empty trait, an internal name Teleport does not know, or
    anything template-like that is not exactly one such variable (functions, nesting) yields ``[]``.
    """
    if "{{" not in value and "}}" not in value:
        return [value]
    found = _TEMPLATE.match(value)
    if found is None:
        return []
    namespace, key = found["ns"], found["key"]
    if namespace not in ("internal", "external") or (namespace == "internal" and key not in INTERNAL_TRAITS):
        return []
    return [f"{found['prefix']}{item}{found['suffix']}" for item in traits.get(key, ()) if item]


def _expand_all(values: Iterable[str], traits: Mapping[str, Sequence[str]]) -> list[str]:
    return _unique(item for value in values for item in expand_template(value, traits))


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _selector(raw: Mapping[str, str | list[str]], traits: Mapping[str, Sequence[str]]) -> dict[str, list[str]] | None:
    """Label selector with templates applied to keys and values; None when it can never match.

    A value whose template does not expand is dropped (a key left without values matches nothing); a key
    whose template does not expand makes the whole selector match nothing (Teleport substitutes ``""``).
    """
    selector: dict[str, list[str]] = {}
    for key, wanted in raw.items():
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        expanded = [item for value in values for item in expand_template(value, traits)]
        keys = expand_template(key, traits)
        if not keys:
            return None
        for new_key in keys:
            selector.setdefault(new_key, []).extend(expanded)
    return selector


# -- clusters -----------------------------------------------------------------------------------------------


def _allow_selector(role: Role, traits: Mapping[str, Sequence[str]]) -> dict[str, list[str]] | None:
    if role.version == "v3" and not role.allow.kubernetes_labels:
        return {WILDCARD: [WILDCARD]}  # v3 roles without kubernetes_labels reach every cluster
    return _selector(role.allow.kubernetes_labels, traits)


def _matches(selector: Mapping[str, list[str]] | None, labels: Mapping[str, str], *, on_error: bool) -> bool:
    if selector is None:
        return False
    try:
        return match_labels(selector, labels)
    except LabelError:
        return on_error


def _allows_cluster(role: Role, traits: Mapping[str, Sequence[str]], labels: Mapping[str, str]) -> bool:
    return _matches(_allow_selector(role, traits), labels, on_error=False)


def _denies_cluster(role: Role, traits: Mapping[str, Sequence[str]], labels: Mapping[str, str]) -> bool:
    return _matches(_selector(role.deny.kubernetes_labels, traits), labels, on_error=True)


def cluster_visible(user: User, roles: Sequence[Role], labels: Mapping[str, str]) -> bool:
    """May ``user`` see a cluster with ``labels`` at all (``kube ls``, kubeconfig contexts, routing)?"""
    traits = user.traits
    if any(_denies_cluster(role, traits, labels) for role in roles):
        return False
    return any(_allows_cluster(role, traits, labels) for role in roles)


# -- kubernetes_resources -----------------------------------------------------------------------------------


def _raw_entries(conditions: RoleConditions, traits: Mapping[str, Sequence[str]]) -> list[KubeResourceRule]:
    """Entries as written (kind in ``resource``), templates in namespace/name/verbs expanded (product)."""
    entries = []
    for raw in conditions.kubernetes_resources:
        verbs = tuple(_expand_all(raw.get("verbs") or [WILDCARD], traits))
        namespaces = expand_template(str(raw.get("namespace") or ""), traits)
        names = expand_template(str(raw.get("name") or ""), traits)
        for namespace, name in product(namespaces, names):
            entries.append(
                KubeResourceRule(
                    resource=str(raw.get("kind") or ""),
                    api_group=str(raw.get("api_group") or ""),
                    namespace=namespace,
                    name=name,
                    verbs=verbs,
                )
            )
    return entries


def _legacy_to_v8(entries: Sequence[KubeResourceRule]) -> list[KubeResourceRule]:
    """Teleport's ``convertKubernetesResourcesBetweenRoleVersions`` for roles before v8."""
    converted: list[KubeResourceRule] = []
    extra: list[KubeResourceRule] = []
    for entry in entries:
        kind = entry.resource
        if kind == "namespace":
            namespace = "^.+$" if entry.name == WILDCARD else entry.name
            converted.append(KubeResourceRule(WILDCARD, WILDCARD, namespace, WILDCARD, entry.verbs))
            extra.append(KubeResourceRule("namespaces", "", "", namespace, entry.verbs))
            continue
        namespace = "" if kind in V7_CLUSTER_WIDE_KINDS else entry.namespace
        if kind in V7_KINDS:
            plural, group = V7_KINDS[kind]
            converted.append(KubeResourceRule(plural, group, namespace, entry.name, entry.verbs))
        else:
            converted.append(KubeResourceRule(kind, WILDCARD, namespace, entry.name, entry.verbs))
        if kind == WILDCARD:
            for wide in V7_CLUSTER_WIDE_KINDS:
                if wide != "namespace":
                    extra.append(KubeResourceRule(V7_KINDS[wide][0], WILDCARD, "", entry.name, entry.verbs))
    return converted + extra


def resource_rules(role: Role, condition: str, traits: Mapping[str, Sequence[str]]) -> tuple[KubeResourceRule, ...]:
    """The role's ``kubernetes_resources`` for ``condition`` ("allow" or "deny") in v8 form, defaults applied."""
    if condition not in ("allow", "deny"):
        raise ValueError(f"condition must be allow or deny (got {condition!r})")
    conditions = role.allow if condition == "allow" else role.deny
    entries = _raw_entries(conditions, traits)
    if condition == "deny":
        return tuple(entries if role.version == "v8" else _legacy_to_v8(entries))
    if not _allow_selector(role, traits):
        return ()  # selects no cluster: grants nothing
    everything = KubeResourceRule(WILDCARD, WILDCARD, WILDCARD, WILDCARD, (WILDCARD,))
    if role.version == "v8":
        return tuple(entries) if conditions.kubernetes_resources else (everything,)
    if role.version == "v7":
        if not conditions.kubernetes_resources:
            entries = [KubeResourceRule(WILDCARD, "", WILDCARD, WILDCARD, (WILDCARD,))]
        return tuple(_legacy_to_v8(entries))
    # v3-v6: only pods were ever restricted; every other kind stays open.
    if not conditions.kubernetes_resources or (
        len(entries) == 1 and entries[0].name == WILDCARD and entries[0].namespace == WILDCARD
    ):
        return (everything,)
    rules = _legacy_to_v8(entries)
    for kind, (plural, group) in V7_KINDS.items():
        if kind not in ("pod", "namespace"):
            rules.append(KubeResourceRule(plural, group, WILDCARD, WILDCARD, (WILDCARD,)))
    return tuple(rules)


def role_verb(request: KubeRequest) -> str:
    """The verb ``kubernetes_resources`` speak for ``request`` (Teleport's exec/portforward verbs)."""
    if request.subresource in ("exec", "attach"):
        return "exec"
    if request.subresource == "portforward":
        return "portforward"
    if request.subresource == "proxy":
        return "proxy"
    return request.verb


def _glob(value: str, pattern: str, *, on_error: bool) -> bool:
    """One value against one glob / ``^re$`` pattern, with the labels library's matcher (RE2, anchored)."""
    return _matches({"v": [pattern]}, {"v": value}, on_error=on_error)


def rule_matches(rule: KubeResourceRule, request: KubeRequest, *, deny: bool) -> bool:
    """Teleport's ``KubeResourceMatchesRegex`` for one v8 rule (a broken pattern matches only in deny)."""
    verb = role_verb(request)
    if not verb or not rule.verbs or (rule.verbs[0] != WILDCARD and verb not in rule.verbs):
        return False
    if (
        not deny
        and request.resource == "namespaces"
        and request.api_group == ""
        and verb in READ_ONLY_VERBS
        and rule.resource != "namespaces"
        and rule.namespace
        and _glob(request.name, rule.namespace, on_error=False)
    ):
        return True  # read access to anything inside namespace N makes namespace N itself visible
    if rule.resource not in (WILDCARD, request.resource):
        return False
    return (
        _glob(request.api_group, rule.api_group, on_error=deny)
        and _glob(request.name, rule.name, on_error=deny)
        and _glob(request.namespace, rule.namespace, on_error=deny)
    )


def _resource_words(request: KubeRequest) -> str:
    resource = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
    scope = f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
    return f'resource "{resource}" in API group "{request.api_group}" {scope}'


def forbidden(user: str, request: KubeRequest) -> AccessDenied:
    """kubectl's own wording for a refused resource request, plus where to look (Teleport §5.3)."""
    resource = f"{request.resource}.{request.api_group}" if request.api_group else request.resource
    target = f"{resource}/{request.name}" if request.name else resource
    namespace = f" --namespace {request.namespace}" if request.namespace else ""
    return AccessDenied(
        f'{request.describe()} is forbidden: User "{user}" cannot {request.verb} {_resource_words(request)}\n'
        f"Ask your kubeport admin to ensure that your kubeport role includes access to the {request.resource} "
        f'in "kubernetes_resources" field.\n'
        f"Check by running: kubectl auth can-i {request.verb} {target}{namespace}"
    )


# -- the decision -------------------------------------------------------------------------------------------


def authorize(
    user: User, roles: Sequence[Role], cluster: str, labels: Mapping[str, str], request: KubeRequest
) -> KubeAccess:
    """Decide one request of ``user`` (with their current ``roles``) to ``cluster`` (``labels`` = static ∪
    dynamic). Returns the allowed impersonation sets, or raises :class:`NotFound` (cluster hidden, or no
    kubernetes_groups/users at all) or :class:`AccessDenied` (resource refused)."""
    traits = user.traits
    if not cluster_visible(user, roles, labels):
        raise cluster_not_found(cluster)
    granting = [role for role in roles if _allows_cluster(role, traits, labels)]
    if request.is_resource:
        for role in roles:
            if any(rule_matches(rule, request, deny=True) for rule in resource_rules(role, "deny", traits)):
                raise forbidden(user.name, request)
        granting = [
            role
            for role in granting
            if any(rule_matches(rule, request, deny=False) for rule in resource_rules(role, "allow", traits))
        ]
        if not granting:
            raise forbidden(user.name, request)
    groups = _expand_all((g for role in granting for g in role.allow.kubernetes_groups), traits)
    users = _expand_all((u for role in granting for u in role.allow.kubernetes_users), traits)
    denied_groups: set[str] = set()
    denied_users: set[str] = set()
    for role in roles:
        raw = role.deny.kubernetes_labels
        # For groups and users an empty deny selector means every cluster (Teleport's getKubeLabelMatchers).
        selector = _selector(raw, traits) if raw else {WILDCARD: [WILDCARD]}
        if _matches(selector, labels, on_error=True):
            denied_groups.update(_expand_all(role.deny.kubernetes_groups, traits))
            denied_users.update(_expand_all(role.deny.kubernetes_users, traits))
    groups = [g for g in groups if g not in denied_groups]
    users = [u for u in users if u not in denied_users]
    if not groups and not users:
        raise NotFound(NO_KUBE_ACCESS)
    if not users:
        users = [user.name]
    if SYSTEM_AUTHENTICATED not in groups:
        groups.append(SYSTEM_AUTHENTICATED)
    return KubeAccess(
        cluster=cluster,
        user=user.name,
        roles=tuple(role.name for role in granting),
        kube_users=tuple(users),
        kube_groups=tuple(groups),
    )


def choose_identity(access: KubeAccess, requested_user: str | None, requested_groups: Sequence[str]) -> Identity:
    """Whom to impersonate, given the client's own ``Impersonate-User``/``-Group`` request (Teleport §5.4).

    ``requested_user`` None or ``""`` means "not asked" (kubectl sends an empty one with ``--as-group``).
    Requested values must lie within the allowed sets; groups always include ``system:authenticated``.
    """
    if requested_user:
        if requested_user not in access.kube_users:
            raise AccessDenied(f'{_DENIED}, user header "{requested_user}" is not allowed in roles')
        chosen = requested_user
    elif len(access.kube_users) == 1:
        chosen = access.kube_users[0]
    elif len(access.kube_users) > 1:
        raise AccessDenied(SEVERAL_USERS)
    else:
        raise AccessDenied("assumed at least one user to be present")
    for group in requested_groups:
        if group not in access.kube_groups:
            raise AccessDenied(f'{_DENIED}, group header "{group}" value is not allowed in roles')
    groups = _unique(requested_groups) if requested_groups else list(access.kube_groups)
    if SYSTEM_AUTHENTICATED not in groups:
        groups.append(SYSTEM_AUTHENTICATED)
    return Identity(user=chosen, groups=tuple(groups))
