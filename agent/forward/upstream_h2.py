"""The trio adapter of the agent's HTTP/2 client: watches share one TLS connection per API server.

:class:`H2Pool` holds, per endpoint, the HTTP/2 connections it opened (:class:`H2Upstream`) and hands out
request streams (:class:`H2Exchange`) on one with room (:meth:`H2ClientCore.can_open`), opening another
when all are full. An endpoint whose API server does not choose ``h2`` by ALPN is remembered as such
(for ``NEGATIVE_TTL`` seconds) and :meth:`H2Pool.open` hands the caller the TLS connection it made as an
HTTP/1.1 :class:`~agent.forward.upstream.UpstreamConnection` (so asking costs no extra handshake); until
then :meth:`H2Pool.usable` says False and the caller uses its HTTP/1.1 pool.

Each connection has one reader task (a trio system task: the pool is shared by all tunnel streams and
has no nursery of its own) that feeds the core and wakes the streams with news; writes go through one
lock, so frames from several tasks never interleave. A connection without streams for ``idle_ttl``
seconds closes itself.

Invariants: every failure is an :class:`~agent.forward.upstream.UpstreamError` (502 naming the cluster),
never a traceback; a broken or GOAWAY'd connection takes no new stream (the next request opens a fresh
one) and its open streams end with an error; an :class:`H2Exchange` that is closed before its answer
ended resets its stream; DATA is acknowledged only through :meth:`H2Exchange.consumed`, i.e. once written
onward (see :mod:`agent.forward.h2_core`).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Final

import trio

from agent.forward.dial import open_api_stream
from agent.forward.h2_core import H2ClientCore, H2Stream, H2StreamError
from agent.forward.upstream import Endpoint, UpstreamConnection, UpstreamError, _describe
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import wait_for_input
from registry.host.waiter import park, unpark

log = logging.getLogger(__name__)

NEGATIVE_TTL: Final = 300.0  # an API server that did not choose h2 is asked again after this long
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
_READ: Final = 64 * 1024


class H2Upstream:
    """One HTTP/2 connection to an API server (its reader runs as a system task)."""

    def __init__(self, endpoint: Endpoint, stream: trio.abc.Stream, core: H2ClientCore, idle_ttl: float) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.core = core
        self.idle_ttl = idle_ttl
        self.send_lock = trio.StrictFIFOLock()
        self.waiting: dict[int, trio.lowlevel.Task] = {}  # stream id -> the task woken on news for it
        self.scope = trio.CancelScope()
        self.idle_scope: trio.CancelScope | None = None
        self.closed = False
        self.settled = trio.Event()  # the server's SETTINGS arrived (or the connection ended)

    async def flush(self) -> None:
        if not self.core.has_output():
            return  # no lock, no checkpoint: a watch event's acknowledgement mostly sends nothing
        async with self.send_lock:
            data = self.core.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except _STREAM_ERRORS as exc:
                    self._lost(f"the connection broke: {type(exc).__name__}")
                    raise self.endpoint.unreachable("the HTTP/2 connection broke") from None

    def wake(self, streams: set[H2Stream]) -> None:
        for stream in streams:
            unpark(self.waiting, stream.stream_id)

    def _lost(self, why: str) -> None:
        self.wake(self.core.connection_lost(why))
        self.settled.set()
        self.scope.cancel()

    def stream_done(self) -> None:
        """A stream left; with none open the idle timer runs."""
        if not self.core.streams and self.idle_scope is not None:
            self.idle_scope.deadline = trio.current_time() + self.idle_ttl

    async def run(self) -> None:
        try:
            with self.scope:
                await self.flush()  # the preface and our SETTINGS
                while True:
                    with trio.CancelScope() as idle:
                        self.idle_scope = idle
                        if not self.core.streams:
                            idle.deadline = trio.current_time() + self.idle_ttl
                        await wait_for_input(self.stream)  # hours of idle watches wait here cheaply
                        data = await self.stream.receive_some(_READ)
                    self.idle_scope = None
                    if idle.cancelled_caught:
                        if not self.core.streams:
                            break
                        continue
                    if not data:
                        self._lost("the API server closed the HTTP/2 connection")
                        break
                    touched = self.core.receive(bytes(data))
                    if self.core.settings_received:
                        self.settled.set()
                    await self.flush()  # SETTINGS/PING acks, window updates, a GOAWAY
                    self.wake(touched)
                    if self.core.broken is not None:
                        self._lost(self.core.broken)
                        break
        except UpstreamError:
            pass
        except _STREAM_ERRORS as exc:
            self._lost(f"the connection broke: {type(exc).__name__}")
        except Exception:  # never let one connection take the agent down (a system task's error would)
            log.exception("the HTTP/2 connection to %s failed", self.endpoint.server)
            self._lost("the HTTP/2 connection failed")
        finally:
            self.closed = True
            self._lost(self.core.broken or "the HTTP/2 connection closed")
            with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
                await self.stream.aclose()

    async def aclose(self) -> None:
        self.scope.cancel()


class H2Exchange:
    """One request stream on an :class:`H2Upstream`: its answer head, its DATA, and its end."""

    __slots__ = ("done", "endpoint", "stream", "upstream")  # one per open watch

    def __init__(self, upstream: H2Upstream, stream: H2Stream) -> None:
        self.upstream = upstream
        self.stream = stream
        self.endpoint = upstream.endpoint
        self.done = False

    async def _wait(self) -> None:
        """Until the stream has news (any news: the caller looks at the stream again)."""
        await park(self.upstream.waiting, self.stream.stream_id)  # no Event per stream: see waiter.py

    def _failed(self) -> UpstreamError:
        return self.endpoint.unreachable(self.stream.error or "the HTTP/2 stream failed")

    async def head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        while self.stream.status is None:
            if self.stream.error is not None:
                raise self._failed()
            await self._wait()
        # Handed over, not kept on the stream: a watch's stream lives for hours, its head is needed once.
        headers, self.stream.headers = self.stream.headers, []
        return self.stream.status, headers

    def more_arrived(self) -> bool:
        return bool(self.stream.data)

    async def next_data(self) -> list[bytes] | None:
        """DATA pieces received (at least one), or None at the answer's clean end; UpstreamError when the
        stream ended early (reset, GOAWAY, the connection)."""
        while True:
            if self.stream.data:
                return self.upstream.core.take(self.stream)
            if self.stream.error is not None:
                raise self._failed()
            if self.stream.ended:
                return None
            await self._wait()

    async def consumed(self, size: int) -> None:
        """``size`` bytes went onward: the server may send as much more (a WINDOW_UPDATE when due)."""
        self.upstream.core.consumed(self.stream, size)
        with contextlib.suppress(UpstreamError):
            await self.upstream.flush()

    async def aclose(self) -> None:
        """Done with the stream: reset it if its answer did not end (kubectl went away)."""
        if self.done:
            return
        self.done = True
        core = self.upstream.core
        self.upstream.waiting.pop(self.stream.stream_id, None)
        if self.stream.ended and self.stream.error is None and not self.stream.data:
            core.finish(self.stream)
        else:
            core.cancel(self.stream)
            with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(UpstreamError):
                await self.upstream.flush()
        self.upstream.stream_done()


@dataclass(frozen=True)
class H2Statistics:
    connects: int
    connections: int
    streams: int
    fallbacks: int


class H2Pool:
    """HTTP/2 connections per endpoint (module docstring)."""

    def __init__(
        self, *, connect_timeout: float = 10.0, idle_ttl: float = 30.0, max_streams: int | None = None
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_ttl = idle_ttl
        self.max_streams = max_streams
        self._conns: dict[tuple[Any, ...], list[H2Upstream]] = {}
        self._no_h2: dict[tuple[Any, ...], float] = {}
        self._locks: dict[tuple[Any, ...], trio.Lock] = {}
        self._connects = 0
        self._fallbacks = 0

    def statistics(self) -> H2Statistics:
        conns = [c for cs in self._conns.values() for c in cs if not c.closed]
        return H2Statistics(
            connects=self._connects,
            connections=len(conns),
            streams=sum(len(c.core.streams) for c in conns),
            fallbacks=self._fallbacks,
        )

    def usable(self, endpoint: Endpoint) -> bool:
        """Whether to try HTTP/2 for this endpoint (TLS with an h2 context, not known to refuse it)."""
        if endpoint.h2_context is None:
            return False
        until = self._no_h2.get(endpoint.key)
        if until is None:
            return True
        if trio.current_time() < until:
            return False
        del self._no_h2[endpoint.key]
        return True

    async def open(
        self, endpoint: Endpoint, headers: list[tuple[bytes, bytes]]
    ) -> H2Exchange | UpstreamConnection | None:
        """Send a body-less request on a shared connection. When this API server does not speak h2: None,
        or the HTTP/1.1 connection made to find out (fresh, unused: the caller sends the request on it)."""
        if not self.usable(endpoint):
            return None
        lock = self._locks.setdefault(endpoint.key, trio.Lock())
        async with lock:  # one connect at a time per endpoint: concurrent watches share it
            upstream = self._with_room(endpoint)
            if upstream is None:
                made = await self._connect(endpoint)
                if not isinstance(made, H2Upstream):
                    return made
                upstream = made
            try:
                stream = upstream.core.open(headers)  # under the lock: the room _with_room saw is still there
            except H2StreamError as err:
                raise endpoint.unreachable(str(err)) from None
        exchange = H2Exchange(upstream, stream)
        try:
            await upstream.flush()
        except BaseException:
            await exchange.aclose()
            raise
        return exchange

    def _with_room(self, endpoint: Endpoint) -> H2Upstream | None:
        conns = self._conns.get(endpoint.key)
        if not conns:
            return None
        conns[:] = [c for c in conns if not c.closed and c.core.accepting]
        for conn in conns:
            if conn.core.can_open():
                return conn
        return None

    async def _connect(self, endpoint: Endpoint) -> H2Upstream | UpstreamConnection:
        assert endpoint.h2_context is not None
        stream: trio.abc.Stream | None = None
        upstream: H2Upstream | None = None
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await open_api_stream(endpoint.host, endpoint.port)  # never a metadata service
                # wrap() takes the descriptor over (and closes it when it refuses the server name)
                tls = SocketTLSStream.wrap(tcp, endpoint.h2_context, server_hostname=endpoint.server_hostname)
                stream = tls
                await tls.do_handshake()
                if tls.selected_alpn_protocol() != "h2":
                    self._no_h2[endpoint.key] = trio.current_time() + NEGATIVE_TTL
                    self._fallbacks += 1
                    return UpstreamConnection(endpoint, tls)
                core = H2ClientCore() if self.max_streams is None else H2ClientCore(max_streams=self.max_streams)
                upstream = H2Upstream(endpoint, tls, core, self.idle_ttl)
                trio.lowlevel.spawn_system_task(upstream.run, name=f"h2 upstream {endpoint.cluster}")
                await upstream.settled.wait()  # the server's SETTINGS: its stream limit is known
        except trio.TooSlowError:
            await self._abandon(stream, upstream)
            raise endpoint.unreachable(f"no connection within {self.connect_timeout:g}s") from None
        except (*_STREAM_ERRORS, UnicodeError) as exc:
            await self._abandon(stream, upstream)
            raise endpoint.unreachable(_describe(exc)) from None
        except BaseException:
            await self._abandon(stream, upstream)
            raise
        if not upstream.core.can_open():
            await upstream.aclose()
            raise endpoint.unreachable(upstream.core.broken or "the API server takes no HTTP/2 streams")
        self._connects += 1
        self._conns.setdefault(endpoint.key, []).append(upstream)
        return upstream

    @staticmethod
    async def _abandon(stream: trio.abc.Stream | None, upstream: H2Upstream | None) -> None:
        if upstream is not None:
            await upstream.aclose()  # its reader closes the stream
        else:
            await _close_quietly(stream)

    async def aclose(self) -> None:
        conns, self._conns = self._conns, {}
        for group in conns.values():
            for conn in group:
                await conn.aclose()


_CONNECTION_SPECIFIC = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)


def h2_request_headers(
    endpoint: Endpoint, method: bytes, target: bytes, lines: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The request the HTTP/1.1 path would send (its method, target and header lines) as HTTP/2 headers:
    pseudo-headers first, ``Host`` as ``:authority``, no connection-specific headers (RFC 9113 §8.2.2: h2
    refuses them), names lower-case."""
    headers = [
        (b":method", method),
        (b":scheme", b"https"),
        (b":authority", endpoint.host_header),
        (b":path", target),
    ]
    for name, value in lines:
        lowered = name.lower()
        if lowered not in _CONNECTION_SPECIFIC:
            headers.append((lowered, value))
    return headers


async def _close_quietly(stream: trio.abc.Stream | None) -> None:
    if stream is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
            await stream.aclose()


__all__ = ["H2Exchange", "H2Pool", "H2Upstream", "h2_request_headers"]
