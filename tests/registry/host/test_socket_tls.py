"""SocketTLSStream: trio's Stream contract over a non-blocking ssl.SSLSocket, on real sockets over 127.0.0.1."""

from __future__ import annotations

import _socket
import gc
import os
import socket
import ssl
import struct
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from registry.core.identity import REGISTRY_SERVER_NAME, CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import client_context, peer_certificate_der, server_context, wait_for_input

NOW = datetime.now(UTC)  # OpenSSL checks validity against the real clock
HOUR = timedelta(hours=1)
MIB = 1024 * 1024


def _pair(ca: CertAuthority, identity: Identity, now: datetime = NOW) -> tuple[bytes, bytes]:
    key = generate_private_key()
    return ca.issue(public_key_pem(key), identity, ttl=HOUR, now=now), key


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=NOW)


@pytest.fixture(scope="module")
def contexts(ca: CertAuthority) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = server_context(*_pair(ca, Identity("registry-1", "registry")), [ca.cert_pem], client_certs="required")
    client = client_context([ca.cert_pem], *_pair(ca, Identity("alice", "user", roles=("dev",))))
    return server, client


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    finally:
        await listeners[0].aclose()
    assert isinstance(server, trio.SocketStream)
    return client, server


@asynccontextmanager
async def tls_pair(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, handshake: bool = True
) -> AsyncIterator[tuple[SocketTLSStream, SocketTLSStream]]:
    """(client, server), handshaken unless told otherwise; both closed at the end."""
    client_tcp, server_tcp = await _tcp_pair()
    server = SocketTLSStream.wrap(server_tcp, server_ctx, server_side=True)
    client = SocketTLSStream.wrap(client_tcp, client_ctx, server_hostname=REGISTRY_SERVER_NAME)
    try:
        if handshake:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.do_handshake)
                nursery.start_soon(client.do_handshake)
        yield client, server
    finally:
        await client.aclose()
        await server.aclose()


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await stream.receive_some(size - len(got))
        assert data, "EOF before the whole message"
        got += data
    return bytes(got)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_round_trip_both_ways_with_alpn_and_peer_certificate(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], ca: CertAuthority
) -> None:
    async with tls_pair(*contexts) as (client, server):
        await client.send_all(b"ping")
        assert await _receive_exactly(server, 4) == b"ping"
        await server.send_all(bytearray(b"pong"))
        assert await _receive_exactly(client, 4) == b"pong"
        assert server.selected_alpn_protocol() == client.selected_alpn_protocol() == "http/1.1"
        der = peer_certificate_der(server)  # the helper works on this stream too
        assert der is not None
        assert ca.verify(der, now=NOW).name == "alice"
        assert client.version() in ("TLSv1.2", "TLSv1.3")
        await client.do_handshake()  # idempotent


async def test_several_mib_both_directions_at_once(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Each side sends 6 MiB while receiving the other's: a send blocked on a full socket must not stop the
    same stream's reader (else both ends would wait for each other forever)."""
    size = 6 * MIB
    a_data = os.urandom(size)
    b_data = os.urandom(size)
    got: dict[str, bytes] = {}
    async with tls_pair(*contexts) as (client, server):
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def receive(name: str, stream: SocketTLSStream) -> None:
                    got[name] = await _receive_exactly(stream, size)

                nursery.start_soon(client.send_all, a_data)
                nursery.start_soon(server.send_all, memoryview(b_data))
                nursery.start_soon(receive, "server", server)
                nursery.start_soon(receive, "client", client)
    assert got["server"] == a_data
    assert got["client"] == b_data


async def test_a_cancelled_receive_leaves_the_stream_usable(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with tls_pair(*contexts) as (client, server):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_when_blocked() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()

                nursery.start_soon(cancel_when_blocked)
                await server.receive_some()
        assert scope.cancelled_caught
        await client.send_all(b"after")
        assert await _receive_exactly(server, 5) == b"after"


async def test_a_cancelled_send_breaks_the_stream(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """OpenSSL holds part of a record it must finish with the same bytes: nothing else may be sent."""
    async with tls_pair(*contexts) as (client, _server):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_when_blocked() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()

                nursery.start_soon(cancel_when_blocked)
                await client.send_all(b"x" * (64 * MIB))  # the server never reads: fills both socket buffers
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"more")


async def test_every_call_is_a_checkpoint(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with tls_pair(*contexts) as (client, server):
        await client.send_all(b"ready")
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.receive_some()  # bytes are there: still a cancellation point
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.send_all(b"x")
        assert scope.cancelled_caught
        assert await _receive_exactly(server, 5) == b"ready"  # nothing was lost by the cancelled calls
        with trio.testing.assert_checkpoints():
            await client.send_all(b"y")
        with trio.testing.assert_checkpoints():
            await server.receive_some()


async def test_close_notify_is_eof_and_stays_eof(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with tls_pair(*contexts) as (client, server):
        await client.send_all(b"last")
        await client.aclose()
        assert await _receive_exactly(server, 4) == b"last"
        assert await server.receive_some() == b""
        assert await server.receive_some() == b""


async def test_a_ragged_eof_is_an_eof(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with tls_pair(*contexts) as (client, server):
        await client.send_all(b"bye")
        _socket.socket.shutdown(client._sock, socket.SHUT_WR)  # TCP FIN, no close_notify
        assert await _receive_exactly(server, 3) == b"bye"
        assert await server.receive_some() == b""
        assert await server.receive_some() == b""


async def test_a_peer_reset_ends_the_stream(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """OpenSSL reports a reset like a bare EOF (an unexpected EOF): the reader sees the end (b"", as for
    https_compatible; HTTP framing tells a cut answer), and a send fails as broken."""
    async with tls_pair(*contexts) as (client, server):
        client._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.send_all(b"unread")  # unread data in the client's buffer: its close resets
        await trio.testing.wait_all_tasks_blocked()
        _socket.socket.close(client._sock)
        with trio.fail_after(10):
            ended: BaseException | None = None
            try:
                while await server.receive_some():
                    pass
            except trio.BrokenResourceError as exc:
                ended = exc.__cause__
            assert ended is None or isinstance(ended, OSError)
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(100):  # the first sends may still fit in the kernel before it knows
                    await server.send_all(b"x" * 65536)


async def test_close_while_another_task_waits(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with tls_pair(*contexts) as (_client, server):
        errors: list[BaseException] = []

        async def reader() -> None:
            try:
                await server.receive_some()
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await server.aclose()
        assert len(errors) == 1
        with pytest.raises(trio.ClosedResourceError):
            await server.send_all(b"x")
        await server.aclose()  # idempotent


async def test_concurrent_receives_or_sends_are_refused(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async with tls_pair(*contexts) as (client, server):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some()
            await client.send_all(b"x")  # lets the first receive end
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"x" * (64 * MIB))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client.send_all(b"y")
            nursery.cancel_scope.cancel()


async def test_a_failed_server_handshake_puts_the_alert_on_the_wire(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], ca: CertAuthority
) -> None:
    """A client of another CA: the server's handshake fails, and the client reads OpenSSL's alert (a TLS
    1.3 client finished its side already), not a bare EOF."""
    server_ctx, _ = contexts
    foreign = CertAuthority.generate("prod", now=NOW)
    stranger = client_context([ca.cert_pem], *_pair(foreign, Identity("mallory", "user")))
    async with tls_pair(server_ctx, stranger, handshake=False) as (client, server):
        client_saw: list[BaseException] = []

        async def client_side() -> None:
            try:
                await client.do_handshake()
                # The first request goes out at once (as kubectl's): the server, failing on the client's
                # certificate, leaves it unread; its close must still not reset the alert away.
                await client.send_all(b"GET / HTTP/1.1\r\n\r\n")
                await client.receive_some()
            except trio.BrokenResourceError as exc:
                client_saw.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_side)
                with pytest.raises(trio.BrokenResourceError):
                    await server.do_handshake()
                await server.aclose()  # at once, as the front door does: the alert was sent already
        assert len(client_saw) == 1
        cause = client_saw[0].__cause__
        assert isinstance(cause, ssl.SSLError)
        assert not isinstance(cause, ssl.SSLEOFError)  # an alert, not the connection just ending
        assert "ALERT" in str(cause.reason).upper()


async def test_garbage_instead_of_a_client_hello(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, _ = contexts
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\xff\xff" + b"\x00" * 200, os.urandom(4096)):
        client_tcp, server_tcp = await _tcp_pair()
        server = SocketTLSStream.wrap(server_tcp, server_ctx, server_side=True)
        try:
            await client_tcp.send_all(garbage)
            with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                await server.do_handshake()
            with pytest.raises(trio.BrokenResourceError):
                await server.receive_some()
        finally:
            await server.aclose()
            await client_tcp.aclose()


async def test_a_client_stalling_mid_handshake_ends_at_the_deadline_without_leaking(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = contexts
    before = _open_fds()
    client_tcp, server_tcp = await _tcp_pair()
    server = SocketTLSStream.wrap(server_tcp, server_ctx, server_side=True)
    await client_tcp.send_all(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
    with trio.move_on_after(0.5) as scope:
        await server.do_handshake()
    assert scope.cancelled_caught
    await server.aclose()
    await client_tcp.aclose()
    assert _open_fds() == before


async def test_wait_for_input_waits_for_bytes_and_sees_buffered_ones(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with tls_pair(*contexts) as (client, server):
        woke = trio.Event()

        async def waiter() -> None:
            await wait_for_input(server)
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            assert not server.more_arrived()
            await client.send_all(b"a" * 100 + b"b" * 100)
        assert woke.is_set()
        assert await server.receive_some(100) == b"a" * 100
        assert server.pending() == 100  # decrypted, held by OpenSSL: no socket event would announce them
        assert server.more_arrived()
        with trio.fail_after(10):
            await wait_for_input(server)  # returns at once
        assert await server.receive_some() == b"b" * 100


async def test_a_wait_on_the_direction_another_task_waits_on_polls_instead_of_failing(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """OpenSSL may make a send wait for the socket to be readable (or a receive for it to be writable) while
    the other task already waits on that direction; trio allows one waiter per direction, so the second
    waits a moment and lets its caller retry the TLS call, instead of failing with BusyResourceError."""
    async with tls_pair(*contexts) as (client, server):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.receive_some)  # waits on readable
                await trio.testing.wait_all_tasks_blocked()
                await server._wait(ssl.SSLWantReadError())  # what send_all does on SSLWantReadError
                await client.send_all(b"x")  # lets the reader finish


async def test_a_refused_wrap_closes_the_descriptor(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    _, client_ctx = contexts
    """Hostile server names (from a kubeconfig): refused, and the descriptor closed at once (ssl alone would
    leave it to the garbage collector)."""
    before = _open_fds()
    for name in ("x" * 300, "a..b", "\udcff", "bad\x00name"):
        client_tcp, server_tcp = await _tcp_pair()
        with pytest.raises((UnicodeError, ValueError)) as caught:
            SocketTLSStream.wrap(client_tcp, client_ctx, server_hostname=name)
        assert isinstance(caught.value, UnicodeError) or "NUL" in str(caught.value)
        await server_tcp.aclose()
        await client_tcp.aclose()  # closed already: a no-op
        assert _open_fds() == before, name


async def test_a_connection_reset_before_the_wrap_leaks_no_descriptor(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A peer that resets the connection between connect and wrap (a front door going away): CPython's
    wrap_socket raises from inside the SSLSocket it made, after taking the descriptor over, and drops it
    unclosed; wrap() closes it (no descriptor left open, no ResourceWarning when it is collected)."""
    _, client_ctx = contexts
    before = _open_fds()
    client_tcp, server_tcp = await _tcp_pair()
    server_tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await server_tcp.aclose()  # linger 0: an RST, not a FIN
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(client_tcp.socket)  # the reset has arrived
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConnectionResetError):
            SocketTLSStream.wrap(client_tcp, client_ctx, server_hostname=REGISTRY_SERVER_NAME)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert _open_fds() == before


async def test_send_now_sends_what_the_socket_takes_and_the_rest_finishes_intact(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with tls_pair(*contexts) as (client, server):
        assert len(client.send_now(b"small")) == 0  # all taken at once, no checkpoint needed
        assert await _receive_exactly(server, 5) == b"small"
        payload = os.urandom(8 * MIB)  # more than the kernel buffers hold while nobody reads
        rest = client.send_now(payload)
        assert len(rest) > 0  # OpenSSL may have written records of it: the rest is to be sent next, as is
        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, rest)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):  # the rest goes next, through the one sender
                client.send_now(b"jump the queue")
            while len(received) < len(payload):
                received += await server.receive_some()
        assert received == payload  # every record whole, in order


async def test_the_unyielding_calls_check_cancellation_but_pass_no_schedule_point(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async with tls_pair(*contexts) as (client, server):
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.send_all_unyielding(b"x")
        assert scope.cancelled_caught
        task = trio.lowlevel.current_task()
        steps = [0]

        class Steps(trio.abc.Instrument):
            def before_task_step(self, stepped: trio.lowlevel.Task) -> None:
                steps[0] += stepped is task

        await client.send_all(b"ready")
        assert await wait_for_input(server)  # it parked for the bytes: that was the schedule point
        instrument = Steps()
        trio.lowlevel.add_instrument(instrument)
        try:
            assert not await client.send_all_unyielding(b"abc")  # the socket took it: no wait
            data = await server.receive_some_unyielding()
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert steps[0] == 0
        assert data.startswith(b"ready")


async def test_full_records_gathers_a_bulk_transfer_and_still_sees_every_later_byte(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    # The tunnel's setting: reads go on while records are full and stop at a short one (the end of a
    # write), and the next receive waits for the socket first. Whatever the guess, no byte is missed.
    async with tls_pair(*contexts) as (client, server):
        server.full_records = True
        payload = os.urandom(100_000)  # six full records and a short one
        await client.send_all(payload)
        await trio.testing.wait_all_tasks_blocked()
        first = await server.receive_some(MIB)
        assert len(first) > 16 * 1024, "one record per call: the records waiting were not gathered"
        rest = first
        while len(rest) < len(payload):
            rest += await server.receive_some(MIB)
        assert rest == payload
        await client.send_all(b"already there")  # arrives before the next call, which waits first
        with trio.fail_after(10):
            assert await server.receive_some() == b"already there"

        async def later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"later")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            with trio.fail_after(10):
                assert await server.receive_some() == b"later"
        await client.send_all(b"x" * (16 * 1024) + b"tail")  # a full record, then a short one
        got = b""
        with trio.fail_after(10):
            while len(got) < 16 * 1024 + 4:
                got += await server.receive_some(MIB)
        assert got.endswith(b"tail")
        await client.aclose()
        with trio.fail_after(10):
            assert await server.receive_some() == b""  # the EOF after a drained read
