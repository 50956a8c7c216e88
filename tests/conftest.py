"""Test-wide fixtures. Tests import shared code as ``tests.helpers`` / ``tests.fakes`` (rootdir on sys.path).

``registry`` starts a real registry (SQLite store, mutual TLS, 127.0.0.1:0) in the test's nursery with a
private data dir, and points KUBEPORT_DATA_DIR at it so kpctl finds the admin identity as it would on the
registry host. Every test gets its own HOME so nothing touches the developer's files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from registry.server.serve import RegistryInfo, serve_registry
from tests.fakes.fixtures import fake_kube  # noqa: F401  (re-exported fixture)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("KUBEPORT_REGISTRY", "KUBEPORT_IDENTITY", "KUBEPORT_DATA_DIR", "KUBEPORT_HOME", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
async def registry(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RegistryInfo]:
    data_dir = tmp_path / "registry-data"
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(
            data_dir=data_dir, listen="127.0.0.1:0", cluster_name="test-cluster", task_status=task_status
        )
    )
    monkeypatch.setenv("KUBEPORT_DATA_DIR", str(data_dir))
    yield info
