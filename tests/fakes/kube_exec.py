"""``pods/exec``: the upgrade handshake and the two stream protocols kubectl 1.27-1.33 speak.

- WebSocket (kubectl 1.30+ first): ``GET`` with ``Sec-WebSocket-Protocol: v5.channel.k8s.io`` (``v4`` also
  accepted). Every binary message is one channel byte + payload: 0 stdin, 1 stdout, 2 stderr, 3 error
  (the final ``Status``), 4 resize; v5 adds ``[255, channel]`` = the client closed that channel (stdin EOF).
  The server ends with the Status on channel 3 and a close frame. ``PodRuntime.websockets = False`` answers
  the WebSocket attempt 400, which makes kubectl 1.30+ fall back to SPDY (its fallback rule: any non-101).
- SPDY/3.1 (kubectl 1.27-1.29, and the 1.30+ fallback): ``POST`` with ``Upgrade: SPDY/3.1`` and repeated
  ``X-Stream-Protocol-Version``; the fake speaks ``v4.channel.k8s.io`` and echoes it on the 101. The client
  opens one SPDY stream per channel (header ``streamtype``: error, stdin, stdout, stderr, resize); the
  command starts once every stream the query asked for exists; stdin EOF is the stdin stream's FIN.

The final Status is the kubelet's: ``{"metadata":{},"status":"Success"}``, or ``NonZeroExitCode`` with an
``ExitCode`` cause (kubectl exits with that code), or ``InternalError`` when the program does not exist.
Validation happens before the upgrade, with the real server's 400s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from registry.server.http import Request, Response
from tests.fakes.kube_commands import ExecFailure, run_command
from tests.fakes.kube_pods import ExecContext, PodRuntime, container_env, pick_container
from tests.fakes.kube_spdy import Data, GoAway, Ping, Reset, SpdyError, SpdySession, SynStream
from tests.fakes.kube_status import KubeStatusError, bad_request
from tests.fakes.kube_store import Obj
from tests.fakes.kube_ws import RawBytes, WebSocket, handshake_headers, is_websocket_upgrade, offered_protocols

WS_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
SPDY_PROTOCOLS = ("v4.channel.k8s.io",)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's default
CLOSE_WAIT = 5.0  # how long the server waits for the client to hang up after the final Status


@dataclass(frozen=True)
class ExecOptions:
    command: list[str]
    container: str
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return (query.get(name) or [""])[-1] in ("1", "true", "True", "TRUE", "t", "T")


def exec_options(pod: Obj, query: dict[str, list[str]]) -> ExecOptions:
    container = pick_container(pod, (query.get("container") or [""])[-1])
    command = query.get("command") or []
    if not command:
        raise bad_request("you must specify at least 1 command")
    opts = ExecOptions(
        command, container, _flag(query, "stdin"), _flag(query, "stdout"), _flag(query, "stderr"), _flag(query, "tty")
    )
    if not (opts.stdin or opts.stdout or opts.stderr):
        raise bad_request("you must specify at least one of stdin, stdout, stderr")
    if opts.tty and opts.stderr:
        opts = ExecOptions(opts.command, opts.container, opts.stdin, opts.stdout, False, True)  # a TTY merges them
    return opts


def final_status(command: list[str], code: int | None, failure: str = "") -> dict[str, Any]:
    if failure:
        message = f"Internal error occurred: error executing command in container: {failure}"
        return {
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {_go_list(command)}, "
        f"exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _go_list(items: list[str]) -> str:
    return "[" + " ".join(items) + "]"


def serve_exec(runtime: PodRuntime, pod: Obj, request: Request) -> Response:
    opts = exec_options(pod, request.query)
    meta = pod["metadata"]
    ctx = ExecContext(meta["namespace"], meta["name"], opts.container, container_env(pod, opts.container), runtime)
    if is_websocket_upgrade(request.headers):
        if not runtime.websockets:
            raise bad_request("the fake Kubernetes API was told not to accept WebSocket upgrades")
        protocol = next((p for p in offered_protocols(request.headers) if p in WS_PROTOCOLS), None)
        if protocol is None:
            offered = offered_protocols(request.headers)
            raise bad_request(f"unable to upgrade: none of the WebSocket subprotocols {offered} is supported")
        headers = handshake_headers(request.headers, protocol)
        return Response(101, headers, upgrade=partial(_ws_exec, opts, ctx, protocol))
    protocol = spdy_upgrade(request, SPDY_PROTOCOLS)
    return Response(101, spdy_headers(protocol), upgrade=partial(_spdy_exec, opts, ctx))


def spdy_upgrade(request: Request, supported: tuple[str, ...]) -> str:
    """The negotiated ``X-Stream-Protocol-Version`` of a SPDY upgrade request, or the kubelet's error."""
    upgrade = ",".join(request.header_values("upgrade")).lower()
    if "spdy/3.1" not in upgrade:
        raise bad_request("Upgrade request required")
    offered = [p.strip() for v in request.header_values("x-stream-protocol-version") for p in v.split(",")]
    for protocol in offered:
        if protocol in supported:
            return protocol
    message = (
        f"unable to upgrade: unable to negotiate protocol: client supports {_go_list(offered)}, "
        f"server supports {_go_list(list(supported))}"
    )
    raise KubeStatusError(403, "Forbidden", message)


def spdy_headers(protocol: str) -> list[tuple[str, str]]:
    return [("connection", "Upgrade"), ("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", protocol)]


class _IO:
    """ExecIO over a sender of (channel, bytes) and a stdin channel."""

    def __init__(
        self, write: Callable[[int, bytes], Awaitable[None]], stdin: trio.MemoryReceiveChannel[bytes] | None, tty: bool
    ) -> None:
        self._write = write
        self._stdin = stdin
        self._tty = tty

    async def read_stdin(self) -> bytes:
        if self._stdin is None:
            return b""
        try:
            return await self._stdin.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def stdout(self, data: bytes) -> None:
        if data:
            await self._write(STDOUT, data)

    async def stderr(self, data: bytes) -> None:
        if data:
            await self._write(STDOUT if self._tty else STDERR, data)


async def _run(opts: ExecOptions, ctx: ExecContext, io_: _IO) -> dict[str, Any]:
    try:
        code = await run_command(list(opts.command), io_, ctx)
    except ExecFailure as failure:
        return final_status(opts.command, None, str(failure))
    return final_status(opts.command, code)


# ------------------------------------------------------------------------------------------- WebSocket


async def _ws_exec(
    opts: ExecOptions, ctx: ExecContext, protocol: str, stream: trio.abc.Stream, leftover: bytes
) -> None:
    ws = WebSocket(stream, leftover)
    stdin_send, stdin_receive = trio.open_memory_channel[bytes](math.inf)
    gone = trio.Event()

    async def reader(cancel: trio.CancelScope) -> None:
        while (message := await ws.receive_message()) is not None:
            if not message:
                continue
            channel, data = message[0], message[1:]
            if channel == STDIN and data:
                stdin_send.send_nowait(data)
            elif channel == CLOSE and protocol.startswith("v5") and data[:1] == bytes([STDIN]):
                stdin_send.close()
        stdin_send.close()
        gone.set()
        if not finished:
            cancel.cancel()  # the client left mid-command: stop it

    async def write(channel: int, data: bytes) -> None:
        await ws.send_message(bytes([channel]) + data)

    finished = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, nursery.cancel_scope)
        status = await _run(opts, ctx, _IO(write, stdin_receive if opts.stdin else None, opts.tty))
        finished = True
        await write(ERROR, json.dumps(status, separators=(",", ":")).encode())
        await ws.send_close()
        with trio.move_on_after(CLOSE_WAIT):
            await gone.wait()
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------------ SPDY


async def _spdy_exec(opts: ExecOptions, ctx: ExecContext, stream: trio.abc.Stream, leftover: bytes) -> None:
    transport = RawBytes(stream, leftover)
    session = SpdySession()
    expected = {"error", "stdout"} if opts.stdout else {"error"}
    expected |= {"stdin"} if opts.stdin else set()
    expected |= {"resize"} if opts.tty else ({"stderr"} if opts.stderr else set())
    ids: dict[str, int] = {}
    ready, gone = trio.Event(), trio.Event()
    stdin_send, stdin_receive = trio.open_memory_channel[bytes](math.inf)
    finished = False

    async def reader(cancel: trio.CancelScope) -> None:
        try:
            while data := await transport.receive():
                for event in session.receive_data(data):
                    if isinstance(event, SynStream):
                        kind = (event.headers.get("streamtype") or [""])[0]
                        ids[kind] = event.stream_id
                        await transport.send(session.syn_reply(event.stream_id))
                        if expected <= ids.keys():
                            ready.set()
                    elif isinstance(event, Data) and event.stream_id == ids.get("stdin"):
                        if event.data:
                            stdin_send.send_nowait(event.data)
                        if event.fin:
                            stdin_send.close()
                    elif isinstance(event, Reset) and event.stream_id == ids.get("stdin"):
                        stdin_send.close()
                    elif isinstance(event, Ping):
                        await transport.send(session.ping(event.ping_id))
                    elif isinstance(event, GoAway):
                        return
        except SpdyError:
            pass
        finally:
            stdin_send.close()
            gone.set()
            if not finished:
                cancel.cancel()

    async def write(channel: int, data: bytes) -> None:
        stream_id = ids.get({STDOUT: "stdout", STDERR: "stderr"}[channel])
        if stream_id is not None:
            await transport.send(session.data(stream_id, data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, nursery.cancel_scope)
        with trio.move_on_after(STREAM_CREATION_TIMEOUT):
            await ready.wait()
        if not ready.is_set():
            nursery.cancel_scope.cancel()
            return
        status = await _run(opts, ctx, _IO(write, stdin_receive if opts.stdin else None, opts.tty))
        finished = True
        for kind, stream_id in ids.items():
            if kind != "error":
                await transport.send(session.data(stream_id, b"", fin=True))
        await transport.send(session.data(ids["error"], json.dumps(status, separators=(",", ":")).encode(), fin=True))
        await transport.send(session.goaway(max(ids.values(), default=0)))
        with trio.move_on_after(CLOSE_WAIT):
            await gone.wait()
        nursery.cancel_scope.cancel()
