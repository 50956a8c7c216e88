"""A small keep-alive HTTP/1.1 client for unary requests (one request, one bounded answer) over trio, on h11.

Why not httpx: per request, httpx -> httpcore -> h11 build request and response models, URL objects, trace
and timeout context managers and a chain of async generators, and httpcore writes the head and the body in
two sends. On the registry's create path (a client's POST, then the registry's txn to etcd) those layers cost
more CPU than the request's TLS, its JSON and the store's work together. Here a request is one h11 cycle on a
pooled connection: the head and the body go out in one send, the answer is read into one bounded buffer.

Users: :class:`registry.client.RegistryClient` (kpctl, the agents' heartbeats and audit batches) and the
registry's etcd client (``registry.store.etcd_client``), both for real network addresses only: a test
transport (``transport=``) keeps their httpx path.

Invariants:

- Nothing is sent twice: :meth:`Http1Pool.request` raises :class:`NotSent` only when no byte of the request
  left this process (connecting, the TLS handshake or waiting for a pool slot failed); every later failure
  is :class:`Broken` and the caller decides whether the request may be repeated. A pooled connection is reused
  only when it is not readable: a peer that closed it (EOF) or sent something unasked (a stray byte, an
  early error) makes it stale, and it is dropped before anything is written to it (httpcore does the same).
X, its body at most ``max_body``
  (counted as it arrives: a hostile server announcing or streaming more is refused, never buffered). At most
  ``max_connections`` connections are open; at most ``max_idle`` are kept.
- A connection goes back to the pool only after a complete answer that leaves it reusable (h11 says both
  sides may start a next cycle, nothing followed the answer); a failed, cancelled or timed-out request closes
  its connection.
- ``timeout`` bounds the whole request (a pool slot, connecting, the handshake, sending and the answer).
- TLS is exactly the caller's ``ssl.SSLContext`` (verification, client certificate) with ``server_hostname``
  as SNI and the name checked; no proxy is ever read from the environment.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import trio

from registry.core.chunked import ChunkedDecoder
from registry.host.socket_tls import SocketTLSStream

_READ = 64 * 1024
Stream = trio.SocketStream | SocketTLSStream


class NotSent(Exception):
    """No byte of the request left this process (``cause``: why); it may be sent elsewhere or again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


class Broken(Exception):
    """The request may have reached the server, and no complete answer came (``cause``: why)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


class AnswerTooLarge(Exception):
    """The answer's body is longer than the pool's ``max_body``."""


class ClosedEarly(Exception):
    """The server closed the connection before a complete answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # lower-case names, as h11 gives them
    body: bytes


@dataclass(slots=True)
class _Conn:
    stream: Stream
    h11: h11.Connection


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one ``host:port`` (module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        server_hostname: str | None = None,
        authority: str | None = None,
        timeout: float,
        max_connections: int = 32,
        max_idle: int = 8,
        max_head: int = 64 * 1024,
        max_body: int = 64 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._server_hostname = server_hostname if server_hostname is not None else host
        authority = authority if authority is not None else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self._host_header = authority
        self._timeout = timeout
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._max_idle = max_idle
        self._max_head = max_head
        self._max_body = max_body
        self._closed = False
        self.opened = 0  # connections made so far (tests: reuse, stale connections dropped)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:  # no schedule point in between: a cancelled caller (a shutdown) still closes them all
            trio_close_now(conn.stream)
        await trio.lowlevel.checkpoint()

    async def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> Answer:
        """Send one request and read its whole answer (:class:`NotSent`, :class:`Broken`: module docstring)."""
        deadline = trio.current_time() + (self._timeout if timeout is None else timeout)
        with trio.CancelScope(deadline=deadline) as scope:
            conn: _Conn | None = None
            slot = False
            try:
                try:
                    self._slots.acquire_nowait()  # a free slot is taken without a schedule point
                except trio.WouldBlock:
                    await self._slots.acquire()
                slot = True
                conn = self._take_idle()
                if conn is None:
                    conn = await self._connect()
                    self.opened += 1
            except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if slot:
                    self._slots.release()
                raise NotSent(exc) from None
            except BaseException:
                if slot:
                    self._slots.release()
                raise
            try:
                answer, reusable = await self._exchange(conn, method, target, body, headers)
            except BaseException as exc:
                await trio.aclose_forcefully(conn.stream)
                self._slots.release()
                if isinstance(exc, trio.Cancelled) or not isinstance(exc, Exception):
                    raise
                raise Broken(exc) from None
            self._slots.release()
            if reusable and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                await trio.aclose_forcefully(conn.stream)
            return answer
        # Only the deadline above can get here (a caller's cancellation propagates as Cancelled).
        assert scope.cancelled_caught
        if conn is None:
            raise NotSent(trio.TooSlowError(f"no connection to {self.host}:{self.port} in time"))
        raise Broken(trio.TooSlowError(f"{self.host}:{self.port} did not answer in time"))

    async def open_stream(
        self, method: str, target: str, *, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[Answer, StreamedAnswer | None]:
        """A request on a connection of its own, for an answer that streams (a watch): the answer's head, and
        for a 200 with chunked framing its body as a :class:`StreamedAnswer` (the caller closes it); any other
        answer is read whole (bounded as :meth:`request`) and its connection closed. The connection is not
        one of the pool's (nor counted in ``max_connections``: a stream lives as long as its reader). The
        pool's ``timeout`` bounds everything up to the head; the body has no deadline (the caller's, if any).
        NotSent, Broken as :meth:`request`."""
        conn: _Conn | None = None
        try:
            with trio.fail_after(self._timeout):
                try:
                    conn = await self._connect()
                except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise NotSent(exc) from None
                http = conn.h11
                data = http.send(h11.Request(method=method, target=target, headers=self._head(method, body, headers)))
                await conn.stream.send_all(
                    (data or b"")
                    + (http.send(h11.Data(data=body)) if body else b"")
                    + (http.send(h11.EndOfMessage()) or b"")
                )
                event = await _next_event(http, conn.stream)
                while isinstance(event, h11.InformationalResponse):
                    event = await _next_event(http, conn.stream)
                if not isinstance(event, h11.Response):
                    raise ClosedEarly("the server closed the connection before answering")
                framing = b",".join(v for k, v in event.headers if k == b"transfer-encoding").lower()
                if event.status_code != 200 or framing != b"chunked":
                    content = await self._read_body(http, conn.stream)
                    await trio.aclose_forcefully(conn.stream)
                    return Answer(event.status_code, list(event.headers), content), None
                leftover, _ = http.trailing_data
                return Answer(200, list(event.headers), b""), StreamedAnswer(conn.stream, bytes(leftover))
        except BaseException as exc:
            if conn is not None:
                await trio.aclose_forcefully(conn.stream)
            if isinstance(exc, NotSent):
                raise
            if isinstance(exc, trio.TooSlowError) and conn is None:
                raise NotSent(exc) from None
            if isinstance(exc, Exception):
                raise Broken(exc) from None
            raise

    def _head(self, method: str, body: bytes, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        head: list[tuple[str, str]] = [("host", self._host_header), *headers]
        if body or method not in ("GET", "HEAD", "DELETE"):
            head.append(("content-length", str(len(body))))
        return head

    async def _read_body(self, http: h11.Connection, stream: Stream) -> bytes:
        content = bytearray()
        while True:
            part = await _next_event(http, stream)
            if isinstance(part, h11.Data):
                content += part.data
                if len(content) > self._max_body:
                    raise AnswerTooLarge(f"the answer is longer than {self._max_body} bytes")
            elif isinstance(part, h11.EndOfMessage):
                return bytes(content)
            else:
                raise ClosedEarly("the server closed the connection in the middle of its answer")

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if _is_stale(conn.stream):
                trio_close_now(conn.stream)
                continue
            return conn
        return None

    async def _connect(self) -> _Conn:
        tcp = await trio.open_tcp_stream(self.host, self.port)
        stream: Stream = tcp
        try:
            if self._tls is not None:
                # wrap() takes the descriptor over (and closes it when it refuses the server name)
                stream = SocketTLSStream.wrap(tcp, self._tls, server_hostname=self._server_hostname)
                await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return _Conn(stream, h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_head))

    async def _exchange(
        self, conn: _Conn, method: str, target: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> tuple[Answer, bool]:
        http = conn.h11
        data = http.send(h11.Request(method=method, target=target, headers=self._head(method, body, headers))) or b""
        if body:
            data += http.send(h11.Data(data=body)) or b""
        data += http.send(h11.EndOfMessage()) or b""
        await conn.stream.send_all(data)
        while True:
            event = await _next_event(http, conn.stream)
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):  # a 1xx before the answer: skip it
                raise ClosedEarly("the server closed the connection before answering")
        content = await self._read_body(http, conn.stream)
        reusable = http.our_state is h11.DONE and http.their_state is h11.DONE and not http.trailing_data[0]
        if reusable:
            http.start_next_cycle()
        return Answer(event.status_code, list(event.headers), content), reusable


async def _next_event(http: h11.Connection, stream: Stream) -> object:
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(bytes(await stream.receive_some(_READ)))
            continue
        if event is h11.PAUSED:  # bytes after the answer, before we asked for more: not a reusable connection
            raise ClosedEarly("the server sent more than one answer")
        return event


class StreamedAnswer:
    """A 200 answer whose chunked body is read as it comes (:meth:`Http1Pool.open_stream`): :meth:`receive`
    gives the body's next bytes (b"" at its end); the connection is its own and :meth:`aclose` closes it."""

    def __init__(self, stream: Stream, leftover: bytes) -> None:
        self._stream = stream
        self._chunks = ChunkedDecoder()
        self._pending = leftover

    async def receive(self) -> bytes:
        """The next body bytes; b"" once the body ended. ChunkedError (a ConnectionProblem) for bad framing;
        the transport's errors (trio.BrokenResourceError, OSError) as they are."""
        while not self._chunks.ended:
            data, self._pending = self._pending, b""
            if not data:
                data = bytes(await self._stream.receive_some(_READ))
                if not data:
                    raise ClosedEarly("the server closed the connection in the middle of its answer")
            body = self._chunks.feed(data)
            if body:
                return body
        return b""

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


def _is_stale(stream: Stream) -> bool:
    """An idle connection with something to read (EOF, a stray byte, an alert) is not safe to send on."""
    if isinstance(stream, SocketTLSStream):
        return stream.more_arrived()  # decrypted bytes in OpenSSL count as well as the kernel's
    try:
        fd = stream.socket.fileno()
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def trio_close_now(stream: Stream) -> None:
    """Close an idle connection at once, without a TLS goodbye (its peer is gone or misbehaved)."""
    if isinstance(stream, SocketTLSStream):
        stream.close_now()
    else:
        stream.socket.close()


__all__ = ["Answer", "AnswerTooLarge", "Broken", "ClosedEarly", "Http1Pool", "NotSent", "StreamedAnswer"]
