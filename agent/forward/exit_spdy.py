"""The exit status of an exec/attach session over SPDY/3.1 (kubectl 1.27-1.29, and the 1.30+ fallback), read
passively from both directions of the splice. Sans-IO; the WebSocket counterpart is
:mod:`agent.forward.exit_status`, whose :class:`~agent.forward.exit_status.ExitStatus` and Status decoding
this shares.

kubectl opens one SPDY stream per channel with a SYN_STREAM whose ``streamtype`` header says which; the
kubelet writes the final ``Status`` (stream protocol ``v4.channel.k8s.io``) as DATA on the ``error`` stream
and ends it with FIN. So the tap reads the client's SYN_STREAM header blocks (zlib with the SPDY/3
dictionary and one inflate context for the whole direction, which is why every header block the client
sends must be inflated, in order, until the error stream is known) and then the server's DATA frames of
that one stream.

Invariants, as for the WebSocket tap: the bytes are never changed (the tap sees copies); memory is bounded
(a control frame's payload up to :data:`MAX_CONTROL_BYTES`, an inflated header block up to
:data:`MAX_HEADER_BYTES`, the status up to ``MAX_STATUS_BYTES``; every other payload, stdin and stdout
included, is skipped by counting, never held); anything odd gives up with a reason, never a guess; once
done, feeding costs nothing.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from agent.forward.exit_status import MAX_STATUS_BYTES, ExitStatus, exit_status

MAX_CONTROL_BYTES = 64 * 1024  # a SYN_STREAM of kubectl's is ~100 bytes
MAX_HEADER_BYTES = 64 * 1024
SPDY_VERSION = 3
SYN_STREAM, HEADERS, SYN_REPLY = 1, 8, 2
FLAG_FIN = 0x01
STATUS_PROTOCOLS = frozenset({"v4.channel.k8s.io", "v5.channel.k8s.io"})  # earlier ones send plain text

_WORD_LIST = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges "
    "age allow authorization cache-control connection content-base content-encoding content-language "
    "content-length content-location content-md5 content-range content-type date etag expect expires from host "
    "if-match if-modified-since if-none-match if-range if-unmodified-since last-modified location max-forwards "
    "pragma proxy-authenticate proxy-authorization range referer retry-after server te trailer "
    "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status"
)
_WORDS = (*_WORD_LIST.split(), "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin")
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-prefixed words, then text.
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


OnControl = Callable[[int, int, bytes], None]  # (control type, flags, payload)
OnData = Callable[[int, memoryview, bool], None]  # (stream id, payload bytes, FIN on the frame's last bytes)


class _GiveUp(Exception):
    pass


class _Frames:
    """Walks SPDY frames in one direction: control frames whole (bounded), DATA payloads as they pass."""

    def __init__(self, keep: frozenset[int]) -> None:
        self._keep = keep  # the control frame types whose payload is collected; others are skipped
        self._head = bytearray()  # the 8-byte frame header being read
        self._control: bytearray | None = None  # the control payload being read (None: skipped)
        self._remaining = 0  # payload bytes of the current frame still to come
        self._kind: int | None = None  # control type of the current frame, None for DATA
        self._stream = 0
        self._flags = 0

    def feed(self, data: memoryview, on_control: OnControl, on_data: OnData) -> None:
        offset = 0
        while offset < len(data):
            if self._remaining == 0 and len(self._head) < 8:
                take = min(8 - len(self._head), len(data) - offset)
                self._head += data[offset : offset + take]
                offset += take
                if len(self._head) < 8:
                    return
                self._start(on_control, on_data)
                continue
            take = min(self._remaining, len(data) - offset)
            chunk = data[offset : offset + take]
            offset += take
            self._remaining -= take
            fin = self._remaining == 0
            if self._kind is None:
                on_data(self._stream, chunk, fin and bool(self._flags & FLAG_FIN))
            elif self._control is not None:
                self._control += chunk
                if fin:
                    on_control(self._kind, self._flags, bytes(self._control))
            if fin:
                self._head.clear()

    def _start(self, on_control: OnControl, on_data: OnData) -> None:
        first, flags_length = struct.unpack(">II", self._head)
        self._flags, self._remaining = flags_length >> 24, flags_length & 0xFFFFFF
        self._control = None
        if first & 0x80000000:
            if (first >> 16) & 0x7FFF != SPDY_VERSION:
                raise _GiveUp("not SPDY/3")
            self._kind = first & 0xFFFF
            if self._kind in self._keep:
                if self._remaining > MAX_CONTROL_BYTES:
                    raise _GiveUp(f"a SPDY control frame is longer than {MAX_CONTROL_BYTES} bytes")
                self._control = bytearray()
        else:
            self._kind, self._stream = None, first & 0x7FFFFFFF
        if self._remaining == 0:
            if self._kind is None:
                on_data(self._stream, memoryview(b""), bool(self._flags & FLAG_FIN))
            elif self._control is not None:
                on_control(self._kind, self._flags, b"")
            self._head.clear()


class SpdyExitTap:
    """Finds the exit status of a SPDY exec/attach session; feed the client's bytes with
    :meth:`feed_client` (before or as they go upstream) and the server's with :meth:`feed_server`."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._client = _Frames(keep=frozenset({SYN_STREAM, HEADERS}))  # their blocks share one inflate context
        self._server = _Frames(keep=frozenset())
        self._error_stream: int | None = None
        self._status = bytearray()
        self._result: ExitStatus | None = None

    @property
    def wants_data(self) -> bool:
        return self._result is None

    @property
    def wants_client_data(self) -> bool:
        """False once the error stream is known: the client's bytes hold nothing more the tap needs."""
        return self._result is None and self._error_stream is None

    def feed_client(self, data: bytes | bytearray | memoryview) -> None:
        if self.wants_client_data and data:
            self._guarded(lambda: self._client.feed(memoryview(data), self._client_control, _ignore_data))

    def feed_server(self, data: bytes | bytearray | memoryview) -> None:
        if self._result is None and data:
            self._guarded(lambda: self._server.feed(memoryview(data), _ignore_control, self._server_data))

    def result(self) -> ExitStatus:
        if self._result is not None:
            return self._result
        return ExitStatus(None, "the session ended before its exit status arrived")

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except _GiveUp as exc:
            self._give_up(f"the SPDY stream could not be decoded: {exc}")
        except (struct.error, zlib.error, ValueError):
            self._give_up("the SPDY stream could not be decoded")
        except Exception as exc:  # a passive tap must never break the session it watches
            self._give_up(f"the SPDY stream could not be decoded (unexpected {type(exc).__name__})")

    def _give_up(self, reason: str) -> None:
        self._result = ExitStatus(None, reason)
        self._status = bytearray()

    def _client_control(self, kind: int, flags: int, payload: bytes) -> None:
        if kind not in (SYN_STREAM, HEADERS):
            return
        stream = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
        headers = self._headers(payload[10:] if kind == SYN_STREAM else payload[4:])
        if kind == SYN_STREAM and headers.get("streamtype") == "error":
            self._error_stream = stream

    def _headers(self, block: bytes) -> dict[str, str]:
        raw = self._inflate.decompress(block, MAX_HEADER_BYTES)
        if self._inflate.unconsumed_tail:
            raise _GiveUp(f"a header block inflates to more than {MAX_HEADER_BYTES} bytes")
        (count,) = struct.unpack_from(">I", raw)
        offset, headers = 4, {}  # a name repeated keeps its last value: only streamtype matters
        for _ in range(min(count, 1024)):
            (size,) = struct.unpack_from(">I", raw, offset)
            name = raw[offset + 4 : offset + 4 + size].decode("latin-1").lower()
            offset += 4 + size
            (size,) = struct.unpack_from(">I", raw, offset)
            headers[name] = raw[offset + 4 : offset + 4 + size].decode("latin-1")
            offset += 4 + size
        return headers

    def _server_data(self, stream: int, data: memoryview, fin: bool) -> None:
        if self._error_stream is None or stream != self._error_stream:
            return
        if len(self._status) + len(data) > MAX_STATUS_BYTES:
            raise _GiveUp(f"the error stream's message is longer than {MAX_STATUS_BYTES} bytes")
        self._status += data
        if fin:
            if self._status:
                self._result = exit_status(bytes(self._status))
            else:
                self._result = ExitStatus(None, "the error stream ended empty")
            self._status = bytearray()


def _ignore_control(kind: int, flags: int, payload: bytes) -> None:
    return None


def _ignore_data(stream: int, data: memoryview, fin: bool) -> None:
    return None
