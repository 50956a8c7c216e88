"""Relaying a chunked answer body verbatim: the chunk framing is checked as it passes, never re-encoded.

A watch through the forwarder is a chunked answer on both sides (the API server's and kubectl's HTTP/1.1
connections). Decoding every event out of its chunk (h11) and encoding it into a new chunk for kubectl
costs per event and per watch what a burst to many watches multiplies; the framing is the same on both
sides, so the bytes can go through as they came once their framing is known good. :class:`ChunkedRelay`
is the sans-IO check: fed the body's wire bytes as they arrive, it returns the part that may go to the
client now and raises :class:`ChunkError` on anything h11 would refuse (and on a chunk size kubectl's
reader would refuse).

Invariants:

* What :meth:`ChunkedRelay.feed` returns, concatenated, is always a prefix of a well-formed chunked body
  without its last chunk: chunk-size lines (``HEX [; ext] [OWS] CRLF``; a line with an extension,
  whitespace or more than 16 digits goes out as the bare size), chunk data, and the CRLF after each
  chunk's data, each checked before it is handed out. A partly received chunk's data goes out as it
  arrives (a watch event is never held back waiting for bytes still to come).
* The last chunk (size 0) and its trailer section are read and dropped (the forwarder ends the client's
  answer itself, as with h11, which drops trailers too); :attr:`done` then says so, and bytes after it are
  kept in :attr:`extra` (a server sending more on a connection than its answer: the caller does not pool it).
  The trailer section is CRLF lines only, each an h11 header field: a bare CR or LF is refused, so the body
  ends where h11 and Go's reader would end it (a section ended by LF LF would hide a next answer there).
* Bounded: a chunk-size line longer than ``max_line`` or a trailer section longer than ``max_trailers``
  is refused before it is buffered whole; the size field has at most 20 hex digits (as h11) and a chunk at
  most ``MAX_CHUNK`` bytes (what kubectl's Go reader takes). Nothing else is buffered: chunk data is handed
  out, not kept.
"""

from __future__ import annotations

import re
from typing import Final

MAX_LINE: Final = 8 * 1024  # a chunk-size line (with extensions); kube-apiserver writes a few hex digits
MAX_TRAILERS: Final = 64 * 1024
# Go's chunked reader (kubectl's) takes at most 16 hex digits and a signed 64-bit size; such a chunk could
# never end anyway. h11 takes 20 digits: up to 20 are read, and a longer size line goes out as the bare size.
MAX_CHUNK: Final = 2**63 - 1

# h11's chunk_header (h11._abnf): size, optional extensions, optional whitespace, then CRLF.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(;[^\r\n]*)?[ \t]*\r\n")
# One trailer line as h11's header_field (token ":" OWS value OWS; no CR, LF, NUL or other whitespace in the
# value) minus obs-fold, which is refused. With no bare CR or LF in the section, the first CRLF CRLF is
# where h11's (and Go's) reader ends the trailers too: the connection is pooled at the same boundary.
_TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?[ \t]*")

_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


class ChunkError(Exception):
    """The chunked body is malformed or oversized: the answer cannot be relayed further. ``checked``: what
    the refused :meth:`ChunkedRelay.feed` call had checked good before the fault (it may still go out)."""

    def __init__(self, message: str, start: int = 0, pos: int = 0) -> None:
        super().__init__(message)
        self.start = start  # the fault's place in the fed bytes (for ChunkedRelay.feed)
        self.pos = pos
        self.checked = b""


class ChunkedRelay:
    """Check a chunked body's framing as it arrives and hand out what may be relayed (module docstring)."""

    __slots__ = ("_line", "_max_line", "_max_trailers", "_remaining", "_section", "_state", "extra")

    def __init__(self, *, max_line: int = MAX_LINE, max_trailers: int = MAX_TRAILERS) -> None:
        self._state = _SIZE
        self._remaining = 0  # _DATA: data bytes of this chunk still to come; _CRLF: bytes of CRLF still to come
        self._line = b""  # a partly received size line
        self._section = bytearray()  # the trailer section so far
        self._max_line = max_line
        self._max_trailers = max_trailers
        self.extra = b""

    @property
    def done(self) -> bool:
        """The last chunk and its trailers were read: the body is complete."""
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        """The part of ``data`` (with what earlier calls held back) that may go to the client now."""
        if self._state == _DONE:
            self.extra += data
            return b""
        if self._state == _TRAILER:
            self._trailers(data, 0)
            return b""
        if self._line:
            data, self._line = self._line + data, b""
        out: list[bytes] = []
        start = 0  # where the run of bytes passed on verbatim began (out gets it as one slice)
        pos = 0
        end = len(data)
        try:
            return self._scan(data, out, start, pos, end)
        except ChunkError as err:
            err.checked = b"".join(out) + data[err.start : err.pos]
            raise

    def _scan(self, data: bytes, out: list[bytes], start: int, pos: int, end: int) -> bytes:
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state, self._remaining = _CRLF, 2
            elif state == _CRLF:
                # the CRLF after a chunk's data, possibly split over two reads
                expected = b"\r\n"[2 - self._remaining :]
                got = data[pos : pos + self._remaining]
                if got != expected[: len(got)]:
                    raise ChunkError(f"malformed chunk footer: {got[:8]!r} where CRLF belongs", start, pos)
                pos += len(got)
                self._remaining -= len(got)
                if not self._remaining:
                    self._state = _SIZE
            elif state == _SIZE:
                newline = data.find(b"\n", pos, pos + self._max_line)
                if newline < 0:
                    if end - pos >= self._max_line:
                        raise ChunkError(f"a chunk-size line longer than {self._max_line} bytes", start, pos)
                    self._line = data[pos:]
                    break
                line_end = newline + 1
                match = _SIZE_LINE.fullmatch(data, pos, line_end)
                if match is None:
                    raise ChunkError(f"illegal chunk header: {data[pos : min(line_end, pos + 40)]!r}", start, pos)
                size = int(match.group(1), 16)
                if size > MAX_CHUNK:
                    raise ChunkError(f"a chunk of {size} bytes (more than any client reads)", start, pos)
                if size == 0:
                    if pos > start:
                        out.append(data[start:pos])
                    start = pos = line_end
                    self._trailers(data, line_end)
                    return b"".join(out) if len(out) != 1 else out[0]
                if match.end(1) != line_end - 2 or match.end(1) - pos > 16:
                    # extensions, whitespace or leading zeros beyond 16 digits: the bare size goes out
                    if pos > start:
                        out.append(data[start:pos])
                    out.append(b"%x\r\n" % size)
                    start = line_end
                pos = line_end
                self._state, self._remaining = _DATA, size
            else:  # pragma: no cover - _TRAILER and _DONE never loop
                raise AssertionError(state)
        if self._line:
            end = pos  # the partial size line is held back, not handed out
        if end > start:
            if not out and start == 0 and end == len(data):
                return data
            out.append(data[start:end])
        return out[0] if len(out) == 1 else b"".join(out)

    def _trailers(self, data: bytes, pos: int) -> None:
        """After the last chunk: the trailer section, up to and including its empty line (dropped).

        The section grows in a bytearray and each call scans only what it adds (a hostile server trickling
        its trailers a byte per read costs linear time, not a rescan of the section per byte)."""
        section = self._section
        old = len(section)
        section += memoryview(data)[pos:]
        # The section ends with an empty line: CRLF at once (no trailers), or CRLF CRLF after the last one.
        if section[:2] == b"\r\n":
            self._finish(bytes(section[2:]))
            return
        marker = section.find(b"\r\n\r\n", max(0, old - 3))
        if (marker + 4 if marker >= 0 else len(section) + 1) > self._max_trailers:
            raise ChunkError(f"a trailer section longer than {self._max_trailers} bytes")
        # h11 and Go end a section at LF LF too: with a bare LF, what follows could be the next answer to them
        end = marker + 2 if marker >= 0 else len(section)
        newline = section.find(b"\n", old, end)
        while newline >= 0:
            if newline == 0 or section[newline - 1] != 0x0D:
                raise ChunkError(f"a bare LF in the trailer section: {bytes(section[:40])!r}")
            newline = section.find(b"\n", newline + 1, end)
        if marker < 0:
            self._state = _TRAILER  # incomplete: kept until its empty line arrives
            return
        self._check_trailers(bytes(section[:marker]))
        self._finish(bytes(section[marker + 4 :]))

    def _check_trailers(self, lines: bytes) -> None:
        for line in lines.split(b"\r\n"):
            if _TRAILER_LINE.fullmatch(line) is None:
                raise ChunkError(f"malformed trailer line: {line[:40]!r}")

    def _finish(self, rest: bytes) -> None:
        self._state = _DONE
        self._line = b""
        self._section = bytearray()
        self.extra = rest
