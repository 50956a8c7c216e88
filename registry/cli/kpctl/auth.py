"""kpctl auth sign: credentials for a user, signed by the registry's CA, as an identity file (the default) or
as a kubeconfig for kubectl (``--format=kubernetes``, seed 000's ``tctl auth sign --format=kubernetes``).

The kubeconfig (:func:`kubeconfig_document`) embeds everything (``*-data`` fields, no file references): the
user's certificate and key, and the registry CA that issues the front door's TLS certificate. It has one
cluster and one context per kube cluster the user's roles allow *now* (:func:`reachable_clusters`: served by
some agent, like ``kube ls``, and selected by ``kube_access.cluster_visible`` with the labels of a heartbeat:
static ∪ dynamic), contexts named ``<kubeport cluster>-<kube cluster>`` as tsh names them, each cluster's
``server`` = ``https://<front door>`` + :func:`registry.core.kube_route.cluster_prefix`. One user entry
serves every context: the front door routes by path and decides with the user's current roles on every
request, so the list of contexts is a convenience fixed at signing time, never a grant.

Decisions:

* ``current-context`` is ``--kube-cluster`` when given (an error, before anything is signed, when no agent
  serves it or the roles do not select it), else the first context by name.
* No cluster reachable yet: the credentials are still written (a kubeconfig with the user and no contexts)
  and a note says so; exit 0. Teleport's ``tctl auth sign`` also writes without a kube cluster, and the
  certificate stays valid for clusters added later (sign again to get their contexts).
* The front door address: ``--kube-public-addr``, else the registry's ``kube_public_addr`` from
  ``/v1/ping``, else the registry's host with port 3026 and a note (a registry that serves no front door yet).
* The TTL asked for is capped by the strictest ``max_session_ttl`` of the user's roles (the registry caps it);
  the real expiry is printed. Files are written 0600, atomically (``write_secret_file``); no secret is
  printed.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from registry.cli.kpctl.flags import SubParsers, command, duration, group
from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import BadParameter, KubeportError, NotFound
from registry.core.identity import generate_private_key, make_csr
from registry.core.identity_file import IdentityFile
from registry.core.kube_listing import visible_clusters
from registry.core.kube_route import cluster_prefix
from registry.core.netaddr import format_hostport, parse_hostport
from registry.core.resources import KubeServer, Role, User
from registry.core.timefmt import format_human
from registry.core.validation import quote
from registry.host.cmdline import resolve_connection
from registry.host.files import write_secret_file

SIGN_FORMATS = ("identity", "kubernetes")
DEFAULT_FRONT_DOOR_PORT = 3026  # the front door's default --kube-listen port (Teleport's kube_listen_addr)
_WILDCARD_HOSTS = ("0.0.0.0", "::")  # listen addresses: not ones kubectl can connect to


# -- pure parts (tested without a registry) ----------------------------------------------------------------


def reachable_clusters(user: User, roles: Sequence[Role], servers: Iterable[KubeServer]) -> tuple[list[str], set[str]]:
    """``(allowed, served)``: the names of the clusters some agent serves whose labels (static ∪ dynamic, from
    a heartbeat) ``roles`` select for ``user``, sorted; and every served name.

    With several agents serving one cluster, a cluster is allowed when any heartbeat's labels select it (the
    front door decides per connection with the labels it sees; this list only names contexts).
    """
    servers = list(servers)
    allowed = [cluster.name for cluster in visible_clusters(user, roles, {}, servers)]
    return allowed, {server.name for server in servers}


def front_door_address(ping: Mapping[str, Any], registry_address: str, override: str | None) -> tuple[str, list[str]]:
    """The ``host:port`` kubeconfigs name for the front door, and notes for the admin (module docstring)."""
    if override:
        return _dialable(override, "--kube-public-addr"), []
    public = ping.get("kube_public_addr")
    notes: list[str] = []
    if isinstance(public, str) and public:
        try:
            return _dialable(public, "the registry's kube_public_addr"), []
        except BadParameter as err:
            notes.append(f"{err.message}; ignored")
    host, _ = parse_hostport(registry_address, default_port=3025, what="the registry address")
    address = format_hostport(host, DEFAULT_FRONT_DOOR_PORT)
    notes.append(
        f"the registry does not report a Kubernetes front door address (kube_public_addr): the kubeconfig names "
        f"{address} (the registry's host, port {DEFAULT_FRONT_DOOR_PORT}); pass --kube-public-addr HOST:PORT if "
        "kubectl must use another address"
    )
    return address, notes


def _dialable(value: str, what: str) -> str:
    host, port = parse_hostport(value, default_port=DEFAULT_FRONT_DOOR_PORT, what=what)
    if host in _WILDCARD_HOSTS or port == 0:
        raise BadParameter(f"{what} {quote(value)} is a listen address, not one kubectl can connect to")
    return format_hostport(host, port)


def context_name(kubeport_cluster: str, kube_cluster: str) -> str:
    """tsh's context name: ``<kubeport cluster name>-<kube cluster name>``."""
    return f"{kubeport_cluster}-{kube_cluster}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig_document(
    *,
    kubeport_cluster: str,
    user: str,
    clusters: Sequence[str],
    current: str | None,
    front_door: str,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pems: Sequence[bytes],
) -> dict[str, Any]:
    """The kubeconfig as a mapping: one cluster + context per name in ``clusters``, one user, all embedded."""
    auth_info = context_name(kubeport_cluster, user)
    ca_data = _b64(b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in ca_pems))
    entries = [(context_name(kubeport_cluster, name), name) for name in clusters]
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": context,
                "cluster": {
                    "server": f"https://{front_door}{cluster_prefix(name)}",
                    "certificate-authority-data": ca_data,
                },
            }
            for context, name in entries
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": auth_info}} for context, _ in entries],
        "current-context": context_name(kubeport_cluster, current) if current else "",
        "users": [
            {"name": auth_info, "user": {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)}}
        ],
    }


# -- the command -------------------------------------------------------------------------------------------


async def _sign(client: RegistryClient, user: str, ttl: timedelta) -> tuple[IdentityFile, datetime | None]:
    key = generate_private_key()
    result = await client.sign_user(user, make_csr(key, user), ttl.total_seconds())
    identity = IdentityFile(
        cert_pem=result["cert_pem"].encode(), key_pem=key, ca_pems=tuple(p.encode() for p in result["ca_pems"])
    )
    return identity, identity.identity().expires


async def _user_roles_servers(client: RegistryClient, name: str) -> tuple[User, list[Role], list[KubeServer]]:
    try:
        raw_user = await client.get("user", name)
    except NotFound:
        raise NotFound(f"user {quote(name)} not found; create it first with kpctl users add") from None
    user = codec.resource_from_dict(raw_user)
    assert isinstance(user, User)
    role_items, _ = await client.list("role")
    by_name = {str(item["metadata"]["name"]): item for item in role_items}
    roles: list[Role] = []
    for role_name in user.roles:  # a role that no longer exists grants nothing (as the registry reads it)
        if role_name in by_name:
            role = codec.resource_from_dict(by_name[role_name])
            assert isinstance(role, Role)
            roles.append(role)
    server_items, _ = await client.list("kube_server")
    servers: list[KubeServer] = []
    for item in server_items:
        try:
            server = codec.resource_from_dict(item)
        except KubeportError as err:  # a heartbeat this kpctl cannot read names no context
            print(f"warning: skipping a kube_server: {err.message}", file=sys.stderr)
            continue
        assert isinstance(server, KubeServer)
        servers.append(server)
    return user, roles, servers


async def cmd_auth_sign(args: argparse.Namespace) -> int:
    ttl = duration(args.ttl, "--ttl")
    if args.format != "kubernetes":
        for flag, value in (("--kube-cluster", args.kube_cluster), ("--kube-public-addr", args.kube_public_addr)):
            if value:
                raise BadParameter(f"{flag} is only valid with --format=kubernetes")
        return await _sign_identity(args, ttl)
    return await _sign_kubeconfig(args, ttl)


async def _sign_identity(args: argparse.Namespace, ttl: timedelta) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        signed, expires = await _sign(client, args.user, ttl)
    identity = IdentityFile(signed.cert_pem, signed.key_pem, signed.ca_pems, registry=conn.address)
    write_secret_file(args.out, identity.dump())
    # The registry caps the TTL by the roles' max_session_ttl: say when it really expires.
    until = format_human(expires) if expires else "unknown"
    print(f"The identity of user {quote(args.user)} has been written to {args.out} (valid until {until}).")
    return 0


async def _sign_kubeconfig(args: argparse.Namespace, ttl: timedelta) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        ping = await client.ping()
        front_door, notes = front_door_address(ping, conn.address, args.kube_public_addr)
        user, roles, servers = await _user_roles_servers(client, args.user)
        allowed, served = reachable_clusters(user, roles, servers)
        current = allowed[0] if allowed else None
        if args.kube_cluster:
            current = args.kube_cluster
            if current not in served:
                known = ", ".join(sorted(served)) or "none yet"
                raise NotFound(
                    f"kubernetes cluster {quote(current)} is not served by any agent (served clusters: {known}; "
                    "see kubeport kube ls)"
                )
            if current not in allowed:
                raise BadParameter(
                    f"user {quote(user.name)} may not reach kubernetes cluster {quote(current)}: none of its roles "
                    f"({', '.join(user.roles) or 'none'}) selects it by kubernetes_labels"
                )
        asked_until = datetime.now(tz=UTC) + ttl
        signed, expires = await _sign(client, user.name, ttl)
    document = kubeconfig_document(
        kubeport_cluster=str(ping["cluster_name"]),
        user=user.name,
        clusters=allowed,
        current=current,
        front_door=front_door,
        cert_pem=signed.cert_pem,
        key_pem=signed.key_pem,
        ca_pems=signed.ca_pems,
    )
    write_secret_file(args.out, yaml.safe_dump(document, sort_keys=False).encode())
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"The credentials have been written to {args.out}")
    if expires is not None:
        capped = " (capped by the roles' max_session_ttl)" if expires < asked_until - timedelta(minutes=1) else ""
        print(f"  user {quote(user.name)}, valid until {format_human(expires)}{capped}")
    if allowed:
        contexts = [
            context_name(str(ping["cluster_name"]), n) + (" (current)" if n == current else "") for n in allowed
        ]
        print(f"  contexts: {', '.join(contexts)}")
        print(f"  try: kubectl --kubeconfig {args.out} get pods")
    else:
        print(
            f"note: no kubernetes cluster is reachable for user {quote(user.name)} yet (none that an agent serves is "
            "selected by its roles' kubernetes_labels); the credentials stay valid: sign again once one is, to get "
            "its context",
            file=sys.stderr,
        )
    return 0


def add_commands(sub: SubParsers) -> None:
    asub = group(sub, "auth", "issue certificates")
    p = command(
        asub,
        "sign",
        "write credentials for a user: an identity file (default, for kpctl/kubeport) or a kubeconfig for kubectl",
        cmd_auth_sign,
    )
    p.add_argument("--user", required=True, help="an existing user (kpctl users add)")
    p.add_argument("--out", "-o", required=True, help="where to write the file (mode 0600, replaced atomically)")
    p.add_argument(
        "--ttl",
        default="12h",
        help="validity, a Go duration (default 12h, max 7 days; the roles' max_session_ttl caps it)",
    )
    p.add_argument(
        "--format",
        choices=SIGN_FORMATS,
        default="identity",
        help="identity (the default): a kubeport identity file for kpctl --identity; kubernetes: a kubeconfig with "
        "one context per kube cluster the user's roles allow, certificate, key and CA embedded",
    )
    p.add_argument(
        "--kube-cluster",
        metavar="NAME",
        help="with --format=kubernetes: the current context's cluster (default: the first allowed cluster by name)",
    )
    p.add_argument(
        "--kube-public-addr",
        metavar="HOST:PORT",
        help="with --format=kubernetes: the front door address kubectl connects to (default: the registry's "
        f"kube_public_addr, else the registry host with port {DEFAULT_FRONT_DOOR_PORT})",
    )
