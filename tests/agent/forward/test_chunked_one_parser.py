"""One chunked framing parser (registry.core.chunked.ChunkedParser) under both of its readers: the forwarder's
verbatim relay and the registry client's decoder accept and refuse exactly the same framing.

The pure checks are async tests only because this folder's conftest has an async autouse fixture."""

from __future__ import annotations

import random
import time

import pytest

from agent.forward.chunked import ChunkedRelay, ChunkError
from registry.core.chunked import ChunkedDecoder, ChunkedError, ChunkedParser
from tests.agent.forward.test_chunked_relay import HOSTILE, _h11_reads, _hostile_body, _strict_decode

# framing faults the relay's generator reaches rarely or never: whitespace before an extension (h11 and Go
# refuse it), sizes at and past what Go reads, 21 digits, a CR inside an extension
_MORE = [b" ;x", b"\t;", b"7fffffffffffffff", b"8000000000000000", b"0" * 21, b";\r", b"\r\n\r\n", b"0\r\n\r\n"]


def _body(rng: random.Random) -> bytes:
    body = _hostile_body(rng)
    for _ in range(rng.choice([0, 0, 1])):
        at, piece = rng.randint(0, len(body)), rng.choice(_MORE)
        body = body[:at] + piece + body[at + rng.choice([0, 1, len(piece)]) :]
    return body


def _splits(rng: random.Random, body: bytes) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(body):
        step = rng.choice([1, 2, 3, 7, 1000])
        pieces.append(body[pos : pos + step])
        pos += step
    return pieces


def _relay(pieces: list[bytes]) -> tuple[str, bytes, bytes]:
    """("ok" | "more" | "bad", the data the relayed framing carries, bytes after the end)."""
    relay, out = ChunkedRelay(), b""
    try:
        for piece in pieces:
            out += relay.feed(piece)
    except ChunkError as err:
        return "bad", _strict_decode(out + err.checked), b""
    return ("ok" if relay.done else "more"), _strict_decode(out), relay.extra


def _decode(pieces: list[bytes]) -> tuple[str, bytes]:
    decoder, body = ChunkedDecoder(), b""
    try:
        for piece in pieces:
            body += decoder.feed(piece)
    except ChunkedError:
        return "bad", body
    return ("ok" if decoder.ended else "more"), body


async def test_the_relay_and_the_decoder_accept_and_refuse_the_same_framing_split_anywhere() -> None:
    """Same verdict and same data on random hostile bodies (split differently for each). The one difference
    is each reader's own: bytes after the end are the relay's ``extra`` (not pooled) and the decoder's
    error (a watch stream carries nothing after its body). Both never accept what h11 refuses."""
    rng = random.Random(20261204)
    seen = {"ok": 0, "more": 0, "bad": 0, "after": 0}
    for _ in range(2000):
        body = _body(rng)
        relayed, relayed_data, after = _relay(_splits(rng, body))
        decoded, decoded_data = _decode(_splits(rng, body))
        if relayed == "ok" and after:
            assert decoded == "bad", body
            seen["after"] += 1
        else:
            assert decoded == relayed, body
        if decoded != "bad":
            assert decoded_data == relayed_data, body
        if "ok" in (relayed, decoded):
            assert _h11_reads(body)[0] == "ok", body
        seen[relayed] += 1
    assert min(seen.values()) > 50, seen  # the generator reaches every outcome


@pytest.mark.parametrize("wire", [w for _, w in HOSTILE], ids=[name for name, _ in HOSTILE])
async def test_the_relays_hostile_framing_is_refused_by_the_decoder_too(wire: bytes) -> None:
    for step in (len(wire), 1):
        decoder = ChunkedDecoder()
        with pytest.raises(ChunkedError):
            for at in range(0, len(wire), step):
                decoder.feed(wire[at : at + step])
            decoder.feed(b"2\r\nab\r\n")  # the data-too-short cases only fail once more framing arrives


async def test_whitespace_before_an_extension_and_sizes_past_go_are_refused_by_both() -> None:
    # h11 refuses "2 ;x" (its chunk-ext starts at ";"), Go reads "2 " as the size and refuses it
    for wire in (b"2 ;x\r\nok\r\n", b"2\t;x\r\nok\r\n", b"8000000000000000\r\n", b"1" * 17 + b"\r\n"):
        with pytest.raises(ChunkedError):
            ChunkedDecoder().feed(wire)
        with pytest.raises(ChunkError):
            ChunkedRelay().feed(wire)


async def test_after_a_refusal_every_feed_is_refused_and_nothing_more_goes_out() -> None:
    relay = ChunkedRelay()
    with pytest.raises(ChunkError) as first:
        relay.feed(b"3\r\nabc\r\nzz\r\n")
    assert first.value.checked == b"3\r\nabc\r\n"
    with pytest.raises(ChunkError) as again:
        relay.feed(b"1\r\nx\r\n")  # good framing, but the stream is broken
    assert again.value.checked == b""
    decoder = ChunkedDecoder()
    decoder.feed(b"0\r\n\r\n")
    with pytest.raises(ChunkedError, match="after the end"):
        decoder.feed(b"x")
    with pytest.raises(ChunkedError):
        decoder.feed(b"")


async def test_the_parser_reports_data_slices_chunk_starts_the_end_and_bytes_after_it() -> None:
    parser = ChunkedParser()
    wire = b"3\r\nabc\r\n4;e=1\r\ndefg\r\n2"
    buf = parser.feed(wire)
    assert buf is wire
    assert [buf[parser.spans[i] : parser.spans[i + 1]] for i in range(0, len(parser.spans), 2)] == [b"abc", b"defg"]
    start = wire.index(b"4;")
    assert parser.heads == [start, start + len(b"4;e=1\r\n"), 4]  # only the line with more than its size
    assert parser.end == len(wire) - 1  # the partial size line is held back
    buf = parser.feed(b"\r\nhi\r\n0\r\nX-T: 1\r\n\r\nNEXT")
    assert buf[: parser.end] == b"2\r\nhi\r\n"  # the held line, then up to the last chunk
    assert (parser.done, parser.extra) == (True, b"NEXT")


async def test_a_size_line_trickled_byte_by_byte_costs_linear_time() -> None:
    # A hostile server can send a long chunk-size line (with extensions) one byte per read: each feed scans
    # only what it adds (before, every byte copied and rescanned the line held back so far: quadratic, if
    # small at the default 8 KiB bound; a relay made with a larger one showed it).
    relay = ChunkedRelay(max_line=1 << 20)
    line = b"1;" + b"e" * 400_000
    started = time.process_time()
    for at in range(len(line)):
        assert relay.feed(line[at : at + 1]) == b""
    assert relay.feed(b"\r\nx\r\n") == b"1\r\nx\r\n"
    assert time.process_time() - started < 1.5  # ~0.4 s; the quadratic rescan took ~2.6 s here


@pytest.mark.parametrize("wire", [b"Zq\r\n", b"2\r\nabZq", b"0\r\nZq Zq\r\n\r\n", b"0\r\nA: Zq\nB: c\r\n\r\n"])
async def test_a_refusal_never_quotes_the_bytes(wire: bytes) -> None:
    # they may be a secret's (a watch with secrets, a Secret relayed by the forwarder); the message reaches
    # the audit record, logs and ERROR lines
    for reader in (ChunkedRelay(), ChunkedDecoder()):
        with pytest.raises(ChunkedError) as refused:
            reader.feed(wire)
        assert "Zq" not in str(refused.value)
