"""HTTP/1.1 framing through the forwarder (registry.core.http1 on both sides), end to end.

Hostile request heads, written as raw bytes, are answered with a ``Status`` (400, or 431 for a huge head),
``Connection: close``, then the stream ends, and nothing reaches the API server; hostile answer heads from
the API server are a 502 ``Status``. The normal cases: an answer read until the close goes to kubectl
chunked, HTTP/1.0 clients get bodies that end with the connection, a HEAD's answer has no body, a chunked
request body reaches the API server whole and chunked.
"""

from __future__ import annotations

import json

import h11
import pytest
import trio

from tests.agent.forward.forward_helpers import PREFIX, open_client, world_for
from tests.agent.forward.test_streams import scripted, scripted_world  # noqa: F401  (the fixture)
from tests.agent.forward.upstreams import RAW_HEADS, Scripted
from tests.fakes.kube_api import FakeKube

PODS = f"{PREFIX}/api/v1/namespaces/default/pods".encode()
GET_LINE = b"GET " + PODS + b" HTTP/1.1\r\n"
HOST = b"Host: front:3026\r\n"

# (raw request head, the status it is refused with)
HOSTILE_HEADS = {
    "CL and TE": (GET_LINE + HOST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    "TE and CL": (GET_LINE + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400),
    "two Content-Length": (GET_LINE + HOST + b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
    "differing Content-Length": (GET_LINE + HOST + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\n", 400),
    "Content-Length list": (GET_LINE + HOST + b"Content-Length: 0, 0\r\n\r\n", 400),
    "TE gzip, chunked": (GET_LINE + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 400),
    "TE identity": (GET_LINE + HOST + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "obs-fold": (GET_LINE + HOST + b"X-Note: a\r\n Impersonate-User: admin\r\n\r\n", 400),
    "bare LF line end": (GET_LINE + HOST + b"X-Note: a\nImpersonate-User: admin\r\n\r\n", 400),
    "bare CR": (GET_LINE + HOST + b"X-Note: a\rImpersonate-User: admin\r\n\r\n", 400),
    "NUL in a value": (GET_LINE + HOST + b"X-Note: a\x00b\r\n\r\n", 400),
    "space before the colon": (GET_LINE + HOST + b"Impersonate-User : admin\r\n\r\n", 400),
    "bad name": (GET_LINE + HOST + b"X(Note): a\r\n\r\n", 400),
    "HTTP/2.0 as text": (b"GET " + PODS + b" HTTP/2.0\r\n" + HOST + b"\r\n", 400),
    "HTTP/1.2": (b"GET " + PODS + b" HTTP/1.2\r\n" + HOST + b"\r\n", 400),
    "TLS bytes": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    "huge head": (GET_LINE + HOST + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
}


async def _until_closed(stream: trio.abc.Stream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def _split(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
    return status_line, headers, body


@pytest.mark.parametrize("second", [False, True], ids=["first-request", "kept-alive"])
@pytest.mark.parametrize("name", sorted(HOSTILE_HEADS))
async def test_a_hostile_request_head_is_refused_and_the_stream_closes(
    nursery: trio.Nursery, fake_kube: FakeKube, name: str, second: bool
) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    if second:
        assert (await client.request("GET", PODS.decode())).status == 200
        fake_kube.requests.clear()
    head, code = HOSTILE_HEADS[name]
    await client.stream.send_all(head)
    raw = await _until_closed(client.stream)  # answered, then the stream ends
    status_line, headers, body = _split(raw)
    assert status_line.startswith(b"HTTP/1.1 %d " % code), raw[:200]
    assert headers[b"connection"] == b"close"
    assert int(headers[b"content-length"]) == len(body)
    status = json.loads(body)
    assert (status["kind"], status["code"]) == ("Status", code)
    assert not fake_kube.requests
    events = await world.wait_events(2 if second else 1)
    assert events[-1]["status"] == code


@pytest.mark.parametrize("name", sorted(RAW_HEADS))
async def test_a_hostile_answer_head_is_a_502(nursery: trio.Nursery, scripted: Scripted, name: str) -> None:  # noqa: F811
    world = scripted_world(scripted)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    reply = await client.request("GET", f"{PREFIX}/rawhead/{name}")
    assert reply.status == 502
    assert reply.json()["kind"] == "Status"
    assert "malformed HTTP answer" in reply.json()["message"]
    assert b"Impersonate-User" not in reply.body
    assert ctx.pool.statistics().idle == 0  # that connection is never pooled


async def test_an_answer_read_until_the_close_reaches_kubectl_chunked(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
) -> None:
    world = scripted_world(scripted)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    reply = await client.request("GET", f"{PREFIX}/until-close")
    assert (reply.status, reply.body) == (200, b"until the close")
    assert reply.header(b"transfer-encoding") == b"chunked"
    assert client.can_reuse()  # kubectl's connection goes on; the upstream one ended
    again = await client.request("GET", f"{PREFIX}/until-close")
    assert (again.status, again.body) == (200, b"until the close")
    assert ctx.pool.statistics().idle == 0


@pytest.mark.parametrize("path", ["until-close", "raw/good", "body"])
async def test_an_http_1_0_client_gets_a_body_that_ends_with_the_connection(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
    path: str,
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    await client.stream.send_all(f"GET {PREFIX}/{path} HTTP/1.0\r\nHost: front\r\n\r\n".encode())
    raw = await _until_closed(client.stream)
    status_line, headers, body = _split(raw)
    assert status_line.startswith(b"HTTP/1.1 200 ")
    assert headers[b"connection"] == b"close"
    assert b"transfer-encoding" not in headers
    want = {"until-close": b"until the close", "raw/good": b'{"type":"ADDED","n":1}\nhello', "body": b""}[path]
    assert body == want
    if path == "body":
        assert headers[b"content-length"] == b"0"


async def test_an_answer_to_head_has_no_body_and_the_connection_goes_on(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
) -> None:
    world = scripted_world(scripted)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    await client.stream.send_all(f"HEAD {PREFIX}/head HTTP/1.1\r\nHost: front\r\n\r\n".encode())
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="HEAD", target="/head", headers=[("Host", "front")]))
    conn.send(h11.EndOfMessage())
    with trio.fail_after(10):
        while (event := conn.next_event()) is h11.NEED_DATA:
            conn.receive_data(bytes(await client.stream.receive_some(65536)))
    assert isinstance(event, h11.Response) and event.status_code == 200
    assert dict(event.headers)[b"content-length"] == b"9"
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    reply_after = await client.request("GET", f"{PREFIX}/until-close")  # the stream serves the next request
    assert reply_after.body == b"until the close"
    assert ctx.pool.statistics().reuses == 1  # the HEAD's upstream connection was pooled and reused


async def test_a_chunked_request_body_reaches_the_api_server_chunked_and_whole(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    await client.send_chunked("POST", f"{PREFIX}/body", [b'{"kind":', b"", b'"Pod"}'])
    head = await client.response_head()
    assert head.status_code == 200
    assert dict(head.headers)[b"x-request-framing"] == b"chunked"
    assert await client.read_body() == b'{"kind":"Pod"}'
    reply = await client.request("POST", f"{PREFIX}/body", body=b"sized")
    assert (reply.body, reply.header(b"x-request-framing")) == (b"sized", b"length")


async def test_a_bad_chunk_in_a_request_body_ends_the_stream(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    head = f"POST {PREFIX}/body HTTP/1.1\r\nHost: front\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    await client.stream.send_all(head + b"5\r\nhello\r\nzz\r\n")
    raw = await _until_closed(client.stream)
    assert b"200 OK" not in raw  # never answered as if the body were complete
    [event] = await world.wait_events(1)
    assert event["status"] != 200
