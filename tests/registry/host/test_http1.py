"""registry.host.http1.Http1Pool against scripted servers (plain TCP; TLS is covered through RegistryClient in
tests/registry/test_client_unary.py): keep-alive reuse, one send per request, stale pooled connections
dropped before sending, and hostile answers (oversized head or body, bad chunking, a close mid-answer,
silence) refused as Broken, never buffered without bound."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from registry.host.http1 import AnswerTooLarge, Broken, ClosedEarly, Http1Pool, NotSent

Handler = Callable[[trio.SocketStream, "Server"], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)  # per request: how many reads its bytes took
    idle: trio.Event = field(default_factory=trio.Event)


async def read_request(stream: trio.SocketStream, server: Server) -> bytes:
    data = b""
    reads = 0
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) >= length:
                break
        more = await stream.receive_some(65536)
        if not more:
            return b""
        reads += 1
        data += more
    server.requests.append(data)
    server.reads.append(reads)
    return data


async def start(nursery: trio.Nursery, handler: Handler) -> Server:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = Server(listeners[0].socket.getsockname()[1])

    async def serve(stream: trio.SocketStream) -> None:
        server.connections += 1
        try:
            await handler(stream, server)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    return server


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Answer each request on a connection with the next of ``answers`` (the last one repeats)."""

    async def handler(stream: trio.SocketStream, server: Server) -> None:
        index = 0
        while await read_request(stream, server):
            await stream.send_all(answers[min(index, len(answers) - 1)])
            index += 1
            if then_close:
                return
        server.idle.set()

    return handler


def pool(server: Server, **kwargs: object) -> Http1Pool:
    return Http1Pool("127.0.0.1", server.port, tls=None, timeout=5.0, **kwargs)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(OK))
    http = pool(server)
    for _ in range(5):
        answer = await http.request("POST", "/x", body=b'{"a":1}', headers=[("content-type", "application/json")])
        assert (answer.status, answer.body) == (200, b"ok")
    assert server.connections == 1 and http.opened == 1
    assert server.requests[0].startswith(b"POST /x HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:%d\r\n" % server.port in server.requests[0]
    assert server.requests[0].endswith(b'\r\n\r\n{"a":1}')
    await http.aclose()


async def test_chunked_answer_and_informational_head(nursery: trio.Nursery) -> None:
    body = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
    body += b"3\r\nabc\r\n0\r\n\r\n"
    server = await start(nursery, answering(body))
    http = pool(server)
    answer = await http.request("GET", "/y")
    assert (answer.status, answer.body) == (404, b"abc")
    await http.aclose()


async def test_a_pooled_connection_the_server_closed_is_not_reused(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(OK, then_close=True))
    http = pool(server)
    await http.request("POST", "/a", body=b"1")
    assert len(http._idle) == 1
    idle = http._idle[0].stream
    assert isinstance(idle, trio.SocketStream)
    with trio.fail_after(5):  # the server has closed its end: the pooled socket reads EOF
        await trio.lowlevel.wait_readable(idle.socket)
    # A non-idempotent POST goes on a fresh connection, never on the dead one (that would be a Broken).
    answer = await http.request("POST", "/b", body=b"2")
    assert answer.body == b"ok"
    assert http.opened == 2 and server.connections == 2
    await http.aclose()


async def test_a_stray_byte_on_an_idle_connection_makes_it_stale(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(OK + b"X"))
    http = pool(server)
    await http.request("GET", "/a")  # bytes after the answer: the connection is not pooled at all
    await http.request("GET", "/a")
    assert http.opened == 2
    await http.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nx: " + b"a" * 1_000_000 + b"\r\n\r\n", id="oversized-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n" + b"a" * 70_000, id="oversized-body"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", id="bad-chunking"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"ffff\r\n" + b"a" * 65535 + b"\r\n" * 2,
            id="endless-chunks",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", id="closed-mid-body"),
        pytest.param(b"", id="closed-before-answer"),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="garbage"),
    ],
)
async def test_hostile_answers_are_broken(nursery: trio.Nursery, answer: bytes) -> None:
    async def handler(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)
        await stream.send_all(answer)
        if b"endless" not in answer:
            return
        while True:  # more chunks than the limit
            await stream.send_all(b"ffff\r\n" + b"a" * 65535 + b"\r\n")

    server = await start(nursery, handler)
    http = pool(server, max_body=65536)
    with pytest.raises(Broken) as caught:
        await http.request("POST", "/x", body=b"{}")
    assert isinstance(caught.value.cause, Exception)
    if b"100000000" in answer:
        assert isinstance(caught.value.cause, AnswerTooLarge)
    if answer in (b"", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"):
        assert isinstance(caught.value.cause, ClosedEarly | trio.BrokenResourceError)
    assert http._idle == []  # a broken connection is never pooled
    await http.aclose()


async def test_silence_times_out_as_broken(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    async def handler(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)
        await trio.sleep_forever()

    server = await start(nursery, handler)
    http = Http1Pool("127.0.0.1", server.port, tls=None, timeout=3.0)
    with pytest.raises(Broken) as caught:
        await http.request("POST", "/x", body=b"{}")
    assert isinstance(caught.value.cause, trio.TooSlowError)
    await http.aclose()


async def test_connection_refused_is_not_sent() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    http = Http1Pool("127.0.0.1", port, tls=None, timeout=5.0)
    with pytest.raises(NotSent):
        await http.request("POST", "/x", body=b"{}")


async def test_connections_are_bounded(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def handler(stream: trio.SocketStream, server: Server) -> None:
        while await read_request(stream, server):
            await release.wait()
            await stream.send_all(OK)

    server = await start(nursery, handler)
    http = pool(server, max_connections=2, max_idle=1)
    done: list[int] = []

    async def one() -> None:
        done.append((await http.request("GET", "/")).status)

    async with trio.open_nursery() as inner:
        for _ in range(5):
            inner.start_soon(one)
        with trio.fail_after(5):
            while len(server.requests) < 2:
                await trio.testing.wait_all_tasks_blocked()
        assert server.connections == 2  # the other three wait for a slot
        release.set()
    assert done == [200] * 5 and len(http._idle) == 1
    await http.aclose()
