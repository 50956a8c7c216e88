"""registry.core.http1: HTTP/1.1 heads through httptools with h11's strictness, bodies framed by the module.

Every hostile head h11 refuses is refused here too (fed whole and a byte at a time), and h11 is asked
alongside so the table cannot drift into testing nothing; the normal cases: pipelined GETs, chunked and
Content-Length bodies, HTTP/1.0, an upgrade request with bytes after it, answers to HEAD, 204 and 304, an
answer read until the connection closes.
"""

from __future__ import annotations

import h11
import pytest

from registry.core.http1 import (
    CLOSED,
    END,
    NEED_DATA,
    PAUSED,
    Event,
    Head,
    HTTPError,
    Reader,
    check_headers,
    chunk,
    header_block,
    request_head,
    response_head,
)

GET = b"GET /api/v1/pods HTTP/1.1\r\nHost: k\r\nUser-Agent: kubectl\r\n\r\n"


def _events(reader: Reader) -> list[Event]:
    out: list[Event] = []
    while True:
        event = reader.next_event()
        if event is NEED_DATA or event is PAUSED:
            return out
        out.append(event)
        if event is CLOSED:
            return out


def _read(data: bytes, *, trickle: bool = False, **kwargs: object) -> tuple[list[Event], Reader]:
    reader = Reader(**kwargs)  # type: ignore[arg-type]
    events: list[Event] = []
    for piece in [data[i : i + 1] for i in range(len(data))] if trickle else [data]:
        reader.feed(piece)
        events += _events(reader)
    return events, reader


def _h11_refuses(data: bytes, role: type[h11.CLIENT] | type[h11.SERVER] = h11.SERVER) -> bool:
    conn = h11.Connection(role, max_incomplete_event_size=64 * 1024)
    if role is h11.CLIENT:
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.EndOfMessage):
                return False
    except h11.RemoteProtocolError:
        return True


HOSTILE_REQUESTS = {
    "two spaces after the method": b"POST  /api HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "two spaces before the version": b"GET /api  HTTP/1.1\r\nHost: x\r\n\r\n",
    "CL and TE together": b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "TE then CL": b"POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    "differing Content-Length": b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    "Content-Length list": b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 3, 4\r\n\r\n",
    "negative Content-Length": b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: -3\r\n\r\n",
    "signed Content-Length": b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: +3\r\n\r\n",
    "hex Content-Length": b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 0x3\r\n\r\n",
    "TE gzip": b"POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: gzip\r\n\r\n",
    "TE gzip, chunked": b"POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "TE chunked twice": (
        b"POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    ),
    "TE identity": b"POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: identity\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: k\r\nX-A: a\r\n b\r\n\r\n",
    "obs-fold with tab": b"GET / HTTP/1.1\r\nHost: k\r\nX-A: a\r\n\tb\r\n\r\n",
    "bare LF ending a line": b"GET / HTTP/1.1\r\nHost: k\nX-A: b\r\n\r\n",
    "bare LF request line": b"GET / HTTP/1.1\nHost: k\r\n\r\n",
    "LF LF head end": b"GET / HTTP/1.1\r\nHost: k\n\n",
    "bare CR in a value": b"GET / HTTP/1.1\r\nHost: k\rX-A: b\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: k\x00\r\n\r\n",
    "control byte in a value": b"GET / HTTP/1.1\r\nHost: k\x01k\r\n\r\n",
    "DEL in a value": b"GET / HTTP/1.1\r\nHost: k\x7fk\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : k\r\n\r\n",
    "separator in a name": b"GET / HTTP/1.1\r\nX(a): k\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\n: k\r\n\r\n",
    "line without colon": b"GET / HTTP/1.1\r\nHost k\r\n\r\n",
    "space in the target": b"GET /a b HTTP/1.1\r\nHost: k\r\n\r\n",
    "no target": b"GET  HTTP/1.1\r\nHost: k\r\n\r\n",
    "HTTP/2.0 request line": b"GET / HTTP/2.0\r\nHost: k\r\n\r\n",
    "HTTP/0.9 version": b"GET / HTTP/0.9\r\nHost: k\r\n\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\nHost: k\r\n\r\n",
    "not HTTP": b"GET / FOO/1.1\r\nHost: k\r\n\r\n",
    "lower-case version": b"GET / http/1.1\r\nHost: k\r\n\r\n",
    "binary garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two Host lines": b"GET / HTTP/1.1\r\nHost: k\r\nhost: admin\r\n\r\n",
}


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-at-a-time"])
@pytest.mark.parametrize("name", sorted(HOSTILE_REQUESTS))
def test_hostile_request_heads_are_refused(name: str, trickle: bool) -> None:
    data = HOSTILE_REQUESTS[name]
    with pytest.raises(HTTPError) as caught:
        _read(data, trickle=trickle)
    assert caught.value.status == 400
    assert b"k\x00" not in str(caught.value).encode()  # never quotes the bytes


VALID_REQUESTS = [
    GET,
    b"GET /api/v1/namespaces/default/pods?limit=500&labelSelector=a%3Db HTTP/1.1\r\nHost: 127.0.0.1:6443\r\n"
    b"User-Agent: kubectl/v1.30.0 (linux/amd64) kubernetes/7c48c2b\r\n"
    b"Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json\r\nAccept-Encoding: gzip\r\n"
    b"Kubectl-Command: kubectl get\r\nKubectl-Session: 2b6f6d6c\r\nX-Tab:\ta\tb \r\nX-Obs-Text: caf\xc3\xa9\r\n\r\n",
    b"POST /apis/apps/v1/namespaces/d/deployments HTTP/1.1\r\nHost: k\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n",
    b"DELETE /api/v1/namespaces/d/pods/p HTTP/1.0\r\nHost: k\r\n\r\n",
]


@pytest.mark.parametrize("data", VALID_REQUESTS)
def test_valid_heads_read_as_h11_reads_them(data: bytes) -> None:
    """The same method, target, version and header lines as h11 (which the forwarder used before)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    want = conn.next_event()
    assert isinstance(want, h11.Request)
    events, _ = _read(data)
    head = events[0]
    assert isinstance(head, Head)
    assert (head.method, head.target, head.version) == (want.method, want.target, want.http_version)
    assert head.headers == list(want.headers.raw_items())


def test_the_old_path_refused_each_hostile_head_too() -> None:
    """Each row was refused before as well, by h11 or by the header rules after it (which still run),
    except the rows refused now on purpose (``stricter``): the table is not a list of new refusals."""
    from registry.core import kube_headers
    from registry.core.errors import BadParameter

    stricter = {  # h11 unfolded obs-fold and took bare LF line ends (RFC 9112 lets a server refuse both)
        "obs-fold",
        "obs-fold with tab",
        "bare LF ending a line",
        "bare LF request line",
        "LF LF head end",
        "control byte in a value",
        "DEL in a value",
        "HTTP/2.0 request line",
        "HTTP/0.9 version",
        "HTTP/1.2",
    }
    for name, data in HOSTILE_REQUESTS.items():
        if name in stricter or _h11_refuses(data):
            continue
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        request = conn.next_event()
        assert isinstance(request, h11.Request), name
        with pytest.raises(BadParameter):
            kube_headers.inspect(list(request.headers.raw_items()))


def test_bad_chunk_sizes_and_extensions_are_refused() -> None:
    head = b"POST / HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n"
    for body in (b"zz\r\nab\r\n0\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n", b"3 ;x\r\nabc\r\n", b"3\nabc\r\n", b"-1\r\n"):
        with pytest.raises(HTTPError):
            _read(head + body)
    with pytest.raises(HTTPError):  # a size past what any reader takes
        _read(head + b"1" * 21 + b"\r\n")


def test_bodies_cut_by_the_close_are_errors_not_ends() -> None:
    reader = Reader()
    reader.feed(b"POST / HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\nab")
    assert isinstance(reader.next_event(), Head)
    assert reader.next_event() == b"ab"
    reader.feed(b"")
    with pytest.raises(HTTPError):
        reader.next_event()
    with pytest.raises(HTTPError):  # and every call after
        reader.next_event()
    reader = Reader()
    reader.feed(b"GET / HTTP/1.1\r\nHo")
    assert reader.next_event() is NEED_DATA
    reader.feed(b"")
    with pytest.raises(HTTPError):
        reader.next_event()


def test_huge_heads_are_refused_with_431_before_being_buffered_whole() -> None:
    reader = Reader(max_head=1024)
    reader.feed(b"GET / HTTP/1.1\r\n")
    assert reader.next_event() is NEED_DATA
    with pytest.raises(HTTPError) as caught:
        for _ in range(100):
            reader.feed(b"X-Filler: " + b"a" * 90 + b"\r\n")
            assert reader.next_event() is NEED_DATA
    assert caught.value.status == 431
    assert len(reader.buffer) < 2048
    big = b"GET / HTTP/1.1\r\nHost: k\r\nX: " + b"a" * 2000 + b"\r\n\r\n"  # arrives whole, with its end
    with pytest.raises(HTTPError) as caught:
        _read(big, max_head=1024)
    assert caught.value.status == 431
    events, _ = _read(big, max_head=4096)
    assert isinstance(events[0], Head)


def test_pipelined_gets_wait_for_their_turn() -> None:
    reader = Reader()
    reader.feed(GET + GET.replace(b"pods", b"nodes") + b"GET /third HTTP/1.1\r\nHo")
    head = reader.next_event()
    assert isinstance(head, Head) and head.target == b"/api/v1/pods" and head.keep_alive
    assert reader.next_event() is END
    assert reader.next_event() is PAUSED  # nothing more is parsed until the answer went out
    assert reader.buffer.startswith(b"GET /api/v1/nodes")
    reader.next_cycle()
    head = reader.next_event()
    assert isinstance(head, Head) and head.target == b"/api/v1/nodes"
    assert reader.next_event() is END
    reader.next_cycle()
    assert reader.next_event() is NEED_DATA
    reader.feed(b"st: k\r\n\r\n")
    head = reader.next_event()
    assert isinstance(head, Head) and head.target == b"/third" and head.headers == [(b"Host", b"k")]
    assert reader.next_event() is END
    reader.next_cycle()
    reader.feed(b"")
    assert reader.next_event() is CLOSED


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-at-a-time"])
def test_a_chunked_request_body_then_the_next_request(trickle: bool) -> None:
    data = (
        b"POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n" + GET
    )
    events, reader = _read(data, trickle=trickle)
    head = events[0]
    assert isinstance(head, Head) and head.chunked and head.length is None
    assert b"".join(e for e in events[1:-1] if isinstance(e, bytes)) == b"hello world"
    assert events[-1] is END
    assert reader.buffer == GET
    reader.next_cycle()
    assert isinstance(reader.next_event(), Head)


def test_a_content_length_body_stops_at_its_length() -> None:
    events, reader = _read(b"PUT /x HTTP/1.1\r\nHost: k\r\nContent-Length: 4\r\n\r\nbodyGET")
    assert isinstance(events[0], Head) and events[0].length == 4
    assert events[1:] == [b"body", END]
    assert reader.buffer == b"GET"


def test_http_1_0_and_connection_close_are_not_kept_alive() -> None:
    events, _ = _read(b"GET / HTTP/1.0\r\nHost: k\r\n\r\n")
    assert isinstance(events[0], Head) and events[0].version == b"1.0" and not events[0].keep_alive
    events, _ = _read(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")  # h11 closes these too
    assert isinstance(events[0], Head) and not events[0].keep_alive
    events, _ = _read(b"GET / HTTP/1.1\r\nHost: k\r\nConnection: keep-alive, Close\r\n\r\n")
    assert isinstance(events[0], Head) and not events[0].keep_alive
    events, _ = _read(b"GET / HTTP/1.1\r\nHost: k\r\nConnection: closed\r\n\r\n")  # a token, not a substring
    assert isinstance(events[0], Head) and events[0].keep_alive


def test_bytes_after_an_upgrade_request_are_not_parsed() -> None:
    upgrade = (
        b"GET /api/v1/namespaces/d/pods/p/exec?command=sh HTTP/1.1\r\nHost: k\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-Websocket-Version: 13\r\n\r\n"
    )
    raw = b"\x82\x05hello not http \r\n\r\n\x00"
    for trickle in (False, True):
        events, reader = _read(upgrade + raw, trickle=trickle)
        assert isinstance(events[0], Head) and events[0].upgrade
        assert events[1:] == [END]
        assert reader.next_event() is PAUSED
        assert reader.take_buffer() == raw  # after a 101: the upgraded protocol's bytes, whole
    # Not switched (no 101): the next request is read as HTTP again.
    events, reader = _read(upgrade + GET)
    reader.next_cycle()
    assert isinstance(reader.next_event(), Head)
    events, _ = _read(GET.replace(b"\r\n\r\n", b"\r\nUpgrade: websocket\r\n\r\n"))  # no Connection: upgrade
    assert isinstance(events[0], Head) and not events[0].upgrade


def test_leading_empty_lines_before_a_request_are_skipped() -> None:
    events, _ = _read(b"\r\n\r\n" + GET)
    assert isinstance(events[0], Head)


# -- answers ---------------------------------------------------------------------------------------------


def _answer(data: bytes, method: bytes = b"GET", trickle: bool = False) -> tuple[list[Event], Reader]:
    reader = Reader(response=True)
    reader.request_method = method
    events: list[Event] = []
    for piece in [data[i : i + 1] for i in range(len(data))] if trickle else [data]:
        reader.feed(piece)
        events += _events(reader)
    return events, reader


HOSTILE_RESPONSES = {
    "CL and TE": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "differing CL": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    "TE gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "bare CR": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x00\r\nContent-Length: 0\r\n\r\n",
    "bad name": b"HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 0\r\n\r\n",
    "status not digits": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/2.0 status line": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk without CRLF": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_RESPONSES))
def test_hostile_answers_are_refused(name: str) -> None:
    for trickle in (False, True):
        with pytest.raises(HTTPError):
            _answer(HOSTILE_RESPONSES[name], trickle=trickle)


def test_answers_without_a_body() -> None:
    for head, method in (
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"HEAD"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"DELETE"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"POST"),
    ):
        events, reader = _answer(head + b"NEXT", method)
        assert isinstance(events[0], Head) and events[1:] == [END], head
        assert reader.buffer == b"NEXT"


def test_a_101_leaves_the_upgraded_bytes_in_the_buffer() -> None:
    events, reader = _answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n\r\nRAW")
    assert isinstance(events[0], Head) and events[0].status == 101
    assert reader.take_buffer() == b"RAW"


def test_an_answer_without_framing_is_read_until_the_close() -> None:
    events, reader = _answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome")
    assert isinstance(events[0], Head) and not events[0].keep_alive
    assert events[1:] == [b"some"]
    reader.feed(b"more")
    assert reader.next_event() == b"more"
    reader.feed(b"")
    assert reader.next_event() is END


def test_a_chunked_answer_split_anywhere() -> None:
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwatc\r\n2\r\nh!\r\n0\r\n\r\n"
    for trickle in (False, True):
        events, reader = _answer(body, trickle=trickle)
        assert b"".join(e for e in events if isinstance(e, bytes)) == b"watch!"
        assert events[-1] is END and reader.done and reader.keep_alive


def test_serializers() -> None:
    block = header_block([(b"Host", b"k"), (b"Content-Length", b"2")])
    wire = request_head(b"POST", b"/x", block) + b"hi"
    events, _ = _read(wire)
    assert isinstance(events[0], Head) and events[0].headers == [(b"Host", b"k"), (b"Content-Length", b"2")]
    assert events[1:] == [b"hi", END]
    wire = response_head(200, b"OK", header_block([(b"Transfer-Encoding", b"chunked")]))
    wire += chunk(b"abc") + chunk(b"") + b"0\r\n\r\n"
    events, _ = _answer(wire)
    assert events[1:] == [b"abc", END]
    check_headers([(b"Authorization", b"Bearer abc.def")])
    for bad in ([(b"X A", b"v")], [(b"X", b"a\r\nInjected: 1")], [(b"X", b"a\x00")]):
        with pytest.raises(HTTPError):
            check_headers(bad)


def test_the_module_s_own_checks_hold_with_llhttp_made_lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule is checked twice (llhttp, then this module): with every llhttp leniency switched on, no
    hostile head is read as a head, and the valid ones still are."""
    import httptools

    from registry.core import http1

    def lenient(factory: type[httptools.HttpParser]) -> object:
        def make(protocol: object) -> httptools.HttpParser:
            parser = factory(protocol)
            parser.set_dangerous_leniencies(
                lenient_headers=True,
                lenient_chunked_length=True,
                lenient_keep_alive=True,
                lenient_transfer_encoding=True,
                lenient_version=True,
                lenient_data_after_close=True,
                lenient_optional_lf_after_cr=True,
                lenient_optional_cr_before_lf=True,
                lenient_optional_crlf_after_chunk=True,
                lenient_spaces_after_chunk_size=True,
            )
            return parser

        return make

    monkeypatch.setattr(http1.httptools, "HttpRequestParser", lenient(httptools.HttpRequestParser))
    monkeypatch.setattr(http1.httptools, "HttpResponseParser", lenient(httptools.HttpResponseParser))
    for name, data in {**HOSTILE_REQUESTS, **HOSTILE_RESPONSES}.items():
        response = name in HOSTILE_RESPONSES
        try:
            events, _ = _read(data, response=response)
        except HTTPError:
            continue
        # Not refused: then not read as a head either (a head ended by LF LF waits for its CRLF CRLF)
        assert not any(isinstance(e, Head) for e in events), name
    for data in VALID_REQUESTS:
        events, _ = _read(data)
        assert isinstance(events[0], Head)


# -- never more lenient than h11 ------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = [
    b"Host: k",
    b"X-A: v",
    b"X-A:  v \t",
    b"x-b:",
    b"Content-Length: 3",
    b"Content-Length: 03",
    b"content-length: 0",
    b"Content-Length: 3, 3",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: Chunked ",
    b"Transfer-Encoding: gzip",
    b"Connection: close",
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"X-C: a\rb",
    b"X-C: a\nb",
    b" folded",
    b"\tfolded",
    b"X C: d",
    b"X-D : d",
    b"X-E: caf\xc3\xa9",
    b"X-F: \x00",
    b"X-G: \x7f",
    b"",
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([b"GET", b"POST", b"PUT", b"get", b"G T", b"DELETE"]),
    st.sampled_from([b"/", b"/api/v1/pods?watch=1", b"*", b"/a b", b"", b"/\xff"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.1 "]),
    st.lists(st.sampled_from(_PIECES), max_size=6),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_a_head_read_here_is_read_the_same_by_h11(
    method: bytes, target: bytes, version: bytes, lines: list[bytes], eol: bytes
) -> None:
    """Whatever this module reads as a request head, h11 reads too, as the same request with the same body
    framing; whatever h11 refuses, this module refuses (it refuses more: obs-fold, bare LF, CL with TE)."""
    data = method + b" " + target + b" " + version + b"\r\n" + b"".join(line + eol for line in lines) + b"\r\n"
    try:
        events, _ = _read(data + b"abc")
        head = events[0] if events else None
    except HTTPError:
        return
    if not isinstance(head, Head):
        return
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data + b"abc")
    request = conn.next_event()  # raises if h11 refuses: then this module accepted too much
    assert isinstance(request, h11.Request)
    assert (request.method, request.target, request.http_version) == (head.method, head.target, head.version)
    ours = [(n.lower(), v.lower() if n.lower() == b"transfer-encoding" else v) for n, v in head.headers]
    assert ours == list(request.headers)  # (h11 lower-cases a Transfer-Encoding value)
    body = conn.next_event()
    if head.chunked:
        assert body is h11.NEED_DATA  # "abc" is no chunk size line h11 can finish
    elif head.length:
        assert isinstance(body, h11.Data) and bytes(body.data) == b"abc"[: head.length]
    else:
        assert isinstance(body, h11.EndOfMessage)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.0 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 2000 X"]
    ),
    st.lists(st.sampled_from([p for p in _PIECES if b"Upgrade" not in p]), max_size=6),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_an_answer_head_read_here_is_read_the_same_by_h11(status_line: bytes, lines: list[bytes], eol: bytes) -> None:
    data = status_line + b"\r\n" + b"".join(line + eol for line in lines) + b"\r\n"
    try:
        events, _ = _read(data + b"abc", response=True)
    except HTTPError:
        return
    head = events[0] if events else None
    if not isinstance(head, Head):
        return
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data + b"abc")
    response = conn.next_event()  # raises if h11 refuses: then this module accepted too much
    assert isinstance(response, h11.Response)
    assert (response.status_code, response.reason, response.http_version) == (head.status, head.reason, head.version)
    ours = [(n.lower(), v.lower() if n.lower() == b"transfer-encoding" else v) for n, v in head.headers]
    assert ours == list(response.headers)
    body = conn.next_event()
    if head.status == 204:
        assert isinstance(body, h11.EndOfMessage)
    elif head.chunked:
        assert body is h11.NEED_DATA
    elif head.length is not None:
        assert isinstance(body, h11.Data | h11.EndOfMessage)
    else:
        ours_body = b"".join(e for e in events[1:] if isinstance(e, bytes))  # until the close
        assert isinstance(body, h11.Data) and bytes(body.data) == ours_body
