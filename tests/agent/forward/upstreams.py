"""A tiny scripted API server over TLS, for what the shared fake cannot do: 101 upgrades, dying mid-answer.

Paths (anything else: 404 Status):

* ``.../exec`` and ``.../portforward`` with ``Connection: Upgrade``: 101 echoing ``Upgrade``,
  ``X-Stream-Protocol-Version`` / ``Sec-WebSocket-Protocol``, then a greeting in the same write, then
  every byte received is sent back upper-cased until the client closes;
* ``.../refuse/exec``: a 400 Status (a server that will not upgrade: kubectl's fallback path);
* ``/die``: 200 chunked, one chunk, then the TCP connection is dropped;
* ``/bulk``: a 200 chunked answer of six 16,000-byte chunks (more TLS records than one 64 KiB read), head,
  body and end in one write sent once every task waits (so they arrive together at a waiting forwarder);
* ``/hang-up``: closes the connection without answering;
* ``/silent``: never answers (holds the connection until the client closes it);
* ``/answer-then-close``: a 410 Status that looks keep-alive, then the connection closes (a stale pooled
  connection for the next request);
* ``/split``: a 200 with a Content-Length whose head and body are two writes, the body only once every
  task waits (so the forwarder has surely read the head alone first);
* ``/raw/NAME``: a 200 chunked head, then ``RAW_BODIES[NAME]`` as written bytes (framing as given, good or
  hostile). A body that ends with its last chunk and nothing after it leaves the connection serving the
  next request; any other holds the connection open (reading until the client closes), so a forwarder
  must see the bad framing itself, not wait for the connection to end.
* ``/rawhead/NAME``: ``RAW_HEADS[NAME]`` as written bytes (a hostile answer head), then the connection is
  held until the client closes it;
* ``/until-close``: a 200 without Content-Length or Transfer-Encoding, its body ended by closing;
* ``/body``: a 200 whose body is the request's body (Content-Length), with ``X-Request-Framing`` saying
  how the request's body came (``chunked``, ``length`` or ``none``);
* ``/head``: a 200 with ``Content-Length: 9`` and no body to a HEAD.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import h11
import trio
import trio.testing
import yaml

from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.tls import server_context

GREETING = b"greeting-from-upstream"
GOOD_CHUNKED = b'17;name=value\r\n{"type":"ADDED","n":1}\n\r\n5   \r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n'
RAW_BODIES = {
    "good": GOOD_CHUNKED,  # an extension, whitespace after a size, a trailer: all valid
    "extra": b"5\r\nhello\r\n0\r\n\r\nJUNK",  # complete, then bytes no request asked for
    "bad-size": b"5\r\nhello\r\nzz\r\nworld\r\n",
    "bad-footer": b"5\r\nhello\r\n5\r\nworldXX3\r\nabc\r\n",
    "huge-size-line": b"5\r\nhello\r\n" + b"1" * (64 * 1024),
    "too-many-digits": b"5\r\nhello\r\n" + b"0" * 20 + b"1\r\nx\r\n",
    "bad-trailer": b"5\r\nhello\r\n0\r\nno colon here\r\n\r\n",
    "huge-trailers": b"5\r\nhello\r\n0\r\n" + b"X-A: " + b"a" * (128 * 1024),
}
_OK = b"HTTP/1.1 200 OK\r\n"
RAW_HEADS = {
    "cl-and-te": _OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
    "differing-cl": _OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "te-gzip": _OK + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "obs-fold": _OK + b"X-A: a\r\n Impersonate-User: admin\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": _OK + b"X-A: a\nContent-Length: 0\r\n\r\n",
    "bare-cr": _OK + b"X-A: a\rX-B: b\r\nContent-Length: 0\r\n\r\n",
    "nul": _OK + b"X-A: a\x00\r\nContent-Length: 0\r\n\r\n",
    "bad-name": _OK + b"X A: a\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "huge-head": _OK + b"X-A: " + b"a" * (300 * 1024) + b"\r\n\r\n",
}


@dataclass
class Scripted:
    port: int = 0
    ca_pem: bytes = b""
    requests: list[tuple[str, str, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    sessions_closed: int = 0
    closed: trio.Event = field(default_factory=trio.Event)

    def kubeconfig(self, token: str = "scripted-token") -> bytes:
        doc: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.port}",
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        return yaml.safe_dump(doc).encode()


async def serve_scripted(task_status: trio.TaskStatus[Scripted] = trio.TASK_STATUS_IGNORED) -> None:
    now = datetime.now(UTC)
    ca = CertAuthority.generate("scripted", now=now)
    key = generate_private_key()
    cert = ca.issue(
        public_key_pem(key),
        Identity(name="scripted", kind="agent"),
        ttl=timedelta(hours=1),
        now=now,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    context = server_context(cert, key, [ca.cert_pem], client_certs="optional")
    state = Scripted(ca_pem=ca.cert_pem)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await _serve(stream, state)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    state.port = listeners[0].transport_listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        task_status.started(state)


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


async def _serve(stream: trio.abc.Stream, state: Scripted) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
        request = await _next(conn, stream)
        if not isinstance(request, h11.Request):
            return
        body_parts: list[bytes] = []
        while not isinstance(event := await _next(conn, stream), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                body_parts.append(bytes(event.data))
        path = request.target.decode()
        headers = list(request.headers.raw_items())
        state.requests.append((request.method.decode(), path, headers))
        lower = [(n.lower(), v) for n, v in headers]
        upgrade = [v for n, v in lower if n == b"upgrade"]
        if "/refuse/" in path:
            await _status(conn, stream, 400, "upgrade refused by the scripted server")
        elif path.split("?")[0].endswith(("/exec", "/portforward", "/attach")) and upgrade:
            echo = [(b"Upgrade", upgrade[0]), (b"Connection", b"Upgrade")]
            echo += [(b"X-Stream-Protocol-Version", v) for n, v in lower if n == b"x-stream-protocol-version"][:1]
            echo += [(b"Sec-WebSocket-Protocol", v) for n, v in lower if n == b"sec-websocket-protocol"][:1]
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=echo)) + GREETING)
            await _echo(conn, stream, state)
            return
        elif path == "/die":
            head = h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")])
            await stream.send_all(conn.send(head) + conn.send(h11.Data(data=b'{"type":"ADDED"}\n')))
            return  # dropped without the last chunk
        elif path == "/split":
            body = b'{"kind":"ConfigMap"}'
            head = h11.Response(status_code=200, headers=[(b"Content-Length", str(len(body)).encode())])
            await stream.send_all(conn.send(head))
            await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        elif path == "/bulk":
            head = h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")])
            out = conn.send(head) + b"".join(conn.send(h11.Data(data=bytes([65 + i]) * 16_000)) for i in range(6))
            await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(out + conn.send(h11.EndOfMessage()))
        elif path.startswith("/raw/"):
            body = RAW_BODIES[path.removeprefix("/raw/")]
            head = h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")])
            await stream.send_all(conn.send(head) + body)
            if body.endswith(b"\r\n\r\n") and path.endswith("/good"):
                await _serve(stream, state)  # a fresh h11 state for the next request (h11 did not see the body)
                return
            while await stream.receive_some(65536):
                pass
            return
        elif path.startswith("/rawhead/"):
            await stream.send_all(RAW_HEADS[path.removeprefix("/rawhead/")])
            while await stream.receive_some(65536):
                pass
            return
        elif path == "/until-close":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close")
            return
        elif path == "/body":
            sent = b"".join(body_parts)
            framing = b"chunked" if any(n == b"transfer-encoding" for n, _ in lower) else b"none"
            framing = b"length" if any(n == b"content-length" for n, _ in lower) else framing
            headers = [(b"Content-Length", b"%d" % len(sent)), (b"X-Request-Framing", framing)]
            await stream.send_all(
                conn.send(h11.Response(status_code=200, headers=headers))
                + conn.send(h11.Data(data=sent))
                + conn.send(h11.EndOfMessage())
            )
        elif path == "/head":
            await stream.send_all(
                conn.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"9")]))
                + (conn.send(h11.EndOfMessage()) or b"")
            )
        elif path == "/hang-up":
            return
        elif path == "/silent":
            while await stream.receive_some(65536):
                pass
            return
        elif path == "/answer-then-close":
            await _status(conn, stream, 410, "answered; now this connection goes away without saying so")
            return
        else:
            await _status(conn, stream, 404, f"{path} not found")
        conn.start_next_cycle()


async def _echo(conn: h11.Connection, stream: trio.abc.Stream, state: Scripted) -> None:
    leftover, _ = conn.trailing_data
    if leftover:
        await stream.send_all(leftover.upper())
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            await stream.send_all(bytes(data).upper())
    finally:
        state.sessions_closed += 1
        state.closed.set()
        state.closed = trio.Event()


async def _status(conn: h11.Connection, stream: trio.abc.Stream, code: int, message: str) -> None:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code})
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
    await stream.send_all(
        conn.send(h11.Response(status_code=code, headers=headers))
        + conn.send(h11.Data(data=body.encode()))
        + conn.send(h11.EndOfMessage())
    )
