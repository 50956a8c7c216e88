"""RegistryClient's unary requests over real TLS connections (the direct path, registry.host.http1): answers and
errors as before, kept-alive connections, failover that never sends a write twice, and hostile or broken
registries (oversized or malformed answers, a close mid-answer, silence, an untrusted certificate) as one
ConnectionProblem or Timeout."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import trio

from registry.client import RegistryClient
from registry.core.errors import AlreadyExists, ConnectionProblem, NotFound, Timeout
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import server_context
from registry.server.serve import RegistryInfo
from tests.helpers import cluster_doc, kubeconfig_bytes

Stream = trio.SSLStream[trio.SocketStream]
Script = Callable[[Stream, bytes], Awaitable[bool]]  # answer one request; False: stop reading this connection


def ok(body: object) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(data), data)


@dataclass
class Scripted:
    address: str
    ca_pem: bytes
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0


async def start_scripted(nursery: trio.Nursery, script: Script, *, ca: CertAuthority | None = None) -> Scripted:
    now = datetime.now(UTC)
    ca = ca or CertAuthority.generate("scripted", now=now)
    key = generate_private_key()
    cert = ca.issue(public_key_pem(key), Identity(name="r", kind="registry"), ttl=timedelta(hours=1), now=now)
    context = server_context(cert, key, [ca.cert_pem], client_certs="optional")
    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    transport = listeners[0].transport_listener
    assert isinstance(transport, trio.SocketListener)
    state = Scripted(f"127.0.0.1:{transport.socket.getsockname()[1]}", ca.cert_pem)

    async def handler(stream: Stream) -> None:
        state.connections += 1
        try:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    more = await stream.receive_some()
                    if not more:
                        return
                    buffer += more
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some()
                request, buffer = head + b"\r\n\r\n" + buffer[:length], buffer[length:]
                state.requests.append(request)
                if not await script(stream, request):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return state


def answers(*raw: bytes, keep: bool = True) -> Script:
    """Answer the n-th request of the server with ``raw[n]`` (the last one repeats); ``keep``: keep-alive."""
    count = [0]

    async def script(stream: Stream, request: bytes) -> bool:
        await stream.send_all(raw[min(count[0], len(raw) - 1)])
        count[0] += 1
        return keep

    return script


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_requests_answers_and_errors_against_a_real_registry(registry: RegistryInfo) -> None:
    async with RegistryClient.from_identity_file(registry.admin_identity) as client:
        assert (await client.ping())["cluster_name"] == "test-cluster"
        created = await client.create(cluster_doc("c1", kubeconfig_bytes(), {"env": "dev"}))
        assert created["metadata"]["name"] == "c1"
        with pytest.raises(AlreadyExists):
            await client.create(cluster_doc("c1", kubeconfig_bytes(), {}))
        with pytest.raises(NotFound):
            await client.get("kube_cluster", "nope")
        items, _ = await client.list("kube_cluster", labels={"env": "dev"})
        assert [item["metadata"]["name"] for item in items] == ["c1"]
        await client.delete("kube_cluster", "c1")
        pools = list(client._pools.values())
        assert len(pools) == 1 and pools[0].opened == 1  # every request above on one kept-alive connection


async def test_the_request_on_the_wire(nursery: trio.Nursery) -> None:
    server = await start_scripted(nursery, answers(ok({"a": "é"})))
    async with RegistryClient(server.address, ca_pems=[server.ca_pem]) as client:
        assert await client._request("POST", "/v1/x", params={"q": "a b"}, body={"n": "é"}) == {"a": "é"}
        await client._request("GET", "/v1/y")
    post, get = server.requests
    assert post.startswith(b"POST /v1/x?q=a+b HTTP/1.1\r\n")
    assert f"host: {server.address}\r\n".encode() in post and b"content-type: application/json" in post
    assert post.endswith('\r\n\r\n{"n":"é"}'.encode())
    assert get.startswith(b"GET /v1/y HTTP/1.1\r\n") and b"content-length" not in get
    assert server.connections == 1


async def test_a_write_broken_mid_answer_is_not_sent_again_and_a_read_moves_on(nursery: trio.Nursery) -> None:
    ca = CertAuthority.generate("shared", now=datetime.now(UTC))
    broken = await start_scripted(
        nursery, answers(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{", keep=False), ca=ca
    )
    good = await start_scripted(nursery, answers(ok({"from": "b"})), ca=ca)
    async with RegistryClient(f"{broken.address},{good.address}", ca_pems=[ca.cert_pem]) as client:
        with pytest.raises(ConnectionProblem, match=broken.address):
            await client._request("POST", "/v1/resources/role", body={})
        assert len(good.requests) == 0  # the write may have landed on the first registry
        assert await client._request("GET", "/v1/ping") == {"from": "b"}
        assert client.address == good.address


async def test_an_unreachable_registry_is_skipped_for_a_write(nursery: trio.Nursery) -> None:
    good = await start_scripted(nursery, answers(ok({"ok": 1})))
    async with RegistryClient(f"{closed_port()},{good.address}", ca_pems=[good.ca_pem]) as client:
        assert await client._request("POST", "/v1/x", body={}) == {"ok": 1}


async def test_a_connection_the_registry_closed_while_idle_is_not_reused(nursery: trio.Nursery) -> None:
    server = await start_scripted(nursery, answers(ok({}), keep=False))
    async with RegistryClient(server.address, ca_pems=[server.ca_pem]) as client:
        await client._request("POST", "/v1/x", body={})
        pool = next(iter(client._pools.values()))
        idle = pool._idle[0].stream
        assert isinstance(idle, SocketTLSStream)
        with trio.fail_after(10):  # the registry closed it: the pooled socket becomes readable (EOF)
            await trio.lowlevel.wait_readable(idle.fileno())
        await client._request("POST", "/v1/x", body={})  # a fresh connection, no error
    assert server.connections == 2 and len(server.requests) == 2


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nx: " + b"a" * 1_000_000 + b"\r\n\r\n", id="oversized-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nnot-hex\r\n", id="bad-chunking"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", id="closed-mid-answer"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnot", id="not-json"),
        pytest.param(b"HTTP/1.1 500 Oops\r\ncontent-length: 5\r\n\r\n<html", id="error-not-json"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nx-token: s3cr3t\n\r\ncontent-length: 2\r\n\r\n{}", id="bare-lf-secret"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: s3cr3t\r\n\r\n{}", id="bad-length-secret"),
    ],
)
async def test_hostile_answers_are_one_connection_problem(nursery: trio.Nursery, raw: bytes) -> None:
    server = await start_scripted(nursery, answers(raw, keep=False))
    async with RegistryClient(server.address, ca_pems=[server.ca_pem]) as client:
        with pytest.raises(ConnectionProblem if b"500" not in raw else Exception) as caught:
            await client._request("POST", "/v1/x", body={})
    assert "Traceback" not in str(caught.value)
    assert "s3cr3t" not in str(caught.value)  # answer bytes are never quoted (they may carry a secret)


async def test_an_oversized_answer_is_refused_not_buffered(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("registry.client.MAX_ANSWER_BYTES", 100_000)

    async def endless(stream: Stream, request: bytes) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            await stream.send_all(b"10000\r\n" + b"a" * 65536 + b"\r\n")

    server = await start_scripted(nursery, endless)
    async with RegistryClient(server.address, ca_pems=[server.ca_pem]) as client:
        with pytest.raises(ConnectionProblem, match="more than 100000 bytes"):
            await client._request("GET", "/v1/x")


async def test_a_silent_registry_times_out(nursery: trio.Nursery) -> None:
    async def silent(stream: Stream, request: bytes) -> bool:
        await trio.sleep_forever()
        return False

    server = await start_scripted(nursery, silent)
    async with RegistryClient(server.address, ca_pems=[server.ca_pem], timeout=0.3) as client:
        with pytest.raises(Timeout, match=server.address):
            await client._request("POST", "/v1/x", body={})


async def test_an_untrusted_registry_certificate_fails_as_tls(nursery: trio.Nursery) -> None:
    server = await start_scripted(nursery, answers(ok({})))
    other = CertAuthority.generate("other", now=datetime.now(UTC))
    async with RegistryClient(server.address, ca_pems=[other.cert_pem]) as client:
        with pytest.raises(ConnectionProblem, match="TLS"):
            await client._request("POST", "/v1/x", body={})
    assert server.requests == []
