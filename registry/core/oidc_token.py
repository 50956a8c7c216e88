"""OIDC decisions without I/O: ID token validation, claims to roles, the user name, PKCE.

The registry's OIDC flow (``registry.server.oidc``) fetches the provider's documents and the token; every
decision about them is here, as plain functions a test can table.

Invariants:

* An ID token is accepted only when all of these hold (OpenID Connect Core §3.1.3.7): at most
  :data:`MAX_ID_TOKEN_BYTES`; a JWS signed with an allowed algorithm (:data:`ALLOWED_ALGORITHMS`: RS256,
  ES256; ``none`` and HMAC are refused whatever the header says, so a provider's public key can never be
  used as an HMAC secret) by a key of the issuer's JWKS; ``iss`` equal to the connector's issuer; ``aud``
  containing the client id (and ``azp`` equal to it when there are several audiences); ``exp`` in the
  future and ``iat`` not in the future (both with :data:`LEEWAY` seconds of clock skew); ``nonce`` equal to
  the one this flow sent; ``sub`` present; with ``max_age``, an ``auth_time`` at most that old.
* The JOSE work is joserfc's; its exceptions never leave this module: every refusal is one
  :class:`~registry.core.errors.AccessDenied` whose message says which check failed, never the token.
* Claims map to roles only by exact match (see ``codec_oidc``); no match means no roles, which callers
  refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet

from registry.core.codec_access import USER_NAME_RE
from registry.core.errors import AccessDenied
from registry.core.resources import OIDCConnector

ALLOWED_ALGORITHMS = ("RS256", "ES256")
MAX_ID_TOKEN_BYTES = 16 * 1024
MAX_JWKS_KEYS = 64
LEEWAY = 60  # seconds of clock skew accepted between the provider and the registry
MAX_USER_NAME = 128
_CLAIM_CHECKS = {
    "iss": "it was issued by another issuer",
    "aud": "it was issued for another client (audience)",
    "azp": "it was issued for another client (authorized party)",
    "nonce": "its nonce does not match this login",
    "iat": "it was issued in the future",
    "exp": "it has expired",
    "sub": "it names no subject",
}


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier (RFC 7636: 43-128 unreserved characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def load_jwks(document: object, *, issuer: str) -> KeySet:
    """The provider's signing keys from its JWKS document; refuses anything else with an AccessDenied."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise AccessDenied(f"OIDC issuer {issuer}: its JWKS is not a JSON object with a keys list")
    keys = [key for key in document["keys"] if isinstance(key, Mapping) and key.get("kty") in ("RSA", "EC")]
    if not keys or len(keys) > MAX_JWKS_KEYS:
        raise AccessDenied(f"OIDC issuer {issuer}: its JWKS has no usable RSA or EC key (or more than {MAX_JWKS_KEYS})")
    try:
        return KeySet.import_key_set({"keys": [dict(key) for key in keys]})
    except (JoseError, ValueError, TypeError) as err:
        raise AccessDenied(f"OIDC issuer {issuer}: its JWKS holds a malformed key ({type(err).__name__})") from None


def token_kid(id_token: str) -> str | None:
    """The ``kid`` a token's header names, or None; only to decide whether the cached JWKS may be stale
    (a malformed header is reported by :func:`validate_id_token`)."""
    head = id_token.split(".", 1)[0]
    if len(head) > 4096:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def validate_id_token(
    id_token: object,
    keys: KeySet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: int,
    max_age: int | None = None,
) -> dict[str, Any]:
    """The claims of a valid ID token (module invariants), else AccessDenied saying which check failed."""

    def refuse(reason: str) -> AccessDenied:
        return AccessDenied(f"OIDC login refused: the ID token from {issuer} is not valid: {reason}")

    if not isinstance(id_token, str) or not id_token:
        raise refuse("the provider returned no ID token")
    if len(id_token) > MAX_ID_TOKEN_BYTES:
        raise refuse(f"it is larger than {MAX_ID_TOKEN_BYTES} bytes")
    if id_token.count(".") != 2 or not id_token.isascii():
        raise refuse("it is not a compact JWS (header.payload.signature)")
    try:
        token = jwt.decode(id_token, keys, algorithms=list(ALLOWED_ALGORITHMS))
    except UnsupportedAlgorithmError:
        raise refuse(f"it is not signed with an allowed algorithm ({', '.join(ALLOWED_ALGORITHMS)})") from None
    except BadSignatureError:
        raise refuse("its signature does not verify against the issuer's keys") from None
    except (JoseError, ValueError, TypeError, KeyError) as err:
        raise refuse(f"it cannot be verified ({type(err).__name__})") from None
    claims = dict(token.claims)
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=LEEWAY,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise refuse(_CLAIM_CHECKS["exp"]) from None
    except (InvalidClaimError, MissingClaimError) as err:
        claim = getattr(err, "claim", "")
        reason = _CLAIM_CHECKS.get(claim, f"its {claim!r} claim is missing or wrong")
        if isinstance(err, MissingClaimError):
            reason = f"it has no {claim!r} claim"
        raise refuse(reason) from None
    except (JoseError, ValueError, TypeError) as err:
        raise refuse(f"its claims are malformed ({type(err).__name__})") from None
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or iat > now + LEEWAY:
        raise refuse(_CLAIM_CHECKS["iat"])
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise refuse(_CLAIM_CHECKS["azp"])
    if max_age is not None:
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
            raise refuse("it has no auth_time although the connector sets max_age")
        if now - auth_time > max_age + LEEWAY:
            raise refuse(f"the login at the provider is older than max_age ({max_age}s): log in there again")
    return claims


def _claim_values(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    if isinstance(value, bool | int):
        return [str(value).lower()]
    return []


def roles_for_claims(connector: OIDCConnector, claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The roles ``claims_to_roles`` grants for ``claims``, in mapping order, without repeats."""
    roles: list[str] = []
    for mapping in connector.claims_to_roles:
        if mapping.value in _claim_values(claims.get(mapping.claim)):
            roles.extend(role for role in mapping.roles if role not in roles)
    return tuple(roles)


def user_name_from_claims(connector: OIDCConnector, claims: Mapping[str, Any]) -> str:
    """The kubeport user name: the connector's ``username_claim`` (default ``email``); refused when absent
    or not a valid user name (it becomes a certificate subject and a record name)."""
    value = claims.get(connector.username_claim)
    if not isinstance(value, str) or not value:
        raise AccessDenied(
            f'OIDC login refused: the ID token has no "{connector.username_claim}" claim to name the user '
            f'(the oidc connector "{connector.name}" reads the user name from it; set spec.username_claim)'
        )
    if len(value) > MAX_USER_NAME or not USER_NAME_RE.match(value):
        shown = value[:64].encode("unicode_escape").decode("ascii")
        raise AccessDenied(
            f'OIDC login refused: claim "{connector.username_claim}" ({shown!r}) is not a valid user name '
            f"(letters, digits, . _ @ + -, at most {MAX_USER_NAME} characters)"
        )
    return value


def mask_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """What the audit log keeps of a token's claims: issuer and subject only (never the token)."""
    return {key: str(claims[key])[:256] for key in ("iss", "sub") if key in claims}
