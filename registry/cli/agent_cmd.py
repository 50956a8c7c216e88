"""``kubeport configure``, ``kubeport agent start`` and ``kubeport install systemd``: installing an agent on a
Linux host, the same three steps as seed 003 shows with ``teleport``."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import trio

from agent.config import load_config
from agent.config_render import render_config
from agent.service import Agent, AgentInfo
from registry.cli.common import until_signalled
from registry.core.errors import BadParameter
from registry.files import write_file_atomic, write_secret_file

DEFAULT_CONFIG = "/etc/kubeport.yaml"


async def cmd_configure(args: argparse.Namespace) -> int:
    roles = {r.strip().lower() for r in args.roles.split(",") if r.strip()}
    if roles != {"kube"}:
        raise BadParameter(f"--roles={args.roles}: kubeport agents support --roles=kube")
    if args.token and args.token_file:
        raise BadParameter("use either --token or --token-file, not both")
    text = render_config(
        registry=args.registry,
        token=args.token,
        token_file=args.token_file,
        ca_pins=args.ca_pin or [],
        data_dir=args.data_dir,
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
    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_signalled, nursery.cancel_scope)
        info: AgentInfo = await nursery.start(agent.serve)
        print(f"kubeport agent {info.nodename} (host {info.host_id}) joined the registry at {info.registry}")
        if info.static_clusters:
            print(f"  static clusters: {', '.join(info.static_clusters)}")
        print("  serving the kube_clusters its resources selectors match; Ctrl-C to stop", flush=True)
    return 0


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
    exe = shutil.which("kubeport") or f"{sys.executable} -m registry.cli.kubeport_main"
    unit = UNIT.format(exe=exe, config=args.config)
    if args.output == "-":
        sys.stdout.write(unit)
        return 0
    path = Path(args.output)
    # Atomic and never through a symlink: a unit file is run as root by systemd.
    await trio.to_thread.run_sync(lambda: write_file_atomic(path, unit.encode(), mode=0o644))
    print(f"Wrote {path}. Enable and start it with:")
    print(f"  sudo systemctl enable {path.stem} && sudo systemctl start {path.stem}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register configure / agent / install on the kubeport parser."""
    from registry.cli.common import add_debug_flag

    p = sub.add_parser(
        "configure",
        help="write an agent configuration file",
        description="Write an agent configuration (YAML, Teleport's kubernetes_service field names).",
    )
    p.add_argument("--registry", required=True, metavar="HOST:PORT", help="the registry address")
    p.add_argument("--roles", default="kube", help="what this host runs: kube (the default)")
    p.add_argument("--token", help="join token from 'kpctl tokens add --type=kube'")
    p.add_argument("--token-file", help="read the join token from this file instead")
    p.add_argument("--ca-pin", action="append", help="registry CA pin from 'kpctl status' (repeatable)")
    p.add_argument("--data-dir", default="/var/lib/kubeport", help="agent state directory (default /var/lib/kubeport)")
    p.add_argument(
        "-o", "--output", default=DEFAULT_CONFIG, help=f"where to write it ('-' = stdout; default {DEFAULT_CONFIG})"
    )
    add_debug_flag(p)
    p.set_defaults(func=cmd_configure)

    agent = sub.add_parser("agent", help="the agent daemon", description="The agent daemon.")
    asub = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    p = asub.add_parser("start", help="run an agent", description="Join (first start), then serve kube_clusters.")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"agent configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--health-interval", type=float, default=60.0, help="seconds between cluster health checks")
    p.add_argument(
        "--label-timeout", type=float, default=30.0, help="seconds a dynamic label command may run before it is killed"
    )
    add_debug_flag(p)
    p.set_defaults(func=cmd_agent_start)

    install = sub.add_parser("install", help="install helpers", description="Install helpers.")
    isub = install.add_subparsers(dest="install_command", metavar="COMMAND", required=True)
    p = isub.add_parser("systemd", help="write a systemd unit for the agent", description="Write a systemd unit.")
    p.add_argument("-o", "--output", default="-", help="unit file path ('-' = stdout, the default)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="agent configuration the unit starts with")
    add_debug_flag(p)
    p.set_defaults(func=cmd_install_systemd)
