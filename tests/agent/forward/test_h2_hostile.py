"""The forwarder against a scripted, hostile HTTP/2 API server (ALPN h2): what it answers is decided per path,
frame by frame, with python-hyper's own server state machine (or raw bytes where h2 would refuse to write
them). kubectl must get a 502 Status for a head it cannot use, an aborted answer (never a clean end) for a
body that breaks, and a second connection when the server's stream limit is reached."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import h2.config
import h2.connection
import h2.events
import h2.settings
import h11
import hpack
import pytest
import trio
import trio.testing

from agent.forward import ForwardLimits
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.tls import server_context
from tests.agent.forward.forward_helpers import (
    CLUSTER,
    LABELS,
    PODS_ONLY,
    PREFIX,
    Client,
    World,
    kube_cluster,
    open_client,
    user,
)
from tests.agent.forward.test_h2_upstream import lockstep_client
from tests.agent.forward.upstreams import Scripted

Reply = Callable[["H2Script", int], Awaitable[None]]


@dataclass
class H2Script(Scripted):
    """A scripted h2 API server: ``replies[path](server, stream_id)`` answers a request."""

    max_streams: int | None = None
    connections: int = 0
    conn: h2.connection.H2Connection | None = None
    stream: trio.abc.Stream | None = None
    replies: dict[str, Reply] = field(default_factory=dict)
    lock: trio.Lock = field(default_factory=trio.Lock)  # one writer at a time on the TLS stream

    async def flush(self) -> None:
        assert self.conn is not None and self.stream is not None
        async with self.lock:
            await self.stream.send_all(self.conn.data_to_send())

    async def raw(self, data: bytes) -> None:
        assert self.stream is not None
        async with self.lock:
            await self.stream.send_all(data)


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


async def serve_h2_script(script: H2Script, task_status: trio.TaskStatus[H2Script] = trio.TASK_STATUS_IGNORED) -> None:
    now = datetime.now(UTC)
    ca = CertAuthority.generate("scripted-h2", now=now)
    key = generate_private_key()
    cert = ca.issue(
        public_key_pem(key),
        Identity(name="h2", kind="agent"),
        ttl=timedelta(hours=1),
        now=now,
        ip_addresses=["127.0.0.1"],
    )
    context = server_context(cert, key, [ca.cert_pem], client_certs="optional")
    context.set_alpn_protocols(["h2"])
    script.ca_pem = ca.cert_pem

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        script.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        if script.max_streams is not None:
            conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: script.max_streams})
        script.conn, script.stream = conn, stream
        try:
            await script.flush()
            async with trio.open_nursery() as nursery:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            path = dict(event.headers or [])[b":path"].decode()
                            reply = script.replies[path]
                            nursery.start_soon(reply, script, event.stream_id)
                    await script.flush()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass  # the agent broke the connection off (what some tests expect)
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    script.port = listeners[0].transport_listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        task_status.started(script)


WATCH = "/api/v1/namespaces/default/pods?watch=true"


def world(script: H2Script) -> World:
    w = World()
    w.roles[PODS_ONLY.name] = PODS_ONLY
    w.users["alice"] = user("alice", [PODS_ONLY.name])
    w.clusters[CLUSTER] = (kube_cluster(CLUSTER, script.kubeconfig()), LABELS)
    return w


async def start(nursery: trio.Nursery, reply: Reply, **kwargs: int) -> tuple[H2Script, World]:
    script = H2Script(**kwargs)  # type: ignore[arg-type]
    script.replies[WATCH] = reply
    await nursery.start(serve_h2_script, script)
    return script, world(script)


async def ok_head(script: H2Script, stream_id: int) -> None:
    assert script.conn is not None
    script.conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/json")])
    script.conn.send_data(stream_id, b'{"type":"ADDED"}\n')
    await script.flush()


async def ask(client: Client) -> h11.Response | h11.InformationalResponse:
    await client.send_request("GET", PREFIX + WATCH)
    with trio.fail_after(10):
        return await client.response_head()


async def test_a_head_h11_cannot_carry_is_a_502_status(nursery: trio.Nursery) -> None:
    async def reply(script: H2Script, stream_id: int) -> None:
        # hpack carries any bytes: a header value with CR LF in it (response splitting towards kubectl)
        block = hpack.Encoder().encode([(b":status", b"200"), (b"x-evil", b"a\r\nSet-Cookie: x")])
        await script.raw(frame(0x1, 0x4, stream_id, block))

    _, w = await start(nursery, reply)
    client = await open_client(nursery, w)
    head = await ask(client)
    assert head.status_code == 502
    body = await client.read_body()
    assert b"Set-Cookie" not in body
    [event] = await w.wait_events(1)
    assert event["status"] == 502


async def test_a_body_longer_than_its_content_length_never_looks_complete(nursery: trio.Nursery) -> None:
    async def reply(script: H2Script, stream_id: int) -> None:
        assert script.conn is not None
        script.conn.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"5")])
        await script.flush()
        await script.raw(frame(0x0, 0x1, stream_id, b"0123456789"))

    _, w = await start(nursery, reply)
    client = await open_client(nursery, w)
    head = await ask(client)
    assert head.status_code == 200
    with trio.fail_after(10), pytest.raises(h11.RemoteProtocolError):
        while True:
            event = await client.next_event()
            assert not isinstance(event, h11.EndOfMessage), "a broken body relayed as complete"


async def test_a_reset_mid_watch_aborts_that_watch_only(nursery: trio.Nursery) -> None:
    streams: list[int] = []

    async def reply(script: H2Script, stream_id: int) -> None:
        streams.append(stream_id)
        await ok_head(script, stream_id)

    script, w = await start(nursery, reply)
    ctx = w.context()  # one agent: one pool for both clients
    one, two = await open_client(nursery, w, ctx), await open_client(nursery, w, ctx)
    for client in (one, two):
        assert (await ask(client)).status_code == 200
        assert isinstance(await client.next_event(), h11.Data)
    assert script.conn is not None
    script.conn.reset_stream(streams[0], h2.errors.ErrorCodes.INTERNAL_ERROR)
    await script.flush()
    with trio.fail_after(10), pytest.raises(h11.RemoteProtocolError):
        await client_events(one)
    script.conn.send_data(streams[1], b'{"type":"MODIFIED"}\n')
    await script.flush()
    with trio.fail_after(10):
        event = await two.next_event()
    assert isinstance(event, h11.Data) and b"MODIFIED" in bytes(event.data)
    assert script.connections == 1


async def client_events(client: Client) -> None:
    while True:
        assert isinstance(await client.next_event(), h11.Data)


async def test_the_servers_stream_limit_opens_a_second_connection(nursery: trio.Nursery) -> None:
    script, w = await start(nursery, ok_head, max_streams=2)
    ctx = w.context()
    clients = [await open_client(nursery, w, ctx) for _ in range(3)]
    for client in clients:
        assert (await ask(client)).status_code == 200
        assert isinstance(await client.next_event(), h11.Data)
    assert script.connections == 2


async def test_a_data_flood_beyond_the_window_aborts_the_watches_of_that_connection(nursery: trio.Nursery) -> None:
    async def reply(script: H2Script, stream_id: int) -> None:
        await ok_head(script, stream_id)
        await script.raw(frame(0x0, 0x0, stream_id, b"x" * 16_384) * 8)  # 128 KiB into a 64 KiB window

    _, w = await start(nursery, reply)
    # A client over a stream without a buffer: the forwarder acknowledges nothing it could not write yet,
    # so the flood surely lands beyond the window the agent granted.
    ctx = w.context()
    client = await lockstep_client(nursery, w, ctx)
    assert (await ask(client)).status_code == 200
    with trio.fail_after(10), pytest.raises(h11.RemoteProtocolError):
        await client_events(client)
    assert ctx.h2 is not None
    [upstream] = [c for group in ctx.h2._conns.values() for c in group]
    assert upstream.core.broken is not None and "FlowControlError" in upstream.core.broken
    [event] = await w.wait_events(1)
    assert event["status"] == 200 and event["error"]


@pytest.mark.parametrize("tunnel", [True, False])
async def test_a_watch_the_server_never_answers_is_a_502_at_the_head_limit(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock, tunnel: bool
) -> None:
    mock_clock.autojump_threshold = 0.2  # loopback TLS with the scripted server finishes well before a jump

    async def silent(script: H2Script, stream_id: int) -> None:
        await trio.sleep_forever()

    _, w = await start(nursery, silent)
    ctx = w.context(limits=ForwardLimits(response_head_timeout=7))
    client = await open_client(nursery, w, ctx, tunnel=tunnel)
    started = trio.current_time()
    reply = await client.request("GET", PREFIX + WATCH)
    assert reply.status == 502
    assert "no answer within 7s" in reply.json()["message"]
    assert 7 <= trio.current_time() - started < 8
    [event] = await w.wait_events(1)
    assert event["status"] == 502
    assert ctx.h2 is not None
    with trio.fail_after(5):
        while ctx.h2.statistics().streams:  # noqa: ASYNC110  (the stream was reset: polls the pool, bounded)
            await trio.sleep(0.01)
