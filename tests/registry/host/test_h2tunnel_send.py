"""The tunnel's send path over the production transport (SocketTLSStream): a stream writes its frames to the
socket synchronously when nobody else is writing; a rest the socket did not take is finished shielded, so
a cancelled sender never leaves a half-written frame or TLS record; the relay's unyielding sends pass no
schedule point, the public send_all still is a checkpoint."""

from __future__ import annotations

import os

import hyperframe.frame
import trio
import trio.testing

from registry.host.h2tunnel import H2Tunnel, TunnelStream
from tests.registry.host.tunnel_helpers import RawPeer, open_via_raw_peer, socket_tls_pair, socket_tls_streams


async def _opened(nursery: trio.Nursery) -> tuple[H2Tunnel, TunnelStream, RawPeer]:
    """A client tunnel on a SocketTLSStream with small kernel buffers, a raw HTTP/2 peer on the other end,
    and one accepted stream (id 1, the default 65,535-byte windows)."""
    agent, frontdoor = await socket_tls_streams(small_buffers=True)
    client = H2Tunnel(frontdoor, side="client")
    nursery.start_soon(client.run)

    async def close_peer_at_the_end() -> None:
        try:
            await trio.sleep_forever()
        finally:
            agent.close_now()

    nursery.start_soon(close_peer_at_the_end)
    peer = RawPeer(agent)
    return client, await open_via_raw_peer(nursery, client, peer), peer


async def _data(peer: RawPeer, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        frame = await peer.frame_of(hyperframe.frame.DataFrame, 1)
        assert isinstance(frame, hyperframe.frame.DataFrame)
        got += frame.data
    return bytes(got)


async def test_a_sender_cancelled_while_the_socket_is_full_leaves_no_half_written_frame(
    nursery: trio.Nursery,
) -> None:
    client, stream, peer = await _opened(nursery)
    payload = os.urandom(60_000)  # within the windows; far more than the kernel buffers hold
    done = trio.Event()
    scopes: list[trio.CancelScope] = []

    async def send() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await stream.send_all(payload)
        done.set()

    nursery.start_soon(send)
    await trio.testing.wait_all_tasks_blocked()
    assert not done.is_set(), "the socket took 60 KB without the peer reading: no rest to finish"
    scopes[0].cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert not done.is_set(), "the rest of a written frame is finished whatever the sender's scope says"
    with trio.fail_after(10):
        assert await _data(peer, len(payload)) == payload  # every frame whole, in order
        await done.wait()
    assert scopes[0].cancelled_caught
    # The connection is intact: the same stream still carries bytes, framed correctly.
    await stream.send_all(b"after")
    with trio.fail_after(10):
        assert await _data(peer, 5) == b"after"
    assert not client.closed


async def test_a_sender_cancelled_before_it_sends_queues_nothing(nursery: trio.Nursery) -> None:
    client, stream, peer = await _opened(nursery)
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.send_all(b"never")
    assert scope.cancelled_caught
    await stream.send_all(b"sent")
    with trio.fail_after(10):
        assert await _data(peer, 4) == b"sent"
    assert not client.closed


class _Yields(trio.abc.Instrument):
    """Counts the steps of one task (each step after the first follows a schedule point)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_send_all_is_a_checkpoint_and_the_unyielding_send_passes_no_schedule_point(
    nursery: trio.Nursery,
) -> None:
    pair = await socket_tls_pair(nursery)
    stream = await pair.client.open_stream([], authority="c")
    with trio.testing.assert_checkpoints():
        await stream.send_all(b"one")
    with trio.fail_after(10):
        assert await stream.receive_some() == b"one"
    counter = _Yields(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(counter)
    try:
        for _ in range(10):
            pair.client._last_flush = -1.0  # a lone sender, not a burst of them (see the next test)
            assert not await stream.send_all_unyielding(b"two")  # the socket took it at once: no wait
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert counter.steps == 0, "an unyielding send on a free socket let other tasks run"
    received = b""
    with trio.fail_after(10):
        while len(received) < 30:
            received += await stream.receive_some()
    assert received == b"two" * 10
    with trio.CancelScope() as scope:  # cancellation is still checked first
        scope.cancel()
        await stream.send_all_unyielding(b"x")
    assert scope.cancelled_caught


def _count_writes(tunnel: H2Tunnel) -> list[int]:
    """A one-element counter of the writes ``tunnel`` makes to its socket from now on."""
    writes = [0]
    send_now = tunnel._send_now
    assert send_now is not None

    def counting(data: bytearray) -> memoryview:
        writes[0] += 1
        assert send_now is not None
        return send_now(data)

    tunnel._send_now = counting
    return writes


async def test_many_streams_sending_at_once_share_writes(nursery: trio.Nursery) -> None:
    # Ten kubectl connections' requests arriving together: one write per request would be ten TLS records
    # and ten reads at the agent; a flush right after another one holds the transport across a schedule
    # point so the others' frames go with it. A lone sender (one connection) writes at once.
    pair = await socket_tls_pair(nursery)
    streams = [await pair.client.open_stream([], authority="c") for _ in range(10)]
    writes = _count_writes(pair.client)
    async with trio.open_nursery() as senders:
        for index, stream in enumerate(streams):
            senders.start_soon(stream.send_all, f"request {index}".encode())
    assert writes[0] < len(streams)
    for index, stream in enumerate(streams):  # every request arrived whole, on its own stream
        with trio.fail_after(10):
            assert await stream.receive_some() == f"request {index}".encode()


async def test_answers_to_requests_that_arrived_together_share_writes(nursery: trio.Nursery) -> None:
    # The agent's side: ten answers written at once share writes too.
    pair = await socket_tls_pair(nursery)
    streams = [await pair.client.open_stream([], authority="c") for _ in range(10)]
    for stream in streams:  # every handler is up and echoing
        await stream.send_all(b"warm")
        with trio.fail_after(10):
            assert await stream.receive_some() == b"warm"
    writes = _count_writes(pair.server)
    async with trio.open_nursery() as senders:
        for index, stream in enumerate(streams):
            senders.start_soon(stream.send_all, f"request {index}".encode())
    for index, stream in enumerate(streams):
        with trio.fail_after(10):
            assert await stream.receive_some() == f"request {index}".encode()
    assert writes[0] < len(streams)
