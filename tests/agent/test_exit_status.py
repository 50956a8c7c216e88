"""The passive exit-code tap (agent.forward.exit_status): WebSocket channel frames as a kubelet sends them,
and hostile ones (huge, fragmented, masked, malformed). The tap must find the exit status or give up with a
reason, never guess, and never hold more than the status message needs."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from agent.forward.exit_spdy import SpdyExitTap
from agent.forward.exit_status import MAX_STATUS_BYTES, ExitCodeTap, ExitStatus, exit_status
from agent.forward.exit_taps import tap_for, untapped

SUCCESS = {"metadata": {}, "status": "Success"}


def failure(code: Any) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def server() -> FrameProtocol:
    return FrameProtocol(client=False, extensions=[])  # what the API server writes: unmasked frames


def message(channel: int, payload: bytes, proto: FrameProtocol | None = None) -> bytes:
    return bytes((proto or server()).send_data(bytes([channel]) + payload, fin=True))


def session(*parts: bytes, close: bool = True) -> bytes:
    proto = server()
    out = b"".join(parts)
    if close:
        out += proto.close(1000, "")
    return out


def tapped(data: bytes, chunk: int = 65536) -> ExitStatus:
    tap = ExitCodeTap()
    for start in range(0, len(data), chunk):
        tap.feed(data[start : start + chunk])
    return tap.result()


@pytest.mark.parametrize(("status", "code"), [(SUCCESS, 0), (failure(3), 3), (failure(255), 255)])
def test_the_kubelets_status_gives_the_exit_code(status: dict[str, Any], code: int) -> None:
    data = session(
        message(3, b""),  # an empty message only opens the channel
        message(1, b"hello\n"),
        message(2, b"warning\n"),
        message(3, json.dumps(status).encode()),
    )
    assert tapped(data) == ExitStatus(code)
    assert tapped(data, chunk=1) == ExitStatus(code)  # one byte at a time: headers split anywhere


def test_a_fragmented_status_message_is_reassembled() -> None:
    proto = server()
    body = b"\x03" + json.dumps(failure(42)).encode()
    frames = bytes(proto.send_data(body[:5], fin=False) + proto.send_data(body[5:20], fin=False))
    frames += proto.send_data(body[20:], fin=True)
    assert tapped(session(message(1, b"x"), frames)) == ExitStatus(42)


def test_huge_output_before_the_status_is_not_kept() -> None:
    big = message(1, b"x" * (8 * 1024 * 1024))
    tap = ExitCodeTap()
    tracemalloc.start()
    try:
        for start in range(0, len(big), 65536):
            tap.feed(big[start : start + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024  # 8 MiB went past; the tap held a chunk's worth at most
    assert tap.wants_data
    tap.feed(message(3, json.dumps(SUCCESS).encode()))
    assert tap.result() == ExitStatus(0)
    assert not tap.wants_data


def test_a_huge_status_message_gives_up() -> None:
    status = json.dumps({**failure(1), "message": "m" * (MAX_STATUS_BYTES + 10)}).encode()
    result = tapped(session(message(3, status)))
    assert result.code is None
    assert f"longer than {MAX_STATUS_BYTES} bytes" in (result.reason or "")


def test_a_masked_frame_from_the_server_gives_up() -> None:
    masked = bytes(
        FrameProtocol(client=True, extensions=[]).send_data(b"\x03" + json.dumps(SUCCESS).encode(), fin=True)
    )
    result = tapped(masked)
    assert result.code is None
    assert "websocket closed (code 1002)" in (result.reason or "")


@pytest.mark.parametrize(
    "data",
    [
        b"\xff" * 64,  # reserved opcodes and bits
        b"GET / HTTP/1.1\r\n\r\n",  # not WebSocket at all
        bytes([0x82, 0x7F]) + (2**63).to_bytes(8, "big"),  # a length with the top bit set
        bytes([0x89, 0x7E, 0x01, 0x00]) + b"p" * 256,  # a control frame longer than 125 bytes
        server().send_data("text on a binary protocol", fin=True),
    ],
    ids=["reserved", "http", "length", "control", "text"],
)
def test_malformed_frames_give_up_with_a_reason(data: bytes) -> None:
    tap = ExitCodeTap()
    tap.feed(data)
    tap.feed(message(3, json.dumps(SUCCESS).encode()))  # a status after garbage is not believed
    result = tap.result()
    assert result.code is None and result.reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a Status object"),
        (json.dumps(failure("three")).encode(), "not a number"),
        (json.dumps(failure(-1)).encode(), "not a number"),
        (json.dumps(failure(10**30)).encode(), "not a number"),
        (json.dumps(failure("\u0663")).encode(), "not a number"),  # an Arabic-Indic digit: isdigit() says yes
        (json.dumps({"status": "Failure", "reason": "InternalError"}).encode(), "(InternalError)"),
        (json.dumps({"status": "Failure", "details": {"causes": "nope"}}).encode(), "(no reason)"),
    ],
    ids=["json", "object", "word", "negative", "huge", "unicode-digit", "no-cause", "bad-causes"],
)
def test_a_status_without_a_usable_code_is_no_code(body: bytes, reason: str) -> None:
    result = tapped(session(message(3, body)))
    assert result.code is None
    assert reason in (result.reason or "")


def test_a_session_cut_short_has_no_code() -> None:
    assert tapped(message(1, b"partial")).reason == "the session ended before its exit status arrived"
    assert "closed (code 1000)" in (tapped(session(message(1, b"x"))).reason or "")


def test_after_the_status_nothing_more_is_parsed() -> None:
    tap = ExitCodeTap()
    tap.feed(message(3, json.dumps(failure(9)).encode()))
    tap.feed(b"\xff" * 1000)  # garbage after the answer changes nothing
    assert tap.result() == ExitStatus(9)


def test_which_sessions_are_tapped() -> None:
    assert isinstance(tap_for("websocket", "v5.channel.k8s.io", ""), ExitCodeTap)
    assert isinstance(tap_for("WebSocket", "v4.channel.k8s.io", ""), ExitCodeTap)
    assert tap_for("websocket", "v4.base64.channel.k8s.io", "") is None
    assert isinstance(tap_for("SPDY/3.1", "", "v4.channel.k8s.io"), SpdyExitTap)
    assert tap_for("SPDY/3.1", "", "v3.channel.k8s.io") is None  # its error stream is plain text
    assert "(v3.channel.k8s.io)" in (untapped("SPDY/3.1", "", "v3.channel.k8s.io").reason or "")
    assert "(v1.channel.k8s.io)" in (untapped("websocket", "v1.channel.k8s.io", "").reason or "")
    assert exit_status(json.dumps(SUCCESS).encode()) == ExitStatus(0)


def test_opcodes_are_what_the_tests_assume() -> None:
    assert server().send_data(b"\x01", fin=True)[0] & 0x0F == Opcode.BINARY
