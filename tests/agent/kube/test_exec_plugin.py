"""Exec credential plugins: KubeAPI runs the kubeconfig's ``exec`` command, uses and caches what it prints,
and turns every way a plugin can go wrong into one clear error."""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.health import check_health
from agent.kube.client import KubeAPI
from agent.kube.exec_plugin import parse_exec_credential
from registry.core.errors import ConnectionProblem, Timeout, Unauthenticated
from registry.core.kubeconfig import KubeTarget, check_kubeconfig
from tests.fakes.fixtures import ADMIN_TOKEN
from tests.fakes.kube_api import FakeKube

API_VERSION = "client.authentication.k8s.io/v1"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def plugin(tmp_path: Path, body: str, name: str = "plugin.py") -> Path:
    script = tmp_path / name
    script.write_text(textwrap.dedent(body))
    return script


def credential(status: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": API_VERSION, "kind": "ExecCredential", "status": status})


def printing(tmp_path: Path, status: dict[str, Any]) -> Path:
    return plugin(tmp_path, f"print({credential(status)!r})\n")


def exec_target(fake: FakeKube, script: Path, **exec_fields: Any) -> KubeTarget:
    config = fake.kubeconfig(None)
    config["users"][0]["user"] = {
        "exec": {"apiVersion": API_VERSION, "command": sys.executable, "args": [str(script)], **exec_fields}
    }
    return check_kubeconfig(yaml.safe_dump(config).encode(), cluster_name="c1", allow_exec=True)


async def test_plugin_token_is_used_and_cached(fake_kube: FakeKube, tmp_path: Path) -> None:
    script = printing(tmp_path, {"token": ADMIN_TOKEN})
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        await api.get_json("/version")
        await api.get_json("/api")
        assert api.statistics().exec_runs == 1
    assert [r.user for r in fake_kube.requests[-2:]] == ["kubernetes-admin", "kubernetes-admin"]


async def test_concurrent_calls_share_one_plugin_run(fake_kube: FakeKube, tmp_path: Path) -> None:
    script = printing(tmp_path, {"token": ADMIN_TOKEN})
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        result = await check_health(api, now=lambda: T0)  # /version, then three reviews at once
        assert result.status == "healthy"
        assert api.statistics().exec_runs == 1


async def test_plugin_runs_again_when_its_credential_expires(fake_kube: FakeKube, tmp_path: Path) -> None:
    expires = T0 + timedelta(minutes=5)
    script = printing(tmp_path, {"token": ADMIN_TOKEN, "expirationTimestamp": "2030-01-01T00:05:00Z"})
    clock = [T0]
    async with KubeAPI(exec_target(fake_kube, script), now=lambda: clock[0]) as api:
        await api.get_json("/version")
        clock[0] = T0 + timedelta(minutes=4)
        await api.get_json("/version")
        assert api.statistics().exec_runs == 1
        assert api.statistics().credential_expires == expires
        clock[0] = T0 + timedelta(minutes=5)
        await api.get_json("/version")
        assert api.statistics().exec_runs == 2


async def test_a_rejected_plugin_token_is_refreshed_once(fake_kube: FakeKube, tmp_path: Path) -> None:
    # First run prints a token the cluster rejects, the second a good one (a revoked-then-renewed credential).
    counter = tmp_path / "runs"
    script = plugin(
        tmp_path,
        f"""
        import json, pathlib
        counter = pathlib.Path({str(counter)!r})
        runs = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(runs + 1))
        token = "revoked-token-value" if runs == 0 else {ADMIN_TOKEN!r}
        print(json.dumps({{"apiVersion": {API_VERSION!r}, "kind": "ExecCredential", "status": {{"token": token}}}}))
        """,
    )
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        assert (await api.get_json("/version"))["gitVersion"] == fake_kube.git_version
        assert api.statistics().exec_runs == 2
    assert [r.status for r in fake_kube.requests[-2:]] == [401, 200]


async def test_still_rejected_after_refresh_is_unauthenticated(fake_kube: FakeKube, tmp_path: Path) -> None:
    script = printing(tmp_path, {"token": "never-valid-token"})
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        with pytest.raises(Unauthenticated, match="credentials rejected"):
            await api.get_json("/version")
        assert api.statistics().exec_runs == 2


async def test_plugin_client_certificate(fake_kube: FakeKube, tmp_path: Path) -> None:
    cert, key = fake_kube.issue_client_cert("carol", ["system:masters"])
    script = printing(tmp_path, {"clientCertificateData": cert.decode(), "clientKeyData": key.decode()})
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        await api.get_json("/version")
    assert fake_kube.requests[-1].user == "carol"
    assert fake_kube.requests[-1].header("authorization") is None


async def test_plugin_gets_its_env_and_exec_info(fake_kube: FakeKube, tmp_path: Path) -> None:
    script = plugin(
        tmp_path,
        f"""
        import json, os
        info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
        assert info["spec"]["interactive"] is False, info
        assert info["spec"]["cluster"]["server"].startswith("https://127.0.0.1:"), info
        status = {{"token": os.environ["KUBE_TOKEN_FOR_TEST"]}}
        print(json.dumps({{"apiVersion": {API_VERSION!r}, "kind": "ExecCredential", "status": status}}))
        """,
    )
    env = [{"name": "KUBE_TOKEN_FOR_TEST", "value": ADMIN_TOKEN}]
    async with KubeAPI(exec_target(fake_kube, script, env=env, provideClusterInfo=True)) as api:
        await api.get_json("/version")
    assert fake_kube.requests[-1].user == "kubernetes-admin"


async def test_failing_plugin_is_a_clear_error(fake_kube: FakeKube, tmp_path: Path) -> None:
    script = plugin(tmp_path, "import sys\nsys.stderr.write('no credentials for you\\n')\nsys.exit(3)\n")
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        with pytest.raises(Unauthenticated) as caught:
            await api.get_json("/version")
    assert caught.value.message == (
        f"exec credential plugin {sys.executable!r} failed with exit status 3: no credentials for you"
    )
    assert not fake_kube.requests  # nothing was sent without credentials


async def test_hanging_plugin_times_out(fake_kube: FakeKube, tmp_path: Path) -> None:
    script = plugin(tmp_path, "import threading\nthreading.Event().wait()  # hangs until killed\n")
    async with KubeAPI(exec_target(fake_kube, script), exec_timeout=0.3) as api:
        with pytest.raises(Timeout, match=r"did not finish within 0\.3s"):
            await api.get_json("/version")


async def test_missing_plugin_command(fake_kube: FakeKube, tmp_path: Path) -> None:
    config = fake_kube.kubeconfig(None)
    config["users"][0]["user"] = {"exec": {"apiVersion": API_VERSION, "command": str(tmp_path / "no-such-plugin")}}
    target = check_kubeconfig(yaml.safe_dump(config).encode(), cluster_name="c1", allow_exec=True)
    async with KubeAPI(target) as api:
        with pytest.raises(Unauthenticated, match="cannot be started: No such file or directory"):
            await api.get_json("/version")


async def test_plugin_flooding_stdout_is_cut_off(fake_kube: FakeKube, tmp_path: Path) -> None:
    script = plugin(tmp_path, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        with pytest.raises(Unauthenticated, match="printed more than 1048576 bytes"):
            await api.get_json("/version")


async def test_plugin_token_never_leaks_into_errors(fake_kube: FakeKube, tmp_path: Path) -> None:
    secret = "exec-secret-token-0123456789"
    fake_kube.add_token(secret, "kubernetes-admin", ["system:masters"])
    fake_kube.fail_next("/version", 500, message=f"I saw Bearer {secret}")
    script = printing(tmp_path, {"token": secret})
    async with KubeAPI(exec_target(fake_kube, script)) as api:
        with pytest.raises(ConnectionProblem) as caught:
            await api.get_json("/version")
        texts = [caught.value.message, repr(api), repr(api.statistics())]
    assert "I saw Bearer <redacted>" in caught.value.message
    assert all(secret not in text for text in texts)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"token: abc", "not JSON"),
        (b"[]", "did not print an ExecCredential"),
        (json.dumps({"kind": "Config"}).encode(), "did not print an ExecCredential"),
        (json.dumps({"kind": "ExecCredential", "apiVersion": "v0"}).encode(), "returned 'v0'"),
        (json.dumps({"kind": "ExecCredential", "apiVersion": API_VERSION}).encode(), "without status"),
        (credential({}).encode(), "neither status.token nor"),
        (credential({"token": ""}).encode(), "non-empty string"),
        (credential({"token": 42}).encode(), "non-empty string"),
        (credential({"clientCertificateData": "x"}).encode(), "together"),
        (credential({"token": "t", "expirationTimestamp": "tomorrow"}).encode(), "invalid expirationTimestamp"),
        (credential({"token": "t", "expirationTimestamp": 5}).encode(), "not an RFC 3339 string"),
        (credential({"token": "t", "expirationTimestamp": "9" * 5000}).encode(), "not an RFC 3339 string"),
    ],
)
def test_malformed_plugin_output(output: bytes, expected: str) -> None:
    with pytest.raises(Unauthenticated, match=expected):
        parse_exec_credential(output, command="plug", api_version=API_VERSION)


def test_good_plugin_output_parses_and_hides_secrets() -> None:
    cert = base64.b64encode(b"not-really").decode()
    parsed = parse_exec_credential(
        credential({"token": "tok-abcdef", "expirationTimestamp": "2030-01-01T00:05:00+01:00"}).encode(),
        command="plug",
        api_version=API_VERSION,
    )
    assert parsed.token == "tok-abcdef"
    assert parsed.expires == datetime(2029, 12, 31, 23, 5, tzinfo=UTC)
    assert "tok-abcdef" not in repr(parsed)
    naive = parse_exec_credential(
        credential(
            {"clientCertificateData": cert, "clientKeyData": cert, "expirationTimestamp": "2030-01-01T00:00:00"}
        ).encode(),
        command="plug",
        api_version=None,
    )
    assert naive.expires == T0
    assert naive.client_cert == cert.encode()
