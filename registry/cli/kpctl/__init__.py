"""kpctl: the admin command line for a kubeport registry (the counterpart of Teleport's tctl).

    kpctl create FILE [-f]                         create (or with -f create-or-replace) every resource in FILE
    kpctl get KIND[/NAME] [--format yaml|json|text] [--with-secrets] [-v]
    kpctl rm KIND/NAME
    kpctl users add NAME --roles=a,b [--k8s-groups=g] [--k8s-users=u] | users update NAME --set-roles=a,b
    kpctl users ls [--format text|json|yaml] | users rm NAME
    kpctl tokens add --type=kube [--ttl=30m] [--format text|json|yaml] | tokens ls | tokens rm TOKEN
    kpctl auth sign --user NAME --out FILE [--ttl 12h] [--format identity|kubernetes] [--kube-cluster NAME]
    kpctl status
    kpctl kube explain NAME
    kpctl bots add NAME --roles=a,b [--ttl=1h] | bots update NAME --add-roles=R [--set-roles=a,b]
    kpctl bots ls | bots rm NAME

One module per command group, as tctl has: ``resources`` (create, get, rm), ``users``, ``tokens``, ``auth``,
``status``, ``kube``; each declares its commands with ``add_commands``. ``flags`` holds what they share;
every text table and view is the renderer's (:mod:`registry.cli.render`).

Output and messages follow tctl's where it has one (``kubernetes cluster "x" has been created``).
Expected errors print one ``ERROR: ...`` line on stderr and exit 1; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from registry.cli.kpctl import auth, bots, kube, resources, status, tokens, users
from registry.cli.kpctl.flags import FLAGS_EPILOG, global_flags
from registry.host.cmdline import guarded, parse_command_line, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpctl",
        description="Administer a kubeport registry: kube_cluster resources, roles, users, join tokens.",
        epilog="On the registry host no flags are needed: kpctl uses the local admin identity. " + FLAGS_EPILOG,
    )
    global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # One module per command group (as tctl has); the order here is the order of kpctl --help.
    for group in (resources, users, tokens, auth, status, kube, bots):
        group.add_commands(sub)
    return parser


async def amain(argv: Sequence[str]) -> int:
    """kpctl inside an existing trio loop (tests drive kpctl's real code path through this)."""
    args = parse_command_line(build_parser(), argv)
    return await guarded(args.func, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    return run_command(args.func, args)
