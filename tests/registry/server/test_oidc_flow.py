"""The registry's side of OIDC single sign-on (``registry/server/oidc.py``) against the fake provider.

A real registry over TLS; the test plays the browser up to the provider's redirect and calls finish itself,
so each refusal (bad token, replay, wrong state, unknown connector, no roles, takeover) is seen directly.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from registry.client import RegistryClient
from registry.core.errors import AccessDenied, BadParameter, ConnectionProblem, LimitExceeded, NotFound
from registry.core.identity import generate_private_key, identity_from_cert, make_csr
from registry.core.identity_file import IdentityFile
from registry.server import oidc as oidc_module
from registry.server.http import Response
from registry.server.oidc import Flow, PendingFlows
from registry.server.serve import RegistryInfo
from tests.fakes.oidc import FakeOIDCProvider
from tests.registry.oidc_helpers import (
    CONNECTOR,
    browse,
    public_client,
    role_doc,
    set_up,
    start_and_browse,
    started_provider,
)


@pytest.fixture
async def provider(nursery: trio.Nursery) -> FakeOIDCProvider:
    return await started_provider(nursery)


async def test_claims_map_to_roles_and_the_user_record_is_the_connectors(
    registry: RegistryInfo, provider: FakeOIDCProvider
) -> None:
    provider.claims["groups"] = ["devs", "admins", "others"]
    await set_up(registry, provider)
    async with RegistryClient.from_identity_file(registry.admin_identity) as admin:
        await admin.create(role_doc("admin-ish", ttl="1h"))
    async with public_client(registry) as client:
        code, state, key = await start_and_browse(client)
        result = await client.sso_finish(state=state, code=code)
    assert result["user"] == "alice@example.com"
    assert sorted(result["roles"]) == ["admin-ish", "dev"]
    identity = identity_from_cert(result["cert_pem"].encode())
    assert identity.name == "alice@example.com" and identity.kind == "user"
    # Capped by admin-ish's max_session_ttl (1h), not the default 12h.
    assert identity.expires is not None and identity.expires - datetime.now(tz=UTC) <= timedelta(hours=1)
    # The certificate works: whoami with the key generated at start.
    login = IdentityFile(cert_pem=result["cert_pem"].encode(), key_pem=key, ca_pems=(registry_ca(registry),))
    async with RegistryClient.from_identity(login, registry.address) as me:
        whoami = await me.whoami()
    assert whoami["name"] == "alice@example.com" and sorted(whoami["roles"]) == ["admin-ish", "dev"]
    async with RegistryClient.from_identity_file(registry.admin_identity) as admin:
        user = await admin.get("user", "alice@example.com")
        events = await admin.events(event="user.login")
    assert user["metadata"]["labels"]["kubeport.dev/connector"] == CONNECTOR
    assert sorted(user["spec"]["roles"]) == ["admin-ish", "dev"]
    assert events[-1]["success"] is True and events[-1]["connector"] == CONNECTOR
    text = str(events)
    assert code not in text and provider.client_secret not in text and provider.id_tokens[-1] not in text


def registry_ca(info: RegistryInfo) -> bytes:
    return IdentityFile.parse(info.admin_identity.read_bytes(), source="admin").ca_pems[0]


async def test_a_second_login_updates_the_roles(registry: RegistryInfo, provider: FakeOIDCProvider) -> None:
    await set_up(registry, provider)
    async with RegistryClient.from_identity_file(registry.admin_identity) as admin:
        await admin.create(role_doc("admin-ish"))
    async with public_client(registry) as client:
        code, state, _ = await start_and_browse(client)
        assert (await client.sso_finish(state=state, code=code))["roles"] == ["dev"]
        provider.claims["groups"] = ["admins"]
        code, state, _ = await start_and_browse(client)
        assert (await client.sso_finish(state=state, code=code))["roles"] == ["admin-ish"]
    async with RegistryClient.from_identity_file(registry.admin_identity) as admin:
        assert (await admin.get("user", "alice@example.com"))["spec"]["roles"] == ["admin-ish"]


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ("wrong_key", "signature"),
        ("wrong_aud", "audience"),
        ("expired", "expired"),
        ("wrong_iss", "issuer"),
        ("wrong_nonce", "nonce"),
        ("no_nonce", "nonce"),
        ("future_iat", "future"),
        ("huge", "larger"),
        ("alg_none", "algorithm"),
        ("hs256", "algorithm"),
        ("garbage", "JWS"),
    ],
)
async def test_bad_id_tokens_are_refused_and_audited(
    registry: RegistryInfo, provider: FakeOIDCProvider, fault: str, expect: str
) -> None:
    await set_up(registry, provider)
    provider.fault = fault
    async with public_client(registry) as client:
        code, state, _ = await start_and_browse(client)
        with pytest.raises(AccessDenied, match=expect):
            await client.sso_finish(state=state, code=code)
    async with RegistryClient.from_identity_file(registry.admin_identity) as admin:
        with pytest.raises(NotFound):
            await admin.get("user", "alice@example.com")  # no user record from a refused login
        events = await admin.events(event="user.login")
    assert events and events[-1]["success"] is False
    assert code not in str(events) and provider.client_secret not in str(events)


async def test_a_replayed_code_and_a_reused_state_are_refused(
    registry: RegistryInfo, provider: FakeOIDCProvider
) -> None:
    await set_up(registry, provider)
    async with public_client(registry) as client:
        code, state, _ = await start_and_browse(client)
        await client.sso_finish(state=state, code=code)
        with pytest.raises(AccessDenied, match="already used"):
            await client.sso_finish(state=state, code=code)  # the state is single use
        # The same code under a fresh state: the provider refuses it (single-use codes).
        key = generate_private_key()
        started = await client.sso_start(CONNECTOR, redirect_port=40001, csr_pem=make_csr(key, "x"))
        with pytest.raises(AccessDenied, match="did not accept"):
            await client.sso_finish(state=started["state"], code=code)
    assert "invalid_grant" in provider.token_errors


async def test_a_wrong_state_is_refused(registry: RegistryInfo, provider: FakeOIDCProvider) -> None:
    await set_up(registry, provider)
    async with public_client(registry) as client:
        code, _, _ = await start_and_browse(client)
        with pytest.raises(AccessDenied, match="unknown"):
            await client.sso_finish(state="forged-state-value", code=code)
    assert provider.requests.count(("POST", "/token")) == 0  # nothing was exchanged


async def test_an_unknown_connector_is_refused(registry: RegistryInfo, provider: FakeOIDCProvider) -> None:
    await set_up(registry, provider)
    async with public_client(registry) as client:
        with pytest.raises(NotFound, match="no SSO connector"):
            await client.sso_start("nope", redirect_port=40000, csr_pem=make_csr(generate_private_key(), "x"))


async def test_no_matching_claims_is_a_clear_refusal(registry: RegistryInfo, provider: FakeOIDCProvider) -> None:
    provider.claims["groups"] = ["marketing"]
    await set_up(registry, provider)
    async with public_client(registry) as client:
        code, state, _ = await start_and_browse(client)
        with pytest.raises(AccessDenied, match="no roles"):
            await client.sso_finish(state=state, code=code)


async def test_mapped_roles_that_do_not_exist_grant_nothing(registry: RegistryInfo, provider: FakeOIDCProvider) -> None:
    provider.claims["groups"] = ["admins"]  # maps to admin-ish, which set_up does not create
    await set_up(registry, provider)
    async with public_client(registry) as client:
        code, state, _ = await start_and_browse(client)
        with pytest.raises(AccessDenied, match="none of which exists"):
            await client.sso_finish(state=state, code=code)


async def test_an_sso_login_never_takes_over_a_local_user(registry: RegistryInfo, provider: FakeOIDCProvider) -> None:
    await set_up(registry, provider)
    local = {"kind": "user", "metadata": {"name": "alice@example.com"}, "spec": {"roles": ["dev"]}}
    async with RegistryClient.from_identity_file(registry.admin_identity) as admin:
        await admin.create(local)
    async with public_client(registry) as client:
        code, state, _ = await start_and_browse(client)
        with pytest.raises(AccessDenied, match="already exists"):
            await client.sso_finish(state=state, code=code)


async def test_the_provider_denying_the_login_leaves_no_code(
    registry: RegistryInfo, provider: FakeOIDCProvider
) -> None:
    await set_up(registry, provider)
    provider.fault = "deny"
    async with public_client(registry) as client:
        started = await client.sso_start(CONNECTOR, redirect_port=40000, csr_pem=make_csr(generate_private_key(), "x"))
        with pytest.raises(KeyError):
            await browse(started["auth_url"])


@pytest.mark.parametrize(
    "body",
    [
        {"connector": CONNECTOR, "redirect_port": 0},
        {"connector": CONNECTOR, "redirect_port": 70000},
        {"connector": CONNECTOR, "redirect_port": "80"},
        {"connector": CONNECTOR, "redirect_port": True},
        {"connector": CONNECTOR, "redirect_port": 4000, "csr_pem": "not a csr"},
        {"connector": CONNECTOR, "redirect_port": 4000, "csr_pem": "x" * 100_000},
        {"connector": "x" * 1000, "redirect_port": 4000},
        {"connector": CONNECTOR, "redirect_port": 4000, "ttl_seconds": 10},
        {"connector": CONNECTOR, "redirect_port": 4000, "ttl_seconds": 1e300},
    ],
)
async def test_hostile_start_bodies_are_400s(
    registry: RegistryInfo, provider: FakeOIDCProvider, body: dict[str, Any]
) -> None:
    await set_up(registry, provider)
    body.setdefault("csr_pem", make_csr(generate_private_key(), "x").decode())
    async with public_client(registry) as client:
        with pytest.raises((BadParameter, NotFound)):
            await client._request("POST", "/v1/sso/oidc/start", body=body)


@pytest.mark.parametrize(
    "body",
    [{}, {"state": "s"}, {"state": "s" * 10_000, "code": "c"}, {"state": "s", "code": "c" * 100_000}, {"state": 1}],
)
async def test_hostile_finish_bodies_are_refused(registry: RegistryInfo, body: dict[str, Any]) -> None:
    async with public_client(registry) as client:
        with pytest.raises((BadParameter, AccessDenied)):
            await client._request("POST", "/v1/sso/oidc/finish", body=body)


def test_pending_flows_expire_are_single_use_and_bounded() -> None:
    now = [0.0]
    flows = PendingFlows(clock=lambda: now[0], ttl=600, limit=2)

    def flow() -> Flow:
        return Flow("c", "n", "v", "http://127.0.0.1:1/cb", b"csr", timedelta(hours=1), flows.new_expiry())

    flows.add("a", flow())
    flows.add("b", flow())
    with pytest.raises(LimitExceeded):
        flows.add("c", flow())
    assert flows.take("a") is not None
    assert flows.take("a") is None  # single use
    now[0] = 601.0
    assert flows.take("b") is None  # expired
    flows.add("d", flow())
    flows.add("e", flow())  # expired ones no longer count
    assert len(flows) == 2


def test_one_source_cannot_fill_the_pending_flows() -> None:
    flows = PendingFlows(clock=lambda: 0.0, limit=100, per_source=3)

    def flow(source: str) -> Flow:
        return Flow("c", "n", "v", "u", b"csr", timedelta(hours=1), flows.new_expiry(), source)

    for index in range(3):
        flows.add(f"a{index}", flow("10.0.0.1"))
    with pytest.raises(LimitExceeded, match=r"10\.0\.0\.1"):
        flows.add("a3", flow("10.0.0.1"))
    flows.add("b0", flow("10.0.0.2"))  # another source still gets in
    assert len(flows) == 4


async def test_the_start_route_is_bounded_per_source(registry: RegistryInfo, provider: FakeOIDCProvider) -> None:
    await set_up(registry, provider)
    async with public_client(registry) as client:
        csr = make_csr(generate_private_key(), "x")
        for _ in range(oidc_module.MAX_PENDING_PER_SOURCE):
            await client.sso_start(CONNECTOR, redirect_port=40000, csr_pem=csr)
        with pytest.raises(LimitExceeded):
            await client.sso_start(CONNECTOR, redirect_port=40000, csr_pem=csr)


async def test_provider_documents_are_cached_and_a_rotated_key_is_fetched(
    registry: RegistryInfo, provider: FakeOIDCProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    await set_up(registry, provider)
    async with public_client(registry) as client:
        for _ in range(2):
            code, state, _ = await start_and_browse(client)
            await client.sso_finish(state=state, code=code)
        assert provider.requests.count(("GET", "/.well-known/openid-configuration")) == 1
        assert provider.requests.count(("GET", "/jwks")) == 1
        provider.rotate_key()
        # Right after a fetch, an unknown kid does not refetch (tokens naming random kids cannot make the
        # registry hammer the provider): refused.
        code, state, _ = await start_and_browse(client)
        with pytest.raises(AccessDenied):
            await client.sso_finish(state=state, code=code)
        assert provider.requests.count(("GET", "/jwks")) == 1
        # Once the refresh interval has passed, the new kid makes the registry fetch the JWKS again.
        monkeypatch.setattr(oidc_module, "JWKS_MIN_REFRESH", 0.0)
        code, state, _ = await start_and_browse(client)
        assert (await client.sso_finish(state=state, code=code))["user"] == "alice@example.com"
    assert provider.requests.count(("GET", "/jwks")) == 2


def _json(value: Any) -> Response:
    return Response.json(200, value)


@pytest.mark.parametrize(
    ("path", "answer", "at_start"),
    [
        ("/.well-known/openid-configuration", _json({"issuer": "https://evil.example.com"}), True),
        ("/.well-known/openid-configuration", Response(200, [], b"not json"), True),
        ("/.well-known/openid-configuration", Response(200, [], b"[1, 2]"), True),
        ("/.well-known/openid-configuration", Response(500, [], b"{}"), True),
        ("/.well-known/openid-configuration", Response(200, [], b" " * (2 << 20)), True),
        ("/jwks", _json({"keys": "nope"}), False),
        ("/jwks", _json({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), False),
        ("/jwks", _json({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}), False),
        ("/token", _json({"token_type": "Bearer"}), False),
        ("/token", Response(200, [], b"{" * 5000), False),
    ],
)
async def test_a_broken_or_hostile_provider_is_refused_clearly(
    registry: RegistryInfo, provider: FakeOIDCProvider, path: str, answer: Response, at_start: bool
) -> None:
    await set_up(registry, provider)
    async with public_client(registry) as client:
        if at_start:
            provider.overrides[path] = answer
            with pytest.raises(AccessDenied, match="OIDC issuer"):
                await client.sso_start(CONNECTOR, redirect_port=40000, csr_pem=make_csr(generate_private_key(), "x"))
            return
        code, state, _ = await start_and_browse(client)
        provider.overrides[path] = answer
        with pytest.raises(AccessDenied):
            await client.sso_finish(state=state, code=code)


async def test_an_unreachable_provider_is_a_connection_problem(registry: RegistryInfo) -> None:
    provider = FakeOIDCProvider()
    provider.issuer = f"http://{closed_address()}"
    await set_up(registry, provider)
    async with public_client(registry) as client:
        with pytest.raises(ConnectionProblem, match="unreachable"):
            await client.sso_start(CONNECTOR, redirect_port=40000, csr_pem=make_csr(generate_private_key(), "x"))


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
