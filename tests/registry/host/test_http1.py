"""registry.host.http1.Http1Pool against scripted servers (plain TCP; TLS is covered through RegistryClient in
tests/registry/test_client_unary.py): keep-alive reuse, one send per request, stale pooled connections
dropped before sending, and hostile answers (oversized head or body, bad or ambiguous framing, a close
mid-answer, silence) refused as Broken, never buffered without bound and never quoted in the error; what a
caller asks to send is checked (no header injection) before any byte leaves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from registry.core.chunked import ChunkedError
from registry.core.http1 import HTTPError
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
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok", id="two-lengths"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok", id="length-list"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok", id="negative-length"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", id="other-coding"),
        pytest.param(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", id="bare-lf-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\ncontent-length: 2\r\n\r\nok", id="obs-fold"),
        pytest.param(b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok", id="http2-version"),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", id="unasked-101"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-1\r\n", id="negative-chunk"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n", id="huge-chunk-size"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", id="closed-mid-chunk"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-le", id="closed-mid-head"),
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
    if answer == b"" or b"\r\n\r\nabc" in answer or answer.endswith((b"ab", b"content-le")):
        assert isinstance(caught.value.cause, ClosedEarly), caught.value.cause
    elif b"ffff" not in answer and b"100000000" not in answer:
        assert isinstance(caught.value.cause, HTTPError), caught.value.cause
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


async def test_errors_never_quote_the_answer(nursery: trio.Nursery) -> None:
    secret = b"Bearer s3cr3t-t0ken"
    server = await start(nursery, answering(b"HTTP/1.1 200 OK\r\nauthorization: " + secret + b"\n\r\n\r\n"))
    http = pool(server)
    with pytest.raises(Broken) as caught:
        await http.request("GET", "/")
    for text in (str(caught.value), str(caught.value.cause), repr(caught.value.cause)):
        assert "s3cr3t" not in text
    await http.aclose()


async def test_a_declared_length_over_the_limit_is_refused_before_reading(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n")
        await trio.sleep_forever()  # the body never comes: only the head may decide

    server = await start(nursery, handler)
    http = Http1Pool("127.0.0.1", server.port, tls=None, timeout=60.0, max_body=65536)
    with trio.fail_after(10), pytest.raises(Broken) as caught:
        await http.request("GET", "/")
    assert isinstance(caught.value.cause, AnswerTooLarge)
    await http.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", id="http-1.0"),
        pytest.param(b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 2\r\n\r\nok", id="close"),
    ],
)
async def test_an_answer_that_ends_keep_alive_is_read_and_its_connection_not_reused(
    nursery: trio.Nursery, answer: bytes
) -> None:
    server = await start(nursery, answering(answer))
    http = pool(server)
    for _ in range(2):
        assert (await http.request("POST", "/", body=b"x")).body == b"ok"
    assert http.opened == 2 and http._idle == []
    await http.aclose()


async def test_an_answer_without_framing_is_read_until_the_close(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(b"HTTP/1.1 200 OK\r\n\r\nall of it", then_close=True))
    http = pool(server)
    answer = await http.request("GET", "/")
    assert (answer.status, answer.body) == (200, b"all of it")
    assert http._idle == []
    await http.aclose()


async def test_a_head_answer_has_no_body_and_keeps_the_connection(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Name: v\r\n\r\n"))
    http = pool(server)
    for _ in range(3):
        answer = await http.request("HEAD", "/")
        assert (answer.status, answer.body) == (200, b"")
    assert (b"x-name", b"v") in answer.headers  # names lower-cased, as before
    assert http.opened == 1
    await http.aclose()


async def test_a_request_the_server_dropped_is_broken_and_not_sent_again(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)  # then closes without answering

    server = await start(nursery, handler)
    http = pool(server)
    with pytest.raises(Broken) as caught:
        await http.request("POST", "/x", body=b"{}")
    assert isinstance(caught.value.cause, ClosedEarly | trio.BrokenResourceError)
    assert len(server.requests) == 1 and server.connections == 1
    await http.aclose()


async def test_the_request_on_the_wire_has_a_length_only_when_it_may_have_a_body(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(OK))
    http = pool(server)
    headers = [("accept", "application/json")]
    await http.request("GET", "/a?b=c", headers=headers)
    await http.request("POST", "/a", headers=headers)
    await http.request("DELETE", "/a", body=b"1", headers=headers)
    host = b"host: 127.0.0.1:%d\r\n" % server.port
    assert server.requests == [
        b"GET /a?b=c HTTP/1.1\r\n" + host + b"accept: application/json\r\n\r\n",
        b"POST /a HTTP/1.1\r\n" + host + b"accept: application/json\r\ncontent-length: 0\r\n\r\n",
        b"DELETE /a HTTP/1.1\r\n" + host + b"accept: application/json\r\ncontent-length: 1\r\n\r\n1",
    ]
    assert server.reads == [1, 1, 1]  # head and body in one send
    await http.aclose()


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        pytest.param("GET", "/", [("x-a", "v\r\nx-injected: 1")], id="crlf-in-value"),
        pytest.param("GET", "/", [("x-a", "v\nx")], id="lf-in-value"),
        pytest.param("GET", "/", [("bad name", "v")], id="space-in-name"),
        pytest.param("GET", "/", [("x-a", "caf\u00e9")], id="non-ascii-value"),
        pytest.param("GET", "/a b", [], id="space-in-target"),
        pytest.param("GET", "/a\r\nx: y", [], id="crlf-in-target"),
        pytest.param("GET", "", [], id="empty-target"),
        pytest.param("G T", "/", [], id="bad-method"),
    ],
)
async def test_what_cannot_be_sent_is_refused_before_a_byte_leaves(
    nursery: trio.Nursery, method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    server = await start(nursery, answering(OK))
    http = pool(server)
    with pytest.raises(Broken) as caught:
        await http.request(method, target, headers=headers)
    assert isinstance(caught.value.cause, HTTPError)
    with pytest.raises(Broken):
        await http.open_stream(method, target, headers=headers)
    assert server.connections == 0 and http.opened == 0
    await http.aclose()


async def test_a_stream_gives_its_chunks_as_they_come(nursery: trio.Nursery) -> None:
    step = trio.Event()

    async def handler(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await step.wait()
        await stream.send_all(b"2\r\nde\r\n0\r\n\r\n")
        await trio.sleep_forever()

    server = await start(nursery, handler)
    http = pool(server)
    head, streamed = await http.open_stream("POST", "/watch", body=b"{}")
    assert head.status == 200 and streamed is not None
    assert (b"transfer-encoding", b"chunked") in head.headers
    assert await streamed.receive() == b"abc"
    step.set()
    assert await streamed.receive() == b"de"
    assert await streamed.receive() == b""
    await streamed.aclose()
    assert http.opened == 0  # a stream's connection is not the pool's


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope", 404, b"nope"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 200, b"{}"),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 No\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            503,
            b"x",
        ),
    ],
)
async def test_a_stream_answered_otherwise_is_read_whole(
    nursery: trio.Nursery, answer: bytes, status: int, body: bytes
) -> None:
    server = await start(nursery, answering(answer))
    http = pool(server)
    head, streamed = await http.open_stream("POST", "/watch", body=b"{}")
    assert (head.status, head.body, streamed) == (status, body, None)


@pytest.mark.parametrize(
    ("rest", "cut", "error"),
    [
        (b"zz\r\n", b"", ChunkedError),
        (b"5\r\nab", b"ab", ClosedEarly),
    ],
)
async def test_a_broken_stream_fails_after_its_good_chunks(
    nursery: trio.Nursery, rest: bytes, cut: bytes, error: type[Exception]
) -> None:
    first = trio.Event()

    async def handler(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await first.wait()
        await stream.send_all(rest)

    server = await start(nursery, handler)
    http = pool(server)
    _, streamed = await http.open_stream("POST", "/watch", body=b"{}")
    assert streamed is not None
    assert await streamed.receive() == b"abc"
    first.set()
    got = b""
    with pytest.raises(error):
        while True:  # a cut chunk's bytes come as they arrive, then the close is an error
            got += await streamed.receive()
    assert got == cut
    await streamed.aclose()


async def test_a_stream_head_that_breaks_the_rules_is_broken(nursery: trio.Nursery) -> None:
    server = await start(
        nursery, answering(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    )
    http = pool(server)
    with pytest.raises(Broken) as caught:
        await http.open_stream("POST", "/watch", body=b"{}")
    assert isinstance(caught.value.cause, HTTPError)
