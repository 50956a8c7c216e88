"""HTTP/2 for the test and benchmark servers: the same ``Handler`` as ``registry.server.http``, chosen by ALPN.

:func:`serve_http_alpn` listens like ``serve_http`` (TLS only) and offers ``h2`` and ``http/1.1`` by ALPN,
as a real kube-apiserver does: a client that chooses ``h2`` (kubectl, client-go, the agent's watch
connections) is served by :func:`serve_h2_connection`, anyone else by the project's HTTP/1.1
``handle_connection``, unchanged. :class:`ConnectionCounts` counts both (tests check that many watches
share one connection).

The HTTP/2 side serves whole and streamed ``Response`` bodies (``stream`` or ``producer``), each request on
its own task: flow control is h2's (a stream waits for its window; one stalled reader never stalls the
others), a reset stream cancels its handler, request bodies are bounded by ``max_body_bytes`` (more is a
reset). No upgrades (HTTP/2 has none; kubectl uses HTTP/1.1 for exec and port-forward), no push.

Invariants: a protocol error from the client ends the connection with GOAWAY; a handler's crash is a 500
Status on its stream, never the connection's end; every task of a connection ends with it.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes

from registry.core.errors import KubeportError
from registry.server.http import (
    Handler,
    HTTPLimits,
    Request,
    Response,
    ServerInfo,
    accept_retrying,
    handle_connection,
)

log = logging.getLogger(__name__)

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})


@dataclass
class ConnectionCounts:
    """Connections accepted, by the protocol ALPN chose."""

    http1: int = 0
    h2: int = 0
    h2_open: int = 0  # HTTP/2 connections open now
    h2_streams: int = 0  # HTTP/2 requests served (all time)


async def serve_http_alpn(
    handler: Handler,
    *,
    ssl_context: ssl.SSLContext,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: HTTPLimits | None = None,
    counts: ConnectionCounts | None = None,
    task_status: trio.TaskStatus[ServerInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` over TLS with ALPN ``h2`` and ``http/1.1`` until cancelled (module docstring)."""
    limits = limits or HTTPLimits()
    counts = counts if counts is not None else ConnectionCounts()
    ssl_context.set_alpn_protocols(["h2", "http/1.1"])
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    info = ServerInfo(host=bound[0], port=bound[1])

    async def one(stream: trio.SSLStream[trio.SocketStream], client: str) -> None:
        try:
            with trio.fail_after(limits.handshake_timeout):
                await stream.do_handshake()
        except (trio.TooSlowError, *_STREAM_ERRORS):
            with trio.CancelScope(shield=True), contextlib.suppress(*_STREAM_ERRORS):
                await stream.aclose()
            return
        if stream.selected_alpn_protocol() == "h2":
            counts.h2 += 1
            counts.h2_open += 1
            try:
                await serve_h2_connection(
                    stream,
                    handler,
                    peer_cert=stream.getpeercert(binary_form=True) or None,
                    client=client,
                    max_body_bytes=limits.max_body_bytes,
                    counts=counts,
                )
            finally:
                counts.h2_open -= 1
            return
        counts.http1 += 1
        await handle_connection(stream, handler, limits, client)  # its handshake is already done

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            sock = await accept_retrying(listener, info.address)
            try:
                peer = sock.socket.getpeername()
            except OSError:
                await sock.aclose()
                continue
            client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            tls = trio.SSLStream(sock, ssl_context, server_side=True, https_compatible=True)
            nursery.start_soon(one, tls, client)

    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, nursery)
            task_status.started(info)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


class _H2Server:
    def __init__(self, stream: trio.abc.Stream, handler: Handler, peer_cert: bytes | None, client: str) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.stream = stream
        self.handler = handler
        self.peer_cert = peer_cert
        self.client = client
        self.lock = trio.StrictFIFOLock()
        self.window = trio.Event()  # set (and replaced) whenever a send window may have grown
        self.scopes: dict[int, trio.CancelScope] = {}

    async def flush(self) -> None:
        async with self.lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    def window_moved(self) -> None:
        self.window.set()
        self.window = trio.Event()

    async def send_data(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if room <= 0:
                await self.window.wait()
                continue
            self.conn.send_data(stream_id, bytes(view[:room]))
            view = view[room:]
            await self.flush()

    async def respond(self, stream_id: int, request: Request) -> None:
        scope = trio.CancelScope()
        self.scopes[stream_id] = scope
        chunks: AsyncIterator[bytes] | None = None
        try:
            with scope:
                try:
                    response = await self.handler(request)
                except KubeportError as err:
                    response = Response.error(err)
                except Exception:
                    log.exception("unhandled error serving %s %s", request.method, request.path)
                    response = Response.json(500, {"kind": "Status", "code": 500, "message": "internal error"})
                chunks = response.stream
                headers: list[tuple[bytes, bytes]] = [(b":status", str(response.status).encode())]
                for name, value in response.headers:
                    if name.lower() not in _CONNECTION_SPECIFIC:
                        headers.append((name.lower().encode("ascii"), value.encode("latin-1")))
                if response.stream is None and response.producer is None:
                    if not any(n == b"content-length" for n, _ in headers):
                        headers.append((b"content-length", str(len(response.body)).encode()))
                    body = response.body if request.method != "HEAD" else b""
                    self.conn.send_headers(stream_id, headers, end_stream=not body)
                    await self.flush()
                    if body:
                        await self.send_data(stream_id, body)
                        self.conn.end_stream(stream_id)
                        await self.flush()
                    return
                self.conn.send_headers(stream_id, headers)
                await self.flush()
                send = partial(self._send_chunk, stream_id)
                if response.producer is not None:
                    await response.producer(send)
                elif chunks is not None:
                    async for chunk in chunks:
                        await send(chunk)
                self.conn.end_stream(stream_id)
                await self.flush()
        except (h2.exceptions.ProtocolError, *_STREAM_ERRORS):
            pass  # the stream or the connection ended under us
        finally:
            self.scopes.pop(stream_id, None)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()

    async def _send_chunk(self, stream_id: int, chunk: bytes) -> None:
        if chunk:
            await self.send_data(stream_id, chunk)


async def serve_h2_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    peer_cert: bytes | None = None,
    client: str = "",
    max_body_bytes: int = 2 * 1024 * 1024,
    counts: ConnectionCounts | None = None,
) -> None:
    """Serve one HTTP/2 connection (its TLS handshake done) until the client leaves (module docstring)."""
    server = _H2Server(stream, handler, peer_cert, client)
    server.conn.initiate_connection()
    bodies: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
    try:
        async with trio.open_nursery() as nursery:
            await server.flush()
            while True:
                data = await stream.receive_some(64 * 1024)
                if not data:
                    break
                try:
                    events = server.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await server.flush()  # the GOAWAY h2 queued
                    break
                ended = False
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        bodies[event.stream_id] = (list(event.headers or []), bytearray())
                    elif isinstance(event, h2.events.DataReceived):
                        found = bodies.get(event.stream_id)
                        server.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
                        if found is not None:
                            found[1].extend(event.data or b"")
                            if len(found[1]) > max_body_bytes:
                                del bodies[event.stream_id]
                                server.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                    elif isinstance(event, h2.events.StreamEnded):
                        found = bodies.pop(event.stream_id, None)
                        if found is not None:
                            if counts is not None:
                                counts.h2_streams += 1
                            request = _to_request(found[0], bytes(found[1]), peer_cert, client)
                            nursery.start_soon(server.respond, event.stream_id, request)
                    elif isinstance(event, h2.events.StreamReset):
                        bodies.pop(event.stream_id, None)
                        scope = server.scopes.get(event.stream_id)
                        if scope is not None:
                            scope.cancel()
                        server.window_moved()
                    elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                        server.window_moved()
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        ended = True
                await server.flush()
                if ended:
                    break
            nursery.cancel_scope.cancel()
    except _STREAM_ERRORS:
        pass
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
            await stream.aclose()


def _to_request(headers: list[tuple[bytes, bytes]], body: bytes, peer_cert: bytes | None, client: str) -> Request:
    pseudo: dict[bytes, bytes] = {}
    plain: list[tuple[str, str]] = []
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        else:
            plain.append((name.decode("latin-1").lower(), value.decode("latin-1")))
    if b":authority" in pseudo and not any(n == "host" for n, _ in plain):
        plain.insert(0, ("host", pseudo[b":authority"].decode("latin-1")))
    target = pseudo.get(b":path", b"/").decode("latin-1")
    split = urlsplit(target)
    return Request(
        method=pseudo.get(b":method", b"GET").decode("ascii", "replace"),
        target=target,
        path=split.path,
        query=parse_qs(split.query, keep_blank_values=True),
        headers=plain,
        body=body,
        peer_cert=peer_cert,
        client=client,
    )


__all__ = ["ConnectionCounts", "serve_h2_connection", "serve_http_alpn"]
