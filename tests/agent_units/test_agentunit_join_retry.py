"""An agent started before its registry waits for it: the first contact (CA fetch, join) is retried with
jittered exponential backoff capped at 30 s, forever, and each retry is logged. A bad token or a CA pin
mismatch ends the start at once. Time is trio's MockClock (autojump): no test waits for real."""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

import agent.identity as identity_module
from agent.config import AgentConfig, parse_config
from agent.identity import join_backoff, obtain_identity
from agent.watcher import Backoff
from registry.core.errors import AccessDenied, ConnectionProblem, KubeportError, LimitExceeded, Timeout

PIN = "sha256:" + "ab" * 32


class Reached(Exception):
    """The fake registry's last answer: the code under test got this far."""


def config(tmp_path: Path, *, pinned: bool = True) -> AgentConfig:
    kp: dict[str, Any] = {"registry": "127.0.0.1:3025", "token": "join-token-value", "data_dir": str(tmp_path)}
    if pinned:
        kp["ca_pin"] = PIN
    doc = {"kubeport": kp, "kubernetes_service": {"enabled": True, "resources": [{"labels": {"*": "*"}}]}}
    return parse_config(yaml.safe_dump(doc), source="test agent")


class FlakyRegistry:
    """Fails the first ``failures`` calls with ``error``, then raises ``last``; records when each came."""

    def __init__(self, failures: int, error: KubeportError, last: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.last = last
        self.calls: list[float] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise self.error
        raise self.last


def gaps(calls: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(calls)]


@pytest.mark.parametrize(
    "error",
    [
        ConnectionProblem("cannot reach the registry at 127.0.0.1:3025: connection refused"),
        Timeout("registry at 127.0.0.1:3025 did not answer in time"),
        LimitExceeded("too many requests"),
    ],
)
async def test_ca_fetch_waits_for_the_registry_with_capped_backoff(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: KubeportError,
) -> None:
    registry = FlakyRegistry(40, error, Reached())
    monkeypatch.setattr(identity_module, "fetch_ca", registry)
    with caplog.at_level(logging.WARNING, logger="agent.identity"), pytest.raises(Reached):
        await obtain_identity(config(tmp_path), backoff=Backoff(base=1.0, cap=30.0, rng=random.Random(7)))
    assert len(registry.calls) == 41  # it never gave up
    waits = gaps(registry.calls)
    for n, wait in enumerate(waits):
        ceiling = min(30.0, 2.0**n)
        assert ceiling / 2 <= wait <= ceiling, (n, wait)
    assert max(waits) <= 30.0
    assert sum(waits[-10:]) >= 150  # capped, not reset: the late retries are 15-30 s apart
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 40
    assert error.message in retries[0]


async def test_join_is_retried_too_and_trust_on_first_use_waits(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch = FlakyRegistry(3, ConnectionProblem("down"), Reached())

    async def fetched(*args: Any, **kwargs: Any) -> list[bytes]:
        try:
            await fetch()
        except Reached:
            return [b"ca"]
        raise AssertionError("unreachable")

    join = FlakyRegistry(5, ConnectionProblem("restarting"), Reached())
    monkeypatch.setattr(identity_module, "_fetch_unverified_ca", fetched)
    monkeypatch.setattr(identity_module, "join", join)
    with pytest.raises(Reached):
        await obtain_identity(config(tmp_path, pinned=False), backoff=Backoff(rng=random.Random(1)))
    assert len(fetch.calls) == 4
    assert len(join.calls) == 6


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("fetch_ca", AccessDenied("registry CA at 127.0.0.1:3025 does not match the pin")),
        ("join", AccessDenied('"n" can not join the cluster with role "Kube": the token is not valid')),
    ],
)
async def test_bad_token_or_pin_mismatch_fails_at_once(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    error: KubeportError,
) -> None:
    async def ca(*args: Any, **kwargs: Any) -> list[bytes]:
        return [b"ca"]

    monkeypatch.setattr(identity_module, "fetch_ca", ca)
    failing = FlakyRegistry(0, error, error)
    monkeypatch.setattr(identity_module, where, failing)
    with pytest.raises(AccessDenied):
        await obtain_identity(config(tmp_path))
    assert len(failing.calls) == 1
    assert trio.current_time() == 0.0  # no waiting at all


def test_default_schedule_starts_at_a_second_and_caps_at_thirty() -> None:
    backoff = join_backoff()
    first = backoff.next()
    assert 0.5 <= first <= 1.0
    later = [backoff.next() for _ in range(100)]
    assert all(15.0 <= d <= 30.0 for d in later[10:])
