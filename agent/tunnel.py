"""The agent's side of the reverse tunnel: dial the front door, serve HTTP/2 on the connection, reconnect.

The agent dials OUT (it may sit behind NAT) and runs the HTTP/2 *server* on the connection it dialed
(:mod:`registry.host.h2tunnel`); the front door opens one extended-CONNECT stream per kubectl connection.

Invariants:

* Stream identity (:class:`StreamInfo`) is read from the CONNECT headers, and trusted only because the
  connection is one this agent dialed itself to a front door the registry CA certified (``dial`` checks
  that); no listener of the agent accepts these headers.
* A malformed identity refuses that stream (400 with the reason), an expired certificate refuses it (403);
  the connection stays up. ``handle`` never sees an unparsed or expired identity, and is cancelled when
  the user's certificate expires mid-stream (Teleport disconnects at expiry too).
* One task per stream; a handler's exception is logged and ends only its stream.
* The connection is redialed forever with jittered exponential backoff (``Backoff``: 1 s doubling to 30 s,
  each delay drawn from its upper half); a connection that got as far as the peer's SETTINGS resets it.
  Each state change (up, down with the reason) is logged once, repeated failures only at debug level.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from registry.core.errors import BadParameter, ConnectionProblem, KubeportError
from registry.core.tunnel_info import StreamInfo
from registry.host.h2tunnel import H2Tunnel, TunnelConfig, TunnelStream
from registry.host.metrics import AGENT_SIDE, TUNNEL_STREAMS, TUNNELS

log = logging.getLogger(__name__)
_TUNNELS = TUNNELS.labels(AGENT_SIDE)  # tunnels that are up (the peer's SETTINGS arrived)
_STREAMS = TUNNEL_STREAMS.labels(AGENT_SIDE)  # streams accepted (a refused stream is not counted)

Dial = Callable[[], Awaitable[trio.abc.Stream]]
Handle = Callable[[trio.abc.HalfCloseableStream, StreamInfo], Awaitable[None]]

_DIAL_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, KubeportError)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``initial`` doubling (``factor``) up to ``maximum``; each delay is drawn uniformly
    from ``[d * (1 - jitter), d]`` so agents that lost the same front door do not return in lockstep."""

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1 or not 0 <= self.jitter < 1:
            raise BadParameter(f"tunnel backoff needs 0 < initial <= maximum, factor >= 1, 0 <= jitter < 1: {self}")

    def delays(self, rng: random.Random) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * rng.random())
            delay = min(delay * self.factor, self.maximum)


class TunnelStatus:
    """What :func:`serve_tunnel` hands to ``task_status.started``: the tunnel's state, for health checks,
    statistics and tests."""

    def __init__(self) -> None:
        self.connected = False
        self.last_error: str | None = None
        self.current: H2Tunnel | None = None
        self._connects = 0
        self._failures = 0
        self._changed = trio.lowlevel.ParkingLot()

    async def wait_connected(self) -> None:
        """Wait until a connection is up (the front door's SETTINGS arrived)."""
        while not self.connected:
            await self._changed.park()

    async def wait_disconnected(self) -> None:
        while self.connected:
            await self._changed.park()

    def statistics(self) -> dict[str, int]:
        current = self.current.statistics() if self.current is not None and self.connected else {}
        return {
            "connected": int(self.connected),
            "connects_total": self._connects,
            "failures_total": self._failures,
            "open_streams": current.get("open_streams", 0),
            "streams_opened_total": current.get("streams_opened_total", 0),
        }

    def _up(self, name: str) -> None:
        if not self.connected:
            _TUNNELS.inc()
        self.connected = True
        self._connects += 1
        log.info("tunnel to %s is up", name)
        self.last_error = None
        self._changed.unpark_all()

    def _down(self, name: str, reason: str) -> None:
        self._failures += 1
        was_up, first = self.connected, self._connects == 0 and self._failures == 1
        if was_up or first:
            log.warning("tunnel to %s is down: %s (reconnecting with backoff)", name, reason)
        else:
            log.debug("tunnel to %s: still down: %s", name, reason)
        if was_up:
            _TUNNELS.dec()
        self.connected = False
        self.last_error = reason
        self._changed.unpark_all()


async def serve_tunnel(
    dial: Dial,
    handle: Handle,
    *,
    name: str = "the front door",
    config: TunnelConfig | None = None,
    backoff: Backoff | None = None,
    dial_timeout: float = 10.0,
    handle_ends_at_expiry: bool = False,
    rng: random.Random | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
    task_status: trio.TaskStatus[TunnelStatus] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep one tunnel to ``name`` up until cancelled. ``dial()`` returns a connected byte stream (TLS with
    the agent certificate, the front door's certificate and ALPN checked); ``handle(stream, info)`` serves
    one stream (the agent's forwarder). Starts at once (the first dial runs in the background) and hands a
    :class:`TunnelStatus` to ``task_status.started``. A stream ends at its user's certificate expiry: by a
    cancel scope here, unless ``handle_ends_at_expiry`` says ``handle`` does that itself (the forwarder:
    a scope less per open stream, which an idle watch holds for hours)."""
    status = TunnelStatus()
    rng = rng or random.Random()  # noqa: S311  (jitter, not secrecy)
    delays = (backoff or Backoff()).delays(rng)

    async def on_stream(stream: TunnelStream) -> None:
        try:
            info = StreamInfo.from_headers(stream.headers)
        except BadParameter as exc:
            log.warning("tunnel to %s: refused a stream: %s", name, exc.message)
            await stream.refuse(400, exc.message)
            return
        stream.headers = []  # read: not kept for the stream's life (an idle watch's is hours)
        remaining = (info.cert_expires - now()).total_seconds()
        if remaining <= 0:
            await stream.refuse(403, f"the certificate of user {info.user!r} has expired")
            return
        await stream.accept()
        _STREAMS.inc()
        if handle_ends_at_expiry:
            await handle(stream, info)
            return
        with trio.move_on_after(remaining):
            await handle(stream, info)

    task_status.started(status)
    try:
        while True:
            reason = await _one_connection(
                dial, on_stream=on_stream, status=status, name=name, config=config, dial_timeout=dial_timeout
            )
            if status.connected:
                delays = (backoff or Backoff()).delays(rng)  # it worked for a while: start over from the shortest
            status._down(name, reason)
            status.current = None
            await trio.sleep(next(delays))
    finally:
        if status.connected:  # cancelled while up: the gauge must not keep a tunnel that is gone
            _TUNNELS.dec()


async def _one_connection(
    dial: Dial,
    *,
    on_stream: Callable[[TunnelStream], Awaitable[None]],
    status: TunnelStatus,
    name: str,
    config: TunnelConfig | None,
    dial_timeout: float,
) -> str:
    """Dial and serve one connection; returns why it ended."""
    try:
        with trio.fail_after(dial_timeout):
            transport = await dial()
    except trio.TooSlowError:
        return f"dialing took more than {dial_timeout:g} s"
    except _DIAL_ERRORS as exc:
        message = exc.message if isinstance(exc, KubeportError) else str(exc) or type(exc).__name__
        return f"cannot dial: {message}"
    tunnel = H2Tunnel(transport, side="server", config=config)
    status.current = tunnel

    async def mark_up() -> None:
        await tunnel.wait_ready()
        if not tunnel.closed:
            status._up(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mark_up)
        try:
            await tunnel.run(on_stream)
        except ConnectionProblem as exc:
            reason = exc.message
        else:
            reason = "the front door closed the tunnel (GOAWAY)"
        nursery.cancel_scope.cancel()
    return reason
