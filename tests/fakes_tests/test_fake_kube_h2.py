"""The fake API server's HTTP/2 (``FakeKube(http2=True)``) against real kubectl: kubectl chooses h2 by ALPN
as it does with a real API server, and gets, lists and watches work over it; exec still goes HTTP/1.1."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio

from tests.fakes.kube_api import FakeKube, serve_fake_kube
from tests.fakes.kubectl import SKIP_REASON, find_kubectl, read_until, run_kubectl, started_kubectl

TOKEN = "admin-token"
_homes = itertools.count()


@pytest.fixture
def kubectl() -> str:
    binary = find_kubectl(json_only=True)
    if binary is None:
        pytest.skip(SKIP_REASON)
    return binary


@pytest.fixture
async def h2_kube(nursery: trio.Nursery) -> FakeKube:
    fake = FakeKube(admin_token=TOKEN, http2=True)
    await nursery.start(serve_fake_kube, fake)
    return fake


def config(fake: FakeKube, tmp_path: Path) -> tuple[Path, Path]:
    n = next(_homes)
    path = tmp_path / f"kubeconfig-{n}"
    path.write_bytes(fake.kubeconfig_yaml(TOKEN))
    return path, tmp_path / f"home-{n}"


async def test_kubectl_gets_pods_over_h2(h2_kube: FakeKube, kubectl: str, tmp_path: Path) -> None:
    h2_kube.add_pod("web")
    kubeconfig, home = config(h2_kube, tmp_path)
    result = await run_kubectl(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=home)
    assert result.returncode == 0, result.stderr
    assert b"web" in result.stdout
    assert h2_kube.connection_counts.h2 >= 1
    assert h2_kube.connection_counts.http1 == 0
    assert h2_kube.connection_counts.h2_streams >= 2  # discovery and the list shared the connection


async def test_kubectl_watch_over_h2_sees_new_objects(h2_kube: FakeKube, kubectl: str, tmp_path: Path) -> None:
    kubeconfig, home = config(h2_kube, tmp_path)
    args = ["get", "configmaps", "-w", "-o", "name"]
    async with started_kubectl(kubectl, args, kubeconfig=kubeconfig, home=home) as process:
        await h2_kube.wait_request(lambda r: r.query.get("watch") == ["true"] and r.path.endswith("/configmaps"))
        h2_kube.create_object(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one", "namespace": "default"}}
        )
        await read_until(process.stdout, b"configmap/one")
        h2_kube.create_object(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two", "namespace": "default"}}
        )
        await read_until(process.stdout, b"configmap/two")
    assert h2_kube.connection_counts.h2 >= 1


async def test_exec_stays_on_http1(h2_kube: FakeKube, kubectl: str, tmp_path: Path) -> None:
    h2_kube.add_pod("web")
    kubeconfig, home = config(h2_kube, tmp_path)
    result = await run_kubectl(kubectl, ["exec", "web", "--", "echo", "hi"], kubeconfig=kubeconfig, home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi\n"
    assert h2_kube.connection_counts.http1 >= 1  # the upgrade went over HTTP/1.1
