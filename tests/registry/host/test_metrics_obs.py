"""Watch lag and the front door's part in readiness (issue 11 §4).

* ``kubeport_registry_watch_lag_seconds``: one observation per *live* event written to a watch client (the
  store's publish time travels with the event), none for events replayed from history.
* ``/readyz`` of a registry with a front door (``kubeport start``, ``kubeport registry start``) says not ready
  until the front door listens.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import trio
from prometheus_client import REGISTRY

from registry.client import RegistryClient
from registry.core.identity import CertAuthority
from registry.core.watch import Init, Put
from registry.server.serve import RegistryInfo, serve_registry
from registry.server.service import Registry
from tests.integration.test_registry_watch import cluster
from tests.registry.host.test_metrics import _get, _until


def _lag_count() -> float:
    return REGISTRY.get_sample_value("kubeport_registry_watch_lag_seconds_count") or 0.0


async def test_live_watch_events_observe_lag_and_replayed_ones_do_not(nursery: trio.Nursery, tmp_path: Path) -> None:
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(data_dir=tmp_path / "reg", listen="127.0.0.1:0", task_status=task_status)
    )
    async with RegistryClient.from_identity_file(info.admin_identity) as client:
        _, revision = await client.list("kube_cluster")
        await client.create(cluster("history-1"))
        await client.create(cluster("history-2"))
        before = _lag_count()
        with trio.fail_after(10):
            async with client.watch(["kube_cluster"], revision=revision) as events:
                replayed = []
                async for event in events:
                    if isinstance(event, Put):
                        replayed.append(event.name)
                    if len(replayed) == 2:
                        break
                assert _lag_count() == before  # history is not lag
                await client.create(cluster("live-1"))
                async for event in events:
                    if isinstance(event, Put):
                        assert event.name == "live-1"
                        break
        # The line is written before the client reads it, so the observation is already there.
        assert _lag_count() == before + 1
        bucket = REGISTRY.get_sample_value("kubeport_registry_watch_lag_seconds_bucket", {"le": "5.0"}) or 0.0
        assert bucket >= 1


async def test_a_live_watch_from_now_observes_lag(nursery: trio.Nursery, tmp_path: Path) -> None:
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(data_dir=tmp_path / "reg", listen="127.0.0.1:0", task_status=task_status)
    )
    async with RegistryClient.from_identity_file(info.admin_identity) as client:
        before = _lag_count()
        with trio.fail_after(10):
            async with client.watch(["kube_cluster"]) as events:
                async for event in events:
                    if isinstance(event, Init):
                        break
                for index in range(3):
                    await client.create(cluster(f"r{index}"))
                seen = 0
                async for event in events:
                    seen += isinstance(event, Put)
                    if seen == 3:
                        break
        assert _lag_count() == before + 3


async def test_readiness_waits_for_the_front_door(nursery: trio.Nursery, tmp_path: Path) -> None:
    release = trio.Event()

    async def slow_front_door(
        registry: Registry, ca: CertAuthority, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await release.wait()  # stands for a front door still binding its listener
        task_status.started()
        await trio.sleep_forever()

    # The metrics listener is up before the front door, but its address is only reported once everything
    # started: so it gets a port chosen here.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    nursery.start_soon(
        lambda: serve_registry(
            data_dir=tmp_path / "reg", listen="127.0.0.1:0", metrics_listen=address, companions=[slow_front_door]
        )
    )
    with trio.fail_after(10):  # the listener comes up while the registry starts
        while True:
            try:
                not_ready = await _get(address, "/readyz")
                break
            except httpx.ConnectError:
                await trio.sleep(0.02)
    not_ready = await _until(address, "/readyz", 503)
    assert not_ready.text == "not ready: the Kubernetes front door is not listening yet\n"
    release.set()
    assert (await _until(address, "/readyz", 200)).text == "ready\n"
