"""role, user and token documents: the seed's role files, Teleport fields kubeport refuses, normalisation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from registry.core import codec
from registry.core.errors import BadParameter
from registry.core.resources import Role, RoleConditions, Rule, Token, User
from tests.helpers import KUBE_ACCESS

# seed 003, verbatim
KUBE_MANAGER = """\
kind: role
metadata:
  name: kube-manager
spec:
  allow:
    rules:
    - resources:
      - kube_cluster
      verbs:
      - list
      - create
      - read
      - update
      - delete
version: v5
"""


def decode_one(text: str) -> Any:
    (resource,) = codec.decode_resources(text, source="role.yaml")
    return resource


def test_seed_kube_manager_role() -> None:
    role = decode_one(KUBE_MANAGER)
    assert isinstance(role, Role)
    assert role.version == "v5"
    assert role.allow.rules == (Rule(("kube_cluster",), ("list", "create", "read", "update", "delete")),)
    assert role.deny == RoleConditions()


def test_seed_kube_access_role() -> None:
    role = decode_one(KUBE_ACCESS)
    assert isinstance(role, Role)
    assert role.allow.kubernetes_labels == {"*": "*"}
    assert role.allow.kubernetes_groups == ("viewers",)
    assert role.allow.kubernetes_resources == ({"kind": "*", "namespace": "*", "name": "*", "verbs": ["*"]},)
    assert role.deny == RoleConditions()


def test_role_defaults_and_value_lists() -> None:
    doc = {
        "kind": "role",
        "metadata": {"name": "r"},
        "spec": {
            "allow": {
                "kubernetes_labels": {"env": ["prod", "^stag.*$"], "team": "dev"},
                "kubernetes_users": ["{{internal.kubernetes_users}}"],
                "kubernetes_resources": [
                    {"kind": "pod", "namespace": "default", "name": "web-*", "verbs": ["get", "exec"]}
                ],
            },
            "options": {"max_session_ttl": "8h"},
        },
    }
    role = codec.resource_from_dict(doc)
    assert isinstance(role, Role)
    assert role.version == "v7"  # default for a role without version
    assert role.allow.kubernetes_labels == {"env": ["prod", "^stag.*$"], "team": "dev"}
    assert role.options == {"max_session_ttl": "8h"}
    with pytest.raises(BadParameter, match=r"kubernetes_resources\[0\].verbs is required in a v7 role"):
        codec.resource_from_dict({**doc, "spec": {"allow": {"kubernetes_resources": [{"kind": "pod", "name": "x"}]}}})
    v6 = codec.resource_from_dict(
        {
            **doc,
            "version": "v6",
            "spec": {"allow": {"kubernetes_resources": [{"kind": "pod", "namespace": "default", "name": "x"}]}},
        }
    )
    assert v6.allow.kubernetes_resources[0]["verbs"] == ["*"]  # type: ignore[union-attr]


def _role(allow: Any = None, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "role", "version": "v7", "metadata": {"name": "x"}, "spec": {"allow": allow or {}}}
    doc.update(top)
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            _role({"logins": ["root"]}),
            'role "x": unknown field spec.allow.logins (kubeport does not support it; supported: rules,',
        ),
        (_role({"kubernetes_labels_expression": "x"}), "unknown field spec.allow.kubernetes_labels_expression"),
        (
            _role({"kubernetes_label": {"a": "b"}}),
            "unknown field spec.allow.kubernetes_label (did you mean kubernetes_labels?)",
        ),
        (
            _role(spec={"allow": {}, "options": {"forward_agent": True}}),
            "unknown field spec.options.forward_agent (kubeport does not support it",
        ),
        (_role(spec={"options": {"max_session_ttl": "1d"}}), 'spec.options.max_session_ttl "1d": unknown unit "d"'),
        (_role(spec={"allow": {}, "rules": []}), "unknown field spec.rules"),
        (_role(version="v9"), 'role "x": unsupported version "v9" (supported: v3, v4, v5, v6, v7, v8)'),
        (_role(version="v2"), "unsupported version"),
        (
            _role({"rules": [{"resources": ["node"], "verbs": ["list"]}]}),
            "spec.allow.rules[0].resources[0] must be one of kube_cluster, kube_server, token, role, user, event, "
            'kube_cluster_dynamic_labels, * (got "node")',
        ),
        (
            _role({"rules": [{"resources": ["role"], "verbs": ["list", "frob"]}]}),
            'spec.allow.rules[0].verbs[1] must be one of list, create, read, update, delete, * (got "frob")',
        ),
        (
            _role({"rules": [{"resources": ["role"], "verbs": []}]}),
            "spec.allow.rules[0].verbs must be a non-empty list of strings",
        ),
        (
            _role({"rules": [{"resources": ["role"], "verbs": ["list"], "where": "x"}]}),
            "unknown field spec.allow.rules[0].where",
        ),
        (_role({"rules": {"resources": ["role"]}}), "spec.allow.rules must be a list"),
        (_role({"kubernetes_labels": {"a b": "x"}}), 'spec.allow.kubernetes_labels: invalid label key "a b"'),
        (_role({"kubernetes_labels": {"env": 5}}), "spec.allow.kubernetes_labels"),
        (_role({"kubernetes_labels": {"env": "^(unclosed$"}}), "spec.allow.kubernetes_labels"),
        (_role({"kubernetes_groups": "viewers"}), "spec.allow.kubernetes_groups must be a list of non-empty strings"),
        (
            _role({"kubernetes_resources": [{"kind": "pod", "name": "x", "verbs": ["sudo"]}]}),
            "kubernetes_resources[0].verbs[0] must be one of *, get, list",
        ),
        (
            _role({"kubernetes_resources": [{"name": "x", "verbs": ["get"]}]}),
            "kubernetes_resources[0].kind is required",
        ),
        (
            _role({"kubernetes_resources": [{"kind": "pod", "name": "x", "verbs": ["get"], "group": "*"}]}),
            "unknown field spec.allow.kubernetes_resources[0].group",
        ),
        (_role(metadata={"name": "a/b"}), 'role "a/b": metadata.name must match'),
    ],
)
def test_invalid_roles(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message


# -- users ----------------------------------------------------------------------------------------------


def test_user() -> None:
    doc = {
        "kind": "user",
        "version": "v2",
        "metadata": {"name": "alice@example.com"},
        "spec": {"roles": ["kube-access", "kube-manager"], "traits": {"kubernetes_groups": ["devs"], "logins": []}},
    }
    user = codec.resource_from_dict(doc)
    assert user == User(
        metadata=user.metadata,
        roles=("kube-access", "kube-manager"),
        traits={"kubernetes_groups": ("devs",), "logins": ()},
    )
    assert codec.resource_from_dict(codec.resource_to_dict(user)) == user


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metadata": {"name": "bob smith"}}, 'user "bob smith": metadata.name must match ^[a-zA-Z0-9._@+-]+$'),
        ({"version": "v3"}, 'user "bob": unsupported version "v3" (only v2)'),
        ({"spec": {"roles": "kube-access"}}, "spec.roles must be a list of non-empty strings"),
        ({"spec": {"roles": ["a/b"]}}, 'spec.roles[0] must match ^[a-zA-Z0-9._-]+$ (got "a/b")'),
        ({"spec": {"traits": {"groups": "devs"}}}, 'spec.traits.groups must be a list of strings (got "devs")'),
        ({"spec": {"traits": {"groups": [1]}}}, "spec.traits.groups must be a list of strings"),
        ({"spec": {"created_by": {}}}, "unknown field spec.created_by (kubeport users have roles and traits)"),
    ],
)
def test_invalid_users(change: dict[str, Any], message: str) -> None:
    doc = {"kind": "user", "version": "v2", "metadata": {"name": "bob"}, "spec": {}}
    doc.update(change)
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message


# -- tokens -----------------------------------------------------------------------------------------------

TOKEN_VALUE = "0123456789abcdef0123456789abcdef"


def _token(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "token",
        "version": "v2",
        "metadata": {"name": TOKEN_VALUE, "expires": "2027-01-01T00:00:00Z"},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("roles", "expected"),
    [(["kube"], ("Kube",)), (["Kube"], ("Kube",)), (["KUBE", "kube"], ("Kube",))],
)
def test_token_roles_are_normalised(roles: list[str], expected: tuple[str, ...]) -> None:
    token = codec.resource_from_dict(_token(roles=roles))
    assert isinstance(token, Token)
    assert token.roles == expected and token.join_method == "token"
    assert token.metadata.expires == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_token(roles=["node"]), 'token: spec.roles: invalid role "node" (supported: Kube)'),
        (_token(roles=[]), "token: spec.roles must be a non-empty list of strings"),
        (_token(), "spec.roles must be a non-empty list of strings"),
        (_token(roles=["kube"], join_method="iam"), 'spec.join_method "iam" is not supported (only token)'),
        (_token(roles=["kube"], bot_name="x"), "unknown field spec.bot_name"),
        (
            {**_token(roles=["kube"]), "metadata": {"name": "has space " + TOKEN_VALUE}},
            "token: metadata.name must match",
        ),
    ],
)
def test_invalid_tokens_never_show_the_value(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message
    assert TOKEN_VALUE not in info.value.message


def test_token_secrecy_in_repr_and_masked_wire() -> None:
    token = codec.resource_from_dict(_token(roles=["kube"]))
    assert TOKEN_VALUE not in repr(token)
    masked = codec.resource_to_dict(token, with_secrets=False)
    assert masked["metadata"]["name"] == "0123" + "*" * 28
    full = codec.resource_to_dict(token)
    assert full["metadata"]["name"] == TOKEN_VALUE
    assert full["spec"] == {"roles": ["Kube"], "join_method": "token"}
    assert codec.resource_from_dict(full) == token
