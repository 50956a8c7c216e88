"""The agent's HTTP/2 client core (agent/forward/h2_core.py) against python-hyper's own h2 server state machine,
byte for byte, no I/O: stream mapping, end-to-end flow control (a stalled watch never stalls another),
the server's stream limit, GOAWAY, RST_STREAM both ways, and a hostile server (bad frames, oversized
headers, DATA beyond the window, a push)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from h2.errors import ErrorCodes

from agent.forward.h2_core import H2ClientCore, H2Stream

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"kube"),
    (b":path", b"/api/v1/pods?watch=true"),
]


class Server:
    """An h2 server state machine wired to a core (what the fake API runs, minus sockets)."""

    def __init__(self, core: H2ClientCore, *, max_streams: int | None = None) -> None:
        self.core = core
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        if max_streams is not None:
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> set[H2Stream]:
        """Move bytes both ways until both sides have nothing more to send; the core's touched streams."""
        touched: set[H2Stream] = set()
        for _ in range(100):
            to_server = self.core.data_to_send()
            if to_server:
                self.events += self.h2.receive_data(to_server)
            to_client = self.h2.data_to_send()
            if to_client:
                touched |= self.core.receive(to_client)
            if not to_server and not to_client:
                return touched
        raise AssertionError("the two sides never settled")

    def answer(self, stream_id: int, status: bytes = b"200", extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b":status", status), (b"content-type", b"application/json"), *(extra or [])]
        self.h2.send_headers(stream_id, headers)

    def room(self, stream_id: int) -> int:
        return self.h2.local_flow_control_window(stream_id)


def opened(core: H2ClientCore, server: Server) -> H2Stream:
    stream = core.open(list(REQUEST))
    server.pump()
    return stream


def test_streams_map_to_their_answers() -> None:
    core = H2ClientCore()
    server = Server(core)
    assert core.can_open()
    a, b = opened(core, server), opened(core, server)
    received = [e for e in server.events if isinstance(e, h2.events.RequestReceived)]
    assert [e.stream_id for e in received] == [a.stream_id, b.stream_id]
    assert dict(received[0].headers or [])[b":path"] == b"/api/v1/pods?watch=true"
    server.answer(b.stream_id, extra=[(b"x-b", b"1")])
    server.h2.send_data(b.stream_id, b'{"type":"ADDED"}\n')
    server.answer(a.stream_id, status=b"403")
    server.h2.send_data(a.stream_id, b"denied", end_stream=True)
    touched = server.pump()
    assert touched == {a, b}
    assert (a.status, b.status) == (403, 200)
    assert (b"x-b", b"1") in b.headers and all(not n.startswith(b":") for n, _ in b.headers)
    assert core.take(b) == [b'{"type":"ADDED"}\n'] and not b.ended
    assert core.take(a) == [b"denied"] and a.ended and a.error is None


def test_a_stalled_watch_does_not_stall_another_on_the_same_connection() -> None:
    core = H2ClientCore(stream_window=16 * 1024, max_streams=4)
    server = Server(core)
    slow, fast = opened(core, server), opened(core, server)
    for stream in (slow, fast):
        server.answer(stream.stream_id)
    server.pump()
    # The slow watch's kubectl reads nothing: its window fills and the server must stop sending to it...
    server.h2.send_data(slow.stream_id, b"s" * server.room(slow.stream_id))
    server.pump()
    assert server.room(slow.stream_id) == 0
    # ...while the other watch goes on, many windows' worth, as its bytes are written onward.
    moved = 0
    for _ in range(20):
        size = server.room(fast.stream_id)
        assert size > 0
        server.h2.send_data(fast.stream_id, b"f" * min(size, 16_384))
        server.pump()
        pieces = core.take(fast)
        got = sum(len(p) for p in pieces)
        moved += got
        core.consumed(fast, got)
        server.pump()
    assert moved > 100 * 1024
    assert server.room(slow.stream_id) == 0  # still stalled: nothing was acknowledged for it
    # The slow reader catches up: only then does its window open again.
    core.consumed(slow, sum(len(p) for p in core.take(slow)))
    server.pump()
    assert server.room(slow.stream_id) > 0


def test_the_servers_stream_limit_is_respected() -> None:
    core = H2ClientCore(max_streams=100)
    server = Server(core, max_streams=2)
    opened(core, server)
    second = opened(core, server)
    assert not core.can_open()  # the pool opens another connection for the next watch
    with pytest.raises(Exception, match="no more streams"):
        core.open(list(REQUEST))
    core.cancel(second)
    server.pump()
    assert core.can_open()


def test_our_own_cap_applies_when_the_server_allows_more() -> None:
    core = H2ClientCore(max_streams=1)
    server = Server(core, max_streams=1000)
    opened(core, server)
    assert not core.can_open()


def test_goaway_ends_the_streams_the_server_did_not_process_and_refuses_new_ones() -> None:
    core = H2ClientCore()
    server = Server(core)
    kept, dropped = opened(core, server), opened(core, server)
    server.answer(kept.stream_id)
    server.h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=kept.stream_id)
    touched = server.pump()
    assert dropped in touched and dropped.error is not None and "GOAWAY" in dropped.error
    assert kept.error is None  # a graceful GOAWAY lets a processed stream finish
    assert not core.accepting and not core.can_open()


def test_goaway_with_an_error_ends_every_stream() -> None:
    core = H2ClientCore()
    server = Server(core)
    stream = opened(core, server)
    server.answer(stream.stream_id)
    server.h2.close_connection(ErrorCodes.INTERNAL_ERROR, last_stream_id=stream.stream_id)
    server.pump()
    assert stream.error is not None and "INTERNAL_ERROR" in stream.error


def test_a_reset_from_the_server_ends_only_that_stream() -> None:
    core = H2ClientCore()
    server = Server(core)
    a, b = opened(core, server), opened(core, server)
    server.answer(a.stream_id)
    server.answer(b.stream_id)
    server.h2.reset_stream(a.stream_id, ErrorCodes.INTERNAL_ERROR)
    server.pump()
    assert a.error is not None and "reset" in a.error
    assert b.error is None and core.accepting


def test_cancel_resets_the_stream_and_gives_its_bytes_back_to_the_connection() -> None:
    core = H2ClientCore(stream_window=16 * 1024, max_streams=2)
    server = Server(core)
    gone = opened(core, server)
    server.answer(gone.stream_id)
    server.h2.send_data(gone.stream_id, b"x" * 16 * 1024)
    server.pump()
    connection_room = server.room(gone.stream_id)  # min(stream, connection): the stream's is 0
    assert connection_room == 0
    before = server.h2.outbound_flow_control_window
    core.cancel(gone)
    server.pump()
    resets = [e for e in server.events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(gone.stream_id, ErrorCodes.CANCEL)]
    assert server.h2.outbound_flow_control_window >= before  # nothing leaked from the connection window
    # DATA the server had in flight for the reset stream is taken and given back, not delivered.
    assert gone.stream_id not in core.streams


def test_data_beyond_the_granted_window_breaks_the_connection() -> None:
    core = H2ClientCore(stream_window=1024, max_streams=1)
    server = Server(core)
    stream = opened(core, server)
    server.answer(stream.stream_id)
    server.pump()
    # A hostile server ignores flow control: forge a DATA frame bigger than the window.
    flood = _frame(0x0, 0x0, stream.stream_id, b"z" * 4096)
    touched = core.receive(flood)
    assert stream in touched and stream.error is not None
    assert core.broken is not None and "FlowControlError" in core.broken
    assert b"z" not in core.broken.encode()
    assert not core.can_open()
    assert core.data_to_send()  # the GOAWAY


def test_garbage_breaks_the_connection_without_quoting_it() -> None:
    core = H2ClientCore()
    server = Server(core)
    stream = opened(core, server)
    touched = core.receive(b"\x00\x00\x04\x09\x00\x00\x00\x00\x01secret-ish")  # CONTINUATION out of nowhere
    assert stream in touched and core.broken is not None
    assert "secret" not in core.broken


def test_an_oversized_header_list_breaks_the_connection() -> None:
    core = H2ClientCore(max_header_list=8 * 1024)
    server = Server(core)
    stream = opened(core, server)
    encoder = hpack.Encoder()
    block = encoder.encode([(b":status", b"200"), (b"x-big", b"v" * 64 * 1024)])
    # HEADERS (END_HEADERS) carried in frames of at most 16 KiB: HEADERS then CONTINUATIONs.
    chunks = [block[i : i + 16_000] for i in range(0, len(block), 16_000)]
    frames = _frame(0x1, 0x4 if len(chunks) == 1 else 0x0, stream.stream_id, chunks[0])
    for i, chunk in enumerate(chunks[1:], 1):
        frames += _frame(0x9, 0x4 if i == len(chunks) - 1 else 0x0, stream.stream_id, chunk)
    core.receive(frames)
    assert stream.error is not None and stream.status is None
    assert core.broken is not None


def test_a_push_promise_breaks_the_connection() -> None:
    core = H2ClientCore()
    server = Server(core)
    stream = opened(core, server)
    encoder = hpack.Encoder()
    block = encoder.encode(REQUEST)
    push = _frame(0x5, 0x4, stream.stream_id, (2).to_bytes(4, "big") + block)
    core.receive(push)
    assert core.broken is not None and stream.error is not None


def test_an_answer_without_a_status_is_an_error() -> None:
    core = H2ClientCore()
    server = Server(core)
    stream = opened(core, server)
    encoder = hpack.Encoder()
    block = encoder.encode([(b"content-type", b"x")])
    core.receive(_frame(0x1, 0x4, stream.stream_id, block))
    assert stream.status is None and stream.error is not None


def test_connection_lost_ends_every_open_stream() -> None:
    core = H2ClientCore()
    server = Server(core)
    a, b = opened(core, server), opened(core, server)
    assert core.connection_lost("the connection broke") == {a, b}
    assert a.error == b.error == "the connection broke"
    assert not core.can_open()


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def test_has_output_follows_what_h2_queued() -> None:
    core = H2ClientCore()
    assert core.has_output()  # the preface and our SETTINGS
    server = Server(core)
    assert not core.has_output()
    stream = opened(core, server)
    server.answer(stream.stream_id)
    server.h2.send_data(stream.stream_id, b"x" * 100)
    server.pump()
    core.consumed(stream, len(b"".join(core.take(stream))))
    assert not core.has_output()  # a small acknowledgement queues no WINDOW_UPDATE yet
    core.cancel(stream)
    assert core.has_output()  # the RST_STREAM
