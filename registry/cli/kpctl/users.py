"""kpctl users add, update, ls and rm: local users, as ``tctl users`` manages them (seeds 000 and 003).

A user keeps Teleport's shape: ``spec.roles`` and ``spec.traits`` (``--k8s-groups`` / ``--k8s-users`` become
the ``kubernetes_groups`` / ``kubernetes_users`` traits, which roles use as ``{{internal.kubernetes_groups}}``
and ``{{internal.kubernetes_users}}``). These commands are the generic resource API underneath, so the
registry's authorization applies unchanged: only a caller allowed to ``create`` / ``update`` / ``delete``
``user`` may run them (the admin identity, or a user whose roles' ``rules`` grant it).

Invariants:

* Every value is checked before anything is written: the user through the codec (name, traits), and every
  role named must exist (one clear error naming the missing ones). Lists given as flags are split on commas,
  trimmed and de-duplicated in order.
* ``update`` replaces only what its flags name and writes with the revision it read, so a concurrent change
  is refused rather than overwritten.
* Output follows tctl (``User "alice" has been created``, ``User "alice" has been updated:`` + one
  ``New <field>: ...`` line per change, ``User "alice" has been deleted``). ``add`` and ``reset`` print the
  user's single-use signup command (``kubeport signup --registry HOST:PORT --token TOKEN --ca-pin PIN``):
  that token is meant to be handed to the user; no other secret is ever printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from registry.cli import render
from registry.cli.kpctl.flags import SubParsers, command, group
from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from registry.core.resources import User
from registry.core.validation import quote
from registry.host.cmdline import resolve_connection

GROUPS_TRAIT = "kubernetes_groups"
USERS_TRAIT = "kubernetes_users"
MAX_FLAG_ITEMS = 256


def split_list(text: str, flag: str) -> tuple[str, ...]:
    """``a, b,,a`` -> ``("a", "b")``: comma-separated, trimmed, empty items dropped, first occurrence kept."""
    items = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if len(items) > MAX_FLAG_ITEMS:
        raise BadParameter(f"{flag} has {len(items)} items; at most {MAX_FLAG_ITEMS} are allowed")
    for item in items:
        if not item.isprintable():
            raise BadParameter(f"{flag}: {quote(item)} contains a control or invisible character")
    return tuple(items)


def build_user(name: str, roles: Sequence[str], traits: Mapping[str, Sequence[str]], revision: str = "") -> User:
    """The user as the codec accepts it (every rule on names and traits applies here, before any request)."""
    metadata: dict[str, Any] = {"name": name}
    if revision:
        metadata["revision"] = revision
    spec: dict[str, Any] = {"roles": list(roles), "traits": {k: list(v) for k, v in traits.items() if v}}
    user = codec.resource_from_dict({"kind": "user", "version": User.VERSION, "metadata": metadata, "spec": spec})
    assert isinstance(user, User)
    return user


async def check_roles_exist(client: RegistryClient, roles: Sequence[str]) -> None:
    """Raise NotFound naming every role in ``roles`` that the registry does not hold."""
    if not roles:
        return
    try:
        items, _ = await client.list("role")
    except AccessDenied as err:
        raise AccessDenied(
            f"{err.message} (kpctl checks that the roles named exist: that needs list on role)"
        ) from None
    known = {str(item["metadata"]["name"]) for item in items}
    missing = [role for role in roles if role not in known]
    if not missing:
        return
    names = ", ".join(quote(role) for role in missing)
    what = "role" if len(missing) == 1 else "roles"
    hint = f"existing roles: {', '.join(sorted(known))}" if known else "there are no roles yet"
    raise NotFound(f"{what} {names} not found: create it first with kpctl create ({hint})")


def _user_traits(raw: Any) -> dict[str, tuple[str, ...]]:
    traits = (raw or {}).get("traits") or {}
    return {str(k): tuple(v) for k, v in traits.items()}


async def cmd_users_add(args: argparse.Namespace) -> int:
    roles = split_list(args.roles or "", "--roles")
    traits = {
        GROUPS_TRAIT: split_list(args.k8s_groups or "", "--k8s-groups"),
        USERS_TRAIT: split_list(args.k8s_users or "", "--k8s-users"),
    }
    user = build_user(args.name, roles, traits)
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        await check_roles_exist(client, roles)
        try:
            await client.create(codec.resource_to_dict(user))
        except AlreadyExists:
            raise AlreadyExists(
                f"user {quote(user.name)} already exists: change it with kpctl users update, or remove it first"
            ) from None
        signup, address = await _signup(client, user.name, conn.address)
    print(f"User {quote(user.name)} has been created")
    print_signup(user.name, signup, address)
    if not roles:
        print(
            f"warning: user {quote(user.name)} has no roles: it can reach no cluster until you give it some "
            f"(kpctl users update {user.name} --set-roles=ROLE)",
            file=sys.stderr,
        )
    print(
        f"Or sign credentials for it with: kpctl auth sign --user={user.name} --format=kubernetes "
        "--out=kubeconfig --ttl=25h"
    )
    return 0


async def _signup(client: RegistryClient, name: str, used: str) -> tuple[dict[str, Any], str]:
    """A signup token for ``name`` and the registry address (with its CA pin) the user should dial."""
    signup = await client.create_signup_token(name)
    ping = await client.ping()
    public = ping.get("public_addr")
    address = public if isinstance(public, str) and public else used
    return {**signup, "ca_pin": ping["ca_pin"]}, address


def print_signup(name: str, signup: Mapping[str, Any], address: str) -> None:
    """tctl's signup hint, as a command: the token is single use and lasts one hour (a secret meant for the
    user; nothing else is printed about it)."""
    print(f"User {quote(name)} signs up (sets a password and a one-time code app) within 1 hour with:\n")
    print(f"  kubeport signup --registry {address} --token {signup['token']} --ca-pin {signup['ca_pin']}\n")
    print("The token works once. A new one: kpctl users reset " + name)


async def cmd_users_reset(args: argparse.Namespace) -> int:
    build_user(args.name, (), {})  # the name, before any request
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        try:
            signup, address = await _signup(client, args.name, conn.address)
        except NotFound:
            raise NotFound(f"user {quote(args.name)} not found (create it with kpctl users add)") from None
    print(
        f"User {quote(args.name)} has been reset: the old password, one-time code app and signup tokens no longer work"
    )
    print_signup(args.name, signup, address)
    return 0


async def cmd_users_update(args: argparse.Namespace) -> int:
    changes: dict[str, tuple[str, ...]] = {}
    if args.set_roles is not None:
        changes["roles"] = split_list(args.set_roles, "--set-roles")
    if args.set_k8s_groups is not None:
        changes[GROUPS_TRAIT] = split_list(args.set_k8s_groups, "--set-k8s-groups")
    if args.set_k8s_users is not None:
        changes[USERS_TRAIT] = split_list(args.set_k8s_users, "--set-k8s-users")
    if not changes:
        raise BadParameter("nothing to update: pass --set-roles, --set-k8s-groups and/or --set-k8s-users")
    build_user(args.name, changes.get("roles", ()), {})  # the name, before any request
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        try:
            current = await client.get("user", args.name)
        except NotFound:
            raise NotFound(f"user {quote(args.name)} not found (create it with kpctl users add)") from None
        spec = current.get("spec") or {}
        roles = changes.get("roles", tuple(spec.get("roles") or ()))
        traits = _user_traits(spec)
        for trait in (GROUPS_TRAIT, USERS_TRAIT):
            if trait in changes:
                traits[trait] = changes[trait]
        user = build_user(args.name, roles, traits, revision=str(current["metadata"].get("revision", "")))
        if "roles" in changes:
            await check_roles_exist(client, roles)
        await client.update(codec.resource_to_dict(user))
    print(f"User {quote(user.name)} has been updated:")
    for field, values in changes.items():
        print(f"\tNew {field}: {','.join(values) if values else '(none)'}")
    return 0


async def cmd_users_ls(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        items, _ = await client.list("user")
    if args.format == "text":
        sys.stdout.write(render.resource_table("user", items, verbose=True))
    else:
        sys.stdout.write(render.documents(items, args.format))
    return 0


async def cmd_users_rm(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        try:
            await client.delete("user", args.name)
        except NotFound:
            raise NotFound(f"user {quote(args.name)} not found") from None
    print(f"User {quote(args.name)} has been deleted")
    return 0


def add_commands(sub: SubParsers) -> None:
    usub = group(sub, "users", "manage users (their roles and Kubernetes traits)")

    p = command(usub, "add", "create a user with roles and optional Kubernetes groups/users", cmd_users_add)
    p.add_argument("name", metavar="NAME", help="the user name (letters, digits and . _ @ + -)")
    p.add_argument("--roles", default="", help="comma-separated roles, each must exist (e.g. --roles=kube-access)")
    p.add_argument(
        "--k8s-groups",
        default="",
        metavar="GROUPS",
        help="comma-separated Kubernetes groups: the trait kubernetes_groups ({{internal.kubernetes_groups}} in roles)",
    )
    p.add_argument(
        "--k8s-users",
        default="",
        metavar="USERS",
        help="comma-separated Kubernetes users: the trait kubernetes_users ({{internal.kubernetes_users}} in roles)",
    )

    p = command(
        usub, "update", "change a user's roles or Kubernetes traits (each flag replaces its list)", cmd_users_update
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--set-roles", metavar="ROLES", help="the new comma-separated roles (each must exist)")
    p.add_argument("--set-k8s-groups", metavar="GROUPS", help="the new kubernetes_groups trait ('' clears it)")
    p.add_argument("--set-k8s-users", metavar="USERS", help="the new kubernetes_users trait ('' clears it)")

    p = command(
        usub,
        "reset",
        "drop a user's password and one-time code app and print a new signup command (1 h, single use)",
        cmd_users_reset,
    )
    p.add_argument("name", metavar="NAME")

    p = command(usub, "ls", "list users", cmd_users_ls)
    p.add_argument("--format", choices=render.FORMATS, default="text", help="output format (default: text)")

    p = command(usub, "rm", "delete a user (its certificates stop working at once)", cmd_users_rm)
    p.add_argument("name", metavar="NAME")
