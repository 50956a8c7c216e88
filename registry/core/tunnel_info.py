"""What travels with one tunnel stream: who opened it, for which cluster, until when.

Pure (no I/O). The front door authenticates kubectl's client certificate and opens one tunnel stream per
kubectl connection; the identity it established rides on the stream's opening headers as a
:class:`StreamInfo`. The agent trusts these headers only because the stream arrived on a connection the
agent itself dialed to a front door certified by the registry CA (access-design.md §7.4): no other
listener of the agent accepts them.

Header names: ``kubeport-cluster``, ``kubeport-user``, ``kubeport-roles`` (comma-joined),
``kubeport-client-addr``, ``kubeport-cert-expires`` (RFC 3339 UTC, ``Z``).

Invariants:

* ``StreamInfo.from_headers(info.to_headers()) == info`` for every valid ``info``.
* Every value is printable ASCII. The cluster and each role match the resource name rule (``NAME_RE``), the
  user matches the user name rule (``USER_NAME_RE``): so no value can carry a comma, a blank, a control
  character or a non-ASCII look-alike into the ``Impersonate-*`` headers the agent builds from them.
* Anything hostile or malformed is a :class:`BadParameter` naming the header: a missing or repeated header, a
  value that is too long, not ASCII or breaks its rule, more than :data:`MAX_ROLES` roles, a repeated role, a
  timestamp that is not RFC 3339 UTC. Other headers (HTTP/2 pseudo-headers, ...) are ignored. Oversized
  values are refused before they are decoded or split.
* ``cert_expires`` is always an aware UTC datetime.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from registry.core.codec_access import USER_NAME_RE
from registry.core.codec_common import NAME_RE
from registry.core.errors import BadParameter

# The ALPN protocol an agent offers on the front door's port (kubectl gets http/1.1 on the same port).
TUNNEL_ALPN: Final = "kubeport-tunnel/1"
CLUSTER: Final = "kubeport-cluster"
USER: Final = "kubeport-user"
ROLES: Final = "kubeport-roles"
CLIENT_ADDR: Final = "kubeport-client-addr"
CERT_EXPIRES: Final = "kubeport-cert-expires"
NAMES: Final = (CLUSTER, USER, ROLES, CLIENT_ADDR, CERT_EXPIRES)

MAX_NAME: Final = 253  # resource and user names (check_name's bound)
MAX_ADDR: Final = 300  # "[v6 address%zone]:port" with room to spare
MAX_ROLES: Final = 256
MAX_ROLES_VALUE: Final = MAX_ROLES * (MAX_NAME + 1)

# Printable ASCII without blanks or commas: host:port, [v6]:port, or a unix socket path.
_ADDR_RE = re.compile(r"^[\x21-\x2b\x2d-\x7e]*$")
_RFC3339_UTC = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z$")


def _check_name(header: str, value: object, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str):
        raise BadParameter(f"tunnel header {header} must be a string, got {type(value).__name__}")
    if not value:
        raise BadParameter(f"tunnel header {header} must not be empty")
    if len(value) > MAX_NAME:
        raise BadParameter(f"tunnel header {header} is longer than {MAX_NAME} characters ({len(value)})")
    if not pattern.fullmatch(value) or value in (".", ".."):
        raise BadParameter(f"tunnel header {header} must match {pattern.pattern}, got {value[:100]!r}")
    return value


def _check_roles(roles: object) -> tuple[str, ...]:
    if not isinstance(roles, tuple):
        raise BadParameter(f"tunnel header {ROLES} must be a tuple of names, got {type(roles).__name__}")
    if len(roles) > MAX_ROLES:
        raise BadParameter(f"tunnel header {ROLES} names {len(roles)} roles; at most {MAX_ROLES} are allowed")
    for role in roles:
        _check_name(ROLES, role, NAME_RE)
    if len(set(roles)) != len(roles):
        raise BadParameter(f"tunnel header {ROLES} repeats a role: {','.join(roles)[:200]!r}")
    return roles


def _check_addr(value: object) -> str:
    if not isinstance(value, str):
        raise BadParameter(f"tunnel header {CLIENT_ADDR} must be a string, got {type(value).__name__}")
    if len(value) > MAX_ADDR:
        raise BadParameter(f"tunnel header {CLIENT_ADDR} is longer than {MAX_ADDR} characters ({len(value)})")
    if not _ADDR_RE.fullmatch(value):
        raise BadParameter(
            f"tunnel header {CLIENT_ADDR} must be printable ASCII without blanks or commas, got {value[:100]!r}"
        )
    return value


def format_expiry(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``; fractions only when there are microseconds (certificates have none)."""
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def parse_expiry(text: str) -> datetime:
    """The inverse of :func:`format_expiry`; only the ``Z`` form is accepted (the header is UTC by contract)."""
    match = _RFC3339_UTC.fullmatch(text)
    if match is None:
        raise BadParameter(f"tunnel header {CERT_EXPIRES} is not an RFC 3339 UTC time (…Z): {text[:64]!r}")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise BadParameter(f"tunnel header {CERT_EXPIRES} is not a valid time: {text!r} ({exc})") from None


@dataclass(frozen=True, slots=True)  # no __dict__: held by both ends of every open stream (an idle watch)
class StreamInfo:
    """The identity of one tunnel stream, set by the front door (see the module docstring)."""

    cluster: str
    user: str
    roles: tuple[str, ...]
    client_addr: str
    cert_expires: datetime

    def __post_init__(self) -> None:
        _check_name(CLUSTER, self.cluster, NAME_RE)
        _check_name(USER, self.user, USER_NAME_RE)
        _check_roles(self.roles)
        _check_addr(self.client_addr)
        if not isinstance(self.cert_expires, datetime):
            raise BadParameter(f"tunnel header {CERT_EXPIRES} must be a datetime")
        if self.cert_expires.tzinfo is None or self.cert_expires.utcoffset() is None:
            raise BadParameter(f"tunnel header {CERT_EXPIRES} must be an aware datetime (UTC)")
        try:
            utc = self.cert_expires.astimezone(UTC)
        except OverflowError:
            raise BadParameter(f"tunnel header {CERT_EXPIRES} is out of range") from None
        object.__setattr__(self, "cert_expires", utc)

    def to_headers(self) -> list[tuple[bytes, bytes]]:
        """The stream's opening headers (lower-case names, ASCII values)."""
        values = (
            (CLUSTER, self.cluster),
            (USER, self.user),
            (ROLES, ",".join(self.roles)),
            (CLIENT_ADDR, self.client_addr),
            (CERT_EXPIRES, format_expiry(self.cert_expires)),
        )
        return [(name.encode("ascii"), value.encode("ascii")) for name, value in values]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[bytes | str, bytes | str]]) -> StreamInfo:
        """Read a :class:`StreamInfo` back from a stream's headers (raises :class:`BadParameter`)."""
        found: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
            name = name.lower()
            if name not in NAMES:
                continue
            if name in found:
                raise BadParameter(f"tunnel header {name} is repeated")
            limit = MAX_ROLES_VALUE if name == ROLES else max(MAX_NAME, MAX_ADDR)
            if len(raw_value) > limit:  # before decoding or splitting anything
                raise BadParameter(f"tunnel header {name} is longer than {limit} bytes ({len(raw_value)})")
            try:
                value = raw_value.decode("ascii") if isinstance(raw_value, bytes) else raw_value
                value.encode("ascii")
            except (UnicodeDecodeError, UnicodeEncodeError):
                raise BadParameter(f"tunnel header {name} is not ASCII") from None
            found[name] = value
        missing = [name for name in NAMES if name not in found]
        if missing:
            raise BadParameter(f"tunnel stream without header(s) {', '.join(missing)}")
        roles_text = found[ROLES]
        if roles_text.count(",") >= MAX_ROLES:
            raise BadParameter(f"tunnel header {ROLES} names more than {MAX_ROLES} roles")
        roles = tuple(roles_text.split(",")) if roles_text else ()
        return cls(
            cluster=found[CLUSTER],
            user=found[USER],
            roles=roles,
            client_addr=found[CLIENT_ADDR],
            cert_expires=parse_expiry(found[CERT_EXPIRES]),
        )
