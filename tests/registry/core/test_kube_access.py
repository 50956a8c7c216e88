"""The role engine (registry.core.kube_access), table-driven: every seed role, Teleport's rules, deny wins."""

from __future__ import annotations

from typing import Any

import pytest

from registry.core.codec import decode_resources
from registry.core.errors import AccessDenied, BadParameter, NotFound
from registry.core.kube_access import (
    NO_KUBE_ACCESS,
    SEVERAL_USERS,
    SYSTEM_AUTHENTICATED,
    Identity,
    KubeAccess,
    authorize,
    choose_identity,
    cluster_visible,
    expand_template,
    resource_rules,
)
from registry.core.kube_request import KubeRequest, parse_request
from registry.core.resources import Metadata, Role, RoleConditions, User
from tests.helpers import KUBE_ACCESS

# -- roles from the seeds (YAML through the real codec where it accepts the version) --------------------------

SEED_003_KUBE_ACCESS = KUBE_ACCESS


def _role_yaml(text: str) -> Role:
    (role,) = decode_resources(text, source="test")
    assert isinstance(role, Role)
    return role


def _role(
    name: str, version: str = "v7", *, allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None
) -> Role:
    """A role model built directly (what the codec refuses, such as seed 004's v6 role, still reaches the
    engine from an older registry's store: the engine must read it as Teleport would)."""
    return Role(
        metadata=Metadata(name=name),
        allow=RoleConditions(**(allow or {})),
        deny=RoleConditions(**(deny or {})),
        version=version,
    )


# seed 001 (v7 kube-access is seed 003's); seed 001's v8 namespace-restricted role
SEED_001_DEV = _role_yaml(
    """
kind: role
version: v8
metadata:
  name: dev-namespace-access
spec:
  allow:
    kubernetes_labels:
      env: development
    kubernetes_groups: [dev-team]
    kubernetes_resources:
      - kind: '*'
        api_group: '*'
        namespace: development
        name: '*'
        verbs: ['*']
"""
)
# seed 000: the v3 "admin" role (no kubernetes_labels: v3 reaches every cluster) with an external trait
SEED_000_ADMIN = _role_yaml(
    """
kind: role
version: v3
metadata:
  name: admin
spec:
  allow:
    kubernetes_groups: ["system:masters", "{{external.trait_name}}"]
"""
)
# seed 000: `tctl users add joe --k8s-groups="system:masters"`, `--k8s-users="jenkins"` become traits used
# through the internal templates of a role like Teleport's preset "access" role.
TRAITS_ROLE = _role(
    "access",
    "v7",
    allow={
        "kubernetes_labels": {"*": "*"},
        "kubernetes_groups": ("{{internal.kubernetes_groups}}",),
        "kubernetes_users": ("{{internal.kubernetes_users}}",),
    },
)

KUBE_ACCESS = _role_yaml(SEED_003_KUBE_ACCESS)
# Seed 004's v6 role as written: the codec refuses it (Teleport does: v6 kubernetes_resources are pods only,
# tests/core/test_core_codec_roles.py), but a stored copy must still be read the Teleport way.
EXAMPLE_ROLE = _role(
    "example-role",
    "v6",
    allow={
        "kubernetes_labels": {"*": "*"},
        "kubernetes_groups": ("editor",),
        "kubernetes_resources": ({"kind": "*", "namespace": "*", "name": "*", "verbs": ["*"]},),
    },
)


def _user(name: str = "alice", **traits: tuple[str, ...]) -> User:
    return User(metadata=Metadata(name=name), roles=(), traits=traits)


def _req(method: str = "GET", path: str = "/api/v1/namespaces/default/pods", query: str = "") -> KubeRequest:
    return parse_request(method, path, query)


DISCOVERY = _req("GET", "/apis")
GET_POD = _req("GET", "/api/v1/namespaces/default/pods/nginx")
DEV_POD = _req("GET", "/api/v1/namespaces/development/pods/web")
LIST_NODES = _req("GET", "/api/v1/nodes")

PROD = {"env": "prod"}
DEV = {"env": "development", "kubeport.dev/origin": "dynamic"}


# -- the seed walkthrough ------------------------------------------------------------------------------------


def test_seed_003_alice_gets_viewers_and_system_authenticated() -> None:
    access = authorize(_user(), [KUBE_ACCESS], "cookie", {}, GET_POD)
    assert access == KubeAccess(
        cluster="cookie",
        user="alice",
        roles=("kube-access",),
        kube_users=("alice",),
        kube_groups=("viewers", SYSTEM_AUTHENTICATED),
    )
    assert choose_identity(access, None, ()) == Identity("alice", ("viewers", SYSTEM_AUTHENTICATED))


CASES: list[tuple[str, list[Role], dict[str, tuple[str, ...]], dict[str, str], KubeRequest, object]] = [
    # id, roles, traits, cluster labels, request, expected (groups, users) or an error class
    ("003 any cluster, discovery", [KUBE_ACCESS], {}, PROD, DISCOVERY, (("viewers", SYSTEM_AUTHENTICATED), ("alice",))),
    ("003 any cluster, unlabelled", [KUBE_ACCESS], {}, {}, GET_POD, (("viewers", SYSTEM_AUTHENTICATED), ("alice",))),
    ("003 v7 kind * covers nodes", [KUBE_ACCESS], {}, {}, LIST_NODES, (("viewers", SYSTEM_AUTHENTICATED), ("alice",))),
    ("004 v6 */* wildcard", [EXAMPLE_ROLE], {}, PROD, GET_POD, (("editor", SYSTEM_AUTHENTICATED), ("alice",))),
    (
        "004 v6 reaches deployments",
        [EXAMPLE_ROLE],
        {},
        PROD,
        _req("DELETE", "/apis/apps/v1/namespaces/a/deployments/b"),
        (("editor", SYSTEM_AUTHENTICATED), ("alice",)),
    ),
    ("001 v8 dev pod", [SEED_001_DEV], {}, DEV, DEV_POD, (("dev-team", SYSTEM_AUTHENTICATED), ("alice",))),
    ("001 v8 other namespace", [SEED_001_DEV], {}, DEV, GET_POD, AccessDenied),
    ("001 v8 cluster-scoped nodes", [SEED_001_DEV], {}, DEV, LIST_NODES, AccessDenied),
    ("001 v8 prod cluster not selected", [SEED_001_DEV], {}, PROD, DEV_POD, NotFound),
    ("001 v8 discovery on dev", [SEED_001_DEV], {}, DEV, DISCOVERY, (("dev-team", SYSTEM_AUTHENTICATED), ("alice",))),
    (
        "000 v3 admin, no trait",
        [SEED_000_ADMIN],
        {},
        PROD,
        GET_POD,
        (("system:masters", SYSTEM_AUTHENTICATED), ("alice",)),
    ),
    (
        "000 v3 admin, external trait",
        [SEED_000_ADMIN],
        {"trait_name": ("ops", "sre")},
        PROD,
        GET_POD,
        (("system:masters", "ops", "sre", SYSTEM_AUTHENTICATED), ("alice",)),
    ),
    (
        "000 joe --k8s-groups",
        [TRAITS_ROLE],
        {"kubernetes_groups": ("system:masters",)},
        {},
        GET_POD,
        (("system:masters", SYSTEM_AUTHENTICATED), ("alice",)),
    ),
    (
        "000 jenkins --k8s-users",
        [TRAITS_ROLE],
        {"kubernetes_users": ("jenkins",)},
        {},
        GET_POD,
        ((SYSTEM_AUTHENTICATED,), ("jenkins",)),
    ),
    ("000 no traits -> no kube access", [TRAITS_ROLE], {}, {}, GET_POD, NotFound),
    ("no roles", [], {}, {}, GET_POD, NotFound),
    (
        "two roles union",
        [KUBE_ACCESS, EXAMPLE_ROLE],
        {},
        {},
        GET_POD,
        (("viewers", "editor", SYSTEM_AUTHENTICATED), ("alice",)),
    ),
    (
        "001 + 003 on dev: both grant",
        [KUBE_ACCESS, SEED_001_DEV],
        {},
        DEV,
        DEV_POD,
        (("viewers", "dev-team", SYSTEM_AUTHENTICATED), ("alice",)),
    ),
    (
        "001 + 003 on dev, other ns: only 003",
        [KUBE_ACCESS, SEED_001_DEV],
        {},
        DEV,
        GET_POD,
        (("viewers", SYSTEM_AUTHENTICATED), ("alice",)),
    ),
]


@pytest.mark.parametrize(
    ("roles", "traits", "labels", "request_", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_seed_roles(
    roles: list[Role],
    traits: dict[str, tuple[str, ...]],
    labels: dict[str, str],
    request_: KubeRequest,
    expected: object,
) -> None:
    user = _user(**traits)
    if isinstance(expected, type):
        with pytest.raises(expected):  # type: ignore[call-overload]
            authorize(user, roles, "c1", labels, request_)
        return
    access = authorize(user, roles, "c1", labels, request_)
    assert (access.kube_groups, access.kube_users) == expected


# -- cluster selection ---------------------------------------------------------------------------------------


LABEL_CASES = [
    ({"env": "prod"}, {"env": "prod"}, True),
    ({"env": "prod"}, {"env": "dev"}, False),
    ({"env": "prod"}, {}, False),
    ({"env": ["dev", "prod"]}, {"env": "prod"}, True),
    ({"env": "pr*"}, {"env": "prod"}, True),
    ({"env": "^pro[a-z]$"}, {"env": "prod"}, True),
    ({"env": "^pro$"}, {"env": "prod"}, False),  # anchored
    ({"env": "prod", "region": "us-*"}, {"env": "prod", "region": "eu-1"}, False),  # AND across keys
    ({"env": "*"}, {"env": ""}, True),
    ({"*": "*"}, {}, True),
    ({}, {"env": "prod"}, False),  # v4+: no labels select nothing
]


@pytest.mark.parametrize(("selector", "labels", "visible"), LABEL_CASES)
def test_kubernetes_labels_select_clusters(selector: dict[str, Any], labels: dict[str, str], visible: bool) -> None:
    role = _role("r", allow={"kubernetes_labels": selector, "kubernetes_groups": ("g",)})
    assert cluster_visible(_user(), [role], labels) is visible
    if not visible:
        with pytest.raises(NotFound, match='Kubernetes cluster "c1" not found'):
            authorize(_user(), [role], "c1", labels, DISCOVERY)


def test_hidden_cluster_answers_like_a_missing_one() -> None:
    denier = _role("no-prod", deny={"kubernetes_labels": {"env": "prod"}})
    with pytest.raises(NotFound) as caught:
        authorize(_user(), [KUBE_ACCESS, denier], "prod-1", PROD, DISCOVERY)
    assert caught.value.to_status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Kubernetes cluster "prod-1" not found',
        "reason": "NotFound",
        "code": 404,
    }
    assert cluster_visible(_user(), [KUBE_ACCESS, denier], {"env": "dev"})


def test_dynamic_labels_are_just_labels() -> None:
    role = _role("r", allow={"kubernetes_labels": {"arch": "x86_64"}, "kubernetes_groups": ("g",)})
    assert cluster_visible(_user(), [role], {"env": "prod", "arch": "x86_64"})  # static ∪ dynamic from heartbeat
    assert not cluster_visible(_user(), [role], {"env": "prod"})


def test_bad_deny_pattern_fails_closed_and_bad_allow_pattern_grants_nothing() -> None:
    bad = "^(a$"
    allow = _role("a", allow={"kubernetes_labels": {"env": bad}, "kubernetes_groups": ("g",)})
    deny = _role("d", deny={"kubernetes_labels": {"env": bad}})
    assert not cluster_visible(_user(), [allow], PROD)
    assert not cluster_visible(_user(), [KUBE_ACCESS, deny], PROD)


def test_label_templates_expand_from_traits() -> None:
    role = _role(
        "r", allow={"kubernetes_labels": {"team": "{{internal.kubernetes_groups}}"}, "kubernetes_groups": ("g",)}
    )
    assert cluster_visible(_user(kubernetes_groups=("blue",)), [role], {"team": "blue"})
    assert not cluster_visible(_user(kubernetes_groups=("red",)), [role], {"team": "blue"})
    assert not cluster_visible(_user(), [role], {"team": ""})  # missing trait -> "" matches nothing here


# -- groups and users, deny, templates -----------------------------------------------------------------------


def test_deny_groups_and_users_are_removed_everywhere() -> None:
    allow = _role(
        "a",
        allow={
            "kubernetes_labels": {"*": "*"},
            "kubernetes_groups": ("viewers", "admins"),
            "kubernetes_users": ("alice", "root"),
        },
    )
    deny = _role("d", deny={"kubernetes_groups": ("admins",), "kubernetes_users": ("root",)})  # no labels = all
    access = authorize(_user(), [allow, deny], "c1", PROD, GET_POD)
    assert access.kube_groups == ("viewers", SYSTEM_AUTHENTICATED)
    assert access.kube_users == ("alice",)


def test_deny_groups_only_where_deny_labels_match() -> None:
    allow = _role("a", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("viewers", "admins")})
    deny = _role("d", deny={"kubernetes_labels": {"env": "prod"}, "kubernetes_groups": ("admins",)})
    with pytest.raises(NotFound):
        authorize(_user(), [allow, deny], "c1", PROD, GET_POD)  # deny labels match: the cluster is hidden
    assert authorize(_user(), [allow, deny], "c1", {"env": "dev"}, GET_POD).kube_groups == (
        "viewers",
        "admins",
        SYSTEM_AUTHENTICATED,
    )


def test_everything_denied_means_no_kube_access_message() -> None:
    allow = _role("a", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("viewers",)})
    deny = _role("d", deny={"kubernetes_groups": ("viewers",)})
    with pytest.raises(NotFound) as caught:
        authorize(_user(), [allow, deny], "c1", {}, GET_POD)
    assert caught.value.message == NO_KUBE_ACCESS
    assert caught.value.to_status()["code"] == 404


@pytest.mark.parametrize(
    ("value", "traits", "expected"),
    [
        ("viewers", {}, ["viewers"]),
        ("{{internal.kubernetes_groups}}", {"kubernetes_groups": ("a", "b")}, ["a", "b"]),
        ("{{ internal.kubernetes_users }}", {"kubernetes_users": ("u",)}, ["u"]),
        ("team-{{internal.kubernetes_groups}}-ro", {"kubernetes_groups": ("x",)}, ["team-x-ro"]),
        ("{{internal.kubernetes_groups}}", {}, []),
        ("{{internal.kubernetes_groups}}", {"kubernetes_groups": ("",)}, []),
        ("{{internal.not_a_trait}}", {"not_a_trait": ("x",)}, []),  # internal names are a fixed list
        ("{{external.trait_name}}", {"trait_name": ("okta-group",)}, ["okta-group"]),
        ("{{email.local(external.email)}}", {"email": ("a@b",)}, []),  # functions are not supported: dropped
        ("{{internal.kubernetes_groups}}{{internal.logins}}", {"kubernetes_groups": ("a",), "logins": ("b",)}, []),
        ("{{internal.kubernetes_groups", {"kubernetes_groups": ("a",)}, []),  # malformed: never literal
    ],
)
def test_expand_template(value: str, traits: dict[str, tuple[str, ...]], expected: list[str]) -> None:
    assert expand_template(value, traits) == expected


# -- impersonation ------------------------------------------------------------------------------------------

TWO_USERS = KubeAccess("c1", "alice", ("r",), ("alice", "deploy"), ("viewers", SYSTEM_AUTHENTICATED))
ONE_USER = KubeAccess("c1", "alice", ("r",), ("alice",), ("viewers", "ops", SYSTEM_AUTHENTICATED))

IMPERSONATION = [
    ("none requested: the only user, all groups", ONE_USER, None, (), Identity("alice", ONE_USER.kube_groups)),
    ("empty user header is ignored", ONE_USER, "", ("ops",), Identity("alice", ("ops", SYSTEM_AUTHENTICATED))),
    ("allowed user", TWO_USERS, "deploy", (), Identity("deploy", ("viewers", SYSTEM_AUTHENTICATED))),
    (
        "allowed group subset",
        ONE_USER,
        None,
        ("viewers", "viewers"),
        Identity("alice", ("viewers", SYSTEM_AUTHENTICATED)),
    ),
    ("several users, none requested", TWO_USERS, None, (), SEVERAL_USERS),
    (
        "user not allowed",
        ONE_USER,
        "admin",
        (),
        'impersonation request has been denied, user header "admin" is not allowed in roles',
    ),
    (
        "forged group (--as-group system:masters)",
        ONE_USER,
        None,
        ("system:masters",),
        'impersonation request has been denied, group header "system:masters" value is not allowed in roles',
    ),
    (
        "comma-joined group is one group name",
        ONE_USER,
        None,
        ("viewers,system:masters",),
        'impersonation request has been denied, group header "viewers,system:masters" value is not allowed in roles',
    ),
    (
        "case variant of a user",
        ONE_USER,
        "Alice",
        (),
        'impersonation request has been denied, user header "Alice" is not allowed in roles',
    ),
]


@pytest.mark.parametrize(
    ("access", "user", "groups", "expected"), [c[1:] for c in IMPERSONATION], ids=[c[0] for c in IMPERSONATION]
)
def test_choose_identity(access: KubeAccess, user: str | None, groups: tuple[str, ...], expected: object) -> None:
    if isinstance(expected, str):
        with pytest.raises(AccessDenied) as caught:
            choose_identity(access, user, groups)
        assert caught.value.message == expected
        assert caught.value.to_status()["reason"] == "Forbidden"
        return
    assert choose_identity(access, user, groups) == expected


def test_several_kubernetes_users_from_roles_need_a_choice() -> None:
    role = _role("r", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_users": ("barent", "jane")})  # seed 000
    access = authorize(_user(), [role], "c1", {}, GET_POD)
    assert access.kube_users == ("barent", "jane")
    with pytest.raises(AccessDenied, match="please select a user to impersonate"):
        choose_identity(access, None, ())
    assert choose_identity(access, "jane", ()).user == "jane"


# -- kubernetes_resources -----------------------------------------------------------------------------------


def _res(version: str, *entries: dict[str, Any], deny: tuple[dict[str, Any], ...] = ()) -> list[Role]:
    roles = [
        _role(
            "r",
            version,
            allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("g",), "kubernetes_resources": entries},
        )
    ]
    if deny:
        roles.append(_role("d", version, deny={"kubernetes_resources": deny}))
    return roles


def _e(
    kind: str, namespace: str = "*", name: str = "*", verbs: tuple[str, ...] = ("*",), api_group: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": kind, "namespace": namespace, "name": name, "verbs": list(verbs)}
    if api_group is not None:
        entry["api_group"] = api_group
    return entry


EXEC_POST = _req("POST", "/api/v1/namespaces/default/pods/nginx/exec", "command=sh&stdin=true")
EXEC_GET = _req("GET", "/api/v1/namespaces/default/pods/nginx/exec", "command=sh")
PORTFORWARD = _req("GET", "/api/v1/namespaces/default/pods/nginx/portforward")
LOGS = _req("GET", "/api/v1/namespaces/default/pods/nginx/log", "follow=true")
SECRET = _req("GET", "/api/v1/namespaces/default/secrets/token")
DEPLOY = _req("PATCH", "/apis/apps/v1/namespaces/default/deployments/web")
LIST_PODS_ALL = _req("GET", "/api/v1/pods")
WATCH_PODS = _req("GET", "/api/v1/namespaces/default/pods", "watch=true")
GET_NS = _req("GET", "/api/v1/namespaces/default")
DELETE_NS = _req("DELETE", "/api/v1/namespaces/default")
CRD = _req("GET", "/apis/example.com/v1/namespaces/default/widgets/w1")
CLUSTERROLE = _req("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin")

RESOURCE_CASES: list[tuple[str, list[Role], KubeRequest, bool]] = [
    # v7 kinds and verbs
    ("v7 pod get allows get", _res("v7", _e("pod", verbs=("get",))), GET_POD, True),
    ("v7 pod get refuses exec POST", _res("v7", _e("pod", verbs=("get",))), EXEC_POST, False),
    ("v7 pod get refuses exec GET (websocket)", _res("v7", _e("pod", verbs=("get",))), EXEC_GET, False),
    ("v7 pod create does not grant exec", _res("v7", _e("pod", verbs=("create",))), EXEC_POST, False),
    ("v7 pod exec grants exec GET", _res("v7", _e("pod", verbs=("exec",))), EXEC_GET, True),
    ("v7 pod portforward", _res("v7", _e("pod", verbs=("portforward",))), PORTFORWARD, True),
    ("v7 pod get covers logs", _res("v7", _e("pod", verbs=("get",))), LOGS, True),
    ("v7 pod list refuses watch", _res("v7", _e("pod", verbs=("list",))), WATCH_PODS, False),
    ("v7 pod watch allows watch", _res("v7", _e("pod", verbs=("watch",))), WATCH_PODS, True),
    ("v7 pod does not cover secrets", _res("v7", _e("pod")), SECRET, False),
    ("v7 deployment kind -> apps/deployments", _res("v7", _e("deployment")), DEPLOY, True),
    ("v7 name glob", _res("v7", _e("pod", name="ngi*")), GET_POD, True),
    ("v7 name regex", _res("v7", _e("pod", name="^ng.nx$")), GET_POD, True),
    ("v7 name regex anchored", _res("v7", _e("pod", name="^ng$")), GET_POD, False),
    ("v7 namespace mismatch", _res("v7", _e("pod", namespace="kube-system")), GET_POD, False),
    ("v7 namespace kind grants inside", _res("v7", _e("namespace", namespace="", name="default")), SECRET, True),
    ("v7 namespace kind grants the namespace", _res("v7", _e("namespace", namespace="", name="default")), GET_NS, True),
    ("v7 namespace kind, other ns", _res("v7", _e("namespace", namespace="", name="prod")), SECRET, False),
    ("v7 pods in ns make ns visible (read)", _res("v7", _e("pod", namespace="default")), GET_NS, True),
    ("v7 pods in ns do not allow deleting it", _res("v7", _e("pod", namespace="default")), DELETE_NS, False),
    ("v7 kind * namespace dev grants clusterroles", _res("v7", _e("*", namespace="dev")), CLUSTERROLE, True),
    ("v7 kind * covers CRDs", _res("v7", _e("*")), CRD, True),
    ("v7 specific kinds: CRD default deny", _res("v7", _e("pod"), _e("deployment")), CRD, False),
    ("v7 list across namespaces needs ns *", _res("v7", _e("pod", namespace="default")), LIST_PODS_ALL, False),
    ("v7 list across namespaces with ns *", _res("v7", _e("pod")), LIST_PODS_ALL, True),
    ("v7 named rule refuses the list", _res("v7", _e("pod", name="nginx")), WATCH_PODS, False),
    (
        "v7 named rule allows a fieldSelector watch",
        _res("v7", _e("pod", name="nginx")),
        _req("GET", "/api/v1/namespaces/default/pods", "fieldSelector=metadata.name%3Dnginx&watch=true"),
        True,
    ),
    (
        "v7 default when none listed",
        [_role("r", "v7", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("g",)})],
        CRD,
        True,
    ),
    # v6 and older: only pods are restricted
    ("v6 pod in ns: other kinds open", _res("v6", _e("pod", namespace="dev")), SECRET, True),
    ("v6 pod in ns: pods elsewhere refused", _res("v6", _e("pod", namespace="dev")), GET_POD, False),
    (
        "v5 default: everything",
        [_role("r", "v5", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("g",)})],
        EXEC_POST,
        True,
    ),
    # v8: plural resources and api groups
    ("v8 pods core group", _res("v8", _e("pods", api_group="", verbs=("get",))), GET_POD, True),
    ("v8 pods wrong group", _res("v8", _e("pods", api_group="apps", verbs=("get",))), GET_POD, False),
    ("v8 deployments apps", _res("v8", _e("deployments", api_group="apps")), DEPLOY, True),
    ("v8 group glob", _res("v8", _e("*", api_group="*.com")), CRD, True),
    ("v8 kind * ns dev refuses clusterroles", _res("v8", _e("*", namespace="dev", api_group="*")), CLUSTERROLE, False),
    (
        "v8 cluster-scoped with empty namespace",
        _res("v8", _e("clusterroles", namespace="", api_group="rbac.authorization.k8s.io")),
        CLUSTERROLE,
        True,
    ),
    (
        "v8 default when none listed",
        [_role("r", "v8", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("g",)})],
        CLUSTERROLE,
        True,
    ),
    # deny wins
    ("deny secrets beats allow *", _res("v7", _e("*"), deny=(_e("secret"),)), SECRET, False),
    ("deny secrets leaves pods", _res("v7", _e("*"), deny=(_e("secret"),)), GET_POD, True),
    ("deny exec only", _res("v7", _e("*"), deny=(_e("pod", verbs=("exec",)),)), EXEC_GET, False),
    ("deny exec leaves get", _res("v7", _e("*"), deny=(_e("pod", verbs=("exec",)),)), GET_POD, True),
    ("deny namespace kind", _res("v7", _e("*"), deny=(_e("namespace", namespace="", name="default"),)), SECRET, False),
    ("deny with broken regex fails closed", _res("v7", _e("*"), deny=(_e("pod", name="^(x$"),)), GET_POD, False),
    ("allow with broken regex grants nothing", _res("v7", _e("pod", name="^(x$")), GET_POD, False),
    ("deny v8", _res("v8", _e("*", api_group="*"), deny=(_e("deployments", api_group="apps"),)), DEPLOY, False),
    # discovery is never a resource request
    ("discovery with pods only", _res("v7", _e("pod", verbs=("get",))), DISCOVERY, True),
    ("/version with pods only", _res("v7", _e("pod", verbs=("get",))), _req("GET", "/version"), True),
]


@pytest.mark.parametrize(
    ("roles", "request_", "allowed"), [c[1:] for c in RESOURCE_CASES], ids=[c[0] for c in RESOURCE_CASES]
)
def test_kubernetes_resources(roles: list[Role], request_: KubeRequest, allowed: bool) -> None:
    if allowed:
        assert authorize(_user(), roles, "c1", {}, request_).kube_groups == ("g", SYSTEM_AUTHENTICATED)
    else:
        with pytest.raises(AccessDenied):
            authorize(_user(), roles, "c1", {}, request_)


def test_groups_come_only_from_roles_that_allow_the_resource() -> None:
    pods = _role(
        "pods",
        allow={
            "kubernetes_labels": {"*": "*"},
            "kubernetes_groups": ("pod-readers",),
            "kubernetes_resources": (_e("pod", verbs=("get",)),),
        },
    )
    secrets = _role(
        "secrets",
        allow={
            "kubernetes_labels": {"*": "*"},
            "kubernetes_groups": ("secret-readers",),
            "kubernetes_resources": (_e("secret", verbs=("get",)),),
        },
    )
    assert authorize(_user(), [pods, secrets], "c1", {}, GET_POD).kube_groups == ("pod-readers", SYSTEM_AUTHENTICATED)
    assert authorize(_user(), [pods, secrets], "c1", {}, SECRET).roles == ("secrets",)
    both = authorize(_user(), [pods, secrets], "c1", {}, DISCOVERY)
    assert both.kube_groups == ("pod-readers", "secret-readers", SYSTEM_AUTHENTICATED)


def test_forbidden_message_is_kubectl_shaped() -> None:
    roles = _res("v7", _e("pod", verbs=("get",)))
    with pytest.raises(AccessDenied) as caught:
        authorize(_user(), roles, "c1", {}, EXEC_POST)
    status = caught.value.to_status()
    assert status["code"] == 403
    assert status["reason"] == "Forbidden"
    first, second, third = status["message"].split("\n")
    assert first == (
        'pods/exec "nginx" is forbidden: User "alice" cannot create resource "pods/exec" in API group "" '
        'in the namespace "default"'
    )
    assert '"kubernetes_resources" field' in second
    assert third == "Check by running: kubectl auth can-i create pods/nginx --namespace default"
    with pytest.raises(AccessDenied, match='cannot list resource "nodes" in API group "" at the cluster scope'):
        authorize(_user(), _res("v8", _e("pods", api_group="")), "c1", {}, LIST_NODES)


def test_resource_rules_templates_expand_as_a_product() -> None:
    role = _role(
        "r",
        "v8",
        allow={
            "kubernetes_labels": {"*": "*"},
            "kubernetes_resources": (
                {
                    "kind": "pods",
                    "api_group": "",
                    "namespace": "{{internal.kubernetes_groups}}",
                    "name": "{{internal.kubernetes_users}}",
                    "verbs": ["get"],
                },
            ),
        },
    )
    rules = resource_rules(role, "allow", {"kubernetes_groups": ("a", "b"), "kubernetes_users": ("x",)})
    assert [(r.namespace, r.name) for r in rules] == [("a", "x"), ("b", "x")]
    assert resource_rules(role, "allow", {}) == ()  # missing traits: the entry grants nothing


def test_role_without_labels_grants_no_resources() -> None:
    role = _role("r", "v7", allow={"kubernetes_resources": (_e("*"),)})
    assert resource_rules(role, "allow", {}) == ()


# -- subresources that reach further than their parent (security-checklist #2, Teleport 17.7.26) ------------

POD_PROXY = _req("GET", "/api/v1/namespaces/default/pods/nginx/proxy/metrics")
SERVICE_PROXY = _req("GET", "/api/v1/namespaces/default/services/web/proxy/admin")
NODE_PROXY = _req("GET", "/api/v1/nodes/n1/proxy/logs/")
LEGACY_PROXY = _req("GET", "/api/v1/proxy/namespaces/default/pods/nginx")
GET_SERVICE = _req("GET", "/api/v1/namespaces/default/services/web")


@pytest.mark.parametrize(
    ("kind", "request_"),
    [("pod", POD_PROXY), ("service", SERVICE_PROXY), ("kube_node", NODE_PROXY), ("pod", LEGACY_PROXY)],
    ids=["pods/proxy", "services/proxy", "nodes/proxy", "legacy /proxy/ prefix"],
)
def test_a_get_grant_never_opens_a_proxy(kind: str, request_: KubeRequest) -> None:
    """``.../{name}/proxy/{path}`` reaches whatever listens in the pod, service or kubelet: it needs the
    ``proxy`` verb, never ``get`` (Teleport authorized it as get until 17.7.26)."""
    readers = _res("v7", _e(kind, verbs=("get", "list", "watch")))
    with pytest.raises(AccessDenied):
        authorize(_user(), readers, "c1", {}, request_)
    proxies = _res("v7", _e(kind, verbs=("proxy",)))
    assert authorize(_user(), proxies, "c1", {}, request_).kube_groups == ("g", SYSTEM_AUTHENTICATED)
    with pytest.raises(AccessDenied):
        authorize(_user(), proxies, "c1", {}, GET_POD if kind == "pod" else GET_SERVICE)


def test_a_deny_on_proxy_wins_over_a_wildcard_allow() -> None:
    roles = _res("v7", _e("*"), deny=(_e("service", verbs=("proxy",)),))
    with pytest.raises(AccessDenied):
        authorize(_user(), roles, "c1", {}, SERVICE_PROXY)
    authorize(_user(), roles, "c1", {}, GET_SERVICE)


def test_a_name_glob_grant_cannot_list_everything_through_a_query_the_api_server_reads_otherwise() -> None:
    """A rule for pods ``web-*`` lets a list through only when the field selector names one web pod. Go skips
    a query pair with a bad escape, so ``metadata.name%3Dweb-%ZZ`` would list every pod: it is refused."""
    roles = _res("v7", _e("pod", name="web-*", verbs=("list",)))
    narrowed = _req("GET", "/api/v1/namespaces/default/pods", "fieldSelector=metadata.name%3Dweb-1")
    assert authorize(_user(), roles, "c1", {}, narrowed).kube_groups == ("g", SYSTEM_AUTHENTICATED)
    with pytest.raises(AccessDenied):
        authorize(_user(), roles, "c1", {}, _req("GET", "/api/v1/namespaces/default/pods"))
    with pytest.raises(BadParameter):
        _req("GET", "/api/v1/namespaces/default/pods", "fieldSelector=metadata.name%3Dweb-%ZZ")
    # ?watch=yes streams on the API server: a list-only grant does not cover it
    with pytest.raises(AccessDenied):
        authorize(
            _user(),
            roles,
            "c1",
            {},
            _req("GET", "/api/v1/namespaces/default/pods", "fieldSelector=metadata.name%3Dweb-1&watch=yes"),
        )
