"""The front door's end of the reverse tunnels: one HTTP/2 client per agent connection, keyed by host id.

Agents dial the front door (ALPN ``kubeport-tunnel/1``, agent certificate); ``serve`` authenticates the
connection and hands it to :meth:`TunnelHub.serve_agent`, which runs the h2 client
(:mod:`registry.host.h2tunnel`) until the connection ends. The front door then opens one stream per kubectl
connection with :meth:`TunnelHub.open_stream`.

Invariants:

* At most one tunnel per host id is used for new streams: a host that reconnects replaces its old connection,
  which drains (its streams finish, no new ones) and then closes.
* :meth:`live_hosts` names only hosts whose tunnel is ready (the agent's SETTINGS arrived) and not draining.
* A tunnel's failure (garbage from the agent, a dead connection) ends that tunnel only; ``serve_agent``
  logs it and returns, it never raises it into the front door's task tree.
* ``kubeport_tunnel_connections{side="frontdoor"}`` counts the agent connections being served (from
  authentication to their end, draining ones included); ``kubeport_tunnel_streams_total`` the streams an
  agent accepted.
"""

from __future__ import annotations

import logging

import trio

from registry.core.errors import ConnectionProblem
from registry.core.tunnel_info import StreamInfo
from registry.host.h2tunnel import H2Tunnel, TunnelConfig, TunnelStream
from registry.host.metrics import FRONTDOOR_SIDE, TUNNEL_STREAMS, TUNNELS

log = logging.getLogger(__name__)
_STREAMS = TUNNEL_STREAMS.labels(FRONTDOOR_SIDE)  # bound once: open_stream is on every kubectl connection


class TunnelHub:
    """Every agent tunnel of this front door."""

    def __init__(self, *, config: TunnelConfig | None = None) -> None:
        self._config = config or TunnelConfig()
        self._tunnels: dict[str, H2Tunnel] = {}
        self._draining = False
        self._changed = trio.lowlevel.ParkingLot()
        self._stats = {
            "connections_total": 0,
            "replaced_total": 0,
            "failed_total": 0,
            "streams_opened_total": 0,
            "streams_failed_total": 0,
        }

    async def serve_agent(self, stream: trio.abc.Stream, host_id: str) -> None:
        """Run the tunnel of agent ``host_id`` over ``stream`` (authenticated by the caller) until it ends."""
        tunnel = H2Tunnel(stream, side="client", config=self._config)
        if self._draining:
            tunnel.start_drain()
        old = self._tunnels.get(host_id)
        self._tunnels[host_id] = tunnel
        self._stats["connections_total"] += 1
        if old is not None:
            self._stats["replaced_total"] += 1
            log.info("agent %s connected again: its previous tunnel drains", host_id)
            old.start_drain()
        self._changed.unpark_all()
        TUNNELS.labels(FRONTDOOR_SIDE).inc()
        try:
            await tunnel.run()
        except ConnectionProblem as exc:
            self._stats["failed_total"] += 1
            log.info("tunnel of agent %s ended: %s", host_id, exc.message)
        finally:
            TUNNELS.labels(FRONTDOOR_SIDE).dec()
            if self._tunnels.get(host_id) is tunnel:
                del self._tunnels[host_id]
            self._changed.unpark_all()

    def live_hosts(self) -> frozenset[str]:
        return frozenset(host for host, tunnel in self._tunnels.items() if tunnel.live)

    async def wait_live(self, host_id: str) -> None:
        """Wait until ``host_id`` has a live tunnel (tests, and callers that just saw an agent connect)."""
        while True:
            tunnel = self._tunnels.get(host_id)
            if tunnel is not None:
                await tunnel.wait_ready()
                if tunnel.live:
                    return
            await self._changed.park()

    async def open_stream(self, host_id: str, info: StreamInfo) -> TunnelStream:
        """A new stream to agent ``host_id`` carrying ``info``, accepted by the agent. Raises a kubeport
        error (ConnectionProblem, LimitExceeded) when the agent has no live tunnel here or refuses the stream;
        time limits are the caller's."""
        tunnel = self._tunnels.get(host_id)
        if tunnel is None or tunnel.closed:
            raise ConnectionProblem(f"agent {host_id!r} has no live tunnel to this front door")
        try:
            stream = await tunnel.open_stream(info.to_headers(), authority=info.cluster)
        except ConnectionProblem as exc:
            self._stats["streams_failed_total"] += 1
            raise ConnectionProblem(f"agent {host_id!r}: {exc.message}") from None
        except BaseException:
            self._stats["streams_failed_total"] += 1
            raise
        self._stats["streams_opened_total"] += 1
        _STREAMS.inc()
        return stream

    async def drain(self) -> None:
        """Graceful stop: every tunnel refuses new streams, lets its streams finish, and closes."""
        self._draining = True
        for tunnel in list(self._tunnels.values()):
            tunnel.start_drain()
        while self._tunnels:
            await self._changed.park()

    def statistics(self) -> dict[str, int]:
        tunnels = [tunnel.statistics() for tunnel in self._tunnels.values()]
        return {
            **self._stats,
            "tunnels": len(tunnels),
            "live": sum(stats["live"] for stats in tunnels),
            "open_streams": sum(stats["open_streams"] for stats in tunnels),
            "buffered": sum(stats["buffered"] for stats in tunnels),
        }
