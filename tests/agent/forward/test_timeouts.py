"""The forwarder's time limits on kubectl's side: a head that stalls half-way is a 408 (audited, then the
stream closes); a request body that stalls ends the stream; a whole head or a GET's end already buffered
needs no timer (the fast path must not change what a slow client gets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from agent.forward import ForwardLimits
from tests.agent.forward.forward_helpers import (
    CLUSTER,
    KUBE_ACCESS,
    LABELS,
    PREFIX,
    World,
    kube_cluster,
    open_client,
    user,
    world_for,
)
from tests.agent.forward.upstreams import Scripted, serve_scripted
from tests.fakes.kube_api import FakeKube


def _world() -> World:
    world = World()
    world.roles[KUBE_ACCESS.name] = KUBE_ACCESS
    world.users["alice"] = user("alice", [KUBE_ACCESS.name])
    return world  # no cluster served: a request that got through would be a 404, never a timeout


async def _read_until_closed(stream: trio.abc.Stream) -> bytes:
    got = bytearray()
    while data := await stream.receive_some():
        got += data
    return bytes(got)


async def test_a_head_that_stalls_half_way_is_a_408_and_the_stream_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    world = _world()
    client = await open_client(nursery, world, world.context(limits=ForwardLimits(head_timeout=5)))
    await client.stream.send_all(f"GET {PREFIX}/api/v1/pods HTTP/1.1\r\nHost: x\r\n".encode())  # no blank line
    started = trio.current_time()
    answer = await _read_until_closed(client.stream)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 5 <= trio.current_time() - started < 6
    [event] = await world.wait_events(1)
    assert event["status"] == 408


async def test_a_body_that_stalls_ends_the_stream(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    world = _world()
    client = await open_client(nursery, world, world.context(limits=ForwardLimits(head_timeout=5)))
    head = f"POST {PREFIX}/api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    await client.stream.send_all(head.encode() + b"only part of it")
    started = trio.current_time()
    answer = await _read_until_closed(client.stream)
    # The cluster is not served here: refused (404) after at most head_timeout of draining, then closed.
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert trio.current_time() - started <= 6
    [event] = await world.wait_events(1)
    assert event["status"] == 404


async def test_a_whole_head_in_one_write_is_answered_without_waiting(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    world = _world()
    client = await open_client(nursery, world, world.context(limits=ForwardLimits(head_timeout=5)))
    started = trio.current_time()
    reply = await client.request("GET", f"{PREFIX}/api/v1/pods")
    assert reply.status == 404
    assert trio.current_time() == started  # no timer ran out on the way


async def test_a_forwarded_body_that_stalls_ends_the_stream(
    nursery: trio.Nursery, fake_kube: FakeKube, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.2  # loopback I/O with the fake API finishes well before a jump
    world = world_for(fake_kube)
    client = await open_client(nursery, world, world.context(limits=ForwardLimits(head_timeout=5)))
    head = f"POST {PREFIX}/api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    await client.stream.send_all(head.encode() + b'{"kind":')
    started = trio.current_time()
    assert await _read_until_closed(client.stream) == b""  # the head went upstream: no answer can follow
    assert 5 <= trio.current_time() - started < 6


async def test_an_idle_kept_alive_stream_ends_at_the_idle_limit_and_each_request_restarts_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    world = _world()
    client = await open_client(nursery, world, world.context(limits=ForwardLimits(idle_timeout=10)))
    started = trio.current_time()
    for _ in range(3):  # 8 s apart: 24 s in all, more than the limit, but never 10 s idle
        await trio.sleep(8)
        assert (await client.request("GET", f"{PREFIX}/api/v1/pods")).status == 404
    assert await _read_until_closed(client.stream) == b""  # closed without a byte once idle for 10 s
    assert 33 <= trio.current_time() - started < 35
    assert [e["status"] for e in await world.wait_events(3)] == [404, 404, 404]


async def test_the_certificate_expiry_ends_an_idle_stream_before_the_idle_limit(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    world = _world()
    limits = ForwardLimits(idle_timeout=600)
    expires = datetime.now(UTC) + timedelta(seconds=30)
    client = await open_client(nursery, world, world.context(limits=limits), expires=expires)
    started = trio.current_time()
    assert (await client.request("GET", f"{PREFIX}/api/v1/pods")).status == 404
    assert await _read_until_closed(client.stream) == b""
    assert 25 <= trio.current_time() - started <= 31


@pytest.mark.parametrize("tunnel", [True, False])
async def test_an_api_server_that_never_answers_is_a_502_at_the_head_limit_and_the_stream_goes_on(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock, tunnel: bool
) -> None:
    mock_clock.autojump_threshold = 0.2  # loopback TLS with the scripted server finishes well before a jump
    scripted: Scripted = await nursery.start(serve_scripted)
    world = _world()
    world.clusters[CLUSTER] = (kube_cluster(CLUSTER, scripted.kubeconfig()), LABELS)
    limits = ForwardLimits(response_head_timeout=7)
    client = await open_client(nursery, world, world.context(limits=limits), tunnel=tunnel)
    started = trio.current_time()
    reply = await client.request("GET", f"{PREFIX}/silent")
    assert reply.status == 502
    assert "no answer within 7s" in reply.json()["message"]
    assert 7 <= trio.current_time() - started < 8
    again = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert again.status == 404  # the scripted server's own answer: the stream and the forwarder go on
    assert trio.current_time() - started < 8
    assert [e["status"] for e in await world.wait_events(2)] == [502, 404]
