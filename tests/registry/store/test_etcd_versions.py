"""etcd releases with a known fault: the table the fault tests use to pick their etcd binary."""

from __future__ import annotations

import pytest

from registry.store.etcd_versions import known_problem, parse_version


@pytest.mark.parametrize("version", ["3.5.0", "3.5.1", "3.5.2", "etcd Version: 3.5.1\nGit SHA: e8732fb5f"])
def test_the_releases_that_lose_writes_on_a_kill_are_named_with_the_fix(version: str) -> None:
    problem = known_problem(version)
    assert problem is not None
    assert "etcd 3.5." in problem and "3.5.3" in problem and "13766" in problem


@pytest.mark.parametrize("version", ["3.4.23", "3.5.3", "3.5.21", "3.6.0", "4.0.0", "3.4.99"])
def test_releases_without_that_fault_have_no_warning(version: str) -> None:
    assert known_problem(version) is None


@pytest.mark.parametrize("version", ["", "garbage", "3.5", "v3", "3.5.x", "\x00" * 10])
def test_an_unparsable_version_is_not_a_known_problem(version: str) -> None:
    assert known_problem(version) is None


def test_a_huge_version_string_is_read_only_at_its_start() -> None:
    assert parse_version("9" * 10_000_000) is None  # no X.Y.Z in the first 4 KiB: nothing, at once
    assert parse_version("x" * 100 + "3.5.1" + "y" * 10_000_000) == (3, 5, 1)
