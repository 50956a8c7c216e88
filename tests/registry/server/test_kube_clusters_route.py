"""``GET /v1/kube_clusters``: a user sees exactly the clusters their current roles reach (issue 10 §3).

Through the real API handlers (InProcessRegistry) with user certificates: seed 003's role needs no
kube_server rule; only served clusters show, once each; static ∪ dynamic labels decide; a role removed from
the user takes its clusters away at once; no kubeconfig leaves; agents and admins are refused.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.core import codec
from registry.core.errors import AccessDenied
from registry.core.identity import Identity
from registry.core.resources import KubeServer
from registry.testing import InProcessRegistry
from tests.helpers import cluster_doc, kubeconfig_bytes
from tests.registry.frontdoor.frontdoor_helpers import agent, role_doc, user_doc


def _heartbeat(
    host: str, cluster: str, *, status: str = "healthy", dynamic: dict[str, str] | None = None, expires_in: float = 300
) -> KubeServer:
    spec: dict[str, Any] = {}
    if dynamic:
        spec["dynamic_labels"] = {
            key: {"command": ["true"], "period": "1m", "result": value} for key, value in dynamic.items()
        }
    doc = {
        "kind": "kube_server",
        "version": "v3",
        "metadata": {"name": cluster, "expires": (datetime.now(tz=UTC) + timedelta(seconds=expires_in)).isoformat()},
        "spec": {
            "host_id": host,
            "hostname": "agent:3027",
            "version": "1.0",
            "cluster": {"kind": "kube_cluster", "version": "v3", "metadata": {"name": cluster}, "spec": spec},
            "health": {"status": status, "reason": "" if status == "healthy" else "connection refused"},
        },
    }
    server = codec.resource_from_dict(doc)
    assert isinstance(server, KubeServer)
    return server


async def _setup(reg: InProcessRegistry) -> None:
    admin = reg.caller()
    for doc in (
        role_doc("prod-only", {"env": "prod"}),
        role_doc("by-region", {"region": "eu"}),
        user_doc("alice", ["prod-only", "by-region"]),
        cluster_doc("prod-a", kubeconfig_bytes(), {"env": "prod"}),
        cluster_doc("prod-b", kubeconfig_bytes(), {"env": "prod"}),
        cluster_doc("dev", kubeconfig_bytes(), {"env": "dev"}),
        cluster_doc("dyn", kubeconfig_bytes(), {"env": "dev"}),
        cluster_doc("unserved", kubeconfig_bytes(), {"env": "prod"}),
    ):
        await reg.registry.create(admin, codec.resource_from_dict(doc, verify_kubeconfig=False))
    for host, cluster, status in (
        ("h1", "prod-a", "unhealthy"),
        ("h2", "prod-a", "healthy"),
        ("h1", "prod-b", "unknown"),
        ("h1", "dev", "healthy"),
    ):
        await reg.registry.heartbeat(reg.caller(agent(host)), _heartbeat(host, cluster, status=status))
    await reg.registry.heartbeat(reg.caller(agent("h1")), _heartbeat("h1", "dyn", dynamic={"region": "eu"}))


ALICE = Identity(name="alice", kind="user", roles=("prod-only", "by-region"))


async def test_user_sees_exactly_the_clusters_their_roles_select() -> None:
    async with InProcessRegistry.open() as reg:
        await _setup(reg)
        async with reg.client(ALICE) as client:
            view = await client.kube_access()
        names = [item["name"] for item in view["items"]]
        assert names == ["dyn", "prod-a", "prod-b"], "served, selected (static ∪ dynamic), once each, sorted"
        by_name = {item["name"]: item for item in view["items"]}
        assert by_name["prod-a"]["health"] == {"status": "healthy"}, "healthy when any agent is"
        assert by_name["prod-b"]["health"] == {"status": "unknown"}
        assert by_name["dyn"]["labels"]["region"] == "eu"
        assert view["user"] == "alice"
        assert sorted(view["roles"]) == ["by-region", "prod-only"]
        assert view["kubernetes_groups"] == ["viewers"]
        assert "kubeconfig" not in json.dumps(view)


async def test_a_removed_role_takes_its_clusters_away_on_the_next_call() -> None:
    async with InProcessRegistry.open() as reg:
        await _setup(reg)
        await reg.registry.update(reg.caller(), codec.resource_from_dict(user_doc("alice", ["by-region"])))
        async with reg.client(ALICE) as client:
            view = await client.kube_access()
        assert [item["name"] for item in view["items"]] == ["dyn"]
        assert view["roles"] == ["by-region"]


async def test_expired_heartbeats_do_not_list_a_cluster() -> None:
    async with InProcessRegistry.open() as reg:
        await _setup(reg)
        await reg.registry.create(
            reg.caller(),
            codec.resource_from_dict(cluster_doc("gone", kubeconfig_bytes(), {"env": "prod"}), verify_kubeconfig=False),
        )
        await reg.store.put("kube_server", "h9/gone", codec.resource_to_dict(_heartbeat("h9", "gone", expires_in=-5)))
        async with reg.client(ALICE) as client:
            view = await client.kube_access()
        assert "gone" not in [item["name"] for item in view["items"]]


async def test_an_unreadable_stored_heartbeat_is_skipped_not_a_500() -> None:
    async with InProcessRegistry.open() as reg:
        await _setup(reg)
        await reg.store.put("kube_server", "h7/prod-b", {"kind": "kube_server", "metadata": {"name": "prod-b"}})
        async with reg.client(ALICE) as client:
            view = await client.kube_access()
        assert [item["name"] for item in view["items"]] == ["dyn", "prod-a", "prod-b"]


@pytest.mark.parametrize("identity", [agent("h1"), Identity(name="admin", kind="admin", roles=("admin",))])
async def test_only_users_have_this_view(identity: Identity) -> None:
    async with InProcessRegistry.open() as reg:
        await _setup(reg)
        async with reg.client(identity) as client:
            with pytest.raises(AccessDenied, match="kpctl get kube_servers"):
                await client.kube_access()
