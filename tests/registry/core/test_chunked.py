"""ChunkedDecoder: HTTP/1.1 chunked framing in, body out, split anywhere; hostile framing is one error."""

from __future__ import annotations

import pytest

from registry.core.chunked import MAX_SIZE_LINE, MAX_TRAILERS, ChunkedDecoder, ChunkedError
from registry.core.errors import ConnectionProblem

BODY_CHUNKS = [b"a\n", b"x" * 5000, b"\r\n0\r\n\r\n", b"\n"]


def frame(chunks: list[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"


def test_whole_and_split_anywhere_give_the_body() -> None:
    framed = frame(BODY_CHUNKS)
    whole = ChunkedDecoder()
    assert whole.feed(framed) == b"".join(BODY_CHUNKS)
    assert whole.ended
    for step in (1, 2, 3, 7, 1000):
        decoder = ChunkedDecoder()
        out = b"".join(decoder.feed(framed[i : i + step]) for i in range(0, len(framed), step))
        assert out == b"".join(BODY_CHUNKS), step
        assert decoder.ended


def test_extensions_trailers_and_upper_case_hex_are_read() -> None:
    decoder = ChunkedDecoder()
    body = decoder.feed(b"A;name=value\r\n0123456789\r\n2;x \t\r\nok\r\n0\r\nx-trailer: 1\r\n\r\n")
    assert body == b"0123456789ok"
    assert decoder.ended


def test_nothing_is_decoded_before_it_arrives() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"10\r\n") == b""
    assert decoder.feed(b"0123") == b"0123"  # data passes through as it comes, not held to the chunk's size
    assert not decoder.ended


@pytest.mark.parametrize(
    "framed",
    [
        b"zz\r\nab\r\n",  # not hex
        b"-1\r\n",
        b"\r\n",  # no size
        b"0x10\r\n",
        b"1" * 17 + b"\r\n",  # more than 16 hex digits
        b"2\r\nabc\r\n",  # data longer than its size
        b"2\r\nab",
        b"2\nab\r\n",  # LF alone
        b"0\r\n\r\nmore",  # after the end
    ],
)
def test_malformed_framing_is_an_error(framed: bytes) -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(ChunkedError):
        decoder.feed(framed)
        decoder.feed(b"2\r\nab\r\n")  # the data-too-short cases only fail once more framing arrives
    assert isinstance(ChunkedError("x"), ConnectionProblem)  # a broken stream: reconnect and resume
    with pytest.raises(ChunkedError):
        decoder.feed(b"1\r\na\r\n")  # failed stays failed


def test_an_endless_size_line_is_refused_before_it_ends() -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(ChunkedError, match="longer than the limit"):
        for _ in range(100):
            decoder.feed(b"1;" + b"e" * (MAX_SIZE_LINE // 10))
    with pytest.raises(ChunkedError):  # the CRLF after data is a line too
        d = ChunkedDecoder()
        d.feed(b"1\r\na" + b" " * (MAX_SIZE_LINE + 10))


def test_endless_trailers_are_refused() -> None:
    decoder = ChunkedDecoder()
    decoder.feed(b"0\r\n")
    with pytest.raises(ChunkedError, match="longer than the limit"):
        for _ in range(MAX_TRAILERS):
            decoder.feed(b"x-t: 1\r\n")


def test_a_huge_announced_chunk_is_streamed_not_buffered() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"7fffffffffffffff\r\n") == b""  # the most Go's reader (kubectl) takes
    assert decoder.feed(b"abc") == b"abc"  # nothing allocated for the announced size
