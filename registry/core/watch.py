"""The watch stream's protocol, sans-IO (h11 style): typed events, one encoder, one incremental decoder.

``GET /v1/watch`` answers newline-delimited JSON, one event per line::

    {"type":"INIT","revision":N}                                    first line: watching after revision N
    {"type":"PUT","revision":N,"kind":K,"name":X,"resource":{...}}  a write (the new version)
    {"type":"DELETE","revision":N,"kind":K,"name":X,"resource":{...}}  a delete (the last version)
    {"type":"BOOKMARK","revision":N}                                nothing happened up to N (keep-alive)
    {"type":"ERROR","status":{...Status...}}                        the last line: why the stream ends

This module is the only place that knows that format: the registry's producer encodes with
:func:`encode_line`, and the client decodes with :class:`WatchDecoder`; the agent only sees the event
classes. Nothing here does I/O, so every edge (split chunks, hostile lines) is a unit test.

Invariants:
- ``encode_line`` output is byte-compatible with what the registry always sent: compact JSON, the keys in
  the order above, one ``\\n`` at the end.
- The decoder never raises anything but :class:`WatchProtocolError` (a ``ConnectionProblem``: the stream is
  broken, reconnect and resume) for what the peer sends, whatever it sends; after one, it stays failed.
- A line longer than ``max_line_bytes`` is refused as soon as the buffer exceeds it (memory stays bounded
  even if the newline never comes).
- Events of an unknown ``type`` are skipped (counted in ``skipped``): a newer registry may add types.
  Known types with a missing or wrongly typed field are protocol errors, never half-filled events.
- Blank lines are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast

from registry.core.errors import ConnectionProblem
from registry.core.wire import ResourceBody, StatusBody

# A kube_cluster carries its kubeconfig (base64) in the watch line; request bodies are capped at 2 MiB.
MAX_LINE_BYTES = 16 << 20

EventType = Literal["INIT", "PUT", "DELETE", "BOOKMARK", "ERROR"]


@dataclass(frozen=True)
class Init:
    """The stream is open and follows the store after ``revision``."""

    revision: int


@dataclass(frozen=True)
class Put:
    """A resource was created or replaced at ``revision``; ``resource`` is its new version (raw wire)."""

    revision: int
    kind: str
    name: str
    resource: ResourceBody


@dataclass(frozen=True)
class Delete:
    """A resource was deleted at ``revision``; ``resource`` is its last version (raw wire)."""

    revision: int
    kind: str
    name: str
    resource: ResourceBody


@dataclass(frozen=True)
class Bookmark:
    """Nothing this stream follows changed up to ``revision`` (sent after a quiet interval)."""

    revision: int


@dataclass(frozen=True)
class Error:
    """The stream ends: ``status`` says why (``Expired``/410: relist, then watch from the list's revision)."""

    status: StatusBody


WatchEvent = Init | Put | Delete | Bookmark | Error
ResourceEvent = Put | Delete


class WatchProtocolError(ConnectionProblem):
    """The peer sent something that is not a watch event: the stream is broken (reconnect and resume)."""


def encode_line(event: WatchEvent) -> bytes:
    """One event as its wire line (compact JSON and ``\\n``)."""
    obj: dict[str, Any]
    match event:
        case Init(revision=revision):
            obj = {"type": "INIT", "revision": revision}
        case Bookmark(revision=revision):
            obj = {"type": "BOOKMARK", "revision": revision}
        case Put() | Delete():
            obj = {
                "type": "PUT" if isinstance(event, Put) else "DELETE",
                "revision": event.revision,
                "kind": event.kind,
                "name": event.name,
                "resource": event.resource,
            }
        case Error(status=status):
            obj = {"type": "ERROR", "status": status}
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _revision(obj: dict[str, Any], kind: str) -> int:
    value = obj.get("revision")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WatchProtocolError(f"a {kind} watch event without a valid revision (got {_short(value)})")
    return value


def _text(obj: dict[str, Any], key: str, kind: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise WatchProtocolError(f"a {kind} watch event whose {key} is not a string (got {_short(value)})")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_event(obj: object) -> WatchEvent | None:
    """One decoded JSON value as an event; None for an unknown type (skip it). Raises WatchProtocolError."""
    if not isinstance(obj, dict):
        raise WatchProtocolError(f"a watch event that is not a JSON object (got {type(obj).__name__})")
    kind = obj.get("type")
    if kind == "INIT":
        return Init(_revision(obj, kind))
    if kind == "BOOKMARK":
        return Bookmark(_revision(obj, kind))
    if kind in ("PUT", "DELETE"):
        revision = _revision(obj, kind)
        resource = obj.get("resource")
        if not isinstance(resource, dict):
            raise WatchProtocolError(f"a {kind} watch event without a resource object (got {_short(resource)})")
        cls = Put if kind == "PUT" else Delete
        return cls(revision, _text(obj, "kind", kind), _text(obj, "name", kind), cast(ResourceBody, resource))
    if kind == "ERROR":
        status = obj.get("status")
        if not isinstance(status, dict):
            raise WatchProtocolError(f"an ERROR watch event without a Status object (got {_short(status)})")
        return Error(cast(StatusBody, status))
    if not isinstance(kind, str):
        raise WatchProtocolError(f"a watch event without a type (got {_short(kind)})")
    return None


class WatchDecoder:
    """Bytes in, events out: ``feed(chunk)`` returns the events completed by ``chunk`` (lines may be split
    across chunks anywhere, several may arrive in one); ``feed(b"")`` marks the end of the stream and
    decodes a last line that has no newline."""

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.skipped = 0  # events of unknown types
        self._buffer = bytearray()
        self._failed: WatchProtocolError | None = None
        self._ended = False

    def feed(self, data: bytes) -> list[WatchEvent]:
        if self._failed is not None:
            raise self._failed
        if self._ended:
            raise self._fail(WatchProtocolError("watch data after the end of the stream"))
        events: list[WatchEvent] = []
        if not data:
            self._ended = True
            if self._buffer:
                line, self._buffer = bytes(self._buffer), bytearray()
                self._decode_into(line, events)
            return events
        start = len(self._buffer)
        self._buffer += data
        begin = 0
        while True:
            end = self._buffer.find(b"\n", max(begin, start))
            if end < 0:
                break
            line = bytes(self._buffer[begin:end])
            begin = end + 1
            if len(line) > self.max_line_bytes:
                raise self._fail(self._too_long(len(line)))
            self._decode_into(line, events)
        del self._buffer[:begin]
        if len(self._buffer) > self.max_line_bytes:
            raise self._fail(self._too_long(len(self._buffer)))
        return events

    def _decode_into(self, line: bytes, events: list[WatchEvent]) -> None:
        if not line.strip():
            return
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8 (UnicodeDecodeError), absurd nesting
            raise self._fail(WatchProtocolError("a watch event that is not valid JSON")) from None
        try:
            event = parse_event(obj)
        except WatchProtocolError as err:
            raise self._fail(err) from None
        if event is None:
            self.skipped += 1
        else:
            events.append(event)

    def _too_long(self, size: int) -> WatchProtocolError:
        return WatchProtocolError(f"a watch event longer than {self.max_line_bytes} bytes (at least {size})")

    def _fail(self, err: WatchProtocolError) -> WatchProtocolError:
        self._failed = err
        self._buffer = bytearray()
        return err
