"""RegistryClient.watch over a real TLS connection (its direct path: registry.core.http1's Reader for the
head, then chunked framing and watch lines decoded by the sans-IO cores) against a scripted registry: split
bytes, errors in band and as answers, and hostile streams (bad framing, endless lines, bad JSON) are one
ConnectionProblem that never quotes the answer."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import trio

from registry.client import RegistryClient
from registry.core.errors import AccessDenied, Compacted, ConnectionProblem, KubeportError, Timeout
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.core.watch import Bookmark, Error, Init, Put, encode_line
from registry.host.tls import server_context

Script = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


PUT = Put(7, "kube_cluster", "c1", {"kind": "kube_cluster", "metadata": {"name": "c1"}})


@dataclass
class Scripted:
    address: str
    ca_pem: bytes
    requests: list[bytes] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)


async def start_scripted(nursery: trio.Nursery, script: Script) -> Scripted:
    now = datetime.now(UTC)
    ca = CertAuthority.generate("scripted", now=now)
    key = generate_private_key()
    cert = ca.issue(public_key_pem(key), Identity(name="r", kind="registry"), ttl=timedelta(hours=1), now=now)
    context = server_context(cert, key, [ca.cert_pem], client_certs="optional")
    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    transport = listeners[0].transport_listener
    assert isinstance(transport, trio.SocketListener)
    port = transport.socket.getsockname()[1]
    state = Scripted(f"127.0.0.1:{port}", ca.cert_pem)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
            state.requests.append(head)
            await script(stream)
            while await stream.receive_some():  # until the client hangs up
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            state.closed.set()
            await trio.aclose_forcefully(stream)

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return state


def sends(*parts: bytes, close: bool = True) -> Script:
    async def script(stream: trio.SSLStream[trio.SocketStream]) -> None:
        for part in parts:
            await stream.send_all(part)
        if close:
            await stream.aclose()

    return script


async def collect(client: RegistryClient, **kwargs: object) -> tuple[list[object], BaseException | None]:
    got: list[object] = []
    with trio.fail_after(20):
        try:
            async with client.watch(["kube_cluster"], **kwargs) as events:  # type: ignore[arg-type]
                async for event in events:
                    got.append(event)
        except Exception as exc:
            return got, exc
    return got, None


def client_for(state: Scripted, address: str | None = None) -> RegistryClient:
    return RegistryClient(address or state.address, ca_pems=[state.ca_pem])


async def test_events_split_byte_by_byte_arrive_whole(nursery: trio.Nursery) -> None:
    framed = HEAD + chunk(encode_line(Init(5))) + chunk(encode_line(PUT) + encode_line(Bookmark(9)))
    state = await start_scripted(nursery, sends(*(framed[i : i + 1] for i in range(len(framed)))))
    async with client_for(state) as client:
        got, error = await collect(client, revision=5, with_secrets=True)
    assert got == [Init(5), PUT, Bookmark(9)]
    assert isinstance(error, ConnectionProblem) and "closed the watch" in error.message
    request = state.requests[0]
    assert request.startswith(b"GET /v1/watch?kinds=kube_cluster&revision=5&with_secrets=1 HTTP/1.1\r\n")
    assert b"\r\nhost: " + state.address.encode() + b"\r\n" in request.lower()


async def test_an_informational_answer_before_the_head_is_skipped(nursery: trio.Nursery) -> None:
    state = await start_scripted(nursery, sends(b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + chunk(encode_line(Init(3)))))
    async with client_for(state) as client:
        got, error = await collect(client)
    assert got == [Init(3)]
    assert isinstance(error, ConnectionProblem) and "closed the watch" in error.message


async def test_an_error_line_is_raised_as_its_class(nursery: trio.Nursery) -> None:
    status = Compacted("revision 3 is compacted").to_status()
    framed = HEAD + chunk(encode_line(Init(5))) + chunk(encode_line(Error(status)))
    state = await start_scripted(nursery, sends(framed, close=False))
    async with client_for(state) as client:
        got, error = await collect(client)
    assert got == [Init(5)]
    assert isinstance(error, Compacted)


async def test_an_error_answer_is_raised_as_its_class(nursery: trio.Nursery) -> None:
    body = json.dumps(AccessDenied("no watching for you").to_status()).encode()
    answer = b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        len(body),
        body,
    )
    state = await start_scripted(nursery, sends(answer, close=False))
    async with client_for(state) as client:
        _, error = await collect(client)
    assert isinstance(error, AccessDenied) and "no watching for you" in error.message


async def test_an_error_answer_too_large_to_read_is_still_its_status(nursery: trio.Nursery) -> None:
    # The declared length is over the error body bound: the body is never waited for (the server sends none).
    state = await start_scripted(
        nursery, sends(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2000000\r\n\r\n", close=False)
    )
    async with client_for(state) as client:
        _, error = await collect(client)
    assert isinstance(error, KubeportError) and not isinstance(error, Timeout), error
    assert "403" in str(error)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (HEAD + b"zz\r\n{}\r\n", "malformed watch stream"),  # chunk framing
        (HEAD + chunk(b'{"type":"PUT"'), "not valid JSON"),  # cut mid-line, then closed
        (HEAD + chunk(b"not json\n"), "not valid JSON"),
        (HEAD + chunk(b'{"type":"PUT","revision":"7"}\n'), "revision"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", "without chunked framing"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n", "malformed answer"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-token: s3cr3t\n\r\n", "malformed answer"),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n", "malformed answer"),
        (b"HTTP/1.1 200 OK\r\ntransfer-enc", "closed the connection"),
        (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 10\r\n\r\n{}", "closed the connection"),
        (b"HTTP/1.1 200 OK\r\nx: " + b"a" * 70_000 + b"\r\n\r\n", "malformed answer"),
    ],
)
async def test_hostile_streams_are_one_connection_problem(nursery: trio.Nursery, stream: bytes, message: str) -> None:
    state = await start_scripted(nursery, sends(stream))
    async with client_for(state) as client:
        got, error = await collect(client)
    assert got == []
    assert isinstance(error, ConnectionProblem), error
    assert message in error.message
    assert "s3cr3t" not in str(error)  # answer bytes are never quoted (they may carry a secret)


async def test_an_endless_line_is_refused_at_the_line_limit(nursery: trio.Nursery) -> None:
    piece = chunk(b"x" * (1 << 20))
    sent = 0

    async def endless(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal sent
        await stream.send_all(HEAD + chunk(encode_line(Init(1))))
        while sent < 64:  # 64 MiB: far past the 16 MiB line limit
            await stream.send_all(piece)
            sent += 1

    state = await start_scripted(nursery, endless)
    async with client_for(state) as client:
        got, error = await collect(client)
    assert got == [Init(1)]
    assert isinstance(error, ConnectionProblem) and "longer than" in error.message
    with trio.fail_after(10):
        await state.closed.wait()  # the client hung up
    assert sent < 64


async def test_a_dead_registry_is_skipped_and_leaving_closes_the_connection(nursery: trio.Nursery) -> None:
    state = await start_scripted(nursery, sends(HEAD + chunk(encode_line(Init(2))), close=False))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    async with client_for(state, f"{dead},{state.address}") as client:
        with trio.fail_after(10):
            async with client.watch(["kube_cluster"]) as events:
                assert await anext(events) == Init(2)
                assert client.address == state.address
        with trio.fail_after(10):
            await state.closed.wait()  # stopping early closed the watch's connection


async def test_a_test_transport_keeps_the_httpx_path_with_the_same_events_and_errors() -> None:
    import httpx

    status = Compacted("fell behind").to_status()
    body = encode_line(Init(5)) + encode_line(PUT) + encode_line(Error(status))  # one chunk: Init, PUT, ERROR

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/watch"
        return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})

    ca = CertAuthority.generate("c", now=datetime.now(UTC))
    client = RegistryClient("a.example:3025", ca_pems=[ca.cert_pem], transport=httpx.MockTransport(handler))
    async with client:
        got, error = await collect(client)
    assert got == [Init(5), PUT]  # the events before the ERROR line are handed out first
    assert isinstance(error, Compacted)
