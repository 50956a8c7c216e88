"""The forwarder: an HTTP/1.1 server on one tunnel stream, forwarding each request to the cluster's API server.

:func:`handle_stream` serves one kubectl connection (one tunnel stream, bound to one cluster and one user
by its :class:`~registry.core.tunnel_info.StreamInfo`) until the client leaves, the stream must close, or
the user's certificate expires. For **every** request read from the stream, in this order (pure steps in
:mod:`agent.forward.decide`): the raw path must carry the stream's cluster prefix (else 400 and the stream
closes: a request for another cluster is refused, never routed), the prefix is stripped, the request is
mapped, the header rules are applied, the user's *current* user resource and roles are fetched
(``ForwardContext.user_access``), the cluster's labels are looked up in the served-cluster table (gone ->
404), the role engine decides, and the request goes upstream with our impersonation headers, the
cluster's own credential and the API server's ``Host``.

HTTP/1.1 on both sides (kubectl's requests, the API server's answers) is read by :class:`registry.core.http1.Reader`
(heads through llhttp, with h11's strictness and more: obs-fold and bare LF are refused) and written as
bytes here (:meth:`_Session._answer_head`, :func:`registry.core.http1.request_head`).

Streaming: request and response bodies are moved piece by piece, never buffered whole, so
watches, ``logs -f`` and large lists flow as they come. What is written is what already arrived: a watch event
goes out at once; a bulk answer's TLS records already received are joined into one write (up to
``ForwardLimits.relay_write``), never waiting for bytes still to come. A chunked answer to a client that gets
it chunked keeps the API server's chunks: their framing is checked on the way (:mod:`agent.forward.chunked`),
the bytes are not decoded and encoded again; any other answer keeps its Content-Length (held to) or is
re-framed chunked (until the close for an HTTP/1.0 client), one chunk per write.
While a response streams, the client side is watched: a client that goes away stops the upstream read at
once and that upstream connection is closed (never pooled). An upstream that breaks after the response head
went out ends the client connection without a clean terminator, so a truncated answer never looks complete.
Before the head went out, every failure is a ``Status`` (502 naming the cluster for an unreachable API
server).

Time limits per kept-alive request open no cancel scope of their own on a tunnel stream: the idle limit
moves the deadline of the stream's one scope (which also holds the certificate's expiry), and the limit on
the answer's head is the deadline of the scope that watches the client, lifted when the head arrives.

Upgrades (exec, attach, port-forward; WebSocket and SPDY/3.1): the upgrade request is checked and
forwarded like any other; if the API server answers 101, its head goes to the client verbatim and both
directions are spliced as raw bytes until either side ends, then both close. No request is parsed on the
stream after a 101. A non-101 answer is an ordinary response, and the loop goes on (kubectl's WebSocket ->
SPDY fallback needs exactly that). The forwarder does not parse the upgraded stream, but for exec and
attach (stream protocols v4/v5, WebSocket or SPDY) a tap (:mod:`agent.forward.exit_taps`) is shown copies
of the bytes and finds the exit status on the error channel, so ``session.end`` has ``exit_code``; when it
cannot (an older protocol, a session cut short, anything odd) ``exit_code`` is None and ``exit_code_reason``
says why.

Invariants: nothing this module raises escapes :func:`handle_stream` except cancellation; every refusal
is a Kubernetes ``Status`` (``KubeportError.to_status()``); every request yields exactly one
``kube.request`` audit event (an upgraded one also ``session.start``/``session.end``) and one count in
``kubeport_proxied_requests_total{cluster,code}``.
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import math
import ssl
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn, TypeVar

import trio
from prometheus_client import Counter

from agent.forward import audit as audit_events
from agent.forward import exit_taps
from agent.forward.chunked import ChunkedRelay, ChunkError
from agent.forward.context import ForwardContext
from agent.forward.decide import (
    Decision,
    HeadMemo,
    Target,
    WrongCluster,
    certificate_roles,
    decide,
    map_request,
    strip_prefix,
)
from agent.forward.exit_status import ExitStatus
from agent.forward.upstream import Endpoint, UpstreamConnection, UpstreamError
from agent.forward.upstream_h2 import H2Exchange, h2_request_headers
from registry.core import http1
from registry.core.errors import AccessDenied, BadParameter, KubeportError, NotFound, Timeout, Unauthenticated
from registry.core.kube_access import Identity, cluster_not_found
from registry.core.kube_request import KubeRequest
from registry.core.resources import Role, User
from registry.core.timefmt import format_rfc3339
from registry.core.tunnel_info import StreamInfo
from registry.host.metrics import PROXIED

log = logging.getLogger(__name__)

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
# Response headers that belong to one hop (RFC 9110 §7.6.1); framing headers stay: _answer_head re-frames.
_RESPONSE_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"proxy-authenticate"}
)
DRAIN_LIMIT = 1024 * 1024  # the most of a refused request's body read to keep its connection alive
_FRAMING = frozenset({b"transfer-encoding", b"content-length"})
_PHRASES = {code: phrase.encode("ascii") for code, phrase in ((s.value, s.phrase) for s in http.HTTPStatus)}
# Where the answer to the current request is (what the stream may do next): no request read, a request read
# and not answered yet, the answer's head went out, the answer ended (the stream goes on / must close).
_IDLE, _WAITING, _SENDING, _ANSWERED, _CLOSING = range(5)

T = TypeVar("T")


class _ClientGone(Exception):
    """The client closed or broke the stream."""


class _Malformed(BadParameter):
    """A request head the header rules refuse as smuggling or malformed: answered, then the stream closes."""


class _BadBody(Exception):
    """The request's body broke its framing (a bad chunk, the stream ended inside it)."""


class _Abort(Exception):
    """The exchange broke after the response head went out: the stream must close without more bytes."""


def handle_stream(
    stream: trio.abc.HalfCloseableStream, info: StreamInfo, *, ctx: ForwardContext
) -> Coroutine[Any, Any, None]:
    """Serve kubectl's requests on ``stream`` (bound to ``info``) until it ends; see the module docstring.

    Awaited like a coroutine function; it hands out the session's own coroutine, so an idle watch does
    not keep one more frame for hours."""
    return _Session(stream, info, ctx).run()


@dataclass(slots=True)  # no __dict__: alive as long as its request (a watch: hours)
class _Record:
    """What the audit event of one request says, filled in as the request goes."""

    method: str
    path: str
    started: float
    request: KubeRequest | None = None
    roles: tuple[str, ...] = ()
    identity: Identity | None = None
    status: int = 0
    error: str | None = None
    emitted: bool = False


@dataclass
class _Body:
    """A request body on its way upstream; the first ``limit`` bytes are kept for one replay."""

    limit: int
    recorded: list[bytes] = field(default_factory=list)
    size: int = 0
    replayable: bool = True
    done: bool = False


class _Session:
    # No __dict__: one per kubectl connection, alive as long as it (an idle watch: hours).
    __slots__ = (
        "answer",
        "client_gone",
        "close_after",
        "ctx",
        "expires_at",
        "head_scope",
        "heads",
        "info",
        "last_decision",
        "limits",
        "proxied",
        "reader",
        "request_keep",
        "request_v10",
        "scope",
        "stream",
        "upstream_headers",
    )

    def __init__(self, stream: trio.abc.HalfCloseableStream, info: StreamInfo, ctx: ForwardContext) -> None:
        self.stream = stream
        self.info = info
        self.ctx = ctx
        self.limits = ctx.limits
        self.reader = http1.Reader(max_head=self.limits.max_head_bytes)
        self.answer = _IDLE
        self.request_keep = True  # the request being answered allows another after it
        self.request_v10 = False  # ... and is HTTP/1.0 (no chunked answer: its body ends with the connection)
        self.close_after = False  # the answer going out ends the connection
        self.client_gone = False
        self.proxied: dict[int, Counter] = {}  # HTTP code -> this cluster's kubeport_proxied_requests_total child
        # Per-stream memos of pure steps (kubectl repeats its head on every kept-alive request): the header
        # rules' last result, the last decision (its upstream headers), and the header block of the last
        # upstream request with the endpoint it was built for (checked when it was built).
        self.heads = HeadMemo()
        self.head_scope: trio.CancelScope | None = None  # see _watching
        # The stream's one cancel scope: its deadline is the certificate's expiry, moved to the idle limit
        # while a kept-alive stream waits for its next request (no new scope per request).
        self.scope = trio.CancelScope()
        self.expires_at = math.inf
        self.last_decision: Decision | None = None
        self.upstream_headers: tuple[tuple[tuple[bytes, bytes], ...], Endpoint, Any] | None = None

    # -- the loop --------------------------------------------------------------------------------------

    async def run(self) -> None:
        remaining = (self.info.cert_expires - self.ctx.now()).total_seconds()
        # The stream lives at most as long as the certificate that opened it (Teleport disconnects at expiry).
        self.expires_at = trio.current_time() + remaining if remaining > 0 else math.inf
        try:
            with self.scope:
                self.scope.deadline = self.expires_at
                await self._loop()
        except (_ClientGone, _Abort):
            pass
        except Exception:
            log.exception("forwarding for %s to cluster %s failed", self.info.user, self.info.cluster)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                # Unless an answer was cut off mid-way (the client must see an abort), end our side first: a
                # tunnel stream closed before the client ended its side is reset, and a reset that arrives
                # in the same read as the answer's last bytes would discard them (a `Connection: close`
                # error answer lost in a burst). After END_STREAM the reset no longer drops what was sent.
                send_eof = getattr(self.stream, "send_eof", None)  # a TLS stream (tests, direct use) has none
                if send_eof is not None and self.answer not in (_WAITING, _SENDING):
                    with contextlib.suppress(*_STREAM_ERRORS):
                        await send_eof()
                with contextlib.suppress(*_STREAM_ERRORS):
                    await self.stream.aclose()

    async def _loop(self) -> None:
        while True:
            request = await self._read_head()
            if request is None:
                return
            # The head lives only in the frame that needs it: a watch idles for hours inside _exchange, and
            # every frame on the way keeps what it references (here ~1 KiB of parsed header lines).
            exchange = self._exchange(request)
            del request
            if not await exchange:
                return
            if self.answer != _ANSWERED or not self.reader.done:
                return
            self.reader.next_cycle()
            self.answer = _IDLE

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(self.limits.splice_chunk)
        except _STREAM_ERRORS as exc:
            raise _ClientGone from exc
        self.reader.feed(bytes(data))

    async def _next_event(self) -> http1.Event:
        while True:
            event = self.reader.next_event()
            if event is not http1.NEED_DATA:
                return event
            await self._receive()

    async def _next_event_within(self, seconds: float) -> http1.Event:
        """The next client event, waiting at most ``seconds`` for more bytes (``trio.TooSlowError``). No
        timer when it is already buffered, the usual case (a whole head, a GET's end): a cancel scope per
        event is measurable per request."""
        event = self.reader.next_event()
        if event is not http1.NEED_DATA:
            return event
        with trio.fail_after(seconds):
            return await self._next_event()

    async def _read_head(self) -> http1.Head | None:
        try:
            if not self.reader.buffer and not self.reader.eof:
                # Idle: the stream's scope ends it at the idle limit (or the certificate's expiry, if sooner).
                scope = self.scope
                scope.deadline = min(self.expires_at, trio.current_time() + self.limits.idle_timeout)
                try:
                    await self._receive()
                finally:
                    scope.deadline = self.expires_at
                if scope.cancel_called:
                    return None  # the limit passed as the bytes came: the stream ends all the same
            event = await self._next_event_within(self.limits.head_timeout)
        except trio.TooSlowError:
            await self._refuse_head(Timeout("the request head did not arrive in time"), 408, "Timeout")
            return None
        except http1.HTTPError as exc:
            code = exc.status
            reason = "RequestHeaderFieldsTooLarge" if code == 431 else "BadRequest"
            await self._refuse_head(KubeportError(f"malformed HTTP request: {exc.message}"), code, reason)
            return None
        if not isinstance(event, http1.Head):
            return None
        self.answer = _WAITING
        self.request_keep = event.keep_alive
        self.request_v10 = event.version == b"1.0"
        return event

    async def _refuse_head(self, err: KubeportError, code: int, reason: str) -> None:
        """A head that cannot be read is a refused request too: audited, answered, then the stream closes."""
        record = _Record(method="", path="", started=trio.current_time(), status=code, error=err.message)
        await self._emit(record)
        await self._send_error(err, close=True, code=code, reason=reason)

    # -- one request -----------------------------------------------------------------------------------

    async def _exchange(self, head: http1.Head) -> bool:
        """Serve one request; False when the stream must close afterwards."""
        method = head.method.decode("ascii", "replace")
        record = _Record(method=method, path=head.target.decode("ascii", "replace"), started=trio.current_time())
        try:
            target = strip_prefix(self.info.cluster, bytes(head.target))
            record.path = target.raw
            record.request = map_request(method, target)
            try:
                inbound = self.heads.inspect(head.headers)
            except BadParameter as err:
                # Smuggling or a malformed head: the client's framing cannot be trusted any more.
                raise _Malformed(err.message) from None
            if self.ctx.now() >= self.info.cert_expires:
                stamp = format_rfc3339(self.info.cert_expires, fraction="none")
                raise Unauthenticated(f"the client certificate of {self.info.user} expired at {stamp}")
            user, roles = await self._user_access()
            record.roles = tuple(role.name for role in roles)
            found = self.ctx.cluster(self.info.cluster)
            if found is None:
                raise cluster_not_found(self.info.cluster)
            kube_cluster, labels = found
            decision = decide(
                user=user,
                roles=roles,
                cluster=self.info.cluster,
                labels=labels,
                target=target,
                request=record.request,
                inbound=inbound,
                cache=self.ctx.decisions,
                last=self.last_decision,
            )
            self.last_decision = decision
            record.roles = decision.access.roles
            record.identity = decision.identity
            endpoint = await self.ctx.endpoints.endpoint(kube_cluster, self.ctx.exec_credential)
        except KubeportError as err:
            keep = not isinstance(err, WrongCluster | _Malformed) and await self._drain()
            await self._refuse(err, record, close=not keep)
            return keep
        forward = self._forward(head, decision, endpoint, record)
        # Not kept in this frame while the answer streams (a watch: hours): the head, the user resource, the
        # roles and what the decision was built from (the record and the decision keep what is needed).
        del head, target, inbound, user, roles, found, kube_cluster, labels, decision, endpoint
        return await forward

    async def _user_access(self) -> tuple[User, tuple[Role, ...]]:
        try:
            user, roles = await self.ctx.user_access(self.info.user)
        except NotFound:
            raise AccessDenied(f'kubeport user "{self.info.user}" does not exist (any more): access denied') from None
        # Only the roles the certificate was signed with that the user still holds: a role added since must
        # not widen a certificate already issued (its TTL was capped by the roles it named).
        return user, certificate_roles(roles, self.info.roles)

    async def _drain(self) -> bool:
        """Read and drop what is left of the request body (at most DRAIN_LIMIT); True when all of it."""
        size = 0
        try:
            with trio.fail_after(self.limits.head_timeout):
                while not self.reader.done:
                    event = await self._next_event()
                    if isinstance(event, bytes):
                        size += len(event)
                        if size > DRAIN_LIMIT:
                            return False
                    elif event is not http1.END:
                        return False
        except (trio.TooSlowError, http1.HTTPError):
            return False
        return True

    async def _refuse(self, err: KubeportError, record: _Record, *, close: bool) -> None:
        record.status = err.code
        record.error = err.message
        await self._emit(record)
        await self._send_error(err, close=close)

    async def _send_error(self, err: KubeportError, *, close: bool, code: int | None = None, reason: str = "") -> None:
        if self.answer not in (_IDLE, _WAITING):
            return  # an answer already started (or ended): nothing more may go out for this request
        status = err.to_status()
        if code is not None:
            status["code"] = code
            status["reason"] = reason or status["reason"]
        body = json.dumps(status, separators=(",", ":")).encode()
        lines = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        close = close or not self.request_keep
        if close:
            lines.append((b"Connection", b"close"))
        self.answer = _CLOSING if close else _ANSWERED
        code = status["code"]
        head = http1.response_head(code, _PHRASES.get(code, b""), http1.header_block(lines))
        with contextlib.suppress(_ClientGone):
            await self._write(head + body)  # one write: head and body in one tunnel frame

    def _answer_head(
        self, status: int, reason: bytes, lines: list[tuple[bytes, bytes]], *, framed: bool
    ) -> tuple[bytes, bool]:
        """The answer's head for the client, and whether its body goes chunked. ``framed``: the body's
        length is known from ``lines`` (Content-Length) or there is none; otherwise (chunked upstream, an
        HTTP/2 answer without a length, a body until the close) an HTTP/1.1 client gets it chunked and an
        HTTP/1.0 client until the connection closes. ``Connection: close`` when the stream ends after it."""
        chunked = False
        close = not self.request_keep
        if not framed:
            lines = [(n, v) for n, v in lines if n.lower() not in _FRAMING]
            if self.request_v10:
                close = True
            else:
                lines.append((b"Transfer-Encoding", b"chunked"))
                chunked = True
        elif self.request_v10:
            lines = [(n, v) for n, v in lines if n.lower() != b"transfer-encoding"]
        if close:
            lines = [*lines, (b"Connection", b"close")]
        self.close_after = close
        self.answer = _SENDING
        return http1.response_head(status, reason, http1.header_block(lines)), chunked

    def _answered(self) -> None:
        """The answer's last bytes went out."""
        self.answer = _CLOSING if self.close_after else _ANSWERED

    async def _write(self, data: bytes | bytearray | None) -> None:
        if data:
            try:
                await self.stream.send_all(data)
            except _STREAM_ERRORS as exc:
                raise _ClientGone from exc

    # -- forwarding ------------------------------------------------------------------------------------

    async def _forward(self, head: http1.Head, decision: Decision, endpoint: Endpoint, record: _Record) -> bool:
        memo = self.upstream_headers
        if memo is not None and memo[0] is decision.headers and memo[1] is endpoint:
            lines, block = memo[2]  # the previous upstream request's header lines: the same, checked
        else:
            lines = _upstream_headers(decision, endpoint)
            try:
                http1.check_headers(lines)
            except http1.HTTPError:
                return await self._upstream_failed(endpoint.unreachable("its request headers cannot be sent"), record)
            block = http1.header_block(lines)
        self.upstream_headers = (decision.headers, endpoint, (lines, block))
        method = head.method
        target = (endpoint.base_path + decision.target.raw).encode("ascii")
        upstream_head = http1.request_head(method, target, block)
        chunked = head.chunked
        first: UpstreamConnection | None = None
        if self.ctx.h2 is not None and _h2_candidate(head, decision, record) and self.ctx.h2.usable(endpoint):
            # A watch goes on a shared HTTP/2 connection when the API server speaks h2 (upstream_h2); the
            # checks above were the same. An API server that chose http/1.1 gave us a connection for it.
            try:
                got = await self.ctx.h2.open(endpoint, h2_request_headers(endpoint, method, target, lines))
            except UpstreamError as err:
                return await self._upstream_failed(err, record)
            if isinstance(got, H2Exchange):
                # A watch: its answer may stream for hours. Nothing of the request is needed meanwhile, and
                # the per-stream memos are for kubectl's next request of the same kind (rare after a watch):
                # dropped, they are rebuilt once by the next request.
                del head, decision, endpoint, lines, block, upstream_head, memo
                self.last_decision = self.upstream_headers = None
                self.heads = HeadMemo()
                return await self._forward_h2(got, record)
            first = got
        body = _Body(limit=self.limits.replay_body_bytes)
        fresh = False
        relaying = [False]  # True once the answer's head arrived and it is being relayed (not a 101)
        while True:
            try:
                if first is not None:
                    conn, reused, first = first, False, None
                else:
                    conn, reused = await self.ctx.pool.acquire(endpoint, fresh=fresh)
            except UpstreamError as err:
                return await self._upstream_failed(err, record)
            try:
                conn.reader.request_method = method
                await conn.send_raw(upstream_head)
                await self._send_body(body, conn, chunked=chunked)
                # One watcher task for the answer's head and its body (a watcher per phase cost a task more).
                response = await self._watching(
                    lambda conn=conn: self._answer(conn, record, relaying),  # type: ignore[misc]
                    head_of=conn,
                )
            except BaseException as exc:
                await self.ctx.pool.discard(conn)
                if relaying[0]:
                    await self._end_relayed(exc, record)
                if isinstance(exc, UpstreamError):
                    if reused and body.replayable and not fresh:
                        fresh = True  # a kept-alive connection the server had closed: once more on a new one
                        continue
                    return await self._upstream_failed(exc, record)
                if isinstance(exc, _BadBody):  # nothing went to the client yet: a 400, then the stream ends
                    await self._refuse(BadParameter(f"malformed HTTP request body: {exc}"), record, close=True)
                    return False
                if isinstance(exc, _ClientGone):
                    await self._end_relayed(exc, record)  # audited, then the stream ends
                raise
            break
        if not relaying[0]:
            await self._splice(conn, response, decision, record)
            return False
        await self.ctx.pool.release(conn)
        await self._emit(record)
        return True

    async def _answer(self, conn: UpstreamConnection, record: _Record, relaying: list[bool]) -> http1.Head:
        """The answer's head; unless it is a 101, its whole relay to the client too."""
        response = await self._response_head(conn)
        self._head_arrived(conn.endpoint)
        record.status = response.status
        if response.status != 101:
            relaying[0] = True
            await self._relay(conn, response)
        return response

    def _head_arrived(self, endpoint: Endpoint) -> None:
        scope = self.head_scope
        if scope is not None:
            scope.deadline = math.inf  # the head arrived: a body may stream for hours
            self.head_scope = None
            if scope.cancel_called and not self._peer_gone(scope):  # it came just as the limit ran out
                raise endpoint.unreachable(f"no answer within {self.limits.response_head_timeout:g}s")

    # -- forwarding over HTTP/2 (a watch on a shared connection) --------------------------------------

    async def _forward_h2(self, exchange: H2Exchange, record: _Record) -> bool:
        """:meth:`_forward` of a body-less request sent on an HTTP/2 stream: the answer goes to the client
        as HTTP/1.1 (chunked, or the length the API server declared, checked), with the same
        time limits, client watching, audit and abort rules as an answer read over HTTP/1.1."""
        relaying = [False]
        try:
            event = await self._next_event_within(self.limits.head_timeout)  # the GET's end, already here
            if event is not http1.END:
                raise _ClientGone
            await self._watching(lambda: self._answer_h2(exchange, record, relaying), head_of=exchange)
        except BaseException as exc:
            await exchange.aclose()  # resets the stream unless its answer ended
            if relaying[0]:
                await self._end_relayed(exc, record)
            if isinstance(exc, UpstreamError):
                return await self._upstream_failed(exc, record)
            if isinstance(exc, trio.TooSlowError | http1.HTTPError):
                await self._end_relayed(_ClientGone(), record)
            raise
        await exchange.aclose()
        await self._emit(record)
        return True

    async def _answer_h2(self, exchange: H2Exchange, record: _Record, relaying: list[bool]) -> None:
        if self.head_scope is not None:
            status, headers = await exchange.head()
        else:
            with trio.move_on_after(self.limits.response_head_timeout) as timer:
                status, headers = await exchange.head()
            if timer.cancelled_caught:
                raise exchange.endpoint.unreachable(f"no answer within {self.limits.response_head_timeout:g}s")
        self._head_arrived(exchange.endpoint)
        lines = _response_headers_h2(headers)
        length: int | None = None
        try:
            # Checked before anything goes out: a hostile head is a 502, not a break.
            if not 200 <= status <= 599:
                raise http1.HTTPError("an answer status kubectl cannot get")
            http1.check_headers(lines)
            declared = [v for n, v in lines if n.lower() == b"content-length"]
            if declared:
                if len(declared) > 1 or not declared[0].isdigit():
                    raise http1.HTTPError("a duplicate or invalid content-length")
                length = int(declared[0])
        except http1.HTTPError:
            raise exchange.endpoint.unreachable("an unusable HTTP/2 answer head") from None
        record.status = status
        relaying[0] = True
        head, chunked = self._answer_head(status, _PHRASES.get(status, b""), lines, framed=length is not None)
        relay = self._relay_h2(exchange, head, chunked, length)
        del headers, lines, head  # not kept in this frame while the answer streams (a watch: hours)
        await relay

    async def _relay_h2(self, exchange: H2Exchange, head: bytes, chunked: bool, length: int | None) -> None:
        """The body: what arrived goes out in one write, then its DATA is acknowledged (flow control
        follows the client: a kubectl that does not read stalls only its own stream). A declared length is
        held to: more or less body than that is never relayed as complete."""
        limit = self.limits.relay_write
        taken = 0
        left = math.inf if length is None else length
        out = _Outgoing(head, chunked)
        try:
            while True:
                if out.size and not (out.size < limit and exchange.more_arrived()):
                    await self._write(out.take())
                    await exchange.consumed(taken)
                    taken = 0
                pieces = await exchange.next_data()
                if pieces is None:
                    if left and left != math.inf:
                        raise _Abort("the API server's answer did not match its declared length")
                    await self._write(out.take(end=True))
                    self._answered()
                    await exchange.consumed(taken)
                    return
                for piece in pieces:
                    left -= len(piece)
                    if left < 0:
                        raise _Abort("the API server's answer did not match its declared length")
                    out.add(piece)
                    taken += len(piece)
        except UpstreamError as err:
            await self._write(out.take())  # what arrived before the break still goes out
            raise _Abort(err.message) from None

    async def _upstream_failed(self, err: UpstreamError, record: _Record) -> bool:
        keep = await self._drain()
        await self._refuse(err, record, close=not keep)
        return keep

    async def _send_body(self, body: _Body, conn: UpstreamConnection, *, chunked: bool) -> None:
        """The request's body upstream as it arrives (chunked as it came chunked; a declared length as is),
        the first ``body.limit`` bytes kept to send again on a fresh connection."""
        frame = http1.chunk if chunked else bytes
        for piece in body.recorded:
            await conn.send_raw(frame(piece))
        while not body.done:
            try:
                event = await self._next_event_within(self.limits.head_timeout)
            except trio.TooSlowError as exc:
                raise _ClientGone from exc
            except http1.HTTPError as exc:
                raise _BadBody(exc.message) from None
            if isinstance(event, bytes):
                if body.replayable and body.size + len(event) <= body.limit:
                    body.recorded.append(event)
                    body.size += len(event)
                else:
                    body.replayable = False
                    body.recorded.clear()
                await conn.send_raw(frame(event))
            elif event is http1.END:
                body.done = True
            else:
                raise _ClientGone
        if chunked:
            await conn.send_raw(http1.LAST_CHUNK)
        conn.request_done = True

    async def _response_head(self, conn: UpstreamConnection) -> http1.Head:
        # Under _watching on a tunnel stream the head's time limit is the deadline of its scope (head_scope):
        # no second cancel scope per request. Elsewhere it has its own.
        if self.head_scope is not None:
            return await self._head_of(conn)
        with trio.move_on_after(self.limits.response_head_timeout):
            return await self._head_of(conn)
        raise conn.endpoint.unreachable(f"no answer within {self.limits.response_head_timeout:g}s")

    async def _head_of(self, conn: UpstreamConnection) -> http1.Head:
        while True:
            event = await conn.next_event()
            if not isinstance(event, http1.Head):
                raise conn.endpoint.unreachable("the connection closed before an answer")
            if event.status >= 200 or event.status == 101:
                return event
            # 100 Continue, 102, 103: not for kubectl; the answer follows
            await conn.next_event()  # its END
            conn.reader.next_cycle()

    async def _relay(self, conn: UpstreamConnection, response: http1.Head) -> None:
        """Move the answer to the client. What is already read from upstream goes out as one write (a small
        answer: head, body and end in one tunnel frame), flushed before waiting for more from upstream --
        except an answer whose declared length fits one chunk: it is held until complete, so an API server
        that writes its head and body separately still costs one tunnel frame, not two (a client has no use
        for such a head without its body; a watch or any chunked answer is flushed as it comes)."""
        lines = _response_headers(response.headers)
        status = response.status
        bodiless = conn.reader.request_method == b"HEAD" or status in (204, 304)
        framed = bodiless or response.length is not None
        hold = bodiless or (response.length is not None and response.length <= self.limits.splice_chunk)
        chunk = self.limits.relay_write
        head, chunked = self._answer_head(status, response.reason, lines, framed=framed)
        if chunked and response.chunked:
            await self._relay_chunked(conn, head, keep_alive=response.keep_alive)
            return
        out = _Outgoing(head, chunked)
        try:
            while True:
                event = conn.poll_event()
                if event is http1.NEED_DATA:
                    # Write what is pending unless more of the answer already arrived (a bulk body's next
                    # TLS records): that goes into the same write.
                    if out.size and not hold and not (out.size < chunk and conn.more_arrived()):
                        await self._write(out.take())
                    await conn.receive(self.limits.splice_chunk)
                    continue
                if isinstance(event, bytes):
                    out.add(event)
                    if out.size >= chunk:
                        await self._write(out.take())
                elif event is http1.END:
                    await self._write(out.take(end=True))
                    self._answered()
                    return
                else:
                    await self._write(out.take())
                    raise _Abort("the API server closed the connection mid-response")
        except UpstreamError as err:
            await self._write(out.take())  # what arrived before the break still goes out
            raise _Abort(err.message) from None

    async def _relay_chunked(self, conn: UpstreamConnection, head: bytes, *, keep_alive: bool) -> None:
        """:meth:`_relay` of a chunked answer to a client that gets it chunked too: the body's bytes go out
        as the API server framed them, checked by :class:`ChunkedRelay` on the way (no decoding into
        events and encoding into new chunks; a watch event costs a slice). Same writes as :meth:`_relay`:
        what arrived goes out at once unless more of the answer is already here; a malformed or oversized
        chunk, or an upstream that breaks or closes, ends the answer without its last chunk (after what
        was checked good went out), so it never looks complete."""
        relay = ChunkedRelay()
        limit = self.limits.relay_write
        pending = [head]
        size = len(head)
        data = conn.take_body_start()
        try:
            while True:
                if data:
                    piece = relay.feed(data)
                    if piece:
                        pending.append(piece)
                        size += len(piece)
                    if relay.done:
                        pending.append(http1.LAST_CHUNK)
                        await self._write(b"".join(pending))
                        self._answered()
                        conn.end_raw_body(relay.extra, keep_alive=keep_alive)
                        return
                if size and not (size < limit and conn.more_arrived()):
                    await self._write(pending[0] if len(pending) == 1 else b"".join(pending))
                    pending, size = [], 0
                data = await conn.receive_raw(self.limits.splice_chunk)
                if not data:
                    raise conn.endpoint.unreachable("the API server closed the connection mid-response")
        except (ChunkError, UpstreamError) as err:
            if isinstance(err, ChunkError):
                pending.append(err.checked)
            if any(pending):
                await self._write(b"".join(pending))  # what arrived and was checked before the break
            raise _Abort(str(err)) from None

    async def _watching(
        self, work: Callable[[], Awaitable[T]], *, head_of: UpstreamConnection | H2Exchange | None = None
    ) -> T:
        """Run ``work`` while watching the client: if it goes away, ``work`` is cancelled -> _ClientGone.

        A tunnel stream says itself when its peer ends or resets it (``watch_peer_end``): no watcher task is
        started, woken and cancelled per request, and what the client sends meanwhile waits in the stream
        (within its window) for the next request. Any other stream gets a watcher task that reads it.

        ``head_of``: ``work`` waits for this connection's answer head first. On a tunnel stream the watching
        scope's deadline is then the response head time limit until :meth:`_answer` lifts it; running out
        is the same 502 as :meth:`_response_head` gives on its own."""
        watch = getattr(self.stream, "watch_peer_end", None)
        if watch is not None:
            limit = math.inf if head_of is None else trio.current_time() + self.limits.response_head_timeout
            with trio.CancelScope(deadline=limit) as scope:
                self.head_scope = scope if head_of is not None else None
                watch(scope)
                try:
                    job = work()
                    del work  # the closure is not kept while the answer streams (a watch: hours)
                    return await job
                finally:
                    watch(None)
                    waiting_for_head, self.head_scope = self.head_scope is not None, None
            assert scope.cancelled_caught
            if head_of is not None and waiting_for_head and trio.current_time() >= limit and not self._peer_gone():
                raise head_of.endpoint.unreachable(f"no answer within {self.limits.response_head_timeout:g}s")
            self.client_gone = True
            raise _ClientGone
        result: list[T] = []
        error: list[Exception] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_client, nursery.cancel_scope)
            try:
                result.append(await work())
            except Exception as exc:
                error.append(exc)
            nursery.cancel_scope.cancel()
        if error:
            raise error[0]
        if not result:
            raise _ClientGone
        return result[0]

    def _peer_gone(self, watching: trio.CancelScope | None = None) -> bool:
        """Whether the tunnel stream's peer ended or reset it (what ``watch_peer_end`` reacts to); the
        stream is left watching for ``watching`` (the scope it watched for before) afterwards."""
        probe = trio.CancelScope()
        self.stream.watch_peer_end(probe)  # type: ignore[attr-defined]  # cancels at once when it happened
        self.stream.watch_peer_end(watching)  # type: ignore[attr-defined]
        return probe.cancel_called

    async def _watch_client(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                if len(self.reader.buffer) > self.limits.max_head_bytes:
                    await trio.sleep_forever()  # a pipelining client waits for its turn
                data = await self.stream.receive_some(self.limits.splice_chunk)
                if not data:
                    break
                # Nothing should come while a response streams; keep it for the next request (or the
                # upgraded protocol) so the byte stream stays whole.
                self.reader.feed(bytes(data))
        except _STREAM_ERRORS:
            pass
        self.client_gone = True
        scope.cancel()

    # -- upgrades --------------------------------------------------------------------------------------

    async def _splice(
        self,
        conn: UpstreamConnection,
        response: http1.Head,
        decision: Decision,
        record: _Record,
    ) -> None:
        try:
            if not decision.upgrade:
                raise conn.endpoint.unreachable("101 Switching Protocols to a request that asked for no upgrade")
        except UpstreamError as err:
            await self.ctx.pool.discard(conn)
            await self._refuse(err, record, close=True)
            return
        # The 101 goes out as the API server wrote it (its lines were checked when it was read); no request
        # is read on this stream any more.
        self.answer = _CLOSING
        await self._write(http1.response_head(101, response.reason, http1.header_block(response.headers)))
        await self._emit(record)
        assert record.request is not None
        assert record.identity is not None
        session_id = str(uuid.uuid4())
        protocol = _joined(response, b"upgrade")
        subprotocol = _joined(response, b"sec-websocket-protocol")
        stream_protocol = _joined(response, b"x-stream-protocol-version")
        # exec/attach end with an exit status on the error channel: read passively from copies of the bytes
        exits = record.request.subresource in ("exec", "attach")
        tap = exit_taps.tap_for(protocol, subprotocol, stream_protocol) if exits else None
        session = partial(
            audit_events.session_event,
            session_id=session_id,
            info=self.info,
            host=self.ctx.host,
            request=record.request,
            identity=record.identity,
            protocol=protocol,
        )
        await self._emit_event(session(audit_events.SESSION_START, now=self.ctx.now()))
        started = trio.current_time()
        up, down = [0], [0]
        client_extra = self.reader.take_buffer()
        upstream_extra = conn.reader.take_buffer()
        try:
            with contextlib.suppress(*_STREAM_ERRORS, UpstreamError):
                if upstream_extra:
                    await self.stream.send_all(upstream_extra)
                    down[0] += len(upstream_extra)
                    if tap is not None:
                        tap.feed_server(upstream_extra)
                if client_extra:
                    if tap is not None:
                        tap.feed_client(client_extra)
                    await conn.send_raw(client_extra)
                    up[0] += len(client_extra)
                async with trio.open_nursery() as nursery:
                    copy = partial(self._copy, scope=nursery.cancel_scope, tap=tap)
                    nursery.start_soon(partial(copy, self.stream, conn.stream, up, from_client=True))
                    nursery.start_soon(partial(copy, conn.stream, self.stream, down))
        finally:
            await self.ctx.pool.discard(conn)
            if tap is not None:
                ended = tap.result()
            elif exits:
                ended = exit_taps.untapped(protocol, subprotocol, stream_protocol)
            else:
                ended = ExitStatus(None, f"a {record.request.subresource or 'upgraded'} session has no exit code")
            end = session(
                audit_events.SESSION_END,
                now=self.ctx.now(),
                extra={
                    "bytes_from_client": up[0],
                    "bytes_to_client": down[0],
                    "duration_ms": round((trio.current_time() - started) * 1000, 3),
                    "exit_code": ended.code,
                    **({"exit_code_reason": ended.reason} if ended.code is None else {}),
                },
            )
            with trio.CancelScope(shield=True):
                await self._emit_event(end)

    async def _copy(
        self,
        source: trio.abc.ReceiveStream,
        sink: trio.abc.SendStream,
        counter: list[int],
        scope: trio.CancelScope,
        *,
        tap: exit_taps.Tap | None = None,
        from_client: bool = False,
    ) -> None:
        try:
            while True:
                data = await source.receive_some(self.limits.splice_chunk)
                if not data:
                    break
                if tap is not None and from_client and tap.wants_client_data:
                    # before the send: the server's answer to these bytes must not reach the tap first
                    tap.feed_client(data)
                await sink.send_all(data)
                counter[0] += len(data)
                if tap is not None and not from_client and tap.wants_data:
                    tap.feed_server(data)  # after the send: the tap never delays kubectl's bytes
        except _STREAM_ERRORS:
            pass
        finally:
            scope.cancel()  # either side ending ends the session: both close

    # -- audit -----------------------------------------------------------------------------------------

    async def _end_relayed(self, exc: BaseException, record: _Record) -> NoReturn:
        """An exchange that cannot be answered any more broke (kubectl had started to get the answer, or
        went away before it): audit why, then end the connection (an upstream failure as :class:`_Abort`:
        kubectl's answer is cut, never completed by a Status)."""
        record.error = "the client went away" if isinstance(exc, _ClientGone) else "the exchange broke"
        if isinstance(exc, UpstreamError):
            record.error = exc.message
            exc = _Abort()
        await self._emit(record)
        if isinstance(exc, Exception):
            raise exc from None
        raise exc

    async def _emit(self, record: _Record) -> None:
        if record.emitted:
            return
        record.emitted = True
        # One count per answered request, beside its audit event; the cluster label is the stream's
        # kube_cluster name (validated by StreamInfo), never anything from the request line.
        counter = self.proxied.get(record.status)
        if counter is None:  # labels() costs ~4 us; a connection mostly repeats one code, so keep its child
            counter = self.proxied[record.status] = PROXIED.labels(self.info.cluster, str(record.status))
        counter.inc()
        event = audit_events.request_event(
            info=self.info,
            host=self.ctx.host,
            now=self.ctx.now(),
            method=record.method,
            path=record.path,
            request=record.request,
            roles=record.roles,
            identity=record.identity,
            status=record.status,
            duration_ms=(trio.current_time() - record.started) * 1000,
            error=record.error,
        )
        await self._emit_event(event)

    async def _emit_event(self, event: dict[str, Any]) -> None:
        try:
            await self.ctx.audit(event)
        except Exception:
            # Auditing must never break forwarding; the production callback only queues (AuditBatcher).
            log.exception("the audit callback failed for a %s event", event.get("event"))


class _Outgoing:
    """The bytes of a relayed answer not yet written to the client: body pieces are joined into one
    HTTP/1.1 chunk per write (one chunk header, one parse for kubectl, whatever the upstream's pieces)."""

    __slots__ = ("_body", "_chunked", "_head", "size")  # one per streaming answer, alive as long as a watch

    def __init__(self, head: bytes, chunked: bool) -> None:
        self._head = head
        self._chunked = chunked
        self._body: list[bytes] = []
        self.size = len(head)

    def add(self, data: bytes) -> None:
        self._body.append(data)
        self.size += len(data)

    def take(self, *, end: bool = False) -> bytes:
        """Everything pending as wire bytes (with the end of the body if ``end``); empties the buffer."""
        parts = [self._head] if self._head else []
        if self._body:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            parts.append(http1.chunk(body) if self._chunked else body)
        if end and self._chunked:
            parts.append(http1.LAST_CHUNK)
        self._head, self._body, self.size = b"", [], 0
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _h2_candidate(head: http1.Head, decision: Decision, record: _Record) -> bool:
    """Whether a request goes over HTTP/2 when it can: a watch (a GET that streams for long: the
    connection it would hold is what sharing saves), without a body, not an upgrade."""
    if head.method != b"GET" or decision.upgrade or record.request is None or record.request.verb != "watch":
        return False
    return not head.chunked and not head.length


def _response_headers_h2(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 answer's headers for an HTTP/1.1 client: no pseudo-headers (the core dropped them), no
    hop-by-hop ones (h2 refuses connection-specific headers already; this holds whatever h2 lets by)."""
    return [(n, v) for n, v in headers if n.lower() not in _RESPONSE_HOP_BY_HOP and n.lower() != b"transfer-encoding"]


def _upstream_headers(decision: Decision, endpoint: Endpoint) -> list[tuple[bytes, bytes]]:
    headers = [*decision.headers, (b"Host", endpoint.host_header)]
    if endpoint.authorization is not None:
        headers.append((b"Authorization", endpoint.authorization))
    return headers


def _joined(response: http1.Head, name: bytes) -> str:
    """Every value of header ``name`` in ``response``, comma-joined."""
    return b", ".join(v for n, v in response.headers if n.lower() == name).decode("latin-1")


def _response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The answer's headers for the client, without hop-by-hop ones and those its ``Connection`` lists.
    When there is nothing to drop (the usual answer) it is the head's own list (checked when it was read)."""
    lowered = [name.lower() for name, _ in headers]
    if _RESPONSE_HOP_BY_HOP.isdisjoint(lowered):
        return headers
    listed = {
        token.strip().lower()
        for (_, value), name in zip(headers, lowered, strict=True)
        if name == b"connection"
        for token in value.split(b",")
        if token.strip()
    }
    return [
        (n, v)
        for (n, v), name in zip(headers, lowered, strict=True)
        if name not in _RESPONSE_HOP_BY_HOP and name not in listed
    ]


__all__ = ["Target", "handle_stream"]
