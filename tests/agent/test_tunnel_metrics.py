"""kubeport_tunnel_connections{side} and kubeport_tunnel_streams_total{side} move when tunnels come and go
and when streams are opened, on both ends (issue 11 §4). Values are read from prometheus_client's registry."""

from __future__ import annotations

import trio
from prometheus_client import REGISTRY

from agent.tunnel import TunnelStatus, serve_tunnel
from tests.agent.test_tunnel import FAST, echo_handle, start_front_door
from tests.registry.host.tunnel_helpers import echo_round_trip, stream_info, wait_until


def _value(name: str, side: str) -> float:
    return REGISTRY.get_sample_value(name, {"side": side}) or 0.0


async def test_tunnel_gauges_and_stream_counters_move_on_both_sides(nursery: trio.Nursery) -> None:
    front, dial = await start_front_door(nursery)
    tunnels = {side: _value("kubeport_tunnel_connections", side) for side in ("agent", "frontdoor")}
    streams = {side: _value("kubeport_tunnel_streams_total", side) for side in ("agent", "frontdoor")}
    agent_scope = trio.CancelScope()
    agent_done = trio.Event()

    async def run_agent(task_status: trio.TaskStatus[TunnelStatus]) -> None:
        try:
            with agent_scope:
                await serve_tunnel(dial, echo_handle, backoff=FAST, task_status=task_status)
        finally:
            agent_done.set()

    status: TunnelStatus = await nursery.start(run_agent)
    await status.wait_connected()
    await front.hub.wait_live("host-1")
    assert _value("kubeport_tunnel_connections", "agent") == tunnels["agent"] + 1
    assert _value("kubeport_tunnel_connections", "frontdoor") == tunnels["frontdoor"] + 1

    for index in range(3):
        stream = await front.hub.open_stream("host-1", stream_info())
        assert await echo_round_trip(stream, b"%d" % index) == b"alice@prod:%d" % index
        await stream.aclose()
    assert _value("kubeport_tunnel_streams_total", "frontdoor") == streams["frontdoor"] + 3
    assert _value("kubeport_tunnel_streams_total", "agent") == streams["agent"] + 3

    # The network drops the tunnel: the gauges fall, then come back when the agent redials.
    await trio.aclose_forcefully(front.connections[0])
    await wait_until(lambda: len(front.connections) == 2 and front.hub.live_hosts() == {"host-1"})
    await status.wait_connected()
    assert _value("kubeport_tunnel_connections", "agent") == tunnels["agent"] + 1
    await wait_until(lambda: _value("kubeport_tunnel_connections", "frontdoor") == tunnels["frontdoor"] + 1)

    agent_scope.cancel()  # the agent stops while its tunnel is up: its gauge must not keep that tunnel
    await agent_done.wait()
    assert _value("kubeport_tunnel_connections", "agent") == tunnels["agent"]
    await wait_until(lambda: _value("kubeport_tunnel_connections", "frontdoor") == tunnels["frontdoor"])
