"""Shared pieces of the tunnel tests: tunnel pairs over memory streams and over real TLS on 127.0.0.1:0, test
handlers, a raw HTTP/2 peer that can send anything, and a polling waiter with a deadline."""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import hpack
import hyperframe.frame
import trio
import trio.testing

from registry.core.identity import (
    REGISTRY_SERVER_NAME,
    CertAuthority,
    Identity,
    generate_private_key,
    public_key_pem,
)
from registry.core.tunnel_info import StreamInfo
from registry.host.h2tunnel import H2Tunnel, TunnelConfig, TunnelStream
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import client_context, server_context

ALPN_TUNNEL = "kubeport-tunnel/1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


async def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (a deadline, not a sleep)."""
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110  (the brief allows polling with a deadline; no event exists)
            await trio.sleep(0.001)


def stream_info(user: str = "alice", cluster: str = "prod", hours: float = 1.0) -> StreamInfo:
    return StreamInfo(
        cluster=cluster,
        user=user,
        roles=("kube-access",),
        client_addr="127.0.0.1:40000",
        cert_expires=(datetime.now(tz=UTC) + timedelta(hours=hours)).replace(microsecond=0),
    )


async def echo(stream: trio.abc.HalfCloseableStream) -> None:
    """Echo until the peer half-closes, then half-close."""
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def accept_and_echo(stream: TunnelStream) -> None:
    await stream.accept()
    await echo(stream)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some():
        out += data
    return bytes(out)


async def count_all(stream: trio.abc.ReceiveStream) -> int:
    total = 0
    while data := await stream.receive_some():
        total += len(data)
    return total


async def echo_round_trip(stream: trio.abc.HalfCloseableStream, payload: bytes) -> bytes:
    """Send ``payload`` and half-close while reading the echo back to EOF."""
    got = b""

    async def reader() -> None:
        nonlocal got
        got = await read_all(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await stream.send_all(payload)
        await stream.send_eof()
    return got


@dataclass
class Pair:
    client: H2Tunnel
    server: H2Tunnel


async def memory_pair(
    nursery: trio.Nursery,
    handler: Callable[[TunnelStream], Awaitable[None]] = accept_and_echo,
    config: TunnelConfig | None = None,
) -> Pair:
    """A front-door-side client and an agent-side server tunnel over an in-memory stream pair."""
    left, right = trio.testing.memory_stream_pair()
    pair = Pair(H2Tunnel(left, side="client", config=config), H2Tunnel(right, side="server", config=config))
    await nursery.start(pair.server.run, handler)
    await nursery.start(pair.client.run)
    await pair.client.wait_ready()
    return pair


# -- real TLS ---------------------------------------------------------------------------------------------------


@dataclass
class Tls:
    ca: CertAuthority
    server: ssl.SSLContext  # the front door
    client: ssl.SSLContext  # an agent (host-1)


def tls_contexts() -> Tls:
    now = datetime.now(tz=UTC)
    ca = CertAuthority.generate("tunnel-test", now=now)
    server_key = generate_private_key()
    server_cert = ca.issue(
        public_key_pem(server_key), Identity(name="frontdoor", kind="registry"), ttl=timedelta(hours=1), now=now
    )
    agent_key = generate_private_key()
    agent_cert = ca.issue(
        public_key_pem(agent_key),
        Identity(name="agent-1", kind="agent", host_id="host-1"),
        ttl=timedelta(hours=1),
        now=now,
    )
    server = server_context(server_cert, server_key, [ca.cert_pem], client_certs="required")
    server.set_alpn_protocols([ALPN_TUNNEL, "http/1.1"])
    client = client_context([ca.cert_pem], agent_cert, agent_key)
    client.set_alpn_protocols([ALPN_TUNNEL])
    return Tls(ca, server, client)


async def serve_tls(
    nursery: trio.Nursery,
    context: ssl.SSLContext,
    on_connection: Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]],
) -> int:
    """A TLS listener on 127.0.0.1:0 calling ``on_connection`` after the handshake; returns the port."""

    async def handle(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, context, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return
        await on_connection(tls)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def tls_dialer(port: int, context: ssl.SSLContext) -> Callable[[], Awaitable[trio.abc.Stream]]:
    async def dial() -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(tcp, context, server_hostname=REGISTRY_SERVER_NAME)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        assert tls.selected_alpn_protocol() == ALPN_TUNNEL
        return tls

    return dial


async def tls_pair(
    nursery: trio.Nursery,
    handler: Callable[[TunnelStream], Awaitable[None]] = accept_and_echo,
    config: TunnelConfig | None = None,
) -> Pair:
    """Client (front door) and server (agent) tunnels over a real TLS connection on loopback."""
    tls = tls_contexts()
    accepted: trio.MemorySendChannel[H2Tunnel]
    accepted, incoming = trio.open_memory_channel[H2Tunnel](1)

    async def on_connection(stream: trio.SSLStream[trio.SocketStream]) -> None:
        tunnel = H2Tunnel(stream, side="client", config=config)
        await accepted.send(tunnel)
        await tunnel.run()

    port = await serve_tls(nursery, tls.server, on_connection)
    transport = await tls_dialer(port, tls.client)()
    server = H2Tunnel(transport, side="server", config=config)
    await nursery.start(server.run, handler)
    client = await incoming.receive()
    await client.wait_ready()
    return Pair(client, server)


async def socket_tls_streams(*, small_buffers: bool = False) -> tuple[SocketTLSStream, SocketTLSStream]:
    """(agent, front door) ends of a handshaken TLS connection on loopback, as production has them
    (:class:`SocketTLSStream`: OpenSSL on the socket). ``small_buffers``: a few KiB of kernel buffer each
    way, so a write the peer does not read blocks soon."""
    tls = tls_contexts()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        dialed = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
        accepted = await listeners[0].accept()
    finally:
        await listeners[0].aclose()
    assert isinstance(accepted, trio.SocketStream)
    if small_buffers:
        for tcp in (dialed, accepted):
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    agent = SocketTLSStream.wrap(dialed, tls.client, server_hostname=REGISTRY_SERVER_NAME)
    frontdoor = SocketTLSStream.wrap(accepted, tls.server, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.do_handshake)
        nursery.start_soon(frontdoor.do_handshake)
    return agent, frontdoor


async def socket_tls_pair(
    nursery: trio.Nursery,
    handler: Callable[[TunnelStream], Awaitable[None]] = accept_and_echo,
    config: TunnelConfig | None = None,
) -> Pair:
    """:func:`tls_pair` over :class:`SocketTLSStream` ends (the tunnel's synchronous send path)."""
    agent, frontdoor = await socket_tls_streams()
    pair = Pair(H2Tunnel(frontdoor, side="client", config=config), H2Tunnel(agent, side="server", config=config))
    await nursery.start(pair.server.run, handler)
    await nursery.start(pair.client.run)
    await pair.client.wait_ready()
    return pair


# -- a raw HTTP/2 peer ------------------------------------------------------------------------------------------


class RawPeer:
    """Speaks HTTP/2 frame by frame (hyperframe + hpack) so tests can send what h2 itself never would."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self._buffer = bytearray()

    async def send(self, *frames: hyperframe.frame.Frame, raw: bytes = b"") -> None:
        await self.stream.send_all(raw + b"".join(frame.serialize() for frame in frames))

    async def client_preface(self) -> None:
        await self.send(hyperframe.frame.SettingsFrame(0), raw=PREFACE)

    async def server_preface(self) -> None:
        settings = hyperframe.frame.SettingsFrame(0)
        settings.settings = {hyperframe.frame.SettingsFrame.ENABLE_CONNECT_PROTOCOL: 1}
        await self.send(settings)

    def headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> hyperframe.frame.HeadersFrame:
        frame = hyperframe.frame.HeadersFrame(stream_id)
        frame.data = self.encoder.encode(headers)
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    async def next_frame(self) -> hyperframe.frame.Frame | None:
        """The next frame from the other side (HEADERS decoded into ``.decoded``), None at EOF."""
        while True:
            if len(self._buffer) >= 9:
                frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(self._buffer[:9]))
                if len(self._buffer) >= 9 + length:
                    frame.parse_body(memoryview(bytes(self._buffer[9 : 9 + length])))
                    del self._buffer[: 9 + length]
                    if isinstance(frame, hyperframe.frame.HeadersFrame):
                        frame.decoded = self.decoder.decode(frame.data, raw=True)  # type: ignore[attr-defined]
                    return frame
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self._buffer += data

    async def skip_preface(self) -> None:
        """On the server side of a raw peer: drop the client's connection preface."""
        while len(self._buffer) < len(PREFACE):
            self._buffer += await self.stream.receive_some(65536)
        assert bytes(self._buffer[: len(PREFACE)]) == PREFACE
        del self._buffer[: len(PREFACE)]

    async def frame_of(
        self, kind: type[hyperframe.frame.Frame], stream_id: int | None = None
    ) -> hyperframe.frame.Frame | None:
        """Skip frames until one of ``kind`` (on ``stream_id`` if given); None at EOF."""
        while True:
            frame = await self.next_frame()
            if frame is None or (isinstance(frame, kind) and stream_id in (None, frame.stream_id)):
                return frame


async def open_via_raw_peer(nursery: trio.Nursery, client: H2Tunnel, peer: RawPeer) -> TunnelStream:
    """Stream 1 of ``client``, accepted by ``peer`` (a raw HTTP/2 server answering ``:status 200``)."""
    opened: list[TunnelStream] = []

    async def open_one() -> None:
        opened.append(await client.open_stream([], authority="c"))

    nursery.start_soon(open_one)
    await peer.server_preface()
    await peer.skip_preface()
    assert await peer.frame_of(hyperframe.frame.HeadersFrame, 1) is not None
    await peer.send(peer.headers(1, [(b":status", b"200")]))
    await wait_until(lambda: bool(opened))
    return opened[0]
