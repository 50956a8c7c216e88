"""RegistryAccessSource (users and roles from the real registry API, cached <= 1 s) and AuditBatcher."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import yaml

from agent.forward import AuditBatcher, RegistryAccessSource
from agent.forward.audit import AUDIT_DROPPED
from agent.forward.upstream import Endpoints
from registry.core.errors import AccessDenied, ConnectionProblem
from registry.testing import InProcessRegistry, agent_identity
from tests.agent.forward.forward_helpers import KUBE_ACCESS, PODS_ONLY, kube_cluster, user


async def test_registry_access_source_reads_current_users_and_roles(mock_clock: trio.testing.MockClock) -> None:
    async with InProcessRegistry.open() as reg:
        await reg.registry.create(reg.caller(), KUBE_ACCESS)
        await reg.registry.create(reg.caller(), PODS_ONLY)
        await reg.registry.create(reg.caller(), user("alice", ["kube-access", "pods-only", "deleted-role"]))
        async with reg.client(agent_identity()) as client:
            source = RegistryAccessSource(client)
            found, roles = await source("alice")
            assert found.name == "alice"
            assert [r.name for r in roles] == ["kube-access", "pods-only"]  # a missing role grants nothing
            fetches = source.fetches
            # within the TTL: no registry call; concurrent lookups share one call once it expired
            await source("alice")
            assert source.fetches == fetches
            mock_clock.jump(1.01)
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(source, "alice")
            assert source.fetches == 2 * fetches
            # a removed role and a deleted user lose access once the cache entry expired (<= 1 s)
            await reg.registry.delete(reg.caller(), "role", "pods-only")
            mock_clock.jump(1.01)
            _, roles = await source("alice")
            assert [r.name for r in roles] == ["kube-access"]
            await reg.registry.delete(reg.caller(), "user", "alice")
            mock_clock.jump(1.01)
            with pytest.raises(AccessDenied, match='kubeport user "alice" does not exist'):
                await source("alice")
            # a registry that cannot be reached is an error, never "no such user", and is not cached
            import httpx

            mock_clock.jump(1.01)
            reg.fail_next("/v1/resources/user/bob", httpx.ConnectError("down"))
            with pytest.raises(ConnectionProblem):
                await source("bob")
            with pytest.raises(AccessDenied):
                await source("bob")


async def test_a_fresh_cached_lookup_does_not_yield_and_an_expired_one_reads_again(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A request's user and role lookups within the TTL cost no task switch; past it they are read again."""
    async with InProcessRegistry.open() as reg:
        await reg.registry.create(reg.caller(), KUBE_ACCESS)
        await reg.registry.create(reg.caller(), user("alice", ["kube-access"]))
        async with reg.client(agent_identity()) as client:
            source = RegistryAccessSource(client)
            await source("alice")
            fetches = source.fetches
            with trio.testing.assert_no_checkpoints():
                found, roles = await source("alice")
            assert (found.name, [r.name for r in roles]) == ("alice", ["kube-access"])
            assert source.fetches == fetches
            await reg.registry.delete(reg.caller(), "role", "kube-access")
            mock_clock.jump(1.01)
            _, roles = await source("alice")
            assert roles == () and source.fetches == 2 * fetches


async def test_registry_access_source_refuses_a_ttl_above_one_second() -> None:
    with pytest.raises(ValueError, match="ttl"):
        RegistryAccessSource(object(), ttl=5)  # type: ignore[arg-type]


async def test_audit_batcher_batches_without_blocking(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    batches: list[list[dict[str, object]]] = []

    async def sink(batch: list[dict[str, object]]) -> None:
        batches.append(batch)

    batcher = AuditBatcher(sink, capacity=100, batch_size=10, flush_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.serve)
        for index in range(25):
            await batcher({"event": "kube.request", "n": index})
        with trio.fail_after(10):
            await batcher.wait_flushed()
        nursery.cancel_scope.cancel()
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [e["n"] for b in batches for e in b] == list(range(25))
    assert batcher.statistics().written == 25


async def test_audit_batcher_counts_and_reports_drops_and_survives_a_failing_sink(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    batches: list[list[dict[str, object]]] = []
    failing = True

    async def sink(batch: list[dict[str, object]]) -> None:
        if failing:
            raise ConnectionProblem("registry down")
        batches.append(batch)

    batcher = AuditBatcher(sink, capacity=5, batch_size=100, flush_interval=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.serve)
        for index in range(8):
            batcher.submit({"event": "kube.request", "n": index})
        assert batcher.statistics().dropped == 3
        await trio.sleep(5)  # virtual time: several failed writes with backoff
        assert batcher.statistics().failed_writes >= 2
        failing = False
        with trio.fail_after(60):
            await batcher.wait_flushed()
        nursery.cancel_scope.cancel()
    events = [e for b in batches for e in b]
    assert events[0] == {"event": AUDIT_DROPPED, "success": False, "count": 3}
    assert [e["n"] for e in events[1:]] == [0, 1, 2, 3, 4]  # nothing queued was lost to the failures


async def test_served_clusters_reads_the_agent_table_with_heartbeat_labels() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from agent.forward import served_clusters
    from agent.health import HealthResult
    from agent.heartbeat import ServiceInfo, kube_server
    from agent.kube.exec_plugin import ExecCredential
    from registry.core.errors import NotFound
    from registry.core.resources import CommandLabel, KubeCluster, Metadata

    cluster = KubeCluster(
        metadata=Metadata(name="prod", labels={"env": "prod", "team": "a"}),
        dynamic_labels={"arch": CommandLabel(command=("uname", "-m"), period="1m")},
    )
    service = ServiceInfo(host_id="host-1", hostname="agent:3027", labels={"team": "b"}, commands={})
    credential = ExecCredential(token="t", client_cert=None, client_key=None, expires=None)

    class API:
        async def exec_credential(self) -> ExecCredential:
            return credential

    class Table:
        def __init__(self) -> None:
            self.served = {"prod": SimpleNamespace(cluster=cluster, api=API())}

        def kube_server(self, served: SimpleNamespace, expires: float) -> object:
            health = HealthResult(status="healthy", reason="", checked_at=datetime.now(UTC))
            return kube_server(
                served.cluster,
                results={"arch": "x86_64"},
                service=service,
                service_results={},
                health=health,
                expires=expires,
            )

        def announced_labels(self, served: SimpleNamespace) -> dict[str, str]:
            return self.kube_server(served, 0.0).all_labels()  # type: ignore[attr-defined, no-any-return]

    lookup, exec_credential = served_clusters(Table())
    found = lookup("prod")
    assert found is not None
    assert found[0] is cluster
    assert dict(found[1]) == {"env": "prod", "team": "b", "arch": "x86_64"}
    assert lookup("gone") is None
    assert await exec_credential("prod") is credential
    with pytest.raises(NotFound):
        await exec_credential("gone")


def _kubeconfig(server: str, token: str) -> bytes:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    return yaml.safe_dump(doc).encode()


async def test_endpoints_follow_a_changed_cluster_and_reuse_an_unchanged_one() -> None:
    """The target of a served cluster object is found again without re-hashing its kubeconfig; an edited
    cluster (a new object) gets its own server and credential at once, and one with the same content
    shares the checked kubeconfig."""
    endpoints = Endpoints()
    first = kube_cluster("prod", _kubeconfig("http://127.0.0.1:1", "token-one"))
    one = await endpoints.endpoint(first, None)
    assert (one.port, one.authorization) == (1, b"Bearer token-one")
    assert endpoints.target(first) is endpoints.target(first)
    assert await endpoints.endpoint(first, None) is one

    edited = kube_cluster("prod", _kubeconfig("http://127.0.0.1:2", "token-two"))
    two = await endpoints.endpoint(edited, None)
    assert (two.port, two.authorization) == (2, b"Bearer token-two")

    same_content = kube_cluster("prod", _kubeconfig("http://127.0.0.1:1", "token-one"))
    assert endpoints.target(same_content) is endpoints.target(first)
    assert (await endpoints.endpoint(first, None)).authorization == b"Bearer token-one"


async def test_endpoints_stay_bounded() -> None:
    endpoints = Endpoints(max_entries=4)
    clusters = [kube_cluster(f"c{i}", _kubeconfig(f"http://127.0.0.1:{i + 1}", "t")) for i in range(10)]
    for item in clusters:
        endpoints.target(item)
    assert len(endpoints._last) <= 4 and len(endpoints._targets) <= 4
    assert endpoints.target(clusters[0]).server == "http://127.0.0.1:1"
