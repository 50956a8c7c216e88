"""kpctl bots add / update / ls / rm against a real registry: what the admin reads, and one ERROR line for
every mistake."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from registry.cli.bot.config import parse_config
from registry.server.serve import RegistryInfo
from tests.helpers import kpctl
from tests.registry.bot_helpers import EXAMPLE_ROLE


@pytest.fixture
async def with_role(registry: RegistryInfo, tmp_path: Path) -> RegistryInfo:
    path = tmp_path / "role.yaml"
    path.write_text(EXAMPLE_ROLE)
    assert (await kpctl("create", "-f", str(path))).code == 0
    return registry


async def test_add_prints_the_token_once_and_a_bot_yaml_that_validates(with_role: RegistryInfo) -> None:
    added = await kpctl("bots", "add", "ci", "--roles=example-role", "--ttl=30m")
    assert added.code == 0, added.err
    assert 'Bot "ci" has been created (user "bot-ci", roles: example-role).' in added.out
    token = re.search(r"The bot join token: ([0-9a-f]{32})\n", added.out)
    assert token is not None
    block = added.out.split("set the output's cluster and directory):\n\n", 1)[1].split("\n\nThen", 1)[0]
    config = parse_config(textwrap.dedent(block), source="bot.yaml")
    assert config.token == token.group(1)
    assert config.registries == (with_role.address,)
    assert config.ca_pins == (with_role.ca_pin,)

    listed = await kpctl("bots", "ls")
    assert listed.code == 0
    assert "waiting for join" in listed.out
    assert token.group(1) not in listed.out
    as_json = await kpctl("bots", "ls", "--format", "json")
    assert json.loads(as_json.out)[0]["roles"] == ["example-role"]
    assert token.group(1) not in as_json.out


async def test_update_and_rm(with_role: RegistryInfo) -> None:
    assert (await kpctl("bots", "add", "ci")).code == 0
    updated = await kpctl("bots", "update", "ci", "--add-roles", "example-role")
    assert updated.code == 0, updated.err
    assert "Roles: example-role" in updated.out
    cleared = await kpctl("bots", "update", "ci", "--set-roles", "")
    assert cleared.code == 0
    assert "Roles: (none)" in cleared.out
    removed = await kpctl("bots", "rm", "ci")
    assert removed.code == 0
    assert 'Bot "ci" has been deleted' in removed.out
    assert "ci" not in (await kpctl("bots", "ls")).out.split("\n", 2)[-1]
    users = await kpctl("users", "ls")
    assert "bot-ci" not in users.out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("bots", "add", "bad name"), "bot name"),
        (("bots", "add", "x", "--roles=ghost"), "ghost"),
        (("bots", "add", "x", "--ttl=1d"), "--ttl"),
        (("bots", "add", "x", "--ttl=-5m"), "--ttl"),
        (("bots", "update", "x"), "nothing to update"),
        (("bots", "update", "nobody", "--add-roles", "example-role"), "not found"),
        (("bots", "rm", "nobody"), "not found"),
        (("bots", "add", "x", "--roles=" + ",".join(f"r{i}" for i in range(300))), "--roles"),
    ],
)
async def test_each_mistake_is_one_error_line(with_role: RegistryInfo, argv: tuple[str, ...], says: str) -> None:
    result = await kpctl(*argv)
    assert result.code == 1
    assert result.err.startswith("ERROR: ")
    assert result.err.count("\n") == 1
    assert says in result.err


async def test_a_bot_name_taken_by_a_user_is_refused_and_nothing_is_left_behind(with_role: RegistryInfo) -> None:
    assert (await kpctl("users", "add", "bot-ci")).code == 0
    result = await kpctl("bots", "add", "ci", "--roles=example-role")
    assert result.code == 1
    assert 'user "bot-ci" already exists' in result.err
    assert "ci" not in (await kpctl("bots", "ls")).out.split("\n", 2)[-1]
