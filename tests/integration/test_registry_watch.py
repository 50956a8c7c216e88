"""The watch through the real API over mutual TLS: list-then-watch, resume with exactly the missed events,
many watchers, a too-old revision, and secrets only on request."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from registry.client import RegistryClient, StreamEvent
from registry.core.errors import Compacted
from registry.core.watch import Delete, Put
from registry.server.serve import RegistryInfo, serve_registry
from registry.store import MemoryStore
from tests.helpers import kubeconfig_bytes

KUBECONFIG = kubeconfig_bytes()


def cluster(name: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {"name": name, "labels": labels},
        "spec": {"kubeconfig": base64.b64encode(KUBECONFIG).decode()},
    }


async def take(events: AsyncIterator[StreamEvent], n: int) -> list[Put | Delete]:
    out: list[Put | Delete] = []
    with trio.fail_after(10):
        async for event in events:
            if isinstance(event, Put | Delete):
                out.append(event)
                if len(out) == n:
                    return out
    raise AssertionError("watch ended early")


async def test_list_then_watch_and_resume_gets_exactly_the_missed_events(registry: RegistryInfo) -> None:
    async with RegistryClient.from_identity_file(registry.admin_identity) as client:
        await client.create(cluster("a"))
        items, revision = await client.list("kube_cluster")
        assert [i["metadata"]["name"] for i in items] == ["a"]
        await client.create(cluster("b"))
        await client.create(cluster("c"))
        await client.delete("kube_cluster", "a")
        async with client.watch(["kube_cluster"], revision=revision) as events:
            got = await take(events, 3)
        assert [(type(e), e.name) for e in got] == [(Put, "b"), (Put, "c"), (Delete, "a")]
        # resume from the middle: only what came after
        async with client.watch(["kube_cluster"], revision=got[0].revision) as events:
            rest = await take(events, 2)
        assert [e.name for e in rest] == ["c", "a"]
        # secrets only on request
        assert "kubeconfig" not in got[0].resource["spec"]
        async with client.watch(["kube_cluster"], revision=revision, with_secrets=True) as events:
            (first, *_) = await take(events, 1)
        assert base64.b64decode(first.resource["spec"]["kubeconfig"]) == KUBECONFIG


async def test_many_watchers_see_the_same_events(registry: RegistryInfo) -> None:
    results: list[list[str]] = []
    async with RegistryClient.from_identity_file(registry.admin_identity) as writer:
        _, revision = await writer.list("kube_cluster")

        async def watcher() -> None:
            async with (
                RegistryClient.from_identity_file(registry.admin_identity) as client,
                client.watch(["kube_cluster"], revision=revision) as events,
            ):
                results.append([e.name for e in await take(events, 5)])

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(watcher)
            for i in range(5):
                await writer.create(cluster(f"c{i}"))
    assert results == [[f"c{i}" for i in range(5)]] * 10


async def test_too_old_revision_says_relist(nursery: trio.Nursery, tmp_path: Path) -> None:
    store = MemoryStore(max_history=5)
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(
            data_dir=tmp_path / "d", listen="127.0.0.1:0", store=store, task_status=task_status
        )
    )
    async with RegistryClient.from_identity_file(info.admin_identity) as client:
        for i in range(30):
            await client.create(cluster(f"x{i}"))
        await store.compact(keep=5)
        with pytest.raises(Compacted, match="relist"):
            async with client.watch(["kube_cluster"], revision=1) as events:
                await take(events, 1)
        # the remedy works: list, then watch from the list's revision
        items, revision = await client.list("kube_cluster")
        assert len(items) == 30
        async with client.watch(["kube_cluster"], revision=revision) as events:
            await client.create(cluster("after"))
            (event,) = await take(events, 1)
        assert event.name == "after"


async def test_users_without_rights_cannot_watch(registry: RegistryInfo, tmp_path: Path) -> None:
    from registry.core.errors import AccessDenied
    from tests.helpers import kpctl

    users = tmp_path / "u.yaml"
    users.write_text("kind: user\nversion: v2\nmetadata:\n  name: eve\nspec:\n  roles: []\n")
    assert (await kpctl("create", str(users))).code == 0
    eve = tmp_path / "eve.identity"
    assert (await kpctl("auth", "sign", "--user", "eve", "--out", str(eve))).code == 0
    async with RegistryClient.from_identity_file(eve) as client:
        with pytest.raises(AccessDenied):
            async with client.watch(["kube_cluster"]) as events:
                await take(events, 1)
