"""HTTP/1.1 chunked transfer coding, decoding side, sans-IO: framed bytes in, body bytes out.

The registry client reads a watch stream's body through this instead of a full HTTP client stack (one
event is one chunk, and a stack of readers per chunk cost more than the event's JSON). It knows the
framing of RFC 9112 §7.1 and nothing else: what the body means is :mod:`registry.core.watch`'s business.

Invariants:
- ``feed`` accepts the framed bytes split anywhere (one byte at a time, several chunks at once) and returns
  exactly the body bytes they complete, in order; ``ended`` turns true after the last chunk and its
  trailer section.
- Memory stays bounded whatever the peer sends: a chunk-size line (with its extensions) longer than
  :data:`MAX_SIZE_LINE` bytes, or a trailer section longer than :data:`MAX_TRAILERS`, is refused before the
  line ends; a chunk's data is passed through as it arrives, never buffered to its announced size.
- Anything that is not the framing (a size that is not 1 to 16 hex digits, data not followed by CRLF,
  bytes after the end, a feed after a failure) raises :class:`ChunkedError`, a ``ConnectionProblem``: the
  stream is broken. After one, every feed raises it again.
"""

from __future__ import annotations

from registry.core.errors import ConnectionProblem

MAX_SIZE_LINE = 1024  # chunk size plus any extensions; ours are "<hex>\r\n"
MAX_TRAILERS = 8 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")

_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class ChunkedError(ConnectionProblem):
    """The bytes are not chunked framing: the stream is broken (reconnect and resume)."""


class ChunkedDecoder:
    """``feed(framed) -> body``: see the module docstring."""

    def __init__(self) -> None:
        self._state = _SIZE
        self._line = bytearray()  # a partial size or trailer line
        self._left = 0  # data bytes still due in the current chunk
        self._trailers = 0
        self._failed: ChunkedError | None = None

    @property
    def ended(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except ChunkedError as err:
            self._failed = err
            self._line = bytearray()
            raise

    def _feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            state = self._state
            if state == _DATA:
                take = min(self._left, size - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
            elif state != _DONE:  # a size line, the CRLF after data, or a trailer line
                end = data.find(b"\n", pos)
                stop = size if end < 0 else end + 1
                self._line += data[pos:stop]
                pos = stop
                limit = MAX_SIZE_LINE if state != _TRAILERS else MAX_TRAILERS - self._trailers
                if len(self._line) > limit:
                    raise ChunkedError("a chunked framing line longer than the limit")
                if end < 0:
                    break
                line, self._line = bytes(self._line), bytearray()
                if not line.endswith(b"\r\n"):
                    raise ChunkedError("a chunked framing line not ended by CRLF")
                self._line_done(line[:-2])
            else:
                raise ChunkedError("data after the end of a chunked body")
        return b"".join(out) if len(out) != 1 else out[0]

    def _line_done(self, line: bytes) -> None:
        if self._state == _DATA_END:
            if line:
                raise ChunkedError("chunk data longer than its size")
            self._state = _SIZE
        elif self._state == _SIZE:
            digits = line.split(b";", 1)[0].rstrip(b" \t")
            if not 0 < len(digits) <= 16 or not _HEX.issuperset(digits):
                raise ChunkedError("a chunk size that is not 1 to 16 hex digits")
            self._left = int(digits, 16)
            self._state = _DATA if self._left else _TRAILERS
        else:  # a trailer field (ignored) or the empty line that ends the message
            self._trailers += len(line) + 2
            if not line:
                self._state = _DONE
