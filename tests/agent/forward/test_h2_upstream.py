"""The forwarder with an API server that speaks HTTP/2 (the fake with ``http2=True``): watches are multiplexed on
one shared connection (agent/forward/upstream_h2.py), the answer goes to the client as HTTP/1.1, a client
that stops reading stalls only its own watch, a client that leaves resets its stream, and a lost connection
ends its watches (the client sees an aborted answer and re-lists) while the next watch opens a new one."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import h11
import pytest
import trio
import trio.testing

from agent.forward import ForwardContext, handle_stream
from agent.forward.h2_core import STREAM_WINDOW
from tests.agent.forward.forward_helpers import PREFIX, Client, World, open_client, stream_info, world_for
from tests.fakes.kube_api import FakeKube, serve_fake_kube

WATCH = f"{PREFIX}/api/v1/namespaces/default/configmaps?watch=true"


@pytest.fixture
async def h2_kube(nursery: trio.Nursery) -> FakeKube:
    fake = FakeKube(admin_token="admin-token", http2=True)
    await nursery.start(serve_fake_kube, fake)
    fake.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["configmaps"])
    return fake


def configmap(name: str, size: int = 10) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"k": "v" * size},
    }


async def watch(client: Client) -> None:
    await client.send_request("GET", WATCH)
    head = await client.response_head()
    assert head.status_code == 200
    assert (b"transfer-encoding", b"chunked") in list(head.headers)


async def events_until(client: Client, name: str) -> list[dict[str, object]]:
    """Watch events read from the client until one names ``name`` (an HTTP/1.1 chunked body)."""
    found: list[dict[str, object]] = []
    buffer = b""
    with trio.fail_after(20):
        while True:
            event = await client.next_event()
            assert isinstance(event, h11.Data), event
            buffer += bytes(event.data)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                found.append(json.loads(line))
                if found[-1]["object"]["metadata"]["name"] == name:  # type: ignore[index]
                    return found


async def test_watches_share_one_connection_and_see_their_events(nursery: trio.Nursery, h2_kube: FakeKube) -> None:
    world = world_for(h2_kube)
    ctx = world.context()
    clients = [await open_client(nursery, world, ctx) for _ in range(3)]
    for client in clients:
        await watch(client)
    h2_kube.create_object(configmap("one"))
    for client in clients:
        assert [e["type"] for e in await events_until(client, "one")] == ["ADDED"]
    assert h2_kube.connection_counts.h2 == 1
    assert ctx.h2 is not None and ctx.h2.statistics().streams == 3
    # kubectl ^C on one watch: its stream is reset, the others go on
    await clients[0].stream.aclose()
    [event] = await world.wait_events(1)
    assert (event["verb"], event["status"], event["error"]) == ("watch", 200, "the client went away")
    with trio.fail_after(10):
        while ctx.h2.statistics().streams != 2:  # noqa: ASYNC110  (polls the pool's count, bounded)
            await trio.sleep(0.01)
    h2_kube.create_object(configmap("two"))
    for client in clients[1:]:
        assert [e["type"] for e in await events_until(client, "two")] == ["ADDED"]
    assert h2_kube.connection_counts.h2 == 1


async def lockstep_client(nursery: trio.Nursery, world: World, ctx: ForwardContext) -> Client:
    """A client over a stream with no buffer: when it does not read, the forwarder's writes wait."""
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    nursery.start_soon(lambda: handle_stream(server_stream, stream_info(), ctx=ctx))
    return Client(client_stream)


async def test_a_client_that_stops_reading_stalls_only_its_own_watch(nursery: trio.Nursery, h2_kube: FakeKube) -> None:
    world = world_for(h2_kube)
    ctx = world.context()
    stalled = await lockstep_client(nursery, world, ctx)
    moving = await lockstep_client(nursery, world, ctx)
    await watch(stalled)
    await watch(moving)
    # ~1 MiB of events: far beyond the stalled stream's window (64 KiB) and any buffer on the way
    for i in range(100):
        h2_kube.create_object(configmap(f"cm-{i}", size=10_000))
    got = await events_until(moving, "cm-99")
    assert len(got) == 100
    assert h2_kube.connection_counts.h2 == 1
    # What the agent holds for the stalled watch is bounded by the stream's window: the rest waits in the
    # API server, which may send no more until the client reads (end-to-end flow control).
    assert ctx.h2 is not None
    [upstream] = [c for group in ctx.h2._conns.values() for c in group]
    held = [s.unacked for s in upstream.core.streams.values()]
    assert max(held) > 0 and max(held) <= STREAM_WINDOW
    # The stalled watch lost nothing: it reads everything once it reads again.
    got = await events_until(stalled, "cm-99")
    assert [e["object"]["metadata"]["name"] for e in got] == [f"cm-{i}" for i in range(100)]  # type: ignore[index]


async def test_a_lost_connection_ends_its_watches_and_the_next_watch_reconnects(
    nursery: trio.Nursery, h2_kube: FakeKube
) -> None:
    world = world_for(h2_kube)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    await watch(client)
    assert ctx.h2 is not None
    [upstream] = [c for group in ctx.h2._conns.values() for c in group]
    await upstream.stream.aclose()  # the API server's connection breaks under the watch
    # the client sees the answer end without its last chunk (an abort, never a clean end): kubectl re-lists
    with trio.fail_after(10), pytest.raises(h11.RemoteProtocolError, match="incomplete chunked"):
        while True:
            assert isinstance(await client.next_event(), h11.Data)
    [audited] = await world.wait_events(1)
    assert audited["status"] == 200 and audited["error"]
    again = await open_client(nursery, world, ctx)
    await watch(again)
    h2_kube.create_object(configmap("after"))
    await events_until(again, "after")
    assert h2_kube.connection_counts.h2 == 2


@pytest.mark.parametrize("tunnel", [True, False])
async def test_a_streaming_watch_ends_at_the_certificate_expiry(
    nursery: trio.Nursery, h2_kube: FakeKube, tunnel: bool
) -> None:
    """The forwarder itself ends a stream at its certificate's expiry, also while an answer streams (the
    agent's tunnel relies on it: no cancel scope of its own per stream); the watch is audited."""
    world = world_for(h2_kube)
    expires = datetime.now(UTC) + timedelta(seconds=2)
    client = await open_client(nursery, world, world.context(), tunnel=tunnel, expires=expires)
    await watch(client)
    h2_kube.create_object(configmap("before"))
    assert [e["type"] for e in await events_until(client, "before")] == ["ADDED"]
    with trio.fail_after(15):
        [event] = await world.wait_events(1)  # written when the watch ends: at the expiry, not before
        assert datetime.now(UTC) >= expires - timedelta(milliseconds=50)
        assert (event["verb"], event["status"]) == ("watch", 200)
        with contextlib.suppress(trio.BrokenResourceError):
            while await client.stream.receive_some():  # the stream ends (cut: no chunked terminator)
                pass
    assert h2_kube.connection_counts.h2 == 1
