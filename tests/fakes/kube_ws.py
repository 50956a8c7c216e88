"""WebSocket for the fake's upgraded streams: the handshake answer, and messages over a trio stream.

The HTTP layer (h11) reads the upgrade request; :func:`handshake_headers` builds the ``101`` headers
(``Sec-WebSocket-Accept``, the chosen ``Sec-WebSocket-Protocol``); after the switch :class:`WebSocket`
frames messages with ``wsproto``'s post-handshake connection. Pings are answered as they arrive (client-go
pings every 5 s for exec, 10 s for tunnelled port-forward). Sends are serialised by a lock: several tasks
write channels concurrently.

Also :class:`ByteStream` and its two implementations, the transport under a SPDY session: a raw trio
stream (``Upgrade: SPDY/3.1``) or a WebSocket whose binary messages carry the SPDY bytes
(``SPDY/3.1+portforward.k8s.io``, kubectl 1.31+ port-forward).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Protocol

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
NORMAL_CLOSURE = 1000


def is_websocket_upgrade(headers: list[tuple[str, str]]) -> bool:
    upgrade = ",".join(v for k, v in headers if k == "upgrade").lower()
    return "websocket" in [p.strip() for p in upgrade.split(",")]


def offered_protocols(headers: list[tuple[str, str]]) -> list[str]:
    """Every ``Sec-WebSocket-Protocol`` the client offered, in order (repeated headers and commas both)."""
    return [p.strip() for k, v in headers if k == "sec-websocket-protocol" for p in v.split(",") if p.strip()]


def handshake_headers(headers: list[tuple[str, str]], protocol: str) -> list[tuple[str, str]]:
    key = next((v for k, v in headers if k == "sec-websocket-key"), "")
    return [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", generate_accept_token(key.encode()).decode()),
        ("sec-websocket-protocol", protocol),
    ]


class ByteStream(Protocol):
    async def receive(self) -> bytes:
        """The next bytes from the peer; b"" once it is gone."""
        ...

    async def send(self, data: bytes) -> None: ...


class WebSocket:
    """Server-side WebSocket messages over an already switched trio stream."""

    def __init__(self, stream: trio.abc.Stream, leftover: bytes = b"") -> None:
        self.stream = stream
        self.ws = Connection(ConnectionType.SERVER)
        self._pending = leftover
        self._parts: list[bytes] = []
        self._lock = trio.Lock()
        self.closed = False

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        async with self._lock:
            try:
                await self.stream.send_all(data)
            except _STREAM_ERRORS:
                self.closed = True

    async def receive_message(self) -> bytes | None:
        """The next whole message (text as UTF-8 bytes), or None once the connection is closed."""
        while True:
            for event in self.ws.events():
                if isinstance(event, Ping):
                    await self._write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        await self._write(self.ws.send(event.response()))
                    self.closed = True
                    return None
                elif isinstance(event, BytesMessage | TextMessage):
                    data = event.data.encode() if isinstance(event, TextMessage) else bytes(event.data)
                    self._parts.append(data)
                    if event.message_finished:
                        message, self._parts = b"".join(self._parts), []
                        return message
            if self.closed:
                return None
            if self._pending:
                data, self._pending = self._pending, b""
            else:
                try:
                    data = bytes(await self.stream.receive_some(64 * 1024))
                except _STREAM_ERRORS:
                    data = b""
            self.ws.receive_data(data or None)
            if not data:
                self.closed = True

    async def send_message(self, data: bytes) -> None:
        if self.closed or self.ws.state is not ConnectionState.OPEN:
            return
        await self._write(self.ws.send(BytesMessage(data=data)))

    async def send_close(self, code: int = NORMAL_CLOSURE) -> None:
        if self.ws.state is ConnectionState.OPEN:
            await self._write(self.ws.send(CloseConnection(code=code)))

    async def close(self, code: int = NORMAL_CLOSURE, *, wait: float = 5.0) -> None:
        """Send a close frame, then wait (bounded) for the client's close or EOF before the socket goes.
        Only for a caller that is the connection's sole reader (else: send_close, and let the reader see it)."""
        await self.send_close(code)
        with trio.move_on_after(wait):
            while await self.receive_message() is not None:
                pass
        self.closed = True


class RawBytes:
    """The switched socket itself (SPDY straight over TLS)."""

    def __init__(self, stream: trio.abc.Stream, leftover: bytes = b"") -> None:
        self.stream = stream
        self._pending = leftover
        self._lock = trio.Lock()

    async def receive(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        try:
            return bytes(await self.stream.receive_some(64 * 1024))
        except _STREAM_ERRORS:
            return b""

    async def send(self, data: bytes) -> None:
        async with self._lock:
            with contextlib.suppress(*_STREAM_ERRORS):
                await self.stream.send_all(data)


class WebSocketBytes:
    """SPDY bytes tunnelled in WebSocket binary messages (client-go's tunneling dialer)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def receive(self) -> bytes:
        while True:
            message = await self.ws.receive_message()
            if message is None:
                return b""
            if message:
                return message

    async def send(self, data: bytes) -> None:
        await self.ws.send_message(data)
