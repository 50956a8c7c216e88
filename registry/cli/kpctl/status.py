"""kpctl status: the registry's cluster name, version and CA pin, and who kpctl is."""

from __future__ import annotations

import argparse
import sys

from registry.cli import render
from registry.cli.kpctl.flags import SubParsers, command
from registry.client import RegistryClient
from registry.host.cmdline import Connection, resolve_connection


async def cmd_status(args: argparse.Namespace) -> int:
    conn: Connection = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        ping = await client.ping()
        me = await client.whoami()
    rows = [
        ("Cluster", ping["cluster_name"]),
        ("Version", ping["version"]),
        ("Registry", conn.address),
        ("CA pin", ping["ca_pin"]),
        ("Identity", f"{me['name']} ({me['kind']}), expires {me.get('expires') or 'never'}"),
    ]
    sys.stdout.write(render.fields(rows))
    return 0


def add_commands(sub: SubParsers) -> None:
    command(sub, "status", "show the registry's cluster name, version and CA pin", cmd_status)
