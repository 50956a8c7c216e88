"""Shared pieces of the forwarder tests: a ForwardContext over fakes, and a tiny h11 client.

The upstream is the shared fake Kubernetes API (``tests/fakes``) over real TLS. The agent authenticates to
it with the kubeconfig token of ``kubeport-agent``, which may impersonate users and groups (as a real
cluster's kubeport service account would); the group ``viewers`` may read pods and ``editors`` may also
create them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import h11
import trio
import trio.testing

from agent.forward import ForwardContext, ForwardLimits, UpstreamPool, handle_stream
from agent.forward.upstream_h2 import H2Pool
from registry.core import codec
from registry.core.errors import NotFound
from registry.core.kube_route import cluster_prefix
from registry.core.resources import KubeCluster, Metadata, Role, User
from registry.core.tunnel_info import StreamInfo
from registry.host.h2tunnel import H2Tunnel, TunnelStream
from tests.fakes.kube_api import FakeKube

AGENT_TOKEN = "kubeport-agent-token"
CLUSTER = "prod"
LABELS = {"env": "prod"}


def role(name: str, allow: dict[str, Any], deny: dict[str, Any] | None = None, version: str = "v7") -> Role:
    spec: dict[str, Any] = {"allow": allow}
    if deny:
        spec["deny"] = deny
    model = codec.resource_from_dict({"kind": "role", "version": version, "metadata": {"name": name}, "spec": spec})
    assert isinstance(model, Role)
    return model


def user(name: str, roles: Sequence[str], traits: Mapping[str, list[str]] | None = None) -> User:
    doc = {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": list(roles)}}
    if traits:
        doc["spec"]["traits"] = dict(traits)
    model = codec.resource_from_dict(doc)
    assert isinstance(model, User)
    return model


KUBE_ACCESS = role("kube-access", {"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ["viewers"]})
PODS_ONLY = role(
    "pods-only",
    {
        "kubernetes_labels": {"env": "prod"},
        "kubernetes_groups": ["viewers", "editors"],
        "kubernetes_users": ["alice"],
        "kubernetes_resources": [{"kind": "pod", "namespace": "*", "name": "*", "verbs": ["*"]}],
    },
)


def prepare_fake(fake: FakeKube) -> None:
    """The agent's credential and the RBAC the impersonated identities get on the fake."""
    fake.add_token(AGENT_TOKEN, "kubeport-agent")
    fake.grant("kubeport-agent", verbs=["impersonate"], resources=["users", "groups"])
    fake.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake.grant("editors", kind="Group", verbs=["create", "delete"], resources=["pods"])


def stream_info(
    cluster: str = CLUSTER,
    user_name: str = "alice",
    expires: datetime | None = None,
    roles: Sequence[str] = ("kube-access", "pods-only"),
) -> StreamInfo:
    """What the front door sends with a stream; ``roles`` are the certificate's effective roles."""
    return StreamInfo(
        cluster=cluster,
        user=user_name,
        roles=tuple(roles),
        client_addr="127.0.0.1:55555",
        cert_expires=expires or datetime.now(UTC) + timedelta(hours=1),
    )


@dataclass
class World:
    """The agent's view for one test: users, roles, served clusters, recorded audit events."""

    users: dict[str, User] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    clusters: dict[str, tuple[KubeCluster, Mapping[str, str]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    lookups: int = 0

    async def user_access(self, name: str) -> tuple[User, tuple[Role, ...]]:
        self.lookups += 1
        found = self.users.get(name)
        if found is None:
            raise NotFound(f'user "{name}" not found')
        return found, tuple(self.roles[r] for r in found.roles if r in self.roles)

    def cluster(self, name: str) -> tuple[KubeCluster, Mapping[str, str]] | None:
        return self.clusters.get(name)

    changed: trio.Event = field(default_factory=trio.Event)

    async def audit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    def kube_requests(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "kube.request"]

    async def wait_events(self, count: int, kind: str = "kube.request", timeout: float = 10) -> list[dict[str, Any]]:
        """The events of ``kind`` once there are at least ``count`` of them (the forwarder audits a request
        after its last byte went to the client, so a test may read the answer first)."""
        with trio.fail_after(timeout):
            while True:
                found = [e for e in self.events if e["event"] == kind]
                if len(found) >= count:
                    return found
                await self.changed.wait()

    def context(self, pool: UpstreamPool | None = None, limits: ForwardLimits | None = None) -> ForwardContext:
        return ForwardContext(
            user_access=self.user_access,
            cluster=self.cluster,
            audit=self.audit,
            host="host-1",
            pool=pool or new_pool(),
            limits=limits or ForwardLimits(),
            h2=new_h2_pool(),
        )


def kube_cluster(name: str, kubeconfig: bytes, labels: Mapping[str, str] = LABELS) -> KubeCluster:
    return KubeCluster(metadata=Metadata(name=name, labels=dict(labels)), kubeconfig=kubeconfig)


def world_for(fake: FakeKube, *, roles: Sequence[Role] = (KUBE_ACCESS,), user_roles: Sequence[str] = ()) -> World:
    prepare_fake(fake)
    world = World()
    for r in roles:
        world.roles[r.name] = r
    world.users["alice"] = user("alice", user_roles or [r.name for r in roles])
    world.clusters[CLUSTER] = (kube_cluster(CLUSTER, fake.kubeconfig_yaml(AGENT_TOKEN)), LABELS)
    return world


PREFIX = cluster_prefix(CLUSTER)
POOLS: list[UpstreamPool | H2Pool] = []  # closed after each test (tests/forward/conftest.py)


def new_pool(**kwargs: Any) -> UpstreamPool:
    pool = UpstreamPool(**kwargs)
    POOLS.append(pool)
    return pool


def new_h2_pool(**kwargs: Any) -> H2Pool:
    pool = H2Pool(**kwargs)
    POOLS.append(pool)
    return pool


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Client:
    """An HTTP/1.1 client (h11) on one stream: what kubectl's connection looks like to the forwarder."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send_request(
        self, method: str, target: str, headers: Sequence[tuple[bytes | str, bytes | str]] = (), body: bytes = b""
    ) -> None:
        all_headers: list[tuple[bytes | str, bytes | str]] = [(b"Host", b"front:3026"), *headers]
        if body and not any(str(n).lower() in ("content-length", "b'content-length'") for n, _ in headers):
            all_headers.append((b"Content-Length", str(len(body)).encode()))
        await self._send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def send_chunked(
        self,
        method: str,
        target: str,
        chunks: Sequence[bytes],
        headers: Sequence[tuple[bytes | str, bytes | str]] = (),
    ) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [(b"Host", b"front:3026"), *headers, (b"Transfer-Encoding", b"chunked")]
        await self._send(h11.Request(method=method, target=target, headers=all_headers))
        for chunk in chunks:
            await self._send(h11.Data(data=chunk))
        await self._send(h11.EndOfMessage())

    async def _send(self, event: Any) -> None:
        await self.stream.send_all(self.conn.send(event) or b"")

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(65536)))

    async def response_head(self) -> h11.Response | h11.InformationalResponse:
        event = await self.next_event()
        assert isinstance(event, h11.Response | h11.InformationalResponse), event
        return event

    async def read_body(self) -> bytes:
        parts = []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[bytes | str, bytes | str]] = (), body: bytes = b""
    ) -> Reply:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        await self.send_request(method, target, headers, body)
        head = await self.response_head()
        data = await self.read_body()
        return Reply(head.status_code, list(head.headers.raw_items()), data)

    def can_reuse(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


async def open_client(
    nursery: trio.Nursery, world: World, ctx: ForwardContext | None = None, *, tunnel: bool = False, **info: Any
) -> Client:
    """A client whose stream the forwarder serves: a memory stream pair, or with ``tunnel`` a real tunnel
    stream (an :class:`H2Tunnel` pair over memory streams, as the front door and the agent hold). The
    stream's roles are, as the front door sends them, the roles the user holds now (unless ``roles`` says)."""
    held = world.users.get(str(info.get("user_name", "alice")))
    if "roles" not in info and held is not None and held.roles:
        info["roles"] = tuple(held.roles)
    details = stream_info(**info)
    context = ctx or world.context()
    if not tunnel:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(lambda: handle_stream(server_stream, details, ctx=context))
        return Client(client_stream)

    async def serve(stream: TunnelStream) -> None:
        await stream.accept()
        await handle_stream(stream, details, ctx=context)

    left, right = trio.testing.memory_stream_pair()
    front, agent = H2Tunnel(left, side="client"), H2Tunnel(right, side="server")
    await nursery.start(front.run)
    await nursery.start(agent.run, serve)
    return Client(await front.open_stream(details.to_headers(), authority="agent"))
