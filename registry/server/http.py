"""A small HTTP/1.1 server: :class:`registry.core.http1.Reader` (sans-IO) driven by trio streams, optionally
over TLS.

It turns bytes into :class:`Request` values and :class:`Response` values back into bytes; routing and
everything else belongs to the handler. Used by the registry API and by the fake Kubernetes API in tests.
Requests are read by the project's one strict HTTP/1.1 reader (its rules: bare CR/LF, obs-fold, duplicate or
invalid Content-Length, both Content-Length and Transfer-Encoding, chunk syntax, one Host); answers are byte
joins (h11's state machine, event objects and header normalisation were ~10% of the registry's CPU per
create).

Invariants:
- A new connection must finish its TLS handshake *and* its first request head within
  ``limits.handshake_timeout`` of being accepted; every request head must also be complete within
  ``limits.head_timeout`` of its first byte. Heads must fit ``limits.max_head_bytes``; a body
  larger than ``limits.max_body_bytes`` is refused with 413 before it is read (slowloris and memory bombs
  cost the server little).
- Connection slots are handed out by :class:`~registry.server.admission.Admission` (sans-IO): connections
  that presented a verified client certificate are never shed; unauthenticated ones have their own
  budgets (in total and per source) and the longest-idle of them is closed to make room for a new
  connection, so idle sockets without a certificate cannot lock authenticated callers out. Unauthenticated
  keep-alive connections also wait at most ``limits.unauthenticated_idle_timeout`` for their next request.
- The handler never sees a half-read request, and nothing a handler raises escapes: a
  :class:`~registry.core.errors.KubeportError` becomes its ``Status`` JSON, anything else a logged 500.
- Streaming responses (``Response.stream``) are sent chunked, one chunk per item, flushed at once; the
  stream is closed as soon as the client goes away, so a watch does not outlive its reader.
- TLS handshakes run inside the connection task with a timeout; a failed handshake (no or bad client
  certificate when one is required, another CA, an expired certificate) only ends that connection.
- The accept loop follows ``trio.serve_listeners``: an ``accept`` failing for lack of resources
  (:data:`ACCEPT_CAPACITY_ERRNOS`: out of file descriptors, memory or buffers) is logged and retried after
  :data:`ACCEPT_RETRY_DELAY`, so the server rides out a burst and serves again once connections close;
  any other ``OSError`` is a real fault and ends the server with that error (``trio.SocketListener``
  already retries the per-connection errnos such as ``ECONNABORTED`` itself). Opening the listeners is the
  one place where an ``OSError`` becomes a kubeport error (``cannot listen on HOST:PORT: ...``).
- A ``101 Switching Protocols`` response with an ``upgrade`` callable (only for a request that asked to
  upgrade) hands the raw stream, and any bytes already read past the request head, to that callable; HTTP
  ends there and the connection closes when it returns. No idle or head timeouts apply afterwards. A 101 to
  a request that did not ask to upgrade, any other 1xx, a header line with a control byte or a bad name
  (response splitting), a handler's own Transfer-Encoding, or a body that contradicts the handler's
  Content-Length is a handler bug: logged, answered 500 (if nothing was sent yet), and the connection closed.
- Errors: a request the reader refuses is answered 400 (431 for a head over ``max_head_bytes``) and the
  connection closed; that includes a Transfer-Encoding other than one ``chunked`` (400, not 501: the reader
  refuses the framing as a whole, and either way nothing more on the connection can be trusted) and a
  method llhttp does not know (400: an unknown method is not a request this server could route; a known one
  the handler does not serve is the handler's 405). Error answers never quote the request's bytes. After
  any error answer (``Connection: close``, as every 4xx/5xx this module writes itself) the connection closes.
- Keep-alive as h11 gave it: HTTP/1.0 requests are answered and the connection closed, so is a request or an
  answer with ``Connection: close`` (the answer then says ``Connection: close``); pipelined requests are
  answered one at a time, in order. A whole body goes out with ``Content-Length`` (in the same write as its
  head up to ``_COALESCE_BODY``); a stream is chunked, one chunk per item (HTTP/1.0: the bytes themselves,
  ended by the close). HEAD gets the head a GET would get, without the body.
- ``Expect: 100-continue`` (HTTP/1.1, body not here yet, declared length within the limit) is answered
  ``100 Continue`` before the body is read (h11 left this to the application, which did not: clients
  waited a second before sending the body anyway).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from registry.core import http1, validation
from registry.core.errors import BadParameter, ConnectionProblem, KubeportError
from registry.core.netaddr import format_hostport, listen_error
from registry.host.socket_tls import SocketTLSStream
from registry.server.admission import Admission, AdmissionLimits, source_of

log = logging.getLogger(__name__)

# What a trio stream raises when the peer vanishes or TLS breaks mid-connection.
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
_COALESCE_BODY = 256 * 1024  # bodies up to this size go out in one write with their head

# accept(2) errors that mean "the system is out of something right now" (trio.serve_listeners' set): retried
# after a short sleep. Every other OSError from accept ends the server.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_DELAY = 0.1  # seconds, as trio.serve_listeners


async def accept_retrying(listener: trio.abc.Listener[trio.SocketStream], where: str) -> trio.SocketStream:
    """The next connection from ``listener``, as ``trio.serve_listeners`` accepts: an ``accept`` failing with
    one of :data:`ACCEPT_CAPACITY_ERRNOS` is logged (naming ``where``) and retried after
    :data:`ACCEPT_RETRY_DELAY`; any other ``OSError`` is raised, to end the server (the registry's API and the
    front door both accept through here)."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise  # not a passing shortage: a fault the server cannot serve through
            log.error(
                "accept on %s returned %s (%s); retrying in %s seconds",
                where,
                errno.errorcode[exc.errno],
                os.strerror(exc.errno),
                ACCEPT_RETRY_DELAY,
            )
            await trio.sleep(ACCEPT_RETRY_DELAY)


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]  # names lower-case, order and repeats preserved
    body: bytes = b""
    peer_cert: bytes | None = None  # DER of the verified client certificate, if any
    client: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        """The body through the one hardened JSON reader (no duplicate keys, NaN, Infinity or deep nesting):
        a malformed or hostile body is a BadParameter (400), never a crash."""
        return validation.load_json(self.body, source="request body")


Send = Callable[[bytes], Awaitable[None]]
Upgrade = Callable[[trio.abc.Stream, bytes], Awaitable[None]]  # (raw stream, bytes already read past the head)


@dataclass
class Response:
    """A response: a whole ``body``, or a chunked stream from ``stream`` (an async iterator) or from
    ``producer`` (called with a ``send`` function; it may open nurseries, which an async generator must not).
    A ``101`` with ``upgrade`` switches protocols: ``upgrade`` then owns the connection's byte stream.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    producer: Callable[[Send], Awaitable[None]] | None = None
    upgrade: Upgrade | None = None

    @classmethod
    def json(cls, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, [("content-type", "application/json"), *headers], body)

    @classmethod
    def error(cls, err: KubeportError) -> Response:
        return cls.json(err.code, err.to_status())


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class HTTPLimits:
    """Per-server limits. The defaults suit any server; the registry tightens the connection ones
    (``registry.server.serve.REGISTRY_HTTP_LIMITS``)."""

    max_head_bytes: int = 64 * 1024
    max_body_bytes: int = 2 * 1024 * 1024
    handshake_timeout: float = 10.0  # from accept: the TLS handshake plus the first request head
    head_timeout: float = 10.0  # each request head, once its first byte arrived
    idle_timeout: float = 120.0  # keep-alive connection with no request (authenticated connections)
    unauthenticated_idle_timeout: float | None = None  # the same without a client certificate; None: idle_timeout
    body_timeout: float = 30.0
    max_connections: int = 2048
    max_unauthenticated: int | None = None  # slots connections without a client certificate may hold
    max_unauthenticated_per_source: int | None = None  # ... from one source (IPv4 address / IPv6 /64)

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "head_timeout", "idle_timeout", "body_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise BadParameter(f"HTTPLimits.{name} must be a positive number of seconds (got {value!r})")
        self.admission_limits()  # validates the connection budgets

    def admission_limits(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_connections=self.max_connections,
            max_unauthenticated=self.max_unauthenticated,
            max_unauthenticated_per_source=self.max_unauthenticated_per_source,
        )

    def idle_timeout_for(self, authenticated: bool) -> float:
        if authenticated or self.unauthenticated_idle_timeout is None:
            return self.idle_timeout
        return min(self.idle_timeout, self.unauthenticated_idle_timeout)


@dataclass(frozen=True)
class ServerInfo:
    host: str
    port: int
    admission: Admission | None = field(default=None, compare=False, repr=False)  # live connection accounting

    @property
    def address(self) -> str:
        return format_hostport(self.host, self.port)


class _ClientGone(Exception):
    """The peer closed or broke the connection; nothing more can be said to it."""


class _BadResponse(Exception):
    """A handler's answer cannot be sent as HTTP/1.1 (a header that would break the framing, a 1xx, a 101 to a
    request that did not ask to upgrade, a body that contradicts its Content-Length): a bug, answered 500."""


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


# Reason phrases for the status line (h11 wrote none; clients ignore it, people reading captures do not).
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
# A whole header block as the handler gave it, checked in one match: every line a token, ": ", a value
# without control bytes but HTAB, CRLF; and as many lines as headers (a CR LF in a value: response splitting).
_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9a-z]+: [^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _has_close(value: str) -> bool:
    return any(token.strip(" \t").lower() == "close" for token in value.split(","))


class _Connection:
    """One client connection: a :class:`registry.core.http1.Reader` fed from a trio stream, answers written as
    byte joins."""

    __slots__ = ("head", "keep_alive", "limits", "reader", "received_any", "responding", "stream")

    def __init__(self, stream: trio.abc.Stream, limits: HTTPLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.reader = http1.Reader(max_head=limits.max_head_bytes)
        self.received_any = False
        self.head: http1.Head | None = None  # the request being answered
        self.responding = False  # its answer has started going out (an error can no longer be said)
        self.keep_alive = True  # another request may follow the answer going out

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(64 * 1024)
        except _STREAM_ERRORS as exc:
            raise _ClientGone from exc
        if data:
            self.received_any = True
        self.reader.feed(bytes(data))  # b"" tells the reader about EOF

    async def next_event(self) -> http1.Event:
        while True:
            event = self.reader.next_event()
            if event is http1.NEED_DATA:
                await self._receive()
                continue
            return event

    async def next_event_within(self, timeout: float) -> http1.Event:
        """:meth:`next_event` within ``timeout`` seconds from now (trio.TooSlowError). The deadline's cancel
        scope is only entered to wait for bytes: an event already buffered costs none."""
        event = self.reader.next_event()
        if event is not http1.NEED_DATA:
            return event
        with trio.fail_after(timeout):
            return await self.next_event()

    async def _write(self, data: bytes | bytearray) -> None:
        if data:
            try:
                await self.stream.send_all(data)
            except _STREAM_ERRORS as exc:
                raise _ClientGone from exc

    def _head_bytes(self, status: int, headers: Sequence[tuple[str, str]], extra: str) -> bytes:
        """The status line and header block, checked (:class:`_BadResponse`); ``extra``: framing lines."""
        try:
            block = ("".join([f"{name.lower()}: {value}\r\n" for name, value in headers]) + extra).encode("latin-1")
        except UnicodeEncodeError:
            raise _BadResponse("a response header that is not latin-1") from None
        # One line per header: a CR LF inside a value would otherwise pass as a line boundary (splitting).
        if _HEADER_BLOCK.fullmatch(block) is None or block.count(b"\n") != len(headers) + extra.count("\n"):
            raise _BadResponse("a response header line that cannot be sent (a bad name or a control byte)")
        return http1.response_head(status, _REASONS.get(status, b""), block)

    async def send_response(self, response: Response, *, head: bool = False) -> None:
        """Send a response; for HEAD requests only the head (with the length a GET would have had). Sets
        :attr:`keep_alive` for what follows."""
        request = self.head
        assert request is not None
        status = response.status
        if status < 200:
            if status != 101 or response.upgrade is None:
                raise _BadResponse(f"a handler answered {status} (only a 101 with an upgrade is sent)")
            if not request.upgrade:
                raise _BadResponse("a handler answered 101 to a request that did not ask to upgrade")
            out = self._head_bytes(101, response.headers, "")
            self.responding = True
            self.keep_alive = False
            await self._write(out)
            await response.upgrade(self.stream, self.reader.take_buffer())
            return
        length: str | None = None
        said_close = False
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = value
            elif lowered == "transfer-encoding":
                raise _BadResponse("a handler set Transfer-Encoding (this server frames bodies itself)")
            elif lowered == "connection" and _has_close(value):
                said_close = True
        keep = request.keep_alive and not said_close
        http10 = request.version == b"1.0"
        streaming = response.stream is not None or response.producer is not None
        # Framing: a whole body has a Content-Length; a stream is chunked, or for HTTP/1.0 (no chunked
        # encoding) or a handler's own Content-Length, the bytes themselves (ended by the close, or counted).
        chunked = streaming and length is None and not http10
        if streaming and length is None and http10:
            keep = False
        extra = ""
        if not streaming and length is None:
            extra = f"content-length: {len(response.body)}\r\n"
        elif chunked:
            extra = "transfer-encoding: chunked\r\n"
        if not keep and not said_close:
            extra += "connection: close\r\n"  # the answer ends the connection: say so (as h11 did)
        if length is not None and not streaming and not head and length.strip() != str(len(response.body)):
            raise _BadResponse("a handler's Content-Length does not match its body")
        out = self._head_bytes(status, response.headers, extra)
        self.responding = True
        self.keep_alive = keep
        if not streaming:
            body = response.body
            if head or not body:
                await self._write(out)
            elif len(body) > _COALESCE_BODY:
                # A big body is written on its own rather than copied behind the head.
                await self._write(out)
                await self._write(body)
            else:
                # A small answer is one write for head and body: one TLS record and one syscall, and the
                # client is woken once with the whole answer (as Go's net/http does), not first for a bare head.
                await self._write(out + body)
            return
        if head:
            await self._write(out)
            aclose = getattr(response.stream, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
            return
        await self._write(out)
        limit = None if length is None or not length.strip().isdigit() else int(length)
        sent = await self._send_stream(response.stream, response.producer, chunked=chunked, limit=limit)
        if chunked:
            await self._write(http1.LAST_CHUNK)
        elif limit is not None and sent != limit:
            raise _BadResponse("a handler's stream did not match its Content-Length")

    async def _send_stream(
        self,
        chunks: AsyncIterator[bytes] | None,
        producer: Callable[[Send], Awaitable[None]] | None,
        *,
        chunked: bool,
        limit: int | None,
    ) -> int:
        """Send each chunk as it comes (``chunked``: in chunk framing, one chunk per item); stop as soon as the
        client hangs up (checked concurrently). Returns the bytes of body sent."""
        gone = False
        sent = 0

        async def watch_for_eof(cancel: trio.CancelScope) -> None:
            nonlocal gone
            try:
                while True:
                    data = await self.stream.receive_some(64 * 1024)
                    if not data:
                        break
                    # A client must not send anything while a response streams (no pipelining over a
                    # watch); keep it for the reader so the byte stream stays consistent.
                    self.reader.feed(bytes(data))
            except _STREAM_ERRORS:
                pass
            gone = True
            cancel.cancel()

        async def send_chunk(data: bytes) -> None:
            nonlocal sent
            if data:
                sent += len(data)
                if limit is not None and sent > limit:
                    raise _BadResponse("a handler's stream is longer than its Content-Length")
                await self._write(http1.chunk(data) if chunked else data)

        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_for_eof, nursery.cancel_scope)
                    if producer is not None:
                        await producer(send_chunk)
                    elif chunks is not None:
                        async for chunk in chunks:
                            await send_chunk(chunk)
                    nursery.cancel_scope.cancel()
            except* _ClientGone:
                # The client left while a producer (possibly inside its own nurseries) was sending.
                gone = True
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
        if gone:
            raise _ClientGone
        return sent

    async def read_body(self, head: http1.Head) -> bytes:
        """The request's whole body (counted against ``limits.max_body_bytes``: a declared length over it is
        refused before a byte of the body is read)."""
        if head.length is not None and head.length > self.limits.max_body_bytes:
            raise _TooLarge(head.length)
        reader = self.reader
        event = reader.next_event()
        if event is http1.END:
            return b""
        if (
            event is http1.NEED_DATA
            and head.version == b"1.1"
            and any(n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in head.headers)
        ):
            # The client waits for a go-ahead before its body (RFC 9110 §10.1.1); the limit was checked.
            await self._write(_CONTINUE)
        parts: list[bytes] = []
        size = 0
        # The body's deadline runs from here; its cancel scope is only entered to wait for bytes (a small
        # body usually arrived with its head: no scope at all).
        deadline: float | None = None
        while True:
            if event is http1.NEED_DATA:
                if deadline is None:
                    deadline = trio.current_time() + self.limits.body_timeout
                with trio.fail_at(deadline):
                    await self._receive()
            elif event is http1.END:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            elif isinstance(event, bytes):
                size += len(event)
                if size > self.limits.max_body_bytes:
                    raise _TooLarge(size)
                parts.append(event)
            else:  # CLOSED or PAUSED cannot come inside a body; the reader raises on an early EOF
                raise _ClientGone
            event = reader.next_event()


def _to_request(head: http1.Head, body: bytes, peer_cert: bytes | None, client: str) -> Request:
    target = head.target.decode("latin-1")
    # The reader refused spaces and control bytes in the target: an origin-form target without "?" or "#"
    # is its own path, as urlsplit would say (one starting "//" would have an authority: urlsplit decides).
    if target[:1] == "/" and target[1:2] != "/" and "#" not in target:
        path, _, query = target.partition("?")
    else:
        split = urlsplit(target)
        path, query = split.path, split.query
    return Request(
        method=head.method.decode("ascii", "replace"),
        target=target,
        path=path,
        query=parse_qs(query, keep_blank_values=True) if query else {},
        headers=[(k.lower().decode("ascii"), v.decode("latin-1")) for k, v in head.headers],
        body=body,
        peer_cert=peer_cert,
        client=client,
    )


def _status_body(code: int, reason: str, message: str) -> Response:
    return Response.json(
        code,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        headers=[("connection", "close")],
    )


async def _call_handler(handler: Handler, request: Request) -> Response:
    try:
        return await handler(request)
    except KubeportError as err:
        return Response.error(err)
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return _status_body(500, "InternalError", "internal error (see the server log)")


class Slot:
    """A connection's place in the listener's :class:`Admission` (what the connection task reports)."""

    def __init__(self, admission: Admission | None = None, conn_id: int | None = None) -> None:
        self._admission = admission
        self._conn_id = conn_id

    def authenticated(self) -> None:
        if self._admission is not None and self._conn_id is not None:
            self._admission.on_authenticated(self._conn_id)

    def busy(self) -> None:
        if self._admission is not None and self._conn_id is not None:
            self._admission.on_busy(self._conn_id)

    def idle(self) -> None:
        if self._admission is not None and self._conn_id is not None:
            self._admission.on_idle(self._conn_id)

    def close(self) -> None:
        if self._admission is not None and self._conn_id is not None:
            self._admission.on_close(self._conn_id)


async def handle_connection(
    stream: trio.abc.Stream, handler: Handler, limits: HTTPLimits, client: str = "", slot: Slot | None = None
) -> None:
    """Serve HTTP/1.1 requests on one stream until the client leaves or the connection must close."""
    slot = slot or Slot()
    peer_cert: bytes | None = None
    # One deadline from accept to the end of the first request head: a client that connects and then
    # handshakes, or sends its head, byte by byte cannot hold a slot for longer than this.
    first_deadline = trio.current_time() + limits.handshake_timeout
    try:
        if isinstance(stream, SocketTLSStream):
            try:
                with trio.fail_at(first_deadline):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError) as exc:
                # OpenSSL already wrote its alert (expired, unknown CA) to the socket: the peer learns why.
                log.debug("TLS handshake with %s failed: %s", client, exc)
                return
            peer_cert = stream.getpeercert(binary_form=True) or None
            if peer_cert is not None:
                # The context verified it against the cluster CA (client certificates are optional there,
                # but a presented one must verify): this connection now has a trusted owner.
                slot.authenticated()
        conn = _Connection(stream, limits)
        reader = conn.reader
        first = True
        while True:
            try:
                if first:
                    with trio.fail_at(first_deadline):
                        await conn._receive()
                        event = await conn.next_event_within(limits.head_timeout)
                else:
                    # A kept-alive connection may wait for its next request; once bytes start arriving the
                    # whole head must follow quickly (slowloris).
                    if not reader.buffer and not reader.eof:
                        with trio.move_on_after(limits.idle_timeout_for(peer_cert is not None)) as idle:
                            await conn._receive()
                        if idle.cancelled_caught:
                            return
                    event = await conn.next_event_within(limits.head_timeout)
            except trio.TooSlowError:
                if first and not conn.received_any:
                    log.debug("connection from %s sent no request in time", client)
                    return  # nothing was asked: nothing to answer
                await _reject(conn, 408, "request head did not arrive in time")
                return
            except http1.HTTPError as exc:
                await _reject(conn, exc.status, f"malformed HTTP request: {exc.message}")
                return
            first = False
            if not isinstance(event, http1.Head):
                return  # CLOSED: the client left between requests
            conn.head = event
            try:
                body = await conn.read_body(event)
            except _TooLarge as exc:
                await _reject(
                    conn,
                    413,
                    f"request body is too large ({exc.size} bytes; the limit is {limits.max_body_bytes})",
                )
                return
            except trio.TooSlowError:
                await _reject(conn, 408, "request body did not arrive in time")
                return
            except http1.HTTPError as exc:
                await _reject(conn, 400, f"malformed HTTP request body: {exc.message}")
                return
            # Busy (not sheddable) only while the handler runs and answers: a client trickling its body
            # stays sheddable, so connections without a certificate cannot pin their slots that way.
            slot.busy()
            request = _to_request(event, body, peer_cert, client)
            response = await _call_handler(handler, request)
            try:
                await conn.send_response(response, head=request.method == "HEAD")
            except _BadResponse as exc:
                log.error("cannot send the answer to %s %s from %s: %s", request.method, request.path, client, exc)
                await _reject(conn, 500, "internal error (see the server log)")
                return
            if response.status == 101 or not conn.keep_alive:
                return  # the upgrade handler has had the stream (nothing more is HTTP), or the answer ends it
            slot.idle()
            reader.next_cycle()
            conn.responding = False
    except _ClientGone:
        return
    except Exception:
        # Last line of defence: one broken connection (a failing stream producer, a reader state error)
        # must never take the listener and every other connection down with it.
        log.exception("connection from %s failed", client)
        return
    except BaseExceptionGroup as group:
        # Errors mixed with cancellation (server shutting down): log the errors, let cancellation through.
        errors, rest = group.split(Exception)
        if errors is not None:
            log.error("connection from %s failed", client, exc_info=errors)
        if rest is not None:
            raise rest from None
        return
    finally:
        slot.close()
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
            await stream.aclose()


async def _reject(conn: _Connection, status: int, message: str) -> None:
    """Best-effort error answer on a connection that is about to close (none once an answer has started).
    ``message`` never quotes the request's bytes (they may carry a secret and reach logs)."""
    if conn.responding:
        return
    conn.responding = True
    reason = {
        400: "BadRequest",
        408: "Timeout",
        413: "RequestEntityTooLarge",
        431: "RequestHeaderFieldsTooLarge",
        500: "InternalError",
    }.get(status, "BadRequest")
    body = _status_body(status, reason, message).body
    block = b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n" % len(body)
    with contextlib.suppress(_ClientGone):
        await conn._write(http1.response_head(status, _REASONS.get(status, b""), block) + body)
    # Closing with unread input makes the kernel send RST, which can destroy the answer before the client
    # reads it; swallow a bounded amount of what the client is still sending first.
    drained = 0
    with trio.move_on_after(0.5), contextlib.suppress(*_STREAM_ERRORS):
        while drained < 4 * 1024 * 1024:
            data = await conn.stream.receive_some(64 * 1024)
            if not data:
                break
            drained += len(data)


async def serve_http(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    limits: HTTPLimits | None = None,
    listeners: Sequence[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (0 = any free port) and serve until cancelled.

    ``task_status.started`` receives the bound address, so callers can ``await nursery.start(serve_http,
    ...)`` and then connect. ``listeners`` serves on listeners the caller opened instead (``host`` and
    ``port`` are then unused); serve_http closes them when it returns.
    """
    limits = limits or HTTPLimits()
    if listeners is not None:
        tcp_listeners = list(listeners)
    else:
        try:
            tcp_listeners = await trio.open_tcp_listeners(port, host=host)
        except (OSError, UnicodeError) as exc:  # the seam: a port in use or a bad host is one clear error
            raise ConnectionProblem(listen_error(host, port, exc)) from None
    bound = tcp_listeners[0].socket.getsockname()
    admission = Admission(limits.admission_limits())
    info = ServerInfo(host=bound[0], port=bound[1], admission=admission)
    scopes: dict[int, trio.CancelScope] = {}

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            sock_stream = await accept_retrying(listener, info.address)
            try:
                peer = sock_stream.socket.getpeername()
            except OSError:  # already gone
                await sock_stream.aclose()
                continue
            client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            decision = admission.admit(source_of(peer[0] if isinstance(peer, tuple) else str(peer)))
            for victim in decision.shed:
                scope = scopes.pop(victim, None)
                if scope is not None:
                    scope.cancel()
            if decision.conn_id is None:
                log.debug("refused a connection from %s: %s", client, decision.reason)
                with trio.CancelScope(shield=True), contextlib.suppress(*_STREAM_ERRORS):
                    await sock_stream.aclose()
                continue
            stream: trio.abc.Stream = sock_stream
            if ssl_context is not None:
                try:  # OpenSSL on the socket itself: about half the CPU of trio's SSLStream (host/socket_tls.py)
                    stream = SocketTLSStream.wrap(sock_stream, ssl_context, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.debug("could not set up TLS for %s: %s", client, exc)
                    admission.on_close(decision.conn_id)
                    continue
            scope = trio.CancelScope()
            scopes[decision.conn_id] = scope
            nursery.start_soon(_serve_one, stream, client, decision.conn_id, scope)

    async def _serve_one(stream: trio.abc.Stream, client: str, conn_id: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await handle_connection(stream, handler, limits, client, Slot(admission, conn_id))
        finally:
            # A shed connection is cancelled here; handle_connection's own cleanup closed its socket.
            scopes.pop(conn_id, None)
            admission.on_close(conn_id)

    try:
        async with trio.open_nursery() as nursery:
            for listener in tcp_listeners:
                nursery.start_soon(accept_loop, listener, nursery)
            task_status.started(info)
    finally:
        with trio.CancelScope(shield=True):
            for listener in tcp_listeners:
                await listener.aclose()
