"""The h2 tunnel driver: streams behave like half-closeable byte streams, flow control keeps memory bounded and
streams independent, resets and drains propagate, dead or hostile peers end only their own connection.

The stream tests run twice: over an in-memory stream pair and over real TLS on 127.0.0.1:0."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import h2.errors
import hyperframe.frame
import pytest
import trio
import trio.testing

from registry.core.errors import BadParameter, ConnectionProblem, LimitExceeded
from registry.host.h2tunnel import ERROR_HEADER, PROTOCOL, H2Tunnel, StreamReset, TunnelConfig, TunnelStream
from tests.registry.host.tunnel_helpers import (
    Pair,
    RawPeer,
    accept_and_echo,
    count_all,
    echo_round_trip,
    memory_pair,
    open_via_raw_peer,
    read_all,
    socket_tls_pair,
    tls_pair,
    wait_until,
)

MiB = 1024 * 1024
Handler = Callable[[TunnelStream], Awaitable[None]]
MakePair = Callable[..., Awaitable[Pair]]


@pytest.fixture(params=["memory", "tls", "socket_tls"])
def make_pair(request: pytest.FixtureRequest) -> MakePair:
    pairs = {"memory": memory_pair, "tls": tls_pair, "socket_tls": socket_tls_pair}
    return pairs[request.param]


async def test_echo_through_many_concurrent_streams(nursery: trio.Nursery, make_pair: MakePair) -> None:
    pair = await make_pair(nursery)
    results: dict[int, bool] = {}

    async def one(index: int) -> None:
        payload = os.urandom(1 + index * 997)
        stream = await pair.client.open_stream([(b"x-index", str(index).encode())], authority="c")
        results[index] = await echo_round_trip(stream, payload) == payload
        await stream.aclose()

    async with trio.open_nursery() as inner:
        for index in range(100):
            inner.start_soon(one, index)
    assert results == dict.fromkeys(range(100), True)
    await wait_until(lambda: pair.server.statistics()["open_streams"] == 0)
    client, server = pair.client.statistics(), pair.server.statistics()
    assert client["streams_opened_total"] == server["streams_opened_total"] == 100
    assert client["open_streams"] == 0
    assert server["handlers"] == 0


async def test_request_headers_reach_the_server(nursery: trio.Nursery) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def handler(stream: TunnelStream) -> None:
        seen.append(stream.headers)
        await stream.accept()

    pair = await memory_pair(nursery, handler)
    stream = await pair.client.open_stream([(b"kubeport-user", b"alice")], authority="prod")
    assert stream.status == 200
    headers = dict(seen[0])
    assert headers[b":method"] == b"CONNECT"
    assert headers[b":protocol"] == PROTOCOL
    assert headers[b":authority"] == b"prod"
    assert headers[b"kubeport-user"] == b"alice"


async def test_a_64_mib_transfer_completes_with_bounded_buffers(nursery: trio.Nursery, make_pair: MakePair) -> None:
    config = TunnelConfig()
    pair = await make_pair(nursery, config=config)
    stream = await pair.client.open_stream([], authority="c")
    size = 64 * MiB
    block = os.urandom(MiB)
    received = 0

    async def sender() -> None:
        for _ in range(size // len(block)):
            await stream.send_all(block)
        await stream.send_eof()

    async with trio.open_nursery() as inner:
        inner.start_soon(sender)
        received = await count_all(stream)
    assert received == size
    for side in (pair.client.statistics(), pair.server.statistics()):
        # Never more than one stream window waits in a receive buffer, whatever the producer's speed.
        assert side["peak_stream_buffered"] <= config.stream_window
        assert side["bytes_in_total"] >= size
        assert side["outbox"] == 0


async def test_a_stalled_consumer_does_not_block_another_stream(nursery: trio.Nursery, make_pair: MakePair) -> None:
    config = TunnelConfig(stream_window=256 * 1024)
    stalled_handler_started = trio.Event()
    release = trio.Event()
    stalled_total = 0

    async def handler(stream: TunnelStream) -> None:
        nonlocal stalled_total
        await stream.accept()
        if dict(stream.headers).get(b"x-mode") == b"stall":
            stalled_handler_started.set()
            await release.wait()  # reads nothing until told
            stalled_total = await count_all(stream)
            await stream.send_eof()
        else:
            await accept_echo_body(stream)

    pair = await make_pair(nursery, handler, config=config)
    stalled = await pair.client.open_stream([(b"x-mode", b"stall")], authority="c")
    await stalled_handler_started.wait()
    stalled_send_done = trio.Event()

    async def fill_stalled() -> None:
        await stalled.send_all(b"s" * (4 * config.stream_window))
        await stalled.send_eof()
        stalled_send_done.set()

    nursery.start_soon(fill_stalled)
    # The stalled stream's window is full: the agent side holds exactly one window, unread.
    await wait_until(lambda: pair.server.statistics()["buffered"] == config.stream_window)
    assert not stalled_send_done.is_set()

    # Meanwhile another stream moves 32 windows' worth both ways.
    other = await pair.client.open_stream([(b"x-mode", b"echo")], authority="c")
    payload = os.urandom(32 * config.stream_window)
    assert await echo_round_trip(other, payload) == payload
    await other.aclose()
    assert not stalled_send_done.is_set()  # still blocked by its own flow control, and only it

    release.set()
    await stalled_send_done.wait()
    assert await read_all(stalled) == b""
    assert stalled_total == 4 * config.stream_window


async def accept_echo_body(stream: TunnelStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def test_half_close_from_the_client_side(nursery: trio.Nursery, make_pair: MakePair) -> None:
    # The server keeps talking after the client's EOF (like an HTTP response after the request body).
    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        request = await read_all(stream)
        await stream.send_all(b"got " + request)
        await stream.send_all(b" and more")
        await stream.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"after eof")

    pair = await make_pair(nursery, handler)
    stream = await pair.client.open_stream([], authority="c")
    await stream.send_all(b"request")
    await stream.send_eof()
    await stream.send_eof()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"late")
    assert await read_all(stream) == b"got request and more"
    assert await stream.receive_some() == b""  # EOF stays EOF
    await stream.aclose()
    await wait_until(lambda: pair.server.statistics()["open_streams"] == 0)
    assert pair.client.statistics()["streams_reset_total"] == 0  # ended cleanly, not reset


async def test_half_close_from_the_server_side(nursery: trio.Nursery, make_pair: MakePair) -> None:
    # The server says all it has first, then keeps reading what the client sends.
    heard = trio.Event()
    heard_bytes = b""

    async def handler(stream: TunnelStream) -> None:
        nonlocal heard_bytes
        await stream.accept()
        await stream.send_all(b"banner")
        await stream.send_eof()
        heard_bytes = await read_all(stream)
        heard.set()

    pair = await make_pair(nursery, handler)
    stream = await pair.client.open_stream([], authority="c")
    assert await read_all(stream) == b"banner"
    for part in (b"one ", b"two ", b"three"):
        await stream.send_all(part)
    await stream.send_eof()
    await heard.wait()
    assert heard_bytes == b"one two three"
    await stream.aclose()


async def test_receive_some_respects_max_bytes(nursery: trio.Nursery) -> None:
    pair = await memory_pair(nursery)
    stream = await pair.client.open_stream([], authority="c")
    await stream.send_all(b"abcdefgh")
    got = b""
    while len(got) < 8:
        chunk = await stream.receive_some(3)
        assert 1 <= len(chunk) <= 3
        got += chunk
    assert got == b"abcdefgh"
    with pytest.raises(ValueError, match="max_bytes"):
        await stream.receive_some(0)


async def test_frames_waiting_together_are_received_as_one_piece(nursery: trio.Nursery) -> None:
    # A consumer that falls behind gets the waiting frames in one receive (one write onwards, not one per
    # frame), never more than max_bytes.
    config = TunnelConfig(stream_window=65_535, connection_window=65_535 * 2, max_concurrent_streams=2)
    pieces: list[bytes] = []
    release = trio.Event()
    done = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        await release.wait()
        pieces.append(await stream.receive_some(3_500))
        pieces.append(await stream.receive_some())
        done.set()
        await stream.receive_some()

    pair = await memory_pair(nursery, handler, config=config)
    stream = await pair.client.open_stream([], authority="c")
    for letter in b"abcde":
        await stream.send_all(bytes([letter]) * 1_000)  # five DATA frames
    await wait_until(lambda: pair.server.statistics()["buffered"] == 5_000)
    release.set()
    await done.wait()
    assert pieces == [b"a" * 1_000 + b"b" * 1_000 + b"c" * 1_000, b"d" * 1_000 + b"e" * 1_000]
    assert pair.server.statistics()["buffered"] == 0


async def test_a_transport_write_wakes_only_the_senders_whose_bytes_it_carried(nursery: trio.Nursery) -> None:
    # In a watch-event burst, hundreds of streams queue behind one transport write; a write that woke every
    # waiting sender made each re-check and re-park once per write, a cost of streams x writes.
    left, right = trio.testing.memory_stream_pair()
    pump = left.send_stream.send_all_hook
    allow = trio.Semaphore(0)

    async def gated() -> None:  # each transport write completes only when the test allows it
        await allow.acquire()
        if pump is not None:
            await pump()

    pair_client = H2Tunnel(left, side="client")
    server = H2Tunnel(right, side="server")
    await nursery.start(server.run, accept_and_echo)
    await nursery.start(pair_client.run)
    await pair_client.wait_ready()
    streams = [await pair_client.open_stream([], authority="c") for _ in range(6)]
    await trio.testing.wait_all_tasks_blocked()
    left.send_stream.send_all_hook = gated
    waiters: dict[trio.lowlevel.Task, int] = {}
    done: list[int] = []

    class CountWakeUps(trio.abc.Instrument):
        def task_scheduled(self, task: trio.lowlevel.Task) -> None:
            if task in waiters:
                waiters[task] += 1

    async def send(index: int, waiting: bool) -> None:
        if waiting:
            waiters[trio.lowlevel.current_task()] = 0
        await streams[index].send_all(b"event %d" % index)
        done.append(index)

    nursery.start_soon(send, 0, False)  # its write is in the transport, not complete
    await trio.testing.wait_all_tasks_blocked()
    for index in range(1, 6):
        nursery.start_soon(send, index, True)  # queued behind it
    await trio.testing.wait_all_tasks_blocked()
    instrument = CountWakeUps()
    trio.lowlevel.add_instrument(instrument)
    try:
        allow.release()  # the first write completes; the second (the five queued frames) starts
        await trio.testing.wait_all_tasks_blocked()
        assert done == [] and set(waiters.values()) == {0}  # nobody woken for a write without its bytes
        allow.release()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(done) == [0, 1, 2, 3, 4, 5]
        assert set(waiters.values()) == {1}  # each woken once, by the write that carried its bytes
    finally:
        trio.lowlevel.remove_instrument(instrument)
        left.send_stream.send_all_hook = pump
        for _ in range(100):
            allow.release()


@pytest.mark.parametrize("ends_first", [True, False])
async def test_an_answer_ended_before_the_reset_survives_arriving_with_it(
    nursery: trio.Nursery, ends_first: bool
) -> None:
    # The forwarder closes a stream whose client did not end its side (a `Connection: close` answer): that
    # is a reset. In a burst the answer, its END_STREAM and the reset can leave in one write and arrive in
    # one read; a reset alone discards unread bytes (an abort), so the forwarder ends its side first.
    left, right = trio.testing.memory_stream_pair()
    pump = right.send_stream.send_all_hook
    allow = trio.Semaphore(0)

    async def gated() -> None:  # each agent-side transport write completes only when the test allows it
        await allow.acquire()
        if pump is not None:
            await pump()

    answer = b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
    go = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        if stream.headers and dict(stream.headers).get(b"role") == b"answer":
            await go.wait()
            await stream.send_all(answer)  # waits in line behind the write in progress
            if ends_first:
                await stream.send_eof()
        else:
            await stream.send_all(b"busy")  # the write in progress
            await trio.sleep_forever()

    client = H2Tunnel(left, side="client")
    server = H2Tunnel(right, side="server")
    await nursery.start(server.run, handler)
    await nursery.start(client.run)
    await client.wait_ready()
    answered = await client.open_stream([(b"role", b"answer")], authority="c")
    busy = await client.open_stream([(b"role", b"busy")], authority="c")
    right.send_stream.send_all_hook = gated
    try:
        await trio.testing.wait_all_tasks_blocked()  # the busy stream's write waits in the transport
        go.set()
        await trio.testing.wait_all_tasks_blocked()  # the answer waits behind it
        for _ in range(4):
            allow.release()
        with trio.fail_after(10):
            assert await busy.receive_some() == b"busy"
            if ends_first:
                assert await read_all(answered) == answer
            else:
                with pytest.raises(StreamReset):
                    await read_all(answered)
    finally:
        right.send_stream.send_all_hook = pump
        for _ in range(100):
            allow.release()


async def test_receive_some_is_a_checkpoint_whether_data_waits_or_not(nursery: trio.Nursery) -> None:
    pair = await memory_pair(nursery)
    stream = await pair.client.open_stream([], authority="c")
    await stream.send_all(b"ping")
    await wait_until(lambda: stream.buffered == 4)
    with trio.testing.assert_checkpoints():  # ready at once: still a schedule and cancel point
        assert await stream.receive_some() == b"ping"
    nursery.start_soon(stream.send_all, b"pong")  # runs once this task parks in receive_some
    with trio.testing.assert_checkpoints():  # parked until the echo arrives: that was its checkpoint
        assert await stream.receive_some() == b"pong"


async def test_a_client_reset_reaches_the_server(nursery: trio.Nursery, make_pair: MakePair) -> None:
    outcome: list[BaseException] = []
    reading = trio.Event()

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        reading.set()
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError as exc:
            outcome.append(exc)
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")

    pair = await make_pair(nursery, handler)
    stream = await pair.client.open_stream([], authority="c")
    await stream.send_all(b"partial request")
    await reading.wait()
    await stream.aclose()  # before the server's EOF: an abort, like Ctrl-C on kubectl
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    await wait_until(lambda: bool(outcome))
    assert isinstance(outcome[0], StreamReset)
    assert outcome[0].error_code == h2.errors.ErrorCodes.CANCEL
    await wait_until(lambda: pair.server.statistics()["open_streams"] == 0)
    assert pair.client.statistics()["streams_reset_total"] == 1


async def test_a_failing_handler_resets_its_stream_and_nothing_else(nursery: trio.Nursery, make_pair: MakePair) -> None:
    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        if dict(stream.headers).get(b"x-mode") == b"crash":
            await stream.receive_some()
            raise RuntimeError("handler bug")
        await accept_echo_body(stream)

    pair = await make_pair(nursery, handler)
    survivor = await pair.client.open_stream([], authority="c")
    doomed = await pair.client.open_stream([(b"x-mode", b"crash")], authority="c")
    await doomed.send_all(b"boom")
    with pytest.raises(StreamReset, match="reset by the peer"):
        await read_all(doomed)
    with pytest.raises(trio.BrokenResourceError):
        await doomed.send_all(b"more")
    assert await echo_round_trip(survivor, b"still here") == b"still here"
    assert pair.client.live


async def test_unread_data_of_reset_streams_returns_the_connection_window(nursery: trio.Nursery) -> None:
    config = TunnelConfig(stream_window=64 * 1024, connection_window=64 * 1024 * 4, max_concurrent_streams=4)

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        await stream.send_all(b"x" * 64 * 1024)  # one full window that the client never reads
        await trio.sleep_forever()

    pair = await memory_pair(nursery, handler, config)
    for _ in range(12):  # three times the connection window, unread, then reset
        stream = await pair.client.open_stream([], authority="c")
        await wait_until(lambda s=stream: s.buffered == 64 * 1024)  # type: ignore[misc]
        await stream.aclose()
    assert pair.client.statistics()["buffered"] == 0
    echo_pair = await memory_pair(nursery, accept_and_echo, config)
    assert echo_pair.client.live


async def test_small_reads_are_acknowledged_together_and_never_stall_the_sender(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A watch reads one small event at a time; acknowledging each read to h2 cost a call per event. Reads are
    # now told to h2 in batches of stream_window / 16, and a sender pushing several windows of small pieces
    # through the smallest window allowed must still never stall.
    config = TunnelConfig(stream_window=65_535, connection_window=65_535 * 2, max_concurrent_streams=2)
    piece, pieces = b"e" * 100, 2_000  # three windows in all

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        for _ in range(pieces):
            await stream.send_all(piece)
        await stream.send_eof()

    pair = await memory_pair(nursery, handler, config)
    acknowledged: list[int] = []
    acknowledge = pair.client._conn.acknowledge_received_data

    def counted(size: int, stream_id: int) -> None:
        acknowledged.append(size)
        acknowledge(size, stream_id)

    monkeypatch.setattr(pair.client._conn, "acknowledge_received_data", counted)
    stream = await pair.client.open_stream([], authority="c")
    total = reads = 0
    with trio.fail_after(10):
        while data := await stream.receive_some(len(piece)):
            total += len(data)
            reads += 1
    assert total == len(piece) * pieces and reads == pieces
    assert sum(acknowledged) == total  # every byte given back, none twice
    assert len(acknowledged) <= total // (config.stream_window // 16) + 2  # not one call per read


async def test_bytes_held_back_from_acknowledgement_return_the_connection_window(nursery: trio.Nursery) -> None:
    # Each stream's few bytes are read in full (below the acknowledgement batch) and the stream just ends,
    # never closed by its reader: forty of them exceed the connection window, so bytes held back and never
    # told to h2 would stall the tunnel.
    config = TunnelConfig(stream_window=65_535, connection_window=65_535 * 2, max_concurrent_streams=2)

    async def handler(stream: TunnelStream) -> None:
        await stream.accept()
        await stream.send_all(b"x" * 4000)
        await read_all(stream)  # the end goes out after the client's end
        await stream.send_eof()

    pair = await memory_pair(nursery, handler, config)
    with trio.fail_after(10):
        for index in range(80):
            stream = await pair.client.open_stream([], authority="c")
            if index % 2:  # the bytes are read before the stream's end arrives, or with it
                assert len(await stream.receive_some(4000)) == 4000
            await stream.send_eof()
            assert len(await read_all(stream)) == (0 if index % 2 else 4000)
            await wait_until(lambda: pair.client.statistics()["open_streams"] == 0)


async def test_stream_limit(nursery: trio.Nursery) -> None:
    config = TunnelConfig(stream_window=65_535, connection_window=65_535 * 2, max_concurrent_streams=2)
    pair = await memory_pair(nursery, config=config)
    first = await pair.client.open_stream([], authority="c")
    await pair.client.open_stream([], authority="c")
    with pytest.raises(LimitExceeded, match="2 concurrent streams"):
        await pair.client.open_stream([], authority="c")
    await first.aclose()
    await wait_until(lambda: pair.server.statistics()["open_streams"] == 1)
    third = await pair.client.open_stream([], authority="c")
    assert await echo_round_trip(third, b"ok") == b"ok"


def test_config_keeps_the_connection_window_above_all_stream_windows() -> None:
    with pytest.raises(BadParameter, match="cover every stream"):
        TunnelConfig(stream_window=4 * MiB, connection_window=16 * MiB)
    with pytest.raises(BadParameter, match="max_frame_size"):
        TunnelConfig(max_frame_size=1000)
    assert TunnelConfig().stream_window * TunnelConfig().max_concurrent_streams <= TunnelConfig().connection_window


async def test_sides_are_checked(nursery: trio.Nursery) -> None:
    pair = await memory_pair(nursery)
    with pytest.raises(BadParameter, match="only the client"):
        await pair.server.open_stream([], authority="c")
    left, _right = trio.testing.memory_stream_pair()
    with pytest.raises(BadParameter, match="stream handler"):
        await H2Tunnel(left, side="server").run()


# -- drain and liveness ---------------------------------------------------------------------------------------------


async def test_server_drain_refuses_new_streams_and_lets_old_ones_finish(nursery: trio.Nursery) -> None:
    pair = await memory_pair(nursery)
    old = await pair.client.open_stream([], authority="c")
    pair.server.start_drain()
    await wait_until(lambda: not pair.client.live)
    with pytest.raises(ConnectionProblem, match="draining"):
        await pair.client.open_stream([], authority="c")
    assert await echo_round_trip(old, b"finishing") == b"finishing"
    await old.aclose()
    with trio.fail_after(10):
        await pair.server.wait_closed()
        await pair.client.wait_closed()
    assert pair.server.closed and pair.client.closed


async def test_client_drain_sends_goaway_after_the_last_stream(nursery: trio.Nursery) -> None:
    pair = await memory_pair(nursery)
    old = await pair.client.open_stream([], authority="c")
    pair.client.start_drain()
    assert not pair.client.live
    with pytest.raises(ConnectionProblem, match="draining"):
        await pair.client.open_stream([], authority="c")
    assert not pair.server.closed
    assert await echo_round_trip(old, b"done") == b"done"
    await old.aclose()
    with trio.fail_after(10):
        await pair.server.wait_closed()  # it got the GOAWAY


async def test_run_returns_normally_after_a_graceful_drain() -> None:
    left, right = trio.testing.memory_stream_pair()
    client, server = H2Tunnel(left, side="client"), H2Tunnel(right, side="server")
    results: list[str] = []

    async def run(tunnel: H2Tunnel, *args: object) -> None:
        await tunnel.run(*args)  # type: ignore[arg-type]
        results.append(tunnel.side)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, server, accept_and_echo)
        nursery.start_soon(run, client)
        await client.wait_ready()
        await server.drain()
    assert sorted(results) == ["client", "server"]


async def test_ping_timeout_closes_a_dead_connection(autojump_clock: trio.abc.Clock) -> None:
    left, right = trio.testing.memory_stream_pair()
    tunnel = H2Tunnel(left, side="client", config=TunnelConfig(ping_interval=15, ping_misses=2))

    async def black_hole() -> None:  # reads everything, answers nothing
        while await right.receive_some():
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(black_hole)
        start = trio.current_time()
        with pytest.raises(ConnectionProblem, match="answered no PING for 30 s"):
            await tunnel.run()
        assert trio.current_time() - start == pytest.approx(45)
        nursery.cancel_scope.cancel()
    assert tunnel.statistics()["pings_sent_total"] == 2


async def test_pings_keep_a_quiet_live_connection_up(autojump_clock: trio.abc.Clock, nursery: trio.Nursery) -> None:
    pair = await memory_pair(nursery, config=TunnelConfig(ping_interval=15, ping_misses=2))
    stream = await pair.client.open_stream([], authority="c")
    await trio.sleep(600)  # ten quiet minutes
    assert pair.client.live and pair.server.live
    assert pair.client.statistics()["pings_sent_total"] >= 39
    assert await echo_round_trip(stream, b"still up") == b"still up"


async def test_a_dropped_transport_breaks_every_stream(nursery: trio.Nursery) -> None:
    left, right = trio.testing.memory_stream_pair()
    client, server = H2Tunnel(left, side="client"), H2Tunnel(right, side="server")
    problems: list[ConnectionProblem] = []

    async def run(tunnel: H2Tunnel, *args: object) -> None:
        try:
            await tunnel.run(*args)  # type: ignore[arg-type]
        except ConnectionProblem as exc:
            problems.append(exc)

    nursery.start_soon(run, server, accept_and_echo)
    nursery.start_soon(run, client)
    await client.wait_ready()
    streams = [await client.open_stream([], authority="c") for _ in range(3)]
    await trio.aclose_forcefully(right)
    for stream in streams:
        with pytest.raises(trio.BrokenResourceError):
            await read_all(stream)
    await client.wait_closed()
    await wait_until(lambda: len(problems) == 2)
    assert {problem.message for problem in problems} == {
        "tunnel connection broke: ClosedResourceError",  # the side whose transport was closed
        "tunnel peer closed the connection without GOAWAY",
    }


# -- hostile peers --------------------------------------------------------------------------------------------------


async def _server_with_raw_client(nursery: trio.Nursery) -> tuple[H2Tunnel, RawPeer, list[ConnectionProblem]]:
    left, right = trio.testing.memory_stream_pair()
    server = H2Tunnel(right, side="server")
    problems: list[ConnectionProblem] = []

    async def run() -> None:
        try:
            await server.run(accept_and_echo)
        except ConnectionProblem as exc:
            problems.append(exc)

    nursery.start_soon(run)
    return server, RawPeer(left), problems


CONNECT = [
    (b":method", b"CONNECT"),
    (b":protocol", PROTOCOL),
    (b":scheme", b"https"),
    (b":path", b"/"),
    (b":authority", b"c"),
]


async def test_garbage_instead_of_http2_ends_only_that_connection(nursery: trio.Nursery) -> None:
    server, peer, problems = await _server_with_raw_client(nursery)
    await peer.send(raw=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(2000))
    goaway = await peer.frame_of(hyperframe.frame.GoAwayFrame)
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    await server.wait_closed()
    await wait_until(lambda: bool(problems))
    assert "broke HTTP/2" in problems[0].message
    assert await peer.next_frame() is None  # and the connection is closed


async def test_a_connect_without_protocol_is_refused_and_the_connection_stays(nursery: trio.Nursery) -> None:
    server, peer, problems = await _server_with_raw_client(nursery)
    await peer.client_preface()
    plain_connect = [(b":method", b"CONNECT"), (b":authority", b"example:443")]
    await peer.send(peer.headers(1, plain_connect))
    response = await peer.frame_of(hyperframe.frame.HeadersFrame, 1)
    assert response is not None
    headers = dict(response.decoded)  # type: ignore[attr-defined]
    assert headers[b":status"] == b"400"
    assert b"kubeport-http1" in headers[ERROR_HEADER]
    get = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"c")]
    await peer.send(peer.headers(3, get, end_stream=True))
    response = await peer.frame_of(hyperframe.frame.HeadersFrame, 3)
    assert response is not None and dict(response.decoded)[b":status"] == b"400"  # type: ignore[attr-defined]
    # the same connection still serves a proper tunnel stream
    await peer.send(peer.headers(5, CONNECT))
    response = await peer.frame_of(hyperframe.frame.HeadersFrame, 5)
    assert response is not None and dict(response.decoded)[b":status"] == b"200"  # type: ignore[attr-defined]
    data = hyperframe.frame.DataFrame(5, b"ping")
    await peer.send(data)
    echoed = await peer.frame_of(hyperframe.frame.DataFrame, 5)
    assert echoed is not None and echoed.data == b"ping"
    assert not problems and not server.closed
    assert server.statistics()["streams_refused_total"] == 2


async def test_an_oversized_header_block_ends_the_connection_cleanly(nursery: trio.Nursery) -> None:
    server, peer, problems = await _server_with_raw_client(nursery)
    await peer.client_preface()
    huge = [*CONNECT, (b"kubeport-roles", b"r" * (80 * 1024))]
    frame = peer.headers(1, huge)
    # a header block larger than one frame must be split into HEADERS + CONTINUATION frames
    block = frame.data
    first = hyperframe.frame.HeadersFrame(1, block[:16_000])
    rest = [
        hyperframe.frame.ContinuationFrame(1, block[start : start + 16_000])
        for start in range(16_000, len(block), 16_000)
    ]
    rest[-1].flags.add("END_HEADERS")
    await peer.send(first, *rest)
    goaway = await peer.frame_of(hyperframe.frame.GoAwayFrame)
    assert goaway is not None and goaway.error_code != h2.errors.ErrorCodes.NO_ERROR
    await server.wait_closed()
    await wait_until(lambda: bool(problems))
    assert "HTTP/2" in problems[0].message


async def test_reusing_a_stream_id_ends_the_connection_cleanly(nursery: trio.Nursery) -> None:
    server, peer, problems = await _server_with_raw_client(nursery)
    await peer.client_preface()
    await peer.send(peer.headers(3, CONNECT))
    assert await peer.frame_of(hyperframe.frame.HeadersFrame, 3) is not None
    await peer.send(peer.headers(1, CONNECT))  # lower than one already used: never valid
    goaway = await peer.frame_of(hyperframe.frame.GoAwayFrame)
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    await server.wait_closed()
    await wait_until(lambda: bool(problems))


async def test_headers_again_on_an_ended_stream_end_the_connection(nursery: trio.Nursery) -> None:
    server, peer, problems = await _server_with_raw_client(nursery)
    await peer.client_preface()
    await peer.send(peer.headers(1, CONNECT))
    assert await peer.frame_of(hyperframe.frame.HeadersFrame, 1) is not None
    end = hyperframe.frame.DataFrame(1, b"")
    end.flags.add("END_STREAM")
    await peer.send(end)
    ended = await peer.frame_of(hyperframe.frame.DataFrame, 1)  # the echo handler half-closes back
    assert ended is not None and "END_STREAM" in ended.flags
    await peer.send(peer.headers(1, CONNECT))  # the same id again
    goaway = await peer.frame_of(hyperframe.frame.GoAwayFrame)
    assert goaway is not None and goaway.error_code != h2.errors.ErrorCodes.NO_ERROR
    await server.wait_closed()
    await wait_until(lambda: bool(problems))


async def test_a_peer_that_overruns_the_window_is_disconnected(nursery: trio.Nursery) -> None:
    _server, peer, problems = await _server_with_raw_client(nursery)
    await peer.client_preface()
    await peer.send(peer.headers(1, CONNECT))
    assert await peer.frame_of(hyperframe.frame.HeadersFrame, 1) is not None
    # The handler echoes, but we never grant the server any window back... and send far beyond ours.
    chunk = b"x" * 16_384
    frames = [hyperframe.frame.DataFrame(1, chunk) for _ in range(TunnelConfig().stream_window // len(chunk) + 8)]
    await peer.send(*frames)
    goaway = await peer.frame_of(hyperframe.frame.GoAwayFrame)
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
    await wait_until(lambda: bool(problems))


async def test_a_hostile_agent_cannot_hurt_the_client_side(nursery: trio.Nursery) -> None:
    left, right = trio.testing.memory_stream_pair()
    client = H2Tunnel(left, side="client")
    problems: list[ConnectionProblem] = []

    async def run() -> None:
        try:
            await client.run()
        except ConnectionProblem as exc:
            problems.append(exc)

    nursery.start_soon(run)
    peer = RawPeer(right)
    await peer.server_preface()
    await client.wait_ready()
    opened = nursery.start_soon  # keep the opener in the test's tree: its failure must be a clean error
    outcome: list[BaseException] = []

    async def open_one() -> None:
        try:
            await client.open_stream([], authority="c")
        except ConnectionProblem as exc:
            outcome.append(exc)

    opened(open_one)
    await peer.skip_preface()
    assert await peer.frame_of(hyperframe.frame.HeadersFrame, 1) is not None
    # A SETTINGS frame of 5 bytes (settings are 6 bytes each). (h2 buffers a frame's announced length, up to
    # 16 MiB, before it checks the size, so garbage announcing a huge frame is caught by PING instead.)
    await peer.send(raw=b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + os.urandom(5))
    await client.wait_closed()
    await wait_until(lambda: bool(problems) and bool(outcome))
    assert "was not opened" in str(outcome[0])


async def test_a_refusal_carries_its_reason(nursery: trio.Nursery) -> None:
    async def handler(stream: TunnelStream) -> None:
        await stream.refuse(400, "tunnel header kubeport-user is repeated\r\nX-Evil: 1")

    pair = await memory_pair(nursery, handler)
    with pytest.raises(ConnectionProblem, match=r"HTTP 400: tunnel header kubeport-user is repeated\?\?X-Evil: 1"):
        await pair.client.open_stream([], authority="c")
    assert pair.client.live
    assert pair.server.statistics()["streams_refused_total"] == 1


async def test_a_handler_that_never_answers_gets_a_500(nursery: trio.Nursery) -> None:
    async def handler(stream: TunnelStream) -> None:
        return

    pair = await memory_pair(nursery, handler)
    with pytest.raises(ConnectionProblem, match="HTTP 500"):
        await pair.client.open_stream([], authority="c")


@pytest.mark.parametrize(
    ("data", "padding"),
    [(b"", 0), (b"abc", 0), (b"0123456789", 0), (b"0123456789a", 0), (os.urandom(64 * 1024), 0), (b"ab", 5)],
)
def test_a_data_frame_repr_reads_the_same_from_its_first_bytes(data: bytes, padding: int) -> None:
    # h2 builds repr(frame) for every frame it receives; the tunnel's replacement must say exactly what
    # hyperframe's own does, without hex-encoding the whole body.
    frame = hyperframe.frame.DataFrame(1, data)
    if padding:
        frame.flags.add("PADDED")
        frame.pad_length = padding
    expected = f"DataFrame(stream_id=1, flags={frame.flags!r}): " + hyperframe.frame._raw_data_repr(
        frame.serialize_body()
    )
    assert repr(frame) == expected


def test_a_data_frame_repr_never_serializes_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    def whole_body(self: hyperframe.frame.DataFrame) -> bytes:
        raise AssertionError("repr(DataFrame) copied the whole body")

    monkeypatch.setattr(hyperframe.frame.DataFrame, "serialize_body", whole_body)
    assert repr(hyperframe.frame.DataFrame(3, b"x" * MiB)).endswith("<hex:78787878787878787878...>")


class _WriterSteps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._write_loop"):
            self.steps += 1


async def test_a_send_on_an_idle_tunnel_goes_out_without_waking_the_writer(
    nursery: trio.Nursery, make_pair: MakePair
) -> None:
    # Each send_all used to wake the writer task and wait to be woken back: two task switches per frame on
    # the request path. A stream finding the transport free writes itself; the echo still arrives whole.
    pair = await make_pair(nursery)
    stream = await pair.client.open_stream([], authority="agent")
    counter = _WriterSteps()
    trio.lowlevel.add_instrument(counter)
    try:
        for i in range(20):
            message = f"request {i}".encode()
            await stream.send_all(message)
            with trio.fail_after(10):
                assert await stream.receive_some() == message
    finally:
        trio.lowlevel.remove_instrument(counter)
    # The server side's echo goes through TunnelStream.send_all too; only window updates may need the writer.
    assert counter.steps <= 4


async def test_a_send_stuck_on_a_peer_that_stopped_reading_ends_with_the_tunnel(nursery: trio.Nursery) -> None:
    # A stream writing the transport itself is shielded from cancellation (a half-written TLS record would
    # break every stream), so it must be freed when the tunnel ends, e.g. after unanswered PINGs.
    left, right = trio.testing.lockstep_stream_pair()  # a send waits until the peer reads it
    client = H2Tunnel(left, side="client")
    problems: list[ConnectionProblem] = []

    async def run() -> None:
        try:
            await client.run()
        except ConnectionProblem as exc:
            problems.append(exc)

    nursery.start_soon(run)
    peer = RawPeer(right)
    stream = await open_via_raw_peer(nursery, client, peer)
    failed: list[BaseException] = []

    async def send_big() -> None:
        with trio.CancelScope() as scope:
            sending.append(scope)
            try:
                await stream.send_all(b"x" * 60_000)  # within the 65,535 window; the peer never reads it
            except trio.BrokenResourceError as exc:
                failed.append(exc)

    sending: list[trio.CancelScope] = []
    nursery.start_soon(send_big)
    await trio.testing.wait_all_tasks_blocked()
    sending[0].cancel()  # shielded: the write goes on ...
    await trio.testing.wait_all_tasks_blocked()
    assert not failed
    client.abort("the agent answered no PING")  # ... until the tunnel ends
    with trio.fail_after(5):
        await wait_until(lambda: bool(failed))
    assert problems and "PING" in problems[0].message
