"""Health checks: what ``spec.health`` says about a cluster, against the fake API (real TLS and RBAC), and
the monitor's schedule and change reporting (a scripted in-memory client under trio's MockClock)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from agent.health import SSAR_PATH, HealthMonitor, HealthResult, check_health
from agent.kube.client import KubeAPI
from registry.core.errors import BadParameter, ConnectionProblem, KubeportError, Timeout
from registry.core.kubeconfig import KubeTarget, check_kubeconfig
from tests.fakes.fixtures import ADMIN_TOKEN
from tests.fakes.kube_api import FakeKube

SA = "system:serviceaccount:kube-system:kubeport"
SA_TOKEN = "kubeport-sa-token-value"
NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
FIX = "grant the service account the impersonate verb (see scripts/get_kubeconfig.py)"


def now() -> datetime:
    return NOW


def target(fake: FakeKube, token: str = SA_TOKEN, **edits: Any) -> KubeTarget:
    config = fake.kubeconfig(token)
    config["clusters"][0]["cluster"].update(edits)
    return check_kubeconfig(yaml.safe_dump(config).encode(), cluster_name="c1")


def service_account(fake: FakeKube, resources: Sequence[str], *, namespace: str | None = None) -> None:
    fake.add_token(SA_TOKEN, SA)
    if resources:
        fake.grant(SA, verbs=["impersonate"], resources=list(resources), namespace=namespace)


async def health_of(fake: FakeKube, **kw: Any) -> HealthResult:
    async with KubeAPI(target(fake, **kw)) as api:
        return await check_health(api, now=now)


# ------------------------------------------------------------------------------- against the fake API


async def test_healthy_when_the_service_account_may_impersonate(fake_kube: FakeKube) -> None:
    service_account(fake_kube, ["users", "groups", "serviceaccounts"])
    result = await health_of(fake_kube)
    assert result == HealthResult("healthy", "", NOW, fake_kube.git_version)
    reviews = [r for r in fake_kube.requests if r.path == SSAR_PATH]
    assert len(reviews) == 3
    assert {r.user for r in reviews} == {SA}


@pytest.mark.parametrize(
    ("granted", "missing"),
    [
        ([], "users, groups, serviceaccounts"),
        (["users"], "groups, serviceaccounts"),
        (["users", "groups"], "serviceaccounts"),
        (["groups", "serviceaccounts"], "users"),
    ],
)
async def test_unhealthy_names_what_it_cannot_impersonate(
    fake_kube: FakeKube, granted: list[str], missing: str
) -> None:
    service_account(fake_kube, granted)
    result = await health_of(fake_kube)
    assert result.status == "unhealthy"
    assert result.reason == f"cannot impersonate {missing} at the cluster level: {FIX}"
    assert result.kube_version == fake_kube.git_version  # reachable: the version is still known


async def test_namespaced_impersonation_is_not_enough(fake_kube: FakeKube) -> None:
    service_account(fake_kube, ["users", "groups", "serviceaccounts"], namespace="default")
    result = await health_of(fake_kube)
    assert result.reason == f"cannot impersonate users, groups, serviceaccounts at the cluster level: {FIX}"


async def test_unhealthy_when_credentials_are_rejected(fake_kube: FakeKube) -> None:
    result = await health_of(fake_kube, token="unknown-token-value")
    assert result == HealthResult("unhealthy", f"credentials rejected by {fake_kube.url}: Unauthorized", NOW)
    assert "unknown-token-value" not in repr(result)


async def test_unhealthy_when_the_server_is_down() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    down = KubeTarget(context="c", cluster="c", user="u", server=f"https://127.0.0.1:{port}", auth="none")
    async with KubeAPI(down) as api:
        result = await check_health(api, now=now)
    assert result == HealthResult("unhealthy", f"cannot reach https://127.0.0.1:{port}: Connection refused", NOW)


async def test_unhealthy_when_the_access_review_fails(fake_kube: FakeKube) -> None:
    service_account(fake_kube, ["users", "groups", "serviceaccounts"])
    fake_kube.fail_next(SSAR_PATH, 500, times=3, message="etcd is on fire")
    result = await health_of(fake_kube)
    assert result.status == "unhealthy"
    assert result.reason.startswith("failed to verify impersonation permissions: ")
    assert "etcd is on fire" in result.reason


async def test_insecure_cluster_is_healthy_with_a_warning(fake_kube: FakeKube) -> None:
    service_account(fake_kube, ["users", "groups", "serviceaccounts"])
    config = fake_kube.kubeconfig(SA_TOKEN)
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = True
    async with KubeAPI(check_kubeconfig(yaml.safe_dump(config).encode(), cluster_name="c1")) as api:
        result = await check_health(api, now=now)
    assert result.status == "healthy"
    assert "TLS verification is off" in result.reason


async def test_admin_is_healthy(fake_kube: FakeKube) -> None:
    assert (await health_of(fake_kube, token=ADMIN_TOKEN)).status == "healthy"


async def test_monitor_reports_transitions_only(fake_kube: FakeKube) -> None:
    fake_kube.add_token(SA_TOKEN, SA)
    seen: list[HealthResult] = []
    async with KubeAPI(target(fake_kube)) as api:
        monitor = HealthMonitor(api, on_change=seen.append, now=now)
        assert (monitor.latest.status, monitor.latest.reason) == ("unknown", "not checked yet")
        assert (await monitor.check_now()).status == "unhealthy"
        await monitor.check_now()  # same result: no report
        fake_kube.grant(SA, verbs=["impersonate"], resources=["users", "groups", "serviceaccounts"])
        assert (await monitor.check_now()).status == "healthy"
        await monitor.check_now()
        fake_kube.remove_token(SA_TOKEN)
        await monitor.check_now()
        stats = monitor.statistics()
    assert [r.status for r in seen] == ["unhealthy", "healthy", "unhealthy"]
    assert seen[-1].reason.startswith("credentials rejected")
    assert monitor.latest == seen[-1]
    assert (stats.checks, stats.changes) == (5, 3)


# ------------------------------------------------------------------------------------ wire shape


@pytest.mark.parametrize(
    ("checked_at", "wire"),
    [
        (NOW, "2030-01-01T12:00:00Z"),
        (datetime(2030, 1, 1, 14, 0, 0, 999999, tzinfo=timezone(timedelta(hours=2))), "2030-01-01T12:00:00Z"),
        (datetime(2030, 1, 1, 12, 0, 0), "2030-01-01T12:00:00Z"),  # naive means UTC
    ],
)
def test_to_wire(checked_at: datetime, wire: str) -> None:
    result = HealthResult("healthy", "", checked_at, "v1.30.0")
    assert result.to_wire() == {"status": "healthy", "reason": "", "checked_at": wire, "kube_version": "v1.30.0"}


# ------------------------------------------------------------------- scripted client, virtual time


class ScriptedKube:
    """Answers health-check calls from a script; records when (virtual time) each /version came."""

    def __init__(self) -> None:
        self.warnings: tuple[str, ...] = ()
        self.version: Any = {"gitVersion": "v1.29.1"}
        self.version_error: KubeportError | None = None
        self.review: Any = {"status": {"allowed": True}}
        self.calls: list[float] = []

    async def get_json(self, path: str, *, timeout: float = 10.0) -> Any:
        assert path == "/version"
        self.calls.append(trio.current_time())
        await trio.sleep(0.01)
        if self.version_error is not None:
            raise self.version_error
        return self.version

    async def post_json(self, path: str, body: Any, *, timeout: float = 10.0) -> Any:
        assert path == SSAR_PATH
        assert body["spec"]["resourceAttributes"]["verb"] == "impersonate"
        return self.review


@pytest.mark.parametrize(
    ("version", "review", "expected"),
    [
        ({"gitVersion": "v1.29.1"}, {"status": {"allowed": True}}, ("healthy", "v1.29.1")),
        ("not an object", {"status": {"allowed": True}}, ("healthy", None)),
        ({"gitVersion": 129}, {"status": {"allowed": True}}, ("healthy", None)),
        ({"gitVersion": "v" * 10_000}, {"status": {"allowed": True}}, ("healthy", "v" * 64)),
        ({}, None, ("unhealthy", None)),
        ({}, {"status": {"allowed": "yes"}}, ("unhealthy", None)),
        ({}, ["garbage"], ("unhealthy", None)),
    ],
)
async def test_odd_answers_never_raise(version: Any, review: Any, expected: tuple[str, str | None]) -> None:
    kube = ScriptedKube()
    kube.version, kube.review = version, review
    result = await check_health(kube, now=now)
    assert (result.status, result.kube_version) == expected


async def test_monitor_checks_at_once_then_every_interval_with_jitter(autojump_clock: trio.testing.MockClock) -> None:
    kube = ScriptedKube()
    seen: list[HealthResult] = []
    async with trio.open_nursery() as nursery:
        monitor = HealthMonitor(kube, interval=60.0, on_change=seen.append, now=now)
        start = trio.current_time()
        await nursery.start(monitor.serve)
        await trio.sleep(60.0 * 20)
        nursery.cancel_scope.cancel()
    assert kube.calls[0] == start  # the first check does not wait for an interval
    gaps = [later - earlier for earlier, later in zip(kube.calls, kube.calls[1:], strict=False)]
    assert len(gaps) >= 17
    assert all(54.0 <= gap <= 66.1 for gap in gaps), gaps  # ±10%, plus the check's own 0.01 s
    assert len({round(gap, 3) for gap in gaps}) > 1  # jittered, not lockstep
    assert [r.status for r in seen] == ["healthy"]


async def test_monitor_reports_flapping_cluster_each_time(autojump_clock: trio.testing.MockClock) -> None:
    kube = ScriptedKube()
    seen: list[HealthResult] = []
    monitor = HealthMonitor(kube, interval=10.0, on_change=seen.append, now=now)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        script: list[KubeportError | None] = [
            ConnectionProblem("cannot reach https://k: Connection refused"),
            ConnectionProblem("cannot reach https://k: Connection refused"),
            Timeout("cannot reach https://k: no answer to GET /version within 10s"),
            None,
        ]
        for error in script:
            await trio.sleep(11.5)  # past one jittered interval (at most 11 s)
            kube.version_error = error
        await trio.sleep(11.5)
        nursery.cancel_scope.cancel()
    assert [r.reason for r in seen] == [
        "",
        "cannot reach https://k: Connection refused",
        "cannot reach https://k: no answer to GET /version within 10s",
        "",
    ]
    assert monitor.statistics().checks >= 5


async def test_check_now_and_the_loop_never_overlap(autojump_clock: trio.testing.MockClock) -> None:
    kube = ScriptedKube()
    active = 0
    most = 0

    async def counting_get(path: str, *, timeout: float = 10.0) -> Any:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await trio.sleep(1.0)
        active -= 1
        return kube.version

    kube.get_json = counting_get  # type: ignore[method-assign]
    monitor = HealthMonitor(kube, interval=0.5, on_change=lambda _r: None, now=now)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        for _ in range(5):
            nursery.start_soon(monitor.check_now)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert most == 1


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(BadParameter, match="must be positive"):
        HealthMonitor(ScriptedKube(), interval=interval, on_change=lambda _r: None)
