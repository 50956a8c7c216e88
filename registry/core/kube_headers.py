"""Header rules for kubectl requests: what reaches a Kubernetes API server, and what is refused.

Pure (no I/O). Two steps, applied to **every** request head (first and later requests on a kept-alive
connection, upgrade requests for exec/attach/port-forward alike):

1. :func:`inspect` (front door and agent): validates the raw ``(name, value)`` pairs as h11 or
   :mod:`registry.core.http1` gives them (bytes or str), refuses smuggling, and extracts the client's own
   impersonation request for the role engine (:func:`registry.core.kube_access.choose_identity`).
2. :func:`outbound` (agent only): the headers to send upstream for the decided identity.

Rules, in order (access-design.md §4.3; CVE-2021-31999 / GHSA-pvxj-25m6-7vqr, Infisical #6021, kcp
X-Remote-*, capsule-proxy #118):

* Header names must be RFC 9110 tokens; values must not contain CR, LF or NUL (obs-fold remnants, header
  injection). Names compare case-insensitively. Framing is re-checked: one ``Content-Length`` value,
  ``Transfer-Encoding`` only ``chunked``, never both.
* 400 if any ``Connection`` header lists a protected name (``authorization``, ``proxy-authorization``,
  ``cookie``, ``host``, ``content-length``, ``transfer-encoding``, ``forwarded``, ``x-real-ip``, or any
  ``impersonate-*``, ``x-remote-*``, ``x-forwarded-*``, ``kubeport-*``, ``x-kubeport-*``): naming them
  there would make a later hop drop our headers as hop-by-hop.
* Removed: the hop-by-hop set, every ``Connection``-listed header, ``Authorization``, ``Proxy-Authorization``,
  ``Cookie``, ``Forwarded``, ``X-Real-Ip``, ``X-Remote-*``, ``X-Forwarded-*``, ``Kubeport-*`` and
  ``X-Kubeport-*`` (kubeport's internal headers are only ever set by kubeport, on its own hops).
* 403 (Teleport's wording) for ``Impersonate-Uid``, ``Impersonate-Extra-*`` or any other
  ``Impersonate-*`` than ``-User``/``-Group``, and for a second ``Impersonate-User``. Every client
  ``Impersonate-*`` header is then deleted; ours are added: exactly one ``Impersonate-User`` and one
  ``Impersonate-Group`` per group (never comma-joined). A comma in a client's group value is part of that
  one group name, as the API server reads it.
* 403 for a cross-origin request: an ``Origin`` header (every browser sends one on a WebSocket handshake and
  a cross-site write) whose ``host[:port]`` is not the request's ``Host``, ``Origin: null``, or several
  ``Origin`` headers. A browser holding the user's client certificate presents it for any site's page, so a
  cross-site WebSocket exec would run as the user (cross-site WebSocket hijacking; Teleport 8.3.14's
  websocket CSRF). The same-origin rule (:mod:`registry.core.origin`) is gorilla/websocket's
  ``checkSameOrigin``: kubectl sends no ``Origin``, the Python client's websocket-client sends its own
  ``scheme://host[:port]``, both pass.
* An upgrade request (``Connection: upgrade`` plus ``Upgrade``) keeps ``Connection: Upgrade`` and its
  ``Upgrade`` values so exec/port-forward work; WebSocket/SPDY headers are end-to-end and kept.
* ``Authorization`` is never set here: the forwarder adds the cluster's credential last, and replaces Host.
* Fail closed: before returning, the result is checked again; any surviving protected header, or
  impersonation headers other than exactly ours, raise a 500 :class:`KubeportError` instead of forwarding.

It lives in ``registry.core`` because the front door (registry side) applies step 1 and the agent both steps;
``registry`` must not import ``agent``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from registry.core.errors import AccessDenied, BadParameter, KubeportError
from registry.core.kube_access import Identity
from registry.core.origin import check_same_origin

RawHeader = tuple[bytes | str, bytes | str]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)
STRIPPED = frozenset({"authorization", "proxy-authorization", "cookie", "forwarded", "x-real-ip"})
STRIPPED_PREFIXES = ("x-remote-", "x-forwarded-", "kubeport-", "x-kubeport-")
PROTECTED = STRIPPED | {"host", "content-length", "transfer-encoding"}
PROTECTED_PREFIXES = (*STRIPPED_PREFIXES, "impersonate-")
IMPERSONATE_PREFIX = "impersonate-"

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FORBIDDEN_VALUE_BYTES = re.compile(rb"[\r\n\x00]")
_OWS = b" \t"
_DENIED = "impersonation request has been denied"


@dataclass(frozen=True)
class Inbound:
    """A checked request head: the headers to keep (in order) and the client's impersonation request."""

    kept: tuple[tuple[bytes, bytes], ...]
    upgrade: tuple[bytes, ...]  # Upgrade values when this is an upgrade request, else ()
    requested_user: str | None  # None: no (or an empty) Impersonate-User header
    requested_groups: tuple[str, ...]


def canonical(name: str) -> str:
    """Go's canonical header form (``impersonate-extra-foo`` -> ``Impersonate-Extra-Foo``) for messages."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _is_protected(name: str) -> bool:
    return name in PROTECTED or name.startswith(PROTECTED_PREFIXES)


def _is_stripped(name: str) -> bool:
    return name in STRIPPED or name.startswith(STRIPPED_PREFIXES)


def _as_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("ascii" if what == "name" else "utf-8")
    except UnicodeEncodeError as err:
        raise BadParameter(f"header {what} {value[:100]!r} is not valid") from err


def _normalise(headers: Iterable[RawHeader]) -> list[tuple[bytes, str, bytes]]:
    """(original name, lower-case name, value without surrounding whitespace); refuses malformed pairs."""
    result = []
    for raw_name, raw_value in headers:
        name = _as_bytes(raw_name, "name")
        value = _as_bytes(raw_value, "value")
        if not _TOKEN.match(name):
            raise BadParameter(f"invalid header name {name[:100]!r}")
        if _FORBIDDEN_VALUE_BYTES.search(value):
            raise BadParameter(f"header {name.decode('ascii')} has a line break or NUL in its value (obs-fold?)")
        result.append((name, name.decode("ascii").lower(), value.strip(_OWS)))
    return result


def _utf8(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadParameter(f"header {canonical(name)} is not valid UTF-8") from err


def _check_framing(headers: Sequence[tuple[bytes, str, bytes]]) -> None:
    lengths = {v for _, n, v in headers if n == "content-length"}
    if len(lengths) > 1 or any(b"," in v for v in lengths):
        raise BadParameter("conflicting Content-Length headers")
    codings = [v.lower() for _, n, v in headers if n == "transfer-encoding"]
    if codings and (lengths or codings != [b"chunked"]):
        raise BadParameter("only one Transfer-Encoding: chunked, without Content-Length, is supported")


def _connection_tokens(headers: Sequence[tuple[bytes, str, bytes]]) -> set[str]:
    tokens: set[str] = set()
    for _, name, value in headers:
        if name != "connection":
            continue
        for item in value.split(b","):
            token = item.strip(_OWS)
            if not token:
                continue
            if not _TOKEN.match(token):
                raise BadParameter(f"invalid Connection header token {token[:100]!r}")
            tokens.add(token.decode("ascii").lower())
    return tokens


def _check_same_origin(headers: Sequence[tuple[bytes, str, bytes]]) -> None:
    """403 unless the request is same-origin (:mod:`registry.core.origin`)."""
    origins = [v for _, n, v in headers if n == "origin"]
    if origins:
        check_same_origin(origins, next((v for _, n, v in headers if n == "host"), None))


def inspect(headers: Iterable[RawHeader]) -> Inbound:
    """Check a request head and split it into headers to keep and the client's impersonation request.

    Raises :class:`BadParameter` (400) for smuggling or malformed headers, :class:`AccessDenied` (403) for
    unsupported impersonation headers, a second ``Impersonate-User`` or an ``Origin`` header.
    """
    normalised = _normalise(headers)
    _check_framing(normalised)
    tokens = _connection_tokens(normalised)
    for token in sorted(tokens):
        if _is_protected(token):
            raise BadParameter(f"the Connection header may not name {canonical(token)}")
    upgrade_values = tuple(v for _, n, v in normalised if n == "upgrade" and v)
    upgrade = upgrade_values if "upgrade" in tokens else ()

    kept: list[tuple[bytes, bytes]] = []
    user: str | None = None
    seen_user = False
    groups: list[str] = []
    _check_same_origin(normalised)
    for original, name, value in normalised:
        if name.startswith(IMPERSONATE_PREFIX):
            if name == "impersonate-user":
                text = _utf8(name, value)
                if seen_user:
                    raise AccessDenied(f'{_DENIED}, user already specified to "{user or ""}"')
                seen_user = True
                user = text or None
            elif name == "impersonate-group":
                groups.append(_utf8(name, value))
            else:
                raise AccessDenied(f'{_DENIED}, unsupported impersonation header "{canonical(name)}"')
            continue
        if name in HOP_BY_HOP or name in tokens or _is_stripped(name):
            continue
        kept.append((original, value))
    return Inbound(kept=tuple(kept), upgrade=upgrade, requested_user=user, requested_groups=tuple(groups))


def _identity_value(value: str, what: str) -> bytes:
    encoded = value.encode("utf-8")
    if not value or value != value.strip(" \t") or _FORBIDDEN_VALUE_BYTES.search(encoded):
        raise KubeportError(f"refusing to forward: {what} {value[:100]!r} cannot be sent as a header value")
    return encoded


def outbound(inbound: Inbound, identity: Identity) -> list[tuple[bytes, bytes]]:
    """The upstream request headers: the kept ones, the upgrade pair if any, then our impersonation.

    Raises :class:`KubeportError` (500) when the result would carry anything it must not (fail closed).
    """
    user = _identity_value(identity.user, "user")
    groups = [_identity_value(group, "group") for group in identity.groups]
    headers = list(inbound.kept)
    if inbound.upgrade:
        headers.append((b"Connection", b"Upgrade"))
        headers.extend((b"Upgrade", value) for value in inbound.upgrade)
    headers.append((b"Impersonate-User", user))
    headers.extend((b"Impersonate-Group", group) for group in groups)
    _assert_clean(headers, user, groups, upgrade=bool(inbound.upgrade))
    return headers


def _assert_clean(headers: Sequence[tuple[bytes, bytes]], user: bytes, groups: list[bytes], *, upgrade: bool) -> None:
    users: list[bytes] = []
    sent_groups: list[bytes] = []
    for raw_name, value in headers:
        name = raw_name.decode("ascii").lower()
        if name == "impersonate-user":
            users.append(value)
        elif name == "impersonate-group":
            sent_groups.append(value)
        elif name == "connection" and (not upgrade or value != b"Upgrade"):
            raise KubeportError("refusing to forward: a Connection header survived the header rules")
        elif name == "upgrade" and not upgrade:
            raise KubeportError("refusing to forward: an Upgrade header survived the header rules")
        elif _is_protected(name) and name not in ("host", "content-length", "transfer-encoding"):
            raise KubeportError(f"refusing to forward: protected header {canonical(name)} survived the header rules")
        elif name in HOP_BY_HOP - {"connection", "upgrade"}:
            raise KubeportError(f"refusing to forward: hop-by-hop header {canonical(name)} survived the header rules")
    if users != [user] or sent_groups != groups:
        raise KubeportError("refusing to forward: impersonation headers differ from the decided identity")
