"""SPDY/3.1 framing for the server side of kubectl's streams (exec and port-forward), sans-IO.

kubectl's SPDY client (client-go over moby/spdystream) opens every stream itself with SYN_STREAM and waits
for our SYN_REPLY before opening the next one; the server never opens streams. So the server needs:
parse SYN_STREAM / DATA / RST_STREAM / PING / GOAWAY / SETTINGS / WINDOW_UPDATE / HEADERS; write SYN_REPLY,
DATA (with FIN), RST_STREAM, PING (echo) and GOAWAY.

Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib-compressed with the SPDY/3 dictionary, one zlib
context per direction for the whole session; each block ends with a sync flush. A block is: number of
pairs, then (name length, name, value length, value) with 32-bit big-endian lengths, names lower-case and
repeated values joined by NUL.

spdystream does no flow control (it ignores WINDOW_UPDATE and SETTINGS), and neither does this module.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_CANCEL = 1, 5
_DATA_CHUNK = 32 * 1024

# The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1) is a protocol constant: the agent's
# exit-code tap defines it, and this fake streams kubectl 1.27-1.33 through it, which is what verifies it.
from agent.forward.exit_spdy import DICTIONARY  # noqa: E402


class SpdyError(Exception):
    """The peer sent something that is not SPDY/3.1 (the session must end)."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: dict[str, list[str]]
    fin: bool


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class Reset:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int


Event = SynStream | Data | Reset | Ping | GoAway


@dataclass
class SpdySession:
    """One server-side SPDY session: feed bytes in, get events out; build frames to send."""

    _buffer: bytearray = field(default_factory=bytearray)
    _inflate: zlib._Decompress = field(default_factory=lambda: zlib.decompressobj(zdict=DICTIONARY))
    _deflate: zlib._Compress = field(
        default_factory=lambda: zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=DICTIONARY)
    )
    max_frame: int = 1 << 20

    def receive_data(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while len(self._buffer) >= 8:
            first, flags_length = struct.unpack_from(">II", self._buffer)
            length = flags_length & 0xFFFFFF
            if length > self.max_frame:
                raise SpdyError(f"a SPDY frame of {length} bytes is larger than {self.max_frame}")
            if len(self._buffer) < 8 + length:
                break
            payload = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            event = self._frame(first, flags_length >> 24, payload)
            if event is not None:
                events.append(event)
        return events

    def _frame(self, first: int, flags: int, payload: bytes) -> Event | None:
        if not first & 0x80000000:
            return Data(first & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN))
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"SPDY version {version} is not supported (only {VERSION})")
        try:
            if kind == SYN_STREAM:
                (stream_id,) = struct.unpack_from(">I", payload)
                return SynStream(stream_id & 0x7FFFFFFF, self._headers(payload[10:]), bool(flags & FLAG_FIN))
            if kind == RST_STREAM:
                stream_id, status = struct.unpack_from(">II", payload)
                return Reset(stream_id & 0x7FFFFFFF, status)
            if kind == PING:
                return Ping(struct.unpack_from(">I", payload)[0])
            if kind == GOAWAY:
                return GoAway(struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF)
            if kind in (SYN_REPLY, HEADERS):
                self._headers(payload[4:])  # keeps the shared inflate context in step
        except struct.error as exc:
            raise SpdyError(f"a truncated SPDY control frame of type {kind}") from exc
        return None  # SETTINGS, WINDOW_UPDATE, ... carry nothing the fake acts on

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(block)
        except zlib.error as exc:
            raise SpdyError(f"a SPDY header block does not inflate: {exc}") from exc
        try:
            (count,) = struct.unpack_from(">I", raw)
            offset = 4
            headers: dict[str, list[str]] = {}
            for _ in range(count):
                (size,) = struct.unpack_from(">I", raw, offset)
                name = raw[offset + 4 : offset + 4 + size].decode("latin-1")
                offset += 4 + size
                (size,) = struct.unpack_from(">I", raw, offset)
                value = raw[offset + 4 : offset + 4 + size].decode("latin-1")
                offset += 4 + size
                headers.setdefault(name, []).extend(value.split("\0"))
        except struct.error as exc:
            raise SpdyError("a truncated SPDY header block") from exc
        return headers

    # ------------------------------------------------------------------------------------------ writing

    def _control(self, kind: int, flags: int, payload: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload

    def _block(self, headers: dict[str, list[str]]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, values in headers.items():
            encoded_name, value = name.lower().encode("latin-1"), "\0".join(values).encode("latin-1")
            raw += struct.pack(">I", len(encoded_name)) + encoded_name + struct.pack(">I", len(value)) + value
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_reply(self, stream_id: int, headers: dict[str, list[str]] | None = None, *, fin: bool = False) -> bytes:
        payload = struct.pack(">I", stream_id) + self._block(headers or {})
        return self._control(SYN_REPLY, FLAG_FIN if fin else 0, payload)

    def data(self, stream_id: int, data: bytes, *, fin: bool = False) -> bytes:
        frames = b""
        for start in range(0, len(data), _DATA_CHUNK):
            chunk = data[start : start + _DATA_CHUNK]
            last = start + _DATA_CHUNK >= len(data)
            frames += struct.pack(">II", stream_id, ((FLAG_FIN if fin and last else 0) << 24) | len(chunk)) + chunk
        if not data:
            frames = struct.pack(">II", stream_id, (FLAG_FIN if fin else 0) << 24)
        return frames

    def reset(self, stream_id: int, status: int = RST_CANCEL) -> bytes:
        return self._control(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return self._control(PING, 0, struct.pack(">I", ping_id))

    def goaway(self, last_stream_id: int) -> bytes:
        return self._control(GOAWAY, 0, struct.pack(">II", last_stream_id, 0))
