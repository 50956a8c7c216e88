"""kpctl: the admin command line for a kubeport registry (the counterpart of Teleport's tctl).

    kpctl create FILE [-f]                         create (or with -f create-or-replace) every resource in FILE
    kpctl get KIND[/NAME] [--format yaml|json|text] [--with-secrets] [-v]
    kpctl rm KIND/NAME
    kpctl tokens add --type=kube [--ttl=30m] [--format text|json|yaml] | tokens ls | tokens rm TOKEN
    kpctl auth sign --user NAME --out FILE [--ttl 12h]
    kpctl status

Output and messages follow tctl's where it has one (``kubernetes cluster "x" has been created``).
Expected errors print one ``ERROR: ...`` line on stderr and exit 1; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from labels import parse_go_duration
from registry.cli import kube_cmd, render
from registry.cli.common import (
    Connection,
    add_connection_flags,
    add_debug_flag,
    guarded,
    parse_command_line,
    read_input_file,
    resolve_connection,
    run_command,
    set_command,
)
from registry.core import codec
from registry.core.errors import AlreadyExists, BadParameter, NotFound
from registry.core.identity import generate_private_key, make_csr
from registry.core.identity_file import IdentityFile
from registry.core.kubeconfig import check_kubeconfig
from registry.core.resources import KIND_ALIASES, KubeCluster, mask_token
from registry.core.timefmt import format_human, parse_rfc3339
from registry.core.validation import label_errors
from registry.files import write_secret_file

MAX_EVENTS_PAGE = 1000  # the registry's page size limit for GET /v1/events

DISPLAY = {
    "kube_cluster": "kubernetes cluster",
    "kube_server": "kubernetes server",
    "role": "role",
    "user": "user",
    "token": "token",
}


def _canonical_kind(raw: str) -> str:
    if raw in ("event", "events"):
        return "event"
    kind = KIND_ALIASES.get(raw)
    if kind is None:
        supported = "kube_clusters, kube_servers, roles, users, tokens, events"
        raise BadParameter(f"unknown resource kind {raw!r}; supported: {supported}")
    return kind


def _split_ref(ref: str) -> tuple[str, str | None]:
    kind, sep, name = ref.partition("/")
    return _canonical_kind(kind), (name if sep else None)


def _duration(text: str, what: str) -> timedelta:
    with label_errors(subject=what):
        seconds = parse_go_duration(text)
    if seconds <= 0:
        raise BadParameter(f"{what} must be positive (got {text!r})")
    return timedelta(seconds=seconds)


# -- create -----------------------------------------------------------------------------------------


async def cmd_create(args: argparse.Namespace) -> int:
    data = read_input_file(args.file, limit=codec.MAX_DOCUMENT_BYTES, what="resource file")
    source = "standard input" if args.file == "-" else Path(args.file).name
    resources = codec.decode_resources(data, source=source)  # every document validated before any write
    for resource in resources:
        if isinstance(resource, KubeCluster) and resource.kubeconfig:
            _warn_about_kubeconfig(resource)
    conn = resolve_connection(args)
    async with conn.client() as client:
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


# -- get --------------------------------------------------------------------------------------------


def _kube_cluster_rows(items: Sequence[dict[str, Any]], verbose: bool) -> str:
    rows = [
        [i["metadata"]["name"], render.labels_cell(_all_labels(i), verbose=verbose)]
        for i in sorted(items, key=lambda i: str(i["metadata"]["name"]))
    ]
    return render.table(["Name", "Labels"], rows)


def _all_labels(item: dict[str, Any]) -> dict[str, str]:
    labels = dict(item.get("metadata", {}).get("labels") or {})
    for key, spec in (item.get("spec", {}).get("dynamic_labels") or {}).items():
        if isinstance(spec, dict) and spec.get("result"):
            labels[key] = str(spec["result"])
    return labels


def _kube_server_rows(items: Sequence[dict[str, Any]], verbose: bool) -> str:
    rows = []
    for item in sorted(items, key=lambda i: (str(i["metadata"]["name"]), str(i["spec"].get("host_id")))):
        spec = item["spec"]
        cluster = spec.get("cluster") or {}
        labels = _all_labels(cluster)
        health = spec.get("health") or {}
        status = render.health_text(health.get("status"), health.get("reason"), verbose=verbose)
        rows.append(
            [
                item["metadata"]["name"],
                str(spec.get("host_id", "")),
                str(spec.get("hostname", "")),
                status,
                _expiry_cell(item["metadata"].get("expires")),
                render.labels_cell(labels, verbose=verbose),
            ]
        )
    return render.table(["Cluster", "Host ID", "Address", "Health", "Expires", "Labels"], rows)


def _expiry_cell(expires: str | None) -> str:
    if not expires:
        return "never"
    try:
        when = parse_rfc3339(expires)
    except (ValueError, OverflowError):
        return expires
    left = when - datetime.now(tz=UTC)
    seconds = max(int(left.total_seconds()), 0)
    return f"{format_human(when)} ({_short(seconds)} left)"


def _short(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


def _role_rows(items: Sequence[dict[str, Any]], verbose: bool) -> str:
    rows = []
    for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
        allow = item.get("spec", {}).get("allow", {}) or {}
        rules = [
            f"{','.join(r.get('resources', []))}:{','.join(r.get('verbs', []))}" for r in allow.get("rules", []) or []
        ]
        groups = ",".join(allow.get("kubernetes_groups", []) or [])
        rows.append([item["metadata"]["name"], "; ".join(rules), groups])
    return render.table(["Role", "Rules", "Kubernetes Groups"], rows)


def _user_rows(items: Sequence[dict[str, Any]], verbose: bool) -> str:
    rows = [
        [i["metadata"]["name"], ",".join(i.get("spec", {}).get("roles", []) or [])]
        for i in sorted(items, key=lambda i: str(i["metadata"]["name"]))
    ]
    return render.table(["User", "Roles"], rows)


def _token_rows(items: Sequence[dict[str, Any]], verbose: bool) -> str:
    ordered = sorted(items, key=lambda i: str(i["metadata"].get("expires", "")))
    rows = [
        [
            i["metadata"]["name"],
            ",".join(i.get("spec", {}).get("roles", [])),
            _expiry_cell(i["metadata"].get("expires")),
        ]
        for i in ordered
    ]
    return render.table(["Token", "Type", "Expiry Time (UTC)"], rows)


def _event_rows(items: Sequence[dict[str, Any]], verbose: bool) -> str:
    rows = []
    for e in items:
        target = f"{e.get('kind', '')}/{e.get('name', '')}" if e.get("kind") else str(e.get("host_id", ""))
        result = "success" if e.get("success", True) else f"failure: {e.get('error', '')}"
        count = e.get("count")
        if isinstance(count, int) and count > 1:  # aggregated failures: one row stands for ``count``
            result += f" (x{count} from {e.get('client', '?')} since {e.get('first_time', '?')})"
        rows.append([str(e.get("time", "")), str(e.get("event", "")), str(e.get("user", "")), target, result])
    return render.table(["Time", "Event", "User", "Resource", "Result"], rows)


_TEXT = {
    "kube_cluster": _kube_cluster_rows,
    "kube_server": _kube_server_rows,
    "role": _role_rows,
    "user": _user_rows,
    "token": _token_rows,
    "event": _event_rows,
}


async def cmd_get(args: argparse.Namespace) -> int:
    kind, name = _split_ref(args.ref)
    conn = resolve_connection(args)
    async with conn.client() as client:
        more: str | None = None
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
        sys.stdout.write(_TEXT[kind](items, args.verbose))
    elif kind == "event":
        sys.stdout.write(render.dump_json(items) if args.format == "json" else codec.dump_yaml(items))
    else:
        sys.stdout.write(render.documents(items, args.format))
    if more is not None:
        # On stderr, so json/yaml output stays one parseable document.
        sys.stderr.write(f"older events: kpctl get events --limit {args.limit} --continue {more}\n")
    return 0


# -- rm ---------------------------------------------------------------------------------------------


async def cmd_rm(args: argparse.Namespace) -> int:
    kind, name = _split_ref(args.ref)
    if not name or kind == "event":
        raise BadParameter(f"rm needs KIND/NAME, e.g. kube_clusters/mycluster (got {args.ref!r})")
    conn = resolve_connection(args)
    async with conn.client() as client:
        try:
            await client.delete(kind, name)
        except NotFound:
            raise NotFound(f'{DISPLAY[kind]} "{name}" not found') from None
    print(f'{DISPLAY[kind]} "{name}" has been deleted')
    return 0


# -- tokens -----------------------------------------------------------------------------------------


async def cmd_tokens_add(args: argparse.Namespace) -> int:
    roles = [r.strip() for r in args.type.split(",") if r.strip()]
    if not roles:
        raise BadParameter("--type needs at least one role, e.g. --type=kube")
    for role in roles:
        if role.lower() != "kube":
            raise BadParameter(f'invalid role "{role}": kubeport tokens support --type=kube')
    ttl = _duration(args.ttl, "--ttl")
    conn = resolve_connection(args)
    async with conn.client() as client:
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


def agent_address(ping: dict[str, Any], used: str, this_host: str | None) -> tuple[str, list[str]]:
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
    if not _is_loopback(host):
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        if not _is_loopback(found):
            return found
    try:
        found = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    return None if _is_loopback(found) else found


async def cmd_tokens_ls(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with conn.client() as client:
        items, _ = await client.list("token", with_secrets=args.with_secrets)
    if args.format == "text":
        if not items:
            print("No active tokens found.")
        else:
            sys.stdout.write(_token_rows(items, True))
    else:
        sys.stdout.write(render.documents(items, args.format))
    return 0


async def cmd_tokens_rm(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with conn.client() as client:
        try:
            await client.delete("token", args.token)
        except NotFound:
            raise NotFound("token not found (it may have expired)") from None
    print(f"Token {mask_token(args.token)} has been deleted")  # the value is a secret: never echoed
    return 0


# -- auth sign, status ------------------------------------------------------------------------------


async def cmd_auth_sign(args: argparse.Namespace) -> int:
    ttl = _duration(args.ttl, "--ttl")
    conn = resolve_connection(args)
    key = generate_private_key()
    async with conn.client() as client:
        result = await client.sign_user(args.user, make_csr(key, args.user), ttl.total_seconds())
    identity = IdentityFile(
        cert_pem=result["cert_pem"].encode(),
        key_pem=key,
        ca_pems=tuple(p.encode() for p in result["ca_pems"]),
        registry=conn.address,
    )
    write_secret_file(args.out, identity.dump())
    expires = identity.identity().expires
    # The registry caps the TTL by the roles' max_session_ttl: say when it really expires.
    until = format_human(expires) if expires else "unknown"
    print(f'The identity of user "{args.user}" has been written to {args.out} (valid until {until}).')
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    conn: Connection = resolve_connection(args)
    async with conn.client() as client:
        ping = await client.ping()
        me = await client.whoami()
    rows = [
        ("Cluster", ping["cluster_name"]),
        ("Version", ping["version"]),
        ("Registry", conn.address),
        ("CA pin", ping["ca_pin"]),
        ("Identity", f"{me['name']} ({me['kind']}), expires {me.get('expires') or 'never'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return 0


# -- parser -----------------------------------------------------------------------------------------


def _global_flags(parser: argparse.ArgumentParser) -> None:
    """Every parser in kpctl's tree takes the connection and debug flags, so they work in any position."""
    add_connection_flags(parser)
    add_debug_flag(parser)


def _group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command group (``tokens``, ``auth``, ``kube``) and its subcommands."""
    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=FLAGS_EPILOG)
    _global_flags(p)
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str, func: Any
) -> argparse.ArgumentParser:
    """A subcommand that talks to the registry: connection and debug flags, and the function to run."""
    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=FLAGS_EPILOG)
    _global_flags(p)
    set_command(p, func)
    return p


FLAGS_EPILOG = (
    "Connection flags (--registry, --identity, --data-dir) and --debug may come before or after the command; "
    "given twice, the last one wins."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpctl",
        description="Administer a kubeport registry: kube_cluster resources, roles, users, join tokens.",
        epilog="On the registry host no flags are needed: kpctl uses the local admin identity. " + FLAGS_EPILOG,
    )
    _global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        return _command(sub, name, help_text, func)

    p = command("create", "create resources from a YAML or JSON file ('-' for stdin)", cmd_create)
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="replace resources that exist (a missing kubeconfig keeps the stored one)",
    )

    p = command("get", "show resources: kube_clusters, kube_servers, roles, users, tokens, events", cmd_get)
    p.add_argument("ref", metavar="KIND[/NAME]")
    p.add_argument("--format", choices=render.FORMATS, default="yaml", help="output format (default: yaml)")
    p.add_argument("--with-secrets", action="store_true", help="include kubeconfigs and token values")
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

    p = command("rm", "delete a resource, e.g. kube_clusters/mycluster", cmd_rm)
    p.add_argument("ref", metavar="KIND/NAME")

    tsub = _group(sub, "tokens", "manage join tokens for agents")

    def tcommand(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        return _command(tsub, name, help_text, func)

    p = tcommand("add", "create a join token for agents", cmd_tokens_add)
    p.add_argument("--type", required=True, help="what the token lets a host join as: kube")
    p.add_argument("--ttl", default="30m", help="how long the token is valid, a Go duration (default 30m)")
    p.add_argument("--value", help="use this value instead of a random one")
    p.add_argument(
        "--format", choices=render.FORMATS, default=None, help="text prints only the token; default prints instructions"
    )
    p = tcommand("ls", "list join tokens (values masked unless --with-secrets)", cmd_tokens_ls)
    p.add_argument("--format", choices=render.FORMATS, default="text")
    p.add_argument("--with-secrets", action="store_true", help="show token values")
    p = tcommand("rm", "delete a join token", cmd_tokens_rm)
    p.add_argument("token", metavar="TOKEN")

    asub = _group(sub, "auth", "issue certificates")
    p = _command(asub, "sign", "write an identity file for a user", cmd_auth_sign)
    p.add_argument("--user", required=True, help="an existing user (kpctl create user.yaml)")
    p.add_argument("--out", "-o", required=True, help="where to write the identity file (mode 0600)")
    p.add_argument("--ttl", default="12h", help="validity, a Go duration (default 12h, max 7 days)")

    command("status", "show the registry's cluster name, version and CA pin", cmd_status)

    ksub = _group(sub, "kube", "Kubernetes cluster diagnostics")
    p = _command(
        ksub,
        "explain",
        "show which agents serve a kube_cluster and, for each that does not, the selector item and label that "
        "failed (or the registration error it reported)",
        kube_cmd.cmd_kube_explain,
    )
    p.add_argument("name", metavar="NAME")
    return parser


async def amain(argv: Sequence[str]) -> int:
    """kpctl inside an existing trio loop (tests drive kpctl's real code path through this)."""
    args = parse_command_line(build_parser(), argv)
    return await guarded(args.func, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
