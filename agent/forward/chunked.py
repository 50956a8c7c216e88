"""Relaying a chunked answer body verbatim: the chunk framing is checked as it passes, never re-encoded.

A watch through the forwarder is a chunked answer on both sides (the API server's and kubectl's HTTP/1.1
connections). Decoding every event out of its chunk (h11) and encoding it into a new chunk for kubectl
costs per event and per watch what a burst to many watches multiplies; the framing is the same on both
sides, so the bytes can go through as they came once their framing is known good. :class:`ChunkedRelay`
is a thin layer on :class:`registry.core.chunked.ChunkedParser` (the one chunked framing parser, whose
rules are h11's within what kubectl's reader takes, shared with the registry client's decoder): fed the
body's wire bytes as they arrive, it returns the part that may go to the client now and raises
:class:`ChunkError` on anything the parser refuses.

Invariants:

* What :meth:`ChunkedRelay.feed` returns, concatenated, is always a prefix of a well-formed chunked body
  without its last chunk: chunk-size lines (``HEX [; ext] [OWS] CRLF``; a line with an extension,
  whitespace or more than 16 digits goes out as the bare size), chunk data, and the CRLF after each
  chunk's data, each checked before it is handed out. A partly received chunk's data goes out as it
  arrives (a watch event is never held back waiting for bytes still to come). A feed of whole chunks in
  bare form is handed back as the same object (no copy per event).
* The last chunk (size 0) and its trailer section are read and dropped (the forwarder ends the client's
  answer itself, as with h11, which drops trailers too); :attr:`done` then says so, and bytes after it are
  kept in :attr:`extra` (a server sending more on a connection than its answer: the caller does not pool it).
* Bounded as the parser is; chunk data is handed out, not kept.
"""

from __future__ import annotations

from typing import Final

from registry.core.chunked import MAX_CHUNK, MAX_SIZE_LINE, MAX_TRAILERS, ChunkedError, ChunkedParser

__all__ = ["MAX_CHUNK", "MAX_LINE", "MAX_TRAILERS", "ChunkError", "ChunkedRelay"]

MAX_LINE: Final = MAX_SIZE_LINE

# The parser's error: ``checked`` holds what the refused feed had checked good before the fault (it may
# still go out to the client).
ChunkError = ChunkedError


class ChunkedRelay:
    """Check a chunked body's framing as it arrives and hand out what may be relayed (module docstring)."""

    __slots__ = ("_parser",)

    def __init__(self, *, max_line: int = MAX_LINE, max_trailers: int = MAX_TRAILERS) -> None:
        self._parser = ChunkedParser(spans=False, max_line=max_line, max_trailers=max_trailers)

    @property
    def done(self) -> bool:
        """The last chunk and its trailers were read: the body is complete."""
        return self._parser.done

    @property
    def extra(self) -> bytes:
        """The bytes that came after the body's end (empty until :attr:`done`)."""
        return self._parser.extra

    def feed(self, data: bytes) -> bytes:
        """The part of ``data`` (with what earlier calls held back) that may go to the client now."""
        parser = self._parser
        try:
            buf = parser.feed(data)
        except ChunkedError as err:
            err.checked = _verbatim(err.buf, err.pos, parser.heads)
            err.buf = b""  # the error outlives the feed: keep only what it checked, not the whole read
            raise
        end = parser.end
        if parser.heads:
            return _verbatim(buf, end, parser.heads)
        return buf if end == len(buf) else buf[:end]


def _verbatim(buf: bytes, end: int, heads: list[int]) -> bytes:
    """``buf[:end]`` with each size line in ``heads`` (``[start, end, size, ...]``) replaced by its bare size."""
    if len(heads) == 3:  # one such line in the feed: the usual case when a server writes extensions
        return buf[: heads[0]] + b"%x\r\n" % heads[2] + buf[heads[1] : end]
    out: list[bytes] = []
    start = 0
    for i in range(0, len(heads), 3):
        out.append(buf[start : heads[i]])
        out.append(b"%x\r\n" % heads[i + 2])
        start = heads[i + 1]
    out.append(buf[start:end])
    return b"".join(out)
