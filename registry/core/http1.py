"""HTTP/1.1 on one side of a connection, sans-IO: message heads parsed by httptools (llhttp), bodies framed here.

:class:`Reader` turns received bytes into events, one message at a time: a :class:`Head` (a request's or a
response's), body data (``bytes``), :data:`END` (the message is complete), and at the end :data:`CLOSED`.
:data:`NEED_DATA` says more bytes must be fed; :data:`PAUSED` says the message ended and the reader waits
for :meth:`Reader.next_cycle` (the answer first): bytes after a message (pipelined requests, or what follows
an upgrade request) stay in :attr:`Reader.buffer`, unparsed, for the next message or for the upgraded
protocol. The serializers (:func:`request_head`, :func:`response_head`, :func:`chunk`) are plain byte joins.

Why httptools: a kubectl request head costs ~2 us through llhttp against ~30 us through h11, and the
agent's forwarder parses two heads per request (kubectl's and the API server's answer). Only the head goes
through llhttp; body framing is this module's (Content-Length counted, chunked framing by
:class:`registry.core.chunked.ChunkedParser`, the project's one chunked parser), so where a message ends is
decided by the same rules on every path.

The rules (h11's, which this replaces in the forwarder; some are stricter than llhttp's defaults, so each is
checked here as well as by llhttp, and tests/core/test_http1.py holds one hostile input per rule):

- A head ends at the first CRLF CRLF; every line ends with CRLF (a bare CR or LF anywhere is refused), no
  obs-fold, header names are tokens, values hold no control byte but HTAB (obs-text is allowed, as h11).
  Leading empty lines before a request line are skipped (RFC 9112 §2.2).
- A head longer than ``max_head`` is refused (:class:`HTTPError` with status 431) before it is buffered
  past that size.
- Only HTTP/1.0 and HTTP/1.1. HTTP/1.0 is never kept alive (as h11); ``Connection: close`` ends keep-alive.
  A request has one ``Host`` header (HTTP/1.1: exactly one, RFC 9112 §3.2; as h11).
- Framing: ``Content-Length`` at most once, digits only; ``Transfer-Encoding`` at most once and exactly
  ``chunked``; never both. Chunk sizes, extensions and trailers as :mod:`registry.core.chunked`.
- A response to HEAD, a 1xx, 204 or 304 has no body; a response without framing headers is read until
  the connection closes. A request without framing headers has no body.
- An upgrade request (``Connection: upgrade`` and ``Upgrade``, llhttp's rule and the header rules' in
  :mod:`registry.core.kube_headers`) is a message like another; after it nothing is parsed until
  :meth:`Reader.next_cycle` (the answer was not 101) -- after a 101 the buffer is the upgraded protocol's.

Invariants: after an :class:`HTTPError` every call raises it again (the connection's framing cannot be
trusted any more); the buffer never holds more than ``max_head`` bytes of an unfinished head (a body's bytes
are handed out as they arrive, never collected); error messages never quote the bytes (they may carry a
secret and reach logs and audit records).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import httptools

from registry.core.chunked import ChunkedError, ChunkedParser

__all__ = [
    "CLOSED",
    "END",
    "NEED_DATA",
    "PAUSED",
    "Event",
    "HTTPError",
    "Head",
    "Reader",
    "check_headers",
    "chunk",
    "header_block",
    "response_head",
]


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")
END: Final = _Sentinel("END")
PAUSED: Final = _Sentinel("PAUSED")
CLOSED: Final = _Sentinel("CLOSED")

LAST_CHUNK: Final = b"0\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value (h11's field_value): visible ASCII, obs-text, SP and HTAB inside; no other control byte.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_OWS = b" \t"
# Checked over a whole head at once (a few scans in C, not one per line; llhttp refuses all of these too,
# this is the second lock): a control byte other than HTAB, CR and LF; a CR or LF not in a CRLF; a header
# line that does not start with a token and a colon (obs-fold, whitespace before the colon, a bad name).
_CONTROL = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_LINE_START = re.compile(rb"\r\n(?!\Z|[!#$%&'*+\-.^_`|~0-9A-Za-z]+:)")
# A line whose name decides framing or keep-alive: only a head with one needs its lines looked at one by one.
_FRAMING_LINE = re.compile(rb"\n(?:content-length|transfer-encoding|connection):", re.IGNORECASE)
_HOST_LINE = re.compile(rb"\nhost:", re.IGNORECASE)
_NO_BODY_STATUS = frozenset({204, 304})


class HTTPError(Exception):
    """The peer broke HTTP/1.1 framing (``status``: 400, or 431 for a head too large). Never quotes bytes."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class Head:
    """A message head. ``method``/``target`` for a request, ``status``/``reason`` for a response;
    ``headers``: the lines as sent (names as written, values without surrounding whitespace)."""

    method: bytes
    target: bytes
    status: int
    reason: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: list[tuple[bytes, bytes]]
    length: int | None  # the declared Content-Length
    chunked: bool
    keep_alive: bool
    upgrade: bool  # a request asking to switch protocols (llhttp's flag: Connection: upgrade + Upgrade)


Event = Head | bytes | _Sentinel


class _Collect:
    """httptools' callbacks: the pieces of one head (a piece may come in several calls when the head
    arrives in several reads)."""

    __slots__ = ("complete", "headers", "reason", "url")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
_HEAD, _BODY, _DONE, _FAILED = range(4)


class Reader:
    """The messages one peer sends on a connection (module docstring). ``response``: this reads the
    answers of a server (set :attr:`request_method` before each answer: a HEAD's has no body)."""

    __slots__ = (
        "_body",
        "_chunks",
        "_collect",
        "_error",
        "_fed",
        "_keep_alive",
        "_parser",
        "_remaining",
        "_state",
        "buffer",
        "eof",
        "max_head",
        "request_method",
        "response",
    )

    def __init__(self, *, response: bool = False, max_head: int = 64 * 1024) -> None:
        self.response = response
        self.max_head = max_head
        self.buffer = b""  # received and not yet handed out
        self.eof = False
        self.request_method = b"GET"
        self._state = _HEAD
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self._collect: _Collect | None = None
        self._fed = 0  # bytes of ``buffer`` the current head's parser has seen
        self._body = _NONE
        self._remaining = 0
        self._chunks: ChunkedParser | None = None
        self._keep_alive = True
        self._error: HTTPError | None = None

    # -- feeding ---------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes received from the peer; ``b""``: the peer closed its side."""
        if not data:
            self.eof = True
        elif self.buffer:
            self.buffer += data
        else:
            self.buffer = data

    def take_buffer(self) -> bytes:
        """The bytes received and not handed out (after a 101: the upgraded protocol's; for a body the
        caller reads itself, see :meth:`raw_body`), emptied."""
        data, self.buffer = self.buffer, b""
        return data

    @property
    def keep_alive(self) -> bool:
        """The last message allows another after it (HTTP/1.1 without ``Connection: close``)."""
        return self._keep_alive

    @property
    def done(self) -> bool:
        """The current message is complete (waiting for :meth:`next_cycle`)."""
        return self._state == _DONE

    @property
    def in_body(self) -> bool:
        return self._state == _BODY

    def raw_body(self) -> None:
        """The caller reads the current body's bytes itself (a verbatim relay): this reader is done with
        the message, and is reusable only through a fresh :class:`Reader`."""
        self._state = _DONE
        self._keep_alive = False

    def next_cycle(self) -> None:
        """The answer to the message is complete: the next message may be read."""
        if self._state == _FAILED:
            assert self._error is not None
            raise self._error
        if self._state != _DONE:
            raise RuntimeError("next_cycle before the message ended")
        self._state = _HEAD

    # -- events ----------------------------------------------------------------------------------------

    def next_event(self) -> Event:
        state = self._state
        if state == _BODY:
            return self._body_event()
        if state == _HEAD:
            return self._head_event()
        if state == _DONE:
            return PAUSED
        assert self._error is not None
        raise self._error

    def _fail(self, message: str, status: int = 400) -> HTTPError:
        self._state = _FAILED
        self._error = HTTPError(message, status)
        self._parser = self._collect = None
        self._chunks = None
        return self._error

    def _head_event(self) -> Event:
        buf = self.buffer
        if not self.response and buf[:1] == b"\r" and self._fed == 0:
            while buf[:2] == b"\r\n":  # empty lines before a request line (RFC 9112 §2.2)
                buf = buf[2:]
            self.buffer = buf
        if not buf:
            if self.eof:
                self._state = _DONE
                self._keep_alive = False
                return CLOSED
            return NEED_DATA
        fed = self._fed
        end = buf.find(b"\r\n\r\n", fed - 3 if fed > 3 else 0)
        if end < 0 or end + 4 > self.max_head:
            if len(buf) >= self.max_head or end >= 0:
                raise self._fail("the message head is too large", 431)
            if self.eof:
                raise self._fail("the connection closed inside a message head")
            self._parse(buf if fed == 0 else buf[fed:])  # llhttp refuses a bad line as soon as it arrives
            self._fed = len(buf)
            return NEED_DATA
        end += 4
        self._parse(buf[fed:end] if fed or end != len(buf) else buf)
        collect = self._collect
        parser = self._parser
        self._parser = self._collect = None
        self._fed = 0
        if collect is None or parser is None or not collect.complete:
            raise self._fail("malformed message head")
        head = self._head(parser, collect, buf, end)
        self.buffer = buf[end:]
        self._keep_alive = head.keep_alive
        self._state = _BODY  # END comes next when there is no body
        if self._body == _CHUNKED:
            self._chunks = ChunkedParser()
        return head

    def _parse(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self._collect = _Collect()
            parser = self._parser = (
                httptools.HttpResponseParser(self._collect)
                if self.response
                else httptools.HttpRequestParser(self._collect)
            )
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # an upgrade request's head, complete: what follows is the caller's business
        except httptools.HttpParserError:
            raise self._fail("malformed message head") from None

    def _head(
        self,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        collect: _Collect,
        buf: bytes,
        end: int,
    ) -> Head:
        """The :class:`Head` llhttp read from ``buf[:end]``, once this module's own checks passed."""
        version = parser.get_http_version().encode("ascii")
        if version not in (b"1.1", b"1.0"):
            raise self._fail("unsupported HTTP version")
        head = buf if end == len(buf) else buf[:end]
        lf = head.count(b"\n")
        if (
            len(head.translate(None, _CONTROL)) != end
            or head.count(b"\r") != lf
            or head.count(b"\r\n") != lf
            or _LINE_START.search(head, 0, end - 2)  # (up to the last header line's CRLF)
        ):
            raise self._fail("a bare CR or LF, a control character, a bad name or obs-fold in the head")
        length: int | None = None
        chunked = False
        close = False
        framing = collect.headers if _FRAMING_LINE.search(head) else ()
        for name, value in framing:
            lowered = name.lower()
            if lowered == b"content-length":
                digits = value.strip(_OWS)
                if length is not None or not digits.isdigit() or len(digits) > 18:
                    raise self._fail("a duplicate or invalid Content-Length")
                length = int(digits)
            elif lowered == b"transfer-encoding":
                if chunked or value.strip(_OWS).lower() != b"chunked":
                    raise self._fail("only one Transfer-Encoding: chunked is supported")
                chunked = True
            elif lowered == b"connection" and b"close" in value.lower():
                close = close or any(t.strip(_OWS).lower() == b"close" for t in value.split(b","))
        if chunked and length is not None:
            raise self._fail("both Content-Length and Transfer-Encoding")
        headers = collect.headers  # llhttp strips the whitespace before a value, not after it
        if b" \r\n" in head or b"\t\r\n" in head:
            headers = [(n, v.rstrip(_OWS)) for n, v in headers]
        if self.response:
            status = parser.get_status_code()  # type: ignore[union-attr]
            method, target, reason = b"", b"", collect.reason
            upgrade = False
            if self.request_method == b"HEAD" or status < 200 or status in _NO_BODY_STATUS:
                self._body = _NONE
            elif chunked:
                self._body = _CHUNKED
            elif length is not None:
                self._body, self._remaining = (_LENGTH, length) if length else (_NONE, 0)
            else:
                self._body, close = _UNTIL_CLOSE, True
        else:
            status, reason = 0, b""
            method = parser.get_method()  # type: ignore[union-attr]
            target = collect.url
            # Exactly METHOD SP target SP HTTP/x.y, as h11 reads it (llhttp lets extra spaces through).
            if not target or head[: head.find(b"\r\n")] != b"%s %s HTTP/%s" % (method, target, version):
                raise self._fail("malformed request line")
            hosts = len(_HOST_LINE.findall(head))
            if hosts > 1 or (hosts == 0 and version == b"1.1"):
                raise self._fail("an HTTP/1.1 request needs exactly one Host header")
            upgrade = parser.should_upgrade()
            if chunked:
                self._body = _CHUNKED
            else:
                self._body, self._remaining = (_LENGTH, length) if length else (_NONE, 0)
        keep_alive = version == b"1.1" and not close
        return Head(method, target, status, reason, version, headers, length, chunked, keep_alive, upgrade)

    def _body_event(self) -> Event:
        kind = self._body
        if kind == _NONE:  # no body, or its last bytes went out with the previous event
            self._state = _DONE
            return END
        buf = self.buffer
        if not buf:
            if not self.eof:
                return NEED_DATA
            if kind != _UNTIL_CLOSE:
                raise self._fail("the connection closed inside a message body")
            self._body = _NONE
            return self._body_event()
        if kind == _LENGTH:
            remaining = self._remaining
            if len(buf) < remaining:
                self.buffer = b""
                self._remaining = remaining - len(buf)
                return buf
            self.buffer = buf[remaining:] if len(buf) > remaining else b""
            self._body = _NONE
            return buf if len(buf) == remaining else buf[:remaining]
        if kind == _UNTIL_CLOSE:
            self.buffer = b""
            return buf
        chunks = self._chunks
        assert chunks is not None
        self.buffer = b""
        try:
            data = chunks.feed(buf)
        except ChunkedError:
            raise self._fail("malformed chunked body") from None
        if chunks.done:
            self.buffer = chunks.extra
            self._body = _NONE
            self._chunks = None
        spans = chunks.spans
        if len(spans) == 2 and spans[1] > spans[0]:
            return data[spans[0] : spans[1]]
        body = b"".join([data[spans[i] : spans[i + 1]] for i in range(0, len(spans), 2)])
        if body:
            return body
        return self._body_event() if self._body == _NONE else NEED_DATA


def check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse header lines that could not be sent as they are (a name not a token, a control byte in a
    value): :class:`HTTPError`. For lines built from elsewhere (an HTTP/2 answer, a kubeconfig's token)."""
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise HTTPError("a header line that cannot be sent")


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``Name: value CRLF`` lines (unchecked: see :func:`check_headers`)."""
    return b"".join([b"%s: %s\r\n" % pair for pair in headers])


def request_head(method: bytes, target: bytes, block: bytes) -> bytes:
    """A request head from a :func:`header_block`."""
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, block)


def response_head(status: int, reason: bytes, block: bytes) -> bytes:
    """A response head from a :func:`header_block`."""
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, block)


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (empty data: nothing; the last chunk is LAST_CHUNK)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
