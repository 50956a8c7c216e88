"""The HTTP/1.1 <-> trio adapter: real sockets on 127.0.0.1, hostile input, streaming, and errors as Status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from registry.core.errors import NotFound
from registry.server.http import HTTPLimits, Request, Response, ServerInfo, serve_http


async def echo_handler(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("secret internal detail")
    if request.path == "/missing":
        raise NotFound('kube_cluster "x" not found')
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f'{{"n":{i}}}\n'.encode()

        return Response(200, [("content-type", "application/x-ndjson")], stream=chunks())
    return Response.json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "groups": request.header_values("impersonate-group"),
            "body": request.body.decode(),
        },
    )


async def start(nursery: trio.Nursery, handler=echo_handler, limits: HTTPLimits | None = None) -> ServerInfo:
    info: ServerInfo = await nursery.start(
        lambda task_status: serve_http(handler, limits=limits, task_status=task_status)
    )
    return info


async def test_round_trip_keeps_repeated_headers_and_query(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
        r = await client.post(
            "/a/b?x=1&x=2&empty=",
            content=b"hello",
            headers=[("Impersonate-Group", "a"), ("Impersonate-Group", "b")],
        )
        assert r.status_code == 200
        body = r.json()
        assert body == {
            "method": "POST",
            "path": "/a/b",
            "query": {"x": ["1", "2"], "empty": [""]},
            "groups": ["a", "b"],
            "body": "hello",
        }
        # keep-alive: a second request on the same connection works
        r2 = await client.get("/again")
        assert r2.json()["path"] == "/again"


async def test_handler_errors_become_status_json_without_leaking(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
        r = await client.get("/missing")
        assert r.status_code == 404
        assert r.json()["kind"] == "Status"
        assert r.json()["reason"] == "NotFound"
        r = await client.get("/boom")
        assert r.status_code == 500
        assert "secret internal detail" not in r.text
        # the server is still serving
        assert (await client.get("/ok")).status_code == 200


async def test_streaming_response_is_chunked(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    async with (
        httpx.AsyncClient(base_url=f"http://{info.address}") as client,
        client.stream("GET", "/stream") as r,
    ):
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert lines == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_stream_is_closed_when_client_leaves(nursery: trio.Nursery) -> None:
    closed = trio.Event()
    started = trio.Event()

    async def endless(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield b"first\n"
                started.set()
                await trio.sleep_forever()
                yield b"never"
            finally:
                closed.set()

        return Response(200, stream=chunks())

    info = await start(nursery, endless)
    stream = await trio.open_tcp_stream(info.host, info.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await started.wait()
    await stream.aclose()
    with trio.fail_after(5):
        await closed.wait()


async def raw_exchange(info: ServerInfo, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream(info.host, info.port)
    await stream.send_all(data)
    out = b""
    with trio.fail_after(5):
        while True:
            chunk = await stream.receive_some()
            if not chunk:
                break
            out += chunk
    await stream.aclose()
    return out


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n", b"400"),
    ],
)
async def test_malformed_requests_get_400_and_server_survives(nursery: trio.Nursery, raw: bytes, status: bytes) -> None:
    info = await start(nursery)
    reply = await raw_exchange(info, raw)
    assert reply.startswith(b"HTTP/1.1 " + status)
    assert b'"kind":"Status"' in reply
    async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
        assert (await client.get("/still-up")).status_code == 200


async def test_huge_head_is_refused(nursery: trio.Nursery) -> None:
    info = await start(nursery, limits=HTTPLimits(max_head_bytes=4096))
    raw = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n"
    reply = await raw_exchange(info, raw)
    assert reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.1 400")


async def test_huge_body_is_refused_before_reading(nursery: trio.Nursery) -> None:
    info = await start(nursery, limits=HTTPLimits(max_body_bytes=1000))
    async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
        r = await client.post("/x", content=b"a" * 5000)
    assert r.status_code == 413
    assert "limit is 1000" in r.json()["message"]


async def test_chunked_body_over_limit_is_refused(nursery: trio.Nursery) -> None:
    info = await start(nursery, limits=HTTPLimits(max_body_bytes=1000))

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"a" * 500

    async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
        r = await client.post("/x", content=gen())
    assert r.status_code == 413


async def test_slow_head_is_cut_off(nursery: trio.Nursery) -> None:
    # Real (short) timeout: a slowloris client that never finishes its head loses the connection.
    info = await start(nursery, limits=HTTPLimits(head_timeout=0.3))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        with trio.fail_after(5):
            reply = b""
            while chunk := await stream.receive_some():
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 408")


async def _read_to_eof(stream: trio.abc.Stream) -> bytes:
    reply = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            reply += chunk
    return reply


async def test_a_body_that_stops_arriving_is_answered_408(nursery: trio.Nursery) -> None:
    info = await start(nursery, limits=HTTPLimits(body_timeout=0.3))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        reply = await _read_to_eof(stream)
    assert reply.startswith(b"HTTP/1.1 408")


async def test_a_trickled_body_cannot_outlive_its_deadline(nursery: trio.Nursery) -> None:
    """The body's deadline runs from its first byte's wait, for the whole body: bytes arriving in time one
    by one do not extend it (the deadline scope is entered per wait, the deadline is not restarted)."""
    info = await start(nursery, limits=HTTPLimits(body_timeout=0.5))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        start_time = trio.current_time()
        reply = b""
        with trio.fail_after(10):
            for _ in range(1000):
                try:
                    await stream.send_all(b"a")
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.1):  # pacing the trickle, not waiting for a condition
                    chunk = await stream.receive_some()
                    reply += chunk
                    if not chunk or reply.startswith(b"HTTP/1.1 408"):
                        break
        elapsed = trio.current_time() - start_time
    assert reply.startswith(b"HTTP/1.1 408")
    assert elapsed < 3


async def test_a_small_body_sent_with_its_head_is_read_and_the_connection_kept(nursery: trio.Nursery) -> None:
    info = await start(nursery, limits=HTTPLimits(body_timeout=0.3, head_timeout=0.3))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        one = b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
        await stream.send_all(one + one)  # two whole requests in one write: both buffered at once
        reply = b""
        with trio.fail_after(5):
            while reply.count(b"HTTP/1.1 200") < 2:
                chunk = await stream.receive_some()
                assert chunk, reply
                reply += chunk
        # A kept-alive connection's next head trickled past the head deadline is cut off with a 408.
        await stream.send_all(b"GET /x HTTP/1.1\r\n")
        reply = await _read_to_eof(stream)
    assert reply.startswith(b"HTTP/1.1 408")


async def test_a_failing_stream_producer_does_not_take_the_server_down(nursery: trio.Nursery) -> None:
    async def broken(request: Request) -> Response:
        if request.path == "/ok":
            return Response.json(200, {"ok": True})

        async def producer(send) -> None:  # type: ignore[no-untyped-def]
            await send(b"partial\n")
            raise RuntimeError("producer bug")

        return Response(200, producer=producer)

    info = await start(nursery, broken)
    async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", "/stream") as r:
                async for _ in r.aiter_lines():
                    pass
        assert (await client.get("/ok")).json() == {"ok": True}


async def test_head_gets_headers_without_body(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
        r = await client.head("/x")
        assert r.status_code == 200
        assert int(r.headers["content-length"]) > 0
        assert r.content == b""
        assert (await client.get("/after-head")).json()["path"] == "/after-head"


async def test_a_101_with_upgrade_hands_over_the_raw_stream(nursery: trio.Nursery) -> None:
    async def upgraded(stream: trio.abc.Stream, leftover: bytes) -> None:
        data = leftover
        while not data.endswith(b"\n"):
            data += await stream.receive_some()
        await stream.send_all(b"echo:" + data)

    async def handler(request: Request) -> Response:
        if request.header("upgrade") == "raw":
            return Response(101, [("connection", "Upgrade"), ("upgrade", "raw")], upgrade=upgraded)
        return Response.json(400, {"upgrade": request.header("upgrade")})

    info = await start(nursery, handler)
    stream = await trio.open_tcp_stream(info.host, info.port)
    head = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n"
    await stream.send_all(head + b"early bytes\n")  # sent before the 101: the handler gets them as leftover
    received = b""
    with trio.fail_after(5):
        while True:
            chunk = await stream.receive_some()
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 101 ")
    assert received.endswith(b"\r\n\r\necho:early bytes\n")  # then the server closed the connection
    await stream.aclose()


def _parse_with_h11(reply: bytes, method: bytes = b"GET") -> tuple[int, list[bytes], bool]:
    """(status, body data pieces, whether the message ended cleanly) as an independent client parser sees it."""
    import h11

    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(reply)
    client.receive_data(b"")
    status, pieces, ended = 0, [], False
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            pieces.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            ended = True
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return status, pieces, ended


STREAM_CHUNKS = [b"a\n", b"x" * 70_000 + b"\n", b"\xff\r\n\r\n0\r\n\r\n", b"z" * 4096]


async def stream_chunks_handler(request: Request) -> Response:
    async def producer(send) -> None:  # type: ignore[no-untyped-def]
        for chunk in [STREAM_CHUNKS[0], b"", *STREAM_CHUNKS[1:]]:  # an empty one is skipped, not an end
            await send(chunk)

    return Response(200, [("content-type", "application/x-ndjson")], producer=producer)


async def test_streamed_chunks_are_framed_as_h11_frames_them(nursery: trio.Nursery) -> None:
    # The stream loop writes the chunk framing itself: an independent parser must read exactly the chunks,
    # including ones that look like framing, then a clean end; the connection stays usable (keep-alive).
    info = await start(nursery, stream_chunks_handler)
    stream = await trio.open_tcp_stream(info.host, info.port)
    await stream.send_all(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n")
    reply = b""
    with trio.fail_after(5):
        while not reply.endswith(b"\r\n0\r\n\r\n"):
            reply += await stream.receive_some()
    status, pieces, ended = _parse_with_h11(reply)
    assert (status, ended) == (200, True)
    assert pieces == STREAM_CHUNKS
    assert b"%x\r\n" % 70_001 in reply  # each chunk is its own chunk: sent as it came
    await stream.send_all(b"GET /again HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    again = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            again += chunk
    assert _parse_with_h11(again)[1:] == (STREAM_CHUNKS, True)
    await stream.aclose()


async def test_an_http10_client_gets_the_stream_unframed(nursery: trio.Nursery) -> None:
    # HTTP/1.0 has no chunked encoding: the body is the bytes themselves, ended by the close.
    info = await start(nursery, stream_chunks_handler)
    reply = await raw_exchange(info, b"GET /s HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"".join(STREAM_CHUNKS)


async def test_a_stream_client_that_stops_reading_does_not_stall_the_others(nursery: trio.Nursery) -> None:
    # Every streamed response is written by its own connection's task: one reader whose socket buffers are
    # full blocks only its own writes, while another connection gets the whole stream.
    chunk = b"y" * 65_536
    total = 200  # 12.5 MiB: far more than a socket's buffers hold
    stuck = trio.Event()

    async def handler(request: Request) -> Response:
        async def producer(send) -> None:  # type: ignore[no-untyped-def]
            for i in range(total):
                if request.path == "/slow" and i == total - 1:
                    stuck.set()  # never reached while the slow client does not read
                await send(chunk)

        return Response(200, producer=producer)

    info = await start(nursery, handler)
    slow = await trio.open_tcp_stream(info.host, info.port)
    await slow.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")  # and never reads
    fast = await trio.open_tcp_stream(info.host, info.port)
    await fast.send_all(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
    received = 0
    with trio.fail_after(30):
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            data = await fast.receive_some()
            received += len(data)
            tail = (tail + data)[-16:]
    assert received > total * len(chunk)
    assert not stuck.is_set()
    await slow.aclose()
    await fast.aclose()
