"""``kubeport kube ls`` and the other text views against a real registry, an in-process agent and the fake
Kubernetes API: each cluster's health (issue 7 §9; one credential may impersonate, one may not), and label
output with line breaks, tabs and escape sequences printed escaped, one line per row (issue 7 §8)."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import trio
import yaml

from agent.service import Agent
from registry.cli import kubeport_main
from registry.host.cmdline import guarded
from registry.server.serve import RegistryInfo
from tests.fakes.kube_api import FakeKube
from tests.helpers import CliResult, cluster_doc, kpctl
from tests.integration.test_agent_inprocess import admin, agent_config, new_token, wait_for


async def kubeport(*argv: str) -> CliResult:
    """Run ``kubeport`` (parser, connection, rendering) in this trio loop."""
    args = kubeport_main.build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = await guarded(args.func, args)
    return CliResult(code, out.getvalue(), err.getvalue())


def parse_table(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    assert len(lines) >= 2 and lines[1].startswith("-"), text
    starts = [i for i, ch in enumerate(lines[1]) if ch == "-" and (i == 0 or lines[1][i - 1] == " ")]
    bounds = [(a, starts[n + 1] if n + 1 < len(starts) else None) for n, a in enumerate(starts)]
    headers = [lines[0][a:b].strip() for a, b in bounds]
    return [{h: row[a:b].strip() for h, (a, b) in zip(headers, bounds, strict=True)} for row in lines[2:]]


async def health_of(registry: RegistryInfo, name: str) -> dict[str, Any] | None:
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    for server in servers:
        if server["metadata"]["name"] == name:
            health: dict[str, Any] = server["spec"].get("health") or {}
            return health if health.get("status") in ("healthy", "unhealthy") else None
    return None


async def test_kube_ls_shows_unhealthy_and_healthy_clusters(
    registry: RegistryInfo, fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path
) -> None:
    fake_kube.add_token("weak-token", "weak-user")  # authenticates, but may not impersonate anyone
    config = agent_config(registry, await new_token(registry), tmp_path / "agent", [{"labels": {"*": "*"}}])
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        await client.create(cluster_doc("good", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "a"}))
        await client.create(cluster_doc("weak", fake_kube.kubeconfig_yaml(token="weak-token"), {"env": "b"}))

    weak = await wait_for(lambda: health_of(registry, "weak"), what="the weak cluster's health check")
    good = await wait_for(lambda: health_of(registry, "good"), what="the good cluster's health check")
    assert weak["status"] == "unhealthy" and weak.get("reason")
    assert good["status"] == "healthy"

    text = await kubeport("kube", "ls")
    assert text.code == 0, text.err
    rows = {r["Kube Cluster Name"]: r for r in parse_table(text.out)}
    assert set(rows) == {"good", "weak"}
    assert rows["good"]["Health"] == "healthy"
    assert rows["weak"]["Health"].startswith("unhealthy: ")
    assert len(rows["weak"]["Health"]) > len("unhealthy: ")
    assert "env=b" in rows["weak"]["Labels"]

    verbose = await kubeport("kube", "ls", "-v")
    assert f"unhealthy: {weak['reason']}" in verbose.out

    as_json = await kubeport("kube", "ls", "--format", "json")
    assert as_json.code == 0, as_json.err
    items = {i["kube_cluster_name"]: i for i in json.loads(as_json.out)}
    assert items["good"]["health"] == {"status": "healthy"}
    assert items["weak"]["health"] == {"status": "unhealthy", "reason": weak["reason"]}

    as_yaml = await kubeport("kube", "ls", "--format", "yaml")
    (doc,) = yaml.safe_load_all(as_yaml.out)
    assert {i["kube_cluster_name"]: i["health"]["status"] for i in doc["items"]} == {
        "good": "healthy",
        "weak": "unhealthy",
    }


HOSTILE_OUTPUT = "line one\nforged-row  env=fake\tcol\u202eevil\x1b[2J"


async def test_tables_show_multiline_and_hostile_label_output_escaped(
    registry: RegistryInfo, fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A service-wide label command (written by the host's admin) prints several lines: the runner keeps the
    # newline and tab, replaces ESC and the bidi override, and every table must still print one line per row.
    command = [sys.executable, "-c", f"import sys; sys.stdout.write({HOSTILE_OUTPUT!r})"]
    config = agent_config(
        registry,
        await new_token(registry),
        tmp_path / "agent",
        [{"labels": {"*": "*"}}],
        commands=[{"name": "note", "command": command, "period": "1h"}],
    )
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        for name in ("alpha", "beta"):
            await client.create(cluster_doc(name, fake_kube.kubeconfig_yaml(token="admin-token"), {"env": name}))

    async def both_served_with_note() -> bool:
        async with await admin(registry) as client:
            servers, _ = await client.list("kube_server")
        notes = [s["spec"]["cluster"]["spec"].get("dynamic_labels", {}).get("note", {}) for s in servers]
        return len(servers) == 2 and all("\n" in n.get("result", "") for n in notes)

    await wait_for(both_served_with_note, what="both clusters served with the multi-line label")

    for result in (
        await kubeport("kube", "ls", "-v"),
        await kubeport("kube", "ls"),
        await kpctl("get", "kube_servers", "--format", "text", "-v"),
        await kpctl("kube", "explain", "alpha"),
    ):
        assert result.code == 0, result.err
        assert "\x1b" not in result.out and "\u202e" not in result.out and "\t" not in result.out
    for result in (await kubeport("kube", "ls", "-v"), await kpctl("get", "kube_servers", "--format", "text", "-v")):
        lines = result.out.splitlines()
        assert len(lines) == 2 + 2, result.out  # header, dashes, one line per cluster: nothing forged
        assert all(not line.startswith("forged-row") for line in lines)
        assert "note=line one\\nforged-row  env=fake\\tcol" in result.out
