"""The h11 <-> trio adapter: real sockets on 127.0.0.1, hostile input, streaming, and errors as Status."""

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
