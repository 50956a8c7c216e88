"""The front door as the registry process runs it: one tunnel hub, the TLS context from the cluster CA, the
listener, and the address kubeconfigs and agents are told (``Registry.kube_public_addr``, in ``/v1/ping``).

Each front door announces itself (``Registry.front_doors``, a ``frontdoor`` record with a TTL in the shared
store) while it runs and withdraws on a clean shutdown, so agents keep a tunnel to every live one.

``run_frontdoor`` has the shape of a registry ``Companion`` (``registry.server.serve``): the composition root
binds ``listen``/``public_addr`` and hands it to ``serve_registry``, which starts it once the API listens.

The advertised address: ``--kube-public-addr`` when given; else the address it listens on; a wildcard listen
address (0.0.0.0, ::) is advertised as this host's name, with a warning, since kubectl and agents elsewhere
need a name they can reach and the certificate must carry it.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime

import trio

from registry.core.identity import CertAuthority
from registry.core.netaddr import format_hostport, parse_hostport
from registry.frontdoor.serve import DEFAULT_KUBE_PORT, FrontDoorInfo, frontdoor_server_context, serve_frontdoor
from registry.frontdoor.tunnels import TunnelHub
from registry.server.service import Registry

log = logging.getLogger(__name__)

DEFAULT_KUBE_LISTEN = f"127.0.0.1:{DEFAULT_KUBE_PORT}"
_WILDCARDS = ("0.0.0.0", "::", "")


def advertised_kube_address(bound_host: str, bound_port: int, public_addr: str | None) -> str:
    """What kubeconfigs name: the public address, else the bound one (a wildcard becomes this host's name)."""
    if public_addr:
        return public_addr
    if bound_host in _WILDCARDS:
        name = socket.getfqdn() or socket.gethostname()
        log.warning(
            "the front door listens on all addresses; kubeconfigs will name %s:%d (set --kube-public-addr to "
            "the name kubectl and agents should use)",
            name,
            bound_port,
        )
        return format_hostport(name, bound_port)
    return format_hostport(bound_host, bound_port)


async def run_frontdoor(
    registry: Registry,
    ca: CertAuthority,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    *,
    listen: str = DEFAULT_KUBE_LISTEN,
    public_addr: str | None = None,
    tunnel_addr: str | None = None,
) -> None:
    """Serve the front door for ``registry`` until cancelled; started once it listens and the registry
    advertises it. ``tunnel_addr`` (``--kube-tunnel-addr``) is the address announced for agents' tunnels
    when it differs from the one kubeconfigs name (several front doors behind one load balancer)."""
    host, port = parse_hostport(listen, default_port=DEFAULT_KUBE_PORT, what="--kube-listen")
    public_hosts = [public_addr] if public_addr else []
    if not public_addr and host in _WILDCARDS:  # the certificate must name what kubeconfigs will name
        public_hosts = [format_hostport(socket.getfqdn() or socket.gethostname(), port or DEFAULT_KUBE_PORT)]
    context = frontdoor_server_context(ca, listen_host=host, public_addrs=public_hosts, now=datetime.now(tz=UTC))
    hub = TunnelHub()
    async with trio.open_nursery() as nursery:
        info: FrontDoorInfo = await nursery.start(
            lambda task_status: serve_frontdoor(
                registry, hub, host=host, port=port, ssl_context=context, task_status=task_status
            )
        )
        registry.kube_public_addr = advertised_kube_address(info.host, info.port, public_addr)
        log.info("front door listening on %s (kubeconfigs name %s)", info.address, registry.kube_public_addr)
        # Agents learn every live front door from the shared store (registry.server.frontdoors).
        door_id = await registry.front_doors.announce(tunnel_addr or registry.kube_public_addr)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await registry.front_doors.withdraw(door_id)
