"""A small keep-alive HTTP/1.1 client for unary requests (one request, one bounded answer) over trio.

Why not httpx: per request, httpx -> httpcore -> h11 build request and response models, URL objects, trace
and timeout context managers and a chain of async generators, and httpcore writes the head and the body in
two sends. On the registry's create path (a client's POST, then the registry's txn to etcd) those layers cost
more CPU than the request's TLS, its JSON and the store's work together. Here a request is one byte join
(its head from a header block built once per header set, then its body) and one send on a pooled connection;
the answer is read by :class:`registry.core.http1.Reader` (llhttp for the head, the project's own framing
rules for the body: h11 cost ~30 us per answer head, llhttp ~2 us) into one bounded buffer.

Users: :class:`registry.client.RegistryClient` (kpctl, the agents' heartbeats and audit batches, and the
head of its watches through :func:`read_head` / :func:`read_body`) and the registry's etcd client
(``registry.store.etcd_client``), both for real network addresses only: a test transport (``transport=``)
keeps their httpx path.

Invariants:

- Nothing is sent twice: :meth:`Http1Pool.request` raises :class:`NotSent` only when no byte of the request
  left this process (connecting, the TLS handshake or waiting for a pool slot failed); every later failure
  is :class:`Broken` and the caller decides whether the request may be repeated. A pooled connection is reused
  only when it is not readable: a peer that closed it (EOF) or sent something unasked (a stray byte, an
  early error) makes it stale, and it is dropped before anything is written to it (httpcore does the same),
  so the request goes on a fresh connection instead.
- An answer's head is at most ``max_head`` bytes, its body at most ``max_body`` (a declared Content-Length
  over it is refused before the body is read; a streamed body is counted as it arrives: never buffered past
  the bound). At most ``max_connections`` connections are open; at most ``max_idle`` are kept.
- The answer's framing follows :mod:`registry.core.http1`'s rules (one Content-Length or one
  ``Transfer-Encoding: chunked``, never both; strict chunk sizes; no bare CR/LF); a violation is
  :class:`registry.core.http1.HTTPError`, whose message never quotes the peer's bytes.
- A connection goes back to the pool only after a complete answer that leaves it reusable (HTTP/1.1 without
  ``Connection: close``, framed by a length or chunks, nothing received after it); a failed, cancelled or
  timed-out request closes its connection.
- What is sent is checked as h11 checked it: the method a token, the target without whitespace or a control
  byte, header names tokens and values without CR, LF or another control byte (no header injection through
  a caller's value).
- ``timeout`` bounds the whole request (a pool slot, connecting, the handshake, sending and the answer).
- TLS is exactly the caller's ``ssl.SSLContext`` (verification, client certificate) with ``server_hostname``
  as SNI and the name checked; no proxy is ever read from the environment.
"""

from __future__ import annotations

import re
import select
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from registry.core.chunked import ChunkedDecoder
from registry.core.http1 import CLOSED, END, NEED_DATA, Head, HTTPError, Reader, check_headers, header_block
from registry.host.socket_tls import SocketTLSStream

_READ = 64 * 1024
Stream = trio.SocketStream | SocketTLSStream

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff]")  # h11's request-target: visible ASCII only
_KNOWN_METHODS = {m: m.encode("ascii") for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")}
_NO_LENGTH = frozenset({"GET", "HEAD", "DELETE"})  # sent without Content-Length when their body is empty
_MAX_BLOCKS = 64  # header sets remembered per pool: callers use a handful of constant ones


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
    headers: list[tuple[bytes, bytes]]  # lower-case names
    body: bytes


@dataclass(slots=True)
class _Conn:
    stream: Stream
    reader: Reader


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
        self._host_line = header_block([(b"host", _header_bytes(authority))])
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}
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
        try:
            data = self._encode(method, target, body, headers)
        except HTTPError as exc:  # a caller's bad method, target or header: nothing is sent (as h11 refused it)
            raise Broken(exc) from None
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
                answer, reusable = await self._exchange(conn, method, data)
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
        try:
            data = self._encode(method, target, body, headers)
        except HTTPError as exc:
            raise Broken(exc) from None
        conn: _Conn | None = None
        try:
            with trio.fail_after(self._timeout):
                try:
                    conn = await self._connect()
                except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise NotSent(exc) from None
                reader = conn.reader
                reader.request_method = _KNOWN_METHODS.get(method) or method.encode("ascii")
                await conn.stream.send_all(data)
                head = await read_head(reader, conn.stream)
                if head.status != 200 or not head.chunked:
                    content = await read_body(reader, conn.stream, head, self._max_body)
                    await trio.aclose_forcefully(conn.stream)
                    return Answer(head.status, _lowered(head.headers), content), None
                reader.raw_body()  # the body is StreamedAnswer's: each read goes straight to its decoder
                return Answer(200, _lowered(head.headers), b""), StreamedAnswer(conn.stream, reader.take_buffer())
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

    def _encode(self, method: str, target: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
        """The request's bytes: its head and body in one buffer (one send). HTTPError for what cannot be sent."""
        verb = _KNOWN_METHODS.get(method)
        if verb is None:
            verb = _header_bytes(method)
            if not _TOKEN.fullmatch(verb):
                raise HTTPError("a request method that is not a token")
        path = _header_bytes(target)
        if not path or _BAD_TARGET.search(path):
            raise HTTPError("a request target with whitespace, a control byte or non-ASCII")
        key = headers if isinstance(headers, tuple) else tuple(headers)
        block = self._blocks.get(key)
        if block is None:
            block = self._header_block(key)
        if body or method not in _NO_LENGTH:
            return b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s" % (verb, path, block, len(body), body)
        return b"%s %s HTTP/1.1\r\n%s\r\n" % (verb, path, block)

    def _header_block(self, key: tuple[tuple[str, str], ...]) -> bytes:
        """The Host line and ``key``'s lines, checked once and remembered (a bounded number of header sets)."""
        lines = [(_header_bytes(name), _header_bytes(value)) for name, value in key]
        check_headers(lines)
        block = self._host_line + header_block(lines)
        if len(self._blocks) < _MAX_BLOCKS:
            self._blocks[key] = block
        return block

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
        return _Conn(stream, Reader(response=True, max_head=self._max_head))

    async def _exchange(self, conn: _Conn, method: str, data: bytes) -> tuple[Answer, bool]:
        reader = conn.reader
        reader.request_method = _KNOWN_METHODS.get(method) or method.encode("ascii")
        await conn.stream.send_all(data)
        head = await read_head(reader, conn.stream)
        content = await read_body(reader, conn.stream, head, self._max_body)
        # Reusable: keep-alive allowed, the body was framed (not read to EOF), and nothing came after it.
        reusable = reader.keep_alive and not reader.buffer and not reader.eof
        if reusable:
            reader.next_cycle()
        return Answer(head.status, _lowered(head.headers), content), reusable


def _header_bytes(text: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise HTTPError("a request line or header that is not ASCII") from None


def _lowered(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value) for name, value in headers]


async def _receive(reader: Reader, stream: trio.abc.ReceiveStream) -> None:
    reader.feed(bytes(await stream.receive_some(_READ)))


async def read_head(reader: Reader, stream: trio.abc.ReceiveStream) -> Head:
    """The final answer's head from ``reader`` (a ``Reader(response=True)`` with its ``request_method`` set),
    reading ``stream`` as needed; informational (1xx) answers before it are skipped. ClosedEarly when the
    server closes first, HTTPError for a head that breaks the rules (an unasked 101 is one)."""
    try:
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                await _receive(reader, stream)
            elif isinstance(event, Head):
                if event.status >= 200:
                    return event
                if event.status == 101:
                    raise HTTPError("a protocol switch (101) nobody asked for")
                while reader.next_event() is not END:  # a 1xx has no body: END comes next
                    pass
                reader.next_cycle()
            elif event is CLOSED:
                raise ClosedEarly("the server closed the connection before answering")
            else:  # not reachable: a reader in a head gives a head, NEED_DATA or CLOSED
                raise HTTPError(f"an unexpected {event!r} before the answer's head")
    except HTTPError:
        if reader.eof:  # the reader refuses bytes as they arrive: a failure after EOF is a cut-off answer
            raise ClosedEarly("the server closed the connection in the middle of its answer's head") from None
        raise


async def read_body(reader: Reader, stream: trio.abc.ReceiveStream, head: Head, max_body: int) -> bytes:
    """The rest of the answer whose head is ``head``: its whole body (AnswerTooLarge past ``max_body``, counted
    as it arrives and refused at once when the declared length is over it). ClosedEarly when the connection
    closes inside it, HTTPError for bad chunked framing."""
    if head.length is not None and head.length > max_body:
        raise AnswerTooLarge(f"the answer is longer than {max_body} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            event = reader.next_event()
            if event is END:
                break
            if event is NEED_DATA:
                await _receive(reader, stream)
                continue
            assert isinstance(event, bytes)  # a reader in a body gives data, NEED_DATA or END
            size += len(event)
            if size > max_body:
                raise AnswerTooLarge(f"the answer is longer than {max_body} bytes")
            parts.append(event)
    except HTTPError:
        if reader.eof:
            raise ClosedEarly("the server closed the connection in the middle of its answer") from None
        raise
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


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


__all__ = [
    "Answer",
    "AnswerTooLarge",
    "Broken",
    "ClosedEarly",
    "Http1Pool",
    "NotSent",
    "StreamedAnswer",
    "read_body",
    "read_head",
]
