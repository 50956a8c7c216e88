"""The fake OIDC provider behaves like a real one where the registry depends on it (it is a verified fake).

Each check here is one a real provider makes (single-use codes, PKCE, client authentication, redirect_uri
binding), and each ``fault`` is shown to produce the misbehaviour it claims: a token the registry's
validation (``registry.core.oidc_token``) refuses, while the unspoiled token passes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import trio

from registry.core.errors import AccessDenied
from registry.core.oidc_token import load_jwks, pkce_pair, validate_id_token
from tests.fakes.oidc import FAULTS, FakeOIDCProvider

REDIRECT = "http://127.0.0.1:5555/callback"


async def started(nursery: trio.Nursery, **kwargs: Any) -> FakeOIDCProvider:
    provider = FakeOIDCProvider(**kwargs)
    await nursery.start(provider.serve)
    return provider


async def authorize(http: httpx.AsyncClient, provider: FakeOIDCProvider, challenge: str, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid email",
        "state": "st",
        "nonce": "n-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    response = await http.get(f"{provider.issuer}/authorize?{urlencode(params)}")
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["st"]
    return query["code"][0]


async def exchange(
    http: httpx.AsyncClient, provider: FakeOIDCProvider, code: str, verifier: str, *, secret: str | None = None
) -> httpx.Response:
    return await http.post(
        f"{provider.issuer}/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        auth=(provider.client_id, provider.client_secret if secret is None else secret),
    )


async def jwks(http: httpx.AsyncClient, provider: FakeOIDCProvider) -> Any:
    return load_jwks((await http.get(f"{provider.issuer}/jwks")).json(), issuer=provider.issuer)


def validate(provider: FakeOIDCProvider, token: str, keys: Any) -> dict[str, Any]:
    import time

    return validate_id_token(
        token, keys, issuer=provider.issuer, client_id=provider.client_id, nonce="n-1", now=int(time.time())
    )


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_the_whole_code_flow_gives_a_valid_id_token(nursery: trio.Nursery, alg: str) -> None:
    provider = await started(nursery, alg=alg)
    async with httpx.AsyncClient() as http:
        discovery = (await http.get(f"{provider.issuer}/.well-known/openid-configuration")).json()
        assert discovery["issuer"] == provider.issuer
        assert discovery["token_endpoint"] == f"{provider.issuer}/token"
        verifier, challenge = pkce_pair()
        code = await authorize(http, provider, challenge)
        response = await exchange(http, provider, code, verifier)
        assert response.status_code == 200
        claims = validate(provider, response.json()["id_token"], await jwks(http, provider))
    assert claims["email"] == "alice@example.com"
    assert claims["nonce"] == "n-1"


async def test_a_code_is_single_use(nursery: trio.Nursery) -> None:
    provider = await started(nursery)
    async with httpx.AsyncClient() as http:
        verifier, challenge = pkce_pair()
        code = await authorize(http, provider, challenge)
        assert (await exchange(http, provider, code, verifier)).status_code == 200
        replay = await exchange(http, provider, code, verifier)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"


async def test_pkce_verifier_and_client_secret_are_checked(nursery: trio.Nursery) -> None:
    provider = await started(nursery)
    async with httpx.AsyncClient() as http:
        verifier, challenge = pkce_pair()
        code = await authorize(http, provider, challenge)
        assert (await exchange(http, provider, code, verifier, secret="wrong")).status_code == 401
        # The client failed to authenticate, so the code is still unused; a wrong verifier burns it.
        assert (await exchange(http, provider, code, "x" * 50)).status_code == 400
        assert (await exchange(http, provider, code, verifier)).status_code == 400  # burnt


async def test_authorize_refuses_a_non_loopback_redirect_and_plain_pkce(nursery: trio.Nursery) -> None:
    provider = await started(nursery)
    async with httpx.AsyncClient() as http:
        base = {"response_type": "code", "client_id": provider.client_id, "scope": "openid", "state": "s"}
        bad_redirect = {**base, "redirect_uri": "https://evil.example.com/cb", "code_challenge": "c"}
        bad_redirect["code_challenge_method"] = "S256"
        assert (await http.get(f"{provider.issuer}/authorize?{urlencode(bad_redirect)}")).status_code == 400
        plain = {**base, "redirect_uri": REDIRECT, "code_challenge": "c", "code_challenge_method": "plain"}
        assert (await http.get(f"{provider.issuer}/authorize?{urlencode(plain)}")).status_code == 400


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "deny"])
async def test_every_token_fault_is_refused_by_validation(nursery: trio.Nursery, fault: str) -> None:
    provider = await started(nursery)
    async with httpx.AsyncClient() as http:
        keys = await jwks(http, provider)
        good = provider.id_token(nonce="n-1")
        assert validate(provider, good, keys)["sub"] == "u-123"
        provider.fault = fault
        with pytest.raises(AccessDenied) as refused:
            validate(provider, provider.id_token(nonce="n-1"), keys)
    assert "ID token" in refused.value.message


async def test_deny_redirects_with_an_error_and_no_code(nursery: trio.Nursery) -> None:
    provider = await started(nursery, fault="deny")
    challenge = base64.urlsafe_b64encode(hashlib.sha256(b"v" * 50).digest()).rstrip(b"=").decode()
    async with httpx.AsyncClient() as http:
        params = {
            "response_type": "code",
            "client_id": provider.client_id,
            "redirect_uri": REDIRECT,
            "scope": "openid",
            "state": "st",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        response = await http.get(f"{provider.issuer}/authorize?{urlencode(params)}")
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["access_denied"]
    assert "code" not in query
