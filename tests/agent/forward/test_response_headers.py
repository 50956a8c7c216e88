"""The answer's head on its way to kubectl: hop-by-hop headers and those the API server's ``Connection``
lists are dropped; every other header arrives as the API server wrote it, in its order."""

from __future__ import annotations

import trio
import yaml

from registry.server.http import Request, Response, serve_http
from tests.agent.forward.forward_helpers import (
    CLUSTER,
    KUBE_ACCESS,
    LABELS,
    PREFIX,
    World,
    kube_cluster,
    open_client,
    user,
)

HOPPY = [
    ("Connection", "keep-alive, X-Hop"),
    ("Keep-Alive", "timeout=5"),
    ("X-Hop", "1"),
    ("X-Kept", "1"),
    ("Content-Type", "application/json"),
]
PLAIN = [("Audit-Id", "abc-123"), ("X-Kept", "2"), ("Content-Type", "application/json")]


async def _upstream(request: Request) -> Response:
    return Response(200, HOPPY if request.path.endswith("/hoppy") else PLAIN, b'{"kind":"Status"}')


async def _world(nursery: trio.Nursery) -> World:
    info = await nursery.start(lambda task_status: serve_http(_upstream, task_status=task_status))
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://{info.address}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    world = World()
    world.roles[KUBE_ACCESS.name] = KUBE_ACCESS
    world.users["alice"] = user("alice", [KUBE_ACCESS.name])
    world.clusters[CLUSTER] = (kube_cluster(CLUSTER, yaml.safe_dump(kubeconfig).encode()), LABELS)
    return world


async def test_hop_by_hop_and_connection_listed_headers_are_dropped(nursery: trio.Nursery) -> None:
    client = await open_client(nursery, await _world(nursery))
    reply = await client.request("GET", f"{PREFIX}/api/v1/hoppy")
    names = [name.lower() for name, _ in reply.headers]
    assert reply.status == 200
    assert b"x-kept" in names
    assert not {b"keep-alive", b"x-hop"} & set(names)
    assert reply.header(b"connection") in (None, b"keep-alive")  # only ever the client hop's own
    assert reply.body == b'{"kind":"Status"}'


async def test_other_headers_arrive_as_written_and_keep_alive_goes_on(nursery: trio.Nursery) -> None:
    client = await open_client(nursery, await _world(nursery))
    for _ in range(2):
        reply = await client.request("GET", f"{PREFIX}/api/v1/plain")
        written = [(name, value) for name, value in reply.headers if name.lower() != b"content-length"]
        got = [(n.decode().lower(), v.decode()) for n, v in written if n.lower() != b"date"]
        assert got[:3] == [(n.lower(), v) for n, v in PLAIN]
        assert reply.body == b'{"kind":"Status"}'
        client.conn.start_next_cycle()
