"""``kubeport status`` and ``kubeport logout``: the user's session as a whole (issue 10 §1).

``status`` shows, like ``tsh status``: the registry cluster and address, the user, the roles, the
Kubernetes groups and users those roles grant, the certificate's expiry and the current kube cluster (the
current kubeconfig context, when kube login wrote it). Roles, groups and users come from the registry
(``GET /v1/kube_clusters``: the roles in effect *now*, a removed role no longer shows); when the registry
cannot be reached, the certificate's own roles are shown with a warning. An expired login is shown as
expired (with the command to log in again) and exits 1, without asking the registry.

``logout`` forgets every login (``--cluster NAME``: only that one), as ``tsh logout`` does: first every
kubeconfig entry kubeport wrote for that registry cluster (all contexts whose user is our exec plugin for
it, their clusters and the user entry; :func:`registry.cli.kubeconfig_user.remove_entries`), then the key,
certificate and profile. A kubeconfig that cannot be updated does not keep the credentials: they are
removed anyway and the problem is reported (exit 1); contexts left behind then fail with "run kubeport
login".
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from registry.cli import kube_user, render
from registry.cli import kubeconfig_user as kc
from registry.cli.profile import KubeportHome, Login, NotLoggedIn, login_hint
from registry.core import codec
from registry.core.errors import ConnectionProblem, KubeportError
from registry.core.timefmt import format_human, format_rfc3339
from registry.host.cmdline import flag_value


def _remaining(expires: datetime, now: datetime) -> str:
    seconds = int((expires - now).total_seconds())
    if seconds <= 0:
        return "EXPIRED"
    hours, rest = divmod(seconds, 3600)
    return f"valid for {hours}h{rest // 60}m"


async def _status_data(login: Login, now: datetime) -> tuple[dict[str, Any], str | None]:
    profile = login.profile
    me = login.identity.identity()
    selected, warning = kube_user.selected_kube_cluster(profile.cluster)
    data: dict[str, Any] = {
        "cluster": profile.cluster,
        "registry": list(profile.registries),
        "user": profile.user,
        "auth": profile.auth,
        "roles": list(me.roles),
        "kubernetes_groups": None,
        "kubernetes_users": None,
        "kube_cluster": selected,
        "valid_until": format_rfc3339(login.expires),
        "expired": login.expired(now),
    }
    if login.expired(now):
        return data, warning
    try:
        view = await kube_user.with_registry(login, lambda client: client.kube_access())
    except ConnectionProblem as exc:
        return data, f"the registry could not be reached ({exc.message}): roles shown are the certificate's"
    data.update(
        roles=view["roles"], kubernetes_groups=view["kubernetes_groups"], kubernetes_users=view["kubernetes_users"]
    )
    return data, warning


def _text(data: dict[str, Any], login: Login, now: datetime) -> str:
    kube = "enabled" if data["kubernetes_groups"] or data["kubernetes_users"] else "disabled"
    lines = [
        f"> Profile:            {data['cluster']} (registry {', '.join(data['registry'])})",
        f"  Logged in as:       {data['user']}" + (f" (via {data['auth']})" if data["auth"] != "local" else ""),
        f"  Roles:              {', '.join(data['roles']) or '(none)'}",
    ]
    if data["kubernetes_groups"] is not None:
        lines += [
            f"  Kubernetes:         {kube}",
            f"  Kubernetes users:   {', '.join(data['kubernetes_users']) or '(your user name)'}",
            f"  Kubernetes groups:  {', '.join(data['kubernetes_groups']) or '(none)'}",
        ]
    if data["kube_cluster"]:
        lines.append(f'  Kubernetes cluster: "{data["kube_cluster"]}"')
    lines.append(f"  Valid until:        {format_human(login.expires)} [{_remaining(login.expires, now)}]")
    return "".join(render.escape(line) + "\n" for line in lines)


async def cmd_status(args: argparse.Namespace) -> int:
    home = KubeportHome()
    login = home.load(args.cluster)
    now = datetime.now(tz=UTC)
    data, warning = await _status_data(login, now)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.format in ("json", "yaml"):
        sys.stdout.write(render.dump_json(data) if args.format == "json" else codec.dump_yaml([data]))
    else:
        sys.stdout.write(_text(data, login, now))
    if data["expired"]:
        print(f"ERROR: your login expired: run {login_hint(login.profile)}", file=sys.stderr)
        return 1
    return 0


async def cmd_logout(args: argparse.Namespace) -> int:
    home = KubeportHome()
    names = [args.cluster] if args.cluster else home.names()
    if not names:
        raise NotLoggedIn("not logged in: nothing to log out of")
    path = kc.kubeconfig_path()
    problems: list[str] = []
    for cluster in names:
        try:
            kc.update(path, functools.partial(kc.remove_entries, registry_cluster=cluster, kube_cluster=None))
        except KubeportError as exc:
            problems.append(f"kubeconfig entries for {cluster} were not removed: {exc.message}")
        profile = home.remove(cluster)
        if profile is None:
            problems.append(f"not logged in to {cluster}")
            continue
        print(f"Logged out {render.escape(profile.user)} from {render.escape(cluster)}.")
    if problems:
        print(f"ERROR: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    common: Callable[[argparse.ArgumentParser], None],
    set_command: Callable[[argparse.ArgumentParser, Callable[[argparse.Namespace], Awaitable[int]]], None],
) -> None:
    """Add ``kubeport status`` and ``kubeport logout``."""
    p = sub.add_parser(
        "status",
        help="your login: user, roles, Kubernetes groups and users, expiry, current kube cluster",
        description="Show the current login (kubeport login): user, roles in effect, the Kubernetes groups and "
        "users they grant, certificate expiry and the current kube cluster. Exit 1 when it expired.",
    )
    common(p)
    p.add_argument(
        "--cluster",
        metavar="NAME",
        type=flag_value("--cluster"),
        help="a registry cluster's login (default: the current one)",
    )
    p.add_argument("--format", choices=render.FORMATS, default="text")
    set_command(p, cmd_status)
    p = sub.add_parser(
        "logout",
        help="forget your logins and remove every kubeconfig entry kubeport wrote",
        description="Remove the certificate, key and profile of every login (or --cluster NAME's) and every "
        "kubeconfig entry kube login wrote for it; other kubeconfig entries are kept.",
    )
    common(p)
    p.add_argument("--cluster", metavar="NAME", type=flag_value("--cluster"), help="only this registry cluster's login")
    set_command(p, cmd_logout)
