"""The user side without a registry: which ``kube ls`` view runs, ``kube logout`` and ``logout`` (offline by
design: they must work with an expired login), ``status`` of an expired login, and hostile flags.
The registry-backed paths run with real kubectl in tests/integration/test_user_kube_loop.py."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from registry.cli import kube_user
from registry.cli import kubeconfig_user as kc
from registry.cli.kubeport_main import build_parser
from registry.cli.profile import KubeportHome, Profile
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.core.identity_file import IdentityFile
from registry.host.cmdline import guarded, parse_command_line
from tests.helpers import CliResult

ENTRY = kc.KubeEntry("prod", "https://door:3026/v1/clusters/cHJvZA", "Q0E=")


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=datetime.now(tz=UTC) - timedelta(days=1))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "kp"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("KUBEPORT_IDENTITY", raising=False)
    return tmp_path


def save(ca: CertAuthority, *, expired: bool = False, cluster: str = "prod") -> None:
    key = generate_private_key()
    start = datetime.now(tz=UTC) - timedelta(hours=3 if expired else 0, minutes=1)
    cert = ca.issue(public_key_pem(key), Identity("alice", "user", roles=("dev",)), ttl=timedelta(hours=1), now=start)
    identity = IdentityFile(cert_pem=cert, key_pem=key, ca_pems=(ca.cert_pem,), registry="reg:3025")
    KubeportHome().save(Profile(cluster=cluster, registries=("reg:3025",), user="alice", ca_pin=ca.pin), identity)


async def kubeport(*argv: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            args = parse_command_line(build_parser(), list(argv))
            code = await guarded(args.func, args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def _ns(**flags: object) -> argparse.Namespace:
    return argparse.Namespace(**{"registry": None, "identity": None, "data_dir": None, **flags})


def test_kube_ls_view_choice(env: Path, ca: CertAuthority) -> None:
    assert not kube_user.uses_login(_ns(), {}), "no login: the admin/agent view, as before"
    save(ca)
    assert kube_user.uses_login(_ns(), {})
    assert not kube_user.uses_login(_ns(identity="admin.identity"), {})
    assert not kube_user.uses_login(_ns(data_dir="/var/lib/kubeport"), {})
    assert not kube_user.uses_login(_ns(registry="reg:3025"), {})
    assert not kube_user.uses_login(_ns(), {"KUBEPORT_IDENTITY": "/x"})


async def test_kube_ls_with_an_expired_login_says_run_kubeport_login(env: Path, ca: CertAuthority) -> None:
    save(ca, expired=True)
    result = await kubeport("kube", "ls")
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("ERROR: ") and "run kubeport login" in result.err


async def test_status_of_an_expired_login_shows_it_and_exits_1(env: Path, ca: CertAuthority) -> None:
    save(ca, expired=True)
    result = await kubeport("status")
    assert result.code == 1
    assert "alice" in result.out and "EXPIRED" in result.out
    assert "run kubeport login --registry reg:3025 --user alice" in result.err


async def test_status_without_login(env: Path) -> None:
    result = await kubeport("status")
    assert result.code == 1 and "not logged in" in result.err and "run kubeport login" in result.err


async def test_kube_logout_works_with_an_expired_login_and_keeps_other_entries(env: Path, ca: CertAuthority) -> None:
    save(ca, expired=True)
    path = env / "config"
    path.write_text(yaml.safe_dump({"contexts": [{"name": "work", "context": {"cluster": "w", "user": "me"}}]}))
    kc.update(
        path, lambda doc: kc.add_entries(doc, registry_cluster="prod", entries=[ENTRY], current="prod", source="")
    )
    result = await kubeport("kube", "logout")
    assert result.code == 0, result.err
    assert result.out == 'Logged out of kubernetes cluster "prod".\n'
    assert [c["name"] for c in yaml.safe_load(path.read_text())["contexts"]] == ["work"]


async def test_logout_removes_credentials_even_when_the_kubeconfig_is_refused(env: Path, ca: CertAuthority) -> None:
    save(ca)
    target = env / "elsewhere"
    target.write_text("{}\n")
    (env / "config").symlink_to(target)
    result = await kubeport("logout")
    assert result.code == 1
    assert "symbolic link" in result.err and result.err.count("ERROR") == 1
    assert "Logged out alice from prod." in result.out
    assert KubeportHome().names() == [] and not list((env / "kp").rglob("*.identity"))
    again = await kubeport("logout")
    assert again.code == 1 and "not logged in" in again.err


async def test_logout_all_logins(env: Path, ca: CertAuthority) -> None:
    save(ca, cluster="prod")
    save(ca, cluster="staging")
    path = env / "config"
    for cluster in ("prod", "staging"):
        kc.update(
            path,
            lambda doc, c=cluster: kc.add_entries(doc, registry_cluster=c, entries=[ENTRY], current=None, source=""),
        )
    result = await kubeport("logout")
    assert result.code == 0, result.err
    doc = yaml.safe_load(path.read_text())
    assert doc["contexts"] == [] and doc["users"] == [] and doc["clusters"] == []
    assert KubeportHome().names() == []


@pytest.mark.parametrize("name", ["", "x" * 5000, "bad\x1bname", "tab\tname"])
async def test_hostile_cluster_names_are_refused_by_the_parser(env: Path, name: str) -> None:
    for argv in (("kube", "login", name), ("kube", "logout", name), ("status", "--cluster", name)):
        result = await kubeport(*argv)
        assert result.code == 2, argv
        assert "\x1b" not in result.err


async def test_kube_login_needs_a_name_or_all(env: Path, ca: CertAuthority) -> None:
    save(ca)
    result = await kubeport("kube", "login")
    assert result.code == 1 and "--all" in result.err
