"""The agent's side of the access path, wired: find the front doors, keep a tunnel to each, serve each stream.

What runs (one task tree, started by ``Agent.serve`` once the agent has its identity and its supervisor):

* the front doors come from the registry: ``/v1/ping`` lists every live front door of the registries that
  share its store (``kube_front_doors``; an older registry only names its own, ``kube_public_addr``), so
  agents need no new configuration;
* :class:`TunnelPool` keeps one tunnel per listed front door (:func:`agent.tunnel.serve_tunnel`: one HTTP/2
  connection, dialed with the agent's *current* certificate, the front door's certificate verified against
  the cluster CA and its fixed name, the tunnel ALPN insisted on). The list is refreshed by asking again
  every ``refresh_interval`` seconds (a period, not a watch: ping goes to whichever registry answers, needs
  no extra route or permission, and a front door's record changes rarely). New front doors get a tunnel;
  tunnels to front doors no longer listed are cancelled once they are down (a killed registry's record
  expires within its TTL; a front door still connected but unlisted has only lost the store, and cutting
  its kubectl streams would help no one). A failed or empty answer changes nothing: with nothing better to
  go to, the existing tunnels keep redialing with backoff. A registry without any front door is asked
  again every ``poll_interval`` s.
* the front door routes kubectl only to agents with a tunnel to itself, so kubectl works through any
  live front door as long as the agent holds its tunnel;
* every stream goes to :func:`agent.forward.server.handle_stream` with one :class:`ForwardContext`: the
  served-cluster table for credentials and labels, :class:`RegistryAccessSource` for the user's current
  roles, and an :class:`AuditBatcher` that ships ``kube.request`` / ``session.*`` events to the registry in
  batches (``POST /v1/events``) without ever blocking a request. All tunnels share them.

Invariant: nothing here decides access; it only connects the pieces that do (the forwarder on every
request, the front door per connection).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from agent.forward.audit import AuditBatcher, AuditEvent
from agent.forward.context import ForwardContext, RegistryAccessSource, ServedTable, served_clusters
from agent.forward.server import handle_stream
from agent.tunnel import Dial, Handle, TunnelStatus, serve_tunnel
from registry.client import RegistryClient
from registry.core.errors import BadParameter, ConnectionProblem, KubeportError
from registry.core.identity import REGISTRY_SERVER_NAME
from registry.core.identity_file import IdentityFile
from registry.core.netaddr import parse_hostport
from registry.core.tunnel_info import TUNNEL_ALPN, StreamInfo
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import client_context

log = logging.getLogger(__name__)

POLL_INTERVAL = 30.0  # seconds between asking a registry without a front door again
# Seconds between asking for the live front doors while tunnels are up. A new front door gets its tunnels
# within this; a killed one is dropped within this plus the front-door record's TTL (30 s).
REFRESH_INTERVAL = 10.0
MAX_FRONT_DOORS = 64  # tunnels kept at most (the registry lists no more)


class _CurrentClient:
    """Reads through whichever registry client is current (the identity renews and replaces it)."""

    def __init__(self, current: Callable[[], RegistryClient]) -> None:
        self._current = current

    async def get(self, kind: str, name: str, *, with_secrets: bool = False) -> Any:
        return await self._current().get(kind, name, with_secrets=with_secrets)


def front_doors_from_ping(ping: Mapping[str, Any]) -> tuple[str, ...]:
    """The front doors a ping names (pure): ``kube_front_doors`` (every live front door of the registries
    sharing the store), else, from a registry that does not list them, its ``kube_public_addr``. Entries
    that are not a dialable ``HOST:PORT`` are skipped; the result is sorted, without duplicates, and at most
    :data:`MAX_FRONT_DOORS` long."""
    listed = ping.get("kube_front_doors")
    if listed is None:
        single = ping.get("kube_public_addr")
        listed = [single] if single else []
    if not isinstance(listed, list):
        return ()
    found: set[str] = set()
    for item in listed[: 4 * MAX_FRONT_DOORS]:
        if not isinstance(item, str) or not item or len(item) > 262:
            continue
        try:
            parse_hostport(item, default_port=0, what="a front door address", default_host=None, min_port=1)
        except BadParameter:
            continue
        found.add(item)
    return tuple(sorted(found)[:MAX_FRONT_DOORS])


async def list_front_doors(client: Callable[[], RegistryClient]) -> tuple[str, ...] | None:
    """The live front doors, as the registry lists them now; None when no registry could be asked."""
    try:
        return front_doors_from_ping(await client().ping())
    except KubeportError as err:
        log.debug("cannot ask the registry for its front doors: %s", err)
        return None


async def front_door_address(client: Callable[[], RegistryClient], *, poll_interval: float = POLL_INTERVAL) -> str:
    """The first front door the registry lists; waits (asking every ``poll_interval`` s) for one."""
    said = False
    while True:
        doors = await list_front_doors(client)
        if doors:
            return doors[0]
        if not said:
            log.info("the registry runs no Kubernetes front door yet; asking again every %.0f s", poll_interval)
            said = True
        await trio.sleep(poll_interval)


def tunnel_dialer(
    address: Callable[[], Awaitable[str]], identity: Callable[[], IdentityFile]
) -> Callable[[], Awaitable[trio.abc.Stream]]:
    """``dial()`` for :func:`serve_tunnel`: TLS with the current agent certificate to the address the
    registry advertises at that moment (a registry restarted with another ``--kube-public-addr`` is followed
    at the next reconnect)."""

    async def dial() -> trio.abc.Stream:
        where = await address()
        host, port = parse_hostport(where, default_port=3026, what="the front door address")
        current = identity()
        context = client_context(current.ca_pems, current.cert_pem, current.key_pem)
        context.set_alpn_protocols([TUNNEL_ALPN])
        tcp = await trio.open_tcp_stream(host, port)
        try:  # OpenSSL on the socket itself: about half the CPU of trio's SSLStream (registry/host/socket_tls.py)
            tls = SocketTLSStream.wrap(tcp, context, server_hostname=REGISTRY_SERVER_NAME)
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        if tls.selected_alpn_protocol() != TUNNEL_ALPN:
            await trio.aclose_forcefully(tls)
            raise ConnectionProblem(f"{where} is not a kubeport front door (it did not accept {TUNNEL_ALPN})")
        return tls

    return dial


class TunnelPool:
    """One tunnel per live front door (module docstring): :meth:`update` starts tunnels to new addresses
    and cancels those to addresses no longer listed, once they are down (a front door that is still
    connected keeps its tunnel and its kubectl streams until the connection ends)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        dial_to: Callable[[str], Dial],
        handle: Handle,
        *,
        handle_ends_at_expiry: bool = False,  # see serve_tunnel
    ) -> None:
        self._nursery = nursery
        self._dial_to = dial_to
        self._handle = handle
        self._handle_ends_at_expiry = handle_ends_at_expiry
        self._tunnels: dict[str, tuple[trio.CancelScope, TunnelStatus]] = {}
        self._changed = trio.lowlevel.ParkingLot()
        self._started = 0
        self._dropped = 0

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(sorted(self._tunnels))

    def connected(self) -> tuple[str, ...]:
        """The front doors whose tunnel is up now."""
        return tuple(sorted(a for a, (_, status) in self._tunnels.items() if status.connected))

    def statistics(self) -> dict[str, Any]:
        return {
            "tunnels": {address: status.statistics() for address, (_, status) in sorted(self._tunnels.items())},
            "started_total": self._started,
            "dropped_total": self._dropped,
        }

    async def wait_changed(self) -> None:
        """Wait for the next :meth:`update` that started or dropped a tunnel."""
        await self._changed.park()

    async def update(self, wanted: tuple[str, ...]) -> None:
        """Make the tunnels match ``wanted``: start the missing ones, drop the others."""
        changed = False
        for address in sorted(set(self._tunnels) - set(wanted)):
            scope, current = self._tunnels[address]
            if current.connected:  # still up: its registry only lost the store; dropping it would help no one
                continue
            del self._tunnels[address]
            scope.cancel()
            self._dropped += 1
            changed = True
            log.info("the front door at %s is gone: dropping its tunnel", address)
        for address in wanted:
            if address not in self._tunnels:
                scope = trio.CancelScope()
                status: TunnelStatus = await self._nursery.start(self._run, address, scope)
                self._tunnels[address] = (scope, status)
                self._started += 1
                changed = True
                log.info("keeping a tunnel to the front door at %s", address)
        if changed:
            self._changed.unpark_all()

    async def _run(self, address: str, scope: trio.CancelScope, task_status: trio.TaskStatus[TunnelStatus]) -> None:
        with scope:
            name = f"the front door at {address}"
            await serve_tunnel(
                self._dial_to(address),
                self._handle,
                name=name,
                handle_ends_at_expiry=self._handle_ends_at_expiry,
                task_status=task_status,
            )


async def serve_access(
    *,
    host_id: str,
    table: ServedTable,
    client: Callable[[], RegistryClient],
    identity: Callable[[], IdentityFile],
    poll_interval: float = POLL_INTERVAL,
    refresh_interval: float | None = None,
    task_status: trio.TaskStatus[TunnelPool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve kubectl traffic for the clusters in ``table`` until cancelled (module docstring). Hands the
    :class:`TunnelPool` to ``task_status.started``. ``refresh_interval`` defaults to :data:`REFRESH_INTERVAL`."""
    refresh = REFRESH_INTERVAL if refresh_interval is None else refresh_interval

    async def ship(events: list[AuditEvent]) -> None:
        await client().report_events(events)

    batcher = AuditBatcher(ship)
    lookup, exec_credentials = served_clusters(table)
    context = ForwardContext(
        user_access=RegistryAccessSource(_CurrentClient(client)),
        cluster=lookup,
        audit=batcher,
        host=host_id,
        exec_credential=exec_credentials,
    )

    async def handle(stream: trio.abc.HalfCloseableStream, info: StreamInfo) -> None:
        await handle_stream(stream, info, ctx=context)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.serve)
            # handle_stream ends each stream at its certificate's expiry itself (its one scope's deadline)
            pool = TunnelPool(
                nursery, lambda address: tunnel_dialer(_fixed(address), identity), handle, handle_ends_at_expiry=True
            )
            task_status.started(pool)
            said = False
            while True:
                doors = await list_front_doors(client)
                if doors:  # an empty or failed answer keeps the tunnels there are (module docstring)
                    await pool.update(doors)
                    said = False
                elif not pool.addresses and not said:
                    log.info("the registry runs no Kubernetes front door yet; asking again every %.0f s", poll_interval)
                    said = True
                await trio.sleep(refresh if pool.addresses else poll_interval)
    finally:
        with trio.CancelScope(shield=True):  # pooled upstream connections end with the agent
            await context.pool.aclose()
            if context.h2 is not None:
                await context.h2.aclose()


def _fixed(address: str) -> Callable[[], Awaitable[str]]:
    async def where() -> str:
        await trio.lowlevel.checkpoint()
        return address

    return where
