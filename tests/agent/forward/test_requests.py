"""The forwarder against the shared fake Kubernetes API over real TLS: impersonation, credentials, refusals.

The client side is an in-memory stream, as a tunnel stream is: the forwarder cannot tell the difference.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import trio

from tests.agent.forward.forward_helpers import (
    AGENT_TOKEN,
    CLUSTER,
    KUBE_ACCESS,
    PODS_ONLY,
    PREFIX,
    open_client,
    world_for,
)
from tests.fakes.kube_api import FakeKube

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": {}}


async def test_get_is_forwarded_with_our_impersonation_and_the_kubeconfig_credential(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube)
    fake_kube.create_object(POD)
    client = await open_client(nursery, world)
    reply = await client.request(
        "GET",
        f"{PREFIX}/api/v1/namespaces/default/pods?limit=500",
        headers=[(b"Accept", b"application/json"), (b"Authorization", b"Bearer stolen-by-client")],
    )
    assert reply.status == 200, reply.body
    assert [item["metadata"]["name"] for item in reply.json()["items"]] == ["web"]
    seen = fake_kube.requests[-1]
    assert seen.path == "/api/v1/namespaces/default/pods"
    assert seen.query == {"limit": ["500"]}
    assert seen.user == "kubeport-agent"  # authenticated with the kubeconfig's token, not the client's
    assert seen.header_values("authorization") == [f"Bearer {AGENT_TOKEN}"]
    assert seen.impersonated_user == "alice"
    assert seen.header_values("impersonate-group") == ["viewers", "system:authenticated"]
    assert seen.header("host") == fake_kube.url.removeprefix("https://")
    [event] = await world.wait_events(1)
    assert event["user"] == "alice"
    assert event["cluster"] == CLUSTER
    assert event["host"] == "host-1"
    assert event["method"] == "GET"
    assert event["path"] == "/api/v1/namespaces/default/pods?limit=500"
    assert (event["verb"], event["resource"], event["namespace"]) == ("list", "pods", "default")
    assert event["impersonated_user"] == "alice"
    assert event["impersonated_groups"] == ["viewers", "system:authenticated"]
    assert event["status"] == 200
    assert event["roles"] == ["kube-access"]
    assert event["duration_ms"] >= 0


async def test_client_authorization_and_impersonation_never_reach_upstream(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube, roles=(PODS_ONLY,))
    client = await open_client(nursery, world)
    reply = await client.request(
        "GET",
        f"{PREFIX}/api/v1/namespaces/default/pods",
        headers=[
            (b"Authorization", b"Bearer x"),
            (b"Impersonate-User", b"alice"),
            (b"Impersonate-Group", b"viewers"),
            (b"X-Remote-User", b"admin"),
            (b"Cookie", b"a=b"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"Kubeport-User", b"root"),
        ],
    )
    assert reply.status == 200, reply.body
    seen = fake_kube.requests[-1]
    names = [name for name, _ in seen.headers]
    assert seen.header_values("authorization") == [f"Bearer {AGENT_TOKEN}"]
    assert seen.header_values("impersonate-user") == ["alice"]
    assert seen.header_values("impersonate-group") == ["viewers", "system:authenticated"]
    for name in ("x-remote-user", "cookie", "x-forwarded-for", "kubeport-user"):
        assert name not in names


async def test_a_denied_resource_is_a_forbidden_status_and_never_reaches_upstream(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube, roles=(PODS_ONLY,))
    client = await open_client(nursery, world)
    before = len(fake_kube.requests)
    reply = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/secrets/db")
    assert reply.status == 403
    status = reply.json()
    assert status["kind"] == "Status"
    assert status["reason"] == "Forbidden"
    assert 'secrets "db" is forbidden: User "alice" cannot get resource "secrets"' in status["message"]
    assert len(fake_kube.requests) == before
    assert client.can_reuse()  # a refusal keeps the connection
    again = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert again.status == 200
    assert [e["status"] for e in await world.wait_events(2)] == [403, 200]
    assert world.kube_requests()[0]["error"].startswith('secrets "db" is forbidden')


async def test_a_forged_group_is_refused(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    reply = await client.request(
        "GET", f"{PREFIX}/api/v1/namespaces/default/pods", headers=[(b"Impersonate-Group", b"system:masters")]
    )
    assert reply.status == 403
    assert 'group header "system:masters" value is not allowed' in reply.json()["message"]


async def test_a_wrong_prefix_is_400_and_closes_the_stream(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    ok = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert ok.status == 200
    other = "/v1/clusters/c3RhZ2luZw"  # "staging": another cluster on the same connection
    reply = await client.request("GET", f"{other}/api/v1/namespaces/default/pods")
    assert reply.status == 400
    assert reply.header(b"connection") == b"close"
    assert 'this connection serves Kubernetes cluster "prod"' in reply.json()["message"]
    assert await client.stream.receive_some(100) == b""  # closed
    assert [e["status"] for e in await world.wait_events(2)] == [200, 400]


async def test_prefix_attacks_are_400(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    for target in (
        "/api/v1/pods",
        f"{PREFIX}x/api/v1/pods",  # a longer segment that starts with ours
        f"{PREFIX}%2Fapi/v1/pods",
        "/v1/clusters/cHJvZA%3D%3D/api",
        f"/./{PREFIX}/api",
        f"{PREFIX}/../../v1/clusters/c3RhZ2luZw/api/v1/pods",
        f"{PREFIX}/api/v1/namespaces/default/pods/%2e%2e/secrets",
    ):
        client = await open_client(nursery, world)
        reply = await client.request("GET", target)
        assert reply.status == 400, (target, reply.body)
    assert not [r for r in fake_kube.requests if r.user == "kubeport-agent"]


async def test_a_deleted_user_is_refused(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    assert (await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")).status == 200
    del world.users["alice"]
    reply = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert reply.status == 403
    assert 'kubeport user "alice" does not exist' in reply.json()["message"]


async def test_a_removed_role_loses_access_on_the_next_request(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    assert (await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")).status == 200
    del world.roles[KUBE_ACCESS.name]
    reply = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert reply.status == 404  # no role selects the cluster any more: like a cluster that does not exist
    assert reply.json()["message"] == f'Kubernetes cluster "{CLUSTER}" not found'


async def test_a_cluster_no_longer_served_is_404(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world)
    world.clusters.clear()
    reply = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert reply.status == 404
    assert reply.json()["reason"] == "NotFound"


async def test_an_expired_certificate_is_401(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube)
    client = await open_client(nursery, world, expires=datetime.now(UTC) - timedelta(seconds=1))
    reply = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert reply.status == 401
    assert "expired" in reply.json()["message"]


async def test_keep_alive_serves_several_requests_over_one_pooled_upstream_connection(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube)
    ctx = world.context()
    client = await open_client(nursery, world, ctx)
    for _ in range(5):
        reply = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
        assert reply.status == 200
    for path in ("/api", "/apis", "/version"):
        assert (await client.request("GET", f"{PREFIX}{path}")).status == 200
    assert len(await world.wait_events(8)) == 8
    stats = ctx.pool.statistics()
    assert stats.connects == 1
    assert stats.reuses == 7
    assert stats.idle == 1


async def test_a_post_body_is_forwarded(nursery: trio.Nursery, fake_kube: FakeKube) -> None:
    world = world_for(fake_kube, roles=(PODS_ONLY,))
    client = await open_client(nursery, world)
    body = json.dumps(POD).encode()
    reply = await client.request(
        "POST",
        f"{PREFIX}/api/v1/namespaces/default/pods",
        headers=[(b"Content-Type", b"application/json")],
        body=body,
    )
    assert reply.status == 201, reply.body
    assert fake_kube.get_object("pods", "web", "default") is not None
    event = (await world.wait_events(1))[-1]
    assert (event["verb"], event["status"]) == ("create", 201)
    # a large chunked body (beyond the replay buffer, no Content-Length) streams through
    big = dict(POD, metadata={"name": "big", "namespace": "default", "annotations": {"x": "y" * 300_000}})
    data = json.dumps(big).encode()
    await client.send_chunked(
        "POST",
        f"{PREFIX}/api/v1/namespaces/default/pods",
        [data[i : i + 10_000] for i in range(0, len(data), 10_000)],
        headers=[(b"Content-Type", b"application/json")],
    )
    head = await client.response_head()
    assert head.status_code == 201, await client.read_body()
    await client.read_body()
    stored = fake_kube.get_object("pods", "big", "default")
    assert stored is not None
    assert len(stored["metadata"]["annotations"]["x"]) == 300_000
    seen = fake_kube.requests[-1]
    assert seen.header("transfer-encoding") == "chunked"


async def test_an_unreachable_api_server_is_a_502_naming_the_cluster(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    kubeconfig = fake_kube.kubeconfig_yaml(AGENT_TOKEN, server=f"https://127.0.0.1:{port}")
    cluster, labels = world.clusters[CLUSTER]
    from dataclasses import replace

    world.clusters[CLUSTER] = (replace(cluster, kubeconfig=kubeconfig), labels)
    client = await open_client(nursery, world)
    reply = await client.request("GET", f"{PREFIX}/api/v1/namespaces/default/pods")
    assert reply.status == 502
    status = reply.json()
    assert status["kind"] == "Status"
    assert f'cannot reach the API server of Kubernetes cluster "{CLUSTER}"' in status["message"]
    assert "Traceback" not in status["message"]
    assert client.can_reuse()
