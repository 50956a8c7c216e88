"""What travels with each tunnel stream: who the kubectl connection belongs to, and which cluster it is for.

Pure (no I/O). The front door sets these on the extended-CONNECT stream it opens to an agent (one stream per
kubectl TCP connection); the agent reads them back with :meth:`StreamInfo.from_headers` and trusts them only
because the stream arrived on a connection it dialed itself to a front door the registry CA vouches for
(access-design.md §7.4). They are never read from kubectl's own request headers (``kube_headers`` strips
every ``kubeport-*`` header kubectl sends).

Header names: ``kubeport-cluster``, ``kubeport-user``, ``kubeport-roles`` (comma-joined, may be empty),
``kubeport-client-addr``, ``kubeport-cert-expires`` (RFC 3339, UTC, ``Z``).

Invariants:

* ``StreamInfo.from_headers(info.to_headers()) == info`` for every valid ``info``.
* Each of the five headers must appear exactly once; a missing, repeated or malformed one raises
  :class:`~registry.core.errors.BadParameter` naming it. Other headers (h2 pseudo-headers, anything else)
  are ignored. Values are checked with the same rules as the resources they name (cluster, user and role
  names), so a value can never smuggle a comma, a line break or a control character.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from registry.core.errors import BadParameter

CLUSTER_HEADER = b"kubeport-cluster"
USER_HEADER = b"kubeport-user"
ROLES_HEADER = b"kubeport-roles"
CLIENT_ADDR_HEADER = b"kubeport-client-addr"
CERT_EXPIRES_HEADER = b"kubeport-cert-expires"
HEADERS = (CLUSTER_HEADER, USER_HEADER, ROLES_HEADER, CLIENT_ADDR_HEADER, CERT_EXPIRES_HEADER)

MAX_VALUE_BYTES = 8 * 1024
MAX_ROLES = 256
_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]{1,253}$")  # cluster and role names (codec_common.NAME_RE)
_USER_RE = re.compile(r"^[a-zA-Z0-9._@+-]{1,253}$")  # user names (codec_access.USER_NAME_RE)
_ADDR_RE = re.compile(r"^[A-Za-z0-9.:%\[\]_-]{1,300}$")  # host:port, [v6]:port, v6%zone:port
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z$")
_MAX_SHOWN = 80


def _show(value: str) -> str:
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "...")


def _rfc3339(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StreamInfo:
    """The identity and target of one tunnel stream, as the front door decided them."""

    cluster: str
    user: str
    roles: tuple[str, ...]
    client_addr: str
    cert_expires: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.cluster, str) or not _NAME_RE.match(self.cluster):
            raise BadParameter(f"stream info: invalid cluster name {_show(str(self.cluster))}")
        if not isinstance(self.user, str) or not _USER_RE.match(self.user):
            raise BadParameter(f"stream info: invalid user name {_show(str(self.user))}")
        if not isinstance(self.roles, tuple) or len(self.roles) > MAX_ROLES:
            raise BadParameter(f"stream info: roles must be a tuple of at most {MAX_ROLES} role names")
        for role in self.roles:
            if not isinstance(role, str) or not _NAME_RE.match(role):
                raise BadParameter(f"stream info: invalid role name {_show(str(role))}")
        if len(set(self.roles)) != len(self.roles):
            raise BadParameter("stream info: roles must not repeat")
        if not isinstance(self.client_addr, str) or not _ADDR_RE.match(self.client_addr):
            raise BadParameter(f"stream info: invalid client address {_show(str(self.client_addr))}")
        if not isinstance(self.cert_expires, datetime) or self.cert_expires.utcoffset() is None:
            raise BadParameter("stream info: cert_expires must be a timezone-aware datetime")

    def to_headers(self) -> list[tuple[bytes, bytes]]:
        """The stream's metadata as (lower-case name, value) header pairs, in :data:`HEADERS` order."""
        return [
            (CLUSTER_HEADER, self.cluster.encode("ascii")),
            (USER_HEADER, self.user.encode("ascii")),
            (ROLES_HEADER, ",".join(self.roles).encode("ascii")),
            (CLIENT_ADDR_HEADER, self.client_addr.encode("ascii")),
            (CERT_EXPIRES_HEADER, _rfc3339(self.cert_expires).encode("ascii")),
        ]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[bytes | str, bytes | str]]) -> StreamInfo:
        """Read the five headers back (see the module docstring for what is refused)."""
        found: dict[bytes, str] = {}
        for raw_name, raw_value in headers:
            name = raw_name.encode("latin-1") if isinstance(raw_name, str) else bytes(raw_name)
            name = name.lower()
            if name not in HEADERS:
                continue
            shown = name.decode("ascii")
            if name in found:
                raise BadParameter(f"stream info: header {shown} appears more than once")
            value = raw_value.encode("utf-8") if isinstance(raw_value, str) else bytes(raw_value)
            if len(value) > MAX_VALUE_BYTES:
                raise BadParameter(f"stream info: header {shown} is longer than {MAX_VALUE_BYTES} bytes")
            try:
                found[name] = value.decode("ascii")
            except UnicodeDecodeError:
                raise BadParameter(f"stream info: header {shown} is not ASCII") from None
        missing = [name.decode("ascii") for name in HEADERS if name not in found]
        if missing:
            raise BadParameter(f"stream info: missing header {', '.join(missing)}")
        roles_text = found[ROLES_HEADER]
        roles = tuple(roles_text.split(",")) if roles_text else ()
        expires_text = found[CERT_EXPIRES_HEADER]
        if not _TIME_RE.match(expires_text):
            raise BadParameter(
                f"stream info: kubeport-cert-expires {_show(expires_text)} is not an RFC 3339 UTC time (...Z)"
            )
        try:
            expires = datetime.fromisoformat(expires_text.replace("Z", "+00:00"))
        except ValueError:
            raise BadParameter(
                f"stream info: kubeport-cert-expires {_show(expires_text)} is not a valid time"
            ) from None
        return cls(
            cluster=found[CLUSTER_HEADER],
            user=found[USER_HEADER],
            roles=roles,
            client_addr=found[CLIENT_ADDR_HEADER],
            cert_expires=expires,
        )
