"""Watches through kubeport to an API server that speaks HTTP/2 (issue 9 §8): the agent multiplexes them on one
shared h2 connection (agent/forward/upstream_h2.py) instead of one TLS connection each; kubectl still sees
HTTP/1.1 from the front door, with the same watch events, impersonation and audit.

A real registry, front door and agent (``access_setup``) and the fake API with ``http2=True``, which counts
the connections it accepted per protocol.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from tests.fakes.kube_api import FakeKube, serve_fake_kube
from tests.fakes.kubectl import find_kubectl, read_until, started_kubectl
from tests.integration.access_setup import (
    AccessRegistry,
    access_registry,  # noqa: F401  (fixture)
    kubectl_until_routed,
    start_access,
)
from tests.integration.test_agent_inprocess import admin

WATCHES = 3


@pytest.fixture
def kubectl() -> str:
    binary = find_kubectl(json_only=True)
    if binary is None:
        pytest.skip("no kubectl")
    return binary


def _watch_requests(fake: FakeKube) -> list[str]:
    return [r.path for r in fake.requests if r.query.get("watch") == ["true"] and r.path.endswith("/pods")]


async def test_watches_share_one_h2_connection_and_see_events(
    access_registry: AccessRegistry,  # noqa: F811
    nursery: trio.Nursery,
    tmp_path: Path,
    kubectl: str,
) -> None:
    fake = FakeKube(admin_token="admin-token", http2=True)
    await nursery.start(serve_fake_kube, fake)
    fake.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake.add_pod("web")
    access = await start_access(access_registry, fake, nursery, tmp_path)
    code, _, err = await kubectl_until_routed(
        kubectl, ["get", "pods"], kubeconfig=access.kubeconfig, home=access.home()
    )
    assert code == 0, err
    assert fake.connection_counts.h2 == 0  # a list is not a watch: HTTP/1.1 as before

    async with AsyncExitStack() as stack:
        watchers = [
            await stack.enter_async_context(
                started_kubectl(kubectl, ["get", "pods", "-w"], kubeconfig=access.kubeconfig, home=access.home())
            )
            for _ in range(WATCHES)
        ]
        for process in watchers:
            await read_until(process.stdout, b"web ")
        await fake.wait_request(lambda _: len(_watch_requests(fake)) >= WATCHES, timeout=20)
        fake.add_pod("late")
        for process in watchers:
            await read_until(process.stdout, b"late ")
        assert fake.connection_counts.h2 == 1, fake.connection_counts  # every watch on one connection
        assert fake.connection_counts.h2_streams >= WATCHES

    # The watches ran as the user (impersonated), and each is audited as a kube.request like any other.
    watches = [r for r in fake.requests if r.query.get("watch") == ["true"] and r.path.endswith("/pods")]
    assert watches and all(r.impersonated_user == "alice" for r in watches)
    async with await admin(access.registry.info) as client:
        with trio.fail_after(20):
            while True:
                page, _ = await client.events_page(limit=500, event="kube.request")
                audited = [e for e in page if "watch=true" in str(e.get("path", e))]
                if len(audited) >= WATCHES:
                    break
                await trio.sleep(0.1)
