"""End to end, real processes: ``kubeport start`` (registry + a local agent serving everything) from first
start to Ctrl-C, and ``kubeport install systemd``."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from registry.client import RegistryClient
from registry.host.paths import ADMIN_IDENTITY, STORE_FILE
from registry.store import SQLiteStore
from tests.e2e.e2e_helpers import KUBE_LISTEN, Harness, free_port, gather, parse_table
from tests.fakes.kube_api import FakeKube
from tests.helpers import kpctl, seed_kube_cluster_yaml

pytestmark = pytest.mark.slow


async def test_kubeport_start_serves_new_clusters_and_stops_cleanly_on_sigint(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    data_dir = tmp_path / "all-in-one"
    port = free_port()
    async with Harness(tmp_path) as h:
        child = await h.spawn(
            "kubeport-start", "start", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", *KUBE_LISTEN
        )
        printed = await h.wait_output(child, r"admin identity:\s+(\S+)")
        assert Path(printed.group(1)) == data_dir / ADMIN_IDENTITY
        assert f"running on 127.0.0.1:{port}" in child.stdout()
        client = RegistryClient.from_identity_file(data_dir / ADMIN_IDENTITY)
        h.clients.append(client)

        cluster = tmp_path / "prod.yaml"
        cluster.write_text(
            seed_kube_cluster_yaml("prod", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "prod"})
        )
        created = await kpctl("create", str(cluster), "--data-dir", str(data_dir))
        assert created.code == 0, created.err
        started = trio.current_time()

        async def served() -> bool:
            servers, _ = await client.list("kube_server")
            return [s["metadata"]["name"] for s in servers] == ["prod"]

        await h.wait_for(served, timeout=2, what="the local agent to serve prod")
        print(f"create -> served in {trio.current_time() - started:.3f}s")
        ls = await h.kubeport("kube", "ls", "--data-dir", str(data_dir))
        assert ls.code == 0, ls.err
        assert [r["Kube Cluster Name"] for r in parse_table(ls.out)] == ["prod"]

        stopping = trio.current_time()
        assert await child.stop(signal.SIGINT) == 0
        took = trio.current_time() - stopping
        assert took < 5, f"kubeport start took {took:.1f}s to stop"

        # The local agent deleted its heartbeats before the registry went away.
        store = await SQLiteStore.open(data_dir / STORE_FILE)
        try:
            left = [r.name for r in await store.list("kube_server")]
        finally:
            await store.aclose()
        assert left == [], f"kube_servers left behind after Ctrl-C: {left}"


async def test_install_systemd_writes_an_agent_unit(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "kubeport.yaml"
    unit_path = tmp_path / "kubeport.service"
    async with Harness(tmp_path) as h:
        args = ("install", "systemd", "-c", str(config))
        printed, written = await gather(lambda: h.kubeport(*args), lambda: h.kubeport(*args, "-o", str(unit_path)))
    assert printed.code == 0, printed.err
    assert written.code == 0, written.err
    assert "systemctl enable kubeport" in written.out
    assert unit_path.read_text() == printed.out
    exec_start = [line for line in printed.out.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    assert exec_start[0].endswith(f" agent start -c {config}")
    assert "WantedBy=multi-user.target" in printed.out


def _temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


async def test_install_systemd_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    """A symlink at -o PATH (say to /etc/passwd) is replaced by the unit; the file it pointed to is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    unit_path = tmp_path / "kubeport.service"
    unit_path.symlink_to(victim)
    async with Harness(tmp_path) as h:
        written = await h.kubeport("install", "systemd", "-c", str(tmp_path / "k.yaml"), "-o", str(unit_path))
    assert written.code == 0, written.err
    assert victim.read_text() == "precious\n"
    assert not unit_path.is_symlink()
    assert "ExecStart=" in unit_path.read_text()
    assert unit_path.stat().st_mode & 0o777 == 0o644
    assert _temp_files(tmp_path) == []


async def test_install_systemd_into_a_missing_directory_is_one_error_line(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        result = await h.kubeport("install", "systemd", "-o", str(tmp_path / "no" / "such" / "unit.service"))
    assert result.code == 1
    assert result.err.startswith("ERROR: cannot write ") and result.err.count("\n") == 1, result.err
