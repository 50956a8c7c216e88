"""kubeport: the daemons and the user side.

    kubeport start [--data-dir DIR] [--listen HOST:PORT]      all-in-one on this machine (the main job)
    kubeport registry start [--data-dir DIR] [--listen ...]   the registry alone

This module is the composition root: the only place allowed to import both the registry server and the
agent (DESIGN.md, dependency direction).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from registry.cli.common import add_debug_flag, run_command
from registry.server.serve import DEFAULT_LISTEN, RegistryInfo, default_data_dir, serve_registry


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()


async def _until_signalled(cancel: trio.CancelScope) -> None:
    """SIGINT (Ctrl-C) and SIGTERM (systemd stop) end the services cleanly: the store closes, heartbeats go."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"\nreceived {signal.Signals(signum).name}, stopping", file=sys.stderr, flush=True)
            cancel.cancel()
            return


def _print_registry_banner(info: RegistryInfo, *, all_in_one: bool) -> None:
    what = "kubeport (registry + agent)" if all_in_one else "kubeport registry"
    print(f'{what} for cluster "{info.cluster_name}" is running on {info.address}')
    print(f"  data dir:        {info.data_dir}")
    print(f"  admin identity:  {info.admin_identity}  (kpctl on this host uses it automatically)")
    print(f"  CA pin:          {info.ca_pin}")
    print()
    print("Try, in another terminal:")
    print("  kpctl status")
    print("  kpctl create kube_cluster.yaml          # see README: register a cluster")
    print("  kpctl get kube_clusters --format text")
    print("  kpctl tokens add --type=kube --ttl=1h    # to join agents on other hosts")
    print()
    print("Press Ctrl-C to stop.", flush=True)


async def cmd_registry_start(args: argparse.Namespace) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_signalled, nursery.cancel_scope)
        info: RegistryInfo = await nursery.start(
            lambda task_status: serve_registry(
                data_dir=_data_dir(args),
                listen=args.listen,
                public_addrs=tuple(args.public_addr or ()),
                task_status=task_status,
            )
        )
        _print_registry_banner(info, all_in_one=False)
    return 0


async def cmd_start(args: argparse.Namespace) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_signalled, nursery.cancel_scope)
        info: RegistryInfo = await nursery.start(
            lambda task_status: serve_registry(data_dir=_data_dir(args), listen=args.listen, task_status=task_status)
        )
        _print_registry_banner(info, all_in_one=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeport",
        description="kubeport: a dynamic Kubernetes cluster registry with agents.",
    )
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def data_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            metavar="DIR",
            help="where state lives (default: $KUBEPORT_DATA_DIR, /var/lib/kubeport as root, ~/.kubeport otherwise)",
        )
        p.add_argument(
            "--listen",
            metavar="HOST:PORT",
            default=DEFAULT_LISTEN,
            help=f"registry API address (default {DEFAULT_LISTEN})",
        )
        add_debug_flag(p)

    p = sub.add_parser(
        "start",
        help="run everything on this machine (registry with the embedded SQLite store)",
        description="Run the all-in-one kubeport on this machine: the registry with its embedded store.",
    )
    data_flags(p)
    p.set_defaults(func=cmd_start)

    registry = sub.add_parser("registry", help="the registry daemon", description="The registry daemon.")
    rsub = registry.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)
    p = rsub.add_parser("start", help="run the registry", description="Run the registry (mutual-TLS API).")
    data_flags(p)
    p.add_argument(
        "--public-addr",
        action="append",
        metavar="HOST:PORT",
        help="address agents and kpctl use to reach this registry (repeatable; first one is advertised)",
    )
    p.set_defaults(func=cmd_registry_start)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: Any = parser.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
