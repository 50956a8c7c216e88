"""End to end, real processes: joining. A bad token or CA pin ends the agent with exit code 1 and one clear
error line; a good join is audited and leaves a 0600 identity that a restarted agent reuses without the
token."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.e2e_helpers import AgentProc, Harness, gather, served, write_agent_config
from tests.helpers import kpctl

pytestmark = pytest.mark.slow

EVERYTHING = [{"labels": {"*": "*"}}]
UNKNOWN_TOKEN = "no-such-token-2f6c1e9d"


def error_line(stderr: str) -> str:
    """The one ``ERROR:`` line a failed start prints, last (log lines before it are fine, tracebacks are not)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0], stderr
    return errors[0]


async def test_join_failures_audit_identity_files_and_restart_without_token(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry = await h.start_registry()
        unknown, _ = await write_agent_config(h, registry, "unknown-token", resources=EVERYTHING, token=UNKNOWN_TOKEN)
        wrong_pin, _ = await write_agent_config(
            h, registry, "wrong-pin", resources=EVERYTHING, ca_pin="sha256:" + "0" * 64
        )
        good, data_dir = await write_agent_config(h, registry, "agent", resources=EVERYTHING)

        started: dict[str, Any] = {}

        async def launch_bad(name: str, config: Path) -> None:
            child = await h.start_agent_process(config, name=name)
            started[name] = (child, await child.wait_exit(30))

        async def launch_good() -> None:
            started["agent"] = await h.start_agent(good, registry, data_dir=data_dir)

        async with trio.open_nursery() as nursery:  # three cold starts overlap
            nursery.start_soon(launch_bad, "unknown-token", unknown)
            nursery.start_soon(launch_bad, "wrong-pin", wrong_pin)
            nursery.start_soon(launch_good)

        child, code = started["unknown-token"]
        assert code == 1
        line = error_line(child.stderr())
        assert "the token is not valid (unknown or expired)" in line, line
        assert UNKNOWN_TOKEN not in child.stderr() + child.stdout()

        child, code = started["wrong-pin"]
        assert code == 1
        line = error_line(child.stderr())
        assert "does not match the pin" in line, line

        agent: AgentProc = started["agent"]
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for name in ("agent.identity", "host_uuid"):
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name

        # Every join attempt that reached the registry is an audit event.
        events = await kpctl("get", "events", "--format", "json", "--data-dir", str(registry.data_dir))
        assert events.code == 0, events.err
        joins = [e for e in json.loads(events.out) if e.get("event") == "instance.join"]
        assert [e.get("success", True) for e in joins if e.get("host_id") == agent.host_id] == [True]
        assert any(e.get("success") is False and "unknown or expired" in e.get("error", "") for e in joins)
        text = await kpctl("get", "events", "--format", "text", "--data-dir", str(registry.data_dir))
        assert "instance.join" in text.out

        # A restart reuses the stored identity: no token in the config, no new join, same host id.
        assert await agent.child.stop(signal.SIGTERM) == 0
        await write_agent_config(h, registry, "agent", resources=EVERYTHING, token=None)
        assert "token" not in good.read_text()
        again = await h.start_agent(good, registry, data_dir=data_dir, name="agent-restarted")
        assert again.host_id == agent.host_id
        assert "joined the registry" not in again.child.stderr()
        events = await kpctl("get", "events", "--format", "json", "--data-dir", str(registry.data_dir))
        joins = [e for e in json.loads(events.out) if e.get("event") == "instance.join"]
        assert len([e for e in joins if e.get("host_id") == agent.host_id]) == 1
        assert await served(registry) == set()  # nothing registered yet; it just has to be up and described


BAD_CONFIGS = {
    # a typo'd key is named, with the key it probably meant
    "typo": (
        "kubeport: {registry: 127.0.0.1:1, token: t}\nkubernetes_service: {resource: []}\n",
        "did you mean resources?",
    ),
    # nothing to serve: refused with the reason
    "empty": ("kubeport: {registry: 127.0.0.1:1, token: t}\nkubernetes_service: {enabled: true}\n", "nothing to serve"),
    # hostile: more than the 1 MiB a config may be, refused before parsing
    "huge": ("kubeport:\n" + "#" * (2 << 20) + "\n", "larger than"),
    # hostile: YAML aliases ("billion laughs") are refused outright
    "aliases": ("kubeport: &a {registry: 127.0.0.1:1}\nkubernetes_service: *a\n", "alias"),
}


async def test_bad_agent_configs_fail_at_start_with_one_error_line(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        paths = {}
        for name, (text, _) in BAD_CONFIGS.items():
            paths[name] = tmp_path / f"{name}.yaml"
            paths[name].write_text(text)
        results = await gather(*(lambda p=p: h.kubeport("agent", "start", "-c", str(p)) for p in paths.values()))
    for (name, (_, expected)), result in zip(BAD_CONFIGS.items(), results, strict=True):
        assert result.code == 1, (name, result.err)
        line = error_line(result.err)
        assert expected in line, (name, line)
        assert str(paths[name]) in line, (name, line)
