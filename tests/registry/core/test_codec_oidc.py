"""The ``oidc`` connector kind (``registry/core/codec_oidc.py``): Teleport's shape, strict, secret kept secret."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from registry.core import codec
from registry.core.errors import AccessDenied, BadParameter, TooLarge
from registry.core.oidc_token import roles_for_claims, user_name_from_claims
from registry.core.resources import OIDCConnector

SECRET = "very-secret-client-secret"
YAML = f"""\
kind: oidc
version: v3
metadata:
  name: myoidc
spec:
  issuer_url: https://idp.example.com/
  client_id: kubeport
  client_secret: {SECRET}
  redirect_url: http://127.0.0.1/callback
  claims_to_roles:
  - claim: groups
    value: my-group
    roles: [access, kube-access]
  - name: email
    value: bob@example.com
    roles: [admin]
  scope: [email, groups]
  max_age: 24h
"""


def doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "oidc",
        "version": "v3",
        "metadata": {"name": "myoidc"},
        "spec": {
            "issuer_url": "https://idp.example.com",
            "client_id": "kubeport",
            "client_secret": SECRET,
            "redirect_url": "http://127.0.0.1/callback",
            "claims_to_roles": [{"claim": "groups", "value": "devs", "roles": ["dev"]}],
        },
    }
    base["spec"].update(spec)
    return {**base, "spec": {k: v for k, v in base["spec"].items() if v is not None}}


def test_teleport_shaped_yaml_decodes_and_round_trips() -> None:
    [connector] = codec.decode_resources(YAML, source="oidc.yaml")
    assert isinstance(connector, OIDCConnector)
    assert connector.issuer_url == "https://idp.example.com"  # trailing slash dropped: iss compares exactly
    assert [m.claim for m in connector.claims_to_roles] == ["groups", "email"]  # seed 003's `name` spelling
    assert connector.max_age_seconds() == 24 * 3600
    assert codec.resource_from_dict(codec.resource_to_dict(connector)) == connector
    assert SECRET not in repr(connector)


def test_without_secrets_drops_only_the_client_secret() -> None:
    connector = codec.resource_from_dict(doc())
    shown = codec.resource_to_dict(connector, with_secrets=False)
    assert "client_secret" not in shown["spec"] and SECRET not in str(shown)
    assert shown["spec"]["client_id"] == "kubeport"
    assert codec.resource_to_dict(connector)["spec"]["client_secret"] == SECRET


def test_loopback_http_issuers_are_allowed_for_tests() -> None:
    for issuer in ("http://127.0.0.1:8080", "http://[::1]:9000/realm", "http://localhost:1"):
        connector = codec.resource_from_dict(doc(issuer_url=issuer))
        assert isinstance(connector, OIDCConnector) and connector.issuer_url == issuer


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"issuer_url": "http://idp.example.com"}, "https"),
        ({"issuer_url": "ftp://idp.example.com"}, "https"),
        ({"issuer_url": "https://user:pw@idp.example.com"}, "user info"),
        ({"issuer_url": "https://idp.example.com/?a=b"}, "query"),
        ({"issuer_url": "https://idp.example.com:99999"}, "valid URL"),
        ({"issuer_url": "https://idp.example.com/\n"}, "spaces"),
        ({"issuer_url": "https://" + "a" * 2000}, "at most"),
        ({"issuer_url": None}, "required"),
        ({"client_id": ""}, "client_id"),
        ({"client_id": None}, "required"),
        ({"client_secret": 42}, "client_secret"),
        ({"redirect_url": "https://proxy.example.com/v1/webapi/oidc/callback"}, "127.0.0.1"),
        ({"redirect_url": "http://10.0.0.1/callback"}, "127.0.0.1"),
        ({"redirect_url": "http://127.0.0.1:8000/callback"}, "port"),
        ({"redirect_url": "http://127.0.0.1"}, "path"),
        ({"claims_to_roles": []}, "non-empty list"),
        ({"claims_to_roles": "groups"}, "non-empty list"),
        ({"claims_to_roles": [{"claim": "groups", "value": "x"}]}, "roles"),
        ({"claims_to_roles": [{"claim": "groups", "value": "x", "roles": []}]}, "roles"),
        ({"claims_to_roles": [{"claim": "groups", "value": "x", "roles": ["bad name"]}]}, "roles"),
        ({"claims_to_roles": [{"claim": "groups", "value": "*", "roles": ["r"]}]}, "wildcards"),
        ({"claims_to_roles": [{"claim": "groups", "value": "^a.*$", "roles": ["r"]}]}, "regular expressions"),
        ({"claims_to_roles": [{"claim": "g", "name": "g", "value": "v", "roles": ["r"]}]}, "both"),
        ({"claims_to_roles": [{"claim": "g r", "value": "v", "roles": ["r"]}]}, "claim name"),
        ({"claims_to_roles": [{"claim": "g", "value": "v", "roles": ["r"], "extra": 1}]}, "extra"),
        ({"claims_to_roles": [{"claim": "g", "value": "v", "roles": ["r"]}] * 257}, "at most 256"),
        ({"claims_to_roles": [{"claim": "g", "value": "v", "roles": [f"r{i}" for i in range(65)]}]}, "at most"),
        ({"scope": ["bad scope"]}, "scope"),
        ({"scope": [f"s{i}" for i in range(33)]}, "at most"),
        ({"max_age": "forever"}, "max_age"),
        ({"max_age": 3600}, "max_age"),
        ({"max_age": "10000h"}, "max_age"),
        ({"username_claim": "a b"}, "username_claim"),
        ({"signing_key_pair": {"private_key": "x"}}, "signing_key_pair"),
    ],
)
def test_malformed_connectors_are_refused_with_the_field(change: dict[str, Any], expect: str) -> None:
    with pytest.raises(BadParameter, match=expect) as refused:
        codec.resource_from_dict(doc(**change))
    assert 'oidc "myoidc"' in refused.value.message
    assert SECRET not in refused.value.message


def test_bad_envelopes_are_refused() -> None:
    bad = doc()
    bad["version"] = "v2"
    with pytest.raises(BadParameter, match="version"):
        codec.resource_from_dict(bad)
    bad = doc()
    bad["metadata"]["name"] = "../etc"
    with pytest.raises(BadParameter, match=r"metadata\.name"):
        codec.resource_from_dict(bad)
    with pytest.raises(BadParameter):
        codec.resource_from_dict({**doc(), "spec": "nope"})


def test_a_huge_connector_file_is_refused_before_parsing() -> None:
    with pytest.raises(TooLarge):
        codec.decode_resources(YAML + "# " + "x" * (codec.MAX_DOCUMENT_BYTES + 1), source="oidc.yaml")


def test_claims_map_to_roles_by_exact_match_and_list_membership() -> None:
    connector = codec.resource_from_dict(
        doc(
            claims_to_roles=[
                {"claim": "groups", "value": "devs", "roles": ["dev", "viewer"]},
                {"claim": "groups", "value": "ops", "roles": ["ops", "viewer"]},
                {"claim": "email_verified", "value": "true", "roles": ["verified"]},
            ]
        )
    )
    assert isinstance(connector, OIDCConnector)
    assert roles_for_claims(connector, {"groups": ["devs", "ops"]}) == ("dev", "viewer", "ops")
    assert roles_for_claims(connector, {"groups": "ops"}) == ("ops", "viewer")
    assert roles_for_claims(connector, {"groups": ["DEVS", "dev"], "email_verified": True}) == ("verified",)
    assert roles_for_claims(connector, {"groups": [{"nested": "devs"}], "other": "devs"}) == ()


@pytest.mark.parametrize("email", [None, "", "a b@example.com", "x" * 200, "../../etc", "é@example.com", 7])
def test_user_names_from_hostile_claims_are_refused(email: object) -> None:
    connector = codec.resource_from_dict(doc())
    assert isinstance(connector, OIDCConnector)
    claims = copy.deepcopy({"email": email})
    with pytest.raises(AccessDenied):
        user_name_from_claims(connector, claims)
