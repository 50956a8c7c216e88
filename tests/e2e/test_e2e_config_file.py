"""End to end: ``kubeport registry start --config FILE`` alone starts a registry on etcd.

The file (Teleport's shape) names everything: the data dir, the etcd peers and prefix, the API and front
door addresses. No other flag is given; the registry answers, keeps its state under the file's prefix in
etcd (not in a SQLite file), and a second registry started from a copy of the file (other addresses, the
key copied) serves the same cluster. ``kubeport registry migrate --config FILE`` moves a stopped SQLite
registry into the etcd the same file names, and the registry then starts from that file alone.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from registry.client import RegistryClient
from registry.core.wire import Ping
from registry.host.paths import ADMIN_IDENTITY, STORE_FILE
from tests.e2e.e2e_helpers import READY_TIMEOUT, Harness, free_port
from tests.e2e.test_e2e_etcd import one_error_line, raw_values
from tests.fakes.etcd_server import shared_etcd, unique_prefix
from tests.helpers import cluster_doc, kubeconfig_bytes

pytestmark = pytest.mark.slow


def config_text(data_dir: Path, endpoint: str, prefix: str, port: int) -> str:
    return f"""\
version: v3
teleport:
  data_dir: {data_dir}
  storage:
    type: etcd
    peers: ["{endpoint}"]
    prefix: {prefix}
auth_service:
  listen_addr: 127.0.0.1:{port}
proxy_service:
  kube_listen_addr: 127.0.0.1:0
"""


async def start_from_config(h: Harness, config: Path, data_dir: Path, name: str) -> Ping:
    child = await h.spawn(name, "registry", "start", "--config", str(config))
    child.server = True
    identity = data_dir / ADMIN_IDENTITY

    async def ready() -> Ping | None:
        if child.returncode is not None:
            raise AssertionError(f"{name} exited with {child.returncode} while starting")
        if not identity.exists():
            return None
        client = RegistryClient.from_identity_file(identity)
        h.clients.append(client)
        return await client.ping()

    return await h.wait_for(ready, timeout=READY_TIMEOUT, what=f"{name} to answer ping")


async def test_a_registry_on_etcd_from_a_config_file_only(tmp_path: Path) -> None:
    etcd = shared_etcd()
    prefix = unique_prefix()
    first_dir, second_dir = tmp_path / "r1", tmp_path / "r2"
    first_port, second_port = free_port(), free_port()
    first_config, second_config = tmp_path / "r1.yaml", tmp_path / "r2.yaml"
    first_config.write_text(config_text(first_dir, etcd.endpoint, prefix, first_port))
    second_config.write_text(config_text(second_dir, etcd.endpoint, prefix, second_port))
    async with Harness(tmp_path) as h:
        first = await start_from_config(h, first_config, first_dir, "registry-1")
        assert stat.S_IMODE((first_dir / "etcd.key").stat().st_mode) == 0o600
        assert not (first_dir / STORE_FILE).exists()  # the state is in etcd, under the file's prefix
        assert raw_values(f"http://{etcd.endpoint}", prefix)

        created = await h.kpctl(
            "tokens", "add", "--type=kube", "--ttl=1h", "--data-dir", str(first_dir), "--registry",
            f"127.0.0.1:{first_port}",
        )  # fmt: skip
        assert created.code == 0, created.err

        second_dir.mkdir(mode=0o700)
        shutil.copy2(first_dir / "etcd.key", second_dir / "etcd.key")
        second = await start_from_config(h, second_config, second_dir, "registry-2")
        assert second["ca_pin"] == first["ca_pin"]
        listed = await h.kpctl("tokens", "ls", "--data-dir", str(second_dir), "--registry", f"127.0.0.1:{second_port}")
        assert listed.code == 0, listed.err
        assert "kube" in listed.out.lower()


async def test_a_flag_overrides_the_config_file(tmp_path: Path) -> None:
    etcd = shared_etcd()
    data_dir = tmp_path / "r"
    config = tmp_path / "r.yaml"
    config.write_text(config_text(data_dir, etcd.endpoint, unique_prefix(), free_port()))
    async with Harness(tmp_path) as h:
        # --store sqlite on the command line wins over the file's etcd storage.
        port = free_port()
        child = await h.spawn("registry", "registry", "start", "--config", str(config), "--store", "sqlite",
                              "--listen", f"127.0.0.1:{port}")  # fmt: skip
        child.server = True

        async def ready() -> Ping | None:
            assert child.returncode is None, f"exited with {child.returncode}"
            if not (data_dir / ADMIN_IDENTITY).exists():
                return None
            client = RegistryClient.from_identity_file(data_dir / ADMIN_IDENTITY)
            h.clients.append(client)
            return await client.ping()

        await h.wait_for(ready, timeout=READY_TIMEOUT, what="the registry to answer ping")
        assert (data_dir / STORE_FILE).exists() and not (data_dir / "etcd.key").exists()


async def test_migrate_from_sqlite_into_the_etcd_the_config_file_names(tmp_path: Path) -> None:
    etcd = shared_etcd()
    prefix = unique_prefix()
    data_dir, port = tmp_path / "r", free_port()
    config = tmp_path / "r.yaml"
    config.write_text(config_text(data_dir, etcd.endpoint, prefix, port))
    async with Harness(tmp_path) as h:
        old = await h.start_registry(data_dir=data_dir, port=port)  # the SQLite registry it used to be
        await old.client.create(cluster_doc("prod", kubeconfig_bytes(token="migrate-config-token"), {"env": "prod"}))
        await old.child.stop()

        migrated = await h.kubeport("registry", "migrate", "--config", str(config))  # no other flag
        assert migrated.code == 0, migrated.err
        assert "kube_cluster" in migrated.out and prefix in migrated.out
        assert f"--config {config}" in migrated.out  # the next step names the same file
        assert stat.S_IMODE((data_dir / "etcd.key").stat().st_mode) == 0o600  # in the file's data dir
        assert raw_values(f"http://{etcd.endpoint}", prefix)

        again = await h.kubeport("registry", "migrate", "--config", str(config))
        assert again.code == 1 and "not empty" in one_error_line(again.err)
        # a flag still overrides the file: another prefix is empty, and the flag's, not the file's, is used
        other = unique_prefix()
        moved = await h.kubeport("registry", "migrate", "--config", str(config), "--etcd-prefix", other)
        assert moved.code == 0, moved.err
        assert other in moved.out and raw_values(f"http://{etcd.endpoint}", other)

        new = await start_from_config(h, config, data_dir, "registry-etcd")
        assert new["ca_pin"] == old.ca_pin  # the same cluster, now on etcd
        listed = await h.kpctl("get", "kube_clusters", "--format", "text", "--data-dir", str(data_dir))
        assert listed.code == 0 and "prod" in listed.out, listed.err
