"""What travels with one tunnel stream: who opened it, for which cluster, until when.

Pure (no I/O). The front door authenticates kubectl's client certificate and opens one tunnel stream per
kubectl connection; the identity it established rides on the stream's opening headers as a
:class:`StreamInfo`. The agent trusts these headers only because the stream arrived on a connection the
agent itself dialed to a front door certified by the registry CA (access-design.md §7.4): no other
listener of the agent accepts them.

Header names: ``kubeport-cluster``, ``kubeport-user``, ``kubeport-roles`` (comma-joined),
``kubeport-client-addr``, ``kubeport-cert-expires`` (RFC 3339 UTC).

Invariants:

* ``StreamInfo.from_headers(info.to_headers()) == info`` for every valid ``info``.
* Anything hostile or malformed is a :class:`BadParameter` naming the header: a missing or repeated
  header, a value that is not printable UTF-8 or is too long, an empty cluster or user, a role name with a
  comma or blank, a timestamp that is not RFC 3339. Other headers (HTTP/2 pseudo-headers, ...) are ignored.
* ``cert_expires`` is always an aware UTC datetime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from registry.core.errors import BadParameter
from registry.core.timefmt import as_utc, format_rfc3339, parse_rfc3339

CLUSTER: Final = "kubeport-cluster"
USER: Final = "kubeport-user"
ROLES: Final = "kubeport-roles"
CLIENT_ADDR: Final = "kubeport-client-addr"
CERT_EXPIRES: Final = "kubeport-cert-expires"
NAMES: Final = (CLUSTER, USER, ROLES, CLIENT_ADDR, CERT_EXPIRES)

MAX_VALUE: Final = 1024  # one name or address
MAX_ROLES_VALUE: Final = 16 * 1024
MAX_ROLES: Final = 256


def _check_text(header: str, value: str, *, limit: int = MAX_VALUE, empty_ok: bool = False) -> str:
    if not value and not empty_ok:
        raise BadParameter(f"tunnel header {header} must not be empty")
    if len(value) > limit:
        raise BadParameter(f"tunnel header {header} is longer than {limit} characters")
    if not value.isprintable() or value != value.strip():
        raise BadParameter(f"tunnel header {header} has control characters or surrounding blanks: {value[:100]!r}")
    return value


def _check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    result = tuple(roles)
    if len(result) > MAX_ROLES:
        raise BadParameter(f"tunnel header {ROLES} names more than {MAX_ROLES} roles")
    for role in result:
        if not isinstance(role, str) or not role or "," in role:
            raise BadParameter(f"tunnel header {ROLES}: a role name must be non-empty and without commas ({role!r})")
        _check_text(ROLES, role)
    return result


@dataclass(frozen=True)
class StreamInfo:
    """The identity of one tunnel stream, set by the front door (see the module docstring)."""

    cluster: str
    user: str
    roles: tuple[str, ...]
    client_addr: str
    cert_expires: datetime

    def __post_init__(self) -> None:
        _check_text(CLUSTER, self.cluster)
        _check_text(USER, self.user)
        object.__setattr__(self, "roles", _check_roles(self.roles))
        _check_text(CLIENT_ADDR, self.client_addr, empty_ok=True)
        if not isinstance(self.cert_expires, datetime):
            raise BadParameter(f"tunnel header {CERT_EXPIRES} must be a datetime")
        try:
            object.__setattr__(self, "cert_expires", as_utc(self.cert_expires))
        except OverflowError:
            raise BadParameter(f"tunnel header {CERT_EXPIRES} is out of range") from None

    def to_headers(self) -> list[tuple[bytes, bytes]]:
        """The stream's opening headers (lower-case names, UTF-8 values)."""
        values = (
            (CLUSTER, self.cluster),
            (USER, self.user),
            (ROLES, ",".join(self.roles)),
            (CLIENT_ADDR, self.client_addr),
            (CERT_EXPIRES, format_rfc3339(self.cert_expires)),
        )
        return [(name.encode("ascii"), value.encode("utf-8")) for name, value in values]

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
            if isinstance(raw_value, bytes):
                limit = MAX_ROLES_VALUE if name == ROLES else MAX_VALUE
                if len(raw_value) > 4 * limit:
                    raise BadParameter(f"tunnel header {name} is too long")
                try:
                    value = raw_value.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadParameter(f"tunnel header {name} is not UTF-8") from None
            else:
                value = raw_value
            found[name] = value
        missing = [name for name in NAMES if name not in found]
        if missing:
            raise BadParameter(f"tunnel stream without header(s) {', '.join(missing)}")
        roles_text = _check_text(ROLES, found[ROLES], limit=MAX_ROLES_VALUE, empty_ok=True)
        roles = tuple(roles_text.split(",")) if roles_text else ()
        expires_text = _check_text(CERT_EXPIRES, found[CERT_EXPIRES], limit=64)
        try:
            expires = parse_rfc3339(expires_text)
        except (ValueError, OverflowError):
            raise BadParameter(f"tunnel header {CERT_EXPIRES} is not an RFC 3339 time: {expires_text!r}") from None
        return cls(
            cluster=found[CLUSTER],
            user=found[USER],
            roles=roles,
            client_addr=found[CLIENT_ADDR],
            cert_expires=expires,
        )
