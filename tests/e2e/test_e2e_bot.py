"""End to end, real processes: ``kubeport bot start`` as a daemon beside a real registry process. It joins, writes
its output, keeps running, and SIGTERM (systemd's stop) ends it with exit 0; after ``kpctl bots rm`` a restart
ends with exit 1 and one ERROR line, no traceback."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import yaml

from tests.e2e.e2e_helpers import Harness

pytestmark = pytest.mark.slow


async def test_bot_daemon_joins_writes_and_stops_cleanly(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        registry = await h.start_registry()
        data = ("--data-dir", str(registry.data_dir))
        added = await h.kpctl("bots", "add", "ci", *data)
        assert added.code == 0, added.err
        token = re.search(r"The bot join token: (\S+)", added.out)
        assert token is not None
        out_dir = tmp_path / "machine-id"
        config = tmp_path / "bot.yaml"
        config.write_text(
            f"registry: {registry.address}\n"
            f"ca_pins: ['{registry.ca_pin}']\n"
            f"onboarding: {{join_method: token, token: {token.group(1)}}}\n"
            f"storage: {tmp_path / 'storage'}\n"
            "outputs:\n"
            "  - type: kubernetes\n"
            "    kubernetes_labels: {'*': '*'}\n"
            f"    destination: {{type: directory, path: {out_dir}, mode: '0640'}}\n"
        )
        bot = await h.spawn("bot", "bot", "start", "-c", str(config))
        await h.wait_output(bot, r"kubeport bot running: certificate valid until")
        kubeconfig = out_dir / "kubeconfig.yaml"
        assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o640
        assert yaml.safe_load(kubeconfig.read_text())["users"][0]["name"].endswith("-bot-ci")
        assert token.group(1) not in bot.stdout() + bot.stderr()
        assert await bot.stop() == 0

        removed = await h.kpctl("bots", "rm", "ci", *data)
        assert removed.code == 0, removed.err
        again = await h.kubeport("bot", "start", "-c", str(config))
        assert again.code == 1
        assert "Traceback" not in again.err
        last = again.err.strip().splitlines()[-1]
        assert last.startswith("ERROR: ") and "no longer exists" in last, again.err
