"""Request smuggling replayed against the forwarder byte for byte: what h11 refuses today must stay refused
whatever parses heads and bodies (the forwarder's parser is being replaced by httptools/llhttp).

Each case is a hostile POST followed on the same connection by a smuggled request for secrets that asks to
be ``admin``. Whatever the forwarder answers, the fake API server must never see a request that does not
carry exactly our impersonation, never the secrets path, and never a body other than the one the
forwarder accepted: a desync between the forwarder's framing and the API server's would let the smuggled
bytes run on a pooled connection that carries the agent's own credential.
"""

from __future__ import annotations

import re

import pytest
import trio

from tests.agent.forward.forward_helpers import PREFIX, open_client, world_for
from tests.fakes.kube_api import FakeKube

CONFIGMAPS = f"{PREFIX}/api/v1/namespaces/default/configmaps".encode()
SMUGGLED = (
    f"GET {PREFIX}/api/v1/namespaces/default/secrets HTTP/1.1\r\nHost: front:3026\r\nImpersonate-User: admin\r\n\r\n"
).encode()
BODY = b'{"kind":"ConfigMap"}'


def _post(*lines: bytes, line_end: bytes = b"\r\n", version: bytes = b"HTTP/1.1") -> bytes:
    head = [b"POST " + CONFIGMAPS + b" " + version, b"Host: front:3026", b"Content-Type: application/json", *lines]
    return line_end.join(head) + line_end + line_end


# (id, raw bytes of the hostile request, its own body included)
CASES: list[tuple[str, bytes]] = [
    ("CL and TE", _post(b"Content-Length: 4", b"Transfer-Encoding: chunked") + b"0\r\n\r\n"),
    ("TE and CL", _post(b"Transfer-Encoding: chunked", b"Content-Length: 40") + b"0\r\n\r\n"),
    ("two different CL", _post(b"Content-Length: 20", b"Content-Length: 0") + BODY),
    ("CL list", _post(b"Content-Length: 20, 0") + BODY),
    ("CL with a sign", _post(b"Content-Length: +20") + BODY),
    ("CL negative", _post(b"Content-Length: -1") + BODY),
    ("CL hex", _post(b"Content-Length: 0x14") + BODY),
    ("CL with a space before the colon", _post(b"Content-Length : 0") + BODY),
    ("TE not chunked last", _post(b"Transfer-Encoding: chunked, identity") + b"0\r\n\r\n"),
    ("TE gzip", _post(b"Transfer-Encoding: gzip") + b"0\r\n\r\n"),
    ("two TE headers", _post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + b"0\r\n\r\n"),
    ("TE with a vertical tab", _post(b"Transfer-Encoding:\x0bchunked") + b"0\r\n\r\n"),
    ("TE in HTTP/1.0", _post(b"Transfer-Encoding: chunked", version=b"HTTP/1.0") + b"0\r\n\r\n"),
    ("chunk size with 0x", _post(b"Transfer-Encoding: chunked") + b"0x14\r\n" + BODY + b"\r\n0\r\n\r\n"),
    ("chunk size with a sign", _post(b"Transfer-Encoding: chunked") + b"+14\r\n" + BODY + b"\r\n0\r\n\r\n"),
    ("chunk size not hex", _post(b"Transfer-Encoding: chunked") + b"1g\r\n" + BODY + b"\r\n0\r\n\r\n"),
    ("chunk size overflow", _post(b"Transfer-Encoding: chunked") + b"1" + b"0" * 20 + b"\r\n" + BODY),
    ("chunk with bare LF", _post(b"Transfer-Encoding: chunked") + b"14\n" + BODY + b"\n0\n\n"),
    ("chunk data longer than its size", _post(b"Transfer-Encoding: chunked") + b"4\r\n" + BODY + b"\r\n0\r\n\r\n"),
    ("bare CR in a header value", _post(b"X-Note: a\rImpersonate-User: admin", b"Content-Length: 0")),
    ("NUL in a header value", _post(b"X-Note: a\x00b", b"Content-Length: 0")),
    ("tab in a header name", _post(b"X\tNote: a", b"Content-Length: 0")),
    (
        "absolute-form target",
        b"POST https://front:3026" + CONFIGMAPS + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ),
    ("two spaces in the request line", b"POST  " + CONFIGMAPS + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
]


async def _exchange(client_stream: trio.abc.Stream, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``; everything the forwarder answers, and whether it closed the connection (within a
    deadline: a forwarder that keeps a desynchronised connection open fails the test)."""
    await client_stream.send_all(data)
    received = bytearray()
    with trio.move_on_after(5):
        while chunk := await client_stream.receive_some(65536):
            received += chunk
        return bytes(received), True
    return bytes(received), False


@pytest.mark.parametrize("hostile", [c[1] for c in CASES], ids=[c[0] for c in CASES])
async def test_smuggling_is_refused_and_nothing_unchecked_reaches_the_api_server(
    nursery: trio.Nursery, fake_kube: FakeKube, hostile: bytes
) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    fake_kube.clear_requests()
    answer, closed = await _exchange(client.stream, hostile + SMUGGLED)
    statuses = [int(code) for code in re.findall(rb"^HTTP/1\.1 (\d{3}) ", answer, re.MULTILINE)]
    # The hostile request is refused with a Status, or (a body whose framing breaks after its head went
    # upstream) the connection ends without an answer; never a success, never left open.
    assert closed, answer[:300]
    assert all(400 <= code < 600 for code in statuses), answer[:300]
    for seen in fake_kube.requests:
        assert "secrets" not in seen.path
        assert seen.header_values("impersonate-user") == ["alice"]
