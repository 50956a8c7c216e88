"""kpctl tokens add, ls and rm: join tokens for agents, and the command an admin runs on a new agent host."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Mapping
from typing import Any

from registry.cli import render
from registry.cli.kpctl.flags import SubParsers, command, duration, group
from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import BadParameter, NotFound
from registry.core.netaddr import is_loopback
from registry.core.resources import mask_token
from registry.host.cmdline import resolve_connection


async def cmd_tokens_add(args: argparse.Namespace) -> int:
    roles = [r.strip() for r in args.type.split(",") if r.strip()]
    if not roles:
        raise BadParameter("--type needs at least one role, e.g. --type=kube")
    for role in roles:
        if role.lower() != "kube":
            raise BadParameter(f'invalid role "{role}": kubeport tokens support --type=kube')
    ttl = duration(args.ttl, "--ttl")
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        token = await client.generate_token(roles=["Kube"], ttl_seconds=ttl.total_seconds(), value=args.value)
        ping = await client.ping()
    value = token["metadata"]["name"]
    summary = {"token": value, "roles": token["spec"]["roles"], "expires": token["metadata"]["expires"]}
    if args.format == "text":
        print(value)
    elif args.format == "json":
        sys.stdout.write(render.dump_json(summary))
    elif args.format == "yaml":
        sys.stdout.write(codec.dump_yaml([summary]))
    else:
        address, notes = agent_address(ping, conn.address, _this_host_address())
        minutes = int(ttl.total_seconds() // 60)
        print(f"The invite token: {value}")
        print(f"This token will expire in {minutes} minutes.\n")
        for note in notes:
            print(f"Note: {note}\n")
        print("Run this on the new agent host (the CA pin lets it verify this registry on first contact):\n")
        print(
            f"  kubeport configure --registry={address} --roles=kube --token={value} "
            f"--ca-pin={ping['ca_pin']} -o /etc/kubeport.yaml"
        )
        print("  kubeport agent start -c /etc/kubeport.yaml\n")
        print("The token can be used by several agents until it expires; remove it early with 'kpctl tokens rm'.")
    return 0


def agent_address(ping: Mapping[str, Any], used: str, this_host: str | None) -> tuple[str, list[str]]:
    """The registry address to give agents on other hosts, and what the admin should know about it.

    The registry's ``--public-addr`` when it has one; else the address kpctl used, unless that is a loopback
    address (the usual case on the registry host), which another host cannot use: then ``this_host`` (a
    non-loopback address of the host kpctl runs on) with a note to check it. Pure, for tests.
    """
    notes: list[str] = []
    fix = "restart it with --listen 0.0.0.0:3025 --public-addr HOST:3025 (HOST: a name or address agents can reach)"
    if ping.get("loopback_only"):
        notes.append(f"the registry listens on a loopback address only: agents on other hosts cannot reach it; {fix}.")
    public = ping.get("public_addr")
    if isinstance(public, str) and public:
        return public, notes
    host, port = _split_address(used)
    if not is_loopback(host):
        return used, notes
    if this_host is None:
        notes.append(f"the registry has no --public-addr and {used} only works on this host; {fix}.")
        return used, notes
    address = f"[{this_host}]:{port}" if ":" in this_host else f"{this_host}:{port}"
    if not ping.get("loopback_only"):
        notes.append(
            f"the registry has no --public-addr; {address} is this host's address as kpctl sees it: check that "
            "agents can reach it (or restart the registry with --public-addr HOST:PORT)."
        )
    return address, notes


def _split_address(address: str) -> tuple[str, str]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest.lstrip(":") or "3025"
    host, _, port = address.rpartition(":")
    return (host, port) if host else (address, "3025")


def _this_host_address() -> str | None:
    """A non-loopback address of this host: the source address of the default route (a UDP "connect"
    sends nothing), else what the host name resolves to; None when there is none."""
    for family, target in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                found = str(probe.getsockname()[0])
        except OSError:
            continue
        if not is_loopback(found):
            return found
    try:
        found = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    return None if is_loopback(found) else found


async def cmd_tokens_ls(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        items, _ = await client.list("token", with_secrets=args.with_secrets)
    if args.format == "text":
        if not items:
            print("No active tokens found.")
        else:
            sys.stdout.write(render.resource_table("token", items, verbose=True))
    else:
        sys.stdout.write(render.documents(items, args.format))
    return 0


async def cmd_tokens_rm(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        try:
            await client.delete("token", args.token)
        except NotFound:
            raise NotFound("token not found (it may have expired)") from None
    print(f"Token {mask_token(args.token)} has been deleted")  # the value is a secret: never echoed
    return 0


def add_commands(sub: SubParsers) -> None:
    tsub = group(sub, "tokens", "manage join tokens for agents")

    p = command(tsub, "add", "create a join token for agents", cmd_tokens_add)
    p.add_argument("--type", required=True, help="what the token lets a host join as: kube")
    p.add_argument("--ttl", default="30m", help="how long the token is valid, a Go duration (default 30m)")
    p.add_argument("--value", help="use this value instead of a random one")
    p.add_argument(
        "--format", choices=render.FORMATS, default=None, help="text prints only the token; default prints instructions"
    )
    p = command(tsub, "ls", "list join tokens (values masked unless --with-secrets)", cmd_tokens_ls)
    p.add_argument("--format", choices=render.FORMATS, default="text")
    p.add_argument("--with-secrets", action="store_true", help="show token values")
    p = command(tsub, "rm", "delete a join token", cmd_tokens_rm)
    p.add_argument("token", metavar="TOKEN")
