"""The exit code of an exec/attach session, read passively from the API server's side of the splice.

After a ``101`` the forwarder splices bytes and never changes them. For the WebSocket channel protocols
(``v4.channel.k8s.io``, ``v5.channel.k8s.io``) every binary message is one channel byte and a payload, and
the kubelet ends a session with a ``Status`` JSON on channel 3 (the error channel): ``status: Success`` is
exit code 0; ``details.causes[reason=ExitCode].message`` is the code of a command that failed. An
:class:`ExitCodeTap` is fed copies of the server -> client bytes (``feed``) and decodes them with
``wsproto`` as the client would, only to find that message; :meth:`ExitCodeTap.result` says what it found.

Invariants (the tap sits on a hot path and reads hostile bytes):

* It never changes, delays or holds the bytes it is shown: the caller forwards them itself.
* Memory is bounded: payloads of other channels are dropped as they are parsed; the error channel's
  message is kept up to :data:`MAX_STATUS_BYTES`, and a longer one gives up. wsproto holds at most a frame
  header or a control frame (125 bytes) beyond that.
* Anything odd (a frame wsproto refuses, a masked frame from the server, a text frame, a Status that is not
  JSON, not an object, or names no usable code, a close before the status) gives up: the exit code is
  ``None`` with the reason, never a guess. Once it has an answer or gave up, ``wants_data`` is False and
  ``feed`` costs nothing.

SPDY sessions are read by :mod:`agent.forward.exit_spdy`; :mod:`agent.forward.exit_taps` picks the tap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

MAX_STATUS_BYTES = 64 * 1024  # a kubelet Status is a few hundred bytes; its message names the command
ERROR_CHANNEL = 3
CHANNEL_PROTOCOLS = frozenset({"v4.channel.k8s.io", "v5.channel.k8s.io"})
_MAX_REASON = 200  # the most of a Status' own words copied into a reason


@dataclass(frozen=True)
class ExitStatus:
    """What ``session.end`` says: ``code`` when known, else ``reason`` explains why not."""

    code: int | None
    reason: str | None = None


class ExitCodeTap:
    """Finds the exit status in the server -> client bytes of a WebSocket channel session (see the module
    docstring). Sans-IO: ``feed`` the bytes as they pass, read :meth:`result` when the session ends."""

    def __init__(self) -> None:
        self._ws = Connection(ConnectionType.CLIENT)  # we read what the client reads: unmasked server frames
        self._channel: int | None = None  # the channel of the message being read (None: not known yet)
        self._status = bytearray()
        self._result: ExitStatus | None = None

    @property
    def wants_data(self) -> bool:
        return self._result is None

    wants_client_data = False  # the exit status is in the server's bytes only

    def feed_client(self, data: bytes | bytearray | memoryview) -> None:
        return None

    def feed_server(self, data: bytes | bytearray | memoryview) -> None:
        self.feed(data)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Show the tap the next server -> client bytes (a copy is parsed; ``data`` is not kept)."""
        if self._result is not None or not data:
            return
        try:
            self._ws.receive_data(bytes(data))
            for event in self._ws.events():
                self._on_event(event)
                if self._result is not None:
                    return
        except (LocalProtocolError, RemoteProtocolError, ValueError) as exc:
            self._give_up(f"the websocket stream could not be decoded ({type(exc).__name__})")
        except Exception as exc:  # a passive tap must never break the session it watches
            self._give_up(f"the websocket stream could not be decoded (unexpected {type(exc).__name__})")

    def result(self) -> ExitStatus:
        """The exit status found, or why there is none (the session ended before its status arrived)."""
        if self._result is not None:
            return self._result
        return ExitStatus(None, "the session ended before its exit status arrived")

    def _give_up(self, reason: str) -> None:
        self._result = ExitStatus(None, reason)
        self._status = bytearray()

    def _on_event(self, event: object) -> None:
        if isinstance(event, CloseConnection):
            # wsproto reports a frame it cannot parse (or a masked one) as a close with a protocol code.
            self._give_up(f"the websocket closed (code {event.code}) before the exit status arrived")
        elif isinstance(event, TextMessage):
            self._give_up("a text message on a binary channel protocol")
        elif isinstance(event, BytesMessage):
            self._on_bytes(event)

    def _on_bytes(self, event: BytesMessage) -> None:
        data = event.data
        if self._channel is None and data:
            self._channel, data = data[0], data[1:]
        if self._channel == ERROR_CHANNEL:
            if len(self._status) + len(data) > MAX_STATUS_BYTES:
                self._give_up(f"the error channel's message is longer than {MAX_STATUS_BYTES} bytes")
                return
            self._status += data
        if event.message_finished:
            channel, self._channel = self._channel, None
            if channel == ERROR_CHANNEL and self._status:  # an empty one only opens the channel
                self._result = exit_status(bytes(self._status))
                self._status = bytearray()


def exit_status(body: bytes) -> ExitStatus:
    """The exit status a kubelet ``Status`` (the error channel's message) states."""
    try:
        status = json.loads(body)
    except ValueError:
        return ExitStatus(None, "the error channel's message is not JSON")
    if not isinstance(status, dict):
        return ExitStatus(None, "the error channel's message is not a Status object")
    if status.get("status") == "Success":
        return ExitStatus(0)
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else ():
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            message = cause.get("message")
            text = message.strip() if isinstance(message, str) else ""
            if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= 2**31 - 1:
                return ExitStatus(int(text))
            return ExitStatus(None, "the Status' ExitCode cause is not a number")
    reason = status.get("reason")
    shown = reason[:_MAX_REASON] if isinstance(reason, str) and reason.isprintable() else "no reason"
    return ExitStatus(None, f"the session failed without an exit code ({shown})")
