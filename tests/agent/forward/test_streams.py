"""Streaming through the forwarder: watches, a client leaving, an upstream dying, upgrades and splicing."""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest
import trio
import trio.testing

from agent.forward import handle_stream
from agent.forward.upstream import Endpoints, UpstreamConnection, UpstreamPool, build_endpoint
from registry.core import http1
from registry.host.socket_tls import SocketTLSStream
from tests.agent.forward.forward_helpers import (
    CLUSTER,
    LABELS,
    PODS_ONLY,
    PREFIX,
    Client,
    World,
    kube_cluster,
    open_client,
    stream_info,
    user,
    world_for,
)
from tests.agent.forward.upstreams import GREETING, Scripted, serve_scripted
from tests.fakes.kube_api import FakeKube

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": {}}


TRANSPORTS = pytest.mark.parametrize("tunnel", [False, True], ids=["memory", "tunnel"])


@TRANSPORTS
async def test_a_watch_streams_each_event_as_it_comes(nursery: trio.Nursery, fake_kube: FakeKube, tunnel: bool) -> None:
    world = world_for(fake_kube)
    ctx = world.context()
    client = await open_client(nursery, world, ctx, tunnel=tunnel)
    listed = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    version = listed.json()["metadata"]["resourceVersion"]
    client.conn.start_next_cycle()
    await client.send_request("GET", f"{PREFIX}/api/v1/namespaces/default/pods?watch=true&resourceVersion={version}")
    head = await client.response_head()
    assert head.status_code == 200
    # The list's connection waits in the pool: a watch asks for h2 on a new connection first (this fake
    # speaks HTTP/1.1, so the watch runs on that one: agent/forward/upstream_h2.py).
    idle = ctx.pool.statistics().idle
    fake_kube.create_object(POD)
    event = await client.next_event()  # the first event arrives while the watch is still open
    assert isinstance(event, h11.Data)
    first = json.loads(bytes(event.data).splitlines()[0])
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "web")
    fake_kube.delete_object("pods", "web", "default")
    event = await client.next_event()
    assert json.loads(bytes(event.data))["type"] == "DELETED"
    # kubectl ^C: the client goes away mid-watch; the upstream connection is closed, never pooled
    await client.stream.aclose()
    [_, watch] = await world.wait_events(2)
    assert (watch["verb"], watch["status"]) == ("watch", 200)
    assert watch["error"] == "the client went away"
    stats = ctx.pool.statistics()
    assert stats.discarded == 1
    assert stats.idle == idle


@pytest.fixture
async def scripted(nursery: trio.Nursery) -> Scripted:
    return await nursery.start(serve_scripted)


def scripted_world(scripted: Scripted) -> World:
    world = World()
    world.roles[PODS_ONLY.name] = PODS_ONLY
    world.users["alice"] = user("alice", [PODS_ONLY.name])
    world.clusters[CLUSTER] = (kube_cluster(CLUSTER, scripted.kubeconfig()), LABELS)
    return world


async def test_an_upstream_dying_mid_response_ends_the_client_response(
    nursery: trio.Nursery, scripted: Scripted
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    await client.send_request("GET", f"{PREFIX}/die")
    head = await client.response_head()
    assert head.status_code == 200
    event = await client.next_event()
    assert bytes(event.data) == b'{"type":"ADDED"}\n'
    # No terminating chunk: a truncated answer must not look complete, and the connection ends promptly.
    with trio.fail_after(5), pytest.raises(h11.RemoteProtocolError):
        await client.next_event()
    [record] = await world.wait_events(1)
    assert record["status"] == 200
    assert "closed" in record["error"] or "broke" in record["error"]


def _forwarder_counting_writes(
    nursery: trio.Nursery, scripted: Scripted
) -> tuple[trio.StapledStream[Any, Any], list[int]]:
    """A forwarder serving one in-memory client stream; the list gets an item per write it makes to it."""
    world = scripted_world(scripted)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    writes: list[int] = []
    pump = server_stream.send_stream.send_all_hook  # type: ignore[attr-defined]

    async def counted() -> None:
        writes.append(1)
        await pump()

    server_stream.send_stream.send_all_hook = counted  # type: ignore[attr-defined]
    nursery.start_soon(lambda: handle_stream(server_stream, stream_info(), ctx=world.context()))
    return client_stream, writes


async def test_a_small_answer_written_in_two_parts_upstream_reaches_the_client_in_one_write(
    nursery: trio.Nursery, scripted: Scripted
) -> None:
    # Each write on a tunnel stream is a frame, a send and a wake-up at the front door and at kubectl: an
    # answer of declared small length goes out whole, however the API server split it.
    client_stream, writes = _forwarder_counting_writes(nursery, scripted)
    client = Client(client_stream)
    reply = await client.request("GET", f"{PREFIX}/split")
    assert (reply.status, reply.body) == (200, b'{"kind":"ConfigMap"}')
    assert len(writes) == 1


async def test_a_bulk_answer_already_received_goes_to_the_client_in_one_write_chunked_as_it_came(
    nursery: trio.Nursery, scripted: Scripted
) -> None:
    # The API server's six chunks arrive together as several TLS records (more than one 64 KiB read); the
    # forwarder takes every record already received into one write (not one per record or per read). The
    # chunks go through as the API server framed them (checked, not decoded and re-encoded).
    client_stream, writes = _forwarder_counting_writes(nursery, scripted)
    client = Client(client_stream)
    await client.send_request("GET", f"{PREFIX}/bulk")
    raw = b""
    while not raw.endswith(b"\r\n0\r\n\r\n"):
        raw += await client_stream.receive_some(1 << 20)
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    body = b"".join(bytes([65 + i]) * 16_000 for i in range(6))
    as_upstream_framed = b"".join(b"3e80\r\n" + body[i : i + 16_000] + b"\r\n" for i in range(0, len(body), 16_000)) + (
        b"0\r\n\r\n"
    )
    assert chunked == as_upstream_framed
    assert _dechunk(chunked) == body
    assert len(writes) == 1


async def test_an_upstream_connection_says_when_more_has_arrived(scripted: Scripted) -> None:
    # The forwarder's coalescing relies on trio's TLS stream keeping received records in a MemoryBIO; this
    # fails (rather than silently writing once per record) if trio changes that.
    endpoint = build_endpoint(CLUSTER, Endpoints().target(kube_cluster(CLUSTER, scripted.kubeconfig())))
    conn = await UpstreamPool().connect(endpoint)
    try:
        await conn.send_raw(b"GET /bulk HTTP/1.1\r\nHost: " + endpoint.host_header + b"\r\n\r\n")
        assert isinstance(await conn.next_event(), http1.Head)
        body = 0
        saw_more = False
        while (event := await conn.next_event()) is not http1.END:
            assert isinstance(event, bytes)
            body += len(event)
            saw_more = saw_more or conn.more_arrived()
        assert body == 96_000
        assert saw_more
        assert not conn.more_arrived()
        assert isinstance(conn.stream, SocketTLSStream)  # TLS on the socket itself (registry/host/socket_tls.py)
    finally:
        await conn.aclose()
    left, _ = trio.testing.memory_stream_pair()
    assert not UpstreamConnection(endpoint, left).more_arrived()  # plain streams: never


async def test_a_stale_pooled_connection_is_retried_on_a_fresh_one(nursery: trio.Nursery, scripted: Scripted) -> None:
    world = scripted_world(scripted)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    first = await client.request("GET", f"{PREFIX}/answer-then-close")
    assert first.status == 410
    await world.wait_events(1)
    second = await client.request("GET", f"{PREFIX}/version")
    assert second.status == 404  # the scripted server's answer, not a 502
    stats = ctx.pool.statistics()
    assert (stats.connects, stats.reuses) == (2, 1)


async def test_a_hang_up_before_answering_is_a_502(nursery: trio.Nursery, scripted: Scripted) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    reply = await client.request("GET", f"{PREFIX}/hang-up")
    assert reply.status == 502
    assert f'Kubernetes cluster "{CLUSTER}"' in reply.json()["message"]


SPDY = [
    (b"Connection", b"Upgrade"),
    (b"Upgrade", b"SPDY/3.1"),
    (b"X-Stream-Protocol-Version", b"v4.channel.k8s.io"),
    (b"X-Stream-Protocol-Version", b"v3.channel.k8s.io"),
]
WEBSOCKET = [
    (b"Connection", b"Upgrade"),
    (b"Upgrade", b"websocket"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
    (b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io"),
]


@pytest.mark.parametrize(("method", "headers"), [("POST", SPDY), ("GET", WEBSOCKET)], ids=["spdy", "websocket"])
@TRANSPORTS
async def test_an_upgrade_answered_101_is_spliced_both_ways(
    nursery: trio.Nursery, scripted: Scripted, method: str, headers: list[tuple[bytes, bytes]], tunnel: bool
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world, tunnel=tunnel)
    target = f"{PREFIX}/api/v1/namespaces/default/pods/web/exec?command=sh&stdin=true&tty=true"
    await client.send_request(method, target, headers=[*headers, (b"Impersonate-User", b"alice")])
    head = await client.response_head()
    assert head.status_code == 101
    sent = dict(head.headers.raw_items())
    assert sent[b"Upgrade"] in (b"SPDY/3.1", b"websocket")
    # what went upstream: the upgrade pair, the protocol headers in order, the query byte for byte
    _, path, upstream_headers = scripted.requests[-1]
    assert path == "/api/v1/namespaces/default/pods/web/exec?command=sh&stdin=true&tty=true"
    names = [n.lower() for n, _ in upstream_headers]
    assert (b"connection", b"Upgrade") in [(n.lower(), v) for n, v in upstream_headers]
    assert names.count(b"impersonate-user") == 1
    assert [v for n, v in upstream_headers if n.lower() == b"authorization"] == [b"Bearer scripted-token"]
    if method == "POST":
        versions = [v for n, v in upstream_headers if n.lower() == b"x-stream-protocol-version"]
        assert versions == [b"v4.channel.k8s.io", b"v3.channel.k8s.io"]
    # raw bytes from here on, both ways
    leftover, _ = client.conn.trailing_data
    received = bytearray(leftover)
    with trio.fail_after(5):
        while len(received) < len(GREETING):
            received += await client.stream.receive_some(100)
    assert bytes(received) == GREETING
    await client.stream.send_all(b"GET /not-http-any-more HTTP/1.1\r\n\r\nhello")
    expected = b"GET /NOT-HTTP-ANY-MORE HTTP/1.1\r\n\r\nHELLO"
    received = bytearray()
    with trio.fail_after(5):
        while len(received) < len(expected):
            received += await client.stream.receive_some(100)
    assert bytes(received) == expected  # spliced, not parsed: no request smuggling after a 101
    await client.stream.aclose()
    [start] = await world.wait_events(1, "session.start")
    [end] = await world.wait_events(1, "session.end")
    assert start["session_id"] == end["session_id"]
    assert (start["session_kind"], start["pod"], start["namespace"]) == ("exec", "web", "default")
    assert end["bytes_from_client"] == len(expected)
    assert end["bytes_to_client"] == len(GREETING) + len(expected)
    assert end["exit_code"] is None
    [request] = world.kube_requests()
    assert (request["verb"], request["resource"], request["status"]) == ("create", "pods/exec", 101)
    with trio.fail_after(5):
        while scripted.sessions_closed < 1:
            await scripted.closed.wait()


@TRANSPORTS
async def test_bytes_sent_before_the_101_arrives_reach_upstream_in_order(
    nursery: trio.Nursery, scripted: Scripted, tunnel: bool
) -> None:
    """What the client sends right behind its upgrade request (before the 101 came back) is kept while the
    answer is awaited and goes upstream first once spliced: the byte stream stays whole."""
    world = scripted_world(scripted)
    client = await open_client(nursery, world, tunnel=tunnel)
    target = f"{PREFIX}/api/v1/namespaces/default/pods/web/exec?command=sh&stdin=true"
    await client.send_request("POST", target, headers=SPDY)
    await client.stream.send_all(b"early-")
    head = await client.response_head()
    assert head.status_code == 101
    await client.stream.send_all(b"late")
    expected = GREETING + b"EARLY-LATE"
    received = bytearray(client.conn.trailing_data[0])
    with trio.fail_after(5):
        while len(received) < len(expected):
            received += await client.stream.receive_some(100)
    assert bytes(received) == expected
    await client.stream.aclose()
    [end] = await world.wait_events(1, "session.end")
    assert end["bytes_from_client"] == len(b"early-late")


@TRANSPORTS
async def test_pipelined_requests_are_answered_in_order(
    nursery: trio.Nursery, fake_kube: FakeKube, tunnel: bool
) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world, tunnel=tunnel)
    targets = [f"{PREFIX}/api/v1/namespaces/{ns}/pods" for ns in ("default", "kube-system")]
    await client.stream.send_all(b"".join(f"GET {t} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for t in targets))

    def sent(target: str) -> None:  # tell the client's h11 what the raw bytes above said
        client.conn.send(h11.Request(method="GET", target=target, headers=[("Host", "x")]))
        client.conn.send(h11.EndOfMessage())

    sent(targets[0])
    first = await client.response_head()
    assert first.status_code == 200
    assert json.loads(await client.read_body())["kind"] == "PodList"
    client.conn.start_next_cycle()
    sent(targets[1])
    second = await client.response_head()
    assert second.status_code == 200
    await client.read_body()
    events = await world.wait_events(2)
    assert [e["namespace"] for e in events] == ["default", "kube-system"]


async def test_an_upgrade_answered_otherwise_is_a_normal_response_and_the_loop_goes_on(
    nursery: trio.Nursery, scripted: Scripted
) -> None:
    world = scripted_world(scripted)
    client = await open_client(nursery, world)
    refused = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods/refuse/exec", headers=WEBSOCKET)
    assert refused.status == 400  # kubectl falls back to SPDY on exactly this
    assert refused.json()["message"] == "upgrade refused by the scripted server"
    assert client.can_reuse()
    client.conn.start_next_cycle()
    await client.send_request("POST", f"{PREFIX}/api/v1/namespaces/default/pods/web/exec", headers=SPDY)
    head = await client.response_head()
    assert head.status_code == 101


async def test_an_upgrade_that_the_roles_refuse_never_reaches_upstream(
    nursery: trio.Nursery, scripted: Scripted
) -> None:
    world = scripted_world(scripted)
    viewer = world.roles[PODS_ONLY.name]
    from tests.agent.forward.forward_helpers import role

    world.roles[PODS_ONLY.name] = role(
        viewer.name,
        {
            "kubernetes_labels": {"*": "*"},
            "kubernetes_groups": ["viewers"],
            "kubernetes_resources": [{"kind": "pod", "namespace": "*", "name": "*", "verbs": ["get", "list"]}],
        },
    )
    client = await open_client(nursery, world)
    reply = await client.request(
        "GET", f"{PREFIX}/api/v1/namespaces/default/pods/web/exec?command=sh", headers=WEBSOCKET
    )
    assert reply.status == 403
    assert not scripted.requests


def _dechunk(wire: bytes) -> bytes:
    """The body of a chunked transfer coding (no extensions, no trailers: what h11 writes)."""
    body, rest = b"", wire
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2 :]
