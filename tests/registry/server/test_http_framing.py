"""HTTP/1.1 framing at the server (``registry.server.http``): one test per rule, raw bytes over a real socket to
the real server. What a client sees: which requests are answered, with what status, and whether the
connection stays open."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

from registry.server.http import HTTPLimits, Request, Response, ServerInfo, serve_http

SECRET = b"Bearer s3cr3t-token"


async def echo(request: Request) -> Response:
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"line {i}\n".encode()

        return Response(200, [("content-type", "text/plain")], stream=chunks())
    if request.path == "/close":
        return Response.json(200, {"closing": True}, headers=[("connection", "close")])
    if request.path == "/bad-header":
        return Response(200, [("x-injected", "a\r\nset-cookie: evil=1")], b"x")
    if request.path == "/fixed":
        return Response(200, [("content-type", "text/plain")], b"twelve bytes")
    if request.path == "/switch":
        return Response(101, [("connection", "Upgrade"), ("upgrade", "raw")], upgrade=_echo_upgraded)
    return Response.json(200, {"method": request.method, "path": request.path, "body": request.body.decode()})


async def _echo_upgraded(stream: trio.abc.Stream, leftover: bytes) -> None:
    data = leftover
    while not data.endswith(b"\n"):
        data += await stream.receive_some()
    await stream.send_all(b"upgraded:" + data)


async def start(nursery: trio.Nursery, limits: HTTPLimits | None = None) -> ServerInfo:
    info: ServerInfo = await nursery.start(lambda task_status: serve_http(echo, limits=limits, task_status=task_status))
    return info


async def exchange(info: ServerInfo, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                out += chunk
    return out


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Content-Length-framed answers in ``raw``: (status, headers, body) each."""
    out = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        out.append((int(lines[0].split(" ")[1]), headers, raw[:length]))
        raw = raw[length:]
    return out


GET = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_pipelined_requests_are_answered_in_order_on_one_connection(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    raw = GET % b"a" + b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" + GET % b"c"
    raw += b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    got = answers(await exchange(info, raw))
    assert [json.loads(body)["path"] for _, _, body in got] == ["/a", "/b", "/c", "/d"]
    assert json.loads(got[1][2])["body"] == "abc"
    assert got[3][1]["connection"] == "close"  # the last one said so, and the server closed


async def test_the_status_line_has_its_reason_phrase(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    reply = await exchange(info, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_chunked_request_body_is_read_whole(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    raw = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    raw += b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    [(status, _, body)] = answers(await exchange(info, raw))
    assert (status, json.loads(body)["body"]) == (200, "abcdefg")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", id="chunk size not hex"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", id="negative chunk size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n", id="chunk longer than its size"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n", id="chunk size overflow"),
    ],
)
async def test_a_bad_chunk_is_400_and_the_connection_closes(nursery: trio.Nursery, raw: bytes) -> None:
    info = await start(nursery)
    reply = await exchange(info, b"POST /c HTTP/1.1\r\nHost: x\r\n" + raw + GET % b"never")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert len(answers(reply)) == 1  # nothing after the bad body was read as a request


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", id="CL+TE"
        ),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", id="dup CL"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n", id="CL list"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", id="CL sign"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", id="TE gzip"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", id="TE twice"),
        pytest.param(b"GET / HTTP/1.1\nHost: x\r\n\r\n", id="bare LF"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", id="bare CR"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", id="space before colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", id="NUL in value"),
        pytest.param(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", id="two spaces in request line"),
        pytest.param(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", id="HTTP/2.0 over 1.1 framing"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", id="two Hosts"),
        pytest.param(b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", id="unknown method"),
    ],
)
async def test_a_malformed_head_is_400_without_echoing_it_and_the_connection_closes(
    nursery: trio.Nursery, raw: bytes
) -> None:
    info = await start(nursery)
    hostile = raw.replace(b"Host: x", b"Host: x\r\nAuthorization: " + SECRET, 1)
    reply = await exchange(info, hostile + b"abc" + GET % b"never")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert SECRET not in reply and b"s3cr3t" not in reply
    [(_, headers, body)] = answers(reply)  # one answer: nothing after the bad head was read as a request
    assert headers["connection"] == "close"
    assert json.loads(body)["kind"] == "Status"


async def test_a_huge_head_is_431_before_it_is_all_read(nursery: trio.Nursery) -> None:
    info = await start(nursery, HTTPLimits(max_head_bytes=4096))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)  # never ends its head
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"aaaa" not in reply


async def test_a_huge_declared_body_is_413_before_it_is_read(nursery: trio.Nursery) -> None:
    info = await start(nursery, HTTPLimits(max_body_bytes=1000))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        # Only the head: the answer cannot wait for a body that was never sent.
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert "limit is 1000" in answers(reply)[0][2].decode()


async def test_a_huge_chunked_body_is_413_once_past_the_limit(nursery: trio.Nursery) -> None:
    info = await start(nursery, HTTPLimits(max_body_bytes=1000))
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"a" * 1024 + b"\r\n"
    reply = await exchange(info, raw)  # the body never ends: the limit, not its end, answers
    assert reply.startswith(b"HTTP/1.1 413 ")


async def test_an_http10_request_is_answered_and_the_connection_closed(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    reply = await exchange(info, b"GET /old HTTP/1.0\r\n\r\n" + GET % b"never")
    [(status, headers, body)] = answers(reply)
    assert (status, json.loads(body)["path"], headers["connection"]) == (200, "/old", "close")


async def test_an_http10_stream_is_close_delimited(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    reply = await exchange(info, b"GET /stream HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert body == b"line 0\nline 1\nline 2\n"


async def test_an_http11_stream_is_chunked_one_chunk_per_item_and_keeps_the_connection(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    reply = await exchange(info, GET % b"stream" + b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    body, end, after = rest.partition(b"0\r\n\r\n")
    assert end and body == b"7\r\nline 0\n\r\n7\r\nline 1\n\r\n7\r\nline 2\n\r\n"
    assert json.loads(answers(after)[0][2])["path"] == "/after"


async def test_connection_close_from_the_client_ends_the_connection(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    reply = await exchange(info, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n" + GET % b"b")
    [(_, headers, _)] = answers(reply)
    assert headers["connection"] == "close"


async def test_connection_close_from_the_handler_ends_the_connection(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    [(_, headers, body)] = answers(await exchange(info, GET % b"close" + GET % b"never"))
    assert json.loads(body) == {"closing": True} and headers["connection"] == "close"


async def test_head_gets_the_length_a_get_would_have_and_no_body(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    reply = await exchange(
        info, b"HEAD /fixed HTTP/1.1\r\nHost: x\r\n\r\nGET /fixed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert b"content-length: 12\r\n" in head + b"\r\n"
    assert rest.startswith(b"HTTP/1.1 200 ")  # the HEAD's answer had no body: the GET's follows at once
    assert answers(rest)[0][2] == b"twelve bytes"


async def test_a_slow_head_is_answered_408(nursery: trio.Nursery) -> None:
    info = await start(nursery, HTTPLimits(head_timeout=0.3))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(GET % b"a")
        await stream.send_all(b"GET /b HTTP/1.1\r\nHost: ")  # and no more
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                reply += chunk
    first, second = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and second.startswith(b"408 ")


async def test_an_upgrade_hands_over_the_bytes_after_the_head(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    head = b"GET /switch HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n"
    reply = await exchange(info, head + b"GET /not-http HTTP/1.1\r\n\r\nstill the new protocol\n")
    status, _, after = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert after == b"upgraded:GET /not-http HTTP/1.1\r\n\r\nstill the new protocol\n"


async def test_a_101_to_a_request_that_did_not_ask_to_upgrade_is_refused(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    info = await start(nursery)
    reply = await exchange(info, GET % b"switch" + b"data\n")
    assert reply.startswith(b"HTTP/1.1 500 ")
    assert b"upgraded:" not in reply
    assert "did not ask to upgrade" in caplog.text


async def test_a_header_value_with_crlf_from_a_handler_is_never_sent(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    reply = await exchange(info, GET % b"bad-header")
    assert reply.startswith(b"HTTP/1.1 500 ")
    assert b"set-cookie" not in reply.lower()


async def test_expect_100_continue_gets_the_go_ahead_before_the_body(nursery: trio.Nursery) -> None:
    info = await start(nursery)
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        got = b""
        with trio.fail_after(5):
            while not got.endswith(b"\r\n\r\n"):
                got += await stream.receive_some()
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(b"hi")
        with trio.fail_after(5):
            while b'"body":"hi"' not in got:
                got += await stream.receive_some()


async def test_expect_100_continue_with_a_body_over_the_limit_gets_413_not_100(nursery: trio.Nursery) -> None:
    info = await start(nursery, HTTPLimits(max_body_bytes=10))
    reply = await exchange(info, b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\nExpect: 100-continue\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ")


async def test_eof_inside_a_body_ends_the_connection_without_a_request(nursery: trio.Nursery) -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.path)
        return Response.json(200, {})

    info: ServerInfo = await nursery.start(lambda task_status: serve_http(handler, task_status=task_status))
    async with await trio.open_tcp_stream(info.host, info.port) as stream:
        await stream.send_all(b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        await stream.send_eof()
        with trio.fail_after(5):
            while await stream.receive_some():
                pass
    assert seen == []
