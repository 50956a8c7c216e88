"""OIDC single sign-on on the registry: start and finish the authorization-code flow with PKCE.

The flow (RFC 8252 native-app style; ``kubeport login --auth=NAME`` is the client, ``registry.cli.sso_login``):

1. ``POST /v1/sso/oidc/start`` ``{connector, redirect_port, csr_pem, ttl_seconds}`` (no client certificate):
   the registry reads the connector, fetches the provider's discovery document (cached), makes ``state``,
   ``nonce`` and a PKCE verifier, keeps them with the CSR and an expiry, and answers ``{auth_url, state,
   redirect_uri, expires_in}``. The redirect URI is the connector's ``redirect_url`` with the port of the
   client's loopback listener (RFC 8252 §7.3: any port), so the client never chooses where codes go.
2. The browser logs in at the provider, which redirects to the loopback listener with ``code`` and ``state``.
3. ``POST /v1/sso/oidc/finish`` ``{state, code}``: the registry takes the flow out (single use), exchanges the
   code at the token endpoint with its client credentials and the PKCE verifier (httpx), validates the ID
   token (``registry.core.oidc_token``: signature against the JWKS, iss, aud, exp, iat, nonce, algorithms),
   maps ``claims_to_roles``, creates or updates the SSO user record and signs *the CSR given at start*:
   a stolen ``code``+``state`` yields a certificate for the legitimate client's key, useless without it.

Invariants:

* A flow is used at most once (taken out before anything can fail), expires after :data:`FLOW_TTL` seconds,
  and at most :data:`MAX_PENDING_FLOWS` are kept, :data:`MAX_PENDING_PER_SOURCE` per source address (more
  starts are refused with 429 until some finish or expire), so anonymous starts cost bounded memory and one
  source cannot lock everyone else out.
* Nothing from the provider is trusted unbounded: every answer is read up to :data:`MAX_PROVIDER_BYTES`,
  must be a JSON object, and the discovery document must name the connector's issuer.
* The SSO user record carries the label ``kubeport.dev/connector: NAME`` and gets the mapped roles that
  exist, so ``Registry.caller_for`` keeps checking every certificate against it; a login never takes over a
  user created otherwise (a local user of the same name is refused).
* No roles (no claim matches, or none of the mapped roles exists) is a clear refusal.
* The certificate's TTL is the asked one (default 12 h), capped by the roles' ``max_session_ttl``.
* Every finish is audited (``user.login`` with ``method: oidc``), failures aggregated per source like failed
  joins; never a code, token, verifier or client secret.
* httpx errors never leave this module: an unreachable provider is a ConnectionProblem naming the issuer.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import certifi
import httpx
from joserfc.jwk import KeySet

from registry.core import codec, validation
from registry.core.codec_oidc import url_problem
from registry.core.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    KubeportError,
    LimitExceeded,
    NotFound,
)
from registry.core.identity import MAX_CSR_BYTES, Identity
from registry.core.oidc_token import (
    load_jwks,
    mask_claims,
    pkce_pair,
    roles_for_claims,
    token_kid,
    user_name_from_claims,
    validate_id_token,
)
from registry.core.resources import OIDCConnector, Role, User, max_session_ttl
from registry.core.timefmt import format_rfc3339
from registry.server.admission import source_of_client

FLOW_TTL = 600.0  # seconds a started login may take to finish
MAX_PENDING_FLOWS = 1000
MAX_PENDING_PER_SOURCE = 20  # one source (IP) cannot fill the table and lock everyone else out of SSO
DISCOVERY_TTL = 3600.0  # seconds a provider's discovery document and JWKS are cached
JWKS_MIN_REFRESH = 30.0  # an unknown key id refetches the JWKS at most this often (key rotation, not floods)
MAX_PROVIDER_BYTES = 1 << 20
PROVIDER_TIMEOUT = 10.0
DEFAULT_SSO_TTL = timedelta(hours=12)
MAX_SSO_TTL = timedelta(days=7)
CONNECTOR_LABEL = "kubeport.dev/connector"
MAX_CODE_CHARS = 2048
MAX_STATE_CHARS = 256


@dataclass
class Flow:
    connector: str
    nonce: str
    verifier: str
    redirect_uri: str
    csr_pem: bytes = field(repr=False)
    ttl: timedelta
    expires: float
    source: str = ""


class PendingFlows:
    """The started logins, by state: bounded, expiring, single use. Sans-IO (``clock`` injected)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        ttl: float = FLOW_TTL,
        limit: int = MAX_PENDING_FLOWS,
        per_source: int = MAX_PENDING_PER_SOURCE,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        self._per_source = per_source
        self._flows: dict[str, Flow] = {}

    def __len__(self) -> int:
        self._prune()
        return len(self._flows)

    def _prune(self) -> None:
        now = self._clock()
        for state in [s for s, flow in self._flows.items() if flow.expires <= now]:
            del self._flows[state]

    def add(self, state: str, flow: Flow) -> None:
        self._prune()
        if len(self._flows) >= self._limit:
            raise LimitExceeded(
                f"too many single sign-on logins in progress ({self._limit}): finish or wait for one to expire "
                f"(they expire after {int(self._ttl)}s)"
            )
        if flow.source and sum(1 for f in self._flows.values() if f.source == flow.source) >= self._per_source:
            raise LimitExceeded(
                f"too many single sign-on logins in progress from {flow.source} ({self._per_source}): finish one "
                f"or wait for it to expire (after {int(self._ttl)}s)"
            )
        self._flows[state] = flow

    def new_expiry(self) -> float:
        return self._clock() + self._ttl

    def take(self, state: str) -> Flow | None:
        """The flow of ``state``, removed (whatever happens next, it cannot be used again); None when unknown
        or expired."""
        flow = self._flows.pop(state, None)
        if flow is None or flow.expires <= self._clock():
            return None
        return flow


@dataclass
class _Cached:
    value: Any
    fetched: float


def redirect_for(connector: OIDCConnector, port: object) -> str:
    """The loopback redirect URI of a login whose listener has ``port``: the connector's ``redirect_url``
    with that port (RFC 8252 §7.3: the provider must accept any port on a loopback redirect)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadParameter(f"request body field 'redirect_port' must be a port number 1-65535 (got {port!r})")
    parts = urlsplit(connector.redirect_url)
    if parts.port is not None and parts.port != port:
        raise BadParameter(
            f'the oidc connector "{connector.name}" redirect_url {connector.redirect_url!r} pins port {parts.port}, '
            "but kubeport login listens on a free port: ask your admin to drop the port from redirect_url"
        )
    return urlunsplit(("http", f"{parts.hostname}:{port}", parts.path, "", ""))


class OIDCLogin:
    """The two routes' logic over the registry's service (store, CA, audit) and an httpx client."""

    def __init__(
        self,
        registry: Any,  # registry.server.service.Registry (Any: the service imports nothing from here)
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: Any = True,
        clock: Callable[[], float] = time.monotonic,
        flow_ttl: float = FLOW_TTL,
        max_pending: int = MAX_PENDING_FLOWS,
    ) -> None:
        self.registry = registry
        self.flows = PendingFlows(clock=clock, ttl=flow_ttl, limit=max_pending)
        self._clock = clock
        self._transport = transport
        # One TLS context for every provider request: building one per request (httpx's default) costs more
        # than the rest of a login. The CA bundle is the one httpx uses by default (certifi).
        self._verify = ssl.create_default_context(cafile=certifi.where()) if verify is True else verify
        self._discovery: dict[str, _Cached] = {}
        self._jwks: dict[str, _Cached] = {}

    def statistics(self) -> dict[str, int]:
        return {"pending_flows": len(self.flows), "cached_issuers": len(self._discovery)}

    # -- provider documents ----------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=PROVIDER_TIMEOUT,
            trust_env=False,
            follow_redirects=False,
            verify=self._verify,
            transport=self._transport,
        )

    async def _fetch_json(self, issuer: str, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        try:
            async with self._http() as http, http.stream(method, url, **kwargs) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_PROVIDER_BYTES:
                        raise AccessDenied(f"OIDC issuer {issuer}: {url} answered more than {MAX_PROVIDER_BYTES} bytes")
                status = response.status_code
        except httpx.HTTPError as exc:
            raise ConnectionProblem(f"OIDC issuer {issuer} is unreachable at {url}: {type(exc).__name__}") from None
        try:
            value = validation.load_json(body, source=url)
        except KubeportError:
            raise AccessDenied(f"OIDC issuer {issuer}: {url} did not answer JSON (HTTP {status})") from None
        if not isinstance(value, dict):
            raise AccessDenied(f"OIDC issuer {issuer}: {url} did not answer a JSON object (HTTP {status})")
        return status, value

    async def discovery(self, issuer: str) -> dict[str, Any]:
        cached = self._discovery.get(issuer)
        if cached is not None and self._clock() - cached.fetched < DISCOVERY_TTL:
            return dict(cached.value)
        url = f"{issuer}/.well-known/openid-configuration"
        status, doc = await self._fetch_json(issuer, "GET", url)
        if status != 200:
            raise AccessDenied(f"OIDC issuer {issuer}: discovery answered HTTP {status}")
        if doc.get("issuer") != issuer:
            raise AccessDenied(f"OIDC issuer {issuer}: its discovery document names another issuer")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(key)
            # An authorization endpoint may carry a query of its own; the rest of the URL is held to the
            # issuer's rule (https, or http on a loopback address).
            base = value.split("?", 1)[0] if isinstance(value, str) and key == "authorization_endpoint" else value
            if not isinstance(base, str) or len(base) > 2048 or url_problem(base, https_unless_loopback=True):
                raise AccessDenied(f"OIDC issuer {issuer}: discovery field {key} is missing or not an https URL")
        self._discovery[issuer] = _Cached(doc, self._clock())
        return dict(doc)

    async def _keys(self, issuer: str, jwks_uri: str, kid: str | None) -> KeySet:
        cached = self._jwks.get(jwks_uri)
        now = self._clock()
        fresh = cached is not None and now - cached.fetched < DISCOVERY_TTL
        if cached is not None and fresh:
            keys: KeySet = cached.value
            known = kid is None or any(key.kid == kid for key in keys.keys)
            if known or now - cached.fetched < JWKS_MIN_REFRESH:
                return keys
        status, doc = await self._fetch_json(issuer, "GET", jwks_uri)
        if status != 200:
            raise AccessDenied(f"OIDC issuer {issuer}: its JWKS answered HTTP {status}")
        keys = load_jwks(doc, issuer=issuer)
        self._jwks[jwks_uri] = _Cached(keys, now)
        return keys

    # -- connector and roles ---------------------------------------------------------------------------

    async def _connector(self, name: str) -> OIDCConnector:
        if not isinstance(name, str) or not name or len(name) > 253:
            raise BadParameter("request body field 'connector' must be a connector name")
        try:
            record = await self.registry.store.get("oidc", name)
        except NotFound:
            raise NotFound(f'no SSO connector "{name[:64]}": ask your admin for the --auth name to use') from None
        connector = codec.resource_from_dict(record.value)
        assert isinstance(connector, OIDCConnector)
        return connector

    async def _existing_roles(self, names: tuple[str, ...]) -> tuple[Role, ...]:
        roles: list[Role] = []
        for name in names:
            try:
                record = await self.registry.store.get("role", name)
            except NotFound:
                continue
            role = codec.resource_from_dict(record.value)
            assert isinstance(role, Role)
            roles.append(role)
        return tuple(roles)

    # -- start -----------------------------------------------------------------------------------------

    async def start(
        self,
        *,
        connector: str,
        redirect_port: object,
        csr_pem: bytes,
        ttl: timedelta = DEFAULT_SSO_TTL,
        client: str = "",
    ) -> dict[str, Any]:
        conn = await self._connector(connector)
        redirect_uri = redirect_for(conn, redirect_port)
        if len(csr_pem) > MAX_CSR_BYTES or b"-----BEGIN CERTIFICATE REQUEST-----" not in csr_pem:
            raise BadParameter("csr_pem must be a PEM certificate signing request")
        if not timedelta(seconds=60) <= ttl <= MAX_SSO_TTL:
            raise BadParameter(f"ttl_seconds must be between 60 and {int(MAX_SSO_TTL.total_seconds())}")
        doc = await self.discovery(conn.issuer_url)
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        params = {
            "response_type": "code",
            "client_id": conn.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(["openid", *(s for s in conn.scope if s != "openid")]),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        max_age = conn.max_age_seconds()
        if max_age is not None:
            params["max_age"] = str(max_age)
        expires = self.flows.new_expiry()
        flow = Flow(conn.name, nonce, verifier, redirect_uri, csr_pem, ttl, expires, source_of_client(client))
        self.flows.add(state, flow)
        endpoint = str(doc["authorization_endpoint"])
        auth_url = f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"
        return {
            "auth_url": auth_url,
            "state": state,
            "redirect_uri": redirect_uri,
            "expires_in": int(expires - self._clock()),
        }

    # -- finish ----------------------------------------------------------------------------------------

    async def finish(self, *, state: str, code: str, client: str) -> dict[str, Any]:
        """Exchange, validate, map, record the user and sign; audit the outcome (never a secret)."""
        if not state or len(state) > MAX_STATE_CHARS or not code or len(code) > MAX_CODE_CHARS:
            raise BadParameter("request body fields 'state' and 'code' must be the values the provider returned")
        flow = self.flows.take(state)
        if flow is None:
            await self.registry.audit_failure(
                "user.login", client=client, reason="unknown, used or expired sso state", method="oidc"
            )
            raise AccessDenied(
                "single sign-on refused: this login is unknown, was already used or expired; run kubeport login again"
            )
        try:
            result = await self._finish(flow, code)
        except KubeportError as err:
            await self.registry.audit_failure(
                "user.login", client=client, reason=err.message[:300], method="oidc", connector=flow.connector
            )
            raise
        await self.registry.audit(
            "user.login",
            None,
            user=result["user"],
            method="oidc",
            connector=flow.connector,
            roles=result["roles"],
            client=client,
            **result.pop("_audit"),
        )
        return result

    async def _finish(self, flow: Flow, code: str) -> dict[str, Any]:
        conn = await self._connector(flow.connector)
        doc = await self.discovery(conn.issuer_url)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": flow.verifier,
        }
        auth: tuple[str, str] | None = None
        if conn.client_secret:
            auth = (conn.client_id, conn.client_secret)  # client_secret_basic
        else:
            form["client_id"] = conn.client_id  # a public client: PKCE alone
        status, answer = await self._fetch_json(
            conn.issuer_url, "POST", str(doc["token_endpoint"]), data=form, auth=auth
        )
        if status != 200:
            error = answer.get("error")
            shown = error[:64] if isinstance(error, str) and error.isprintable() else "an error"
            raise AccessDenied(
                f"single sign-on refused: the provider {conn.issuer_url} did not accept the login code ({shown}); "
                "run kubeport login again"
            )
        id_token = answer.get("id_token")
        kid = token_kid(id_token) if isinstance(id_token, str) and len(id_token) < 65536 else None
        keys = await self._keys(conn.issuer_url, str(doc["jwks_uri"]), kid)
        claims = validate_id_token(
            id_token,
            keys,
            issuer=conn.issuer_url,
            client_id=conn.client_id,
            nonce=flow.nonce,
            now=int(time.time()),
            max_age=conn.max_age_seconds(),
        )
        user_name = user_name_from_claims(conn, claims)
        mapped = roles_for_claims(conn, claims)
        if not mapped:
            claims_used = ", ".join(sorted({m.claim for m in conn.claims_to_roles}))
            raise AccessDenied(
                f'single sign-on refused: user "{user_name}" has no roles: their claims ({claims_used}) match no '
                f'claims_to_roles entry of the oidc connector "{conn.name}"; ask your admin to map them'
            )
        roles = await self._existing_roles(mapped)
        if not roles:
            raise AccessDenied(
                f'single sign-on refused: user "{user_name}" maps to roles {", ".join(mapped)}, none of which exists'
            )
        role_names = tuple(role.name for role in roles)
        await self._record_user(conn, user_name, role_names)
        now = self.registry.now()
        ttl = min(flow.ttl, max_session_ttl(roles))
        identity = Identity(name=user_name, kind="user", roles=role_names)
        cert = self.registry.ca.sign_csr(flow.csr_pem, identity, ttl=ttl, now=now)
        expires = min(now + ttl, self.registry.ca.expires)
        return {
            "user": user_name,
            "roles": list(role_names),
            "cert_pem": cert.decode(),
            "ca_pems": [self.registry.ca.cert_pem.decode()],
            "expires": format_rfc3339(expires, fraction="micro"),
            "_audit": mask_claims(claims),
        }

    async def _record_user(self, conn: OIDCConnector, name: str, roles: tuple[str, ...]) -> None:
        """Create or update the SSO user: roles from this login, marked as the connector's; traits kept."""
        store = self.registry.store
        traits: Mapping[str, tuple[str, ...]] = {}
        expected: int | None = None
        try:
            record = await store.get("user", name)
        except NotFound:
            record = None
        if record is not None:
            existing = codec.resource_from_dict(record.value)
            assert isinstance(existing, User)
            owner = existing.metadata.labels.get(CONNECTOR_LABEL)
            if owner != conn.name:
                raise AccessDenied(
                    f'single sign-on refused: a user "{name}" already exists and was not created by the oidc '
                    f'connector "{conn.name}"; an SSO login never takes over another user'
                )
            traits, expected = existing.traits, record.revision
        doc = {
            "kind": "user",
            "version": User.VERSION,
            "metadata": {"name": name, "labels": {CONNECTOR_LABEL: conn.name}},
            "spec": {"roles": list(roles), "traits": {k: list(v) for k, v in traits.items()}},
        }
        user = codec.resource_from_dict(doc, source="sso user")  # the same rules as any written user
        value = codec.resource_to_dict(user)
        if expected is None:
            await store.create("user", name, value)
        else:
            await store.update("user", name, value, expected_revision=expected)
