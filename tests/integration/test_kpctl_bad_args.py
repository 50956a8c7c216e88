"""kpctl's own inputs: bad kinds, refs, durations, roles and identity files each give one ERROR line and
exit 1 (argparse usage errors exit 2), never a traceback; the registry keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.server.serve import RegistryInfo
from tests.helpers import kpctl


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["get", "secrets"], "unknown resource kind 'secrets'"),
        (["get", "kube_clusters/../../etc"], 'kubernetes cluster "../../etc" not found'),
        (["get", "kube_clusters/.."], "invalid name"),
        (["rm", "kube_clusters"], "rm needs KIND/NAME"),
        (["rm", "events/x"], "rm needs KIND/NAME"),
        (["tokens", "add", "--type=node"], 'invalid role "node"'),
        (["tokens", "add", "--type=kube", "--ttl=1d"], 'unknown unit "d"'),
        (["tokens", "add", "--type=kube", "--ttl=0s"], "must be positive"),
        (["tokens", "add", "--type=kube", "--ttl=9999h"], "ttl must be between"),
        (["auth", "sign", "--user", "nobody", "--out", "/dev/null"], 'user "nobody" not found'),
        (["create", "/nonexistent/file.yaml"], "/nonexistent/file.yaml"),
        (["kube", "explain", "ghost"], 'kubernetes cluster "ghost" not found'),
    ],
)
async def test_bad_arguments_give_one_error_line(registry: RegistryInfo, argv: list[str], needle: str) -> None:
    r = await kpctl(*argv)
    assert r.code == 1, (r.out, r.err)
    assert r.err.startswith("ERROR: ") and r.err.count("\n") == 1, r.err
    assert needle in r.err, r.err
    assert (await kpctl("status")).code == 0


@pytest.mark.parametrize(
    "content",
    [b"", b"not a pem at all", b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", b"\x00" * 5000],
)
async def test_garbage_identity_files_are_refused_clearly(
    registry: RegistryInfo, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "bad.identity"
    path.write_bytes(content)
    r = await kpctl("get", "kube_clusters", "--identity", str(path))
    assert r.code == 1
    assert r.err.startswith("ERROR: ") and str(path) in r.err, r.err


async def test_huge_identity_file_is_refused_before_reading(registry: RegistryInfo, tmp_path: Path) -> None:
    path = tmp_path / "huge.identity"
    path.write_bytes(b"#" * (2 << 20))
    r = await kpctl("status", "--identity", str(path))
    assert r.code == 1
    assert "limit" in r.err


async def test_usage_errors_exit_2(registry: RegistryInfo) -> None:
    assert (await kpctl("get")).code == 2
    assert (await kpctl("frobnicate")).code == 2
    assert (await kpctl("get", "kube_clusters", "--format", "xml")).code == 2
