"""``kubeport bot start -c bot.yaml [--oneshot]`` and the bot's systemd unit (``kubeport install systemd --bot``).

Mounted on the ``kubeport`` parser by the composition root (``registry.cli.kubeport_main``). The bot's rules
are in :mod:`registry.cli.bot.service` (the loop, failure handling) and :mod:`registry.cli.bot.config`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import trio

from registry.cli.bot.config import MAX_CONFIG_BYTES, BotConfig, parse_config
from registry.cli.bot.service import Bot, check_config_files
from registry.host.cmdline import StopSignals, add_debug_flag, set_command
from registry.host.files import read_limited, write_file_atomic

DEFAULT_BOT_CONFIG = "/etc/kubeport/bot.yaml"

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Group: TypeAlias = "Callable[[SubParsers, str, str], SubParsers]"

BOT_UNIT = """\
[Unit]
Description=kubeport bot (machine identity: keeps a kubeconfig fresh for kubectl, helm and other tools)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} bot start -c {config}
# The bot exits 1 when the registry refuses it (removed, locked, certificate expired): it says why in the
# journal. Restarting after a minute is the retry for an admin's fix; transient outages it rides out itself.
Restart=on-failure
RestartSec=60
# The bot needs to write only its storage and output directories (set in {config}).
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def load_bot_config(path: str) -> BotConfig:
    """The validated bot.yaml (size-limited read; every problem one BadParameter naming the key)."""
    file = Path(path)
    data = read_limited(file, limit=MAX_CONFIG_BYTES, what="bot configuration")
    return parse_config(data, source=file.name)


async def cmd_bot_start(args: argparse.Namespace) -> int:
    loaded = load_bot_config(args.config)
    check_config_files(loaded)
    if not args.debug:
        logging.getLogger("registry.cli.bot").setLevel(logging.INFO)
    bot = Bot(loaded)
    if args.oneshot:
        await bot.serve(oneshot=True)
        outputs = ", ".join(str(o.destination / "kubeconfig.yaml") for o in loaded.outputs)
        print(f"kubeport bot: certificate valid until {bot.statistics()['expires']}; wrote {outputs}")
        return 0
    stop = StopSignals()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop.watch, nursery.cancel_scope)
        await nursery.start(bot.serve)
        stop.started = True
        print(
            f"kubeport bot running: certificate valid until {bot.statistics()['expires']}, renewed every "
            f"{loaded.renewal_interval:g}s; outputs: {', '.join(str(o.destination) for o in loaded.outputs)}",
            flush=True,
        )
    return stop.exit_code()


def bot_unit(exe: str, config: str) -> str:
    return BOT_UNIT.format(exe=exe, config=config)


def _checked_unit(config: str) -> str:
    if os.path.exists(config):  # a unit that starts a broken config helps nobody: fail here, with the key
        load_bot_config(config)
    exe = shutil.which("kubeport") or f"{sys.executable} -m registry.cli.kubeport_main"
    return bot_unit(exe, os.path.abspath(config))


async def cmd_install_systemd_bot(args: argparse.Namespace) -> int:
    """``kubeport install systemd --bot``: print or write the bot's unit (the config is checked first)."""
    unit = await trio.to_thread.run_sync(_checked_unit, args.config or DEFAULT_BOT_CONFIG)
    if args.output == "-":
        sys.stdout.write(unit)
        return 0
    path = Path(args.output)
    await trio.to_thread.run_sync(lambda: write_file_atomic(path, unit.encode(), mode=0o644))
    print(f"Wrote {path}. Enable and start it with:")
    print(f"  sudo systemctl enable {path.stem} && sudo systemctl start {path.stem}")
    return 0


def add_commands(sub: SubParsers, *, group: Group, epilog: str) -> None:
    bsub = group(sub, "bot", "machine identity: a bot that keeps a kubeconfig fresh")
    p = bsub.add_parser(
        "start",
        help="run a bot (join once with its token, then renew and refresh its outputs)",
        description="Join with the onboarding token the first time, keep the identity in storage, renew it every "
        "renewal_interval and rewrite each output's kubeconfig.yaml. Exits 1 with one ERROR line when the "
        "registry refuses the bot (removed, locked); rides out an unreachable registry with backoff.",
        epilog=epilog,
    )
    p.add_argument(
        "-c", "--config", default=DEFAULT_BOT_CONFIG, help=f"bot configuration (default {DEFAULT_BOT_CONFIG})"
    )
    p.add_argument("--oneshot", action="store_true", help="join or renew, write the outputs once, and exit")
    add_debug_flag(p)
    set_command(p, cmd_bot_start)
