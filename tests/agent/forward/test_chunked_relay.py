"""A chunked answer relayed verbatim: the framing checks of agent.forward.chunked, alone and in the forwarder.

The pure checks are async tests only because this folder's conftest has an async autouse fixture."""

from __future__ import annotations

import random
import re
import time

import h11
import pytest
import trio

from agent.forward.chunked import MAX_LINE, MAX_TRAILERS, ChunkedRelay, ChunkError
from tests.agent.forward.forward_helpers import PREFIX, open_client
from tests.agent.forward.test_streams import scripted, scripted_world  # noqa: F401  (the fixture)
from tests.agent.forward.upstreams import RAW_BODIES, Scripted


def framed(chunks: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in chunks)


def relay_all(wire: bytes, sizes: list[int]) -> tuple[bytes, ChunkedRelay]:
    relay = ChunkedRelay()
    out = b""
    pos = 0
    for size in sizes:
        out += relay.feed(wire[pos : pos + size])
        pos += size
    out += relay.feed(wire[pos:])
    return out, relay


async def test_any_split_of_a_body_relays_the_same_bytes() -> None:
    chunks = [b"a" * 5, b'{"type":"MODIFIED"}\n' * 40, b"\r\n\r\n", b"0"]
    wire = framed(chunks) + b"0\r\nX-T: 1\r\n\r\n"
    rng = random.Random(7)
    for _ in range(300):
        sizes = [rng.randint(1, 40) for _ in range(rng.randint(0, 60))]
        out, relay = relay_all(wire, sizes)
        assert relay.done
        assert out == framed(chunks)  # the last chunk and the trailers are the forwarder's to write
        assert relay.extra == b""
    out, relay = relay_all(wire, [1] * len(wire))  # one byte at a time
    assert (out, relay.done) == (framed(chunks), True)


async def test_whole_chunks_pass_as_the_same_object_and_a_partial_chunk_is_not_held_back() -> None:
    relay = ChunkedRelay()
    event = framed([b'{"type":"ADDED"}\n'])
    assert relay.feed(event) is event  # a watch event costs no copy
    assert relay.feed(b"10\r\n0123") == b"10\r\n0123"  # data goes out as it arrives
    assert relay.feed(b"456789abcdef\r") == b"456789abcdef\r"
    assert relay.feed(b"\n") == b"\n"
    assert relay.feed(b"1") == b""  # a partial size line waits for its end
    assert relay.feed(b"\r\nx\r\n") == b"1\r\nx\r\n"
    assert not relay.done


async def test_extensions_and_whitespace_go_out_as_the_bare_size_and_bytes_after_the_end_are_kept() -> None:
    relay = ChunkedRelay()
    assert relay.feed(b"5;a=b;c\r\nhello\r\n3 \t\r\nabc\r\n") == b"5\r\nhello\r\n3\r\nabc\r\n"
    assert relay.feed(b"0;last\r\n\r\nGET / HTTP/1.1\r\n") == b""
    assert relay.done
    assert relay.extra == b"GET / HTTP/1.1\r\n"
    assert relay.feed(b"more") == b""
    assert relay.extra.endswith(b"more")


async def test_a_size_kubectl_cannot_read_is_refused_and_leading_zeros_are_dropped() -> None:
    # Go's chunked reader takes 16 hex digits at most (h11 takes 20): zeros in front go, a size past 2**63 is
    # refused (it could never end anyway)
    assert ChunkedRelay().feed(b"0000000000000000005\r\nhello\r\n") == b"5\r\nhello\r\n"
    assert ChunkedRelay().feed(b"0000000000000005\r\nhello\r\n") == b"0000000000000005\r\nhello\r\n"
    for size in (b"8000000000000000", b"ffffffffffffffffffff"):
        with pytest.raises(ChunkError, match="more than any client reads"):
            ChunkedRelay().feed(size + b"\r\n")


HOSTILE = [
    ("not hex", b"zz\r\n"),
    ("negative", b"-5\r\nhello\r\n"),
    ("a sign", b"+5\r\nhello\r\n"),
    ("0x prefix", b"0x5\r\nhello\r\n"),
    ("empty size line", b"\r\n"),
    ("bare LF", b"5\nhello\r\n"),
    ("space inside the size", b"5 5\r\n"),
    ("21 hex digits", b"0" * 20 + b"5\r\nhello\r\n"),
    ("data longer than its size", b"5\r\nhello!\r\n"),
    ("data shorter than its size", b"5\r\nhell\r\n\r\n"),
    ("no CRLF after the data", b"5\r\nhelloXX"),
    ("a trailer without a colon", b"0\r\nnot a header\r\n\r\n"),
    ("a trailer with a bad name", b"0\r\nBad Name: x\r\n\r\n"),
    ("a trailer with an empty name", b"0\r\n: x\r\n\r\n"),
    # h11 and Go end the trailers at LF LF: what follows would be a second answer on the pooled connection
    ("trailers ended by a bare LF LF", b"0\r\nA: b\n\nHTTP/1.1 200 OK\r\n\r\n"),
    ("an empty trailer section as a bare LF", b"0\r\n\nHTTP/1.1 200 OK\r\n\r\n"),
    ("a bare LF inside a trailer", b"0\r\nA: b\nC: d\r\n\r\n"),
    ("a bare CR inside a trailer", b"0\r\nA: b\rC: d\r\n\r\n"),
    ("a NUL in a trailer value", b"0\r\nA: \x00\r\n\r\n"),
    ("an obs-folded trailer", b"0\r\nA: b\r\n c\r\n\r\n"),
]


@pytest.mark.parametrize(("wire"), [w for _, w in HOSTILE], ids=[name for name, _ in HOSTILE])
async def test_malformed_framing_is_refused_whole_or_byte_by_byte(wire: bytes) -> None:
    whole = b""
    for sizes in ([], [1] * len(wire)):
        relay = ChunkedRelay()
        handed: list[bytes] = []
        with pytest.raises(ChunkError) as refused:
            pos = 0
            for size in [*sizes, len(wire)]:
                handed.append(relay.feed(wire[pos : pos + size]))
                pos += size
        assert not relay.done
        # what went out before the refusal, with what the refused call had checked, is the start of the
        # wire, up to a checked size line's data at most; whole or byte by byte, the same bytes
        out = b"".join(handed) + refused.value.checked
        if not sizes:
            whole = out
        else:
            assert out == whole
        assert wire.startswith(out)
        assert len(out) <= len(b"5\r\nhello\r\n")


async def test_an_endless_size_line_or_trailer_section_is_refused_at_its_bound_without_buffering_it() -> None:
    relay = ChunkedRelay()
    fed = 0
    with pytest.raises(ChunkError, match="chunk-size line"):
        while fed <= 2 * MAX_LINE:
            relay.feed(b"1" * 1000)  # digits without end: never a line
            fed += 1000
    assert fed <= MAX_LINE + 1000
    relay = ChunkedRelay()
    relay.feed(b"0\r\n")
    fed = 0
    with pytest.raises(ChunkError, match="trailer section"):
        relay.feed(b"X-A: ")
        while fed <= 2 * MAX_TRAILERS:
            relay.feed(b"a" * 4096)
            fed += 4096
    assert fed <= MAX_TRAILERS + 4096
    relay = ChunkedRelay()
    with pytest.raises(ChunkError, match="trailer section"):
        relay.feed(b"0\r\nX-A: " + b"a" * MAX_TRAILERS + b"\r\n\r\n")  # complete, but too long


async def test_a_huge_chunk_size_streams_through_without_being_buffered() -> None:
    relay = ChunkedRelay()
    assert relay.feed(b"7fffffffffffffff\r\n") == b"7fffffffffffffff\r\n"  # the most kubectl reads
    block = b"x" * 65536
    for _ in range(16):
        assert relay.feed(block) is block


# -- in the forwarder ---------------------------------------------------------------------------------------


async def test_a_chunked_answer_reaches_the_client_whole_and_its_connection_is_pooled(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
) -> None:
    world = scripted_world(scripted)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    reply = await client.request("GET", f"{PREFIX}/raw/good")
    assert reply.status == 200
    assert reply.body == b'{"type":"ADDED","n":1}\nhello'
    # the next request on the same client stream goes over the same upstream connection
    again = await client.request("GET", f"{PREFIX}/raw/good")
    assert (again.status, again.body) == (200, b'{"type":"ADDED","n":1}\nhello')
    stats = ctx.pool.statistics()
    assert (stats.connects, stats.reuses) == (1, 1)


async def test_bytes_after_the_last_chunk_end_the_answer_but_the_connection_is_not_pooled(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
) -> None:
    world = scripted_world(scripted)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    reply = await client.request("GET", f"{PREFIX}/raw/extra")
    assert (reply.status, reply.body) == (200, b"hello")  # JUNK never reaches the client
    await world.wait_events(1)  # written after the connection was released
    stats = ctx.pool.statistics()
    assert (stats.idle, stats.discarded) == (0, 1)


BAD = sorted(name for name in RAW_BODIES if name not in ("good", "extra"))


@pytest.mark.parametrize("name", BAD)
async def test_a_malformed_or_oversized_chunk_ends_the_answer_without_its_end_while_upstream_stays_open(
    nursery: trio.Nursery,
    scripted: Scripted,  # noqa: F811
    name: str,
) -> None:
    # The scripted server keeps the connection open after the bad bytes: the forwarder has to see them.
    world = scripted_world(scripted)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    await client.send_request("GET", f"{PREFIX}/raw/{name}")
    head = await client.response_head()
    assert head.status_code == 200
    body = b""
    with trio.fail_after(5), pytest.raises(h11.RemoteProtocolError):  # never a clean end
        while True:
            event = await client.next_event()
            assert not isinstance(event, h11.EndOfMessage)
            if isinstance(event, h11.Data):
                body += bytes(event.data)
    assert body in (b"hello", b"helloworld")  # the well-framed start went out
    [record] = await world.wait_events(1)
    assert record["status"] == 200
    assert record["error"]
    assert ctx.pool.statistics().idle == 0


def _h11_reads(body: bytes) -> tuple[str, bytes, bytes]:
    """What h11's client makes of a chunked answer with this body: ("ok" | "more" | "bad", data, after)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    data = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return "more", data, b""
            if isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return "ok", data, conn.trailing_data[0]
    except h11.RemoteProtocolError:
        return "bad", data, b""


def _strict_decode(wire: bytes) -> bytes:
    """The data of a relayed (never complete) chunked body, asserting the strictest framing: HEX CRLF (at
    most 16 digits, no extension or whitespace), data, CRLF -- what Go's reader reads the same way."""
    out, pos = b"", 0
    while (newline := wire.find(b"\r\n", pos)) >= 0:
        size = wire[pos:newline]
        assert re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size), size
        length = int(size, 16)
        assert length, "the relay never hands out the last chunk"
        pos = newline + 2
        out += wire[pos : pos + length]
        footer = wire[pos + length : pos + length + 2]
        assert footer == b"\r\n"[: len(footer)]
        pos += length + 2
    assert len(wire) - pos <= 16 and re.fullmatch(rb"[0-9A-Fa-f]*\r?", wire[pos:]) is not None
    return out


_PIECES = [b"\r\n", b"\n", b"\r", b"0", b"1", b"a", b"F", b";", b";x=y", b" ", b"\t", b"X: y", b":", b"\x00"]


def _hostile_body(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 4)):
        data = bytes(rng.choice(b"ab\r\n0") for _ in range(rng.randint(1, 12)))
        size = b"0" * rng.choice([0, 0, 0, 3, 15, 19]) + (b"%x" if rng.random() < 0.7 else b"%X") % len(data)
        ext = rng.choice([b"", b"", b";a=b", b" ", b" \t", b";", b";\r"])
        parts.append(size + ext + rng.choice([b"\r\n"] * 8 + [b"\n"]) + data + rng.choice([b"\r\n"] * 8 + [b"\n", b""]))
    trailers = rng.choice([b"", b"X: y\r\n", b"X: y\n", b"A: b\n\nZ: q\r\n", b"X:y\r\nZ:\r\n", b"X y\r\n"])
    end = rng.choice([b"\r\n"] * 5 + [b"\n", b""])
    body = b"".join(parts) + rng.choice([b"0", b"000", b"0;e"]) + b"\r\n" + trailers + end
    body += rng.choice([b""] * 4 + [b"HTTP/1.1 200 OK\r\n\r\n"])
    for _ in range(rng.choice([0, 0, 1, 2])):
        at, piece = rng.randint(0, len(body)), rng.choice(_PIECES)
        body = body[:at] + piece + body[at + rng.choice([0, 1, len(piece)]) :]
    return body


async def test_differential_against_h11_random_bodies_split_anywhere() -> None:
    """The relay never accepts what h11 refuses, and where both accept: the same data and the same bytes
    after the body (the pooling boundary). What it hands out is always strict framing without an end."""
    rng = random.Random(20261203)
    agreed = 0
    for _ in range(1500):
        body = _hostile_body(rng)
        verdict, data, after = _h11_reads(body)
        relay, out, pos = ChunkedRelay(), b"", 0
        try:
            while pos < len(body):
                step = rng.choice([1, 2, 3, 7, 1000])
                out += relay.feed(body[pos : pos + step])
                pos += step
            mine = "ok" if relay.done else "more"
        except ChunkError as err:
            out += err.checked
            mine = "bad"
        relayed = _strict_decode(out)
        assert data.startswith(relayed) or verdict == "bad", body
        if mine == "ok":
            assert verdict == "ok", body
            assert (relayed, relay.extra) == (data, after), body
            agreed += 1
    assert agreed > 100  # the generator reaches clean bodies too


async def test_a_trailer_section_trickled_byte_by_byte_costs_linear_time() -> None:
    # A hostile API server can send its trailers one byte per TLS record: each feed scans only what it adds
    # (before, every byte rescanned and copied the whole section: 64 KiB took over 30 s of the agent's CPU).
    relay = ChunkedRelay()
    assert relay.feed(b"1\r\nx\r\n0\r\n") == b"1\r\nx\r\n"
    line = b"X-Padding: " + b"p" * 50 + b"\r\n"
    section = line * (30_000 // len(line)) + b"\r\n"
    started = time.process_time()
    for at in range(len(section)):
        assert relay.feed(section[at : at + 1]) == b""
    assert relay.done and relay.extra == b""
    assert time.process_time() - started < 1.0  # ~0.05 s; quadratic took several seconds here
    # and the bound still holds, byte by byte
    relay = ChunkedRelay()
    relay.feed(b"0\r\n")
    with pytest.raises(ChunkError, match="trailer section"):
        for _ in range(MAX_TRAILERS + 1):
            relay.feed(b"a")
