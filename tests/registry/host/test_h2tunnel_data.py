"""The tunnel's hand-written DATA frames (H2Tunnel._send_data): the same frames and the same flow control as
h2's own send_data, checked against a raw HTTP/2 peer with the fast path on and off."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Awaitable, Callable

import hyperframe.frame
import pytest
import trio
import trio.testing

from registry.core.errors import ConnectionProblem
from registry.host import h2tunnel
from registry.host.h2tunnel import H2Tunnel, TunnelStream
from tests.internals import verified
from tests.registry.host.test_h2tunnel import CONNECT
from tests.registry.host.tunnel_helpers import RawPeer

PAYLOAD = os.urandom(100_000)  # more than the raw peer's 65,535-byte windows and its 16 KiB frames


async def run_until_aborted(server: H2Tunnel, handler: Callable[[TunnelStream], Awaitable[None]]) -> None:
    with contextlib.suppress(ConnectionProblem):  # each test ends its tunnel with abort()
        await server.run(handler)


async def test_the_installed_h2_takes_the_hand_written_path() -> None:
    # checked once at import against h2's own send_data; False would silently mean the slow path
    assert h2tunnel._FAST_DATA or not verified("h2")  # another h2: its own send_data (tests/internals.py)


async def frames_sent(nursery: trio.Nursery, *, after_peer_end: bool) -> list[tuple[int, int, frozenset[str], bytes]]:
    """The agent side sends PAYLOAD on one stream to a raw peer with default settings; what arrives
    (stream id, length, flags, data per DATA frame), with the windows checked on the way."""
    left, right = trio.testing.memory_stream_pair()
    server = H2Tunnel(right, side="server")
    sent = trio.Event()
    streams: list[TunnelStream] = []

    async def handler(stream: TunnelStream) -> None:
        streams.append(stream)
        await stream.accept()
        if after_peer_end:
            assert await stream.receive_some() == b""  # half-closed (remote): sending goes on
        await stream.send_all(PAYLOAD)
        sent.set()
        await stream.send_eof()

    nursery.start_soon(run_until_aborted, server, handler)
    peer = RawPeer(left)
    await peer.client_preface()
    # the connection window is opened wide first: the stream's own window is what must stop the sender
    await peer.send(hyperframe.frame.WindowUpdateFrame(0, window_increment=1_000_000))
    await peer.send(peer.headers(1, CONNECT, end_stream=after_peer_end))
    frames: list[tuple[int, int, frozenset[str], bytes]] = []
    received = 0
    while received < 65_535:
        frame = await peer.frame_of(hyperframe.frame.DataFrame, 1)
        assert isinstance(frame, hyperframe.frame.DataFrame)
        frames.append((frame.stream_id, frame.body_len, frozenset(frame.flags), frame.data))
        received += len(frame.data)
    # the stream window (the peer's default) is used up: nothing more comes until the peer opens it
    assert received == 65_535
    await trio.testing.wait_all_tasks_blocked()
    assert not sent.is_set()
    assert server._conn.local_flow_control_window(1) == 0
    assert server._conn.outbound_flow_control_window == 1_000_000
    await peer.send(hyperframe.frame.WindowUpdateFrame(1, window_increment=1_000_000))
    while True:
        frame = await peer.frame_of(hyperframe.frame.DataFrame, 1)
        assert isinstance(frame, hyperframe.frame.DataFrame)
        frames.append((frame.stream_id, frame.body_len, frozenset(frame.flags), frame.data))
        if "END_STREAM" in frame.flags:
            break
    await sent.wait()
    assert b"".join(data for *_, data in frames) == PAYLOAD
    assert server._conn.streams[1].outbound_flow_control_window == 65_535 + 1_000_000 - len(PAYLOAD)
    assert server._conn.outbound_flow_control_window == 65_535 + 1_000_000 - len(PAYLOAD)
    assert all(length <= 16_384 for _, length, _, _ in frames)
    server.abort("test over")
    return frames


@pytest.mark.parametrize("after_peer_end", [False, True], ids=["open", "half-closed-remote"])
async def test_data_frames_and_windows_are_those_of_h2_itself(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, after_peer_end: bool
) -> None:
    fast = await frames_sent(nursery, after_peer_end=after_peer_end)
    monkeypatch.setattr(h2tunnel, "_FAST_DATA", False)
    slow = await frames_sent(nursery, after_peer_end=after_peer_end)
    assert fast == slow


async def test_a_reset_stream_is_never_written_to(nursery: trio.Nursery) -> None:
    # after the peer's RST_STREAM the fast path steps aside: h2 refuses and the sender gets StreamReset
    left, right = trio.testing.memory_stream_pair()
    server = H2Tunnel(right, side="server")
    outcome: list[BaseException] = []
    reset_seen = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        await reset_seen.wait()
        try:
            await stream.send_all(b"too late")
        except trio.BrokenResourceError as exc:
            outcome.append(exc)

    nursery.start_soon(run_until_aborted, server, handler)
    peer = RawPeer(left)
    await peer.client_preface()
    await peer.send(peer.headers(1, CONNECT))
    assert await peer.frame_of(hyperframe.frame.HeadersFrame, 1) is not None
    await peer.send(hyperframe.frame.RstStreamFrame(1, error_code=8))
    await trio.testing.wait_all_tasks_blocked()
    assert h2tunnel._sendable_stream(server._conn, 1) is None
    reset_seen.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(outcome) == 1 and isinstance(outcome[0], h2tunnel.StreamReset)
    # and no DATA frame for stream 1 follows on the wire
    await peer.send(hyperframe.frame.PingFrame(0, opaque_data=b"12345678"))
    while True:
        frame = await peer.next_frame()
        assert frame is not None and not isinstance(frame, hyperframe.frame.DataFrame)
        if isinstance(frame, hyperframe.frame.PingFrame):
            break
    server.abort("test over")


Frames = tuple[tuple[object, ...], ...]
Trace = list[tuple[dict[int, Frames], int, tuple[int | None, ...]]]


async def scripted_session(nursery: trio.Nursery, seed: int, stream_ids: tuple[int, ...]) -> Trace:
    """Streams send to a raw peer that, step by step, changes SETTINGS_MAX_FRAME_SIZE and
    SETTINGS_INITIAL_WINDOW_SIZE (windows may go negative), opens send windows, and resets streams while
    their data waits: per step, the frames that arrived on each stream and h2's send windows then. With
    several streams the connection window is opened wide first (which stream takes a contended
    connection window depends on trio's scheduling, not on how frames are built); with one, it varies too."""
    rng = random.Random(seed)
    left, right = trio.testing.memory_stream_pair()
    server = H2Tunnel(right, side="server")
    payloads = {sid: rng.randbytes(rng.randint(1, 150_000)) for sid in stream_ids}
    window_targets = [*stream_ids] if len(stream_ids) > 1 else [0, *stream_ids]

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(payloads[stream.stream_id])
            await stream.send_eof()

    nursery.start_soon(run_until_aborted, server, handler)
    peer = RawPeer(left)
    trace: Trace = []
    arrived: dict[int, list[tuple[object, ...]]] = {sid: [] for sid in stream_ids}

    async def reader() -> None:
        while (frame := await peer.next_frame()) is not None:
            if isinstance(frame, hyperframe.frame.DataFrame):
                arrived[frame.stream_id].append((frame.body_len, sorted(frame.flags), frame.data))
            elif isinstance(frame, hyperframe.frame.RstStreamFrame | hyperframe.frame.GoAwayFrame):
                arrived.setdefault(frame.stream_id, []).append((type(frame).__name__,))

    nursery.start_soon(reader)
    await peer.client_preface()
    if len(stream_ids) > 1:
        await peer.send(hyperframe.frame.WindowUpdateFrame(0, window_increment=2**30))
    for sid in stream_ids:
        await peer.send(peer.headers(sid, CONNECT, end_stream=rng.random() < 0.3))
    await trio.testing.wait_all_tasks_blocked()  # each step starts from a settled state
    for _ in range(40):
        roll = rng.random()
        if roll < 0.3:
            settings = hyperframe.frame.SettingsFrame(0)
            if rng.random() < 0.5:
                settings.settings = {hyperframe.frame.SettingsFrame.MAX_FRAME_SIZE: rng.randint(16_384, 70_000)}
            else:
                settings.settings = {hyperframe.frame.SettingsFrame.INITIAL_WINDOW_SIZE: rng.randint(0, 100_000)}
            await peer.send(settings)
        elif roll < 0.8:
            await peer.send(hyperframe.frame.WindowUpdateFrame(rng.choice(window_targets), rng.randint(1, 60_000)))
        elif roll < 0.85:
            await peer.send(hyperframe.frame.RstStreamFrame(rng.choice(stream_ids), error_code=8))
        else:  # a window update and a SETTINGS change in one read
            settings = hyperframe.frame.SettingsFrame(0)
            settings.settings = {hyperframe.frame.SettingsFrame.INITIAL_WINDOW_SIZE: rng.randint(0, 100_000)}
            update = hyperframe.frame.WindowUpdateFrame(rng.choice(window_targets), 40_000)
            await peer.send(*([update, settings] if rng.random() < 0.5 else [settings, update]))
        await trio.testing.wait_all_tasks_blocked()
        windows: list[int | None] = []
        for sid in stream_ids:
            h2stream = server._conn.streams.get(sid)
            windows.append(None if h2stream is None else h2stream.outbound_flow_control_window)
        step = {sid: tuple(frames) for sid, frames in arrived.items()}
        trace.append((step, server._conn.outbound_flow_control_window, tuple(windows)))
        for frames in arrived.values():
            frames.clear()
    server.abort("test over")
    return trace


@pytest.mark.parametrize("stream_ids", [(1,), (1, 3, 5)], ids=["one-stream", "three-streams"])
async def test_frames_and_windows_equal_h2s_under_settings_changes_window_updates_and_resets(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, stream_ids: tuple[int, ...]
) -> None:
    sizes: set[int] = set()
    for seed in range(8):
        monkeypatch.setattr(h2tunnel, "_FAST_DATA", True)
        fast = await scripted_session(nursery, seed, stream_ids)
        monkeypatch.setattr(h2tunnel, "_FAST_DATA", False)
        slow = await scripted_session(nursery, seed, stream_ids)
        assert fast == slow, seed
        sizes |= {e[0] for step, _, _ in fast for frames in step.values() for e in frames if isinstance(e[0], int)}
    # the sessions did send, in frames of many sizes (above 16 KiB too, once the peer allowed it)
    assert len(sizes) > 10 and max(sizes) > 16_384
