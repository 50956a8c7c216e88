"""The ``oidc`` connector kind of the wire codec: Teleport's shape, decoded strictly and encoded back.

Reached through :mod:`registry.core.codec`. The shape (``kind: oidc``, ``version: v3``)::

    spec:
      issuer_url: https://idp.example.com          # https; http only on a loopback address (tests, labs)
      client_id: kubeport
      client_secret: ...                            # a secret field: shown only with --with-secrets
      redirect_url: http://127.0.0.1/callback       # the loopback callback kubeport login listens on
      claims_to_roles: [{claim: groups, value: admins, roles: [access]}]
      scope: [email, groups]                        # optional; "openid" is always asked for
      max_age: 24h                                  # optional: the provider's login must be this recent
      username_claim: email                         # optional (kubeport): the claim naming the user

Decisions (documented deviations from Teleport):

* ``redirect_url`` must be an ``http`` URL on 127.0.0.1 or localhost (RFC 8252 native-app redirect): the
  provider redirects the browser straight to ``kubeport login``'s listener, which takes a free port, so the
  URL is written without a port (the registry puts the listener's in; providers accept any port on a
  loopback redirect).
* ``claims_to_roles`` values match exactly (a list claim matches when it contains the value); Teleport's
  wildcards and regular expressions are refused rather than read literally. ``name`` is accepted as a
  spelling of ``claim`` (seed 003 writes it so).
* Roles named in ``claims_to_roles`` need not exist when the connector is created (roles may come later, as
  in Teleport); at login a missing role grants nothing, and a login whose roles are all missing is refused.
* Sizes are bounded: at most :data:`MAX_MAPPINGS` mappings of at most :data:`MAX_ROLES_PER_MAPPING` roles,
  URLs of at most 1024 characters, at most :data:`MAX_SCOPES` scopes.

Invariants: ``decode_oidc(oidc_to_dict(c, with_secrets=True)) == c``; ``with_secrets=False`` drops
``client_secret`` and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from labels import LabelError, parse_go_duration
from registry.core.codec_common import NAME_RE, check_version, decode_metadata, envelope, metadata_dict
from registry.core.netaddr import is_loopback
from registry.core.resources import ClaimMapping, OIDCConnector
from registry.core.validation import Fields, check_name, describe, quote

MAX_MAPPINGS = 256
MAX_ROLES_PER_MAPPING = 64
MAX_SCOPES = 32
MAX_URL_CHARS = 1024
MAX_MAX_AGE_SECONDS = 366 * 24 * 3600
_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 scope-token
_CLAIM_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,256}$")
_SPEC_FIELDS = (
    "issuer_url",
    "client_id",
    "client_secret",
    "redirect_url",
    "claims_to_roles",
    "scope",
    "max_age",
    "username_claim",
    "display",
)


def loopback_host(host: str | None) -> bool:
    """Whether a URL host is this machine (``localhost`` or a loopback IP)."""
    if not host:
        return False
    return host.lower() == "localhost" or is_loopback(host)


def _url(spec: Fields, key: str, *, https_unless_loopback: bool) -> str:
    value = spec.string(key, required=True, limit=MAX_URL_CHARS)
    problem = url_problem(value, https_unless_loopback=https_unless_loopback)
    if problem:
        spec.fail(f"{spec.at(key)} {problem} (got {quote(value)})")
    return value.rstrip("/") if key == "issuer_url" else value


def url_problem(value: str, *, https_unless_loopback: bool) -> str | None:
    """Why ``value`` is not an acceptable issuer (``https_unless_loopback``) or loopback redirect URL."""
    if not value.isprintable() or any(c.isspace() for c in value):
        return "must be a URL without spaces or control characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "must be a valid URL"
    if parts.username is not None or parts.password is not None or parts.fragment or parts.query:
        return "must not carry user info, a query or a fragment"
    if https_unless_loopback:
        if parts.scheme == "https" and parts.hostname:
            return None
        if parts.scheme == "http" and loopback_host(parts.hostname):
            return None
        return "must be an https URL (http only on a loopback address)"
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
        return "must be an http URL on 127.0.0.1 or localhost, such as http://127.0.0.1/callback"
    if parts.port is not None:
        return "must not name a port (kubeport login listens on a free port; the registry puts it in)"
    if not parts.path.startswith("/"):
        return "must have a path such as /callback"
    return None


def _mapping(item: Fields) -> ClaimMapping:
    item.reject_unknown(("claim", "name", "value", "roles"))
    if "claim" in item and "name" in item:
        item.fail(f"{item.path} has both claim and name; keep claim")
    key = "claim" if "claim" in item else "name"
    claim = item.string(key, required=True, limit=256)
    if not _CLAIM_RE.match(claim):
        item.fail(f"{item.at(key)} must be a claim name (letters, digits, _ . : / -) (got {quote(claim)})")
    value = item.string("value", required=True, limit=1024)
    if not value.isprintable():
        item.fail(f"{item.at('value')} must be printable text (got {quote(value)})")
    if "*" in value or (value.startswith("^") and value.endswith("$")):
        item.fail(
            f"{item.at('value')} {quote(value)}: wildcards and regular expressions are not supported "
            "(kubeport matches claim values exactly)"
        )
    roles = item.strings("roles", required=True, limit=MAX_ROLES_PER_MAPPING)
    for index, role in enumerate(roles):
        check_name(role, subject=item.subject, path=f"{item.at('roles')}[{index}]", pattern=NAME_RE)
    return ClaimMapping(claim=claim, value=value, roles=roles)


def decode_oidc(doc: Mapping[str, Any]) -> OIDCConnector:
    top, subject = envelope(doc, "oidc")
    check_version(top, (OIDCConnector.VERSION,), OIDCConnector.VERSION)
    metadata = decode_metadata(top, subject)
    spec = top.mapping("spec")
    spec.reject_unknown(_SPEC_FIELDS, hint=f" (kubeport oidc connectors have {', '.join(_SPEC_FIELDS)})")
    client_id = spec.string("client_id", required=True, limit=256)
    if not client_id or not client_id.isprintable():
        spec.fail(f"{spec.at('client_id')} must be non-empty printable text (got {quote(client_id)})")
    secret = spec.raw("client_secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) > 1024 or not secret.isprintable()):
        spec.fail(f"{spec.at('client_secret')} must be printable text of at most 1024 characters")  # never shown
    raw = spec.raw("claims_to_roles")
    if not isinstance(raw, list) or not raw:
        spec.fail(
            f"{spec.at('claims_to_roles')} must be a non-empty list of {{claim, value, roles}} (got {describe(raw)})"
        )
    if len(raw) > MAX_MAPPINGS:
        spec.fail(f"{spec.at('claims_to_roles')} has {len(raw)} entries; at most {MAX_MAPPINGS} are allowed")
    mappings = tuple(
        _mapping(Fields(item, subject=subject, path=f"{spec.at('claims_to_roles')}[{index}]"))
        for index, item in enumerate(raw)
    )
    scope = spec.strings("scope", limit=MAX_SCOPES)
    for index, item in enumerate(scope):
        if not _SCOPE_RE.match(item):
            spec.fail(f"{spec.at('scope')}[{index}] must be an OAuth scope token (got {quote(item)})")
    max_age = spec.raw("max_age")
    if max_age is not None:
        if not isinstance(max_age, str):
            spec.fail(f'{spec.at("max_age")} must be a Go duration such as "24h" (got {describe(max_age)})')
        try:
            seconds = parse_go_duration(max_age, what=spec.at("max_age"))
        except LabelError as err:
            spec.fail(f"{spec.at('max_age')}: {err}")
        if not 0 <= seconds <= MAX_MAX_AGE_SECONDS:
            spec.fail(f"{spec.at('max_age')} must be between 0s and 8784h (got {quote(max_age)})")
    username_claim = spec.string("username_claim", default="email", limit=256) or "email"
    if not _CLAIM_RE.match(username_claim):
        spec.fail(f"{spec.at('username_claim')} must be a claim name (got {quote(username_claim)})")
    return OIDCConnector(
        metadata=metadata,
        issuer_url=_url(spec, "issuer_url", https_unless_loopback=True),
        client_id=client_id,
        client_secret=secret or "",
        redirect_url=_url(spec, "redirect_url", https_unless_loopback=False),
        claims_to_roles=mappings,
        scope=scope,
        max_age=max_age,
        username_claim=username_claim,
        display=spec.string("display", limit=256),
    )


def oidc_to_dict(r: OIDCConnector, *, with_secrets: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "issuer_url": r.issuer_url,
        "client_id": r.client_id,
        "redirect_url": r.redirect_url,
        "claims_to_roles": [{"claim": m.claim, "value": m.value, "roles": list(m.roles)} for m in r.claims_to_roles],
    }
    if with_secrets and r.client_secret:
        spec["client_secret"] = r.client_secret
    if r.scope:
        spec["scope"] = list(r.scope)
    if r.max_age is not None:
        spec["max_age"] = r.max_age
    if r.username_claim != "email":
        spec["username_claim"] = r.username_claim
    if r.display:
        spec["display"] = r.display
    return {"kind": r.KIND, "version": r.VERSION, "metadata": metadata_dict(r.metadata), "spec": spec}
