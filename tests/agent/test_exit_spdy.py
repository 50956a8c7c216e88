"""The passive SPDY/3.1 exit-code tap (agent.forward.exit_spdy): kubectl's streams as client-go opens them,
the kubelet's Status on the error stream, and hostile input (huge frames, split anywhere, bombs, garbage).
The server side is written with the fake API's own SPDY session (tests/fakes/kube_spdy.py)."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from typing import Any

import pytest

from agent.forward.exit_spdy import DICTIONARY, MAX_CONTROL_BYTES, MAX_HEADER_BYTES, SpdyExitTap
from agent.forward.exit_status import MAX_STATUS_BYTES, ExitStatus
from tests.fakes.kube_spdy import SpdySession

SUCCESS = {"metadata": {}, "status": "Success"}
FAILED_3 = {
    "status": "Failure",
    "reason": "NonZeroExitCode",
    "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
}


class Client:
    """kubectl's side: SYN_STREAMs with zlib-compressed header blocks (one context for the session)."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=DICTIONARY)

    def block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            raw += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_stream(self, stream_id: int, streamtype: str) -> bytes:
        payload = struct.pack(">IIH", stream_id, 0, 0) + self.block({"streamtype": streamtype})
        return struct.pack(">HHI", 0x8003, 1, len(payload)) + payload

    def data(self, stream_id: int, data: bytes) -> bytes:
        return struct.pack(">II", stream_id, len(data)) + data


def kubectl_opens(client: Client) -> bytes:
    """client-go's order: error first, then stdin, stdout, stderr."""
    return b"".join(
        client.syn_stream(sid, kind) for sid, kind in ((1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr"))
    )


def kubelet_ends(status: dict[str, Any]) -> bytes:
    server = SpdySession()
    out = b"".join(server.syn_reply(sid) for sid in (1, 3, 5, 7))
    out += server.data(5, b"hello\n") + server.data(5, b"", fin=True)
    return out + server.data(1, json.dumps(status).encode(), fin=True) + server.goaway(7)


def run(client_bytes: bytes, server_bytes: bytes, chunk: int = 65536) -> ExitStatus:
    tap = SpdyExitTap()
    for start in range(0, len(client_bytes), chunk):
        tap.feed_client(client_bytes[start : start + chunk])
    for start in range(0, len(server_bytes), chunk):
        tap.feed_server(server_bytes[start : start + chunk])
    return tap.result()


@pytest.mark.parametrize(("status", "code"), [(SUCCESS, 0), (FAILED_3, 3)])
@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_the_error_streams_status_gives_the_exit_code(status: dict[str, Any], code: int, chunk: int) -> None:
    client = Client()
    up = kubectl_opens(client) + client.data(3, b"some stdin") + client.data(3, b"")
    assert run(up, kubelet_ends(status), chunk) == ExitStatus(code)


def test_the_error_stream_is_found_by_its_header_not_its_number() -> None:
    client = Client()
    up = client.syn_stream(1, "stdout") + client.syn_stream(3, "error")
    server = SpdySession()
    down = server.data(1, json.dumps(FAILED_3).encode(), fin=True)  # a Status-looking stdout is not believed
    down += server.data(3, json.dumps(SUCCESS).encode(), fin=True)
    assert run(up, down) == ExitStatus(0)


def test_huge_stdin_and_stdout_are_skipped_not_kept() -> None:
    client = Client()
    up = kubectl_opens(client) + client.data(3, b"i" * (8 * 1024 * 1024))
    server = SpdySession()
    down = b"".join(server.data(5, b"o" * 1_000_000) for _ in range(8))
    tap = SpdyExitTap()
    tracemalloc.start()
    try:
        for start in range(0, len(up), 65536):
            tap.feed_client(up[start : start + 65536])
        for start in range(0, len(down), 65536):
            tap.feed_server(down[start : start + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    assert not tap.wants_client_data  # the error stream is known: the client's bytes are no longer read
    tap.feed_server(server.data(1, json.dumps(SUCCESS).encode(), fin=True))
    assert tap.result() == ExitStatus(0)


def test_a_huge_status_gives_up() -> None:
    client = Client()
    server = SpdySession()
    down = server.data(1, b"x" * (MAX_STATUS_BYTES + 1), fin=True)
    result = run(kubectl_opens(client), down)
    assert result.code is None and f"longer than {MAX_STATUS_BYTES}" in (result.reason or "")


def test_a_huge_control_frame_gives_up() -> None:
    payload = b"\0" * (MAX_CONTROL_BYTES + 1)
    frame = struct.pack(">HHI", 0x8003, 1, len(payload)) + payload
    result = run(frame, b"")
    assert result.code is None and "control frame is longer" in (result.reason or "")


def test_a_header_block_bomb_gives_up() -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zdict=DICTIONARY)
    bomb = deflate.compress(b"\0" * (MAX_HEADER_BYTES * 50)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">IIH", 1, 0, 0) + bomb
    assert len(payload) < MAX_CONTROL_BYTES
    result = run(struct.pack(">HHI", 0x8003, 1, len(payload)) + payload, b"")
    assert result.code is None and "inflates to more than" in (result.reason or "")


@pytest.mark.parametrize(
    "up",
    [
        struct.pack(">HHI", 0x8002, 1, 10) + b"\0" * 10,  # SPDY/2
        struct.pack(">HHI", 0x8003, 1, 20) + b"\0" * 20,  # a header block that is not zlib
        struct.pack(">HHI", 0x8003, 1, 4) + b"\0" * 4,  # truncated SYN_STREAM
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["version", "not-zlib", "truncated", "http"],
)
def test_malformed_client_frames_give_up(up: bytes) -> None:
    client = Client()
    result = run(up + kubectl_opens(client), kubelet_ends(SUCCESS))
    assert result.code is None and result.reason


def test_an_unfinished_session_has_no_code() -> None:
    client = Client()
    server = SpdySession()
    down = server.data(1, json.dumps(SUCCESS).encode()[:10])  # no FIN: the status never completed
    assert run(kubectl_opens(client), down).reason == "the session ended before its exit status arrived"
    assert run(kubectl_opens(Client()), SpdySession().data(1, b"", fin=True)).reason == "the error stream ended empty"
