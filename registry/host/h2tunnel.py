"""The reverse tunnel's connection driver: many byte streams over one HTTP/2 connection (python-hyper ``h2``).

One :class:`H2Tunnel` drives one connection, on either side: the agent dials out and runs the HTTP/2
*server* side (``side="server"``), the front door runs the *client* side and opens one extended-CONNECT
stream (``:method CONNECT``, ``:protocol kubeport-http1``, RFC 8441) per kubectl connection. Each stream is
a :class:`TunnelStream`, a ``trio.abc.HalfCloseableStream``: END_STREAM is ``send_eof``, RST_STREAM is an
abort (the peer's next ``receive_some``/``send_all`` raises :class:`StreamReset`, a
``trio.BrokenResourceError``). ``TunnelStream.watch_peer_end(scope)`` cancels a scope when the peer ends or
resets the stream or the tunnel ends, for a consumer that is busy elsewhere (the forwarder while it relays
an answer) and would otherwise need a task parked in ``receive_some`` to notice.

Shape (after hypercorn's h2 driver): ``h2`` is the sans-IO state machine; this module only moves bytes and
wakes tasks. Invariants:

* **One reader** task feeds every received byte to ``h2`` and never waits for anything but the transport, so
  control frames (WINDOW_UPDATE, PING, SETTINGS) are always processed, whatever any stream's consumer does.
* **One writer at a time** calls ``transport.send_all`` (``_writing``): everybody appends ``h2``'s output to
  an outbox; the writer task sends it, except that ``TunnelStream.send_all`` finding the transport free
  sends the outbox itself (saves two task switches per call). On a transport with a synchronous send
  (``SocketTLSStream.send_now``) that write happens without a checkpoint, so no cancellation can cut a
  frame; only a rest the socket did not take is finished shielded from cancellation (other transports:
  the whole write is shielded), and without the transport's final schedule point: ``send_all`` yields
  once itself, ``send_all_unyielding`` (a relay loop that parks next) not at all. When flushes on the
  tunnel follow each other within ``_BURST_GAP`` (many streams sending at once), the writer stays the
  writer across one schedule point, so the other senders' frames share its next write.
  ``TunnelStream.send_all`` returns once its bytes were handed to the transport (real back-pressure, and
  coalesced writes when many streams send); a write wakes exactly the senders whose bytes it carried. The
  outbox is bounded: a peer that makes us answer frames (PING floods ...) while it does not read is
  disconnected.
* **Flow control**: a stream's received data is acknowledged to the peer only as its consumer reads it (frames
  waiting together are handed out as one piece, up to ``max_bytes``; small reads are acknowledged together,
  holding back less than ``stream_window / 16``, see ``H2Tunnel._consumed``), so a stream's receive buffer never
  holds more than its window (``stream_window``). The connection window is at
  least ``max_concurrent_streams * stream_window`` (checked by :class:`TunnelConfig`), so streams whose
  consumers stall can never exhaust it: one slow consumer never stalls another stream. Senders wait on
  events set by WINDOW_UPDATE / SETTINGS, never poll.
* **DATA frames** are written by this module, not built by ``h2`` (``_send_data``): a frame header and the
  bytes go to the outbox and both send windows ``h2`` keeps are charged exactly as its ``send_data`` would,
  only while the connection and the stream are in states where that ``send_data`` would accept DATA
  without a state change (else ``h2`` builds the frame, with its checks and errors). It saves building and
  serializing a frame object per watch event; at import it is checked to give ``h2``'s bytes and windows
  (``_FAST_DATA``), and an ``h2`` that differs gets every frame built by ``h2`` as before. The receive
  side mirrors it (``_receive``): a plain DATA frame (no flags) of a stream ``h2`` holds open, within the
  frame size and both windows, becomes ``h2``'s ``DataReceived`` here, charging the same windows; every
  other frame, and all that follows it in the same read, goes to ``h2`` (``_FAST_RECV``, checked the same way).
* **Liveness**: a PING every ``ping_interval`` seconds; after ``ping_misses`` unanswered intervals the
  connection is closed (MockClock-friendly: only ``trio.sleep``).
* **Drain**: ``drain()`` stops new streams (the server also advertises ``SETTINGS_MAX_CONCURRENT_STREAMS=0``
  and refuses late arrivals with REFUSED_STREAM), lets existing streams finish, then sends GOAWAY and
  closes. GOAWAY goes last because ``h2`` (4.x) admits no frame at all after a GOAWAY in either direction;
  a GOAWAY received therefore ends the connection (its live streams break).
* **Failures stay inside**: a peer's garbage, protocol violation, oversized header block or dead transport
  ends this connection only; ``run()`` then raises one :class:`ConnectionProblem` (never an exception
  group), every stream breaks, and server-side handler tasks are cancelled. A bad stream (a CONNECT without
  ``:protocol``, trailers) is refused or reset on its own and the connection stays up.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame
import trio

from registry.core.errors import BadParameter, ConnectionProblem, LimitExceeded
from registry.host.socket_tls import SocketTLSStream
from registry.host.waiter import Waiter

log = logging.getLogger(__name__)

PROTOCOL = b"kubeport-http1"
"""The ``:protocol`` of every tunnel stream: raw HTTP/1.1 bytes in both directions."""
ERROR_HEADER = b"kubeport-error"
"""On a refusal, a short printable-ASCII reason for the front door's logs and errors."""

MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535
_MAX_FRAME_LIMIT = 2**24 - 1
_SEND_CHUNK = 256 * 1024  # bytes queued per stream before waiting for the writer

Headers = list[tuple[bytes, bytes]]
Side = Literal["client", "server"]
StreamHandler = Callable[["TunnelStream"], Awaitable[None]]


@dataclass(frozen=True)
class TunnelConfig:
    """Tunables of one tunnel connection; both sides of a tunnel should use the same values."""

    stream_window: int = 2 * 1024 * 1024
    connection_window: int = MAX_WINDOW
    max_concurrent_streams: int = 1000
    max_frame_size: int = 64 * 1024
    max_header_list_size: int = 64 * 1024
    ping_interval: float = 15.0
    ping_misses: int = 2
    read_size: int = 256 * 1024
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not _DEFAULT_WINDOW <= self.stream_window <= MAX_WINDOW:
            raise BadParameter(
                f"tunnel stream_window must be {_DEFAULT_WINDOW}..{MAX_WINDOW}, got {self.stream_window}"
            )
        if not _DEFAULT_WINDOW <= self.connection_window <= MAX_WINDOW:
            raise BadParameter(
                f"tunnel connection_window must be {_DEFAULT_WINDOW}..{MAX_WINDOW}, got {self.connection_window}"
            )
        if self.max_concurrent_streams < 1:
            raise BadParameter(f"tunnel max_concurrent_streams must be positive, got {self.max_concurrent_streams}")
        if self.stream_window * self.max_concurrent_streams > self.connection_window:
            # Otherwise a few stalled consumers could use up the connection window and stall everyone.
            raise BadParameter(
                "tunnel connection_window must cover every stream's window: "
                f"{self.max_concurrent_streams} x {self.stream_window} > {self.connection_window}"
            )
        if not 16_384 <= self.max_frame_size <= _MAX_FRAME_LIMIT:
            raise BadParameter(f"tunnel max_frame_size must be 16384..{_MAX_FRAME_LIMIT}, got {self.max_frame_size}")
        if self.max_header_list_size < 4096:
            raise BadParameter(f"tunnel max_header_list_size must be at least 4096, got {self.max_header_list_size}")
        if self.ping_interval <= 0 or self.ping_misses < 1:
            raise BadParameter("tunnel ping_interval must be positive and ping_misses at least 1")
        if self.read_size < 1024 or self.close_timeout <= 0:
            raise BadParameter("tunnel read_size must be at least 1024 and close_timeout positive")

    @property
    def max_outbox(self) -> int:
        """Unsent bytes beyond which the peer counts as not reading (every stream's chunk, plus slack)."""
        return self.max_concurrent_streams * (_SEND_CHUNK + 1024) + 16 * 1024 * 1024


def _data_frame_body_repr(self: hyperframe.frame.DataFrame) -> str:
    """What ``Frame._body_repr`` says of a DATA frame, computed from its first bytes only.

    ``h2`` (4.4) evaluates ``repr(frame)`` for every frame it receives, for a trace log that is a no-op
    by default; for a DATA frame that joins the padded body and hex-encodes all of it, then keeps 20
    characters: a copy and a hex string of every byte through the tunnel (about a tenth of the front
    door's CPU on a bulk download). The text is the same: ``_raw_data_repr`` shows at most 10 bytes and
    whether there are more, so 11 bytes of the body decide it."""
    try:
        prefix = (self.serialize_padding_data() + self.data[:11] + b"\0" * min(self.pad_length, 11))[:11]
        return str(hyperframe.frame._raw_data_repr(prefix))
    except Exception:  # a hyperframe whose internals moved: its own (slower) repr, never a crash
        return str(_ORIGINAL_BODY_REPR(self))


# A process-wide, output-identical replacement (see above); only ever evaluated for a repr. It relies on
# hyperframe internals, so it falls back to the original; tests/registry/host/test_h2tunnel.py compares both.
_ORIGINAL_BODY_REPR = hyperframe.frame.DataFrame._body_repr
hyperframe.frame.DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]


_SENDING_CONNECTION = frozenset({h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionState.SERVER_OPEN})
_SENDING_STREAM = frozenset({h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE})


def _sendable_stream(conn: h2.connection.H2Connection, stream_id: int) -> h2.stream.H2Stream | None:
    """h2's stream object when a DATA frame may go out on it without h2 building it (H2Tunnel._send_data):
    the connection and the stream are in states where h2's send_data would accept DATA and change no
    state. None (h2's send_data is used, with its checks and errors) otherwise, or when this h2 does not
    look like the one the fast path was checked against at import (``_FAST_DATA``)."""
    if not _FAST_DATA:
        return None
    try:
        if conn.state_machine.state not in _SENDING_CONNECTION:
            return None
        h2stream = conn.streams.get(stream_id)
        if h2stream is None or h2stream.state_machine.state not in _SENDING_STREAM:
            return None
        return h2stream
    except AttributeError:  # pragma: no cover - an h2 whose internals moved
        return None


def _fast_data_matches_h2() -> bool:
    """Whether writing a DATA frame by hand gives the bytes and windows h2's own send_data gives, on
    this h2: checked once at import on a throwaway connection pair; the fast path is off otherwise."""
    try:
        results = []
        for fast in (False, True):
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            client.initiate_connection()
            server.initiate_connection()
            server.receive_data(client.data_to_send())
            client.receive_data(server.data_to_send())
            client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "x")])
            server.receive_data(client.data_to_send())
            server.send_headers(1, [(":status", "200")])
            client.receive_data(server.data_to_send())
            data = b"kubeport" * 100
            if fast:
                h2stream = _sendable_stream_unchecked(server, 1)
                out = (len(data) << 8).to_bytes(4, "big") + (1).to_bytes(5, "big") + data
                server.outbound_flow_control_window -= len(data)
                h2stream.outbound_flow_control_window -= len(data)
            else:
                server.send_data(1, data)
                out = server.data_to_send()
            events = client.receive_data(out)
            received = [(type(e).__name__, getattr(e, "data", None)) for e in events]
            results.append((out, server.local_flow_control_window(1), server.outbound_flow_control_window, received))
        return results[0] == results[1]
    except Exception:  # pragma: no cover - an h2 that differs: h2 builds every frame
        return False


def _sendable_stream_unchecked(conn: h2.connection.H2Connection, stream_id: int) -> h2.stream.H2Stream:
    h2stream = conn.streams[stream_id]
    if h2stream.state_machine.state not in _SENDING_STREAM:
        raise RuntimeError("not sendable")
    return h2stream


_FAST_DATA = True
_FAST_DATA = _fast_data_matches_h2()

_RECEIVING_STREAM = frozenset({h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL})


def _receive(conn: h2.connection.H2Connection, data: bytes) -> list[h2.events.Event]:
    """``conn.receive_data(data)``, with the plain DATA frames of open streams parsed here (``_FAST_RECV``).

    From the start of ``data``, each complete DATA frame without flags (no padding, no END_STREAM), within
    the inbound frame size limit, on a stream ``h2`` holds in a state that receives DATA without a state
    change (OPEN or HALF_CLOSED_LOCAL, its headers received, no content-length to track), that fits both
    inbound windows, becomes the ``DataReceived`` event ``h2`` would give, charging both windows (and the
    stream's received length) exactly as ``h2`` does. The first frame that is anything else, and everything
    after it, goes to ``h2`` with its checks and errors. Only when ``h2`` holds no partial frame, header
    block or preface (else all of ``data`` goes to ``h2``). It saves h2's frame objects, its stream state
    machine and its buffer copies per DATA frame (a request, an answer, a watch event)."""
    buffer = conn.incoming_buffer
    if not _FAST_RECV or buffer._data or buffer._headers_buffer or buffer._preamble_len:
        return conn.receive_data(data)
    if conn.state_machine.state not in _SENDING_CONNECTION:
        return conn.receive_data(data)
    events: list[h2.events.Event] = []
    position = 0
    end = len(data)
    limit = conn.max_inbound_frame_size
    window = conn._inbound_flow_control_window_manager
    streams = conn.streams
    while end - position >= 9:
        # 24-bit length, then type DATA (0) and no flags: one 32-bit compare for the last two.
        head = int.from_bytes(data[position : position + 5], "big")
        length = head >> 16
        if head & 0xFFFF or length > limit or position + 9 + length > end:
            break
        stream_id = int.from_bytes(data[position + 5 : position + 9], "big") & 0x7FFFFFFF
        h2stream = streams.get(stream_id)
        if (
            h2stream is None
            or h2stream.state_machine.state not in _RECEIVING_STREAM
            or not h2stream.state_machine.headers_received
            or h2stream._expected_content_length is not None
        ):
            break
        manager = h2stream._inbound_window_manager
        if length > window.current_window_size or length > manager.current_window_size:
            break  # h2 raises its FlowControlError
        window.current_window_size -= length
        manager.current_window_size -= length
        h2stream._actual_content_length += length
        start = position + 9
        position = start + length
        events.append(
            h2.events.DataReceived(stream_id=stream_id, data=data[start:position], flow_controlled_length=length)
        )
    if position < end:
        events += conn.receive_data(data[position:] if position else data)
    return events


def _fast_recv_matches_h2() -> bool:
    """Whether :func:`_receive` gives h2's own events and windows on this h2: checked once at import on a
    throwaway connection pair (DATA frames, a split one, a padded one, one ending the stream); the fast
    path is off otherwise."""
    try:
        results = []
        for fast in (False, True):
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
            client.initiate_connection()
            server.initiate_connection()
            server.receive_data(client.data_to_send())
            client.receive_data(server.data_to_send())
            server.receive_data(client.data_to_send())
            client.send_headers(
                1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"x")]
            )
            server.receive_data(client.data_to_send())
            for piece in (b"kubeport" * 100, b"", b"x" * 3000):
                client.send_data(1, piece)
            client.send_data(1, b"padded", pad_length=3)
            client.send_data(1, b"last", end_stream=True)
            wire = client.data_to_send()
            events: list[tuple[str, object, object, object]] = []
            # the first two frames whole (parsed here), then one split across reads (h2 buffers it)
            for part in (wire[:818], wire[818:918], wire[918:]):
                got = _receive(server, part) if fast else server.receive_data(part)
                events += [
                    (type(e).__name__, getattr(e, "stream_id", None), getattr(e, "data", None), repr(e)) for e in got
                ]
            h2stream = server.streams[1]
            results.append(
                (
                    events,
                    server._inbound_flow_control_window_manager.current_window_size,
                    h2stream._inbound_window_manager.current_window_size,
                    h2stream._actual_content_length,
                    h2stream.state_machine.state,
                    server.data_to_send(),
                )
            )
        return results[0] == results[1]
    except Exception:  # pragma: no cover - an h2 that differs: h2 parses every frame
        return False


_FAST_RECV = True
_FAST_RECV = _fast_recv_matches_h2()
# Two flushes on one tunnel closer than this (seconds) are taken for many streams sending at once (see
# _flush); one kubectl connection's requests or answers are a round trip apart, far more than this.
_BURST_GAP = 200e-6


class StreamReset(trio.BrokenResourceError):
    """The stream was aborted: by the peer (RST_STREAM), or because its connection ended."""

    def __init__(self, message: str, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        super().__init__(message)
        self.error_code = error_code

    def fresh(self) -> StreamReset:
        """A new instance to raise (re-raising one instance from many places would pile up tracebacks)."""
        return StreamReset(str(self), self.error_code)


def _clean_reason(text: str) -> bytes:
    printable = "".join(c if " " <= c <= "~" else "?" for c in text).strip()
    return printable[:200].encode("ascii")


class TunnelStream(trio.abc.HalfCloseableStream):
    """One tunnel stream (see the module docstring). ``headers`` are the request headers on the server side
    and the response headers on the client side."""

    # No __dict__: two of these (front door and agent) per open kubectl connection, an idle watch's included.
    __slots__ = (
        "_buffer",
        "_buffered",
        "_closed",
        "_end_scope",
        "_error",
        "_on_wire_done",
        "_receiving",
        "_recv_eof",
        "_recv_lot",
        "_responded",
        "_send_lot",
        "_sending",
        "_sent_eof",
        "_tunnel",
        "_unacked",
        "headers",
        "status",
        "stream_id",
    )

    def __init__(self, tunnel: H2Tunnel, stream_id: int, headers: Headers) -> None:
        self._tunnel = tunnel
        self.stream_id = stream_id
        self.headers = headers
        self.status: int | None = None  # client side: the response status once it arrived
        # Received, unread frames; None while empty: an empty deque still holds a ~600-byte block, and an
        # idle stream (a watch) is empty nearly all its life.
        self._buffer: deque[bytes] | None = None
        self._buffered = 0
        self._unacked = 0  # bytes read but not yet acknowledged to h2 (see H2Tunnel._consumed)
        self._recv_eof = False
        self._sent_eof = False
        self._error: StreamReset | None = None
        self._closed = False  # aclose() was called
        self._on_wire_done = False  # both END_STREAMs exchanged, or reset: h2 forgot this stream
        self._responded = False  # server side: accept() or refuse() happened
        self._receiving = False
        self._sending = False
        self._recv_lot = Waiter()  # the one receiver (or the opener waiting for the answer); see waiter.py
        self._send_lot = Waiter()  # the one sender waiting for window
        self._end_scope: trio.CancelScope | None = None  # see watch_peer_end

    def __repr__(self) -> str:
        return f"<TunnelStream {self.stream_id} on {self._tunnel.side} tunnel>"

    # -- server side: answer the CONNECT -------------------------------------------------------------------

    async def accept(self) -> None:
        """Answer the CONNECT with ``:status 200``: from now on bytes flow both ways."""
        self._tunnel._respond(self, 200, None)
        await trio.lowlevel.checkpoint()

    async def refuse(self, status: int, reason: str) -> None:
        """Answer the CONNECT with ``status`` (4xx/5xx) and end the stream; ``reason`` travels in a header."""
        self._tunnel._respond(self, status, reason)
        await trio.lowlevel.checkpoint()

    # -- receiving ------------------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this tunnel stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False  # parking was this call's schedule point: no second task switch before returning
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this tunnel stream was closed")
                if self._error is not None and not self._recv_eof:
                    raise self._error.fresh()  # an abort: unread bytes are gone, like after a TCP RST
                if self._buffer:
                    chunk = self._take(max_bytes)
                    if not self._buffer:
                        self._buffer = None  # emptied: see __init__
                    self._buffered -= len(chunk)
                    self._tunnel._consumed(self, len(chunk))
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return chunk
                if self._recv_eof:
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                await self._recv_lot.park()
                parked = True
        finally:
            self._receiving = False

    def watch_peer_end(self, scope: trio.CancelScope | None) -> None:
        """Cancel ``scope`` as soon as the peer ends this stream (END_STREAM), resets it, or the tunnel ends
        (at once when that already happened); ``None`` stops watching. A consumer that is busy elsewhere
        (the forwarder while an answer streams) notices a vanished peer without a task parked in
        :meth:`receive_some`; what the peer sends meanwhile stays buffered (within the stream window)."""
        self._end_scope = scope
        if scope is not None and (self._recv_eof or self._error is not None or self._closed):
            scope.cancel()

    def _peer_ended(self) -> None:
        if self._end_scope is not None:
            self._end_scope.cancel()

    def _take(self, max_bytes: int | None) -> bytes:
        """Up to ``max_bytes`` (None: all) of the buffered bytes, as one piece: frames that arrived
        together leave together (one write onwards instead of one per frame; a big frame is not copied)."""
        buffer = self._buffer
        assert buffer is not None  # called only when something is buffered
        chunk = buffer.popleft()
        limit = len(chunk) + self._buffered if max_bytes is None else max_bytes
        if len(chunk) > limit:
            buffer.appendleft(chunk[limit:])
            return chunk[:limit]
        if not buffer or len(chunk) + len(buffer[0]) > limit:
            return chunk
        parts = [chunk]
        size = len(chunk)
        while buffer and size + len(buffer[0]) <= limit:
            part = buffer.popleft()
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    # -- sending --------------------------------------------------------------------------------------------

    def _check_can_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this tunnel stream was closed")
        if self._error is not None:
            raise self._error.fresh()
        if self._sent_eof:
            raise trio.ClosedResourceError("send_eof() was called on this tunnel stream")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not await self._send(data):
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all_unyielding(self, data: bytes | bytearray | memoryview) -> bool:
        """:meth:`send_all` without its final schedule point when it never waited: for a relay loop whose
        next call is one anyway (it parks to read more). Checks cancellation first; True when it waited."""
        return await self._send(data)

    async def _send(self, data: bytes | bytearray | memoryview) -> bool:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this tunnel stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            self._check_can_send()
            position = 0
            waited = False
            while position < len(view):
                self._check_can_send()
                window = self._tunnel._send_window(self)
                if window <= 0:
                    await self._send_lot.park()
                    waited = True
                    continue
                size = min(window, len(view) - position, _SEND_CHUNK)
                self._tunnel._send_data(self, view[position : position + size])
                position += size
                if await self._tunnel._flush():
                    waited = True
            return waited
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this tunnel stream")
        while not (self._closed or self._error or self._sent_eof) and self._tunnel._send_window(self) <= 0:
            await self._send_lot.park()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this tunnel stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this tunnel stream was closed")
        if not self._sent_eof:
            if self._error is not None:
                raise self._error.fresh()
            self._tunnel._end_stream(self)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        """Close both directions: END_STREAM when everything the peer sent was received (like a TCP FIN),
        RST_STREAM(CANCEL) otherwise (like a TCP RST)."""
        if not self._closed:
            self._closed = True
            self._tunnel._close_stream(self)
            self._recv_lot.unpark_all()
            self._send_lot.unpark_all()
        await trio.lowlevel.checkpoint()

    # -- driven by the tunnel ---------------------------------------------------------------------------------

    def _break(self, error: StreamReset) -> None:
        if self._error is None:
            self._error = error
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()
        self._peer_ended()

    @property
    def buffered(self) -> int:
        """Received bytes waiting for the consumer (never more than the stream window)."""
        return self._buffered


class H2Tunnel:
    """One tunnel connection over ``transport`` (already connected; TLS or any byte stream). Call
    :meth:`run` in a task; the client side then opens streams with :meth:`open_stream`, the server side
    gets each accepted-for-dispatch stream in ``handler`` (see :meth:`run`)."""

    def __init__(self, transport: trio.abc.Stream, *, side: Side, config: TunnelConfig | None = None) -> None:
        if side not in ("client", "server"):
            raise BadParameter(f"tunnel side must be client or server, got {side!r}")
        self.side: Side = side
        self.config = config or TunnelConfig()
        self._transport = transport
        if isinstance(transport, SocketTLSStream):
            # The peer is a tunnel too (OpenSSL, full records): reads gather a bulk transfer's records and
            # skip the EAGAIN read after each message (SocketTLSStream.full_records).
            transport.full_records = True
        # A transport send without the final schedule point (SocketTLSStream's), for _flush: the stream's
        # send_all yields once itself, or not at all for a relay loop that parks next (one task switch
        # fewer per request and direction).
        self._send_unyielding: Callable[[memoryview], Awaitable[bool]] | None = getattr(
            transport, "send_all_unyielding", None
        )
        # A synchronous "send what the socket takes now" (SocketTLSStream.send_now): _flush then writes
        # without a cancel scope (see _send_outbox_now); other transports get the shielded send_all.
        self._send_now: Callable[[bytearray], memoryview] | None = (
            getattr(transport, "send_now", None) if self._send_unyielding is not None else None
        )
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=side == "client", header_encoding=None)
        )
        self._streams: dict[int, TunnelStream] = {}
        self._handler: StreamHandler | None = None
        self._handlers = 0
        self._nursery: trio.Nursery | None = None
        self._ack_batch = self.config.stream_window // 16  # see _consumed
        self._outbox = bytearray()
        self._last_flush = -1.0  # time.perf_counter() of the last flush that wrote itself (see _flush)
        self._writing = False  # a task is in transport.send_all (the writer, or a stream flushing itself)
        self._queued_seq = 0
        self._sent_seq = 0
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._flushed_lot = trio.lowlevel.ParkingLot()  # woken after every transport write
        # Tasks waiting for their bytes to be written, by the outbox sequence number they wait for (ascending):
        # a write wakes exactly the tasks it served, not every waiter once per write.
        self._flush_waiters: deque[tuple[int, trio.lowlevel.ParkingLot]] = deque()
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._ready = trio.Event()  # the peer's first SETTINGS arrived
        self._finished = trio.Event()
        self._dead = False
        self._draining = False
        self._peer_draining = False
        self._failure: ConnectionProblem | None = None
        self._ping_outstanding = False
        self._ping_missed = 0
        self._ping_counter = 0
        self._stats = {
            "streams_opened_total": 0,
            "streams_refused_total": 0,
            "streams_reset_total": 0,
            "bytes_in_total": 0,
            "bytes_out_total": 0,
            "pings_sent_total": 0,
            "peak_stream_buffered": 0,
        }

    # -- public ----------------------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Ready for new streams: the peer's SETTINGS arrived and nobody is draining or dead."""
        return self._ready.is_set() and not (self._dead or self._draining or self._peer_draining)

    @property
    def closed(self) -> bool:
        return self._dead

    def statistics(self) -> dict[str, int]:
        return {
            **self._stats,
            "open_streams": len(self._streams),
            "handlers": self._handlers,
            "buffered": sum(stream.buffered for stream in self._streams.values()),
            "outbox": len(self._outbox),
            "live": int(self.live),
            "draining": int(self._draining or self._peer_draining),
        }

    async def wait_ready(self) -> None:
        """Wait until the peer's SETTINGS arrived (or the connection ended: check :attr:`live`)."""
        await self._ready.wait()

    async def wait_closed(self) -> None:
        await self._finished.wait()

    async def run(
        self, handler: StreamHandler | None = None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Drive the connection until it ends. Returns after a graceful end (GOAWAY without error, or our
        own drain); raises :class:`ConnectionProblem` when the transport breaks, the peer violates HTTP/2,
        or PINGs go unanswered. Server side: ``handler(stream)`` runs in a task per valid CONNECT stream;
        it must ``accept()`` or ``refuse()`` it; exceptions it raises are logged and end only its stream.
        The transport is closed on return."""
        if (handler is None) != (self.side == "client"):
            raise BadParameter("the server side of a tunnel needs a stream handler; the client side takes none")
        self._handler = handler
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._start()
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._ping_loop)
                task_status.started()
        finally:
            self._shutdown(None)
            self._finished.set()
            if self._failure is None:
                with trio.move_on_after(self.config.close_timeout):
                    await self._transport.aclose()
            await trio.aclose_forcefully(self._transport)
        if self._failure is not None:
            raise self._failure

    async def drain(self) -> None:
        """Refuse new streams, let the existing ones finish, then GOAWAY and close; returns once closed."""
        self.start_drain()
        await self._finished.wait()

    def start_drain(self) -> None:
        """:meth:`drain` without waiting."""
        if self._dead or self._draining:
            return
        self._draining = True
        if self.side == "server":
            self._h2_call(self._conn.update_settings, {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
        if self._nursery is not None:
            self._nursery.start_soon(self._drain_when_idle)

    def abort(self, reason: str) -> None:
        """End the connection now: every stream breaks, :meth:`run` raises ConnectionProblem(reason)."""
        self._fail(ConnectionProblem(reason))

    async def open_stream(self, headers: Sequence[tuple[bytes, bytes]], *, authority: str) -> TunnelStream:
        """Client side: open an extended-CONNECT stream carrying ``headers``; returns once the server
        accepted it. Raises ConnectionProblem when the connection is not live or the server refused or reset
        the stream, LimitExceeded at the peer's stream limit. Time limits are the caller's (``fail_after``)."""
        if self.side != "client":
            raise BadParameter("only the client side of a tunnel opens streams")
        await self._ready.wait()
        if not self.live:
            raise ConnectionProblem(f"tunnel is {'closed' if self._dead else 'draining'}: no new streams")
        if not self._conn.remote_settings.enable_connect_protocol:
            raise ConnectionProblem("tunnel peer does not accept extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)")
        request = [
            (b":method", b"CONNECT"),
            (b":protocol", PROTOCOL),
            (b":scheme", b"https"),
            (b":path", b"/"),
            (b":authority", authority.encode("ascii", "replace")),
            *headers,
        ]
        try:
            stream_id = self._conn.get_next_available_stream_id()
            self._conn.send_headers(stream_id, request)
        except h2.exceptions.TooManyStreamsError:
            raise LimitExceeded(
                f"tunnel peer allows {self._conn.remote_settings.max_concurrent_streams} concurrent streams"
                " and all are in use"
            ) from None
        except h2.exceptions.NoAvailableStreamIDError:
            self.start_drain()
            raise ConnectionProblem("tunnel connection used up its stream ids; it drains now") from None
        except h2.exceptions.ProtocolError as exc:
            raise ConnectionProblem(f"tunnel stream headers refused by h2: {exc}") from None
        stream = TunnelStream(self, stream_id, [])
        self._streams[stream_id] = stream
        self._stats["streams_opened_total"] += 1
        self._pull()
        try:
            while stream.status is None:
                if stream._error is not None:
                    raise ConnectionProblem(f"tunnel stream was not opened: {stream._error}")
                await stream._recv_lot.park()
        except BaseException:
            await stream.aclose()
            raise
        if stream.status != 200:
            reason = dict(stream.headers).get(ERROR_HEADER, b"").decode("ascii", "replace")
            await stream.aclose()
            raise ConnectionProblem(f"tunnel peer refused the stream: HTTP {stream.status}: {reason or 'no reason'}")
        return stream

    # -- h2 plumbing -------------------------------------------------------------------------------------------

    def _start(self) -> None:
        config = self.config
        self._conn.local_settings = h2.settings.Settings(
            client=self.side == "client",
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: config.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: config.stream_window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: config.max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: config.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1 if self.side == "server" else 0,
            },
        )
        # Settings given as initial values are in force at once (the peer learns them from our first
        # SETTINGS frame); h2 copied the defaults of these two into plain attributes at construction.
        self._conn.max_inbound_frame_size = config.max_frame_size
        self._conn.decoder.max_header_list_size = config.max_header_list_size
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(config.connection_window - _DEFAULT_WINDOW)
        self._pull()

    def _pull(self, *, wake: bool = True) -> None:
        """Move whatever h2 wants to send into the outbox and wake the writer (unless the caller flushes)."""
        data = self._conn.data_to_send()
        if data:
            self._outbox += data
            self._queued_seq += 1
            if wake:
                self._writer_lot.unpark_all()

    def _h2_call(self, method: Callable[..., object], *args: object, wake: bool = True) -> bool:
        """Call an h2 method that changes stream state; False (nothing sent) when h2 says the stream or the
        connection is already gone, which races with the peer make normal. ``wake=False``: the caller
        flushes (``_flush``) right after, so the writer task need not run."""
        if self._dead:
            return False
        try:
            method(*args)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return False
        except h2.exceptions.ProtocolError as exc:
            log.debug("tunnel: h2 refused %s: %s", getattr(method, "__name__", method), exc)
            return False
        self._pull(wake=wake)
        return True

    async def _wait_flushed(self) -> None:
        target = self._queued_seq
        while self._sent_seq < target:
            if self._dead:
                raise StreamReset("tunnel connection ended before the data was sent")
            waiters = self._flush_waiters
            if waiters and waiters[-1][0] >= target:
                lot = waiters[-1][1]  # woken no earlier than needed: its target is at least ours
            else:
                lot = trio.lowlevel.ParkingLot()
                waiters.append((target, lot))
            await lot.park()

    def _send_window(self, stream: TunnelStream) -> int:
        if self._dead or stream._on_wire_done:
            return 0
        try:
            return self._conn.local_flow_control_window(stream.stream_id)
        except h2.exceptions.ProtocolError:
            return 0

    def _send_data(self, stream: TunnelStream, data: memoryview) -> None:
        """Queue ``data`` (within the stream's send window, checked by the caller) as DATA frames."""
        conn = self._conn
        frame = conn.max_outbound_frame_size
        h2stream = _sendable_stream(conn, stream.stream_id) if not self._dead else None
        if h2stream is not None:
            # What h2's send_data does, without building and serializing a frame object per frame (a watch
            # event per watch in a burst): the same bytes and the same window accounting (module docstring).
            self._pull(wake=False)  # whatever h2 queued goes out first, in order
            tail = stream.stream_id.to_bytes(5, "big")  # flags 0, then the stream id
            outbox = self._outbox
            for start in range(0, len(data), frame):
                chunk = data[start : start + frame]
                size = len(chunk)
                outbox += (size << 8).to_bytes(4, "big")  # 24-bit length, type DATA (0)
                outbox += tail
                outbox += chunk
                conn.outbound_flow_control_window -= size
                h2stream.outbound_flow_control_window -= size
            self._queued_seq += 1
            self._stats["bytes_out_total"] += len(data)
            return
        for start in range(0, len(data), frame):
            chunk = data[start : start + frame]
            if not self._h2_call(conn.send_data, stream.stream_id, chunk, wake=False):
                self._writer_lot.unpark_all()  # earlier chunks are queued: the writer sends them
                raise stream._error.fresh() if stream._error else StreamReset("tunnel stream was reset")
            self._stats["bytes_out_total"] += len(chunk)

    def _end_stream(self, stream: TunnelStream) -> None:
        stream._sent_eof = True
        self._h2_call(self._conn.end_stream, stream.stream_id)
        self._maybe_forget(stream)

    def _respond(self, stream: TunnelStream, status: int, reason: str | None) -> None:
        if self.side != "server" or stream._responded:
            raise BadParameter("only a server-side stream is answered, and only once")
        stream._responded = True
        headers = [(b":status", str(status).encode())]
        if reason is not None:
            headers.append((ERROR_HEADER, _clean_reason(reason)))
        if status == 200:
            self._h2_call(self._conn.send_headers, stream.stream_id, headers)
            return
        self._stats["streams_refused_total"] += 1
        stream._sent_eof = True
        self._h2_call(self._conn.send_headers, stream.stream_id, headers, True)
        # Tell the client to stop sending on it too (RFC 9113 §8.1: a complete response, then NO_ERROR).
        self._h2_call(self._conn.reset_stream, stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        stream._break(StreamReset("tunnel stream was refused", h2.errors.ErrorCodes.NO_ERROR))
        self._forget(stream)

    def _consumed(self, stream: TunnelStream, size: int) -> None:
        """Hand the window back only now that the consumer took the bytes: that is the flow control.

        Small reads (a watch event each) are told to ``h2`` together, once ``_ack_batch`` bytes were read
        (an acknowledgement costs an ``h2`` call and an outbox check per read; ``h2`` itself sends a
        WINDOW_UPDATE only once half the window was acknowledged). Holding back less than
        ``stream_window / 16`` never stalls the peer: when its window is used up, everything it sent is
        buffered here, so once read, all but that remainder (over half the window) was acknowledged."""
        if not size or self._dead:
            return
        size += stream._unacked
        if size < self._ack_batch and not stream._recv_eof:
            stream._unacked = size
            return
        stream._unacked = 0
        self._h2_call(self._conn.acknowledge_received_data, size, stream.stream_id)

    def _ack_held(self, stream: TunnelStream) -> None:
        """The peer ended the stream: what reads held back goes to h2 now (the connection window needs it
        back; later reads acknowledge at once)."""
        if stream._unacked and not self._dead:
            size, stream._unacked = stream._unacked, 0
            self._h2_call(self._conn.acknowledge_received_data, size, stream.stream_id)

    def _discard_unread(self, stream: TunnelStream) -> None:
        # Nobody will read these bytes: hand their window back (and what reads held back) so the
        # connection window never leaks.
        size = stream._buffered + stream._unacked
        stream._buffer = None
        stream._buffered = 0
        stream._unacked = 0
        if size and not self._dead:
            self._h2_call(self._conn.acknowledge_received_data, size, stream.stream_id)

    def _close_stream(self, stream: TunnelStream) -> None:
        self._discard_unread(stream)
        if not stream._on_wire_done and not self._dead:
            if stream._recv_eof and stream._error is None:
                if not stream._sent_eof:
                    stream._sent_eof = True
                    self._h2_call(self._conn.end_stream, stream.stream_id)
            else:
                self._stats["streams_reset_total"] += 1
                self._h2_call(self._conn.reset_stream, stream.stream_id, h2.errors.ErrorCodes.CANCEL)
        self._forget(stream)

    def _maybe_forget(self, stream: TunnelStream) -> None:
        if stream._sent_eof and stream._recv_eof:
            self._forget(stream)

    def _forget(self, stream: TunnelStream) -> None:
        stream._on_wire_done = True
        if self._streams.pop(stream.stream_id, None) is not None:
            self._idle_lot.unpark_all()

    # -- tasks -----------------------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            while not self._outbox or self._writing:
                await self._writer_lot.park()
            self._writing = True
            try:
                sent = await self._send_outbox()
            finally:
                self._writing = False
            if not sent:
                return

    async def _send_outbox(self) -> bool:
        """Hand the outbox to the transport (the caller holds ``_writing``); False when the transport broke."""
        data, self._outbox = self._outbox, bytearray()
        seq = self._queued_seq
        try:
            await self._transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(ConnectionProblem(f"tunnel connection broke while sending: {_describe(exc)}"))
            return False
        self._sent(seq)
        return True

    async def _send_outbox_now(self, send_now: Callable[[bytearray], memoryview]) -> bool | None:
        """:meth:`_send_outbox` for ``_flush``: what the transport takes at once is sent synchronously (no
        checkpoint, so no cancellation can cut a frame or a TLS record); only a rest the socket did not
        take is finished shielded (blocks only while the peer does not read: the PING loop then ends the
        tunnel and the write raises). None when the transport broke, else whether it waited."""
        data, self._outbox = self._outbox, bytearray()
        seq = self._queued_seq
        try:
            rest = send_now(data)
            if rest:
                assert self._send_unyielding is not None  # a transport with send_now has it (SocketTLSStream)
                with trio.CancelScope(shield=True):
                    await self._send_unyielding(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(ConnectionProblem(f"tunnel connection broke while sending: {_describe(exc)}"))
            return None
        self._sent(seq)
        return bool(rest)

    def _sent(self, seq: int) -> None:
        self._sent_seq = seq
        self._flushed_lot.unpark_all()
        waiters = self._flush_waiters
        while waiters and waiters[0][0] <= seq:
            waiters.popleft()[1].unpark_all()

    async def _flush(self) -> bool:
        """Return once everything queued so far went to the transport. When nobody is writing, the caller
        writes itself instead of waking the writer task and waiting to be woken (two task switches per
        ``send_all``); it also sends what other streams queued meanwhile. True when it passed a schedule
        point (it waited for another writer, or the transport yielded or waited)."""
        if self._writing or self._dead:
            await self._wait_flushed()
            return True
        send_now = self._send_now
        yielded = send_now is None
        self._writing = True
        try:
            if send_now is not None:
                now = time.perf_counter()
                burst = now - self._last_flush < _BURST_GAP
                self._last_flush = now
                while self._outbox and not self._dead:
                    waited = await self._send_outbox_now(send_now)
                    if waited is None:
                        break
                    yielded = yielded or waited
                    if burst and not yielded:
                        # Another stream wrote a moment ago: many streams are sending at once (responses to
                        # many kubectl connections, a burst of watch events). Stay the writer across one
                        # schedule point, so the senders that run meanwhile queue their frames behind this
                        # one and a single write carries them all. A lone request writes and goes on.
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        yielded = True
            else:
                # Shielded: a TLS write cancelled half-way would break the connection for every stream. It
                # blocks only while the peer does not read; the PING loop then ends the tunnel, whose
                # transport is closed under it, and the write raises.
                with trio.CancelScope(shield=True):
                    while self._outbox and not self._dead:
                        if not await self._send_outbox():
                            break
        finally:
            self._writing = False
            if self._outbox:
                self._writer_lot.unpark_all()
        if self._dead and self._sent_seq < self._queued_seq:
            raise StreamReset("tunnel connection ended before the data was sent")
        await trio.lowlevel.checkpoint_if_cancelled()
        return yielded

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self._transport.receive_some(self.config.read_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail(ConnectionProblem(f"tunnel connection broke: {_describe(exc)}"))
                return
            if not data:
                self._fail(ConnectionProblem("tunnel peer closed the connection without GOAWAY"))
                return
            self._stats["bytes_in_total"] += len(data)
            try:
                events = _receive(self._conn, data if isinstance(data, bytes) else bytes(data))
            except h2.exceptions.H2Error as exc:
                code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
                with contextlib.suppress(h2.exceptions.H2Error):
                    self._conn.close_connection(error_code=code, additional_data=_clean_reason(str(exc)))
                self._pull()
                await self._flush_briefly()
                self._fail(ConnectionProblem(f"tunnel peer broke HTTP/2: {type(exc).__name__}: {exc}"))
                return
            for event in events:
                self._dispatch(event)
                if self._dead:
                    return
            self._pull()
            if len(self._outbox) > self.config.max_outbox:
                self._fail(ConnectionProblem(f"tunnel peer does not read: {len(self._outbox)} bytes unsent"))
                return

    async def _ping_loop(self) -> None:
        config = self.config
        while True:
            await trio.sleep(config.ping_interval)
            if self._ping_outstanding:
                self._ping_missed += 1
                if self._ping_missed >= config.ping_misses:
                    waited = config.ping_interval * config.ping_misses
                    self._fail(ConnectionProblem(f"tunnel peer answered no PING for {waited:g} s"))
                    return
            self._ping_counter += 1
            self._ping_outstanding = True
            self._stats["pings_sent_total"] += 1
            self._h2_call(self._conn.ping, self._ping_counter.to_bytes(8, "big"))

    async def _drain_when_idle(self) -> None:
        while self._streams or self._handlers:
            await self._idle_lot.park()
        with contextlib.suppress(h2.exceptions.H2Error):
            self._conn.close_connection(last_stream_id=self._conn.highest_inbound_stream_id)
        self._pull()
        await self._flush_briefly()
        self._dead = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _flush_briefly(self) -> None:
        """Give the writer a moment to send a last frame (GOAWAY) before the connection is torn down."""
        with trio.move_on_after(self.config.close_timeout):
            target = self._queued_seq
            while self._sent_seq < target and not self._dead:
                await self._flushed_lot.park()

    async def _run_handler(self, stream: TunnelStream) -> None:
        assert self._handler is not None
        try:
            await self._handler(stream)
        except trio.BrokenResourceError as exc:  # the stream was reset or the connection ended: expected
            log.debug("tunnel stream %d: handler ended: %s", stream.stream_id, exc)
        except Exception:
            log.exception("tunnel stream %d: handler failed", stream.stream_id)
        finally:
            if not stream._responded:
                self._respond(stream, 500, "the agent did not answer the stream")
            self._handlers -= 1
            stream._closed = True
            self._close_stream(stream)
            self._idle_lot.unpark_all()

    # -- events ------------------------------------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._stream(event.stream_id)
            if stream is not None:
                stream.headers = _headers(event.headers)
                stream.status = _status(stream.headers)
                stream._recv_lot.unpark_all()
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._stream(event.stream_id)
            if stream is not None:
                stream._recv_eof = True
                self._ack_held(stream)
                stream._recv_lot.unpark_all()
                stream._peer_ended()
                self._maybe_forget(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._stream(event.stream_id)
            if stream is not None:
                code = int(event.error_code) if event.error_code is not None else 0
                stream._break(StreamReset(f"tunnel stream was reset by the peer ({_code_name(code)})", code))
                if not stream._recv_eof:
                    self._discard_unread(stream)
                self._forget(stream)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self._stream(event.stream_id)
                if stream is not None:
                    stream._send_lot.unpark_all()
            else:
                self._wake_senders()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._on_settings(event)
        elif isinstance(event, h2.events.PingAckReceived):
            self._ping_outstanding = False
            self._ping_missed = 0
        elif isinstance(event, h2.events.ConnectionTerminated):
            code = int(event.error_code) if event.error_code is not None else 0
            if code == h2.errors.ErrorCodes.NO_ERROR:
                self._dead = True  # graceful: run() returns normally
                self._shutdown(StreamReset("tunnel peer closed the connection (GOAWAY)"))
                if self._nursery is not None:
                    self._nursery.cancel_scope.cancel()
            else:
                detail = (event.additional_data or b"").decode("ascii", "replace")
                self._fail(ConnectionProblem(f"tunnel peer ended the connection: {_code_name(code)} {detail}".strip()))
        elif isinstance(event, h2.events.TrailersReceived):  # not part of the tunnel protocol
            stream = self._stream(event.stream_id)
            if stream is not None:
                stream._break(StreamReset("tunnel peer sent trailers", h2.errors.ErrorCodes.PROTOCOL_ERROR))
                self._h2_call(self._conn.reset_stream, event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                self._discard_unread(stream)
                self._forget(stream)

    def _stream(self, stream_id: int | None) -> TunnelStream | None:
        return self._streams.get(stream_id) if stream_id is not None else None

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        data = event.data or b""
        flow = event.flow_controlled_length or 0
        stream = self._stream(stream_id)
        if stream is None or stream._closed or stream._error is not None or stream_id is None:
            # Nobody will read it: give the window straight back.
            if flow and stream_id is not None:
                self._h2_call(self._conn.acknowledge_received_data, flow, stream_id)
            return
        if flow > len(data):  # padding is never read by anyone
            self._h2_call(self._conn.acknowledge_received_data, flow - len(data), stream_id)
        if data:
            if stream._buffer is None:
                stream._buffer = deque()
            stream._buffer.append(data)
            stream._buffered += len(data)
            self._stats["peak_stream_buffered"] = max(self._stats["peak_stream_buffered"], stream._buffered)
            stream._recv_lot.unpark_all()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if stream_id is None:
            return
        headers = _headers(event.headers)
        if self._draining or self._dead or self._nursery is None:
            self._stats["streams_refused_total"] += 1
            self._h2_call(self._conn.reset_stream, stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = TunnelStream(self, stream_id, headers)
        self._streams[stream_id] = stream
        self._stats["streams_opened_total"] += 1
        pseudo = {name: value for name, value in headers if name.startswith(b":")}
        method, protocol = pseudo.get(b":method"), pseudo.get(b":protocol")
        if method != b"CONNECT" or protocol != PROTOCOL:
            got = f"{(method or b'').decode('ascii', 'replace')} {(protocol or b'-').decode('ascii', 'replace')}"
            self._respond(stream, 400, f"a tunnel stream is CONNECT with :protocol kubeport-http1, got {got}")
            return
        self._handlers += 1
        self._nursery.start_soon(self._run_handler, stream)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in changed:
            self._wake_senders()
        limit = changed.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
        if limit is not None:
            self._peer_draining = limit.new_value == 0
        self._ready.set()

    def _wake_senders(self) -> None:
        for stream in self._streams.values():
            stream._send_lot.unpark_all()

    # -- ending ------------------------------------------------------------------------------------------------

    def _fail(self, problem: ConnectionProblem) -> None:
        if not self._dead and self._failure is None:
            self._failure = problem
            log.debug("tunnel (%s side): %s", self.side, problem.message)
        self._dead = True
        self._shutdown(StreamReset(f"tunnel connection ended: {problem.message}"))
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _shutdown(self, error: StreamReset | None) -> None:
        self._dead = True
        error = error or StreamReset("tunnel connection ended")
        for stream in list(self._streams.values()):
            stream._break(error)
            stream._on_wire_done = True
            if not stream._recv_eof:
                stream._buffer = None
                stream._buffered = 0
        self._streams.clear()
        self._ready.set()
        self._writer_lot.unpark_all()
        self._flushed_lot.unpark_all()
        while self._flush_waiters:
            self._flush_waiters.popleft()[1].unpark_all()
        self._idle_lot.unpark_all()


def _headers(raw: Sequence[tuple[bytes | str, bytes | str]] | None) -> Headers:
    out: Headers = []
    for name, value in raw or ():
        out.append(
            (
                name if isinstance(name, bytes) else name.encode("latin-1"),
                value if isinstance(value, bytes) else value.encode("latin-1"),
            )
        )
    return out


def _status(headers: Headers) -> int:
    for name, value in headers:
        if name == b":status" and value.isdigit():
            return int(value)
    return 0


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    if cause is not None and str(cause):
        text += f" ({cause})"
    return text
