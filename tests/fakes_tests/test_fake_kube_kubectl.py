"""Real, versioned kubectl binaries against the fake: what kubectl sends and how it takes the answers."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fixtures import ADMIN_TOKEN, fake_kube  # noqa: F401  (fixture)
from tests.fakes.kube_api import FakeKube, RecordedRequest
from tests.fakes.kubectl import SKIP_REASON, find_kubectl, require_kubectl, run_kubectl

_homes = itertools.count()


@pytest.fixture
def kubectl() -> str:
    binary = find_kubectl()
    if binary is None:
        pytest.skip(SKIP_REASON)
    return binary


@pytest.fixture
def json_kubectl() -> str:
    """A kubectl whose typed commands (auth can-i, auth whoami) send JSON, not protobuf."""
    return require_kubectl()


async def kubectl_as(
    fake: FakeKube, binary: str, tmp_path: Path, args: list[str], *, token: str | None = ADMIN_TOKEN, **kw: Any
) -> subprocess.CompletedProcess[bytes]:
    """Run kubectl with a fresh HOME (cold discovery cache) and a kubeconfig for ``token``."""
    n = next(_homes)
    config = tmp_path / f"kubeconfig-{n}"
    config.write_bytes(fake.kubeconfig_yaml(token, **kw))
    return await run_kubectl(binary, args, kubeconfig=config, home=tmp_path / f"home-{n}")


def paths(requests: list[RecordedRequest]) -> list[str]:
    return [r.path for r in requests]


async def test_get_pods_cold_cache_sequence(fake_kube: FakeKube, kubectl: str, tmp_path: Path) -> None:  # noqa: F811
    result = await kubectl_as(fake_kube, kubectl, tmp_path, ["get", "pods"])
    assert result.returncode == 0, result.stderr
    assert b"No resources found in default namespace." in result.stderr
    seen = paths(fake_kube.requests)
    order = [seen.index(p) for p in ("/api", "/apis", "/api/v1", "/api/v1/namespaces/default/pods")]
    assert order == sorted(order), seen
    pods = next(r for r in fake_kube.requests if r.path == "/api/v1/namespaces/default/pods")
    assert pods.query.get("limit") == ["500"]
    assert "as=Table" in (pods.header("accept") or "")
    assert pods.user == "kubernetes-admin"
    assert all(r.status == 200 for r in fake_kube.requests), [(r.path, r.status) for r in fake_kube.requests]


async def test_get_namespaces_prints_a_table(fake_kube: FakeKube, kubectl: str, tmp_path: Path) -> None:  # noqa: F811
    result = await kubectl_as(fake_kube, kubectl, tmp_path, ["get", "namespaces"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "AGE"]
    assert [line.split()[:2] for line in lines[1:]] == [["default", "Active"], ["kube-system", "Active"]]


async def test_impersonation_headers_repeat_and_rbac_applies_to_the_impersonated_user(
    fake_kube: FakeKube,  # noqa: F811
    kubectl: str,
    tmp_path: Path,
) -> None:
    args = ["get", "pods", "--as=bob", "--as-group=a", "--as-group=b"]
    result = await kubectl_as(fake_kube, kubectl, tmp_path, args)
    assert result.returncode == 1
    assert b'pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default"' in (
        result.stderr
    )
    pods = next(r for r in fake_kube.requests if r.path == "/api/v1/namespaces/default/pods")
    assert pods.header_values("impersonate-user") == ["bob"]
    assert pods.header_values("impersonate-group") == ["a", "b"]
    assert pods.user == "kubernetes-admin"
    assert pods.impersonated_user == "bob"
    assert pods.impersonated_groups == ("a", "b", "system:authenticated")
    assert pods.status == 403


async def test_a_caller_who_may_not_impersonate_gets_403(fake_kube: FakeKube, kubectl: str, tmp_path: Path) -> None:  # noqa: F811
    fake_kube.add_token("bob-token", "bob")
    # A plain `get pods` fails at discovery, where kubectl prints only "Forbidden: unknown" (as it does against
    # a real server); a raw GET shows the server's message.
    args = ["get", "--raw", "/api/v1/namespaces/default/pods", "--as=alice"]
    result = await kubectl_as(fake_kube, kubectl, tmp_path, args, token="bob-token")
    assert result.returncode == 1
    assert (
        b'users "alice" is forbidden: User "bob" cannot impersonate resource "users" in API group "" '
        b"at the cluster scope"
    ) in result.stderr


async def test_imperative_create_sends_protobuf_and_gets_415(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    binary = find_kubectl("1.33") or find_kubectl("1.32")
    if binary is None:
        pytest.skip(SKIP_REASON + " (needs kubectl 1.32+, which sends protobuf)")
    result = await kubectl_as(fake_kube, binary, tmp_path, ["create", "namespace", "x"])
    assert result.returncode == 1
    assert b"Error from server (UnsupportedMediaType)" in result.stderr
    post = next(r for r in fake_kube.requests if r.method == "POST")
    assert post.header("content-type") == "application/vnd.kubernetes.protobuf"
    assert post.status == 415
    assert fake_kube.get_object("namespaces", "x") is None


async def test_apply_creates_then_patches(fake_kube: FakeKube, kubectl: str, tmp_path: Path) -> None:  # noqa: F811
    manifest = tmp_path / "ns.yaml"
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: applied\n")
    result = await kubectl_as(fake_kube, kubectl, tmp_path, ["apply", "-f", str(manifest), "--validate=false"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"namespace/applied created"
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: applied\n  labels:\n    team: a\n")
    result = await kubectl_as(fake_kube, kubectl, tmp_path, ["apply", "-f", str(manifest), "--validate=false"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"namespace/applied configured"
    stored = fake_kube.get_object("namespaces", "applied")
    assert stored is not None
    assert stored["metadata"]["labels"]["team"] == "a"
    assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]
    patch = next(r for r in fake_kube.requests if r.method == "PATCH")
    assert patch.header("content-type") == "application/strategic-merge-patch+json"


async def test_client_certificate_kubeconfig_and_whoami(
    fake_kube: FakeKube,  # noqa: F811
    json_kubectl: str,
    tmp_path: Path,
) -> None:
    cert = fake_kube.issue_client_cert("carol", ["ops"])
    result = await kubectl_as(fake_kube, json_kubectl, tmp_path, ["auth", "whoami"], token=None, client_cert=cert)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "carol" in text
    assert "[ops system:authenticated]" in text


@pytest.mark.parametrize(("token", "expected"), [(ADMIN_TOKEN, (0, b"yes")), ("bob-token", (1, b"no"))])
async def test_auth_can_i_uses_self_subject_access_review(
    fake_kube: FakeKube,  # noqa: F811
    json_kubectl: str,
    tmp_path: Path,
    token: str,
    expected: tuple[int, bytes],
) -> None:
    fake_kube.add_token("bob-token", "bob")
    result = await kubectl_as(
        fake_kube, json_kubectl, tmp_path, ["auth", "can-i", "create", "clusterroles"], token=token
    )
    assert (result.returncode, result.stdout.strip()) == expected
