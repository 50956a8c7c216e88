"""The front door's only look at HTTP: the first request head of a kubectl connection, and error answers.

Pure (sans-IO). The front door routes a whole kubectl TCP connection by its first request, then only moves
bytes (the agent parses every request, including that first one, again). :class:`FirstHead` is fed what the
connection delivers and says when the first request head is complete; it keeps every byte it was fed, so
the exact bytes kubectl sent (head, and whatever followed it in the same reads) are forwarded unchanged.

Parsing is h11's (the agent's forwarder parses with h11 too, so both hops read the same head the same way):
a malformed request line or header, a missing Host on HTTP/1.1, conflicting framing headers, or a head
larger than ``max_bytes`` raise a :class:`~registry.core.errors.KubeportError` (400, or 431 for the size:
:class:`HeadTooLarge`) whose ``to_status()`` is what kubectl is told.

:func:`error_response` renders any such error as a complete HTTP/1.1 response: the Kubernetes ``Status``
JSON (so kubectl prints ``Error from server (NotFound): ...``) with ``Connection: close``. It has no Date
or other varying header, so two answers for the same error are byte-identical (a hidden cluster answers
exactly like a missing one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus

import h11

from registry.core.errors import BadParameter, KubeportError

MAX_HEAD_BYTES = 64 * 1024
_BLANK_LINE = re.compile(rb"\n\r?\n")  # where h11 ends a head (it accepts bare LF line ends too)
_MAX_DETAIL = 160  # characters of h11's complaint echoed back (it may quote the peer's bytes)


class HeadTooLarge(KubeportError):
    code = 431
    reason = "RequestHeaderFieldsTooLarge"


class RequestTimeout(KubeportError):
    code = 408
    reason = "Timeout"


@dataclass(frozen=True)
class Head:
    """A complete first request head, and every byte received so far (``raw`` starts with the head)."""

    method: bytes
    target: bytes  # the raw request target, before any percent-decoding
    http_version: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased by h11, values as sent, order kept
    raw: bytes


class FirstHead:
    """Accumulates a connection's first bytes until the first request head is complete (module docstring)."""

    def __init__(self, max_bytes: int = MAX_HEAD_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise BadParameter(f"max_bytes must be a positive integer (got {max_bytes!r})")
        self.max_bytes = max_bytes
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
        self._chunks: list[bytes] = []
        self.received = 0

    @property
    def received_any(self) -> bool:
        return self.received > 0

    def feed(self, data: bytes | bytearray) -> Head | None:
        """Add ``data`` (``b""`` = the peer closed); the head once it is complete, else None.

        Raises :class:`HeadTooLarge` when ``max_bytes`` arrived without the end of the head, BadParameter
        for anything h11 refuses or a connection that closed mid-head.
        """
        if data:
            self._chunks.append(bytes(data))
            self.received += len(data)
        try:
            self._conn.receive_data(bytes(data))
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431 or self.received > self.max_bytes:
                raise HeadTooLarge(
                    f"the request head is larger than {self.max_bytes} bytes (or its end never came)"
                ) from None
            raise BadParameter(f"malformed HTTP request: {str(exc)[:_MAX_DETAIL]}") from None
        if event is h11.NEED_DATA:
            if self.received > self.max_bytes:  # h11 checks its buffer; this also bounds what we keep
                raise HeadTooLarge(f"the request head is larger than {self.max_bytes} bytes (or its end never came)")
            return None
        if isinstance(event, h11.Request):
            raw = b"".join(self._chunks)
            # h11 bounds only an INCOMPLETE head: one that arrived whole in a single read may be larger.
            end = _BLANK_LINE.search(raw)
            if end is None or end.end() > self.max_bytes:
                raise HeadTooLarge(f"the request head is larger than {self.max_bytes} bytes")
            if event.http_version not in (b"1.0", b"1.1"):  # h11 reads any HTTP/x.y; an h2 preface is not HTTP/1
                raise BadParameter(f"HTTP/{event.http_version.decode('ascii', 'replace')[:8]} is not supported here")
            return Head(
                method=bytes(event.method),
                target=bytes(event.target),
                http_version=bytes(event.http_version),
                headers=tuple((bytes(name), bytes(value)) for name, value in event.headers),
                raw=raw,
            )
        if isinstance(event, h11.ConnectionClosed):
            raise BadParameter("the connection closed before a request head was sent")
        raise BadParameter(f"unexpected HTTP event {type(event).__name__}")  # pragma: no cover (h11 server)


def error_response(err: KubeportError) -> bytes:
    """A complete HTTP/1.1 response carrying ``err.to_status()`` as JSON, closing the connection."""
    body = json.dumps(err.to_status(), separators=(",", ":")).encode("utf-8")
    try:
        phrase = HTTPStatus(err.code).phrase
    except ValueError:
        phrase = "Error"
    head = (
        f"HTTP/1.1 {err.code} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body
