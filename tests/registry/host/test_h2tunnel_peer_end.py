"""``TunnelStream.watch_peer_end``: a consumer that is not reading learns at once that the peer ended the
stream (END_STREAM), reset it, or that the tunnel is gone; what the peer sends meanwhile stays readable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from registry.host.h2tunnel import TunnelStream
from tests.registry.host.tunnel_helpers import memory_pair


async def _server_stream(nursery: trio.Nursery) -> tuple[TunnelStream, TunnelStream, trio.Event]:
    """A client stream, the server's end of it, and an event that ends the server's handler."""
    ends: list[TunnelStream] = []
    done = trio.Event()
    arrived = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        ends.append(stream)
        arrived.set()
        await done.wait()

    pair = await memory_pair(nursery, handler)
    client = await pair.client.open_stream([], authority="c")
    await arrived.wait()
    return client, ends[0], done


async def _cancelled_by(server: TunnelStream, act: Callable[[], Awaitable[None]]) -> bool:
    with trio.CancelScope() as scope:
        server.watch_peer_end(scope)
        await act()
        with trio.fail_after(5):
            await trio.sleep_forever()
    server.watch_peer_end(None)
    return scope.cancelled_caught


async def test_end_stream_cancels_the_watching_scope_and_data_stays_readable(nursery: trio.Nursery) -> None:
    client, server, done = await _server_stream(nursery)

    async def finish() -> None:
        await client.send_all(b"pipelined")
        await client.send_eof()

    assert await _cancelled_by(server, finish)
    assert await server.receive_some() == b"pipelined"
    assert await server.receive_some() == b""
    done.set()


async def test_a_reset_cancels_the_watching_scope(nursery: trio.Nursery) -> None:
    client, server, done = await _server_stream(nursery)
    assert await _cancelled_by(server, client.aclose)  # nothing received yet: an abort (RST_STREAM)
    done.set()


async def test_data_alone_does_not_cancel_and_an_ended_stream_cancels_at_once(nursery: trio.Nursery) -> None:
    client, server, done = await _server_stream(nursery)
    with trio.CancelScope() as scope:
        server.watch_peer_end(scope)
        await client.send_all(b"more")
        await trio.testing.wait_all_tasks_blocked()
    server.watch_peer_end(None)
    assert not scope.cancelled_caught, "bytes from the peer are not an end"
    assert await server.receive_some() == b"more"

    await client.send_eof()
    await trio.testing.wait_all_tasks_blocked()
    late = trio.CancelScope()
    server.watch_peer_end(late)  # the end already happened: cancelled on the spot
    assert late.cancel_called
    server.watch_peer_end(None)
    done.set()


async def test_a_dead_tunnel_cancels_the_watching_scope(nursery: trio.Nursery) -> None:
    ends: list[TunnelStream] = []
    arrived = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        ends.append(stream)
        arrived.set()
        await trio.sleep_forever()

    pair = await memory_pair(nursery, handler)
    await pair.client.open_stream([], authority="c")
    await arrived.wait()
    with trio.CancelScope() as scope:
        ends[0].watch_peer_end(scope)
        pair.client.abort("test: the front door went away")
        with trio.fail_after(5):
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_stopping_the_watch_means_a_later_end_cancels_nothing(nursery: trio.Nursery) -> None:
    client, server, done = await _server_stream(nursery)
    scope = trio.CancelScope()
    server.watch_peer_end(scope)
    server.watch_peer_end(None)
    await client.send_eof()
    await trio.testing.wait_all_tasks_blocked()
    assert not scope.cancel_called
    done.set()
