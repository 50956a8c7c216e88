"""EtcdClient's KV calls over real connections (registry.host.http1, not httpx) against a scripted etcd: the
exactly-once rule (a write whose answer was lost is Ambiguous, a read moves to the next member), a pooled
connection etcd closed while idle, and hostile answers (oversized, cut short, not JSON) as ConnectionProblem."""

from __future__ import annotations

import json

import pytest
import trio

from registry.core.errors import Compacted, ConnectionProblem
from registry.store.etcd_client import Ambiguous, EtcdClient, WatchEvent
from tests.registry.host.test_http1 import Handler, Server, answering, read_request, start


def ok(body: object) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(data), data)


CUT = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"
TXN_OK = ok({"header": {"revision": "7"}, "succeeded": True})


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_a_write_whose_answer_was_cut_is_ambiguous_and_sent_once(nursery: trio.Nursery) -> None:
    cut = await start(nursery, answering(CUT, then_close=True))
    good = await start(nursery, answering(TXN_OK))
    client = EtcdClient([url(cut), url(good)], retry_for=5.0)
    try:
        with pytest.raises(Ambiguous):
            await client.txn([], [])
        assert len(cut.requests) == 1 and good.requests == []
        assert cut.requests[0].startswith(b"POST /v3/kv/txn HTTP/1.1\r\n")
        result = await client.txn([], [], idempotent=True)  # an idempotent call moves on to the next member
        assert (result.succeeded, result.revision) == (True, 7)
    finally:
        await client.aclose()


async def test_requests_share_a_kept_alive_connection_and_survive_its_close(nursery: trio.Nursery) -> None:
    server = await start(nursery, answering(TXN_OK))
    client = EtcdClient([url(server)])
    try:
        for _ in range(3):
            await client.txn([], [])
        assert server.connections == 1
        pool = client._pools[0]
        assert pool is not None
        # etcd closes the idle connection: the next write goes on a fresh one, not Ambiguous
        idle = pool._idle[0].stream
        assert isinstance(idle, trio.SocketStream)
        idle.socket.shutdown(0)  # our read side sees EOF, as after the server's close
        await client.txn([], [])
        assert server.connections == 2
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnot", id="not-json"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]", id="not-an-object"),
        pytest.param(b"HTTP/1.1 200 OK\r\nx: " + b"a" * 1_000_000 + b"\r\n\r\n", id="oversized-head"),
    ],
)
async def test_hostile_answers(nursery: trio.Nursery, raw: bytes) -> None:
    server = await start(nursery, answering(raw))
    client = EtcdClient([url(server)], retry_for=0.2)
    try:
        with pytest.raises(ConnectionProblem):
            await client.range(b"k")
    finally:
        await client.aclose()


async def test_an_oversized_answer_is_refused(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("registry.store.etcd_client.MAX_ANSWER_BYTES", 100_000)

    async def endless(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            await stream.send_all(b"10000\r\n" + b"a" * 65536 + b"\r\n")

    server = await start(nursery, endless)
    client = EtcdClient([url(server)], retry_for=0.2)
    try:
        with pytest.raises(Ambiguous, match=r"longer than"):
            await client.txn([], [])
    finally:
        await client.aclose()


WATCH_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def line(result: object) -> bytes:
    return json.dumps({"result": result}).encode() + b"\n"


CREATED = line({"header": {"revision": "5"}, "created": True})
EVENT = line({"header": {"revision": "6"}, "events": [{"kv": {"key": "aw==", "value": "dg==", "mod_revision": "6"}}]})


def streaming(*parts: bytes, then: str = "hold") -> Handler:
    async def handler(stream: trio.SocketStream, server: Server) -> None:
        await read_request(stream, server)
        for part in parts:
            await stream.send_all(part)
        if then == "hold":
            await trio.sleep_forever()

    return handler


async def next_events(client: EtcdClient) -> list[tuple[int, list[WatchEvent]]]:
    got = []
    async with client.watch(b"k") as events:
        with trio.fail_after(5):
            async for item in events:
                got.append(item)
    return got


async def test_a_watch_streams_events_split_anywhere(nursery: trio.Nursery) -> None:
    body = WATCH_HEAD + chunk(CREATED) + chunk(EVENT[:10]) + chunk(EVENT[10:])
    server = await start(nursery, streaming(body[:7], body[7:30], body[30:]))
    client = EtcdClient([url(server)])
    try:
        async with client.watch(b"k") as events:
            with trio.fail_after(5):
                revision, got = await anext(events)
        assert revision == 6 and [(e.type, e.kv.key, e.kv.value) for e in got] == [("PUT", b"k", b"v")]
        assert server.requests[0].startswith(b"POST /v3/watch HTTP/1.1\r\n")
        assert json.loads(server.requests[0].partition(b"\r\n\r\n")[2]) == {"create_request": {"key": "aw=="}}
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("parts", "moves_on"),
    [
        pytest.param((WATCH_HEAD, chunk(CREATED), b"zz\r\n"), True, id="bad-chunking"),
        pytest.param((WATCH_HEAD, chunk(CREATED), b"40\r\nabc"), True, id="closed-mid-chunk"),
        pytest.param((WATCH_HEAD, chunk(CREATED), chunk(b"{not json\n")), False, id="not-json"),
        pytest.param((WATCH_HEAD, chunk(CREATED), chunk(b"x" * 70_000)), False, id="oversized-line"),
        pytest.param((WATCH_HEAD, chunk(CREATED), b"0\r\n\r\n"), False, id="ended"),
    ],
)
async def test_a_broken_watch_stream_is_a_connection_problem(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, parts: tuple[bytes, ...], moves_on: bool
) -> None:
    monkeypatch.setattr("registry.store.etcd_client.MAX_ANSWER_BYTES", 65536)
    server = await start(nursery, streaming(*parts, then="close"))
    other = await start(nursery, streaming(b""))
    client = EtcdClient([url(server), url(other)])
    try:
        with pytest.raises(ConnectionProblem):
            await next_events(client)
        assert client.endpoint == (url(other) if moves_on else url(server))
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(
            b"HTTP/1.1 400 Bad\r\ncontent-length: 60\r\n\r\n"
            + b'{"code":11,"message":"required revision has been compacted"}',
            Compacted,
            id="compacted",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", ConnectionProblem, id="not-chunked"),
    ],
)
async def test_a_watch_refused_at_its_head(nursery: trio.Nursery, answer: bytes, error: type[Exception]) -> None:
    server = await start(nursery, streaming(answer, then="close"))
    client = EtcdClient([url(server)])
    try:
        with pytest.raises(error):
            await next_events(client)
    finally:
        await client.aclose()
