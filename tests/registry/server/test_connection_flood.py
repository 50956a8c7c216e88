"""Issue 7 §5: connections without a certificate cannot take the registry's slots from agents and admins.

A real registry on 127.0.0.1 with (small) connection budgets; a few hundred raw TCP and TLS connections
that present no certificate and send nothing (or trickle a head); the admin identity must still be served
promptly, and idle unauthenticated connections must be closed by the handshake/first-head deadline.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio

from registry.client import RegistryClient
from registry.core.errors import BadParameter
from registry.core.identity import REGISTRY_SERVER_NAME
from registry.core.identity_file import IdentityFile
from registry.host.tls import client_context
from registry.server.http import HTTPLimits, Request, Response, ServerInfo, serve_http
from registry.server.serve import REGISTRY_HTTP_LIMITS, RegistryInfo, serve_registry
from registry.store import MemoryStore

CLOSE_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


async def start_registry(nursery: trio.Nursery, tmp_path: Path, limits: HTTPLimits) -> RegistryInfo:
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(
            data_dir=tmp_path / "data",
            listen="127.0.0.1:0",
            store=MemoryStore(),
            http_limits=limits,
            task_status=task_status,
        )
    )
    return info


def host_port(info: RegistryInfo) -> tuple[str, int]:
    host, _, port = info.address.rpartition(":")
    return host, int(port)


async def open_raw(info: RegistryInfo, count: int) -> list[trio.SocketStream]:
    host, port = host_port(info)
    return [await trio.open_tcp_stream(host, port) for _ in range(count)]


async def open_tls_without_cert(info: RegistryInfo, count: int) -> list[trio.SSLStream[trio.SocketStream]]:
    """TLS connections that complete the handshake without a client certificate, then say nothing."""
    ca_pems = IdentityFile.parse(info.admin_identity.read_bytes(), source="admin").ca_pems
    context = client_context(ca_pems)
    host, port = host_port(info)
    out = []
    for _ in range(count):
        stream = trio.SSLStream(await trio.open_tcp_stream(host, port), context, server_hostname=REGISTRY_SERVER_NAME)
        await stream.do_handshake()
        out.append(stream)
    return out


async def wait_closed_by_server(streams: Sequence[trio.abc.Stream], at_least: int, timeout: float) -> set[int]:
    """Wait (bounded) until the server closed at least ``at_least`` of ``streams``; return which ones."""
    closed: set[int] = set()
    enough = trio.Event()

    async def watch(index: int, stream: trio.abc.Stream) -> None:
        try:
            while await stream.receive_some(65536):
                pass  # a 408 answer, then EOF
        except CLOSE_ERRORS:
            pass
        closed.add(index)
        if len(closed) >= at_least:
            enough.set()

    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            for index, stream in enumerate(streams):
                nursery.start_soon(watch, index, stream)
            await enough.wait()
            nursery.cancel_scope.cancel()
    return closed


@contextlib.asynccontextmanager
async def closing(streams: Sequence[trio.abc.AsyncResource]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            for stream in streams:
                with contextlib.suppress(*CLOSE_ERRORS):
                    await stream.aclose()


async def admin_whoami(info: RegistryInfo, timeout: float) -> str:
    with trio.fail_after(timeout):
        async with RegistryClient.from_identity_file(info.admin_identity) as client:
            return str((await client.whoami())["kind"])


def test_registry_defaults_bound_unauthenticated_connections() -> None:
    limits = REGISTRY_HTTP_LIMITS
    assert limits.handshake_timeout <= 10
    assert limits.max_unauthenticated is not None
    assert limits.max_unauthenticated < limits.max_connections
    assert limits.max_unauthenticated_per_source is not None
    assert limits.idle_timeout_for(False) < limits.idle_timeout_for(True)


async def test_a_flood_without_certificates_does_not_lock_the_admin_out(nursery: trio.Nursery, tmp_path: Path) -> None:
    # Small slots, no per-source budget and a long deadline: only shedding can keep the admin served.
    limits = replace(
        REGISTRY_HTTP_LIMITS,
        max_connections=128,
        max_unauthenticated=96,
        max_unauthenticated_per_source=None,
        handshake_timeout=60.0,
    )
    info = await start_registry(nursery, tmp_path, limits)
    flood: list[trio.abc.Stream] = []
    async with closing(flood):
        flood += await open_tls_without_cert(info, 40)
        flood += await open_raw(info, 260)
        # 300 connections against 96 unauthenticated slots: the longest idle were closed to make room.
        closed = await wait_closed_by_server(flood, at_least=300 - 96, timeout=20)
        assert min(closed) == 0  # the oldest went first
        assert await admin_whoami(info, timeout=3) == "admin"
        # ... and the admin keeps being served while the flood goes on.
        flood += await open_raw(info, 200)
        assert await admin_whoami(info, timeout=3) == "admin"


async def test_idle_unauthenticated_connections_are_closed_at_the_deadline(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    limits = replace(REGISTRY_HTTP_LIMITS, handshake_timeout=0.5, head_timeout=30.0)
    info = await start_registry(nursery, tmp_path, limits)
    streams: list[trio.abc.Stream] = []
    async with closing(streams):
        start = trio.current_time()
        streams += await open_raw(info, 30)  # never even start TLS
        tls = await open_tls_without_cert(info, 20)  # handshake, then silence
        streams += tls
        # A started head must still end by the deadline (head_timeout alone would allow 30 s).
        for stream in tls[:5]:
            await stream.send_all(b"GET /v1/ping HTTP/1.1\r\nhost: x\r\n")
        closed = await wait_closed_by_server(streams, at_least=len(streams), timeout=15)
        assert len(closed) == 50
        assert trio.current_time() - start < 15
        # A prompt client is unaffected.
        assert await admin_whoami(info, timeout=5) == "admin"


async def test_a_trickled_head_cannot_outlive_the_deadline(nursery: trio.Nursery, tmp_path: Path) -> None:
    limits = replace(REGISTRY_HTTP_LIMITS, handshake_timeout=0.5, head_timeout=30.0)
    info = await start_registry(nursery, tmp_path, limits)
    (stream,) = await open_tls_without_cert(info, 1)
    async with closing([stream]):
        with trio.fail_after(10):
            with contextlib.suppress(*CLOSE_ERRORS):
                await stream.send_all(b"GET /v1/ping HTTP/1.1\r\n")
                while True:  # one header byte at a time, paced (the pacing is the attack, not a wait)
                    await stream.send_all(b"x")
                    await trio.sleep(0.05)
        reply = b""
        with trio.fail_after(5), contextlib.suppress(*CLOSE_ERRORS):
            while chunk := await stream.receive_some(65536):
                reply += chunk
        assert reply == b"" or reply.startswith(b"HTTP/1.1 408")


async def test_per_source_budget_sheds_the_oldest_and_leaves_agents_served(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    limits = replace(REGISTRY_HTTP_LIMITS, max_unauthenticated_per_source=16, handshake_timeout=60.0)
    info = await start_registry(nursery, tmp_path, limits)
    streams: list[trio.abc.Stream] = []
    async with closing(streams):
        streams += await open_raw(info, 40)
        closed = await wait_closed_by_server(streams, at_least=24, timeout=15)
        assert closed == set(range(24))  # exactly the 24 oldest; the newest 16 are within the budget
        # The admin shares 127.0.0.1 with the flood: its certificate takes it out of the per-source budget.
        client = RegistryClient.from_identity_file(info.admin_identity)
        async with client:
            with trio.fail_after(3):
                assert (await client.whoami())["kind"] == "admin"
            streams += await open_raw(info, 40)  # more of the flood, same source
            with trio.fail_after(3):
                assert (await client.whoami())["kind"] == "admin"
            # several concurrent authenticated callers from the flooded source
            async with trio.open_nursery() as inner:
                for _ in range(20):
                    inner.start_soon(admin_whoami, info, 5.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"handshake_timeout": 0},
        {"handshake_timeout": -1},
        {"handshake_timeout": float("nan")},
        {"handshake_timeout": float("inf")},
        {"idle_timeout": True},
        {"max_connections": 0},
        {"max_unauthenticated_per_source": 0},
    ],
)
def test_bad_http_limits_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadParameter, match=next(iter(kwargs))):
        HTTPLimits(**kwargs)  # type: ignore[arg-type]


async def test_trickled_bodies_do_not_pin_slots(nursery: trio.Nursery) -> None:
    """Connections slowly uploading a body stay sheddable: a new client still gets a slot."""

    async def ok(request: Request) -> Response:
        return Response.json(200, {"ok": True})

    limits = HTTPLimits(max_connections=4, body_timeout=60.0)
    info: ServerInfo = await nursery.start(lambda task_status: serve_http(ok, limits=limits, task_status=task_status))
    trickling = [await trio.open_tcp_stream(info.host, info.port) for _ in range(4)]
    async with closing(trickling):
        for stream in trickling:
            await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nabc")
        async with httpx.AsyncClient(base_url=f"http://{info.address}") as client:
            with trio.fail_after(5):
                assert (await client.get("/")).json() == {"ok": True}
        closed = await wait_closed_by_server(trickling, at_least=1, timeout=5)
        assert closed == {0}
        assert info.admission is not None
        assert info.admission.statistics()["shed_total"] >= 1
