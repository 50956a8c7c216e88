"""Role versions v3 to v8 through the codec, with Teleport's ``validateKubeResources`` rules per version, and
what the role engine then makes of them (Teleport's defaults per version); user traits stay printable."""

from __future__ import annotations

from typing import Any

import pytest

from registry.core import codec
from registry.core.errors import AccessDenied, BadParameter
from registry.core.kube_access import WILDCARD, KubeResourceRule, authorize, cluster_visible, resource_rules
from registry.core.kube_request import parse_request
from registry.core.resources import Metadata, Role, User
from tests.helpers import SEED_004_EXAMPLE_ROLE

SEED_004_AS_WRITTEN = SEED_004_EXAMPLE_ROLE
ALICE = User(metadata=Metadata(name="alice"), roles=("r",))
EVERYTHING = KubeResourceRule(WILDCARD, WILDCARD, WILDCARD, WILDCARD, (WILDCARD,))


def _doc(version: str, allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"allow": allow or {}}
    if deny is not None:
        spec["deny"] = deny
    return {"kind": "role", "version": version, "metadata": {"name": "r"}, "spec": spec}


def _role(version: str, allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None) -> Role:
    role = codec.resource_from_dict(_doc(version, allow, deny))
    assert isinstance(role, Role)
    return role


def _kr(**entry: Any) -> dict[str, Any]:
    return {"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ["g"], "kubernetes_resources": [entry]}


# -- accepted, and read the Teleport way -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v3", "v4", "v5", "v6", "v7", "v8"])
def test_every_supported_version_round_trips(version: str) -> None:
    role = _role(version, {"kubernetes_labels": {"env": "prod"}, "kubernetes_groups": ["viewers"]})
    assert role.version == version
    assert codec.resource_from_dict(codec.resource_to_dict(role)) == role
    text = codec.dump_yaml([codec.resource_to_dict(role)])
    assert codec.decode_resources(text, source="t") == [role]


def test_v3_without_labels_reaches_every_cluster_and_v4_none() -> None:
    v3 = _role("v3", {"kubernetes_groups": ["system:masters"]})
    v4 = _role("v4", {"kubernetes_groups": ["system:masters"]})
    assert cluster_visible(ALICE, [v3], {"env": "prod"})
    assert not cluster_visible(ALICE, [v4], {"env": "prod"})
    assert resource_rules(v3, "allow", {}) == (EVERYTHING,)  # v3-v6 default: pods unrestricted, and the rest


@pytest.mark.parametrize("version", ["v3", "v4", "v5", "v6"])
def test_legacy_pod_entries_default_to_every_verb(version: str) -> None:
    role = _role(version, _kr(kind="pod", namespace="dev", name="web-*"))
    assert role.allow.kubernetes_resources == ({"kind": "pod", "namespace": "dev", "name": "web-*", "verbs": ["*"]},)
    pod = parse_request("GET", "/api/v1/namespaces/dev/pods/web-1", "")
    other_pod = parse_request("GET", "/api/v1/namespaces/dev/pods/db-1", "")
    secret = parse_request("GET", "/api/v1/namespaces/dev/secrets/s", "")
    assert authorize(ALICE, [role], "c", {}, pod).kube_groups == ("g", "system:authenticated")
    with pytest.raises(AccessDenied, match="forbidden"):
        authorize(ALICE, [role], "c", {}, other_pod)
    authorize(ALICE, [role], "c", {}, secret)  # before v7 only pods were ever restricted


def test_v8_entries_keep_their_api_group() -> None:
    role = _role(
        "v8",
        _kr(kind="deployments", api_group="apps", namespace="dev", name="*", verbs=["get", "list"]),
        deny={
            "kubernetes_resources": [
                {"kind": "deployments", "api_group": "*", "namespace": "dev", "name": "db", "verbs": ["*"]}
            ]
        },
    )
    entry = role.allow.kubernetes_resources[0]
    assert entry == {
        "kind": "deployments",
        "api_group": "apps",
        "namespace": "dev",
        "name": "*",
        "verbs": ["get", "list"],
    }
    assert codec.resource_to_dict(role)["spec"]["allow"]["kubernetes_resources"][0]["api_group"] == "apps"
    assert resource_rules(role, "allow", {}) == (KubeResourceRule("deployments", "apps", "dev", "*", ("get", "list")),)
    get = parse_request("GET", "/apis/apps/v1/namespaces/dev/deployments/web", "")
    wrong_group = parse_request("GET", "/apis/extensions/v1beta1/namespaces/dev/deployments/web", "")
    assert authorize(ALICE, [role], "c", {}, get).kube_groups == ("g", "system:authenticated")
    with pytest.raises(AccessDenied, match="forbidden"):
        authorize(ALICE, [role], "c", {}, wrong_group)
    with pytest.raises(AccessDenied, match="forbidden"):  # the deny entry (any group) wins
        authorize(ALICE, [role], "c", {}, parse_request("GET", "/apis/apps/v1/namespaces/dev/deployments/db", ""))


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "pods", "api_group": "", "namespace": "*", "name": "*", "verbs": ["*"]},
        {"kind": "namespaces", "api_group": "", "name": "dev", "verbs": ["get"]},  # cluster-wide: no namespace
        {"kind": "nodes", "name": "*", "verbs": ["list"]},  # api_group may be left out for core resources
        {"kind": "*", "api_group": "*", "namespace": "*", "name": "*", "verbs": ["*"]},
        {"kind": "crontabs", "api_group": "stable.example.com", "namespace": "dev", "name": "*", "verbs": ["get"]},
        {"kind": "clusterroles", "api_group": "rbac.authorization.k8s.io", "name": "*", "verbs": ["get"]},
        {"kind": "pods", "api_group": "", "namespace": "{{internal.logins}}", "name": "*", "verbs": ["get"]},
    ],
)
def test_valid_v8_entries(entry: dict[str, Any]) -> None:
    _role("v8", _kr(**entry))


def test_seed_004_role_is_refused_as_v6_as_teleport_does_and_means_everything_as_v7() -> None:
    with pytest.raises(BadParameter) as info:
        codec.decode_resources(SEED_004_AS_WRITTEN, source="example-role.yaml")
    assert info.value.message == (
        'example-role.yaml: role "example-role": spec.allow.kubernetes_resources[0].kind "*" is not supported in a '
        "v6 role (only pod); upgrade the role to version v7 (kinds as listed) or v8 (plural resources)"
    )
    # As v7 (verbs are required from v7 on) it grants what its author meant: everything, as the editor group.
    (role,) = codec.decode_resources(
        SEED_004_AS_WRITTEN.replace("version: v6", "version: v7") + '        verbs: ["*"]\n', source="t"
    )
    assert isinstance(role, Role)
    nodes = parse_request("GET", "/api/v1/nodes", "")
    access = authorize(ALICE, [role], "c", {"env": "prod"}, nodes)
    assert access.kube_groups == ("editor", "system:authenticated")


# -- refused, with the reason ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "entry", "message"),
    [
        ("v5", {"kind": "secret", "namespace": "*", "name": "*"}, 'kind "secret" is not supported in a v5 role'),
        ("v3", {"kind": "pod", "namespace": "*", "name": "*", "verbs": ["get"]}, 'a v3 role supports only ["*"]'),
        ("v4", {"kind": "pod", "name": "*"}, 'namespace is required for kind "pod"'),
        ("v6", {"kind": "pod", "namespace": "*", "name": "*", "api_group": "x"}, "api_group is not supported in a v6"),
        ("v7", {"kind": "pod", "namespace": "*", "name": "*", "verbs": ["*"], "api_group": ""}, None),
        (
            "v7",
            {"kind": "deployment", "namespace": "*", "name": "*", "verbs": ["*"], "api_group": "apps"},
            "api_group is not supported in a v7 role; upgrade the role to version v8",
        ),
        ("v7", {"kind": "pods", "namespace": "*", "name": "*", "verbs": ["*"]}, 'kind "pods" is not supported'),
        ("v7", {"kind": "*", "name": "*", "verbs": ["*"]}, 'namespace is required for kind "*"'),
        ("v7", {"kind": "namespace", "name": "dev", "verbs": ["get"]}, None),  # cluster-wide kind
        ("v7", {"kind": "pod", "namespace": "*", "name": "*"}, "verbs is required in a v7 role"),
        ("v8", {"kind": "pods", "namespace": "*", "name": "*"}, "verbs is required in a v8 role"),
        ("v8", {"kind": "pod", "namespace": "*", "name": "*", "verbs": ["*"]}, 'kind "pod" is a v7 kind name'),
        (
            "v8",
            {"kind": "deployment", "api_group": "apps", "namespace": "*", "name": "*", "verbs": ["*"]},
            "a v8 role names plural resources (deployments)",
        ),
        ("v8", {"kind": "pod", "api_group": "*", "namespace": "*", "name": "*", "verbs": ["*"]}, "v7 kind name"),
        (
            "v8",
            {"kind": "deployments", "namespace": "*", "name": "*", "verbs": ["*"]},
            'api_group is required for resource "deployments" in a v8 role',
        ),
        ("v8", {"kind": "*", "namespace": "*", "name": "*", "verbs": ["*"]}, 'api_group is required for resource "*"'),
        ("v8", {"kind": "pods", "name": "*", "verbs": ["get"]}, 'namespace is required for resource "pods"'),
        (
            "v8",
            {"kind": "jobs", "api_group": "batch", "name": "*", "verbs": ["get"]},
            'namespace is required for resource "jobs"',
        ),
        ("v8", {"kind": "pods", "namespace": "*", "verbs": ["get"]}, "name is required"),
        ("v8", {"api_group": "", "namespace": "*", "name": "*", "verbs": ["get"]}, "kind is required"),
        ("v8", {"kind": "pods", "namespace": "*", "name": "*", "verbs": ["*", "get"]}, '"*" cannot be used with'),
        ("v8", {"kind": "pods", "api_group": 5, "namespace": "*", "name": "*", "verbs": ["get"]}, "api_group"),
        ("v8", {"kind": "pods", "namespace": "*", "name": "*", "verbs": ["escalate"]}, "verbs[0] must be one of"),
        ("v8", {"kind": "pods", "namespace": "*", "name": "*", "verbs": ["get"], "group": "x"}, "unknown field"),
    ],
)
def test_kubernetes_resources_rules_per_version(version: str, entry: dict[str, Any], message: str | None) -> None:
    for condition in ("allow", "deny"):
        doc = _doc(version, **{condition: {"kubernetes_resources": [entry]}})
        if message is None:
            codec.resource_from_dict(doc)
            continue
        with pytest.raises(BadParameter) as info:
            codec.resource_from_dict(doc)
        assert message in info.value.message
        assert f"spec.{condition}.kubernetes_resources[0]" in info.value.message


def test_hostile_kind_is_shown_escaped() -> None:
    with pytest.raises(BadParameter) as info:
        _role("v7", _kr(kind="pod\x1b[2J\n", namespace="*", name="*", verbs=["*"]))
    assert "\x1b" not in info.value.message and "\n" not in info.value.message


# -- user traits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "message"),
    [
        ({"kubernetes_groups": ["viewers\r\nX-Evil: 1"]}, "spec.traits.kubernetes_groups[0] must be printable text"),
        ({"kubernetes_users": ["bob\x00"]}, "spec.traits.kubernetes_users[0] must be printable"),
        ({"kubernetes_groups": ["a\u202eb"]}, "must be printable"),
        ({"kubernetes_groups": ["x" * 1025]}, "at most 1024 characters"),
        ({"bad\nkey": ["x"]}, 'spec.traits key "bad\\nkey" must be printable'),
        ({5: ["x"]}, "spec.traits has a non-string key int 5"),
    ],
)
def test_user_traits_must_be_printable(traits: dict[Any, Any], message: str) -> None:
    doc = {"kind": "user", "version": "v2", "metadata": {"name": "bob"}, "spec": {"roles": [], "traits": traits}}
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message
    assert "\r" not in info.value.message and "\x00" not in info.value.message and "\u202e" not in info.value.message
