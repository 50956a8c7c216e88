"""etcd releases with a known fault: the table's answers, and the warning a registry logs when it opens a
store on such a member (against the real etcd the tests run)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import registry.store.etcd as etcd_store
from registry.core.errors import ConnectionProblem
from registry.store.etcd import EtcdStore
from registry.store.etcd_client import EtcdClient
from registry.store.etcd_seal import generate_key
from registry.store.etcd_versions import known_problem, parse_version
from tests.fakes.etcd_server import EtcdServer, shared_etcd, unique_prefix


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


@pytest.fixture
def etcd() -> EtcdServer:
    return shared_etcd()


async def _member_version(etcd: EtcdServer) -> str:
    client = EtcdClient([etcd.url], retry_for=2.0)
    try:
        return str((await client.call("maintenance/status", {}))["version"])
    finally:
        await client.aclose()


async def test_opening_a_store_warns_about_the_member_release_exactly_when_the_table_knows_a_problem(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    version = await _member_version(etcd)
    caplog.set_level(logging.WARNING, logger="registry.store.etcd")
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix()):
        pass
    warnings = [r.getMessage() for r in caplog.records if "13766" in r.getMessage()]
    if known_problem(version) is None:
        assert warnings == []
    else:
        assert warnings == [f"{known_problem(version)} (the member at {etcd.url})"]


async def test_the_warning_names_the_member_and_does_not_stop_the_store(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def always(version: str) -> str:
        seen.append(version)
        return f"etcd {version} is on a test's list"

    monkeypatch.setattr(etcd_store, "known_problem", always)
    caplog.set_level(logging.WARNING, logger="registry.store.etcd")
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix()) as store:
        await store.create("c", "a", {"kind": "c", "metadata": {"name": "a"}})
        assert (await store.get("c", "a")).name == "a"
    assert seen == [await _member_version(etcd)]
    assert [r.getMessage() for r in caplog.records if "test's list" in r.getMessage()] == [
        f"etcd {seen[0]} is on a test's list (the member at {etcd.url})"
    ]


@pytest.mark.parametrize(
    "answer",
    [
        ConnectionProblem("etcd refused the status call"),
        {"version": {"major": 3}},
        {"version": None},
        {},
        {"version": "3.5.1" + "\x00" * 1_000_000},
    ],
    ids=["refused", "not-a-string", "null", "absent", "huge"],
)
async def test_a_status_answer_that_is_refused_or_odd_never_stops_the_store(
    etcd: EtcdServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, answer: object
) -> None:
    real = EtcdClient.call

    async def odd_status(self: EtcdClient, path: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        if path != "maintenance/status":
            return await real(self, path, body, **kw)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, dict)
        return answer

    monkeypatch.setattr(EtcdClient, "call", odd_status)
    caplog.set_level(logging.WARNING, logger="registry.store.etcd")
    async with await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix()) as store:
        await store.create("c", "a", {"kind": "c", "metadata": {"name": "a"}})
        assert (await store.get("c", "a")).name == "a"
    warnings = [r.getMessage() for r in caplog.records if "13766" in r.getMessage()]
    # a huge string is read at its start only, where it does say 3.5.1: the one case that warns
    assert len(warnings) == (1 if answer == {"version": "3.5.1" + "\x00" * 1_000_000} else 0)
    assert all(len(w) < 1000 for w in warnings)  # the member's own text is never echoed whole
