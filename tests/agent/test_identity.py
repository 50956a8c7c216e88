"""An agent started before its registry waits for it: the first contact (CA fetch, join) is retried with
jittered exponential backoff capped at 30 s, forever, and each retry is logged. A bad token or a CA pin
mismatch ends the start at once. Time is trio's MockClock (autojump): no test waits for real."""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

import agent.identity as identity_module
from agent.config import AgentConfig, parse_config
from agent.identity import join_backoff, obtain_identity
from agent.watcher import Backoff
from registry.core.errors import AccessDenied, ConnectionProblem, KubeportError, LimitExceeded, Timeout
from registry.core.identity import CertAuthority

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
    monkeypatch.setattr(identity_module, "fetch_unverified_ca", fetched)
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


# ------------------------------------------------------------- through the client, with an httpx transport


def _status(code: int, reason: str, message: str) -> httpx.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason}
    return httpx.Response(code, json={**body, "code": code})


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "trust-on-first-use"])
async def test_first_contact_goes_through_the_client_and_its_error_mapping(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, pinned: bool
) -> None:
    """CA fetch and join are ``registry.client`` calls: a refused connection and a 429 are retried, the
    registry's refusal of the token (403) ends the start at once."""
    ca = CertAuthority.generate("join-retry", now=datetime.now(tz=UTC))
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v1/ca":
            if calls.count("/v1/ca") <= 2:
                raise httpx.ConnectError("connection refused", request=request)
            if calls.count("/v1/ca") == 3:
                return _status(429, "TooManyRequests", "too many requests: retry in 1s")
            return httpx.Response(200, json={"ca_pems": [ca.cert_pem.decode()]})
        assert request.url.path == "/v1/join"
        return _status(403, "Forbidden", '"n" can not join the cluster with role "Kube": the token is not valid')

    cfg = config(tmp_path, pinned=pinned)
    if pinned:
        cfg = replace(cfg, ca_pins=(ca.pin,))
    with pytest.raises(AccessDenied, match="token is not valid"):
        await obtain_identity(cfg, backoff=Backoff(rng=random.Random(3)), transport=httpx.MockTransport(handler))
    assert calls == ["/v1/ca"] * 4 + ["/v1/join"]


async def test_a_pin_mismatch_through_the_client_fails_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    other = CertAuthority.generate("someone-else", now=datetime.now(tz=UTC))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ca_pems": [other.cert_pem.decode()]}))
    with pytest.raises(AccessDenied, match="does not match the pin"):
        await obtain_identity(config(tmp_path), transport=transport)
    assert trio.current_time() == 0.0
