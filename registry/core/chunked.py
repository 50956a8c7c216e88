"""HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), sans-IO: one framing parser and the decoder built on it.

Two readers of chunked framing share :class:`ChunkedParser`, so they accept and refuse exactly the same
bytes: the registry client's watch stream (:class:`ChunkedDecoder` here: framed bytes in, body bytes out)
and the forwarder's verbatim relay of an API server's answer (``agent.forward.chunked.ChunkedRelay``: the
checked framing out as it came). The parser knows the framing and nothing else: what a body means is its
reader's business (:mod:`registry.core.watch` for a watch).

The rules (h11's, which the forwarder's fallback path uses, within what kubectl's Go reader takes):

- A chunk-size line is ``HEX [";" ext] [OWS] CRLF``: 1 to 20 hex digits (as h11) of a size of at most
  :data:`MAX_CHUNK` (Go's reader takes a signed 64-bit size, so at most 16 significant digits), extensions
  read and dropped, no whitespace before them (h11 and Go refuse it), no bare CR or LF.
- A chunk's data is followed by CRLF exactly.
- After the last chunk (size 0), the trailer section: CRLF lines only, each an h11 header field (``token ":"
  OWS value OWS``, no NUL or other control whitespace in the value, no obs-fold), ended by an empty line. A
  bare CR or LF is refused, so the body ends where h11 and Go's reader would end it (a section ended by
  LF LF would hide a next answer there). Trailers are checked and dropped.

Invariants:

- ``feed`` accepts the framed bytes split anywhere (one byte at a time, several chunks at once) and reports
  what that call parsed (:class:`ChunkedParser`): the chunk data's slices, the size lines that carry more
  than the bare size, where the checked framing before the last chunk (or a partial size line) stops, and
  after the end, :attr:`ChunkedParser.done` and the bytes that followed it (``extra``).
- Bounded: a chunk-size line longer than :data:`MAX_SIZE_LINE` or a trailer section longer than
  :data:`MAX_TRAILERS` is refused before it is buffered whole; chunk data is reported as it arrives, never
  buffered to its announced size. Nothing else is kept.
- Linear time on trickled input: a partial size line or trailer section grows in a bytearray and each feed
  scans only what it adds (a hostile peer sending a byte per read costs no rescan of what it sent before).
- Any fault raises :class:`ChunkedError` (a ``ConnectionProblem``: the stream is broken); after one, every
  feed raises it again. Its message never quotes the bytes: they may be a secret's (a watch with secrets,
  a Secret through the forwarder), and the message reaches logs, audit records and ``ERROR:`` lines.
"""

from __future__ import annotations

import re
from typing import Final, NoReturn

from registry.core.errors import ConnectionProblem

MAX_SIZE_LINE: Final = 8 * 1024  # a chunk-size line with its extensions; kube-apiserver and we write "<hex>\r\n"
MAX_TRAILERS: Final = 64 * 1024
# Go's chunked reader (kubectl's) takes at most 16 hex digits and a signed 64-bit size; such a chunk could
# never end anyway. h11 takes 20 digits: up to 20 are read (leading zeros), the value is bounded here.
MAX_CHUNK: Final = 2**63 - 1

# h11's chunk_header (h11._abnf): size, optional extensions, optional whitespace, then CRLF (stricter than
# h11 only in refusing a bare CR inside an extension).
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(;[^\r\n]*)?[ \t]*\r\n")
# One trailer line as h11's header_field (token ":" OWS value OWS; no CR, LF, NUL or other whitespace in the
# value) minus obs-fold, which is refused. With no bare CR or LF in the section, the first CRLF CRLF is
# where h11's (and Go's) reader ends the trailers too: the connection is pooled at the same boundary.
_TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?[ \t]*")

_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


class ChunkedError(ConnectionProblem):
    """The bytes are not chunked framing, or break a bound: the stream is broken (reconnect and resume).

    ``buf`` and ``pos``: the refused feed's buffer (see :meth:`ChunkedParser.feed`) and where the fault
    begins in it; what precedes ``pos`` was checked good (the parser's report lists it). ``checked``: for
    a relay, the bytes of the refused feed that may still go out (``agent.forward.chunked``)."""

    def __init__(self, message: str, buf: bytes = b"", pos: int = 0) -> None:
        super().__init__(message)
        self.buf = buf
        self.pos = pos
        self.checked = b""


class ChunkedParser:
    """Check chunked framing as it arrives and report what each :meth:`feed` parsed (module docstring).

    After ``buf = feed(data)``, positions index ``buf`` (``data`` itself, or a held-back partial size line
    followed by ``data``):

    - ``spans``: the chunk data, as flat ``[start, end, start, end, ...]`` pairs, in order (only when the
      parser was made with ``spans=True``: a reader that relays the framing with its data needs none);
    - ``heads``: the chunk-size lines that carry more than the bare size (an extension, whitespace, more
      than 16 digits), as flat ``[start, end, size, ...]`` triples; a bare ``HEX CRLF`` line is not listed;
    - ``end``: ``buf[:end]`` is checked framing (size lines, data, the CRLF after data, possibly partial)
      up to the last chunk or a partial size line held back for the next feed; the last chunk's line and
      the trailer section are checked and not reported;
    - ``done`` and ``extra``: the body ended (its trailer section is complete); the bytes after it, this
      feed's and every later feed's, accumulate in ``extra`` (they are not framing: a reader stops feeding
      at the end, as the relay does, or refuses them, as the decoder does).
    """

    __slots__ = (
        "_failed",
        "_line",
        "_max_line",
        "_max_trailers",
        "_record",
        "_remaining",
        "_section",
        "_state",
        "end",
        "extra",
        "heads",
        "spans",
    )

    def __init__(self, *, spans: bool = True, max_line: int = MAX_SIZE_LINE, max_trailers: int = MAX_TRAILERS) -> None:
        self._record = spans
        self._state = _SIZE
        self._remaining = 0  # _DATA: data bytes of this chunk still to come; _CRLF: bytes of CRLF still to come
        self._line = bytearray()  # a partly received size line
        self._section = bytearray()  # the trailer section so far
        self._max_line = max_line
        self._max_trailers = max_trailers
        self._failed = ""
        self.spans: list[int] = []
        self.heads: list[int] = []
        self.end = 0
        self.extra = b""

    @property
    def done(self) -> bool:
        """The last chunk and its trailers were read: the body is complete."""
        return self._state == _DONE

    def fail(self, message: str, buf: bytes = b"", pos: int = 0) -> NoReturn:
        """Refuse the stream: raise :class:`ChunkedError`, now and on every later feed (a reader's own
        refusal, e.g. bytes after the end where none may follow, goes through here too)."""
        self._failed = message
        self._line = bytearray()
        self._section = bytearray()
        raise ChunkedError(message, buf, pos)

    def feed(self, data: bytes) -> bytes:
        """Parse ``data`` (split anywhere) and return the buffer this call's report indexes (class docstring)."""
        spans: list[int] = []
        heads: list[int] = []
        self.spans = spans
        self.heads = heads
        self.end = 0
        if self._failed:
            raise ChunkedError(self._failed)
        state = self._state
        if state == _DONE:
            self.extra += data
            return data
        if state == _TRAILER:
            self._trailers(data, 0, 0)
            return data
        if self._line:
            data = self._held_line(data)
            if self._line:
                return data  # still no end to the line: nothing parsed
        # The scan is inline (not a method of its own): a call per feed is a measurable share of a watch event.
        record = self._record
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                if record:
                    spans += (pos, pos + take)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state, self._remaining = _CRLF, 2
            elif state == _CRLF:
                # the CRLF after a chunk's data, possibly split over two reads
                expected = b"\r\n"[2 - self._remaining :]
                got = data[pos : pos + self._remaining]
                if got != expected[: len(got)]:
                    self.fail("chunk data not followed by CRLF (longer or shorter than its size)", data, pos)
                pos += len(got)
                self._remaining -= len(got)
                if not self._remaining:
                    self._state = _SIZE
            else:  # _SIZE (_TRAILER and _DONE end the scan)
                newline = data.find(b"\n", pos, pos + self._max_line)
                if newline < 0:
                    if end - pos >= self._max_line:
                        self.fail(f"a chunk-size line longer than the limit ({self._max_line} bytes)", data, pos)
                    self._line = bytearray(data[pos:])
                    self.end = pos
                    return data
                line_end = newline + 1
                match = _SIZE_LINE.fullmatch(data, pos, line_end)
                if match is None:
                    self.fail("a malformed chunk-size line (not HEX [;extensions] CRLF)", data, pos)
                size = int(match.group(1), 16)
                if size > MAX_CHUNK:
                    self.fail(f"a chunk of {size} bytes (more than any client reads)", data, pos)
                if not size:
                    self.end = pos
                    self._trailers(data, line_end, pos)
                    return data
                digits_end = match.end(1)
                if digits_end != line_end - 2 or digits_end - pos > 16:
                    heads += (pos, line_end, size)
                pos = line_end
                self._state, self._remaining = _DATA, size
        self.end = end
        return data

    def _held_line(self, data: bytes) -> bytes:
        """A partial size line was held back: append ``data`` to it, scanning only ``data`` for its end.
        Once it ends, the buffer to parse is the line's start followed by ``data``."""
        line = self._line
        newline = data.find(b"\n", 0, self._max_line - len(line))
        if newline < 0:
            if len(line) + len(data) >= self._max_line:
                self.fail(f"a chunk-size line longer than the limit ({self._max_line} bytes)")
            line += data
            return data
        self._line = bytearray()
        return bytes(line) + data

    def _trailers(self, data: bytes, at: int, fault: int) -> None:
        """After the last chunk: the trailer section from ``data[at:]``, up to and including its empty line
        (checked, dropped). ``fault``: the position a refusal reports (the last chunk's line).

        The section grows in a bytearray and each call scans only what it adds (a hostile server trickling
        its trailers a byte per read costs linear time, not a rescan of the section per byte)."""
        section = self._section
        old = len(section)
        section += memoryview(data)[at:]
        # The section ends with an empty line: CRLF at once (no trailers), or CRLF CRLF after the last one.
        if section[:2] == b"\r\n":
            self._finish(bytes(section[2:]))
            return
        marker = section.find(b"\r\n\r\n", max(0, old - 3))
        if (marker + 4 if marker >= 0 else len(section) + 1) > self._max_trailers:
            self.fail(f"a trailer section longer than the limit ({self._max_trailers} bytes)", data, fault)
        # h11 and Go end a section at LF LF too: with a bare LF, what follows could be the next answer to them
        stop = marker + 2 if marker >= 0 else len(section)
        newline = section.find(b"\n", old, stop)
        while newline >= 0:
            if newline == 0 or section[newline - 1] != 0x0D:
                self.fail("a bare LF in the trailer section", data, fault)
            newline = section.find(b"\n", newline + 1, stop)
        if marker < 0:
            self._state = _TRAILER  # incomplete: kept until its empty line arrives
            return
        for line in bytes(section[:marker]).split(b"\r\n"):
            if _TRAILER_LINE.fullmatch(line) is None:
                self.fail("a malformed trailer line (not an HTTP header field)", data, fault)
        self._finish(bytes(section[marker + 4 :]))

    def _finish(self, rest: bytes) -> None:
        self._state = _DONE
        self._section = bytearray()
        self.extra = rest


class ChunkedDecoder:
    """``feed(framed) -> body``: the chunk data :class:`ChunkedParser` reports, joined. A body is all a
    stream carries: bytes after its end are refused (:class:`ChunkedError`), as is any framing fault."""

    __slots__ = ("_parser",)

    def __init__(self, *, max_line: int = MAX_SIZE_LINE, max_trailers: int = MAX_TRAILERS) -> None:
        self._parser = ChunkedParser(max_line=max_line, max_trailers=max_trailers)

    @property
    def ended(self) -> bool:
        """The last chunk and its trailer section were read."""
        return self._parser.done

    def feed(self, data: bytes) -> bytes:
        parser = self._parser
        try:
            buf = parser.feed(data)
        except ChunkedError as err:
            err.buf = b""  # the error outlives the feed (as a raised error's context): not the read with it
            raise
        if parser.extra:
            parser.fail("data after the end of a chunked body")
        spans = parser.spans
        if len(spans) == 2:  # the usual case: one chunk's data (a watch event) per read
            return buf[spans[0] : spans[1]]
        return b"".join([buf[spans[i] : spans[i + 1]] for i in range(0, len(spans), 2)])
