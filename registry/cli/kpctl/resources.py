"""kpctl create, get and rm: resources from files, shown as tables, YAML or JSON, deleted by KIND/NAME.

Output and messages follow tctl's where it has one (``kubernetes cluster "x" has been created``); the text
tables are the renderer's (:func:`registry.cli.render.resource_table`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.cli import render
from registry.cli.kpctl.flags import SubParsers, command
from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import AlreadyExists, BadParameter, NotFound
from registry.core.kubeconfig import check_kubeconfig
from registry.core.resources import KIND_ALIASES, KubeCluster, mask_token
from registry.host.cmdline import read_input_file, resolve_connection

MAX_EVENTS_PAGE = 1000  # the registry's page size limit for GET /v1/events

DISPLAY = {
    "kube_cluster": "kubernetes cluster",
    "kube_server": "kubernetes server",
    "role": "role",
    "user": "user",
    "token": "token",
    "oidc": "oidc connector",
}


def _canonical_kind(raw: str) -> str:
    if raw in ("event", "events"):
        return "event"
    kind = KIND_ALIASES.get(raw)
    if kind is None:
        supported = "kube_clusters, kube_servers, roles, users, tokens, oidc, events"
        raise BadParameter(f"unknown resource kind {raw!r}; supported: {supported}")
    return kind


def _split_ref(ref: str) -> tuple[str, str | None]:
    kind, sep, name = ref.partition("/")
    return _canonical_kind(kind), (name if sep else None)


async def cmd_create(args: argparse.Namespace) -> int:
    data = read_input_file(args.file, limit=codec.MAX_DOCUMENT_BYTES, what="resource file")
    source = "standard input" if args.file == "-" else Path(args.file).name
    resources = codec.decode_resources(data, source=source)  # every document validated before any write
    for resource in resources:
        if isinstance(resource, KubeCluster) and resource.kubeconfig:
            _warn_about_kubeconfig(resource)
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        for resource in resources:
            wire = codec.resource_to_dict(resource, with_secrets=True)
            display = DISPLAY.get(resource.KIND, resource.KIND)
            name = resource.metadata.name
            if resource.KIND == "token":
                name = mask_token(name)
            if args.force:
                _, created = await client.create_or_update(wire)
            else:
                try:
                    await client.create(wire)
                except AlreadyExists:
                    raise AlreadyExists(f'{display} "{name}" already exists: use create -f to replace it') from None
                created = True
            print(f'{display} "{name}" has been {"created" if created else "updated"}')
            if isinstance(resource, KubeCluster) and not resource.kubeconfig and created:
                print(
                    f'warning: {display} "{name}" has no spec.kubeconfig: no agent can serve it until one is set',
                    file=sys.stderr,
                )
    return 0


def _warn_about_kubeconfig(cluster: KubeCluster) -> None:
    """What the checks accept but an admin should know: no TLS verification, a proxy, an expiring credential."""
    target = check_kubeconfig(
        cluster.kubeconfig, cluster_name=cluster.name, allow_exec=cluster.allow_exec_plugins, now=datetime.now(tz=UTC)
    )
    for warning in target.warnings:
        print(f'warning: kubernetes cluster "{cluster.name}": {warning}', file=sys.stderr)


async def cmd_get(args: argparse.Namespace) -> int:
    kind, name = _split_ref(args.ref)
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        more: str | None = None
        items: Sequence[Mapping[str, Any]]
        if kind == "event":
            if not 1 <= args.limit <= MAX_EVENTS_PAGE:
                raise BadParameter(f"--limit must be between 1 and {MAX_EVENTS_PAGE} (got {args.limit})")
            items, more = await client.events_page(limit=args.limit, event=args.event, continue_from=args.continue_from)
        elif name:
            try:
                items = [await client.get(kind, name, with_secrets=args.with_secrets)]
            except NotFound:
                raise NotFound(f'{DISPLAY[kind]} "{name}" not found') from None
        else:
            items, _ = await client.list(kind, with_secrets=args.with_secrets)
    if args.format == "text":
        sys.stdout.write(render.resource_table(kind, items, verbose=args.verbose))
    elif kind == "event":
        sys.stdout.write(render.dump_json(items) if args.format == "json" else codec.dump_yaml(items))
    else:
        sys.stdout.write(render.documents(items, args.format))
    if more is not None:
        # On stderr, so json/yaml output stays one parseable document.
        sys.stderr.write(f"older events: kpctl get events --limit {args.limit} --continue {more}\n")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    kind, name = _split_ref(args.ref)
    if not name or kind == "event":
        raise BadParameter(f"rm needs KIND/NAME, e.g. kube_clusters/mycluster (got {args.ref!r})")
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        try:
            await client.delete(kind, name)
        except NotFound:
            raise NotFound(f'{DISPLAY[kind]} "{name}" not found') from None
    print(f'{DISPLAY[kind]} "{name}" has been deleted')
    return 0


def add_commands(sub: SubParsers) -> None:
    p = command(sub, "create", "create resources from a YAML or JSON file ('-' for stdin)", cmd_create)
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="replace resources that exist (a missing kubeconfig keeps the stored one)",
    )

    p = command(sub, "get", "show resources: kube_clusters, kube_servers, roles, users, tokens, oidc, events", cmd_get)
    p.add_argument("ref", metavar="KIND[/NAME]")
    p.add_argument("--format", choices=render.FORMATS, default="yaml", help="output format (default: yaml)")
    p.add_argument(
        "--with-secrets", action="store_true", help="include kubeconfigs, token values and oidc client secrets"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="do not shorten long columns (text format)")
    p.add_argument(
        "--limit",
        type=int,
        default=100,
        help="how many events per page (events only; default 100, at most 1000)",
    )
    p.add_argument(
        "--continue",
        dest="continue_from",
        metavar="ID",
        help="show the page of events older than this one (events only; kpctl prints the ID under a full page)",
    )
    p.add_argument("--event", metavar="NAME", help="only events with this name, e.g. instance.join (events only)")

    p = command(sub, "rm", "delete a resource, e.g. kube_clusters/mycluster", cmd_rm)
    p.add_argument("ref", metavar="KIND/NAME")
