"""Shared set-up for the OIDC single sign-on tests: a real registry, the fake provider, a connector, roles."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import trio

from registry.client import RegistryClient
from registry.core.identity import generate_private_key, make_csr
from registry.server.serve import RegistryInfo
from tests.fakes.oidc import FakeOIDCProvider

CONNECTOR = "fake-idp"


def connector_doc(provider: FakeOIDCProvider, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "oidc",
        "version": "v3",
        "metadata": {"name": CONNECTOR},
        "spec": {
            "issuer_url": provider.issuer,
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
            "redirect_url": "http://127.0.0.1/callback",
            "claims_to_roles": [
                {"claim": "groups", "value": "devs", "roles": ["dev"]},
                {"claim": "groups", "value": "admins", "roles": ["admin-ish"]},
            ],
            "scope": ["email", "groups"],
            **spec,
        },
    }


def role_doc(name: str, *, ttl: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "allow": {
            "kubernetes_labels": {"env": "dev"},
            "kubernetes_groups": ["viewers"],
            "rules": [{"resources": ["kube_cluster"], "verbs": ["list", "read"]}],
        }
    }
    if ttl is not None:
        spec["options"] = {"max_session_ttl": ttl}
    return {"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": spec}


async def started_provider(nursery: trio.Nursery, **kwargs: Any) -> FakeOIDCProvider:
    provider = FakeOIDCProvider(**kwargs)
    await nursery.start(provider.serve)
    return provider


async def set_up(info: RegistryInfo, provider: FakeOIDCProvider, **spec: Any) -> None:
    async with RegistryClient.from_identity_file(info.admin_identity) as admin:
        await admin.create(role_doc("dev"))
        await admin.create(connector_doc(provider, **spec))


def public_client(info: RegistryInfo) -> RegistryClient:
    from registry.core.identity_file import IdentityFile

    identity = IdentityFile.parse(info.admin_identity.read_bytes(), source="admin")
    return RegistryClient(info.address, ca_pems=identity.ca_pems)


async def browse(auth_url: str) -> tuple[str, str]:
    """Play the browser up to the provider's redirect: (code, state) from the Location it answers."""
    async with httpx.AsyncClient() as http:
        response = await http.get(auth_url)
    assert response.status_code == 302, response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    return query["code"][0], query["state"][0]


async def start_and_browse(client: RegistryClient, *, port: int = 40000) -> tuple[str, str, bytes]:
    """Start a login for a fresh key and follow the provider: (code, state, key_pem)."""
    key = generate_private_key()
    started = await client.sso_start(CONNECTOR, redirect_port=port, csr_pem=make_csr(key, "x"))
    code, state = await browse(started["auth_url"])
    assert state == started["state"]
    return code, state, key
