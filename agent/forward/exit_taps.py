"""Which exit-status tap reads an upgraded session, and why a session has none.

The forwarder asks :func:`tap_for` once per ``101``, from the answer's ``Upgrade``, ``Sec-WebSocket-Protocol``
and ``X-Stream-Protocol-Version`` headers; it shows the tap copies of the client's bytes while
``wants_client_data`` and of the server's while ``wants_data``, then reads ``result()``. Only the stream
protocols whose error channel carries a ``Status`` (v4, v5) are tapped; for others :func:`untapped` gives
the reason that ``session.end`` records.
"""

from __future__ import annotations

from typing import Protocol

from agent.forward.exit_spdy import STATUS_PROTOCOLS, SpdyExitTap
from agent.forward.exit_status import CHANNEL_PROTOCOLS, ExitCodeTap, ExitStatus


class Tap(Protocol):
    @property
    def wants_data(self) -> bool: ...

    @property
    def wants_client_data(self) -> bool: ...

    def feed_client(self, data: bytes | bytearray | memoryview) -> None: ...

    def feed_server(self, data: bytes | bytearray | memoryview) -> None: ...

    def result(self) -> ExitStatus: ...


def tap_for(upgrade: str, subprotocol: str, stream_protocol: str) -> Tap | None:
    """The tap for a session that switched to ``upgrade`` with WebSocket ``subprotocol`` or SPDY
    ``stream_protocol`` (the 101's X-Stream-Protocol-Version); None when its exit code cannot be read."""
    kind = upgrade.strip().lower()
    if kind == "websocket" and subprotocol.strip() in CHANNEL_PROTOCOLS:
        return ExitCodeTap()
    if kind == "spdy/3.1" and stream_protocol.strip() in STATUS_PROTOCOLS:
        return SpdyExitTap()
    return None


def untapped(upgrade: str, subprotocol: str, stream_protocol: str) -> ExitStatus:
    """Why a session without a tap has no exit code."""
    kind = upgrade.strip().lower()
    if kind == "websocket":
        shown = subprotocol.strip()[:64] or "none"
        return ExitStatus(None, f"the websocket subprotocol ({shown}) carries no exit status kubeport decodes")
    if kind.startswith("spdy/"):
        shown = stream_protocol.strip()[:64] or "none"
        return ExitStatus(None, f"the SPDY stream protocol ({shown}) carries no exit status kubeport decodes")
    return ExitStatus(None, "the upgraded protocol is not decoded")
