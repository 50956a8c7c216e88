"""What kpctl tells a new admin: ``tokens add`` gives an address agents on other hosts can use (the
registry's ``--public-addr``, else a non-loopback address of this host) and says when the registry only
listens on loopback; ``create`` of an existing resource names ``create -f``; a missing file is named once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from registry.cli.kpctl.tokens import agent_address
from registry.core.resources import mask_token
from registry.server.serve import RegistryInfo
from tests.helpers import kpctl, kubeconfig_bytes, seed_kube_cluster_yaml


def _command_line(out: str) -> str:
    lines = [line for line in out.splitlines() if "kubeport configure" in line]
    assert len(lines) == 1, out
    return lines[0]


async def test_tokens_add_on_a_loopback_registry_says_so_and_keeps_the_token_visible(registry: RegistryInfo) -> None:
    r = await kpctl("tokens", "add", "--type=kube")
    assert r.code == 0, r.err
    text = " ".join(r.out.split())
    assert "listens on a loopback address only" in text
    assert "--listen 0.0.0.0:3025 --public-addr HOST:3025" in text
    token = r.out.split("The invite token: ", 1)[1].split()[0]
    line = _command_line(r.out)
    assert f"--token={token}" in line  # tokens add is where the admin is meant to see the value
    registry_flag = line.split("--registry=", 1)[1].split()[0]
    assert not registry_flag.startswith(("127.", "localhost", "[::1]")) or "only works on this host" in text


@pytest.mark.parametrize(
    ("ping", "used", "this_host", "expected", "note"),
    [
        ({"public_addr": "reg.example.com:3025"}, "127.0.0.1:3025", "10.0.0.5", "reg.example.com:3025", None),
        ({"public_addr": "", "loopback_only": False}, "127.0.0.1:3025", "10.0.0.5", "10.0.0.5:3025", "check that"),
        ({"public_addr": "", "loopback_only": False}, "localhost:4000", "10.0.0.5", "10.0.0.5:4000", "check that"),
        ({"public_addr": "", "loopback_only": False}, "[::1]:3025", "fd00::5", "[fd00::5]:3025", "check that"),
        ({"public_addr": "", "loopback_only": False}, "10.1.1.1:3025", "10.0.0.5", "10.1.1.1:3025", None),
        ({"public_addr": "", "loopback_only": True}, "127.0.0.1:3025", "10.0.0.5", "10.0.0.5:3025", "loopback"),
        ({"public_addr": "", "loopback_only": True}, "127.0.0.1:3025", None, "127.0.0.1:3025", "loopback"),
        ({}, "127.0.0.1:3025", None, "127.0.0.1:3025", "only works on this host"),  # an older registry
        ({"public_addr": None, "loopback_only": "yes"}, "127.0.0.1:3025", None, "127.0.0.1:3025", "loopback"),
    ],
)
def test_agent_address(
    ping: dict[str, object], used: str, this_host: str | None, expected: str, note: str | None
) -> None:
    address, notes = agent_address(ping, used, this_host)
    assert address == expected
    if note is None:
        assert notes == []
    else:
        assert any(note in n for n in notes), notes


async def test_create_of_an_existing_cluster_names_create_f(registry: RegistryInfo, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(seed_kube_cluster_yaml("c1", kubeconfig_bytes()))
    assert (await kpctl("create", str(path))).code == 0
    r = await kpctl("create", str(path))
    assert r.code == 1
    assert r.err.startswith("ERROR: ") and r.err.count("\n") == 1, r.err
    assert 'kubernetes cluster "c1" already exists' in r.err
    assert "create -f" in r.err
    assert (await kpctl("create", "-f", str(path))).code == 0


@pytest.mark.parametrize("name", ["missing.yaml", "a dir/with space.yaml", "ünï.yaml"])
async def test_missing_file_is_named_once(registry: RegistryInfo, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    r = await kpctl("create", str(path))
    assert r.code == 1
    assert r.err.startswith("ERROR: ") and r.err.count("\n") == 1, r.err
    assert r.err.count(name) == 1, r.err


async def test_create_of_a_token_shows_it_masked_like_every_listing(registry: RegistryInfo, tmp_path: Path) -> None:
    value = "abcdefgh" * 4
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    path = tmp_path / "token.yaml"
    path.write_text(
        f"kind: token\nversion: v2\nmetadata:\n  name: {value}\n  expires: '{expires}'\nspec:\n  roles: [Kube]\n"
    )
    r = await kpctl("create", str(path))
    assert r.code == 0, r.err
    assert value not in r.out
    assert f'"{mask_token(value)}" has been created' in r.out  # the one masking rule, as tokens ls shows it
