"""The batch heartbeat (``POST /v1/kube_servers/{host_id}``, issue 11 §3): an agent announces many clusters
in one request and one store commit; each entry is checked on its own, and one bad entry fails alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from registry.core import codec
from registry.core.errors import AccessDenied, BadParameter
from registry.core.identity import Identity
from registry.testing import InProcessRegistry, agent_identity
from tests.helpers import cluster_doc, kube_server_doc, kubeconfig_bytes


@pytest.fixture
async def reg() -> AsyncIterator[InProcessRegistry]:
    async with InProcessRegistry.open() as registry:
        for name in ("c1", "c2", "c3"):
            await registry.registry.create(
                registry.caller(), codec.resource_from_dict(cluster_doc(name, kubeconfig_bytes(), {}))
            )
        yield registry


def server(name: Any, host_id: str = "host-1", expires_in: float = 60.0) -> dict[str, Any]:
    return kube_server_doc(host_id, name, expires=datetime.now(tz=UTC).timestamp() + expires_in)


async def test_many_heartbeats_one_commit_and_bad_entries_fail_alone(reg: InProcessRegistry) -> None:
    before = await reg.store.revision()
    async with reg.client(agent_identity("host-1")) as client:
        results = await client.heartbeat_many(
            "host-1",
            [
                server("c1"),
                server("ghost"),  # no such kube_cluster
                server("c2", host_id="host-2"),  # someone else's host id
                server("c3", expires_in=-5),  # already expired
                server("c1"),  # twice in one batch
                {"kind": "kube_server", "metadata": "garbage"},
                "not even a mapping",  # type: ignore[list-item]
                server("c2"),
            ],
        )
    assert [(r["name"], "error" in r) for r in results] == [
        ("c1", False),
        ("ghost", True),
        ("c2", True),
        ("c3", True),
        ("c1", True),
        ("", True),
        ("", True),
        ("c2", False),
    ]
    assert results[1]["error"]["code"] == 404 and "ghost" in results[1]["error"]["message"]
    assert all(r["error"]["code"] == 400 for r in results[2:7])
    stored = sorted(r.name for r in await reg.store.list("kube_server"))
    assert stored == ["host-1/c1", "host-1/c2"]
    assert await reg.store.revision() == before + 2  # the two good ones, nothing else


async def test_another_agent_s_host_id_is_refused_whole(reg: InProcessRegistry) -> None:
    async with reg.client(agent_identity("host-2")) as client:
        with pytest.raises(AccessDenied, match="host-1"):
            await client.heartbeat_many("host-1", [server("c1")])
    assert await reg.store.list("kube_server") == []


@pytest.mark.parametrize("body", [{"servers": "c1"}, {"servers": None}, {}, {"servers": [{}] * 513}])
async def test_malformed_or_huge_batches_are_refused(reg: InProcessRegistry, body: dict[str, Any]) -> None:
    async with reg.client(agent_identity("host-1")) as client:
        with pytest.raises(BadParameter):
            await client._request("POST", "/v1/kube_servers/host-1", body=body)
    assert await reg.store.list("kube_server") == []


async def test_a_user_may_not_heartbeat(reg: InProcessRegistry) -> None:
    user = {"kind": "user", "version": "v2", "metadata": {"name": "alice"}, "spec": {"roles": []}}
    await reg.registry.create(reg.caller(), codec.resource_from_dict(user))
    async with reg.client(Identity("alice", "user", roles=())) as client:
        with pytest.raises(AccessDenied):
            await client.heartbeat_many("host-1", [server("c1")])
    assert await reg.store.list("kube_server") == []


async def test_a_batch_checks_its_clusters_in_one_store_read(
    reg: InProcessRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real_get, real_existing = reg.store.get, reg.store.existing

    async def counting_get(kind: str, name: str) -> Any:
        reads.append(f"get {kind}")
        return await real_get(kind, name)

    async def counting_existing(kind: str, names: Any) -> set[str]:
        reads.append(f"existing {kind} x{len(names)}")
        return await real_existing(kind, names)

    monkeypatch.setattr(reg.store, "get", counting_get)
    monkeypatch.setattr(reg.store, "existing", counting_existing)
    async with reg.client(agent_identity("host-1")) as client:
        results = await client.heartbeat_many("host-1", [server("c1"), server("c2"), server("c3")])
    assert all("error" not in r for r in results)
    assert reads == ["existing kube_cluster x3"]  # not one get per heartbeat


async def test_a_static_cluster_of_the_host_may_be_heartbeaten_in_a_batch(reg: InProcessRegistry) -> None:
    await reg.store.put("kube_agent", "host-1", {"host_id": "host-1", "static_clusters": ["local"]})
    async with reg.client(agent_identity("host-1")) as client:
        results = await client.heartbeat_many("host-1", [server("local"), server("c1"), server("ghost")])
    assert [(r["name"], "error" in r) for r in results] == [("local", False), ("c1", False), ("ghost", True)]
    assert results[2]["error"]["code"] == 404
    assert sorted(r.name for r in await reg.store.list("kube_server")) == ["host-1/c1", "host-1/local"]
