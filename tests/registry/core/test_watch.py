"""The watch protocol (registry.core.watch, pure): exact wire bytes, round trips, split chunks, hostile input."""

from __future__ import annotations

import json

import pytest

from registry.core.errors import ConnectionProblem
from registry.core.watch import (
    Bookmark,
    Delete,
    Error,
    Init,
    Put,
    WatchDecoder,
    WatchEvent,
    WatchProtocolError,
    encode_line,
)
from registry.core.wire import ResourceBody

RESOURCE: ResourceBody = {"kind": "kube_cluster", "version": "v3", "metadata": {"name": "a", "revision": "7"}}

# (event, the exact line the registry has always sent)
LINES: list[tuple[WatchEvent, bytes]] = [
    (Init(5), b'{"type":"INIT","revision":5}\n'),
    (Bookmark(12), b'{"type":"BOOKMARK","revision":12}\n'),
    (
        Put(7, "kube_cluster", "a", RESOURCE),
        b'{"type":"PUT","revision":7,"kind":"kube_cluster","name":"a","resource":'
        b'{"kind":"kube_cluster","version":"v3","metadata":{"name":"a","revision":"7"}}}\n',
    ),
    (
        Delete(8, "kube_server", "h/a", {"metadata": {"name": "a"}}),
        b'{"type":"DELETE","revision":8,"kind":"kube_server","name":"h/a","resource":{"metadata":{"name":"a"}}}\n',
    ),
    (
        Error({"kind": "Status", "status": "Failure", "message": "too old", "reason": "Expired", "code": 410}),
        b'{"type":"ERROR","status":{"kind":"Status","status":"Failure","message":"too old","reason":"Expired",'
        b'"code":410}}\n',
    ),
]


@pytest.mark.parametrize(("event", "line"), LINES, ids=[type(e).__name__ for e, _ in LINES])
def test_encode_is_the_wire_format_and_decodes_back(event: WatchEvent, line: bytes) -> None:
    assert encode_line(event) == line
    assert WatchDecoder().feed(line) == [event]


def test_every_split_of_a_stream_decodes_the_same() -> None:
    stream = b"".join(line for _, line in LINES)
    expected = [event for event, _ in LINES]
    for cut in range(len(stream) + 1):
        decoder = WatchDecoder()
        events = [event for part in (stream[:cut], stream[cut:]) if part for event in decoder.feed(part)]
        assert events + decoder.feed(b"") == expected, cut


def test_byte_by_byte_and_blank_lines() -> None:
    decoder = WatchDecoder()
    events: list[WatchEvent] = []
    for byte in b"\n\r\n" + encode_line(Init(1)) + b"  \n" + encode_line(Bookmark(2)):
        events += decoder.feed(bytes([byte]))
    assert events == [Init(1), Bookmark(2)]


def test_a_last_line_without_newline_is_decoded_at_the_end() -> None:
    decoder = WatchDecoder()
    assert decoder.feed(b'{"type":"BOOKMARK","revision":3}') == []
    assert decoder.feed(b"") == [Bookmark(3)]


def test_unknown_types_are_skipped_and_counted() -> None:
    decoder = WatchDecoder()
    stream = b'{"type":"SOMETHING_NEW","revision":99}\n' + encode_line(Bookmark(4))
    assert decoder.feed(stream) == [Bookmark(4)]
    assert decoder.skipped == 1


def test_extra_fields_are_ignored() -> None:
    assert WatchDecoder().feed(b'{"type":"INIT","revision":1,"later":true}\n') == [Init(1)]


def test_kind_and_name_default_to_empty() -> None:
    """Older registries and hand-written tests send PUT/DELETE without them; the resource is what counts."""
    assert WatchDecoder().feed(b'{"type":"DELETE","revision":2,"resource":{}}\n') == [Delete(2, "", "", {})]


HOSTILE: dict[str, bytes] = {
    "not-json": b"{nope\n",
    "bad-utf8": b'{"type":"INIT","revision":1,"x":"\xff"}\n',
    "array": b"[1,2]\n",
    "string": b'"INIT"\n',
    "type-missing": b'{"revision":1}\n',
    "type-not-a-string": b'{"type":7,"revision":1}\n',
    "revision-missing": b'{"type":"PUT","resource":{}}\n',
    "revision-a-string": b'{"type":"BOOKMARK","revision":"soon"}\n',
    "revision-a-bool": b'{"type":"INIT","revision":true}\n',
    "revision-a-float": b'{"type":"INIT","revision":1.5}\n',
    "revision-negative": b'{"type":"INIT","revision":-1}\n',
    "resource-missing": b'{"type":"PUT","revision":6}\n',
    "resource-null": b'{"type":"DELETE","revision":6,"resource":null}\n',
    "resource-a-list": b'{"type":"PUT","revision":6,"resource":["kube_cluster"]}\n',
    "name-not-a-string": b'{"type":"PUT","revision":6,"name":1,"resource":{}}\n',
    "kind-not-a-string": b'{"type":"PUT","revision":6,"kind":null,"resource":{}}\n',
    "status-missing": b'{"type":"ERROR"}\n',
    "status-a-string": b'{"type":"ERROR","status":"gone"}\n',
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000 + b"\n",
}


@pytest.mark.parametrize("line", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_lines_are_a_protocol_error(line: bytes) -> None:
    decoder = WatchDecoder()
    with pytest.raises(WatchProtocolError):
        decoder.feed(encode_line(Init(1)) + line)
    with pytest.raises(WatchProtocolError):  # and the decoder stays failed
        decoder.feed(encode_line(Bookmark(2)))


def test_a_protocol_error_is_a_connection_problem() -> None:
    """Callers treat a broken stream like a broken connection: reconnect and resume."""
    assert issubclass(WatchProtocolError, ConnectionProblem)


def test_a_huge_line_is_refused_before_its_newline_arrives() -> None:
    decoder = WatchDecoder(max_line_bytes=1000)
    assert decoder.feed(b'{"type":"INIT","revision":1,"pad":"' + b"x" * 900) == []
    with pytest.raises(WatchProtocolError, match="longer than 1000 bytes"):
        decoder.feed(b"x" * 200)


def test_a_huge_complete_line_is_refused() -> None:
    padded = json.dumps({"type": "INIT", "revision": 1, "pad": "x" * 2000}).encode() + b"\n"
    with pytest.raises(WatchProtocolError, match="longer than"):
        WatchDecoder(max_line_bytes=1000).feed(padded)


def test_a_line_at_the_limit_is_accepted() -> None:
    line = encode_line(Init(1))
    assert WatchDecoder(max_line_bytes=len(line) - 1).feed(line * 3) == [Init(1)] * 3


def test_data_after_the_end_is_an_error() -> None:
    decoder = WatchDecoder()
    decoder.feed(b"")
    with pytest.raises(WatchProtocolError):
        decoder.feed(encode_line(Init(1)))
