"""The front door over real TLS on 127.0.0.1:0, certificates from the registry's CA, agents played by the test.

Proves: a user whose role selects the cluster reaches an agent's stream with the first head and what follows
intact, and the answer flows back; hidden and unknown clusters answer byte-identical 404s; a deleted user
gets 401; no live agent gives a 503 naming the cluster; failover to the next agent (refusal and timeout);
ALPN routing (kubectl's h2,http/1.1 gets http/1.1; agent and user certificates each refused on the other's
protocol; no certificate and another CA's certificate refused at the handshake); slowloris cut at the
deadline; a 1 MiB head, garbage and smuggling headers refused; audit of opens, closes and denials.
"""

from __future__ import annotations

import contextlib
import json
import random
import ssl

import pytest
import trio
import trio.testing

from registry.core import codec
from registry.core.identity import Identity
from registry.core.kube_route import cluster_prefix
from registry.frontdoor.serve import FrontDoorLimits, splice
from tests.registry.frontdoor.frontdoor_helpers import (
    ADMIN,
    Env,
    agent,
    ca,
    credentials,
    frontdoor_env,
    read_exactly,
    read_until_eof,
    request,
    user,
    user_doc,
)

DEADLINE = 10  # seconds any one test may take to see what it waits for


def status_of(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), answer[:200]
    assert b"\r\nConnection: close" in head
    return int(status_line.split()[1]), json.loads(body)


async def ask(env: Env, data: bytes, identity: Identity | None = None) -> bytes:
    """Send ``data`` as ``identity`` (alice by default) and read the answer until the front door closes."""
    with trio.fail_after(DEADLINE):
        stream = await env.connect(credentials(identity or user()))
        await stream.send_all(data)
        return await read_until_eof(stream)


async def test_a_selected_cluster_reaches_the_agent_with_the_bytes_intact() -> None:
    async with frontdoor_env(rng=random.Random(1)) as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        creds = credentials(user())
        with trio.fail_after(DEADLINE):
            client = await env.connect(creds)
            assert client.selected_alpn_protocol() == "http/1.1"  # kubectl offers h2 first: never picked
            body = b'{"kind":"Pod"}'
            first = request("dev", "/api/v1/namespaces/default/pods", method=b"POST", extra=b"Content-Length: 14\r\n")
            await client.send_all(first + body)
            opened = await env.hub.opened.receive()
            assert opened.host == "host-a"
            info = opened.info
            assert (info.cluster, info.user, info.roles) == ("dev", "alice", ("kube-access",))
            assert info.client_addr.startswith("127.0.0.1:")
            assert (
                abs((info.cert_expires - ca().verify(creds.cert_pem, now=env.registry.now()).expires).total_seconds())
                < 1
            )
            # the agent gets exactly what kubectl sent, first head included
            assert await read_exactly(opened.stream, len(first) + len(body)) == first + body
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            await opened.stream.send_all(answer)
            assert await read_exactly(client, len(answer)) == answer
            # later requests on the same connection flow through untouched (the agent checks them)
            second = request("dev", "/version")
            await client.send_all(second)
            assert await read_exactly(opened.stream, len(second)) == second
            # a large answer streams back whole
            big = b"x" * (3 * 1024 * 1024)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(opened.stream.send_all, big)
                assert await read_exactly(client, len(big)) == big
            # the agent ends the stream: kubectl's connection ends
            await opened.stream.aclose()
            assert await read_until_eof(client) == b""
            start, end = (
                (await env.wait_audit("kube.connection.start"))[0],
                (await env.wait_audit("kube.connection.end"))[0],
            )
        for event in (start, end):
            assert event["user"] == "alice" and event["cluster"] == "dev" and event["agent"] == "host-a"
            assert event["client"] == info.client_addr
        assert end["bytes_received"] == len(answer) + len(big)
        assert end["bytes_sent"] == len(first) + len(body) + len(second)
        stats = env.frontdoor.statistics()
        assert stats["routed"] == 1 and stats["active"] == 0


async def test_kubectl_s_eof_reaches_the_agent_as_the_stream_s_end() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        with trio.fail_after(DEADLINE):
            client = await env.connect(credentials(user()))
            first = request("dev")
            await client.send_all(first)
            opened = await env.hub.opened.receive()
            assert await read_exactly(opened.stream, len(first)) == first
            # kubectl's side ends (a TCP FIN; the front door is https-compatible, so no close_notify needed)
            await client.transport_stream.send_eof()
            assert await opened.stream.receive_some(10) == b""  # the agent sees the stream's half-close
            await opened.stream.aclose()
        with trio.fail_after(DEADLINE):
            await env.wait_audit("kube.connection.end")


async def test_splice_is_half_close_aware() -> None:
    """kubectl's EOF half-closes the stream and the agent's answer still flows; the agent's EOF ends all."""
    client_side, kubectl = trio.testing.memory_stream_pair()
    agent_side, agent_end = trio.testing.memory_stream_pair()
    counts = [0, 0]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(splice, client_side, agent_side, b"HEAD", counts)
            await kubectl.send_all(b"+body")
            await kubectl.send_eof()
            assert await read_until_eof(agent_end) == b"HEAD+body"
            await agent_end.send_all(b"answer")
            assert await read_exactly(kubectl, 6) == b"answer"
            await agent_end.aclose()  # the agent is done: splice returns (the caller closes kubectl's side)
    assert counts == [9, 6]


async def test_splice_writes_what_the_agent_sent_meanwhile_to_kubectl_at_once() -> None:
    """A bulk answer waiting in the tunnel goes to kubectl in one write (one TLS write and wake-up), not one
    per 64 KiB."""
    client_side, kubectl = trio.testing.memory_stream_pair()
    agent_side, agent_end = trio.testing.memory_stream_pair()
    writes: list[int] = []
    pump = client_side.send_stream.send_all_hook

    async def counted() -> None:
        writes.append(1)
        if pump is not None:
            await pump()

    client_side.send_stream.send_all_hook = counted
    answer = bytes(range(256)) * 1024  # 256 KiB, already sent when the front door reads
    await agent_end.send_all(answer)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(splice, client_side, agent_side, b"HEAD")
            assert await read_exactly(kubectl, len(answer)) == answer
            await agent_end.aclose()
    assert len(writes) == 1


async def test_hidden_and_unknown_clusters_answer_byte_identical_404s() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("prod", {"env": "prod"}, agents={"host-a": "healthy"})
        hidden = await ask(env, request("prod"))
        # the same name, not registered anywhere (a fresh environment would have it unknown)
        await env.registry.delete(ADMIN, "kube_cluster", "prod")
        env.frontdoor.lookup.invalidate()
        unknown = await ask(env, request("prod"))
        assert hidden == unknown
        code, status = status_of(hidden)
        assert code == 404
        assert status["reason"] == "NotFound"
        assert status["message"] == 'Kubernetes cluster "prod" not found'
        # another unknown name differs only by its name
        other = await ask(env, request("nope"))
        assert other.replace(b"nope", b"prod") == hidden
        assert env.hub.attempts == []
        denied = await env.wait_audit("kube.connection.denied")
        assert denied[0]["error"] == "unknown or hidden cluster" and denied[0]["user"] == "alice"


async def test_a_deleted_user_gets_401() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        await env.registry.delete(ADMIN, "user", "alice")
        code, status = status_of(await ask(env, request("dev")))
        assert code == 401
        assert status["reason"] == "Unauthorized"
        assert "alice" in str(status["message"])
        assert env.hub.attempts == []


async def test_a_role_removed_from_the_user_hides_the_cluster_at_once() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        await env.registry.update(ADMIN, codec.resource_from_dict(user_doc("alice", [])))
        code, _ = status_of(await ask(env, request("dev")))
        assert code == 404


async def test_no_live_agent_is_a_503_naming_the_cluster() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"})  # registered, nobody serves it
        code, status = status_of(await ask(env, request("dev")))
        assert code == 503
        assert '"dev"' in str(status["message"])
        await env.add_cluster("dev2", {"env": "dev"}, agents={"host-a": "healthy"})
        env.hub.live.clear()  # heartbeats, but the tunnel dropped
        code, status = status_of(await ask(env, request("dev2")))
        assert (code, status["reason"]) == (503, "ServiceUnavailable")
        assert '"dev2"' in str(status["message"])


async def test_failover_to_the_next_agent_on_refusal_and_on_timeout() -> None:
    limits = FrontDoorLimits(open_stream_timeout=0.3)
    async with frontdoor_env(limits) as env:
        await env.add_cluster(
            "dev",
            {"env": "dev"},
            agents={"healthy-refuses": "healthy", "unknown-hangs": "unknown", "sick-works": "unhealthy"},
        )
        env.hub.refuse.add("healthy-refuses")
        env.hub.hang.add("unknown-hangs")
        with trio.fail_after(DEADLINE):
            client = await env.connect(credentials(user()))
            first = request("dev")
            await client.send_all(first)
            opened = await env.hub.opened.receive()
            assert opened.host == "sick-works"
            assert env.hub.attempts == ["healthy-refuses", "unknown-hangs", "sick-works"]
            assert await read_exactly(opened.stream, len(first)) == first
        assert env.frontdoor.statistics()["failovers"] == 2
        env.hub.refuse.add("sick-works")
        code, status = status_of(await ask(env, request("dev")))
        assert code == 503 and "3 tried" in str(status["message"])


# -- ALPN and identities ---------------------------------------------------------------------------------


async def test_an_agent_certificate_opens_a_tunnel_on_the_tunnel_alpn() -> None:
    async with frontdoor_env() as env:
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(agent("host-z")), alpn=["kubeport-tunnel/1"])
            assert stream.selected_alpn_protocol() == "kubeport-tunnel/1"
            assert await read_exactly(stream, 9) == b"tunnel up"
        assert env.hub.tunnels == ["host-z"]
        assert env.hub.quick_tls == [True]  # accepted through registry.host.socket_tls


async def test_a_user_certificate_on_the_tunnel_alpn_is_refused() -> None:
    async with frontdoor_env() as env:
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(user()), alpn=["kubeport-tunnel/1"])
            assert await read_until_eof(stream) == b""
            admin = await env.connect(
                credentials(Identity("admin", "admin", roles=("admin",))), alpn=["kubeport-tunnel/1"]
            )
            assert await read_until_eof(admin) == b""
            denied = await env.wait_audit("kube.tunnel.denied", 1)
        assert env.hub.tunnels == []
        assert denied[0]["error"] == "not an agent certificate"


@pytest.mark.parametrize(
    ("identity", "code"),
    [
        (agent("host-a"), 403),
        (Identity("admin", "admin", roles=("admin",)), 403),
    ],
)
async def test_non_user_certificates_on_http_are_refused(identity: Identity, code: int) -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        got, status = status_of(await ask(env, request("dev"), identity))
        assert got == code
        assert "user certificate" in str(status["message"])
        assert env.hub.attempts == []


async def test_a_client_without_alpn_is_served_as_http() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(user()), alpn=[])
            assert stream.selected_alpn_protocol() is None
            await stream.send_all(request("dev"))
            assert (await env.hub.opened.receive()).host == "host-a"


async def handshake_refused(env: Env, **kwargs: object) -> None:
    """The connection never carries data: the handshake fails, or (TLS 1.3: the client finishes first) the
    first read does."""
    with trio.fail_after(DEADLINE):
        try:
            stream = await env.connect(**kwargs)  # type: ignore[arg-type]
            await stream.send_all(request("dev"))
            assert await read_until_eof(stream) == b""
        except (trio.BrokenResourceError, ssl.SSLError, OSError):
            pass


async def test_no_client_certificate_is_refused_at_the_handshake() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        await handshake_refused(env, creds=None)
        assert env.frontdoor.statistics()["handshake_failed"] == 1
        assert env.hub.attempts == []


async def test_another_ca_s_certificate_is_refused_at_the_handshake() -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        stranger = credentials(user(), authority=ca("another-cluster"))
        await handshake_refused(env, creds=stranger)
        assert env.frontdoor.statistics()["handshake_failed"] == 1
        assert env.hub.attempts == []


# -- hostile input ------------------------------------------------------------------------------------------


async def test_slowloris_first_head_is_cut_at_the_deadline() -> None:
    limits = FrontDoorLimits(first_head_timeout=1.0)
    async with frontdoor_env(limits) as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        answer = b""
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(user()))
            started = trio.current_time()
            head = request("dev")
            async with trio.open_nursery() as nursery:

                async def trickle() -> None:
                    for byte in head[:-2]:  # never the final CRLF
                        with contextlib.suppress(trio.BrokenResourceError, ssl.SSLError, OSError):
                            await stream.send_all(bytes([byte]))
                        await trio.sleep(0.05)  # the attack's pace, not a wait for a condition

                nursery.start_soon(trickle)
                answer = await read_until_eof(stream)
                elapsed = trio.current_time() - started
                nursery.cancel_scope.cancel()
        code, _status = status_of(answer)
        assert code == 408
        assert 0.8 < elapsed < 1.0 + 2.0  # cut at the deadline, not before and not much later
        assert env.hub.attempts == []


async def test_a_silent_connection_is_closed_at_the_deadline_without_an_answer() -> None:
    limits = FrontDoorLimits(first_head_timeout=0.5)
    async with frontdoor_env(limits) as env:
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(user()))
            assert await read_until_eof(stream) == b""


async def test_a_1_mib_head_is_refused() -> None:
    async with frontdoor_env(FrontDoorLimits()) as env:  # the default drain: the client is still sending
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        huge = request("dev", extra=b"X-Pad: " + b"p" * (1024 * 1024) + b"\r\n")
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(user()))
            answer = b""
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, ssl.SSLError, OSError):
                        await stream.send_all(huge)

                nursery.start_soon(send)
                answer = await read_until_eof(stream)
                nursery.cancel_scope.cancel()
        code, _status = status_of(answer)
        assert code == 431
        assert env.hub.attempts == []


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"\x00\x01\x02 garbage that is not HTTP\r\n\r\n", 400, "malformed HTTP request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "not supported"),
        (b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n", 400, "/v1/clusters/"),
        (b"GET /v1/clusters/ZGV2==/api HTTP/1.1\r\nHost: x\r\n\r\n", 400, "base64url"),
        (request("dev", extra=b"Connection: impersonate-user\r\n"), 400, "Connection header may not name"),
        (request("dev", extra=b"Connection: keep-alive, Authorization\r\n"), 400, "Connection header may not name"),
        (request("dev", extra=b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"), 400, "Transfer-Encoding"),
        (request("dev", extra=b"Impersonate-Uid: 0\r\n"), 403, "Impersonate-Uid"),
        (request("dev", extra=b"Impersonate-User: a\r\nImpersonate-User: b\r\n"), 403, "already specified"),
        (request("dev", extra=b"Origin: https://evil.example\r\n"), 403, "cross-origin"),
    ],
)
async def test_garbage_and_smuggling_are_refused_before_any_agent(data: bytes, code: int, words: str) -> None:
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        got, status = status_of(await ask(env, data))
        assert got == code
        assert words in str(status["message"])
        assert env.hub.attempts == []


async def test_denials_are_aggregated_in_the_audit_log() -> None:
    async with frontdoor_env() as env:
        for _ in range(5):
            await ask(env, request("nope"))
        with trio.fail_after(DEADLINE):
            rows = await env.wait_audit("kube.connection.denied")
            while sum(int(r["count"]) for r in rows) < 5:
                rows = await env.wait_audit("kube.connection.denied")
        assert len(rows) <= 2  # the first at once, the rest counted in one row
        assert rows[0]["cluster"] == "nope" and rows[0]["code"] == 404


async def test_unauthenticated_idle_connections_are_shed_first() -> None:
    limits = FrontDoorLimits(max_unauthenticated_per_source=2)
    async with frontdoor_env(limits) as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        with trio.fail_after(DEADLINE):
            idle = [await trio.open_tcp_stream("127.0.0.1", env.port) for _ in range(2)]
            env.clients.extend(idle)
            # a real client still gets in: the oldest idle socket makes room
            stream = await env.connect(credentials(user()))
            await stream.send_all(request("dev"))
            assert (await env.hub.opened.receive()).host == "host-a"
            assert await idle[0].receive_some(10) == b""  # shed
        assert env.frontdoor.statistics()["admission"]["shed_total"] >= 1


async def test_the_kubeconfig_prefix_is_what_routes() -> None:
    assert cluster_prefix("dev") == "/v1/clusters/ZGV2"


async def test_a_same_origin_request_is_routed() -> None:
    """The Python client's websocket-client sends ``Origin`` of the server it dials: not cross-site."""
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        with trio.fail_after(DEADLINE):
            stream = await env.connect(credentials(user()))
            await stream.send_all(request("dev", extra=b"Origin: https://127.0.0.1\r\n"))
            assert (await env.hub.opened.receive()).host == "host-a"
