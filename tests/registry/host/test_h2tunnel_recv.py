"""The tunnel's hand-parsed inbound DATA frames (h2tunnel._receive) against h2's own receive_data.

Two receiving connections are set up identically (server side: a peer's CONNECT-like requests; client side:
our requests and the peer's answers), with streams in every state the fast path must tell apart: open,
with a content-length to track, ended by the peer, reset by us, never opened, not answered yet. Then the
same seeded random byte sequence (DATA frames with and without padding, END_STREAM, unknown flags, the
reserved stream id bit, oversized, on stream 0 or unknown streams, beyond the windows; WINDOW_UPDATE, PING,
RST_STREAM, header blocks split by CONTINUATION with DATA in between, garbage), cut into random reads, goes
to one through ``receive_data`` and to the other through ``_receive``: after every read both give the same
events, the same error (type, message, code), the same windows, stream states and received lengths, and
the same bytes to send.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hyperframe.frame
import pytest

from registry.host import h2tunnel
from tests.internals import verified

REQUEST = [(b":method", b"CONNECT"), (b":protocol", b"kubeport-http1"), (b":scheme", b"https"), (b":path", b"/")]
OPEN_STREAMS = (1, 3, 5, 7, 9)  # 5: declares a content-length; 7: ended by the peer; 9: reset by us; 11: below


def _connections(receiver_side: str) -> tuple[list[h2.connection.H2Connection], h2.connection.H2Connection]:
    client = receiver_side == "client"
    receivers = [
        h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
        for _ in range(2)
    ]
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=not client, header_encoding=None))
    peer.initiate_connection()
    for receiver in receivers:
        receiver.initiate_connection()
    peer.receive_data(_same(receivers))
    wire = peer.data_to_send()
    for receiver in receivers:
        receiver.receive_data(wire)
    peer.receive_data(_same(receivers))  # SETTINGS ACK
    for stream_id in OPEN_STREAMS:
        length = [(b"content-length", b"40")] if stream_id == 5 else []
        if client:
            for receiver in receivers:
                receiver.send_headers(stream_id, [*REQUEST, (b":authority", b"a")])
            peer.receive_data(_same(receivers))
            peer.send_headers(stream_id, [(b":status", b"200"), *length], end_stream=stream_id == 7)
        else:
            peer.send_headers(stream_id, [*REQUEST, (b":authority", b"a"), *length], end_stream=stream_id == 7)
    if client:  # 11: our request, not answered yet (DATA before the answer's headers is h2's error)
        for receiver in receivers:
            receiver.send_headers(11, [*REQUEST, (b":authority", b"a")])
        peer.receive_data(_same(receivers))
    wire = peer.data_to_send()
    for receiver in receivers:
        receiver.receive_data(wire)
        receiver.reset_stream(9)
    _same(receivers)
    return receivers, peer


def _same(receivers: list[h2.connection.H2Connection]) -> bytes:
    out = [receiver.data_to_send() for receiver in receivers]
    assert out[0] == out[1]
    return out[0]


def _data(stream_id: int, payload: bytes, flags: tuple[str, ...] = (), pad: int = 0) -> bytes:
    """A DATA frame's bytes, built by hand (hyperframe refuses to build one for stream 0)."""
    bits = (0x1 if "END_STREAM" in flags else 0) | (0x8 if pad else 0)
    body = (bytes([pad - 1]) + payload + b"\0" * (pad - 1)) if pad else payload
    return len(body).to_bytes(3, "big") + bytes([0, bits]) + stream_id.to_bytes(4, "big") + body


def _random_frames(rng: random.Random, peer: h2.connection.H2Connection, count: int) -> bytes:
    out = bytearray()
    for _ in range(count):
        roll = rng.random()
        stream_id = rng.choice((1, 1, 1, 3, 3, 5, 7, 9, 11, 0, 2))
        if roll < 0.55:  # mostly plain DATA: the fast path
            out += _data(stream_id if rng.random() < 0.3 else rng.choice((1, 3)), rng.randbytes(rng.randrange(0, 3000)))
        elif roll < 0.65:
            flags = rng.choice((("END_STREAM",), (), ("END_STREAM",)))
            out += _data(stream_id, rng.randbytes(rng.randrange(0, 200)), flags, pad=rng.randrange(0, 40))
        elif roll < 0.68:  # an unknown flag bit (0x2): h2 ignores it, the fast path leaves it to h2
            raw = bytearray(_data(stream_id, rng.randbytes(rng.randrange(0, 100))))
            raw[4] |= 0x2
            out += raw
        elif roll < 0.695:  # the reserved bit of the stream id set: ignored by h2 and by the fast path
            raw = bytearray(_data(rng.choice((1, 3)), rng.randbytes(rng.randrange(0, 100))))
            raw[5] |= 0x80
            out += raw
        elif roll < 0.71:  # longer than the 16 KiB frame limit
            out += _data(1, rng.randbytes(16_385))
        elif roll < 0.73:  # big frames: the windows run out unless acknowledged
            out += _data(rng.choice((1, 3)), rng.randbytes(16_384))
        elif roll < 0.78:
            out += hyperframe.frame.WindowUpdateFrame(
                rng.choice((0, 1, 3)), window_increment=rng.randrange(1, 70_000)
            ).serialize()
        elif roll < 0.82:
            out += hyperframe.frame.PingFrame(0, opaque_data=rng.randbytes(8)).serialize()
        elif roll < 0.84:
            out += hyperframe.frame.RstStreamFrame(rng.choice((1, 3)), error_code=8).serialize()
        elif roll < 0.88:  # a header block split by CONTINUATION, sometimes with DATA in between
            block = peer.encoder.encode([(b"x-trailer", b"t")])
            out += hyperframe.frame.HeadersFrame(stream_id or 1, data=block[:1], flags=()).serialize()
            if rng.random() < 0.5:
                out += _data(stream_id or 1, b"inside a header block")
            out += hyperframe.frame.ContinuationFrame(
                stream_id or 1, data=block[1:], flags=("END_HEADERS",)
            ).serialize()
        elif roll < 0.90:  # a frame header whose length lies
            out += (rng.randrange(0, 2**24)).to_bytes(3, "big") + b"\0\0" + stream_id.to_bytes(4, "big")
        elif roll < 0.92:
            out += rng.randbytes(rng.randrange(1, 30))
        else:
            out += _data(1, b"", ())
    return bytes(out)


def _benign_frames(rng: random.Random, count: int) -> bytes:
    """A well-behaved peer: DATA on open streams (some padded, a few big), WINDOW_UPDATE and PING; long
    runs of frames the fast path takes, cut across reads, until a window runs out (h2's error)."""
    out = bytearray()
    for _ in range(count):
        roll = rng.random()
        stream_id = rng.choice((1, 3))
        if roll < 0.75:
            out += _data(stream_id, rng.randbytes(rng.choice((0, 1, 300, 700, 5000))))
        elif roll < 0.82:
            out += _data(stream_id, rng.randbytes(rng.randrange(0, 300)), pad=rng.randrange(1, 30))
        elif roll < 0.86:
            out += _data(stream_id, rng.randbytes(16_384))
        elif roll < 0.93:
            out += hyperframe.frame.WindowUpdateFrame(0, window_increment=rng.randrange(1, 70_000)).serialize()
        else:
            out += hyperframe.frame.PingFrame(0, opaque_data=rng.randbytes(8)).serialize()
    return bytes(out)


def _event(event: h2.events.Event) -> tuple[Any, ...]:
    data, flow = getattr(event, "data", None), getattr(event, "flow_controlled_length", None)
    return (type(event).__name__, getattr(event, "stream_id", None), repr(event), data, flow)


def _state(conn: h2.connection.H2Connection) -> tuple[Any, ...]:
    streams = tuple(
        (
            stream_id,
            stream.state_machine.state,
            stream._inbound_window_manager.current_window_size,
            stream._actual_content_length,
        )
        for stream_id, stream in sorted(conn.streams.items())
    )
    return (
        conn.state_machine.state,
        conn._inbound_flow_control_window_manager.current_window_size,
        streams,
        bytes(conn.incoming_buffer._data),
        conn.data_to_send(),
    )


def _feed(conn: h2.connection.H2Connection, data: bytes, fast: bool) -> tuple[Any, ...]:
    try:
        events = h2tunnel._receive(conn, data) if fast else conn.receive_data(data)
    except h2.exceptions.H2Error as exc:
        return ("error", type(exc).__name__, str(exc), getattr(exc, "error_code", None))
    return ("events", [_event(e) for e in events])


def _acknowledge(conn: h2.connection.H2Connection, outcome: tuple[Any, ...], rng: random.Random) -> None:
    """The receiver gives some windows back, the same way on both connections (decided by ``rng``)."""
    for name, stream_id, _, _, flow in outcome[1]:
        if name == "DataReceived" and flow and rng.random() < 0.7:
            with contextlib.suppress(h2.exceptions.H2Error):
                conn.acknowledge_received_data(flow, stream_id)


def test_the_fast_path_is_live_on_the_h2_it_was_checked_against() -> None:
    assert h2tunnel._FAST_RECV or not verified("h2")  # another h2: its own receive_data (tests/internals.py)


@pytest.mark.parametrize("peer_kind", ["hostile", "benign"])
@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("seed", range(40))
def test_received_frames_are_what_h2_makes_of_them(peer_kind: str, side: str, seed: int) -> None:
    rng = random.Random(seed * 4 + (side == "client") * 2 + (peer_kind == "benign"))
    (plain, fast), peer = _connections(side)
    if peer_kind == "hostile":
        wire = _random_frames(rng, peer, rng.randrange(5, 60))
    else:
        wire = _benign_frames(rng, rng.randrange(20, 200))
    position = 0
    while position < len(wire):
        size = rng.choice((9, 50, 1000, 5000, len(wire))) if rng.random() < 0.7 else rng.randrange(1, 20_000)
        piece = wire[position : position + size]
        position += size
        expected, got = _feed(plain, piece, fast=False), _feed(fast, piece, fast=True)
        assert got == expected
        assert _state(fast) == _state(plain)
        if expected[0] == "error":
            return
        ack = rng.getstate()
        _acknowledge(plain, expected, rng)
        rng.setstate(ack)
        _acknowledge(fast, got, rng)
        assert _state(fast) == _state(plain)


def test_plain_data_frames_skip_h2_and_charge_both_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    (plain, fast), _peer = _connections("server")
    wire = _data(1, b"a" * 100) + _data(3, b"b" * 50) + _data(1, b"")
    calls: list[int] = []
    original = h2.connection.H2Connection.receive_data

    def counting(self: h2.connection.H2Connection, data: bytes) -> list[h2.events.Event]:
        calls.append(len(data))
        return original(self, data)

    expected = plain.receive_data(wire)
    monkeypatch.setattr(h2.connection.H2Connection, "receive_data", counting)
    got = h2tunnel._receive(fast, wire)
    assert calls == []  # all three frames parsed by the tunnel
    assert [_event(e) for e in got] == [_event(e) for e in expected]
    assert _state(fast) == _state(plain)
    # a window violation is h2's: the same FlowControlError, and the frames before it are h2's too
    too_big = b"".join(_data(1, b"z" * 16_384) for _ in range(5))
    outcome = _feed(fast, too_big, fast=True)
    assert outcome == _feed(plain, too_big, fast=False)
    assert outcome[:2] == ("error", "FlowControlError")


def test_a_diverging_h2_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The import-time check notices an h2 whose windows move differently: the tunnel then uses h2 only."""
    original = h2.connection.H2Connection.receive_data

    def doubled(self: h2.connection.H2Connection, data: bytes) -> list[h2.events.Event]:
        events = original(self, data)
        self._inbound_flow_control_window_manager.current_window_size -= 1  # not what _receive does
        return events

    monkeypatch.setattr(h2.connection.H2Connection, "receive_data", doubled)
    assert h2tunnel._fast_recv_matches_h2() is False


EDGES = {
    "plain": _data(1, b"abc"),
    "empty": _data(3, b""),
    "reserved bit": bytes(_data(1, b"abc")[:5]) + bytes([0x80, 0, 0, 1]) + b"abc",
    "stream 0": _data(0, b"abc"),
    "unknown stream": _data(13, b"abc"),
    "ended by the peer": _data(7, b"abc"),
    "reset by us": _data(9, b"abc"),
    "not answered yet": _data(11, b"abc"),
    "content-length kept": _data(5, b"x" * 40, ("END_STREAM",)),
    "content-length exceeded": _data(5, b"x" * 41),
    "padded": _data(1, b"abc", pad=5),
    "end stream": _data(1, b"abc", ("END_STREAM",)),
    "oversized": _data(1, b"x" * 16_385),
    "window exceeded": b"".join(_data(1, b"z" * 16_384) for _ in range(5)),
    "split frame": _data(1, b"abc")[:6],
}


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("name", sorted(EDGES))
def test_each_kind_of_frame_after_plain_ones_is_what_h2_makes_of_it(side: str, name: str) -> None:
    (plain, fast), _peer = _connections(side)
    wire = _data(1, b"before") + _data(3, b"before") + EDGES[name] + _data(1, b"after")
    assert _feed(fast, wire, fast=True) == _feed(plain, wire, fast=False)
    assert _state(fast) == _state(plain)
