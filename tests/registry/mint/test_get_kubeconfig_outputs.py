"""What get_kubeconfig leaves behind works: real kubectl reaches the cluster with the written kubeconfig,
the kube_cluster file is one ``kpctl create`` accepts, and ``--register`` puts it in a real registry."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from registry.client import RegistryClient
from registry.core import codec
from registry.server.serve import RegistryInfo
from tests.fakes.kubectl import SKIP_REASON, find_kubectl, run_kubectl
from tests.helpers import kpctl
from tests.registry.mint.getkc_helpers import admin_kubeconfig, run_getkc, start_fake

ROOT = Path(__file__).resolve().parents[3]


async def test_real_kubectl_works_with_the_written_kubeconfig(nursery: trio.Nursery, tmp_path: Path) -> None:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip(SKIP_REASON)
    fake = await start_fake(nursery, token_delay=0.0)
    fake.create_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]},
        }
    )
    output = tmp_path / "kubeconfig"
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(output)])
    assert result.code == 0, result.err
    fake.clear_requests()

    # The minted identity may get pods: exactly the original's rule (listing them is not granted).
    got = await run_kubectl(kubectl, ["get", "pods", "web-1"], kubeconfig=output, home=tmp_path / "kubectl-home")
    assert got.returncode == 0, got.stderr.decode()
    assert b"web-1" in got.stdout
    users = {r.user for r in fake.requests}
    assert users == {"system:serviceaccount:teleport:teleport-sa"}


async def test_kube_cluster_file_is_accepted_by_the_codec(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    output = tmp_path / "kubeconfig"
    cluster_file = tmp_path / "prod.yaml"
    result = await run_getkc(
        [
            *("--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(output)),
            *("--kube-cluster", "prod-1", "--labels", "env=prod,team=platform", "--labels", "region=eu"),
            *("--kube-cluster-file", str(cluster_file)),
        ]
    )
    assert result.code == 0, result.err
    assert f"Writing {cluster_file}." in result.lines
    assert f"kpctl create {cluster_file}" in result.out
    assert stat.S_IMODE(cluster_file.stat().st_mode) == 0o600

    (resource,) = codec.decode_resources(cluster_file.read_bytes(), source=cluster_file.name)
    assert resource.KIND == "kube_cluster"
    assert resource.metadata.name == "prod-1"
    assert dict(resource.metadata.labels) == {"env": "prod", "team": "platform", "region": "eu"}
    assert resource.kubeconfig == output.read_bytes()  # type: ignore[union-attr]


async def test_kpctl_create_accepts_the_kube_cluster_file(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryInfo
) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    cluster_file = tmp_path / "kube_cluster.yaml"
    result = await run_getkc(
        [
            *("--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kubeconfig")),
            *("--kube-cluster", "by-hand", "--labels", "env=dev", "--kube-cluster-file", str(cluster_file)),
        ]
    )
    assert result.code == 0, result.err

    created = await kpctl("create", str(cluster_file))

    assert (created.code, created.err) == (0, "")
    assert created.out == 'kubernetes cluster "by-hand" has been created\n'
    listed = await kpctl("get", "kube_clusters/by-hand", "--format", "text")
    assert "env=dev" in listed.out


@pytest.mark.parametrize("labels", [["env=prod"], []])
async def test_register_creates_then_force_updates(
    nursery: trio.Nursery, tmp_path: Path, registry: RegistryInfo, labels: list[str]
) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    argv = [
        *("--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kubeconfig")),
        *("--kube-cluster", "fresh", "--kube-cluster-file", str(tmp_path / "kc.yaml"), "--register"),
        *(f"--labels={item}" for item in labels),
    ]
    created = await run_getkc(argv)
    assert created.code == 0, created.err
    assert 'kubernetes cluster "fresh" has been created' in created.lines
    assert 'registered with kubeport as kube_cluster "fresh"' in created.out

    async with RegistryClient.from_identity_file(registry.admin_identity, registry.address) as client:
        stored = await client.get("kube_cluster", "fresh", with_secrets=True)
    (resource,) = codec.decode_resources((tmp_path / "kc.yaml").read_bytes(), source="kc.yaml")
    assert codec.resource_from_dict(stored).kubeconfig == resource.kubeconfig  # type: ignore[union-attr]

    again = await run_getkc(argv)
    assert again.code == 1
    assert again.err.startswith('ERROR: kubernetes cluster "fresh" already exists in the registry; pass --force')
    assert (tmp_path / "kc.yaml").exists()  # the files are complete, and the message says how to register them

    forced = await run_getkc([*argv, "--force"])
    assert forced.code == 0, forced.err
    assert 'kubernetes cluster "fresh" has been updated' in forced.lines


def test_help_runs_as_a_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "get_kubeconfig.py"), "--help"],
        cwd=tmp_path,  # not the repo: the launcher finds the package by itself
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    for needle in ("TELEPORT_NAMESPACE", "TELEPORT_SA_NAME", "--kube-cluster", "--register", "--wait", "--context"):
        assert needle in result.stdout
