"""A logged-in user's kube commands: ``kubeport kube ls``, ``kube login NAME|--all``, ``kube logout [NAME]``
and ``kube credentials`` (the kubectl exec plugin, in :mod:`registry.cli.kube_credentials`).

They work from the login profile ``kubeport login`` saved (``registry.cli.profile``) and ask the registry
``GET /v1/kube_clusters`` which clusters the user's *current* roles reach (``registry.server.kube_clusters``).

How the user view and the admin/agent view of ``kube ls`` coexist (:func:`cmd_kube_ls`):

* the user view when a login profile is current and the command names no other identity (no
  ``--identity``, ``--registry`` or ``--data-dir``, no ``$KUBEPORT_IDENTITY``): seed 003's columns
  ``Kube Cluster Name  Labels  Selected``, exactly the clusters the user may reach, ``*`` on the cluster of
  the current kubeconfig context when that context is one kube login wrote;
* otherwise the admin/agent view of :mod:`registry.cli.kube_cmd` (every served cluster, with health), as
  before; admins also have ``kpctl get kube_servers``.

``kube login`` writes through :mod:`registry.cli.kubeconfig_user` (kubectl's merge rules, atomic, 0600,
never clobbering others' entries). A cluster the user may not reach is refused exactly like one that does
not exist (the same ``Kubernetes cluster "NAME" not found``), so names are not leaked.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from registry.cli import kube_cmd, kube_credentials, render
from registry.cli import kubeconfig_user as kc
from registry.cli.kpctl.auth import front_door_address
from registry.cli.profile import KubeportHome, Login, NotLoggedIn, require_fresh
from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import BadParameter, ConnectionProblem, KubeportError
from registry.core.kube_access import cluster_not_found
from registry.core.kube_route import cluster_prefix
from registry.core.wire import KubeAccessView
from registry.host.cmdline import flag_value

T = TypeVar("T")
SEED_LOGIN_LINE = "Logged into kubernetes cluster \"{name}\". Try 'kubectl version' to test the connection."


# -- shared with session_cmd -----------------------------------------------------------------------------------


def fresh_login(home: KubeportHome | None = None) -> Login:
    return require_fresh((home or KubeportHome()).load(), datetime.now(tz=UTC))


async def with_registry(login: Login, call: Callable[[RegistryClient], Awaitable[T]]) -> T:
    """``call`` with a client for the login's certificate, trying each registry address of the profile in
    order until one answers."""
    problems: list[str] = []
    for address in login.profile.registries:
        try:
            async with RegistryClient.from_identity(login.identity, address) as client:
                return await call(client)
        except ConnectionProblem as exc:
            problems.append(exc.message)
    raise ConnectionProblem("; ".join(problems) or "the profile names no registry")


def uses_login(args: argparse.Namespace, env: dict[str, str] | None = None) -> bool:
    """Whether ``kube ls`` shows the user view (module docstring)."""
    env = dict(os.environ) if env is None else env
    if any(getattr(args, flag, None) for flag in ("registry", "identity", "data_dir")) or env.get("KUBEPORT_IDENTITY"):
        return False
    try:
        return KubeportHome().current_name() is not None
    except KubeportError:
        return True  # a broken profile: the user view reports it (one ERROR line naming the file)


def selected_kube_cluster(cluster: str) -> tuple[str | None, str | None]:
    """The kube cluster of the current context (when ours), and a warning when the kubeconfig is unreadable."""
    path = kc.kubeconfig_path()
    try:
        return kc.current_kube_cluster(kc.read_kubeconfig(path), cluster), None
    except KubeportError as exc:
        return None, f"cannot tell the selected cluster: {exc.message}"


# -- kube ls -----------------------------------------------------------------------------------------------------


async def cmd_kube_ls(args: argparse.Namespace) -> int:
    if not uses_login(args):
        return await kube_cmd.cmd_kube_ls(args)
    login = fresh_login()
    view: KubeAccessView = await with_registry(login, lambda client: client.kube_access())
    selected, warning = selected_kube_cluster(login.profile.cluster)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.format in ("json", "yaml"):
        items = [
            {
                "kube_cluster_name": item["name"],
                "labels": item["labels"],
                "health": item["health"],
                "selected": item["name"] == selected,
            }
            for item in view["items"]
        ]
        sys.stdout.write(render.dump_json(items) if args.format == "json" else codec.dump_yaml([{"items": items}]))
        return 0
    rows = [
        [
            item["name"],
            render.labels_cell(item["labels"], verbose=args.verbose, sep=" "),
            "*" if item["name"] == selected else "",
        ]
        for item in view["items"]
    ]
    sys.stdout.write(render.table(["Kube Cluster Name", "Labels", "Selected"], rows))
    return 0


# -- kube login / logout ----------------------------------------------------------------------------------------


def _ca_data(login: Login) -> str:
    pems = login.identity.ca_pems
    return base64.b64encode(b"".join(p if p.endswith(b"\n") else p + b"\n" for p in pems)).decode()


async def cmd_kube_login(args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.all):
        raise BadParameter("name one kube cluster, or pass --all (see kubeport kube ls)")
    login = fresh_login()

    async def ask(client: RegistryClient) -> tuple[KubeAccessView, dict[str, Any]]:
        return await client.kube_access(), dict(await client.ping())

    view, ping = await with_registry(login, ask)
    allowed = [item["name"] for item in view["items"]]
    if args.all:
        names = allowed
        if not names:
            print("No kubernetes cluster is reachable for you yet (kubeport kube ls lists them).", file=sys.stderr)
            return 1
    else:
        if args.name not in allowed:
            raise cluster_not_found(args.name)  # not reachable and not existing answer alike
        names = [args.name]
    if not ping.get("kube_public_addr") and login.profile.kube_public_addr:
        ping["kube_public_addr"] = login.profile.kube_public_addr
    front_door, notes = front_door_address(ping, login.profile.registries[0], None)
    ca_data = _ca_data(login)
    entries = [kc.KubeEntry(name, f"https://{front_door}{cluster_prefix(name)}", ca_data) for name in names]
    path = kc.kubeconfig_path()
    kc.update(
        path,
        lambda doc: kc.add_entries(
            doc, registry_cluster=login.profile.cluster, entries=entries, current=names[0], source=str(path)
        ),
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for name in names:
        print(SEED_LOGIN_LINE.format(name=render.escape(name)))
    if args.all:
        print(f"Current context: {kc.context_name(login.profile.cluster, names[0])}")
    return 0


def current_cluster_name(home: KubeportHome | None = None) -> str:
    """The registry cluster of the current profile, even when its login expired (logout still works)."""
    name = (home or KubeportHome()).current_name()
    if name is None:
        raise NotLoggedIn("not logged in: nothing to log out of")
    return name


async def cmd_kube_logout(args: argparse.Namespace) -> int:
    cluster = current_cluster_name()
    path = kc.kubeconfig_path()
    removed = kc.update(path, lambda doc: kc.remove_entries(doc, registry_cluster=cluster, kube_cluster=args.name))
    if not removed:
        print("No kubernetes cluster logged into; nothing to remove.")
    for name in removed:
        print(f'Logged out of kubernetes cluster "{render.escape(name)}".')
    return 0


async def cmd_kube_credentials(args: argparse.Namespace) -> int:
    # Normally registry.cli.entry runs the plugin before importing this module (speed); this is the same
    # plugin when flags before "kube" sent the command line through the full parser.
    return kube_credentials.emit(args.cluster, out=sys.stdout, err=sys.stderr)


def register(
    ksub: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    common: Callable[[argparse.ArgumentParser], None],
    set_command: Callable[[argparse.ArgumentParser, Callable[[argparse.Namespace], Awaitable[int]]], None],
) -> None:
    """Add ``kube login``, ``kube logout`` and ``kube credentials`` to the ``kube`` group (``common`` adds
    the global flags every kubeport parser takes)."""
    p = ksub.add_parser(
        "login",
        help="add a kubeconfig context for a cluster you may reach, and switch to it",
        description="Write a context for kube cluster NAME (or every one you may reach with --all) into "
        "$KUBECONFIG's first file or ~/.kube/config, named <registry cluster>-<kube cluster>, and make it "
        "current. Credentials come from your kubeport login through the exec plugin 'kubeport kube "
        "credentials', so a new 'kubeport login' refreshes every context.",
    )
    common(p)
    p.add_argument("name", nargs="?", metavar="NAME", type=flag_value("NAME"), help="a cluster from kubeport kube ls")
    p.add_argument("--all", action="store_true", help="every cluster you may reach")
    set_command(p, cmd_kube_login)
    p = ksub.add_parser(
        "logout",
        help="remove the kubeconfig entries kube login wrote",
        description="Remove the context, cluster (and, when unused, user) entries kube login wrote for NAME, "
        "or for every cluster of the current login; other entries are kept.",
    )
    common(p)
    p.add_argument("name", nargs="?", metavar="NAME", type=flag_value("NAME"), help="default: every cluster")
    set_command(p, cmd_kube_logout)
    p = ksub.add_parser(
        "credentials",
        help="kubectl's exec credential plugin (written by kube login; not for humans)",
        description="Print an ExecCredential with the current login's certificate; exit 1 with 'run kubeport "
        "login' when the login is missing or expired.",
    )
    common(p)
    kube_credentials.add_arguments(p)
    set_command(p, cmd_kube_credentials)
