"""The forwarder: an h11 server on one tunnel stream, forwarding each request to the cluster's API server.

:func:`handle_stream` serves one kubectl connection (one tunnel stream, bound to one cluster and one user
by its :class:`~registry.core.tunnel_info.StreamInfo`) until the client leaves, the stream must close, or
the user's certificate expires. For **every** request read from the stream, in this order (pure steps in
:mod:`agent.forward.decide`): the raw path must carry the stream's cluster prefix (else 400 and the stream
closes: a request for another cluster is refused, never routed), the prefix is stripped, the request is
mapped, the header rules are applied, the user's *current* user resource and roles are fetched
(``ForwardContext.user_access``), the cluster's labels are looked up in the served-cluster table (gone ->
404), the role engine decides, and the request goes upstream with our impersonation headers, the
cluster's own credential and the API server's ``Host``.

Streaming: request and response bodies are moved event by event (h11 on both sides), never buffered whole, so
watches, ``logs -f`` and large lists flow as they come. What is written is what already arrived: a watch event
goes out at once; a bulk answer's TLS records already received are joined into one write (up to
``ForwardLimits.relay_write``), never waiting for bytes still to come. A chunked answer to a client that gets
it chunked keeps the API server's chunks: their framing is checked on the way (:mod:`agent.forward.chunked`),
the bytes are not decoded and encoded again; any other answer is re-framed by h11, one chunk per write.
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
import json
import logging
import math
import ssl
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn, TypeVar

import h11
import trio
from prometheus_client import Counter

from agent.forward import audit as audit_events
from agent.forward import exit_taps
from agent.forward.chunked import ChunkedRelay, ChunkError
from agent.forward.context import ForwardContext
from agent.forward.decide import Decision, HeadMemo, Target, WrongCluster, decide, map_request, strip_prefix
from agent.forward.exit_status import ExitStatus
from agent.forward.upstream import Endpoint, UpstreamConnection, UpstreamError
from agent.forward.upstream_h2 import H2Exchange, h2_request_headers
from registry.core.errors import AccessDenied, BadParameter, KubeportError, NotFound, Timeout, Unauthenticated
from registry.core.kube_access import Identity, cluster_not_found
from registry.core.kube_request import KubeRequest
from registry.core.resources import Role, User
from registry.core.timefmt import format_rfc3339
from registry.core.tunnel_info import StreamInfo
from registry.host.metrics import PROXIED

log = logging.getLogger(__name__)

try:  # h11's body framing classes, to tell a chunked answer relayed chunked (see _chunked_both)
    from h11._readers import ChunkedReader as _CHUNKED_READER
    from h11._writers import ChunkedWriter as _CHUNKED_WRITER
except ImportError:  # pragma: no cover - an h11 that moved them: answers are relayed event by event
    _CHUNKED_READER = _CHUNKED_WRITER = None  # type: ignore[assignment,misc]

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
# Response headers that belong to one hop (RFC 9110 §7.6.1); framing headers stay: h11 re-frames with them.
_RESPONSE_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"proxy-authenticate"}
)
DRAIN_LIMIT = 1024 * 1024  # the most of a refused request's body read to keep its connection alive

T = TypeVar("T")


class _ClientGone(Exception):
    """The client closed or broke the stream."""


class _Malformed(BadParameter):
    """A request head the header rules refuse as smuggling or malformed: answered, then the stream closes."""


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
        "client_gone",
        "conn",
        "ctx",
        "expires_at",
        "head_scope",
        "heads",
        "info",
        "last_decision",
        "limits",
        "proxied",
        "scope",
        "stream",
        "upstream_headers",
    )

    def __init__(self, stream: trio.abc.HalfCloseableStream, info: StreamInfo, ctx: ForwardContext) -> None:
        self.stream = stream
        self.info = info
        self.ctx = ctx
        self.limits = ctx.limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        self.client_gone = False
        self.proxied: dict[int, Counter] = {}  # HTTP code -> this cluster's kubeport_proxied_requests_total child
        # Per-stream memos of pure steps (kubectl repeats its head on every kept-alive request): the header
        # rules' last result, the last decision (its upstream headers), and the h11 Headers of the last
        # upstream request with the endpoint they were built for (h11 validated them when it built them).
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
                if send_eof is not None and self.conn.our_state not in (h11.SEND_RESPONSE, h11.SEND_BODY):
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
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(self.limits.splice_chunk)
        except _STREAM_ERRORS as exc:
            raise _ClientGone from exc
        self.conn.receive_data(bytes(data))

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive()

    async def _next_event_within(self, seconds: float) -> Any:
        """The next client event, waiting at most ``seconds`` for more bytes (``trio.TooSlowError``). No
        timer when it is already buffered, the usual case (a whole head, a GET's end): a cancel scope per
        event is measurable per request."""
        event = self.conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(seconds):
            return await self._next_event()

    async def _read_head(self) -> h11.Request | None:
        try:
            buffered, closed = self.conn.trailing_data
            if not buffered and not closed:
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
        except h11.RemoteProtocolError as exc:
            code = exc.error_status_hint
            reason = "RequestHeaderFieldsTooLarge" if code == 431 else "BadRequest"
            await self._refuse_head(KubeportError(f"malformed HTTP request: {exc}"), code, reason)
            return None
        return event if isinstance(event, h11.Request) else None

    async def _refuse_head(self, err: KubeportError, code: int, reason: str) -> None:
        """A head that cannot be read is a refused request too: audited, answered, then the stream closes."""
        record = _Record(method="", path="", started=trio.current_time(), status=code, error=err.message)
        await self._emit(record)
        await self._send_error(err, close=True, code=code, reason=reason)

    # -- one request -----------------------------------------------------------------------------------

    async def _exchange(self, head: h11.Request) -> bool:
        """Serve one request; False when the stream must close afterwards."""
        method = head.method.decode("ascii", "replace")
        record = _Record(method=method, path=head.target.decode("ascii", "replace"), started=trio.current_time())
        try:
            target = strip_prefix(self.info.cluster, bytes(head.target))
            record.path = target.raw
            record.request = map_request(method, target)
            try:
                inbound = self.heads.inspect(head.headers.raw_items())
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
            return await self.ctx.user_access(self.info.user)
        except NotFound:
            raise AccessDenied(f'kubeport user "{self.info.user}" does not exist (any more): access denied') from None

    async def _drain(self) -> bool:
        """Read and drop what is left of the request body (at most DRAIN_LIMIT); True when all of it."""
        size = 0
        try:
            with trio.fail_after(self.limits.head_timeout):
                while self.conn.their_state is h11.SEND_BODY:
                    event = await self._next_event()
                    if isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > DRAIN_LIMIT:
                            return False
                    elif not isinstance(event, h11.EndOfMessage):
                        return False
        except (trio.TooSlowError, h11.RemoteProtocolError):
            return False
        return True

    async def _refuse(self, err: KubeportError, record: _Record, *, close: bool) -> None:
        record.status = err.code
        record.error = err.message
        await self._emit(record)
        await self._send_error(err, close=close)

    async def _send_error(self, err: KubeportError, *, close: bool, code: int | None = None, reason: str = "") -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = err.to_status()
        if code is not None:
            status["code"] = code
            status["reason"] = reason or status["reason"]
        body = json.dumps(status, separators=(",", ":")).encode()
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        if close:
            headers.append((b"Connection", b"close"))
        out = bytearray()  # one write: head, body and end in one tunnel frame
        with contextlib.suppress(_ClientGone, h11.LocalProtocolError):
            try:
                for event in (h11.Response(status_code=status["code"], headers=headers), h11.Data(data=body)):
                    out += self.conn.send(event) or b""
                out += self.conn.send(h11.EndOfMessage()) or b""
            finally:
                await self._write(out)

    async def _send(self, event: Any) -> None:
        await self._write(self.conn.send(event))

    async def _write(self, data: bytes | bytearray | None) -> None:
        if data:
            try:
                await self.stream.send_all(data)
            except _STREAM_ERRORS as exc:
                raise _ClientGone from exc

    # -- forwarding ------------------------------------------------------------------------------------

    async def _forward(self, head: h11.Request, decision: Decision, endpoint: Endpoint, record: _Record) -> bool:
        memo = self.upstream_headers
        if memo is not None and memo[0] is decision.headers and memo[1] is endpoint:
            headers = memo[2]  # the h11 Headers of the previous upstream request: the same lines, validated
        else:
            headers = _upstream_headers(decision, endpoint)
        upstream_head = h11.Request(
            method=head.method, target=(endpoint.base_path + decision.target.raw).encode("ascii"), headers=headers
        )
        self.upstream_headers = (decision.headers, endpoint, upstream_head.headers)
        first: UpstreamConnection | None = None
        if self.ctx.h2 is not None and _h2_candidate(head, decision, record) and self.ctx.h2.usable(endpoint):
            # A watch goes on a shared HTTP/2 connection when the API server speaks h2 (upstream_h2); the
            # checks above were the same. An API server that chose http/1.1 gave us a connection for it.
            try:
                got = await self.ctx.h2.open(endpoint, h2_request_headers(endpoint, upstream_head))
            except UpstreamError as err:
                return await self._upstream_failed(err, record)
            if isinstance(got, H2Exchange):
                # A watch: its answer may stream for hours. Nothing of the request is needed meanwhile, and
                # the per-stream memos are for kubectl's next request of the same kind (rare after a watch):
                # dropped, they are rebuilt once by the next request.
                del head, decision, endpoint, headers, upstream_head, memo
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
                await conn.send(upstream_head)
                await self._send_body(body, conn)
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
                raise
            break
        if not relaying[0]:
            await self._splice(conn, response, decision, record)
            return False
        await self.ctx.pool.release(conn)
        await self._emit(record)
        return True

    async def _answer(
        self, conn: UpstreamConnection, record: _Record, relaying: list[bool]
    ) -> h11.Response | h11.InformationalResponse:
        """The answer's head; unless it is a 101, its whole relay to the client too."""
        response = await self._response_head(conn)
        self._head_arrived(conn.endpoint)
        record.status = response.status_code
        if response.status_code != 101:
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
        as HTTP/1.1 (h11 frames it: chunked, or the length the API server declared, checked), with the same
        time limits, client watching, audit and abort rules as an answer read over HTTP/1.1."""
        relaying = [False]
        try:
            event = await self._next_event_within(self.limits.head_timeout)  # the GET's end, already here
            if not isinstance(event, h11.EndOfMessage):
                raise _ClientGone
            await self._watching(lambda: self._answer_h2(exchange, record, relaying), head_of=exchange)
        except BaseException as exc:
            await exchange.aclose()  # resets the stream unless its answer ended
            if relaying[0]:
                await self._end_relayed(exc, record)
            if isinstance(exc, UpstreamError):
                return await self._upstream_failed(exc, record)
            if isinstance(exc, trio.TooSlowError | h11.RemoteProtocolError):
                raise _ClientGone from None
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
        try:
            # Built (and so validated by h11) before anything goes out: a hostile head is a 502, not a break.
            response = h11.Response(status_code=status, headers=_response_headers_h2(headers))
        except h11.LocalProtocolError:
            raise exchange.endpoint.unreachable("an unusable HTTP/2 answer head") from None
        record.status = status
        relaying[0] = True
        relay = self._relay_h2(exchange, response)
        del headers, response  # not kept in this frame while the answer streams (a watch: hours)
        await relay

    async def _relay_h2(self, exchange: H2Exchange, response: h11.Response) -> None:
        """The body: what arrived goes out in one write, then its DATA is acknowledged (flow control
        follows the client: a kubectl that does not read stalls only its own stream)."""
        limit = self.limits.relay_write
        taken = 0
        try:
            out = _Outgoing(self.conn, self.conn.send(response) or b"")
            del response  # sent: not kept in this frame while the answer streams
            while True:
                if out.size and not (out.size < limit and exchange.more_arrived()):
                    await self._write(out.take())
                    await exchange.consumed(taken)
                    taken = 0
                pieces = await exchange.next_data()
                if pieces is None:
                    await self._write(out.take(h11.EndOfMessage()))
                    await exchange.consumed(taken)
                    return
                for piece in pieces:
                    out.add(piece)
                    taken += len(piece)
        except UpstreamError as err:
            with contextlib.suppress(h11.LocalProtocolError):
                await self._write(out.take())  # what arrived before the break still goes out
            raise _Abort(err.message) from None
        except h11.LocalProtocolError:
            # More or less body than the API server's Content-Length: never relayed as complete.
            raise _Abort("the API server's answer did not match its declared length") from None

    async def _upstream_failed(self, err: UpstreamError, record: _Record) -> bool:
        keep = await self._drain()
        await self._refuse(err, record, close=not keep)
        return keep

    async def _send_body(self, body: _Body, conn: UpstreamConnection) -> None:
        for chunk in body.recorded:
            await conn.send(h11.Data(data=chunk))
        while not body.done:
            try:
                event = await self._next_event_within(self.limits.head_timeout)
            except (trio.TooSlowError, h11.RemoteProtocolError) as exc:
                raise _ClientGone from exc
            if isinstance(event, h11.Data):
                data = bytes(event.data)
                if body.replayable and body.size + len(data) <= body.limit:
                    body.recorded.append(data)
                    body.size += len(data)
                else:
                    body.replayable = False
                    body.recorded.clear()
                await conn.send(h11.Data(data=data))
            elif isinstance(event, h11.EndOfMessage):
                body.done = True
            else:
                raise _ClientGone
        await conn.send(h11.EndOfMessage())

    async def _response_head(self, conn: UpstreamConnection) -> h11.Response | h11.InformationalResponse:
        # Under _watching on a tunnel stream the head's time limit is the deadline of its scope (head_scope):
        # no second cancel scope per request. Elsewhere it has its own.
        if self.head_scope is not None:
            return await self._head_of(conn)
        with trio.move_on_after(self.limits.response_head_timeout):
            return await self._head_of(conn)
        raise conn.endpoint.unreachable(f"no answer within {self.limits.response_head_timeout:g}s")

    async def _head_of(self, conn: UpstreamConnection) -> h11.Response | h11.InformationalResponse:
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return event
                continue  # 100 Continue, 102, 103: not for kubectl
            raise conn.endpoint.unreachable("the connection closed before an answer")

    async def _relay(self, conn: UpstreamConnection, response: h11.Response | h11.InformationalResponse) -> None:
        """Move the answer to the client. What is already read from upstream goes out as one write (a small
        answer: head, body and end in one tunnel frame), flushed before waiting for more from upstream --
        except an answer whose declared length fits one chunk: it is held until complete, so an API server
        that writes its head and body separately still costs one tunnel frame, not two (a client has no use
        for such a head without its body; a watch or any chunked answer is flushed as it comes)."""
        headers = _response_headers(response.headers)
        hold = _declared_length(headers) <= self.limits.splice_chunk
        chunk = self.limits.relay_write
        head = self.conn.send(h11.Response(status_code=response.status_code, headers=headers, reason=response.reason))
        if _chunked_both(conn.h11, self.conn):
            await self._relay_chunked(conn, head or b"")
            return
        out = _Outgoing(self.conn, head or b"")
        try:
            while True:
                event = conn.poll_event()
                if event is h11.NEED_DATA:
                    # Write what is pending unless more of the answer already arrived (a bulk body's next
                    # TLS records): that goes into the same write.
                    if out.size and not hold and not (out.size < chunk and conn.more_arrived()):
                        await self._write(out.take())
                    await conn.receive(self.limits.splice_chunk)
                    continue
                if isinstance(event, h11.Data):
                    out.add(event.data)
                    if out.size >= chunk:
                        await self._write(out.take())
                elif isinstance(event, h11.EndOfMessage):
                    await self._write(out.take(h11.EndOfMessage()))
                    return
                else:
                    await self._write(out.take())
                    raise _Abort("the API server closed the connection mid-response")
        except UpstreamError as err:
            await self._write(out.take())  # what arrived before the break still goes out
            raise _Abort(err.message) from None

    async def _relay_chunked(self, conn: UpstreamConnection, head: bytes) -> None:
        """:meth:`_relay` of a chunked answer to a client that gets it chunked too: the body's bytes go out
        as the API server framed them, checked by :class:`ChunkedRelay` on the way (no decoding into
        events and encoding into new chunks; a watch event costs a slice, not two h11 calls). Same writes
        as :meth:`_relay`: what arrived goes out at once unless more of the answer is already here; a
        malformed or oversized chunk, or an upstream that breaks or closes, ends the answer without its
        last chunk (after what was checked good went out), so it never looks complete."""
        relay = ChunkedRelay()
        limit = self.limits.relay_write
        pending = [head] if head else []
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
                        pending.append(self.conn.send(h11.EndOfMessage()) or b"")
                        await self._write(b"".join(pending))
                        conn.end_raw_body(relay.extra)
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
                if len(self.conn.trailing_data[0]) > self.limits.max_head_bytes:
                    await trio.sleep_forever()  # a pipelining client waits for its turn
                data = await self.stream.receive_some(self.limits.splice_chunk)
                if not data:
                    break
                # Nothing should come while a response streams; keep it for the next request (or the
                # upgraded protocol) so the byte stream stays whole.
                self.conn.receive_data(bytes(data))
        except _STREAM_ERRORS:
            pass
        self.client_gone = True
        scope.cancel()

    # -- upgrades --------------------------------------------------------------------------------------

    async def _splice(
        self,
        conn: UpstreamConnection,
        response: h11.Response | h11.InformationalResponse,
        decision: Decision,
        record: _Record,
    ) -> None:
        try:
            if not decision.upgrade:
                raise conn.endpoint.unreachable("101 Switching Protocols to a request that asked for no upgrade")
            try:
                await self._send(
                    h11.InformationalResponse(
                        status_code=101, headers=list(response.headers.raw_items()), reason=response.reason
                    )
                )
            except h11.LocalProtocolError as exc:
                raise conn.endpoint.unreachable(f"an unusable 101 answer: {exc}") from None
        except UpstreamError as err:
            await self.ctx.pool.discard(conn)
            await self._refuse(err, record, close=True)
            return
        await self._emit(record)
        assert record.request is not None
        assert record.identity is not None
        session_id = str(uuid.uuid4())
        protocol = b", ".join(v for n, v in response.headers.raw_items() if n.lower() == b"upgrade").decode("latin-1")
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
        client_extra = self.conn.trailing_data[0]
        upstream_extra = conn.h11.trailing_data[0]
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
        """An exchange whose answer kubectl had started to get broke: audit why, then end the connection
        (an upstream failure as :class:`_Abort`: kubectl's answer is cut, never completed by a Status)."""
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

    __slots__ = ("_body", "_conn", "_head", "size")  # one per streaming answer, alive as long as a watch

    def __init__(self, conn: h11.Connection, head: bytes) -> None:
        self._conn = conn
        self._head = head
        self._body: list[bytes] = []
        self.size = len(head)

    def add(self, data: bytes) -> None:
        self._body.append(data)
        self.size += len(data)

    def take(self, end: h11.EndOfMessage | None = None) -> bytes:
        """Everything pending as wire bytes (with the end of the message if ``end``); empties the buffer."""
        parts = [self._head] if self._head else []
        if self._body:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            parts.append(self._conn.send(h11.Data(data=body)) or b"")
        if end is not None:
            parts.append(self._conn.send(end) or b"")
        self._head, self._body, self.size = b"", [], 0
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _chunked_both(upstream: h11.Connection, client: h11.Connection) -> bool:
    """Whether h11 reads the answer's body as chunked and writes it to the client chunked (then the chunks
    can go through verbatim). Asked of h11's reader and writer objects; an h11 that renamed them says
    False here and every answer is relayed event by event, as before (tests/agent/forward/test_streams.py
    checks that the installed h11 takes the verbatim path)."""
    return (
        _CHUNKED_READER is not None
        and _CHUNKED_WRITER is not None
        and isinstance(getattr(upstream, "_reader", None), _CHUNKED_READER)
        and isinstance(getattr(client, "_writer", None), _CHUNKED_WRITER)
    )


def _h2_candidate(head: h11.Request, decision: Decision, record: _Record) -> bool:
    """Whether a request goes over HTTP/2 when it can: a watch (a GET that streams for long: the
    connection it would hold is what sharing saves), without a body, not an upgrade."""
    if head.method != b"GET" or decision.upgrade or record.request is None or record.request.verb != "watch":
        return False
    for name, value in head.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    return True


def _response_headers_h2(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 answer's headers for an HTTP/1.1 client: no pseudo-headers (the core dropped them), no
    hop-by-hop ones (h2 refuses connection-specific headers already; this holds whatever h2 lets by)."""
    return [(n, v) for n, v in headers if n.lower() not in _RESPONSE_HOP_BY_HOP and n.lower() != b"transfer-encoding"]


def _upstream_headers(decision: Decision, endpoint: Endpoint) -> list[tuple[bytes, bytes]]:
    headers = [*decision.headers, (b"Host", endpoint.host_header)]
    if endpoint.authorization is not None:
        headers.append((b"Authorization", endpoint.authorization))
    return headers


def _joined(response: h11.Response | h11.InformationalResponse, name: bytes) -> str:
    """Every value of header ``name`` in ``response``, comma-joined."""
    return b", ".join(v for n, v in response.headers.raw_items() if n.lower() == name).decode("latin-1")


def _declared_length(headers: Iterable[tuple[bytes, bytes]]) -> float:
    """The body length a response head declares (Content-Length), infinite when none or unusable (chunked,
    read-until-close). h11 already refused a head with conflicting or malformed lengths."""
    length = math.inf
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return math.inf
        if lowered == b"content-length" and value.strip().isdigit():
            length = int(value)
    return length


def _response_headers(headers: Any) -> Any:
    """The answer's headers for the client, without hop-by-hop ones and those its ``Connection`` lists.
    When there is nothing to drop (the usual answer) it is the head's own h11 ``Headers``: h11 validated
    them when it parsed the answer, and a response built from them is not validated again (~20 us)."""
    if not any(name in _RESPONSE_HOP_BY_HOP for name, _ in headers):  # h11 yields lower-cased names
        return headers
    items = list(headers.raw_items())
    listed = {
        token.strip().lower()
        for name, value in items
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }
    return [(n, v) for n, v in items if n.lower() not in _RESPONSE_HOP_BY_HOP and n.lower() not in listed]


__all__ = ["Target", "handle_stream"]
