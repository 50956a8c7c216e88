"""The sans-IO core of the agent's HTTP/2 client towards an API server: many watches on one connection.

:class:`H2ClientCore` wraps python-hyper's ``h2`` state machine (client side) and keeps, per request stream,
what the forwarder needs: the answer's head, the DATA received and not yet taken, and how the stream ended
(cleanly, reset by the server, or with the connection). It never does I/O: bytes in (:meth:`receive`),
bytes out (:meth:`data_to_send`); the trio adapter (:mod:`agent.forward.upstream_h2`) moves them.

Invariants:

* Flow control is end to end. A stream's received DATA is acknowledged only when the caller says it was
  written onward (:meth:`consumed`), so at most ``stream_window`` bytes wait per stream: a kubectl that does
  not read stalls its own stream, never another. The connection window is ``max_streams * stream_window``
  (plus the default), so streams that stalled with full windows can never exhaust it either. Padding is
  acknowledged at once (it is never delivered).
* At most ``min(max_streams, the server's SETTINGS_MAX_CONCURRENT_STREAMS)`` streams are open at once;
  :meth:`can_open` says whether one more fits (the pool opens a second connection when not).
* Anything the server breaks (a malformed frame, a header list beyond ``max_header_list``, DATA beyond the
  window we granted, a push) ends the connection: GOAWAY goes out, every open stream ends with an error and
  :attr:`broken` says why. A GOAWAY from the server ends the streams it did not process and refuses new
  ones (:attr:`accepting` is False); the streams it did process run to their end.
* A stream the caller gives up on (:meth:`cancel`) is reset (RST_STREAM CANCEL) and forgotten; DATA the
  server sent before it saw the reset is acknowledged on the connection, so the window does not leak.
* Error texts never quote bytes from the server or the request (they may be a secret's).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

STREAM_WINDOW: Final = 64 * 1024
MAX_STREAMS: Final = 100  # our own cap per connection; the server's may be lower
MAX_HEADER_LIST: Final = 256 * 1024  # an answer's head; bigger is hostile (as MAX_RESPONSE_HEAD on 1.1)
_DEFAULT_WINDOW: Final = 65_535


class H2StreamError(Exception):
    """A stream ended without a complete answer (reset, GOAWAY, connection broken). ``str()`` says why."""


@dataclass(eq=False, slots=True)  # no __dict__: one per open watch
class H2Stream:
    """One request's answer as it arrives. ``status``/``headers`` once the head came (headers without
    pseudo-headers, names lower-case); ``data``: received, not yet taken; ``ended``: the answer is complete
    once ``data`` is taken; ``error``: why it ended early (then nothing more comes)."""

    stream_id: int
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)  # a list, not a deque: ~600 bytes less per idle watch
    ended: bool = False
    error: str | None = None
    unacked: int = 0  # DATA bytes received and not yet acknowledged (given back on cancel)

    @property
    def finished(self) -> bool:
        return self.ended or self.error is not None


class H2ClientCore:
    """One HTTP/2 client connection's protocol state (see the module docstring)."""

    def __init__(
        self,
        *,
        stream_window: int = STREAM_WINDOW,
        max_streams: int = MAX_STREAMS,
        max_header_list: int = MAX_HEADER_LIST,
    ) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=config)
        self.max_streams = max_streams
        self.streams: dict[int, H2Stream] = {}
        self.broken: str | None = None  # why the connection is unusable (it then has no open streams)
        self.goaway = False
        self.settings_received = False
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,  # the server opens none (no push)
            },
        )
        self.h2.initiate_connection()
        extra = max_streams * stream_window
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        # h2 enforces the header list size only once the server acknowledged our SETTINGS; the decoder
        # holds to it from the start (a server cannot count on the defaults before it read them anyway).
        self.h2.decoder.max_header_list_size = max_header_list

    # -- state ------------------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether a new stream may go on this connection at all (not broken, no GOAWAY)."""
        return self.broken is None and not self.goaway

    def limit(self) -> int:
        return min(self.max_streams, self.h2.remote_settings.max_concurrent_streams)

    def can_open(self) -> bool:
        """Whether one more stream fits now (the server's settings arrived and its limit is not reached)."""
        return self.accepting and self.settings_received and len(self.streams) < self.limit()

    def data_to_send(self) -> bytes:
        return self.h2.data_to_send()

    def has_output(self) -> bool:
        """Whether frames wait to be sent (so a writer need not take its lock for nothing: most DATA
        acknowledgements queue no WINDOW_UPDATE). Asks h2's output buffer; an h2 that renamed it says True."""
        pending = getattr(self.h2, "_data_to_send", None)
        return True if pending is None else bool(pending)

    # -- requests ---------------------------------------------------------------------------------------

    def open(self, headers: list[tuple[bytes, bytes]]) -> H2Stream:
        """Send a request without a body (``headers``: pseudo-headers first); its :class:`H2Stream`."""
        if not self.can_open():
            raise H2StreamError("the connection takes no more streams")
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=True)
        stream = H2Stream(stream_id)
        self.streams[stream_id] = stream
        return stream

    def take(self, stream: H2Stream) -> list[bytes]:
        """The DATA received on ``stream`` and not taken yet (acknowledge it with :meth:`consumed`)."""
        pieces, stream.data = stream.data, []
        return pieces

    def consumed(self, stream: H2Stream, size: int) -> None:
        """``size`` bytes of ``stream``'s DATA went onward: the server may send that much more."""
        size = min(size, stream.unacked)
        if size <= 0 or self.broken is not None:
            return
        stream.unacked -= size
        self._ack(stream.stream_id, size)

    def _ack(self, stream_id: int, size: int) -> None:
        # For a stream that closed meanwhile h2 gives back the connection's share only.
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (h2.exceptions.ProtocolError, ValueError) as exc:
            self._break(f"flow control failed ({_name(exc)})")

    def cancel(self, stream: H2Stream) -> None:
        """The caller gives up on ``stream`` (kubectl went away): RST_STREAM unless it already ended. What
        it received and never delivered is given back to the connection's window."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if self.broken is None and not stream.finished:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed on the wire
                self.h2.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
        stream.data.clear()
        if stream.unacked and self.broken is None:
            self._ack(stream.stream_id, stream.unacked)
        stream.unacked = 0

    def finish(self, stream: H2Stream) -> None:
        """The caller is done with a stream that ended (its answer relayed): forget it."""
        self.streams.pop(stream.stream_id, None)

    # -- input ------------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> set[H2Stream]:
        """Feed bytes from the server; the streams with news (head, DATA, end, error)."""
        touched: set[H2Stream] = set()
        if self.broken is not None:
            return touched
        try:
            events = self.h2.receive_data(data)
        except (h2.exceptions.ProtocolError, ValueError) as exc:  # hpack errors are ProtocolErrors in h2
            # h2 already queued a GOAWAY with the error code.
            return self._break(f"the API server broke the HTTP/2 protocol ({_name(exc)})")
        for event in events:
            self._event(event, touched)
        return touched

    def connection_lost(self, why: str) -> set[H2Stream]:
        """The transport ended or broke: every open stream ends with ``why``."""
        return self._break(why)

    def _event(self, event: h2.events.Event, touched: set[H2Stream]) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            code = _code_name(event.error_code)
            for pending in list(self.streams.values()):
                # Streams above last_stream_id were never processed; the rest may still finish, but with an
                # error code the server is going away at once: nothing more will come for any of them.
                gone = pending.stream_id > last or event.error_code not in (ErrorCodes.NO_ERROR, None)
                if gone and not pending.finished:
                    pending.error = f"the API server ended the HTTP/2 connection (GOAWAY {code})"
                    touched.add(pending)
            return
        stream_id = getattr(event, "stream_id", None)
        if stream_id is None:
            return
        stream = self.streams.get(stream_id)
        if isinstance(event, h2.events.DataReceived):
            size = event.flow_controlled_length or 0
            if stream is None or stream.finished:
                # A stream we reset or that failed: its bytes go nowhere, the connection gets them back.
                if size:
                    self._ack(stream_id, size)
                return
            padding = size - len(event.data)
            if padding > 0:
                self._ack(stream_id, padding)
            if event.data:
                stream.data.append(bytes(event.data))
                stream.unacked += len(event.data)
                touched.add(stream)
            return
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            self._head(stream, event.headers or [])
        elif isinstance(event, h2.events.InformationalResponseReceived):
            return  # 1xx: not for kubectl
        elif isinstance(event, h2.events.TrailersReceived):
            return  # a watch has none worth passing on; HTTP/1.1 chunked trailers are not relayed either
        elif isinstance(event, h2.events.StreamEnded):
            if stream.status is None:
                stream.error = "the API server ended the stream before an answer"
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            if not stream.ended:
                stream.error = f"the API server reset the stream ({_code_name(event.error_code)})"
        else:
            return
        touched.add(stream)

    def _head(self, stream: H2Stream, headers: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> None:
        status: int | None = None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            n = name if isinstance(name, bytes) else name.encode("latin-1")
            v = value if isinstance(value, bytes) else value.encode("latin-1")
            if n == b":status":
                status = int(v) if v.isdigit() and len(v) == 3 else None
            elif not n.startswith(b":"):
                kept.append((n, v))
        if status is None or status < 200:
            stream.error = "the API server answered without a usable status"
            return
        stream.status = status
        stream.headers = kept

    def _break(self, why: str) -> set[H2Stream]:
        touched: set[H2Stream] = set()
        if self.broken is None:
            self.broken = why
        for stream in self.streams.values():
            if not stream.finished:
                stream.error = why
                touched.add(stream)
        return touched


def _code_name(code: object) -> str:
    return getattr(code, "name", None) or str(code)


def _name(exc: BaseException) -> str:
    return type(exc).__name__
