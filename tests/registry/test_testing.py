"""registry.testing: the real API over a MemoryStore as an httpx transport (the fake the agent tests use)."""

from __future__ import annotations

import base64

import httpx
import pytest
import trio

from registry.core.errors import ConnectionProblem, LimitExceeded, Timeout, Unauthenticated
from registry.core.watch import Init, Put
from registry.testing import InProcessRegistry, agent_identity
from tests.helpers import kubeconfig_bytes

KUBECONFIG = base64.b64encode(kubeconfig_bytes()).decode()


def cluster(name: str) -> dict[str, object]:
    return {"kind": "kube_cluster", "version": "v3", "metadata": {"name": name}, "spec": {"kubeconfig": KUBECONFIG}}


async def test_the_client_speaks_for_the_chosen_identity(autojump_clock: trio.abc.Clock) -> None:
    async with InProcessRegistry.open() as reg:
        async with reg.client() as admin:
            assert (await admin.whoami())["kind"] == "admin"
            await admin.create(cluster("a"))
        async with reg.client(agent_identity("host-9")) as agent:
            me = await agent.whoami()
            assert (me["kind"], me["host_id"]) == ("agent", "host-9")
            clusters, revision = await agent.list_kube_clusters(with_secrets=True)
            assert [c.name for c in clusters] == ["a"]
            assert revision == await reg.store.revision()
        async with reg.client(None) as anonymous:
            assert (await anonymous.ping())["cluster_name"] == "test-cluster"
            with pytest.raises(Unauthenticated):
                await anonymous.whoami()


async def test_watch_streams_the_real_events_and_ends_when_broken(autojump_clock: trio.abc.Clock) -> None:
    async with InProcessRegistry.open() as reg, reg.client() as client:
        async with client.watch(["kube_cluster"]) as events:
            assert isinstance(await events.__anext__(), Init)
            await client.create(cluster("a"))
            event = await events.__anext__()
            assert isinstance(event, Put)
            assert event.name == "a"
            assert "kubeconfig" not in event.resource["spec"]
            assert reg.break_watches() == 1
            with pytest.raises(ConnectionProblem, match="closed the watch"):
                await events.__anext__()
        async with client.watch(["kube_cluster"]) as events:
            await events.__anext__()
            reg.break_watches(httpx.ReadError("connection reset"))
            with pytest.raises(ConnectionProblem, match="connection reset"):
                await events.__anext__()
        await reg.wait_requests("/v1/watch", 2)
        with trio.fail_after(1):
            await reg.wait_until(lambda: reg.open_watches == 0)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (httpx.ConnectError("connection refused"), ConnectionProblem),
        (httpx.ReadTimeout("slow"), Timeout),
        (LimitExceeded("slow down"), LimitExceeded),
    ],
)
async def test_faults_are_mapped_like_the_network(
    autojump_clock: trio.abc.Clock, fault: Exception, expected: type[Exception]
) -> None:
    async with InProcessRegistry.open() as reg, reg.client() as client:
        reg.fail_next("/v1/whoami", fault)
        with pytest.raises(expected):
            await client.whoami()
        assert (await client.whoami())["kind"] == "admin"
        assert [r.path for r in reg.requests] == ["/v1/whoami", "/v1/whoami"]


async def test_an_error_in_the_body_propagates_instead_of_being_swallowed() -> None:
    # Closing the store in the cancelled scope once raised Cancelled over the body's error, and the nursery
    # swallowed it: every failing assertion inside ``async with InProcessRegistry.open()`` passed.
    with pytest.RaisesGroup(pytest.RaisesExc(AssertionError, match="the body failed"), allow_unwrapped=True):
        async with InProcessRegistry.open():
            raise AssertionError("the body failed")
