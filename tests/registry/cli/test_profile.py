"""The login profile store (``registry/cli/profile.py``): what ``kubeport login`` saves and every user
command reads."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from registry.cli.profile import KubeportHome, NotLoggedIn, Profile, home_dir, require_fresh
from registry.core.errors import BadParameter, TooLarge
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.core.identity_file import IdentityFile

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _identity(ca: CertAuthority, user: str = "alice", hours: float = 12) -> IdentityFile:
    key = generate_private_key()
    cert = ca.issue(public_key_pem(key), Identity(user, "user", roles=("dev",)), ttl=timedelta(hours=hours), now=NOW)
    return IdentityFile(cert_pem=cert, key_pem=key, ca_pems=(ca.cert_pem,), registry="reg.example:3025")


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=NOW)


def _profile(ca: CertAuthority, **changes: object) -> Profile:
    values: dict[str, object] = {
        "cluster": "prod",
        "registries": ("reg-a:3025", "reg-b:3025"),
        "user": "alice",
        "ca_pin": ca.pin,
        "kube_public_addr": "kube.example:3026",
    }
    values.update(changes)
    return Profile(**values)  # type: ignore[arg-type]


def test_save_then_load_round_trips_with_private_files(tmp_path: Path, ca: CertAuthority) -> None:
    home = KubeportHome(tmp_path / "home")
    identity = _identity(ca)
    home.save(_profile(ca), identity)
    login = home.load()
    assert login.profile == _profile(ca)
    assert login.identity.key_pem == identity.key_pem
    assert NOW + timedelta(hours=11) < login.expires <= NOW + timedelta(hours=12)
    for path in [p for p in (tmp_path / "home").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_not_logged_in_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(NotLoggedIn, match="kubeport login"):
        KubeportHome(tmp_path).load()


def test_expired_login_names_the_expiry_and_the_command(tmp_path: Path, ca: CertAuthority) -> None:
    home = KubeportHome(tmp_path)
    home.save(_profile(ca), _identity(ca, hours=1))
    login = home.load()
    assert require_fresh(login, NOW) is login
    hint = r"expired at .*run kubeport login --registry reg-a:3025,reg-b:3025 --user alice"
    with pytest.raises(NotLoggedIn, match=hint):
        require_fresh(login, NOW + timedelta(hours=2))


def test_remove_forgets_key_and_profile_and_keeps_others(tmp_path: Path, ca: CertAuthority) -> None:
    home = KubeportHome(tmp_path)
    home.save(_profile(ca, cluster="staging"), _identity(ca))
    home.save(_profile(ca), _identity(ca))
    assert home.names() == ["prod", "staging"]
    removed = home.remove()
    assert removed is not None and removed.cluster == "prod"
    assert not home.identity_path("prod", "alice").exists()
    assert home.names() == ["staging"]
    assert home.current_name() is None
    assert home.load("staging").profile.cluster == "staging"
    assert home.remove() is None


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 200, "a\nb", "é"])
def test_names_that_would_escape_the_home_are_refused(tmp_path: Path, ca: CertAuthority, name: str) -> None:
    with pytest.raises(BadParameter, match="cannot name a profile"):
        _profile(ca, cluster=name)
    with pytest.raises(BadParameter, match="cannot name a profile"):
        KubeportHome(tmp_path).identity_path("prod", name)


@pytest.mark.parametrize(
    "text",
    [
        b"- a list\n",
        b"version: 99\ncluster: prod\n",
        b"version: 1\ncluster: prod\nregistry: [1]\nuser: alice\nca_pin: sha256:x\n",
        b"version: 1\ncluster: ../x\nregistry: [a:1]\nuser: alice\nca_pin: sha256:x\n",
        b"\xff\xfe",
        b"{" * 100,
        b"a: !!python/object:os.system ls\n",
    ],
)
def test_malformed_profiles_are_errors_not_tracebacks(tmp_path: Path, text: bytes) -> None:
    home = KubeportHome(tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "prod.yaml").write_bytes(text)
    (tmp_path / "current-profile").write_text("prod\n")
    with pytest.raises(BadParameter, match=r"profile .*prod\.yaml"):
        home.load()


def test_a_huge_profile_is_refused(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "prod.yaml").write_bytes(b"#" * (1024 * 1024))
    with pytest.raises(TooLarge):
        KubeportHome(tmp_path).load("prod")


def test_a_corrupt_identity_asks_to_log_in_again(tmp_path: Path, ca: CertAuthority) -> None:
    home = KubeportHome(tmp_path)
    home.save(_profile(ca), _identity(ca))
    home.identity_path("prod", "alice").write_bytes(b"garbage")
    with pytest.raises(NotLoggedIn, match="run kubeport login"):
        home.load()


def test_unknown_keys_of_a_newer_version_survive_a_rewrite(tmp_path: Path, ca: CertAuthority) -> None:
    home = KubeportHome(tmp_path)
    home.save(_profile(ca), _identity(ca))
    path = home.profile_path("prod")
    path.write_text(path.read_text() + "future_key: kept\n")
    profile = home.load().profile
    home.save(profile, _identity(ca))
    assert "future_key: kept" in path.read_text()


def test_home_dir_follows_the_environment(tmp_path: Path) -> None:
    assert home_dir({"KUBEPORT_HOME": str(tmp_path)}) == tmp_path
    assert home_dir({}) == Path(os.path.expanduser("~")) / ".kubeport"
