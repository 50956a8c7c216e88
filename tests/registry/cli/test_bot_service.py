"""kubeport bot's loop (registry.cli.bot.service) against the real API handlers in process: oneshot, renewal on
schedule under MockClock, outputs following clusters, a bot removed mid-run, an unreachable registry, a token
reused, a wrong CA pin, failover between registry addresses."""

from __future__ import annotations

import itertools
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import yaml

from registry.cli.bot.config import BotConfig, KubernetesOutput
from registry.cli.bot.service import IDENTITY_FILE, Bot, BotStopped, retry_delay
from registry.core.errors import ConnectionProblem
from registry.core.identity import CertAuthority, identity_from_cert
from registry.core.kube_route import cluster_prefix
from registry.testing import ADDRESS, InProcessRegistry
from tests.registry.bot_helpers import (
    EXAMPLE_ROLE,
    PROD_ONLY_ROLE,
    add_bot,
    create_role,
    serve_cluster,
    stop_serving,
    transport_for,
)

INTERVAL = 1200.0


@pytest.fixture
async def reg() -> AsyncIterator[InProcessRegistry]:
    async with InProcessRegistry.open() as reg:
        await create_role(reg, EXAMPLE_ROLE)
        await create_role(reg, PROD_ONLY_ROLE)
        await serve_cluster(reg, "example-k8s-cluster", {"env": "dev"})
        yield reg


def make_config(reg: InProcessRegistry, tmp_path: Path, token: str, **kwargs: Any) -> BotConfig:
    outputs = kwargs.pop("outputs", (KubernetesOutput(destination=tmp_path / "out", cluster="example-k8s-cluster"),))
    return BotConfig(
        registries=kwargs.pop("registries", (ADDRESS,)),
        token=token,
        storage=kwargs.pop("storage", tmp_path / "storage"),
        ca_pins=kwargs.pop("ca_pins", (reg.ca.pin,)),
        certificate_ttl=3600.0,
        renewal_interval=INTERVAL,
        outputs=outputs,
        **kwargs,
    )


def kubeconfig(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((path / "kubeconfig.yaml").read_text())
    return loaded


def contexts(path: Path) -> list[str]:
    return [c["name"] for c in kubeconfig(path)["contexts"]]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_oneshot_joins_and_writes_seed_004_kubeconfig_and_identity_files(
    reg: InProcessRegistry, tmp_path: Path
) -> None:
    bot = Bot(make_config(reg, tmp_path, await add_bot(reg)), transport_for=transport_for(reg))
    await bot.serve(oneshot=True)
    out = tmp_path / "out"
    doc = kubeconfig(out)
    assert contexts(out) == ["test-cluster-example-k8s-cluster"]
    assert doc["current-context"] == "test-cluster-example-k8s-cluster"
    # no front door address reported: the registry's host, port 3026 (as kpctl auth sign does)
    server = doc["clusters"][0]["cluster"]["server"]
    assert server == "https://registry.test:3026" + cluster_prefix("example-k8s-cluster")
    for name in ("kubeconfig.yaml", "tlscert", "key", "tlscacerts"):
        assert mode(out / name) == 0o600, name
    assert mode(out) == 0o700
    assert identity_from_cert((out / "tlscert").read_bytes()).name == "bot-example"
    assert mode(tmp_path / "storage") == 0o700
    assert mode(tmp_path / "storage" / IDENTITY_FILE) == 0o600
    assert bot.status.joins == 1


async def test_a_group_reader_mode_is_honoured(reg: InProcessRegistry, tmp_path: Path) -> None:
    outputs = (KubernetesOutput(destination=tmp_path / "shared", mode=0o640, cluster="example-k8s-cluster"),)
    bot = Bot(make_config(reg, tmp_path, await add_bot(reg), outputs=outputs), transport_for=transport_for(reg))
    await bot.serve(oneshot=True)
    assert mode(tmp_path / "shared" / "kubeconfig.yaml") == 0o640
    assert mode(tmp_path / "shared" / "key") == 0o640
    assert mode(tmp_path / "shared") == 0o750


async def test_a_restart_renews_the_stored_identity_instead_of_joining_again(
    reg: InProcessRegistry, tmp_path: Path
) -> None:
    config = make_config(reg, tmp_path, await add_bot(reg))
    await Bot(config, transport_for=transport_for(reg)).serve(oneshot=True)
    first = (tmp_path / "out" / "tlscert").read_bytes()
    again = Bot(config, transport_for=transport_for(reg))  # the token is used up: it must not be needed
    await again.serve(oneshot=True)
    assert (again.status.joins, again.status.renewals) == (0, 1)
    assert (tmp_path / "out" / "tlscert").read_bytes() != first


async def test_the_daemon_renews_on_schedule_under_mockclock(
    reg: InProcessRegistry, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # the output writes run in a thread, on real time
    bot = Bot(make_config(reg, tmp_path, await add_bot(reg)), transport_for=transport_for(reg))
    async with trio.open_nursery() as nursery:
        await nursery.start(bot.serve)
        start = trio.current_time()
        certs = [(tmp_path / "out" / "tlscert").read_bytes()]
        for _ in range(3):
            await bot.renewed.wait()
            certs.append((tmp_path / "out" / "tlscert").read_bytes())
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert bot.status.renewals == 3
    assert 3 * INTERVAL <= elapsed < 3 * INTERVAL + 1
    assert len(set(certs)) == 4  # a fresh certificate in the output each time
    renewals = reg.requests_to("/v1/certs/renew")
    gaps = [b.time - a.time for a, b in itertools.pairwise(renewals)]
    assert len(gaps) == 2
    assert all(abs(gap - INTERVAL) < 1 for gap in gaps)


async def test_a_labels_output_follows_clusters_coming_and_going(reg: InProcessRegistry, tmp_path: Path) -> None:
    await serve_cluster(reg, "prod-1", {"env": "prod"})
    outputs = (KubernetesOutput(destination=tmp_path / "prod", labels={"env": "prod"}),)
    config = make_config(reg, tmp_path, await add_bot(reg), outputs=outputs)
    bot = Bot(config, transport_for=transport_for(reg))
    await bot.start()
    assert contexts(tmp_path / "prod") == ["test-cluster-prod-1"]
    await serve_cluster(reg, "prod-2", {"env": "prod"})
    await bot._renew_and_write()
    assert contexts(tmp_path / "prod") == ["test-cluster-prod-1", "test-cluster-prod-2"]
    await stop_serving(reg, "prod-1")
    await bot._renew_and_write()
    assert contexts(tmp_path / "prod") == ["test-cluster-prod-2"]


async def test_roles_decide_the_contexts(reg: InProcessRegistry, tmp_path: Path) -> None:
    """A bot whose role selects only env=prod gets no context for a dev cluster its output names by label."""
    await serve_cluster(reg, "prod-1", {"env": "prod"})
    outputs = (KubernetesOutput(destination=tmp_path / "all", labels={"*": "*"}),)
    token = await add_bot(reg, roles=("prod-only",))
    bot = Bot(make_config(reg, tmp_path, token, outputs=outputs), transport_for=transport_for(reg))
    await bot.serve(oneshot=True)
    assert contexts(tmp_path / "all") == ["test-cluster-prod-1"]


async def test_a_bot_removed_mid_run_stops_with_a_clear_error_and_keeps_its_outputs(
    reg: InProcessRegistry, tmp_path: Path
) -> None:
    bot = Bot(make_config(reg, tmp_path, await add_bot(reg)), transport_for=transport_for(reg))
    await bot.start()
    before = (tmp_path / "out" / "kubeconfig.yaml").read_bytes()
    async with reg.client() as admin:
        await admin.bots_rm("example")
    with pytest.raises(BotStopped, match="refused to renew") as info:
        await bot._cycle()
    assert "no longer exists" in info.value.message
    assert (tmp_path / "out" / "kubeconfig.yaml").read_bytes() == before


async def test_an_unreachable_registry_keeps_the_outputs_and_is_retried_with_backoff(
    reg: InProcessRegistry, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05
    bot = Bot(make_config(reg, tmp_path, await add_bot(reg)), transport_for=transport_for(reg))
    await bot.start()
    before = (tmp_path / "out" / "kubeconfig.yaml").read_bytes()
    reg.fail_next("/v1/certs/renew", httpx.ConnectError("connection refused"), times=3)
    seen_during: list[bytes] = []

    async def watch_outputs() -> None:
        while bot.status.failures < 3:
            seen_during.append((tmp_path / "out" / "kubeconfig.yaml").read_bytes())
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_outputs)
        await bot._cycle()
    attempts = reg.requests_to("/v1/certs/renew")[-4:]
    assert [round(b.time - a.time) for a, b in itertools.pairwise(attempts)] == [1, 2, 4]  # 1s doubling
    assert bot.status.failures == 3
    assert seen_during
    assert set(seen_during) == {before}  # the last good outputs stay while the registry is away
    assert (tmp_path / "out" / "kubeconfig.yaml").read_bytes() != before


async def test_oneshot_with_an_unreachable_registry_fails_and_leaves_the_outputs(
    reg: InProcessRegistry, tmp_path: Path
) -> None:
    config = make_config(reg, tmp_path, await add_bot(reg))
    await Bot(config, transport_for=transport_for(reg)).serve(oneshot=True)
    before = (tmp_path / "out" / "kubeconfig.yaml").read_bytes()
    reg.fail_next("/v1/certs/renew", httpx.ConnectError("connection refused"))
    with pytest.raises(ConnectionProblem):
        await Bot(config, transport_for=transport_for(reg)).serve(oneshot=True)
    assert (tmp_path / "out" / "kubeconfig.yaml").read_bytes() == before


async def test_a_token_reused_by_another_machine_is_refused(reg: InProcessRegistry, tmp_path: Path) -> None:
    token = await add_bot(reg)
    await Bot(make_config(reg, tmp_path / "a", token), transport_for=transport_for(reg)).serve(oneshot=True)
    other = Bot(make_config(reg, tmp_path / "b", token), transport_for=transport_for(reg))
    with pytest.raises(BotStopped, match=r"could not join.*not valid"):
        await other.serve(oneshot=True)
    assert not (tmp_path / "b" / "out").exists()


async def test_a_wrong_ca_pin_stops_the_join_before_the_token_is_sent(reg: InProcessRegistry, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    other_ca = CertAuthority.generate("elsewhere", now=datetime.now(tz=UTC))
    token = await add_bot(reg)
    bot = Bot(make_config(reg, tmp_path, token, ca_pins=(other_ca.pin,)), transport_for=transport_for(reg))
    with pytest.raises(BotStopped, match="pin"):
        await bot.serve(oneshot=True)
    assert reg.requests_to("/v1/bots/join") == []
    # The token was not spent: the right pin still joins.
    await Bot(make_config(reg, tmp_path, token), transport_for=transport_for(reg)).serve(oneshot=True)


async def test_failover_to_the_next_registry_address(reg: InProcessRegistry, tmp_path: Path) -> None:
    config = make_config(reg, tmp_path, await add_bot(reg), registries=("down.test:3025", ADDRESS))
    reg.fail_next("/v1/ca", httpx.ConnectError("connection refused"))
    bot = Bot(config, transport_for=transport_for(reg))
    await bot.serve(oneshot=True)
    assert bot.identity is not None
    assert bot.identity.registry == ADDRESS


def test_retry_delays() -> None:
    assert [retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_rm_add_and_a_new_token_in_bot_yaml_is_the_whole_recovery(reg: InProcessRegistry, tmp_path: Path) -> None:
    """The machine keeps its storage; the admin re-creates the bot and the new token goes into bot.yaml."""
    config = make_config(reg, tmp_path, await add_bot(reg))
    await Bot(config, transport_for=transport_for(reg)).serve(oneshot=True)
    assert (tmp_path / "storage" / "joined_token.sha256").stat().st_mode & 0o777 == 0o600
    assert config.token not in (tmp_path / "storage" / "joined_token.sha256").read_text()
    async with reg.client() as admin:
        await admin.bots_rm("example")
    # Same bot.yaml (the used token): a clear stop, no join attempt with a spent token.
    with pytest.raises(BotStopped, match="refused to renew"):
        await Bot(config, transport_for=transport_for(reg)).serve(oneshot=True)
    start = reg.registry.clock()  # the bot is re-created a little later (certificates hold whole seconds)
    reg.registry.clock = lambda: start + 5
    fresh = make_config(reg, tmp_path, await add_bot(reg))
    bot = Bot(fresh, transport_for=transport_for(reg))
    await bot.serve(oneshot=True)
    assert (bot.status.joins, bot.status.renewals) == (1, 0)
    assert contexts(tmp_path / "out") == ["test-cluster-example-k8s-cluster"]


async def test_the_daemon_stops_at_its_next_renewal_after_the_bot_is_removed(
    reg: InProcessRegistry, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05
    bot = Bot(make_config(reg, tmp_path, await add_bot(reg)), transport_for=transport_for(reg))
    stopped: list[tuple[float, BotStopped]] = []

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            await bot.serve(task_status=task_status)
        except BotStopped as err:
            stopped.append((trio.current_time(), err))

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        removed_at = trio.current_time()
        async with reg.client() as admin:
            await admin.bots_rm("example")
    [(when, err)] = stopped
    assert when - removed_at <= INTERVAL + 1  # no later than the next renewal
    assert "no longer exists" in err.message
    assert bot.status.renewals == 0
    assert (tmp_path / "out" / "kubeconfig.yaml").exists()  # the outputs stay (their certificate expires)


async def test_hostile_files_are_refused_with_one_error(reg: InProcessRegistry, tmp_path: Path) -> None:
    from registry.cli.bot.service import check_config_files
    from registry.core.errors import BadParameter

    token = await add_bot(reg)
    # An output directory planted as a symlink is never written through.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    bot = Bot(make_config(reg, tmp_path, token), transport_for=transport_for(reg))
    with pytest.raises(BadParameter, match="symbolic link"):
        await bot.serve(oneshot=True)
    assert list(elsewhere.iterdir()) == []
    assert reg.requests_to("/v1/bots/join") == []  # refused before the single-use token was spent
    # A storage that is a symlink, or a file, is refused before anything is sent.
    (tmp_path / "s-link").symlink_to(elsewhere)
    with pytest.raises(BadParameter, match="symbolic link"):
        check_config_files(make_config(reg, tmp_path, token, storage=tmp_path / "s-link"))
    (tmp_path / "s-file").write_text("x")
    with pytest.raises(BadParameter, match="not a directory"):
        check_config_files(make_config(reg, tmp_path, token, storage=tmp_path / "s-file"))
    # A corrupted identity file in storage: one error naming it, no traceback material.
    (tmp_path / "out").unlink()
    (tmp_path / "storage").mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "storage" / IDENTITY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(BadParameter, match=IDENTITY_FILE):
        await Bot(make_config(reg, tmp_path, token), transport_for=transport_for(reg)).serve(oneshot=True)
