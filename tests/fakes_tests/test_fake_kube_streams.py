"""The streaming subresources in process: SPDY framing, exec negotiation and channels, logs, RBAC, commands."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from typing import Any

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection
from wsproto.utilities import generate_accept_token

from registry.server.http import Response
from tests.fakes import kube_spdy as spdy
from tests.fakes.kube_api import FakeKube
from tests.fakes.kube_commands import ExecFailure, run_command
from tests.fakes.kube_discovery import resource_list
from tests.fakes.kube_inproc import call
from tests.fakes.kube_paths import parse_request
from tests.fakes.kube_pods import ExecContext, ExecIO, PodRuntime

TOKEN = "t"
POD = "/api/v1/namespaces/default/pods/web"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture
def fake() -> FakeKube:
    fake = FakeKube(admin_token=TOKEN)
    fake.add_pod("web", log="a\nb\nc\n")
    return fake


def ws_headers(*protocols: str) -> list[tuple[str, str]]:
    return [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", WS_KEY),
        ("sec-websocket-version", "13"),
        *(("sec-websocket-protocol", p) for p in protocols),
    ]


SPDY_HEADERS = [("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]


# ------------------------------------------------------------------------------------------------- SPDY


def client_block(deflate: Any, headers: dict[str, str]) -> bytes:
    raw = struct.pack(">I", len(headers))
    for name, value in headers.items():
        raw += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
    data: bytes = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return data


def syn_stream(deflate: Any, stream_id: int, headers: dict[str, str], flags: int = 0) -> bytes:
    payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + client_block(deflate, headers)
    return struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, (flags << 24) | len(payload)) + payload


def test_spdy_dictionary_is_the_spdy3_one() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b",*,enq=0.")


def test_spdy_session_reads_client_frames_split_anywhere_and_answers_with_one_header_context() -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zdict=spdy.DICTIONARY)
    wire = syn_stream(deflate, 1, {"streamtype": "error"})
    wire += syn_stream(deflate, 3, {"streamtype": "stdin", "port": "80\x0081"})
    wire += struct.pack(">II", 3, (spdy.FLAG_FIN << 24) | 5) + b"hello"
    wire += struct.pack(">HHII", 0x8003, spdy.PING, 4, 7)
    wire += struct.pack(">HHIII", 0x8003, spdy.WINDOW_UPDATE, 8, 3, 100)  # ignored, as spdystream ignores it
    wire += struct.pack(">HHIII", 0x8003, spdy.GOAWAY, 8, 3, 0)
    session = spdy.SpdySession()
    events = [event for i in range(len(wire)) for event in session.receive_data(wire[i : i + 1])]
    assert events == [
        spdy.SynStream(1, {"streamtype": ["error"]}, False),
        spdy.SynStream(3, {"streamtype": ["stdin"], "port": ["80", "81"]}, False),
        spdy.Data(3, b"hello", True),
        spdy.Ping(7),
        spdy.GoAway(3),
    ]
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    for stream_id in (1, 3):  # the second reply only inflates if both share the one context
        reply = session.syn_reply(stream_id, {"x-a": ["1"]})
        kind, flags_length, got_id = struct.unpack_from(">IIi", reply)
        assert (kind, flags_length & 0xFFFFFF, got_id) == (0x80030002, len(reply) - 8, stream_id)
        block = inflate.decompress(reply[12:])
        assert block == struct.pack(">II", 1, 3) + b"x-a" + struct.pack(">I", 1) + b"1"
    assert session.data(5, b"", fin=True) == struct.pack(">II", 5, 0x01000000)
    big = session.data(5, b"x" * 70_000, fin=True)
    assert big.count(struct.pack(">I", 5)) >= 3
    assert session.ping(7) == struct.pack(">HHII", 0x8003, spdy.PING, 4, 7)


@pytest.mark.parametrize(
    "wire",
    [
        struct.pack(">HHI", 0x8002, spdy.SYN_STREAM, 0),  # SPDY/2
        struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, 12) + struct.pack(">IIBB", 1, 0, 0, 0) + b"zz",  # no zlib
        struct.pack(">HHI", 0x8003, spdy.RST_STREAM, 2) + b"\x00\x01",  # truncated
        struct.pack(">II", 1, 1 << 21),  # larger than the session allows
    ],
)
def test_spdy_session_refuses_garbage(wire: bytes) -> None:
    with pytest.raises(spdy.SpdyError):
        spdy.SpdySession().receive_data(wire)


# ------------------------------------------------------------------------------------- authorization


@pytest.mark.parametrize(
    ("method", "subresource", "verb"),
    [
        ("GET", "exec", "create"),
        ("POST", "exec", "create"),
        ("GET", "portforward", "create"),
        ("POST", "attach", "create"),
        ("GET", "log", "get"),
        ("GET", "status", "get"),
    ],
)
def test_streaming_subresources_are_create(method: str, subresource: str, verb: str) -> None:
    info = parse_request(method, f"{POD}/{subresource}", {})
    assert (info.resource, info.subresource, info.name, info.verb) == ("pods", subresource, "web", verb)


def test_discovery_lists_the_pod_subresources() -> None:
    core = resource_list("", "v1")
    assert core is not None
    names = [r["name"] for r in core["resources"]]
    assert names[names.index("pods") + 1 : names.index("pods") + 4] == ["pods/exec", "pods/log", "pods/portforward"]


async def test_rbac_for_logs_and_port_forward(fake: FakeKube) -> None:
    fake.add_token("bob", "bob")
    denied = await call(fake, "GET", f"{POD}/log", token="bob")
    assert denied.status == 403
    assert b'cannot get resource \\"pods/log\\"' in denied.body
    fake.grant("bob", verbs=["get"], resources=["pods/log", "pods/portforward"])
    assert (await call(fake, "GET", f"{POD}/log", token="bob")).body == b"a\nb\nc\n"
    refused = await call(
        fake, "GET", f"{POD}/portforward", token="bob", headers=ws_headers(spdy_pf := "SPDY/3.1+portforward.k8s.io")
    )
    assert refused.status == 403
    fake.grant("bob", verbs=["create"], resources=["pods/portforward"])
    upgraded = await call(fake, "GET", f"{POD}/portforward", token="bob", headers=ws_headers(spdy_pf))
    assert upgraded.status == 101
    assert [r.status for r in fake.requests] == [403, 200, 403, 101]


# -------------------------------------------------------------------------------------- exec handshake


@pytest.mark.parametrize(
    ("query", "headers", "status", "message"),
    [
        ("command=true&stdout=1", [], 400, "Upgrade request required"),
        ("stdout=1", SPDY_HEADERS, 400, "you must specify at least 1 command"),
        ("command=true", SPDY_HEADERS, 400, "you must specify at least one of stdin, stdout, stderr"),
        ("command=true&stdout=1&container=x", SPDY_HEADERS, 400, "container x is not valid for pod web"),
        (
            "command=true&stdout=1",
            [*SPDY_HEADERS, ("x-stream-protocol-version", "v1.channel.k8s.io")],
            403,
            "unable to negotiate protocol: client supports [v1.channel.k8s.io], server supports [v4.channel.k8s.io]",
        ),
        ("command=true&stdout=1", ws_headers("v3.channel.k8s.io"), 400, "subprotocols ['v3.channel.k8s.io']"),
    ],
)
async def test_exec_refusals_happen_before_the_upgrade(
    fake: FakeKube, query: str, headers: list[tuple[str, str]], status: int, message: str
) -> None:
    response = await call(fake, "POST", f"{POD}/exec?{query}", token=TOKEN, headers=headers)
    assert response.status == status
    assert response.upgrade is None
    assert message in json.loads(response.body)["message"]


async def test_exec_unknown_pod_is_404(fake: FakeKube) -> None:
    response = await call(fake, "GET", "/api/v1/namespaces/default/pods/nope/exec?command=true&stdout=1", token=TOKEN)
    assert response.status == 404
    assert json.loads(response.body)["message"] == 'pods "nope" not found'


async def test_websocket_refused_on_request(fake: FakeKube) -> None:
    fake.pods.websockets = False
    target = f"{POD}/exec?command=true&stdout=1"
    response = await call(fake, "GET", target, token=TOKEN, headers=ws_headers("v5.channel.k8s.io"))
    assert response.status == 400


async def ws_session(response: Response, sends: list[bytes], *, close_after: int | None = None) -> list[bytes]:
    """Drive an upgraded exec over an in-memory stream with a wsproto client; the messages received. The
    client closes first once it has ``close_after`` messages, else it answers the server's close."""
    assert response.status == 101 and response.upgrade is not None
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Connection(ConnectionType.CLIENT)
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(response.upgrade, server_stream, b"")
        for message in sends:
            await client_stream.send_all(client.send(BytesMessage(data=message)))
        with trio.fail_after(5):
            while True:
                data = await client_stream.receive_some()
                client.receive_data(bytes(data) or None)
                events = list(client.events())
                received += [bytes(e.data) for e in events if isinstance(e, BytesMessage)]
                if close_after is not None and len(received) >= close_after:
                    await client_stream.send_all(client.send(CloseConnection(code=1000)))
                    close_after = None
                if any(isinstance(e, CloseConnection) for e in events) or not data:
                    if client.state is ConnectionState.REMOTE_CLOSING:
                        await client_stream.send_all(client.send(CloseConnection(code=1000)))
                    break
    return received


async def test_websocket_v5_channels_and_stdin_close(fake: FakeKube) -> None:
    target = f"{POD}/exec?command=cat&stdin=true&stdout=true&stderr=true"
    response = await call(
        fake, "GET", target, token=TOKEN, headers=ws_headers("v4.channel.k8s.io", "v5.channel.k8s.io")
    )
    assert ("sec-websocket-protocol", "v4.channel.k8s.io") in response.headers  # the client's first choice
    assert ("sec-websocket-accept", generate_accept_token(WS_KEY.encode()).decode()) in response.headers
    response = await call(fake, "GET", target, token=TOKEN, headers=ws_headers("v5.channel.k8s.io"))
    resize = b"\x04" + json.dumps({"Width": 80, "Height": 24}).encode()
    received = await ws_session(response, [b"\x00abc", resize, b"\x00def", b"\xff\x00"], close_after=None)
    assert received == [b"\x01abc", b"\x01def", b'\x03{"metadata":{},"status":"Success"}']
    assert [r.status for r in fake.requests] == [101, 101]


async def test_websocket_v4_exit_status_and_client_leaving_stops_the_command(fake: FakeKube) -> None:
    target = f"{POD}/exec?command=sh&command=-c&command=echo+x+;+exit+7&stdout=true"
    response = await call(fake, "GET", target, token=TOKEN, headers=ws_headers("v4.channel.k8s.io"))
    received = await ws_session(response, [], close_after=None)
    assert received[0] == b"\x01x\n"
    status = json.loads(received[1][1:])
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "7"}]}
    assert status["message"].endswith("error executing command [sh -c echo x ; exit 7], exit code 7")
    # v4 has no stdin close: cat only ends when the client goes, and then it is cancelled.
    target = f"{POD}/exec?command=cat&stdin=true&stdout=true"
    response = await call(fake, "GET", target, token=TOKEN, headers=ws_headers("v4.channel.k8s.io"))
    assert await ws_session(response, [b"\x00hi"], close_after=1) == [b"\x01hi"]


# ------------------------------------------------------------------------------------------------- logs


async def test_log_parameters(fake: FakeKube) -> None:
    async def log(query: str) -> Response:
        return await call(fake, "GET", f"{POD}/log?{query}", token=TOKEN)

    assert (await log("limitBytes=3")).body == b"a\nb"
    assert (await log("tailLines=0")).body == b""
    assert (await log("tailLines=99")).body == b"a\nb\nc\n"
    stamped = (await log("timestamps=true&tailLines=1")).body.decode()
    assert stamped.endswith("Z c\n") and stamped[4] == "-" and stamped[10] == "T" and len(stamped.split()[0]) == 30
    previous = await log("previous=true")
    assert previous.status == 400
    assert json.loads(previous.body)["message"] == 'previous terminated container "main" in pod "web" not found'
    assert (await log("tailLines=x")).status == 400
    assert (await log("limitBytes=0")).status == 400
    assert (await log("container=other")).status == 400
    missing = await call(fake, "GET", "/api/v1/namespaces/default/pods/ghost/log", token=TOKEN)
    assert missing.status == 404
    ok = await log("")
    assert ok.headers[0] == ("content-type", "text/plain")


async def read_all(response: Response) -> bytes:
    assert response.stream is not None
    chunks = [chunk async for chunk in response.stream]
    return b"".join(chunks)


async def test_follow_ends_with_end_log_or_when_the_pod_goes(fake: FakeKube, autojump_clock: object) -> None:
    response = await call(fake, "GET", f"{POD}/log?follow=true&tailLines=1", token=TOKEN)

    async def writer() -> None:
        await trio.sleep(5)
        fake.pods.append_log("web", "d\n")
        fake.pods.end_log("web")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        assert await read_all(response) == b"c\nd\n"
    response = await call(fake, "GET", f"{POD}/log?follow=true&limitBytes=2", token=TOKEN)
    assert await read_all(response) == b"a\n"
    fake.pods.set_log("web", "fresh\n")  # a new log for a running container: followers wait again
    response = await call(fake, "GET", f"{POD}/log?follow=1", token=TOKEN)
    fake.delete_object("pods", "web", "default")
    assert await read_all(response) == b"fresh\n"  # then it notices the pod is gone


# --------------------------------------------------------------------------------------------- commands


class FakeIO:
    def __init__(self, stdin: bytes = b"") -> None:
        self.stdin = [stdin] if stdin else []
        self.out = b""
        self.err = b""

    async def read_stdin(self) -> bytes:
        return self.stdin.pop(0) if self.stdin else b""

    async def stdout(self, data: bytes) -> None:
        self.out += data

    async def stderr(self, data: bytes) -> None:
        self.err += data


def context(runtime: PodRuntime) -> ExecContext:
    return ExecContext("default", "web", "main", {"A": "1"}, runtime)


@pytest.mark.parametrize(
    ("argv", "code", "out", "err"),
    [
        (["echo", "-n", "x", "y"], 0, b"x y", b""),
        (["/bin/echo"], 0, b"\n", b""),
        (["env"], 0, b"A=1\n", b""),
        (["false"], 1, b"", b""),
        (["sh", "-c", "echo a; nope; exit 4; echo b"], 4, b"a\n", b"sh: nope: not found\n"),
        (["sh", "-c", "nope"], 127, b"", b"sh: nope: not found\n"),
        (["cat", "/missing"], 1, b"", b"cat: /missing: No such file or directory\n"),
        (["tar", "zf", "-"], 2, b"", b"tar: you must specify one of the '-ctx' options\n"),
        (["tar", "cf", "a.tar"], 2, b"", b"tar: the fake supports only 'tar cf - PATH...' and 'tar xf - [-C DIR]'\n"),
    ],
)
async def test_builtin_commands(argv: list[str], code: int, out: bytes, err: bytes) -> None:
    io_ = FakeIO()
    assert await run_command(argv, io_, context(PodRuntime())) == code
    assert (io_.out, io_.err) == (out, err)


async def test_unknown_program_and_custom_commands() -> None:
    runtime = PodRuntime()
    with pytest.raises(ExecFailure, match='exec: "nope": executable file not found in \\$PATH'):
        await run_command(["nope"], FakeIO(), context(runtime))

    async def greet(argv: list[str], io_: ExecIO, ctx: ExecContext) -> int:
        await io_.stdout(f"hello from {ctx.pod}/{ctx.container}: {argv[1:]}".encode())
        return 5

    runtime.add_command("greet", greet)
    io_ = FakeIO()
    assert await run_command(["/usr/bin/greet", "x"], io_, context(runtime)) == 5
    assert io_.out == b"hello from web/main: ['x']"


async def test_tar_round_trip_through_the_pod_file_system() -> None:
    runtime = PodRuntime()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("dir/f.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    assert await run_command(["tar", "xmf", "-", "-C", "/tmp"], FakeIO(buffer.getvalue()), context(runtime)) == 0
    assert runtime.read_file("web", "/tmp/dir/f.txt") == b"hi"
    listing = FakeIO()
    assert await run_command(["ls", "/tmp"], listing, context(runtime)) == 0
    assert listing.out == b"dir\n"
    out = FakeIO()
    assert await run_command(["tar", "cf", "-", "/tmp/dir"], out, context(runtime)) == 0
    with tarfile.open(fileobj=io.BytesIO(out.out)) as archive:
        assert archive.getnames() == ["tmp/dir/f.txt"]
    missing = FakeIO()
    assert await run_command(["tar", "cf", "-", "/nothing"], missing, context(runtime)) == 2
    assert b"Cannot stat" in missing.err
