"""The agent's serve_tunnel and the front door's TunnelHub together: over real TLS on 127.0.0.1:0 (agent
certificate checked by the front door, host id from it) and over memory streams for the clock-driven cases."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from agent.tunnel import Backoff, TunnelStatus, serve_tunnel
from registry.core.errors import ConnectionProblem
from registry.core.tunnel_info import StreamInfo
from registry.frontdoor.tunnels import TunnelHub
from registry.host.h2tunnel import H2Tunnel
from registry.host.tls import peer_certificate_der
from tests.registry.host.tunnel_helpers import (
    RawPeer,
    Tls,
    echo,
    echo_round_trip,
    serve_tls,
    stream_info,
    tls_contexts,
    tls_dialer,
    wait_until,
)

FAST = Backoff(initial=0.01, maximum=0.05)


class FrontDoor:
    """A minimal front door: TLS with client certificates, host id from the agent certificate, TunnelHub."""

    def __init__(self, tls: Tls) -> None:
        self.tls = tls
        self.hub = TunnelHub()
        self.connections: list[trio.SSLStream[trio.SocketStream]] = []

    async def on_connection(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        der = peer_certificate_der(stream)
        assert der is not None
        identity = self.tls.ca.verify(der, now=datetime.now(tz=UTC))
        assert identity.kind == "agent" and identity.host_id is not None
        self.connections.append(stream)
        await self.hub.serve_agent(stream, identity.host_id)


async def start_front_door(nursery: trio.Nursery) -> tuple[FrontDoor, Callable[[], Awaitable[trio.abc.Stream]]]:
    front = FrontDoor(tls_contexts())
    port = await serve_tls(nursery, front.tls.server, front.on_connection)
    return front, tls_dialer(port, front.tls.client)


async def echo_handle(stream: trio.abc.HalfCloseableStream, info: StreamInfo) -> None:
    await stream.send_all(f"{info.user}@{info.cluster}:".encode())
    await echo(stream)


async def test_streams_flow_from_the_hub_to_the_agent_over_tls(nursery: trio.Nursery) -> None:
    front, dial = await start_front_door(nursery)
    seen: list[StreamInfo] = []

    async def handle(stream: trio.abc.HalfCloseableStream, info: StreamInfo) -> None:
        seen.append(info)
        await echo_handle(stream, info)

    status: TunnelStatus = await nursery.start(serve_tunnel, dial, handle)
    await status.wait_connected()
    await front.hub.wait_live("host-1")
    assert front.hub.live_hosts() == frozenset({"host-1"})
    info = stream_info(user="alice", cluster="prod")
    streams = [await front.hub.open_stream("host-1", info) for _ in range(20)]
    for index, stream in enumerate(streams):
        assert await echo_round_trip(stream, b"x%d" % index) == b"alice@prod:x%d" % index
        await stream.aclose()
    assert seen == [info] * 20
    stats = front.hub.statistics()
    assert stats["streams_opened_total"] == 20 and stats["tunnels"] == 1 and stats["live"] == 1
    assert status.statistics()["connected"] == 1


async def test_a_host_without_a_tunnel_is_a_clear_error() -> None:
    hub = TunnelHub()
    with pytest.raises(ConnectionProblem, match="agent 'nope' has no live tunnel"):
        await hub.open_stream("nope", stream_info())
    assert hub.live_hosts() == frozenset()


async def test_the_agent_reconnects_after_the_connection_drops(nursery: trio.Nursery) -> None:
    front, dial = await start_front_door(nursery)
    status: TunnelStatus = await nursery.start(
        lambda task_status: serve_tunnel(dial, echo_handle, backoff=FAST, task_status=task_status)
    )
    await front.hub.wait_live("host-1")
    watch = await front.hub.open_stream("host-1", stream_info())
    await trio.aclose_forcefully(front.connections[0])  # the network drops the tunnel
    with pytest.raises(trio.BrokenResourceError):
        while await watch.receive_some():
            pass
    await wait_until(lambda: len(front.connections) == 2 and front.hub.live_hosts() == {"host-1"})
    await status.wait_connected()
    fresh = await front.hub.open_stream("host-1", stream_info(user="bob"))
    assert await echo_round_trip(fresh, b"again") == b"bob@prod:again"
    assert status.statistics()["connects_total"] == 2
    assert status.statistics()["failures_total"] == 1


async def test_a_host_that_reconnects_replaces_its_old_tunnel_which_drains(nursery: trio.Nursery) -> None:
    front, dial = await start_front_door(nursery)
    agents = []
    for _ in range(2):
        agent = H2Tunnel(await dial(), side="server")
        await nursery.start(agent.run, _accept(echo_handle))
        agents.append(agent)
        count = len(agents)
        await wait_until(lambda: front.hub.statistics()["connections_total"] == count)  # noqa: B023
        if len(agents) == 1:
            await front.hub.wait_live("host-1")
            old_stream = await front.hub.open_stream("host-1", stream_info(user="old"))
    await front.hub.wait_live("host-1")
    assert front.hub.statistics()["replaced_total"] == 1
    new_stream = await front.hub.open_stream("host-1", stream_info(user="new"))
    assert agents[1].statistics()["streams_opened_total"] == 1  # new streams go to the new connection
    assert await echo_round_trip(old_stream, b"1") == b"old@prod:1"  # the old one still finishes its stream
    await old_stream.aclose()
    with trio.fail_after(10):
        await agents[0].wait_closed()  # and then closes
    assert not agents[1].closed
    assert await echo_round_trip(new_stream, b"2") == b"new@prod:2"


def _accept(
    handle: Callable[[trio.abc.HalfCloseableStream, StreamInfo], Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    async def handler(stream: object) -> None:
        await stream.accept()  # type: ignore[attr-defined]
        await handle(stream, StreamInfo.from_headers(stream.headers))  # type: ignore[arg-type, attr-defined]

    return handler


async def test_hub_drain_finishes_streams_then_the_agent_sees_goaway(nursery: trio.Nursery) -> None:
    front, dial = await start_front_door(nursery)
    status: TunnelStatus = await nursery.start(
        lambda task_status: serve_tunnel(
            dial, echo_handle, backoff=Backoff(initial=60, maximum=60), task_status=task_status
        )
    )
    await front.hub.wait_live("host-1")
    stream = await front.hub.open_stream("host-1", stream_info())
    drained = trio.Event()

    async def drain() -> None:
        await front.hub.drain()
        drained.set()

    nursery.start_soon(drain)
    await wait_until(lambda: front.hub.live_hosts() == frozenset())
    with pytest.raises(ConnectionProblem, match="draining"):
        await front.hub.open_stream("host-1", stream_info())
    assert await echo_round_trip(stream, b"last words") == b"alice@prod:last words"
    await stream.aclose()
    await drained.wait()
    await status.wait_disconnected()
    assert status.last_error == "the front door closed the tunnel (GOAWAY)"


async def test_a_hostile_agent_ends_only_its_own_tunnel(nursery: trio.Nursery) -> None:
    front, dial = await start_front_door(nursery)
    good: TunnelStatus = await nursery.start(serve_tunnel, dial, echo_handle)
    await good.wait_connected()
    left, right = trio.testing.memory_stream_pair()
    ended = trio.Event()

    async def serve_evil() -> None:
        await front.hub.serve_agent(left, "evil-host")  # must return, never raise
        ended.set()

    nursery.start_soon(serve_evil)
    evil = RawPeer(right)
    await evil.server_preface()
    await front.hub.wait_live("evil-host")
    await evil.send(raw=b"\x00\x00\x05\x04\x00\x00\x00\x00\x00garbage")
    await ended.wait()
    assert front.hub.live_hosts() == frozenset({"host-1"})
    assert front.hub.statistics()["failed_total"] == 1
    stream = await front.hub.open_stream("host-1", stream_info())
    assert await echo_round_trip(stream, b"fine") == b"alice@prod:fine"


# -- memory transport: identity checks, expiry, backoff -------------------------------------------------------------


async def _memory_agent(
    nursery: trio.Nursery,
    handle: Callable[[trio.abc.HalfCloseableStream, StreamInfo], Awaitable[None]],
    **kwargs: object,
) -> tuple[H2Tunnel, TunnelStatus]:
    left, right = trio.testing.memory_stream_pair()
    dialed = iter([right])

    async def dial() -> trio.abc.Stream:
        return next(dialed)

    client = H2Tunnel(left, side="client")
    nursery.start_soon(client.run)
    status: TunnelStatus = await nursery.start(
        lambda task_status: serve_tunnel(
            dial,
            handle,
            task_status=task_status,
            **kwargs,  # type: ignore[arg-type]
        )
    )
    await client.wait_ready()
    return client, status


async def test_a_malformed_identity_is_refused_and_the_connection_stays(nursery: trio.Nursery) -> None:
    handled: list[StreamInfo] = []

    async def handle(stream: trio.abc.HalfCloseableStream, info: StreamInfo) -> None:
        handled.append(info)
        await echo_handle(stream, info)

    client, _status = await _memory_agent(nursery, handle)
    good = stream_info().to_headers()
    hostile = [
        [*good, (b"kubeport-user", b"mallory")],  # a second user
        [(n, b"alice,system:masters" if n == b"kubeport-user" else v) for n, v in good],
        [(n, v) for n, v in good if n != b"kubeport-cert-expires"],
        [(n, b"yesterday" if n == b"kubeport-cert-expires" else v) for n, v in good],
        [(n, ",".join(f"r{i}" for i in range(300)).encode() if n == b"kubeport-roles" else v) for n, v in good],
    ]
    for headers in hostile:
        with pytest.raises(ConnectionProblem, match="HTTP 400: tunnel"):
            await client.open_stream(headers, authority="prod")
    assert client.live and not handled
    stream = await client.open_stream(good, authority="prod")
    assert await echo_round_trip(stream, b"ok") == b"alice@prod:ok"


async def test_an_expired_certificate_is_refused_and_expiry_ends_a_running_stream(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    wall = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
    cancelled = trio.Event()

    async def handle(stream: trio.abc.HalfCloseableStream, info: StreamInfo) -> None:
        try:
            await trio.sleep_forever()  # a long watch
        finally:
            cancelled.set()

    client, _status = await _memory_agent(nursery, handle, now=lambda: wall)
    expired = StreamInfo("prod", "alice", (), "", wall - timedelta(seconds=1))
    with pytest.raises(ConnectionProblem, match="HTTP 403: the certificate of user 'alice' has expired"):
        await client.open_stream(expired.to_headers(), authority="prod")
    soon = StreamInfo("prod", "alice", (), "", wall + timedelta(minutes=5))
    stream = await client.open_stream(soon.to_headers(), authority="prod")
    start = trio.current_time()
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
    await cancelled.wait()
    assert trio.current_time() - start == pytest.approx(300)


async def test_dial_failures_back_off_with_jitter_and_log_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.tunnel")
    attempts: list[float] = []
    left, right = trio.testing.memory_stream_pair()

    async def dial() -> trio.abc.Stream:
        attempts.append(trio.current_time())
        if len(attempts) <= 7:
            raise OSError(111, "Connection refused")
        nursery.start_soon(H2Tunnel(left, side="client").run)  # the front door is there at last
        return right

    status: TunnelStatus = await nursery.start(serve_tunnel, dial, echo_handle)
    await status.wait_connected()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    for gap, ceiling in zip(gaps, [1, 2, 4, 8, 16, 30, 30], strict=True):
        assert ceiling / 2 <= gap <= ceiling
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Connection refused" in warnings[0].getMessage()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == ["tunnel to the front door is up"]
    assert status.statistics()["failures_total"] == 7
