"""RBAC evaluation and impersonation of the fake, checked against kube-apiserver's rules and messages."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.kube_api import FakeKube
from tests.fakes.kube_rbac import Attributes, UserInfo, authorize, forbidden_error, impersonate, rule_allows
from tests.fakes.kube_status import KubeStatusError, PlainTextError

BOB = UserInfo("bob", ("devs", "system:authenticated"))


def res(verb: str, resource: str, *, group: str = "", sub: str = "", name: str = "", ns: str = "") -> Attributes:
    return Attributes(BOB, verb, True, group, ns, resource, sub, name)


def rule(verbs: str, resources: str = "", groups: str = "", names: str = "", urls: str = "") -> dict[str, Any]:
    """A PolicyRule from comma-separated lists (an empty string is the core group "")."""
    built: dict[str, Any] = {"verbs": verbs.split(",")}
    if urls:
        return {**built, "nonResourceURLs": urls.split(",")}
    built.update(apiGroups=groups.split(","), resources=resources.split(","))
    return {**built, "resourceNames": names.split(",")} if names else built


def path(verb: str, url: str) -> Attributes:
    return Attributes(BOB, verb, False, path=url)


@pytest.mark.parametrize(
    ("policy", "attrs", "allowed"),
    [
        (rule("get", "pods"), res("get", "pods"), True),
        (rule("get", "pods"), res("list", "pods"), False),
        (rule("*", "pods"), res("delete", "pods"), True),
        (rule("get", "pods", groups="apps"), res("get", "pods"), False),
        (rule("get", "deployments", groups="*"), res("get", "deployments", group="apps"), True),
        (rule("get", "pods"), res("get", "pods", sub="log"), False),
        (rule("get", "pods/log"), res("get", "pods", sub="log"), True),
        (rule("get", "*/log"), res("get", "pods", sub="log"), True),
        (rule("get", "*"), res("get", "pods", sub="exec"), True),
        (rule("get", "pods", names="a"), res("get", "pods", name="a"), True),
        (rule("get", "pods", names="a"), res("get", "pods", name="b"), False),
        (rule("list", "pods", names="a"), res("list", "pods"), False),
        (rule("get", urls="/healthz"), path("get", "/healthz"), True),
        (rule("get", urls="/apis/*"), path("get", "/apis/x/v1"), True),
        (rule("get", urls="/apis/*"), path("get", "/api"), False),
        (rule("get", urls="*"), path("post", "/x"), False),
        (rule("get", "pods"), path("get", "/pods"), False),
        ({"verbs": "get", "apiGroups": 7, "resources": None}, res("get", "pods"), False),  # hostile shapes
    ],
)
def test_rule_matching(policy: dict[str, Any], attrs: Attributes, allowed: bool) -> None:
    assert rule_allows(attrs, policy) is allowed


def test_role_bindings_grant_only_in_their_namespace_and_cluster_role_bindings_everywhere() -> None:
    fake = FakeKube()
    fake.grant("bob", verbs=["get"], resources=["pods"], namespace="default")
    fake.grant("devs", kind="Group", verbs=["list"], resources=["configmaps"])
    assert authorize(fake.store, res("get", "pods", ns="default")).allowed
    assert not authorize(fake.store, res("get", "pods", ns="kube-system")).allowed
    assert not authorize(fake.store, res("get", "pods")).allowed
    decision = authorize(fake.store, res("list", "configmaps", ns="kube-system"))
    assert decision.allowed
    assert decision.reason == (
        'RBAC: allowed by ClusterRoleBinding "fake-grant-2" of ClusterRole "fake-grant-2" to Group "devs"'
    )


def test_service_account_subjects_and_the_authenticated_group() -> None:
    fake = FakeKube()
    fake.grant("system:serviceaccount:default:bot", verbs=["get"], resources=["secrets"])
    bot = UserInfo("system:serviceaccount:default:bot", ("system:serviceaccounts", "system:authenticated"))
    assert authorize(fake.store, Attributes(bot, "get", True, "", "default", "secrets")).allowed
    other = UserInfo("system:serviceaccount:other:bot", ("system:authenticated",))
    assert not authorize(fake.store, Attributes(other, "get", True, "", "default", "secrets")).allowed
    review = Attributes(bot, "create", True, "authorization.k8s.io", "", "selfsubjectaccessreviews")
    assert authorize(fake.store, review).allowed  # system:basic-user, bound to system:authenticated


def test_a_binding_to_a_missing_role_explains_itself() -> None:
    fake = FakeKube()
    fake.create_object(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "dangling"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ghost"},
            "subjects": [{"kind": "User", "name": "bob"}],
        }
    )
    decision = authorize(fake.store, res("get", "pods"))
    assert not decision.allowed
    assert decision.reason == 'RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found'


def test_system_masters_may_do_anything() -> None:
    root = UserInfo("root", ("system:masters",))
    assert authorize(FakeKube().store, Attributes(root, "escalate", True, "x.io", "", "anything")).allowed


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        (
            res("create", "clusterroles", group="rbac.authorization.k8s.io"),
            'clusterroles.rbac.authorization.k8s.io is forbidden: User "bob" cannot create resource "clusterroles" '
            'in API group "rbac.authorization.k8s.io" at the cluster scope',
        ),
        (
            res("get", "pods", name="p", ns="default", sub="log"),
            'pods "p" is forbidden: User "bob" cannot get resource "pods/log" in API group "" in the namespace '
            '"default"',
        ),
        (Attributes(BOB, "get", False, path="/metrics"), 'forbidden: User "bob" cannot get path "/metrics"'),
    ],
)
def test_forbidden_messages_match_kubernetes(attrs: Attributes, message: str) -> None:
    error = forbidden_error(attrs)
    assert (error.code, error.reason, error.message) == (403, "Forbidden", message)


def headers(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return list(pairs)


def test_impersonation_needs_permission_for_each_item() -> None:
    fake = FakeKube()
    fake.grant("bob", verbs=["impersonate"], resources=["users"], resource_names=["alice"])
    alice = impersonate(fake.store, BOB, headers(("impersonate-user", "alice")), "/api")
    assert alice == UserInfo("alice", ("system:authenticated",))
    with pytest.raises(KubeStatusError) as denied:
        impersonate(fake.store, BOB, headers(("impersonate-user", "carol")), "/api")
    assert denied.value.message == (
        'users "carol" is forbidden: User "bob" cannot impersonate resource "users" in API group "" '
        "at the cluster scope"
    )
    with pytest.raises(KubeStatusError) as denied:
        impersonate(fake.store, BOB, headers(("impersonate-user", "alice"), ("impersonate-group", "admins")), "/api")
    assert denied.value.message.startswith(
        'groups "admins" is forbidden: User "bob" cannot impersonate resource "groups"'
    )


def test_impersonating_service_accounts_uids_and_extras() -> None:
    fake = FakeKube()
    root = UserInfo("root", ("system:masters",))
    sa = impersonate(fake.store, root, headers(("impersonate-user", "system:serviceaccount:ns:bot")), "/api")
    assert sa == UserInfo(
        "system:serviceaccount:ns:bot", ("system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated")
    )
    full = impersonate(
        fake.store,
        root,
        headers(
            ("impersonate-user", "alice"),
            ("impersonate-group", "a"),
            ("impersonate-group", "system:authenticated"),
            ("impersonate-uid", "42"),
            ("impersonate-extra-scopes", "view"),
            ("impersonate-extra-scopes", "edit"),
            ("impersonate-extra-example.com%2fteam", "x"),
        ),
        "/api",
    )
    assert full == UserInfo(
        "alice", ("a", "system:authenticated"), "42", {"scopes": ("view", "edit"), "example.com/team": ("x",)}
    )
    fake.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
    fake.grant("bob", verbs=["impersonate"], resources=["serviceaccounts"], namespace="ns")
    with pytest.raises(KubeStatusError) as denied:
        impersonate(fake.store, BOB, headers(("impersonate-user", "system:serviceaccount:other:bot")), "/api")
    assert 'in the namespace "other"' in denied.value.message
    assert impersonate(fake.store, BOB, headers(("impersonate-user", "system:serviceaccount:ns:bot")), "/x")


@pytest.mark.parametrize(
    ("given", "listed"),
    [
        (headers(("impersonate-group", "a")), "[{Group  a    }]"),
        (headers(("impersonate-uid", "42")), "[{UID  42  authentication.k8s.io/v1  }]"),
        (headers(("impersonate-extra-k", "v")), "[{UserExtra  v  authentication.k8s.io/v1  k}]"),
        (headers(("impersonate-user", ""), ("impersonate-group", "a")), "[{Group  a    }]"),
    ],
)
def test_groups_uid_or_extras_without_a_user_is_a_plain_500(given: list[tuple[str, str]], listed: str) -> None:
    with pytest.raises(PlainTextError) as failed:
        impersonate(FakeKube().store, BOB, given, "/api/v1/pods?limit=1")
    assert failed.value.code == 500
    assert failed.value.text == (
        f'Internal Server Error: "/api/v1/pods?limit=1": requested {listed} without impersonating a user'
    )


def test_no_impersonation_headers_means_no_impersonation() -> None:
    assert impersonate(FakeKube().store, BOB, headers(("impersonate", "x"), ("accept", "*/*")), "/api") is None
