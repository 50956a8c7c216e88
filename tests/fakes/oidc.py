"""A fake OpenID Connect provider for tests: real HTTP on 127.0.0.1, real signed ID tokens (joserfc).

It serves what the authorization-code flow with PKCE needs (OpenID Connect Core §3.1, RFC 7636):

    GET  /.well-known/openid-configuration   discovery
    GET  /jwks                               the signing keys (RS256 by default, ES256 with alg="ES256")
    GET  /authorize                          auto-approves the configured user: 302 to redirect_uri?code&state
    POST /token                              code -> ID token; checks client auth (basic or post), the PKCE
                                             verifier (S256), the redirect_uri, and that each code is used once

Tests play the browser with httpx (``GET`` the authorize URL; the 302 goes to the login's loopback listener).

Misbehaviour on demand (``provider.fault``), each a way a real provider or an attacker could answer:
``wrong_key`` (signed by a key that is not in the JWKS, same kid), ``wrong_aud``, ``wrong_iss``, ``expired``,
``future_iat``, ``wrong_nonce``, ``no_nonce``, ``huge`` (a 100 kB token), ``alg_none`` (unsigned),
``hs256`` (HMAC keyed with the public RSA key: the algorithm-confusion attack), ``garbage`` (not a JWT),
``deny`` (the user refuses at the provider: redirect with ``error=access_denied``).

Every request is recorded (``requests``) so tests can assert what the registry sent; ``overrides`` replaces
the answer of a path (a provider answering nonsense, too much, or naming another issuer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import trio
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from registry.core.netaddr import is_loopback
from registry.server.http import Request, Response, ServerInfo, serve_http

FAULTS = (
    "wrong_key",
    "wrong_aud",
    "wrong_iss",
    "expired",
    "future_iat",
    "wrong_nonce",
    "no_nonce",
    "huge",
    "alg_none",
    "hs256",
    "garbage",
    "deny",
)

_RSA_KEYS: list[RSAKey] = []  # RSA key generation is slow; tests share two keys per process


def _rsa_key(index: int) -> RSAKey:
    while len(_RSA_KEYS) <= index:
        _RSA_KEYS.append(RSAKey.generate_key(2048, parameters={"kid": "fake-rsa"}, private=True))
    return _RSA_KEYS[index]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    used: bool = False


@dataclass
class FakeOIDCProvider:
    """The provider's state; serve it with :meth:`serve` (``issuer`` is set once it listens)."""

    client_id: str = "kubeport"
    client_secret: str = "fake-client-secret"
    claims: dict[str, Any] = field(
        default_factory=lambda: {"sub": "u-123", "email": "alice@example.com", "groups": ["devs"]}
    )
    alg: str = "RS256"
    fault: str | None = None
    issuer: str = ""
    grants: dict[str, Grant] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    token_errors: list[str] = field(default_factory=list)
    id_tokens: list[str] = field(default_factory=list)
    # path -> a canned answer served instead of the real one (a broken or hostile provider)
    overrides: dict[str, Response] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.alg == "ES256":
            self.key: RSAKey | ECKey = ECKey.generate_key("P-256", parameters={"kid": "fake-ec"}, private=True)
            self.other_key: RSAKey | ECKey = ECKey.generate_key("P-256", parameters={"kid": "fake-ec"}, private=True)
        else:
            self.key, self.other_key = _rsa_key(0), _rsa_key(1)

    def rotate_key(self) -> None:
        """Sign with a new key under a new kid from now on (the JWKS serves only the new one)."""
        kid = f"rotated-{secrets.token_hex(4)}"
        if self.alg == "ES256":
            self.key = ECKey.generate_key("P-256", parameters={"kid": kid}, private=True)
        else:
            self.key = RSAKey.import_key(self.other_key.as_dict(private=True), parameters={"kid": kid})

    # -- serving ---------------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            info: ServerInfo = await nursery.start(partial(serve_http, self.handle, host="127.0.0.1", port=0))
            self.issuer = f"http://{info.address}"
            task_status.started(self.issuer)

    async def handle(self, request: Request) -> Response:
        self.requests.append((request.method, request.path))
        if request.path in self.overrides:
            return self.overrides[request.path]
        if request.method == "GET" and request.path == "/.well-known/openid-configuration":
            return Response.json(200, self.discovery())
        if request.method == "GET" and request.path == "/jwks":
            return Response.json(200, {"keys": [self.key.as_dict(private=False)]})
        if request.method == "GET" and request.path == "/authorize":
            return self._authorize(request)
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        return Response.json(404, {"error": "not_found"})

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.alg],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    # -- authorize -------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> Response:
        q = request.query_value
        redirect_uri = q("redirect_uri") or ""
        parts = urlsplit(redirect_uri)
        if parts.scheme != "http" or not is_loopback(parts.hostname or ""):
            return Response.json(400, {"error": "invalid_request", "error_description": "redirect_uri not loopback"})
        if q("client_id") != self.client_id or q("response_type") != "code":
            return Response.json(400, {"error": "unauthorized_client"})
        if (
            "openid" not in (q("scope") or "").split()
            or q("code_challenge_method") != "S256"
            or not q("code_challenge")
        ):
            return Response.json(400, {"error": "invalid_request", "error_description": "openid scope and S256 PKCE"})
        state = q("state") or ""
        if self.fault == "deny":
            return self._redirect(redirect_uri, {"error": "access_denied", "state": state})
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(self.client_id, redirect_uri, q("code_challenge") or "", q("nonce"))
        return self._redirect(redirect_uri, {"code": code, "state": state})

    @staticmethod
    def _redirect(uri: str, params: Mapping[str, str]) -> Response:
        return Response(302, [("location", f"{uri}?{urlencode(params)}"), ("content-length", "0")])

    # -- token -----------------------------------------------------------------------------------------

    def _error(self, error: str, status: int = 400) -> Response:
        self.token_errors.append(error)
        return Response.json(status, {"error": error})

    def _client_ok(self, request: Request, form: Mapping[str, str]) -> bool:
        auth = request.header("authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
            return user == self.client_id and secrets.compare_digest(password, self.client_secret)
        return form.get("client_id") == self.client_id and secrets.compare_digest(
            form.get("client_secret", ""), self.client_secret
        )

    def _token(self, request: Request) -> Response:
        try:
            form = {k: v[-1] for k, v in parse_qs(request.body.decode(), strict_parsing=False).items()}
        except UnicodeDecodeError:
            return self._error("invalid_request")
        if not self._client_ok(request, form):
            return self._error("invalid_client", 401)
        if form.get("grant_type") != "authorization_code":
            return self._error("unsupported_grant_type")
        grant = self.grants.get(form.get("code", ""))
        if grant is None or grant.used:
            return self._error("invalid_grant")  # unknown or replayed code
        grant.used = True  # single use, even when the rest of this request fails
        if form.get("redirect_uri") != grant.redirect_uri:
            return self._error("invalid_grant")
        verifier = form.get("code_verifier", "")
        if _b64(hashlib.sha256(verifier.encode()).digest()) != grant.challenge:
            return self._error("invalid_grant")
        id_token = self.id_token(nonce=grant.nonce)
        self.id_tokens.append(id_token)
        return Response.json(
            200,
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": id_token,
            },
        )

    def id_token(self, *, nonce: str | None) -> str:
        """An ID token for the configured user, spoiled as ``fault`` says."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 600,
            "auth_time": now,
            **self.claims,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        fault = self.fault
        if fault == "wrong_aud":
            claims["aud"] = "someone-else"
        elif fault == "wrong_iss":
            claims["iss"] = "https://evil.example.com"
        elif fault == "expired":
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        elif fault == "future_iat":
            claims["iat"] = now + 3600
        elif fault == "wrong_nonce":
            claims["nonce"] = "not-the-nonce"
        elif fault == "no_nonce":
            claims.pop("nonce", None)
        elif fault == "huge":
            claims["padding"] = "x" * 100_000
        elif fault == "garbage":
            return "this-is-not-a-jwt"
        if fault == "alg_none":
            header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
            return f"{header}.{_b64(json.dumps(claims).encode())}."
        if fault == "hs256":
            # The attacker's forgery: HMAC keyed with the public key's PEM. joserfc refuses to build it (it
            # warns that such a key must not be an oct key), so the fake signs it by hand.
            header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.key.kid}).encode())
            signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
            mac = hmac.new(self.key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{_b64(mac)}"
        key = self.other_key if fault == "wrong_key" else self.key
        return jwt.encode({"alg": self.alg, "kid": self.key.kid}, claims, key, algorithms=[self.alg])
