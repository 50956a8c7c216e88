"""Connection admission: which new connections a server takes, and which idle unauthenticated ones it sheds.

Sans-IO: this module counts and decides; the trio adapter (``registry.server.http``) accepts sockets,
asks :meth:`Admission.admit`, cancels the connections it is told to shed and reports what happens to each
connection (``on_authenticated``, ``on_busy``, ``on_idle``, ``on_close``).

Why: every connection starts unauthenticated (nothing is known before the TLS handshake), and a client
without a certificate can open connections for free. If those simply queued for a fixed number of slots,
a few thousand idle sockets would lock out every agent and admin (issue 7 §5). So:

- A connection is *authenticated* once it presented a verified client certificate. Authenticated
  connections are never shed and never count against the unauthenticated budgets below.
- Unauthenticated connections may hold at most ``max_unauthenticated`` slots in total and at most
  ``max_unauthenticated_per_source`` from one source (an IPv4 address, or an IPv6 /64, see
  :func:`source_of`). Everything on one host shares a source (the all-in-one's agent and kpctl share
  127.0.0.1), which is why the per-source budget covers only connections that have not authenticated.
- When a new connection would exceed a budget, the unauthenticated connection of that budget that has been
  *idle* longest (still handshaking, or between requests; never one whose request is being served) is
  shed to make room. New connections are the last to be shed, so a legitimate client's handshake (a few
  milliseconds) completes and authenticates before its turn comes. Only when no such connection exists is
  the new one refused.

Invariants (after every call):
- ``total <= max_connections``, ``unauthenticated <= max_unauthenticated`` and, per source,
  ``unauthenticated(source) <= max_unauthenticated_per_source``.
- A shed connection leaves the accounting at once (its socket closes a moment later, when the adapter's
  cancellation lands), so a later ``on_close`` for it is a no-op; ``on_close`` is idempotent.
- ``admit`` costs O(1): idle unauthenticated connections are kept in insertion-ordered dicts (oldest idle
  first), globally and per source.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from registry.core.errors import BadParameter

_State = Literal["idle", "busy"]


@dataclass(frozen=True)
class AdmissionLimits:
    """Budgets; validated at construction (a zero or negative budget would refuse everything)."""

    max_connections: int = 2048
    max_unauthenticated: int | None = None  # None: as many as max_connections
    max_unauthenticated_per_source: int | None = None  # None: no per-source budget

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_unauthenticated", "max_unauthenticated_per_source"):
            value = getattr(self, name)
            if value is None and name != "max_connections":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadParameter(f"{name} must be a positive integer (got {value!r})")

    @property
    def unauthenticated_budget(self) -> int:
        if self.max_unauthenticated is None:
            return self.max_connections
        return min(self.max_unauthenticated, self.max_connections)


@dataclass(frozen=True)
class Decision:
    """What to do with a new connection: ``conn_id`` is None when it is refused (``reason`` says why)."""

    conn_id: int | None
    shed: tuple[int, ...] = ()
    reason: str = ""

    @property
    def admitted(self) -> bool:
        return self.conn_id is not None


@dataclass
class _Conn:
    source: str
    authenticated: bool = False
    state: _State = "idle"


def source_of(host: str) -> str:
    """The budget key of a peer address: the IPv4 address, or the /64 network of an IPv6 address (one
    host usually owns a whole /64, so per-address budgets would not bind). IPv4-mapped IPv6 addresses count
    as their IPv4 address; anything unparsable (a Unix socket path) is its own source."""
    text = host.strip("[]")
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def source_of_client(client: str) -> str:
    """:func:`source_of` for a ``host:port`` client string as the HTTP adapter writes it (``[v6]:port``
    or ``v6:port`` alike); a string without a port is taken as a host."""
    try:
        ipaddress.ip_address(client.strip("[]"))
    except ValueError:
        host, sep, port = client.rpartition(":")
        if sep and port.isdigit() and host:
            return source_of(host)
    return source_of(client)


class Admission:
    """Connection accounting for one listener; see the module docstring."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self._conns: dict[int, _Conn] = {}
        self._next_id = 0
        self._unauthenticated = 0
        self._unauth_by_source: dict[str, int] = {}
        # Idle unauthenticated connections, oldest idle first (dicts keep insertion order).
        self._idle: dict[int, None] = {}
        self._idle_by_source: dict[str, dict[int, None]] = {}
        self._admitted = 0
        self._refused = 0
        self._shed = 0
        self._authenticated_total = 0

    # -- decisions -----------------------------------------------------------------------------------

    def admit(self, source: str) -> Decision:
        """Take a new (unauthenticated) connection from ``source``, shedding one idle one if a budget is full."""
        limits = self.limits
        per_source = limits.max_unauthenticated_per_source
        victim: int | None = None
        if per_source is not None and self._unauth_by_source.get(source, 0) >= per_source:
            victim = _oldest(self._idle_by_source.get(source))
            if victim is None:
                return self._refuse(f"too many unauthenticated connections from {source} (limit {per_source})")
        elif self._unauthenticated >= limits.unauthenticated_budget or len(self._conns) >= limits.max_connections:
            victim = _oldest(self._idle)
            if victim is None:
                return self._refuse(f"no connection slot free (limit {limits.max_connections})")
        shed: tuple[int, ...] = ()
        if victim is not None:
            self._forget(victim)
            self._shed += 1
            shed = (victim,)
        conn_id = self._next_id
        self._next_id += 1
        self._conns[conn_id] = _Conn(source)
        self._unauthenticated += 1
        self._unauth_by_source[source] = self._unauth_by_source.get(source, 0) + 1
        self._mark_idle(conn_id, source)
        self._admitted += 1
        return Decision(conn_id, shed)

    def _refuse(self, reason: str) -> Decision:
        self._refused += 1
        return Decision(None, (), reason)

    # -- what happens to a connection ------------------------------------------------------------------

    def on_authenticated(self, conn_id: int) -> None:
        """The connection presented a verified client certificate: it leaves every unauthenticated budget."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.authenticated:
            return
        self._unmark_idle(conn_id, conn.source)
        self._drop_unauthenticated(conn.source)
        conn.authenticated = True
        self._authenticated_total += 1

    def on_busy(self, conn_id: int) -> None:
        """A request is being served: the connection cannot be shed until it is idle again."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.state == "busy":
            return
        conn.state = "busy"
        if not conn.authenticated:
            self._unmark_idle(conn_id, conn.source)

    def on_idle(self, conn_id: int) -> None:
        """The response is sent; the connection waits for its next request (it is now the newest idle)."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.state == "idle":
            return
        conn.state = "idle"
        if not conn.authenticated:
            self._mark_idle(conn_id, conn.source)

    def on_close(self, conn_id: int) -> None:
        """The connection ended (idempotent; a no-op for a connection that was shed)."""
        if conn_id in self._conns:
            self._forget(conn_id)

    # -- introspection -------------------------------------------------------------------------------

    def is_authenticated(self, conn_id: int) -> bool:
        conn = self._conns.get(conn_id)
        return conn is not None and conn.authenticated

    def statistics(self) -> dict[str, int]:
        return {
            "connections": len(self._conns),
            "unauthenticated": self._unauthenticated,
            "authenticated": len(self._conns) - self._unauthenticated,
            "idle_unauthenticated": len(self._idle),
            "sources": len(self._unauth_by_source),
            "admitted_total": self._admitted,
            "authenticated_total": self._authenticated_total,
            "refused_total": self._refused,
            "shed_total": self._shed,
            "max_connections": self.limits.max_connections,
            "max_unauthenticated": self.limits.unauthenticated_budget,
        }

    # -- internals -----------------------------------------------------------------------------------

    def _forget(self, conn_id: int) -> None:
        conn = self._conns.pop(conn_id)
        if not conn.authenticated:
            self._unmark_idle(conn_id, conn.source)
            self._drop_unauthenticated(conn.source)

    def _drop_unauthenticated(self, source: str) -> None:
        self._unauthenticated -= 1
        left = self._unauth_by_source[source] - 1
        if left:
            self._unauth_by_source[source] = left
        else:
            del self._unauth_by_source[source]

    def _mark_idle(self, conn_id: int, source: str) -> None:
        self._idle[conn_id] = None
        self._idle_by_source.setdefault(source, {})[conn_id] = None

    def _unmark_idle(self, conn_id: int, source: str) -> None:
        self._idle.pop(conn_id, None)
        by_source = self._idle_by_source.get(source)
        if by_source is not None:
            by_source.pop(conn_id, None)
            if not by_source:
                del self._idle_by_source[source]


def _oldest(idle: dict[int, None] | None) -> int | None:
    if not idle:
        return None
    return next(iter(idle))
