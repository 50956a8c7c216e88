"""Seed 004 end to end: a real registry with its front door, a real agent, the fake Kubernetes API, and real
kubectl using the kubeconfig.yaml a bot wrote, all through the real command lines.

    kpctl create -f role.yaml                        # seed 004's example-role (as v7)
    kpctl bots add example                           # (the deployment guide's bot, no roles yet)
    kpctl bots update example --add-roles example-role   # seed 004's exact command
    kubeport bot start -c bot.yaml --oneshot
    kubectl --kubeconfig /opt/machine-id/kubeconfig.yaml get pods -A
    kpctl bots rm example                            # kubectl stops working; the bot exits with an ERROR
"""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import trio
import yaml

from agent.service import Agent
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import require_kubectl
from tests.helpers import CliResult, cluster_doc, kpctl
from tests.integration.access_setup import AccessRegistry, access_registry, kubectl_until_routed, served  # noqa: F401
from tests.integration.test_agent_inprocess import admin, agent_config, new_token, wait_for
from tests.registry.bot_helpers import EXAMPLE_ROLE


async def kubeport(*argv: str) -> CliResult:
    """The kubeport command line in this trio loop (argument parsing, config, client, output)."""
    from registry.cli import kubeport_main
    from registry.host.cmdline import guarded, parse_command_line

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            args = parse_command_line(kubeport_main.build_parser(), list(argv))
            code = await guarded(args.func, args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


async def test_seed_004_a_bot_kubeconfig_works_with_kubectl_until_the_bot_is_removed(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    kubectl = require_kubectl()
    registry = access_registry.info
    fake_kube.grant("editor", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake_kube.add_pod("web-1")
    config = agent_config(registry, await new_token(registry), tmp_path / "agent", [{"labels": {"*": "*"}}])
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        await client.create(
            cluster_doc("example-k8s-cluster", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "prod"})
        )
    await wait_for(lambda: served(registry, "example-k8s-cluster"), what="the agent serving the cluster")

    (tmp_path / "role.yaml").write_text(EXAMPLE_ROLE)
    assert (await kpctl("create", "-f", str(tmp_path / "role.yaml"))).code == 0
    added = await kpctl("bots", "add", "example")
    assert added.code == 0, added.err
    token = re.search(r"The bot join token: (\S+)", added.out)
    assert token is not None, added.out
    assert "kubeport bot start -c bot.yaml" in added.out
    updated = await kpctl("bots", "update", "example", "--add-roles", "example-role")
    assert updated.code == 0, updated.err

    machine_id = tmp_path / "machine-id"
    bot_yaml = tmp_path / "bot.yaml"
    bot_yaml.write_text(
        f"registry: {registry.address}\n"
        f"ca_pins: ['{registry.ca_pin}']\n"
        "onboarding:\n"
        "  join_method: token\n"
        f"  token: {token.group(1)}\n"
        f"storage: {tmp_path / 'bot-storage'}\n"
        "outputs:\n"
        "  - type: kubernetes\n"
        "    kubernetes_cluster: example-k8s-cluster\n"
        "    destination:\n"
        "      type: directory\n"
        f"      path: {machine_id}\n"
    )
    started = await kubeport("bot", "start", "-c", str(bot_yaml), "--oneshot")
    assert started.code == 0, started.err
    assert str(machine_id / "kubeconfig.yaml") in started.out
    kubeconfig = machine_id / "kubeconfig.yaml"
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    written = yaml.safe_load(kubeconfig.read_text())
    assert written["current-context"] == "test-cluster-example-k8s-cluster"
    assert "admin-token" not in kubeconfig.read_text()
    assert token.group(1) not in started.out + started.err

    fake_kube.requests.clear()
    code, out, err = await kubectl_until_routed(
        kubectl, ["get", "pods", "-A"], kubeconfig=kubeconfig, home=tmp_path / "h1"
    )
    assert code == 0, err
    assert "web-1" in out
    listed = [r for r in fake_kube.requests if r.path.endswith("/pods") and r.status == 200]
    assert listed
    assert listed[-1].impersonated_user == "bot-example"
    assert "editor" in listed[-1].impersonated_groups

    # A second start (a restart) renews the stored identity: no token needed any more.
    again = await kubeport("bot", "start", "-c", str(bot_yaml), "--oneshot")
    assert again.code == 0, again.err

    ls = await kpctl("bots", "ls")
    assert ls.code == 0
    assert re.search(r"example\s+bot-example\s+example-role\s+joined", ls.out), ls.out

    removed = await kpctl("bots", "rm", "example")
    assert removed.code == 0, removed.err
    # The certificate in kubeconfig.yaml stops working on its next request.
    code, _, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=tmp_path / "h2")
    assert code != 0
    assert "web-1" not in err
    # The bot says so and exits non-zero.
    stopped = await kubeport("bot", "start", "-c", str(bot_yaml), "--oneshot")
    assert stopped.code == 1
    [line] = stopped.err.strip().splitlines()[-1:]
    assert line.startswith("ERROR: ") and "no longer exists" in line, stopped.err


async def test_install_systemd_bot_prints_a_unit_for_the_bot(tmp_path: Path) -> None:
    result = await kubeport("install", "systemd", "--bot", "-c", str(tmp_path / "bot.yaml"))
    assert result.code == 0, result.err
    assert f"bot start -c {tmp_path / 'bot.yaml'}" in result.out
    assert "Restart=on-failure" in result.out
    out = tmp_path / "kubeport-bot.service"
    written = await kubeport("install", "systemd", "--bot", "-c", str(tmp_path / "bot.yaml"), "-o", str(out))
    assert written.code == 0, written.err
    assert "bot start" in out.read_text()
    # the agent's unit is unchanged
    agent = await kubeport("install", "systemd")
    assert "agent start -c /etc/kubeport.yaml" in agent.out


async def test_install_systemd_bot_refuses_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "bot.yaml").write_text("registry: r:3025\nonboarding: {join_method: token}\n")
    result = await kubeport("install", "systemd", "--bot", "-c", str(tmp_path / "bot.yaml"))
    assert result.code == 1
    assert result.err.startswith("ERROR: bot.yaml: onboarding.token")


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (None, "cannot read bot configuration"),
        ("registry: r:3025\nonboarding: {join_method: token, token: abcdefabcdefabcdef}\nstorag: /x\n", "storag"),
        ("x" * (200 * 1024), "bot.yaml"),
    ],
)
async def test_bot_start_with_a_bad_config_is_one_error_line(tmp_path: Path, content: str | None, key: str) -> None:
    path = tmp_path / "bot.yaml"
    if content is not None:
        path.write_text(content)
    result = await kubeport("bot", "start", "-c", str(path), "--oneshot")
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert result.err.startswith("ERROR: ")
    assert key in result.err
