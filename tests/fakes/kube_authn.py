"""Authentication of the fake API server: bearer tokens and client certificates.

Faithful:
- ``Authorization: Bearer <token>`` (scheme case-insensitive); a missing, empty or unknown token leaves the
  request unauthenticated, which the server answers with 401 ``Unauthorized`` (anonymous auth is off);
- client certificates verified by the TLS layer against the fake's CA: user = subject CN, groups =
  subject O values (as kube-apiserver's x509 authenticator); tried before tokens, as in the real server;
- legacy service-account token secrets: a token is valid only while its Secret still holds it and the
  ServiceAccount still exists with the uid the Secret names; the user is
  ``system:serviceaccount:<ns>:<name>`` with groups ``system:serviceaccounts`` and
  ``system:serviceaccounts:<ns>``;
- TokenRequest tokens are bound to the ServiceAccount's uid and expire;
- every authenticated user also gets ``system:authenticated``.

Simplified: tokens are opaque random strings, not signed JWTs.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from registry.server.http import Request
from tests.fakes.kube_discovery import SECRETS, SERVICE_ACCOUNTS
from tests.fakes.kube_objects import SA_UID_ANNOTATION
from tests.fakes.kube_rbac import AUTHENTICATED, UserInfo, sa_groups, sa_username
from tests.fakes.kube_store import KubeStore


def with_authenticated(groups: tuple[str, ...]) -> tuple[str, ...]:
    return groups if AUTHENTICATED in groups else (*groups, AUTHENTICATED)


def user_from_cert(der: bytes) -> UserInfo | None:
    """The user a (TLS-verified) client certificate names, or None when it names nobody."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not isinstance(names[0].value, str) or not names[0].value:
        return None
    groups = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME) if str(a.value))
    return UserInfo(names[0].value, with_authenticated(groups))


def new_token(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class _SecretToken:
    namespace: str
    secret: str


@dataclass(frozen=True)
class _BoundToken:
    namespace: str
    service_account: str
    sa_uid: str
    expires: datetime


class Authenticator:
    def __init__(self, store: KubeStore) -> None:
        self._store = store
        self._static: dict[str, UserInfo] = {}
        self._secret_tokens: dict[str, _SecretToken] = {}
        self._bound_tokens: dict[str, _BoundToken] = {}

    def add_token(self, token: str, user: str, groups: tuple[str, ...] = ()) -> None:
        if not token or any(ch.isspace() for ch in token):
            raise ValueError("a bearer token must be non-empty and contain no whitespace")
        self._static[token] = UserInfo(user, with_authenticated(tuple(groups)))

    def remove_token(self, token: str) -> None:
        self._static.pop(token, None)

    def register_secret_token(self, token: str, namespace: str, secret: str) -> None:
        self._secret_tokens[token] = _SecretToken(namespace, secret)

    def mint_bound_token(self, namespace: str, service_account: str, seconds: int) -> tuple[str, datetime]:
        """A TokenRequest token for an existing ServiceAccount (the caller checked it exists)."""
        sa = self._store.peek(SERVICE_ACCOUNTS, namespace, service_account)
        if sa is None:
            raise LookupError(f"serviceaccount {namespace}/{service_account} does not exist")
        token = new_token("fake-bound")
        expires = datetime.now(UTC) + timedelta(seconds=seconds)
        self._bound_tokens[token] = _BoundToken(namespace, service_account, sa["metadata"]["uid"], expires)
        return token, expires

    def authenticate(self, request: Request) -> UserInfo | None:
        if request.peer_cert:
            user = user_from_cert(request.peer_cert)
            if user is not None:
                return user
        header = request.header("authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return self.user_for_token(token)

    def user_for_token(self, token: str) -> UserInfo | None:
        static = self._static.get(token)
        if static is not None:
            return static
        from_secret = self._secret_tokens.get(token)
        if from_secret is not None:
            return self._secret_user(token, from_secret)
        bound = self._bound_tokens.get(token)
        if bound is not None:
            sa = self._store.peek(SERVICE_ACCOUNTS, bound.namespace, bound.service_account)
            if sa is None or sa["metadata"]["uid"] != bound.sa_uid or datetime.now(UTC) >= bound.expires:
                return None
            return _sa_user(bound.namespace, bound.service_account)
        return None

    def _secret_user(self, token: str, ref: _SecretToken) -> UserInfo | None:
        secret = self._store.peek(SECRETS, ref.namespace, ref.secret)
        if secret is None:
            return None
        try:
            stored = base64.b64decode((secret.get("data") or {}).get("token", ""), validate=True).decode()
        except (binascii.Error, ValueError):
            return None
        if not secrets.compare_digest(stored, token):
            return None
        annotations = secret["metadata"].get("annotations") or {}
        sa_name = annotations.get("kubernetes.io/service-account.name", "")
        sa = self._store.peek(SERVICE_ACCOUNTS, ref.namespace, sa_name)
        if sa is None or annotations.get(SA_UID_ANNOTATION, "") != sa["metadata"]["uid"]:
            return None
        return _sa_user(ref.namespace, sa_name)


def _sa_user(namespace: str, name: str) -> UserInfo:
    return UserInfo(sa_username(namespace, name), with_authenticated(sa_groups(namespace)))
