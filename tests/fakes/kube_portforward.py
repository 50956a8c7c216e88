"""``pods/portforward``: kubectl's port-forward protocol, SPDY straight or tunnelled in a WebSocket.

- kubectl 1.27-1.30: ``POST`` with ``Upgrade: SPDY/3.1``, ``X-Stream-Protocol-Version: portforward.k8s.io``.
- kubectl 1.31+: first ``GET`` with ``Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io``: the same SPDY
  bytes inside WebSocket binary messages. ``PodRuntime.websockets = False`` refuses it (400) and kubectl
  falls back to plain SPDY.

Per local connection the client opens two SPDY streams with headers ``streamtype`` (``error``/``data``),
``port`` and ``requestid``. Once both exist, the fake hands the data stream to the test's
:data:`~tests.fakes.kube_pods.PortHandler` for that pod port (``PodRuntime.serve_port``); when the handler
returns, both streams get their FIN. A port nobody serves is the kubelet's error text on the error stream,
which kubectl prints as ``an error occurred forwarding L -> R: ...``. No socket is opened to anything.
"""

from __future__ import annotations

import math
from functools import partial

import trio

from registry.server.http import Request, Response
from tests.fakes.kube_exec import spdy_headers, spdy_upgrade
from tests.fakes.kube_pods import PodRuntime
from tests.fakes.kube_spdy import Data, GoAway, Ping, Reset, SpdyError, SpdySession, SynStream
from tests.fakes.kube_status import bad_request
from tests.fakes.kube_store import Obj
from tests.fakes.kube_ws import (
    ByteStream,
    RawBytes,
    WebSocket,
    WebSocketBytes,
    handshake_headers,
    is_websocket_upgrade,
    offered_protocols,
)

PORTFORWARD = "portforward.k8s.io"
TUNNELED = "SPDY/3.1+portforward.k8s.io"


def serve_portforward(runtime: PodRuntime, pod: Obj, request: Request) -> Response:
    target = (runtime, pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"].get("uid", ""))
    if is_websocket_upgrade(request.headers):
        if not runtime.websockets:
            raise bad_request("the fake Kubernetes API was told not to accept WebSocket upgrades")
        if TUNNELED not in offered_protocols(request.headers):
            offered = offered_protocols(request.headers)
            raise bad_request(f"unable to upgrade: none of the WebSocket subprotocols {offered} is supported")
        return Response(101, handshake_headers(request.headers, TUNNELED), upgrade=partial(_tunneled, target))
    protocol = spdy_upgrade(request, (PORTFORWARD,))
    return Response(101, spdy_headers(protocol), upgrade=partial(_raw, target))


Target = tuple[PodRuntime, str, str, str]  # runtime, namespace, pod, uid


async def _raw(target: Target, stream: trio.abc.Stream, leftover: bytes) -> None:
    await forward(target, RawBytes(stream, leftover))


async def _tunneled(target: Target, stream: trio.abc.Stream, leftover: bytes) -> None:
    ws = WebSocket(stream, leftover)
    await forward(target, WebSocketBytes(ws))
    await ws.close(wait=1.0)


class _DataStream:
    """The pod side of one forwarded connection (a PortStream)."""

    def __init__(self, transport: ByteStream, session: SpdySession, stream_id: int) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[bytes](math.inf)
        self._transport = transport
        self._session = session
        self._id = stream_id

    async def receive(self) -> bytes:
        try:
            return await self.inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def send(self, data: bytes) -> None:
        if data:
            await self._transport.send(self._session.data(self._id, data))


async def forward(target: Target, transport: ByteStream) -> None:
    """Serve one port-forward SPDY session until the client hangs up."""
    runtime, namespace, pod, uid = target
    session = SpdySession()
    pairs: dict[str, dict[str, SynStream]] = {}
    inboxes: dict[int, _DataStream] = {}

    async def connection(port_text: str, error_id: int, data: _DataStream, data_id: int) -> None:
        handler = runtime.ports.get((namespace, pod, int(port_text))) if port_text.isdigit() else None
        if handler is None:
            message = (
                f"error forwarding port {port_text} to pod {pod}, uid {uid}: failed to connect to "
                f"localhost:{port_text} inside the pod: connection refused"
            )
            await transport.send(session.data(error_id, message.encode(), fin=True))
            await transport.send(session.data(data_id, b"", fin=True))
            return
        await handler(data)
        await transport.send(session.data(data_id, b"", fin=True))
        await transport.send(session.data(error_id, b"", fin=True))

    async with trio.open_nursery() as nursery:
        done = False
        try:
            while not done and (chunk := await transport.receive()):
                for event in session.receive_data(chunk):
                    if isinstance(event, SynStream):
                        await transport.send(session.syn_reply(event.stream_id))
                        kind = (event.headers.get("streamtype") or [""])[0]
                        request_id = (event.headers.get("requestid") or [""])[0]
                        pair = pairs.setdefault(request_id, {})
                        pair[kind] = event
                        if kind == "data":
                            inboxes[event.stream_id] = _DataStream(transport, session, event.stream_id)
                        if "data" in pair and "error" in pair:
                            del pairs[request_id]
                            data_id = pair["data"].stream_id
                            port = (pair["data"].headers.get("port") or [""])[0]
                            nursery.start_soon(connection, port, pair["error"].stream_id, inboxes[data_id], data_id)
                    elif isinstance(event, Data | Reset) and event.stream_id in inboxes:
                        inbox = inboxes[event.stream_id]
                        if isinstance(event, Data) and event.data:
                            inbox.inbox_send.send_nowait(event.data)
                        if isinstance(event, Reset) or event.fin:
                            inbox.inbox_send.close()
                            del inboxes[event.stream_id]
                    elif isinstance(event, Ping):
                        await transport.send(session.ping(event.ping_id))
                    elif isinstance(event, GoAway):
                        done = True
        except SpdyError:
            pass
        nursery.cancel_scope.cancel()
