"""kpctl bots add, update, ls and rm: machine identities, as ``tctl bots`` manages them (seed 004).

A bot is the user ``bot-NAME`` holding the bot's roles (the registry's rules: ``registry.server.bots``).
``add`` prints the bot's single-use join token once, and a ``bot.yaml`` to start it with
``kubeport bot start -c bot.yaml``; ``update NAME --add-roles ROLE`` is seed 004's exact command
(``--set-roles`` replaces the list); ``rm`` deletes the bot and its user, so its certificates stop working on
their next request.

Invariants: flags are checked before any request (names, role lists); every role named must exist (the
registry checks); the token is printed only by ``add``, never by ``ls`` (which shows whether the bot is
still waiting for its join, joined, or locked by the generation check).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from registry.cli import render
from registry.cli.kpctl.flags import SubParsers, command, duration, group
from registry.cli.kpctl.users import split_list
from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import BadParameter, NotFound
from registry.core.timefmt import format_human, parse_rfc3339
from registry.core.validation import quote
from registry.host.cmdline import resolve_connection

BOT_FORMATS = ("text", "json", "yaml")


def bot_yaml(*, registry: str, ca_pin: str, token: str, name: str) -> str:
    """A starting ``bot.yaml`` for the new bot: tbot's shape with our ``registry`` key (pure, for tests)."""
    return (
        f"registry: {registry}\n"
        f"ca_pins: ['{ca_pin}']\n"
        "onboarding:\n"
        "  join_method: token\n"
        f"  token: {token}\n"
        f"storage: /var/lib/kubeport/bot-{name}\n"
        "certificate_ttl: 1h\n"
        "renewal_interval: 20m\n"
        "outputs:\n"
        "  - type: kubernetes\n"
        "    kubernetes_cluster: CLUSTER   # or kubernetes_labels: {env: prod} for one context per match\n"
        "    destination:\n"
        "      type: directory\n"
        f"      path: /opt/machine-id/{name}\n"
    )


def bot_rows(items: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for item in items:
        status = str(item.get("status", ""))
        if status == "locked":
            status = f"locked: {item.get('locked', {}).get('reason', '')}"
        elif status == "joined":
            status = f"joined (generation {item.get('generation', 0)})"
        elif item.get("token_expires"):
            status = f"waiting for join (token expires {item['token_expires']})"
        rows.append([item.get("name", ""), item.get("user", ""), ",".join(item.get("roles", [])), status])
    return render.table(["Bot", "User", "Roles", "Status"], rows)


async def cmd_bots_add(args: argparse.Namespace) -> int:
    roles = split_list(args.roles or "", "--roles")
    ttl = duration(args.ttl, "--ttl")
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        bot = await client.bots_add(args.name, roles, token_ttl_seconds=ttl.total_seconds())
        ping = await client.ping()
    if args.format != "text":
        out = render.dump_json(bot) if args.format == "json" else codec.dump_yaml([bot])
        sys.stdout.write(out)
        return 0
    token = str(bot["token"])
    address = str(ping.get("public_addr") or conn.address)
    expires = parse_rfc3339(str(bot["token_expires"]))
    roles_text = ", ".join(bot["roles"]) or "none yet"
    print(f"Bot {quote(args.name)} has been created (user {quote(bot['user'])}, roles: {roles_text}).")
    if not roles:
        print(
            f"warning: bot {quote(args.name)} has no roles: it can reach no cluster until you give it some "
            f"(kpctl bots update {args.name} --add-roles=ROLE)",
            file=sys.stderr,
        )
    print(f"The bot join token: {token}")
    print(f"It can be used once, until {format_human(expires)}.\n")
    print("Write this bot.yaml on the machine (set the output's cluster and directory):\n")
    for line in bot_yaml(registry=address, ca_pin=str(ping["ca_pin"]), token=token, name=args.name).splitlines():
        print(f"  {line}")
    print("\nThen start the bot (it joins once, then renews its certificate and refreshes kubeconfig.yaml):\n")
    print("  kubeport bot start -c bot.yaml            # or --oneshot, or: kubeport install systemd --bot -c bot.yaml")
    return 0


async def cmd_bots_update(args: argparse.Namespace) -> int:
    add_roles = split_list(args.add_roles or "", "--add-roles")
    set_roles = split_list(args.set_roles, "--set-roles") if args.set_roles is not None else None
    if not add_roles and set_roles is None:
        raise BadParameter("nothing to update: pass --add-roles and/or --set-roles")
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        bot = await client.bots_update(args.name, add_roles=add_roles, set_roles=set_roles)
    print(f"Bot {quote(args.name)} has been updated")
    print(f"\tRoles: {','.join(bot['roles']) or '(none)'}")
    print("A running bot gets new roles with its next renewal (restart it to get them now).")
    return 0


async def cmd_bots_ls(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        items = await client.bots_list()
    if args.format == "text":
        sys.stdout.write(bot_rows(items))
    elif args.format == "json":
        sys.stdout.write(render.dump_json(items))
    else:
        sys.stdout.write(codec.dump_yaml(items))
    return 0


async def cmd_bots_rm(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        try:
            await client.bots_rm(args.name)
        except NotFound:
            raise NotFound(f"bot {quote(args.name)} not found (see kpctl bots ls)") from None
    print(f"Bot {quote(args.name)} has been deleted (its certificates stop working on their next request)")
    return 0


def add_commands(sub: SubParsers) -> None:
    bsub = group(sub, "bots", "manage bots: machine identities that keep a kubeconfig fresh (kubeport bot start)")

    p = command(bsub, "add", "create a bot with roles and print its single-use join token", cmd_bots_add)
    p.add_argument("name", metavar="NAME", help="the bot name (its user is bot-NAME)")
    p.add_argument("--roles", default="", help="comma-separated roles, each must exist (e.g. --roles=kube-access)")
    p.add_argument("--ttl", default="1h", help="how long the join token is valid, a Go duration (default 1h)")
    p.add_argument("--format", choices=BOT_FORMATS, default="text", help="output format (default: text)")

    p = command(bsub, "update", "change a bot's roles", cmd_bots_update)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--add-roles", metavar="ROLES", help="comma-separated roles to add (each must exist)")
    p.add_argument("--set-roles", metavar="ROLES", help="the new comma-separated roles, replacing the current ones")

    p = command(bsub, "ls", "list bots", cmd_bots_ls)
    p.add_argument("--format", choices=BOT_FORMATS, default="text", help="output format (default: text)")

    p = command(bsub, "rm", "delete a bot (its certificates stop working at once)", cmd_bots_rm)
    p.add_argument("name", metavar="NAME")
