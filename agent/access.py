"""The agent's side of the access path, wired: find the front door, keep a tunnel to it, serve each stream.

What runs (one task tree, started by ``Agent.serve`` once the agent has its identity and its supervisor):

* the front door's address comes from the registry (``/v1/ping`` ``kube_public_addr``), so agents need no
  new configuration; a registry without a front door is asked again every ``poll_interval`` seconds;
* :func:`agent.tunnel.serve_tunnel` keeps one HTTP/2 connection to it, dialed with the agent's *current*
  certificate (renewals are picked up at the next dial), verifying the front door's certificate against
  the cluster CA and its fixed name, and insisting on the tunnel ALPN;
* every stream goes to :func:`agent.forward.server.handle_stream` with one :class:`ForwardContext`: the
  served-cluster table for credentials and labels, :class:`RegistryAccessSource` for the user's current
  roles, and an :class:`AuditBatcher` that ships ``kube.request`` / ``session.*`` events to the registry in
  batches (``POST /v1/events``) without ever blocking a request.

Invariant: nothing here decides access; it only connects the pieces that do (the forwarder on every
request, the front door per connection).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from agent.forward.audit import AuditBatcher, AuditEvent
from agent.forward.context import ForwardContext, RegistryAccessSource, ServedTable, served_clusters
from agent.forward.server import handle_stream
from agent.tunnel import serve_tunnel
from registry.client import RegistryClient
from registry.core.errors import ConnectionProblem, KubeportError
from registry.core.identity import REGISTRY_SERVER_NAME
from registry.core.identity_file import IdentityFile
from registry.core.netaddr import parse_hostport
from registry.core.tunnel_info import TUNNEL_ALPN, StreamInfo
from registry.host.tls import client_context

log = logging.getLogger(__name__)

POLL_INTERVAL = 30.0  # seconds between asking a registry without a front door again


class _CurrentClient:
    """Reads through whichever registry client is current (the identity renews and replaces it)."""

    def __init__(self, current: Callable[[], RegistryClient]) -> None:
        self._current = current

    async def get(self, kind: str, name: str, *, with_secrets: bool = False) -> Any:
        return await self._current().get(kind, name, with_secrets=with_secrets)


async def front_door_address(client: Callable[[], RegistryClient], *, poll_interval: float = POLL_INTERVAL) -> str:
    """The front door address the registry advertises; waits (asking every ``poll_interval`` s) for one."""
    said = False
    while True:
        try:
            address = (await client().ping()).get("kube_public_addr") or ""
        except KubeportError as err:
            address = ""
            log.debug("cannot ask the registry for its front door: %s", err)
        if address:
            return address
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
        tls = trio.SSLStream(tcp, context, server_hostname=REGISTRY_SERVER_NAME)
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


async def serve_access(
    *,
    host_id: str,
    table: ServedTable,
    client: Callable[[], RegistryClient],
    identity: Callable[[], IdentityFile],
    poll_interval: float = POLL_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve kubectl traffic for the clusters in ``table`` until cancelled (module docstring)."""
    task_status.started()
    address = await front_door_address(client, poll_interval=poll_interval)

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
            log.info("serving kubectl traffic through the front door at %s", address)
            dial = tunnel_dialer(lambda: front_door_address(client, poll_interval=poll_interval), identity)
            await serve_tunnel(dial, handle, name=f"the front door at {address}")
    finally:
        with trio.CancelScope(shield=True):  # pooled upstream connections end with the agent
            await context.pool.aclose()
