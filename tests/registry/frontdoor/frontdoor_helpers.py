"""What the front door's integration tests share: a registry with users, roles, clusters and heartbeats over a
MemoryStore, a fake tunnel hub whose streams are in-memory pairs (the test plays the agent on the other
end), the front door on 127.0.0.1:0 with real TLS from the registry's CA, and TLS clients with any identity.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio
import trio.testing

from registry.core import codec
from registry.core.errors import ConnectionProblem
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.core.kube_route import cluster_prefix
from registry.core.resources import KubeServer
from registry.core.tunnel_info import StreamInfo
from registry.frontdoor.serve import FrontDoor, FrontDoorLimits, frontdoor_server_context, serve_frontdoor
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import client_context
from registry.server.authz import Caller
from registry.server.service import Registry
from registry.store import MemoryStore
from tests.helpers import cluster_doc, kube_server_doc, kubeconfig_bytes

ADMIN = Caller(identity=Identity(name="admin", kind="admin", roles=("admin",)))


@functools.cache
def ca(name: str = "frontdoor-test") -> CertAuthority:
    return CertAuthority.generate(name, now=datetime.now(tz=UTC))


@dataclass(frozen=True)
class Credentials:
    cert_pem: bytes
    key_pem: bytes


def credentials(
    identity: Identity, *, authority: CertAuthority | None = None, ttl: timedelta = timedelta(hours=1)
) -> Credentials:
    key = generate_private_key()
    cert = (authority or ca()).issue(public_key_pem(key), identity, ttl=ttl, now=datetime.now(tz=UTC))
    return Credentials(cert, key)


def user(name: str = "alice", roles: tuple[str, ...] = ("kube-access",)) -> Identity:
    return Identity(name=name, kind="user", roles=roles)


def agent(host_id: str) -> Identity:
    return Identity(name=f"node-{host_id}", kind="agent", roles=("Kube",), host_id=host_id)


@dataclass
class Opened:
    """One stream the front door opened: the agent's end is ``stream`` (the test plays the agent)."""

    host: str
    info: StreamInfo
    stream: trio.testing.StapledStream[Any, Any] | trio.abc.HalfCloseableStream


@dataclass
class FakeHub:
    """The TunnelHub's API over in-memory stream pairs; ``refuse``/``hang`` make chosen agents fail."""

    live: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    attempts: list[str] = field(default_factory=list)
    tunnels: list[str] = field(default_factory=list)
    tunnel_seen: trio.Event = field(default_factory=trio.Event)
    quick_tls: list[bool] = field(default_factory=list)  # per tunnel: TLS on the socket itself (socket_tls)

    def __post_init__(self) -> None:
        self._send, self.opened = trio.open_memory_channel[Opened](100)

    def live_hosts(self) -> frozenset[str]:
        return frozenset(self.live)

    async def open_stream(self, host_id: str, info: StreamInfo) -> trio.abc.HalfCloseableStream:
        self.attempts.append(host_id)
        if host_id in self.refuse:
            raise ConnectionProblem(f"agent {host_id} refused the stream")
        if host_id in self.hang:
            await trio.sleep_forever()
        ours, theirs = trio.testing.memory_stream_pair()
        self._send.send_nowait(Opened(host_id, info, theirs))
        return ours

    async def serve_agent(self, stream: trio.abc.Stream, host_id: str) -> None:
        self.tunnels.append(host_id)
        self.quick_tls.append(isinstance(stream, SocketTLSStream))
        self.tunnel_seen.set()
        await stream.send_all(b"tunnel up")  # a real hub would speak h2 here


def role_doc(name: str, labels: dict[str, str | list[str]], deny: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"allow": {"kubernetes_labels": labels, "kubernetes_groups": ["viewers"]}}
    if deny:
        spec["deny"] = {"kubernetes_labels": deny}
    return {"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": spec}


def user_doc(name: str, roles: list[str]) -> dict[str, Any]:
    return {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": roles}}


def heartbeat(host_id: str, cluster: str, *, status: str = "healthy") -> KubeServer:
    expires = (datetime.now(tz=UTC) + timedelta(minutes=5)).timestamp()
    server = codec.resource_from_dict(kube_server_doc(host_id, cluster, expires=expires, status=status))
    assert isinstance(server, KubeServer)
    return server


@dataclass
class Env:
    registry: Registry
    hub: FakeHub
    frontdoor: FrontDoor
    port: int
    clients: list[trio.abc.AsyncResource] = field(default_factory=list)

    async def put(self, doc: dict[str, Any]) -> None:
        await self.registry.create(ADMIN, codec.resource_from_dict(doc, verify_kubeconfig=False))

    async def add_cluster(self, name: str, labels: dict[str, str], *, agents: dict[str, str] | None = None) -> None:
        """A kube_cluster and, per ``agents`` (host id -> health), a heartbeat; agents get live tunnels."""
        await self.put(cluster_doc(name, kubeconfig_bytes(), labels))
        for host, status in (agents or {}).items():
            await self.registry.heartbeat(Caller(identity=agent(host)), heartbeat(host, name, status=status))
            self.hub.live.add(host)
        self.frontdoor.lookup.invalidate()

    async def connect(
        self,
        creds: Credentials | None,
        *,
        alpn: list[str] | None = None,
        authority: CertAuthority | None = None,
    ) -> trio.SSLStream[trio.SocketStream]:
        """A TLS connection to the front door, handshake done (raises what a refused handshake raises)."""
        context = client_context([(authority or ca()).cert_pem], *((creds.cert_pem, creds.key_pem) if creds else ()))
        context.set_alpn_protocols(alpn if alpn is not None else ["h2", "http/1.1"])
        tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
        stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
        self.clients.append(stream)
        await stream.do_handshake()
        return stream

    async def audit_events(self, event: str) -> list[dict[str, Any]]:
        return [r.value for r in await self.registry.store.list("audit") if r.value.get("event") == event]

    async def wait_audit(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        """Poll (with a deadline set by the caller) until ``count`` audit events ``event`` exist."""
        while True:
            await self.registry.flush_audit(drain=True)
            found = await self.audit_events(event)
            if len(found) >= count:
                return found
            await trio.sleep(0.01)


@asynccontextmanager
async def frontdoor_env(limits: FrontDoorLimits | None = None, **kwargs: Any) -> AsyncIterator[Env]:
    # A short drain after refusals keeps tests quick (the clients here read their answer concurrently).
    limits = limits or FrontDoorLimits(drain_timeout=0.1)
    store = MemoryStore()
    registry = Registry(store, ca(), cluster_name="frontdoor-test")
    hub = FakeHub()
    context = frontdoor_server_context(ca(), now=datetime.now(tz=UTC))
    async with trio.open_nursery() as nursery:
        info = await nursery.start(
            functools.partial(
                serve_frontdoor, registry, hub, host="127.0.0.1", port=0, ssl_context=context, limits=limits, **kwargs
            )
        )
        env = Env(registry, hub, info.frontdoor, info.port)
        await env.put(role_doc("kube-access", {"env": "dev"}))
        await env.put(user_doc("alice", ["kube-access"]))
        try:
            yield env
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                for client in env.clients:
                    await trio.aclose_forcefully(client)
    await store.aclose()


def request(cluster: str, path: str = "/api", *, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    target = (cluster_prefix(cluster) + path).encode()
    return method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kubectl-test\r\n" + extra + b"\r\n"


async def read_until_eof(stream: trio.abc.ReceiveStream, limit: int = 8 * 1024 * 1024) -> bytes:
    """Everything the peer sends until it closes (a reset after the answer counts as the end too)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, ssl.SSLError, OSError):
            break
        if not data:
            break
        chunks.append(bytes(data))
        size += len(data)
    return b"".join(chunks)


async def read_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            raise AssertionError(f"stream ended after {len(data)} of {count} bytes: {data[:200]!r}")
        data += chunk
    return data
