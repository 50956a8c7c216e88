"""Per-stream memos of the forwarder's pure steps: kubectl repeats its head on every kept-alive request, so
the header rules' result and the upstream headers are reused while the lines and the decided identity stay
the same. Authorization still runs for every request: a changed role changes the next request's identity
or refuses it, and a changed or hostile head is inspected again."""

from __future__ import annotations

import pytest
import trio

from agent.forward.decide import HeadMemo
from registry.core.errors import AccessDenied, BadParameter
from tests.agent.forward.forward_helpers import PODS_ONLY, PREFIX, open_client, role, world_for
from tests.fakes.kube_api import FakeKube

PODS = f"{PREFIX}/api/v1/namespaces/default/pods"
KUBECTL = [(b"User-Agent", b"kubectl/v1.30.0"), (b"Accept", b"application/json"), (b"Kubectl-Session", b"s-1")]


async def test_the_same_lines_give_the_same_inspection() -> None:
    memo = HeadMemo()
    first = memo.inspect([(b"accept", b"application/json"), (b"impersonate-group", b"viewers")])
    again = memo.inspect([(b"accept", b"application/json"), (b"impersonate-group", b"viewers")])
    assert again is first
    assert memo.hits == 1
    other = memo.inspect([(b"accept", b"application/json"), (b"impersonate-group", b"editors")])
    assert other is not first
    assert other.requested_groups == ("editors",)
    assert memo.hits == 1


async def test_a_refused_head_is_refused_every_time_and_never_remembered() -> None:
    memo = HeadMemo()
    good = memo.inspect([(b"accept", b"*/*")])
    for _ in range(2):
        with pytest.raises(BadParameter):
            memo.inspect([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")])
        with pytest.raises(AccessDenied):
            memo.inspect([(b"impersonate-uid", b"0")])
    assert memo.inspect([(b"accept", b"*/*")]) is good


async def test_a_narrowed_role_changes_the_next_identity_on_the_same_head(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube, roles=(PODS_ONLY,))
    client = await open_client(nursery, world)
    for _ in range(2):
        assert (await client.request("GET", PODS, headers=KUBECTL)).status == 200
        assert fake_kube.requests[-1].header_values("impersonate-group") == [
            "viewers",
            "editors",
            "system:authenticated",
        ]
    world.roles[PODS_ONLY.name] = role(
        PODS_ONLY.name, {"kubernetes_labels": {"env": "prod"}, "kubernetes_groups": ["viewers"]}
    )
    assert (await client.request("GET", PODS, headers=KUBECTL)).status == 200
    seen = fake_kube.requests[-1]
    assert seen.header_values("impersonate-group") == ["viewers", "system:authenticated"]
    assert seen.header_values("impersonate-user") == ["alice"]


async def test_a_group_no_longer_granted_is_refused_on_the_same_head(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube, roles=(PODS_ONLY,))
    client = await open_client(nursery, world)
    asking = [*KUBECTL, (b"Impersonate-Group", b"viewers")]
    assert (await client.request("GET", PODS, headers=asking)).status == 200
    assert fake_kube.requests[-1].header_values("impersonate-group") == ["viewers", "system:authenticated"]
    world.roles[PODS_ONLY.name] = role(
        PODS_ONLY.name, {"kubernetes_labels": {"env": "prod"}, "kubernetes_groups": ["editors"]}
    )
    before = len(fake_kube.requests)
    reply = await client.request("GET", PODS, headers=asking)
    assert reply.status == 403
    assert 'group header "viewers" value is not allowed' in reply.json()["message"]
    assert len(fake_kube.requests) == before


async def test_a_changed_head_after_a_remembered_one_is_inspected_again(
    nursery: trio.Nursery, fake_kube: FakeKube
) -> None:
    world = world_for(fake_kube, roles=(PODS_ONLY,))
    client = await open_client(nursery, world)
    for _ in range(2):
        assert (await client.request("GET", PODS, headers=KUBECTL)).status == 200
    reply = await client.request("GET", PODS, headers=[*KUBECTL, (b"Impersonate-Extra-Scopes", b"admin")])
    assert reply.status == 403
    assert "Impersonate-Extra-Scopes" in reply.json()["message"]
    stolen = [*KUBECTL, (b"Authorization", b"Bearer stolen"), (b"X-Remote-User", b"admin")]
    assert (await client.request("GET", PODS, headers=stolen)).status == 200
    seen = fake_kube.requests[-1]
    assert seen.header_values("x-remote-user") == []
    assert seen.header("authorization") != "Bearer stolen"
    assert seen.header_values("impersonate-group") == ["viewers", "editors", "system:authenticated"]
