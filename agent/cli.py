"""``kubeport configure``, ``kubeport agent start`` and ``kubeport install systemd``: installing an agent on a
Linux host, the same three steps as seed 003 shows with ``teleport``.

The agent's own command line, in the agent's room: the composition root (``registry.cli.kubeport_main``)
mounts these commands on the ``kubeport`` parser with :func:`add_commands`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeAlias

import trio

from agent.config import load_config
from agent.config_render import render_config
from agent.service import Agent, AgentInfo
from registry.core.errors import BadParameter
from registry.host.cmdline import (
    StopSignals,
    add_data_dir_flag,
    add_debug_flag,
    add_metrics_flag,
    flag_value,
    set_command,
)
from registry.host.files import write_file_atomic, write_secret_file
from registry.host.metrics import serve_metrics

DEFAULT_CONFIG = "/etc/kubeport.yaml"
DEFAULT_AGENT_DATA_DIR = "/var/lib/kubeport"


async def cmd_configure(args: argparse.Namespace) -> int:
    roles = {r.strip().lower() for r in args.roles.split(",") if r.strip()}
    if roles != {"kube"}:
        raise BadParameter(f"--roles={args.roles}: kubeport agents support --roles=kube")
    if not args.registry:
        raise BadParameter(
            "kubeport configure needs the registry address: --registry HOST:PORT (--proxy, Teleport's name for "
            "it, works too); 'kpctl tokens add' on the registry host prints the whole command"
        )
    if args.token and args.token_file:
        raise BadParameter("use either --token or --token-file, not both")
    text = render_config(
        registry=args.registry,
        token=args.token,
        token_file=args.token_file,
        ca_pins=args.ca_pin or [],
        data_dir=args.data_dir or DEFAULT_AGENT_DATA_DIR,
    )
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    # The file holds the join token: 0600, written atomically.
    write_secret_file(args.output, text.encode())
    print(f"Wrote the agent configuration to {args.output}.")
    print("Edit kubernetes_service.resources to choose which kube_clusters this agent serves, then run:")
    print(f"  kubeport agent start -c {args.output}")
    return 0


async def cmd_agent_start(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    level = logging.DEBUG if args.debug else getattr(logging, config.log_level.upper(), logging.INFO)
    logging.getLogger().setLevel(level)
    agent = Agent(config, health_interval=args.health_interval, label_timeout=args.label_timeout, freeze_gc=True)
    stop = StopSignals()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop.watch, nursery.cancel_scope)
        if args.metrics_listen is not None:  # first: /readyz says "starting" while the agent joins
            await nursery.start(serve_metrics, args.metrics_listen, agent.readiness)
        info: AgentInfo = await nursery.start(agent.serve)
        stop.started = True
        print(f"kubeport agent {info.nodename} (host {info.host_id}) joined the registry at {info.registry}")
        if info.static_clusters:
            print(f"  static clusters: {', '.join(info.static_clusters)}")
        print("  serving the kube_clusters its resources selectors match; Ctrl-C to stop", flush=True)
    return stop.exit_code()


UNIT = """\
[Unit]
Description=kubeport agent (serves Kubernetes clusters registered in a kubeport registry)
Documentation=https://github.com/kubeport/kubeport
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} agent start -c {config}
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
# SIGTERM lets the agent delete its heartbeats before it exits.
KillSignal=SIGTERM
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
"""


async def cmd_install_systemd(args: argparse.Namespace) -> int:
    if getattr(args, "bot", False):  # --bot: the bot's unit (registry.cli.bot.cli, mounted by kubeport_main)
        bot_unit: Callable[[argparse.Namespace], Awaitable[int]] = args.systemd_bot
        return await bot_unit(args)
    exe = shutil.which("kubeport") or f"{sys.executable} -m registry.cli.kubeport_main"
    unit = UNIT.format(exe=exe, config=args.config or DEFAULT_CONFIG)
    if args.output == "-":
        sys.stdout.write(unit)
        return 0
    path = Path(args.output)
    # Atomic and never through a symlink: a unit file is run as root by systemd.
    await trio.to_thread.run_sync(lambda: write_file_atomic(path, unit.encode(), mode=0o644))
    print(f"Wrote {path}. Enable and start it with:")
    print(f"  sudo systemctl enable {path.stem} && sudo systemctl start {path.stem}")
    return 0


SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Group: TypeAlias = "Callable[[SubParsers, str, str], SubParsers]"


def add_commands(
    sub: SubParsers,
    *,
    group: Group,
    epilog: str,
    systemd_bot: Callable[[argparse.Namespace], Awaitable[int]] | None = None,
) -> None:
    """Register configure / agent / install on the kubeport parser (``group`` makes a command group that
    takes the global flags; ``systemd_bot``, when given, is what ``install systemd --bot`` runs)."""
    p = sub.add_parser(
        "configure",
        help="write an agent configuration file",
        description="Write an agent configuration (YAML, Teleport's kubernetes_service field names).",
        epilog=epilog,
    )
    p.add_argument(
        "--registry",
        "--proxy",
        metavar="HOST:PORT",
        type=flag_value("--registry"),
        default=argparse.SUPPRESS,
        help="the registry address (required; --proxy is Teleport's name for it, accepted as an alias)",
    )
    p.add_argument("--roles", default="kube", help="what this host runs: kube (the default)")
    p.add_argument("--token", help="join token from 'kpctl tokens add --type=kube'")
    p.add_argument("--token-file", help="read the join token from this file instead")
    p.add_argument("--ca-pin", action="append", help="registry CA pin from 'kpctl status' (repeatable)")
    add_data_dir_flag(p, f"agent state directory (default {DEFAULT_AGENT_DATA_DIR})")
    p.add_argument(
        "-o", "--output", default=DEFAULT_CONFIG, help=f"where to write it ('-' = stdout; default {DEFAULT_CONFIG})"
    )
    add_debug_flag(p)
    set_command(p, cmd_configure)

    asub = group(sub, "agent", "the agent daemon")
    p = asub.add_parser(
        "start",
        help="run an agent",
        description="Join (first start; an unreachable registry is retried with backoff until it answers), "
        "then serve kube_clusters.",
        epilog=epilog,
    )
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"agent configuration (default {DEFAULT_CONFIG})")
    add_metrics_flag(p)
    p.add_argument("--health-interval", type=float, default=60.0, help="seconds between cluster health checks")
    p.add_argument(
        "--label-timeout", type=float, default=30.0, help="seconds a dynamic label command may run before it is killed"
    )
    add_debug_flag(p)
    set_command(p, cmd_agent_start)

    isub = group(sub, "install", "install helpers")
    p = isub.add_parser(
        "systemd", help="write a systemd unit for the agent", description="Write a systemd unit.", epilog=epilog
    )
    p.add_argument("-o", "--output", default="-", help="unit file path ('-' = stdout, the default)")
    p.add_argument(
        "-c", "--config", default=None, help=f"configuration the unit starts with (default {DEFAULT_CONFIG})"
    )
    if systemd_bot is not None:
        p.add_argument("--bot", action="store_true", help="a unit for 'kubeport bot start' instead of the agent")
        p.set_defaults(systemd_bot=systemd_bot)
    add_debug_flag(p)
    set_command(p, cmd_install_systemd)
