"""kubeport: the daemons and the user side.

    kubeport start [--data-dir DIR] [--listen HOST:PORT]      all-in-one: registry + front door + a local agent
                   [--kube-listen HOST:PORT] [--kube-public-addr HOST:PORT] [--kube-tunnel-addr HOST:PORT]
    kubeport registry start [--data-dir DIR] [--listen ...]   the registry alone
                   [--store etcd://HOST:PORT,... --etcd-prefix P --etcd-ca/--etcd-cert/--etcd-key FILE]
                   [--config FILE]                            the same settings in a YAML file (flags win)
    kubeport registry migrate --to etcd://HOST:PORT,... [--from sqlite:///path] [--etcd-prefix P]
                   [--config FILE]                            a stopped registry's SQLite store into etcd
    kubeport configure --registry=HOST:PORT --token=T -o FILE write an agent configuration
    kubeport agent start -c FILE                              run an agent
    kubeport install systemd [-o FILE] [--bot -c bot.yaml]    a systemd unit for the agent (or the bot)
    kubeport bot start -c bot.yaml [--oneshot]                 a bot: keeps a kubeconfig fresh (machine identity)
    kubeport kube ls [-v] [--format text|json|yaml]           clusters you may reach (logged in), else served
    kubeport kube login NAME|--all / kube logout [NAME]       kubeconfig contexts for your login (kube_user.py)
    kubeport status / kubeport logout                         your login (session_cmd.py)
    kubeport signup --registry HOST:PORT --token T            a local user sets a password + one-time code
    kubeport login --registry HOST:PORT --user NAME           password + code (or --auth=CONNECTOR) -> a certificate

This module is the composition root: the only place allowed to import both the registry server and the
agent (DESIGN.md, dependency direction).
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from agent import cli as agent_cli
from agent.config import AgentConfig, parse_config
from agent.config_render import render_config
from agent.identity import IDENTITY_FILE
from agent.service import Agent
from registry.cli import kube_user, login_cmd, render, session_cmd
from registry.cli.bot import cli as bot_cli
from registry.client import RegistryClient
from registry.core.errors import BadParameter
from registry.core.netaddr import parse_hostport
from registry.frontdoor.run import DEFAULT_KUBE_LISTEN, run_frontdoor
from registry.host.cmdline import (
    StopSignals,
    add_connection_flags,
    add_data_dir_flag,
    add_debug_flag,
    add_metrics_flag,
    flag_value,
    parse_command_line,
    run_command,
    set_command,
)
from registry.host.paths import default_data_dir
from registry.server import migrate
from registry.server.local_auth import SECOND_FACTOR_OFF_WARNING, SECOND_FACTORS
from registry.server.registry_config import load_registry_config
from registry.server.serve import DEFAULT_LISTEN, DEFAULT_PORT, Companion, RegistryInfo, serve_registry
from registry.server.store_config import DEFAULT_PREFIX, StoreConfig


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()


def _frontdoor(args: argparse.Namespace) -> Companion:
    """The Kubernetes front door, run by the registry process beside its API."""
    return functools.partial(
        run_frontdoor, listen=args.kube_listen, public_addr=args.kube_public_addr, tunnel_addr=args.kube_tunnel_addr
    )


def _print_registry_banner(info: RegistryInfo, *, all_in_one: bool) -> None:
    what = "kubeport (registry + agent)" if all_in_one else "kubeport registry"
    print(f'{what} for cluster "{info.cluster_name}" is running on {info.address}')
    print(f"  data dir:        {info.data_dir}")
    print(f"  admin identity:  {info.admin_identity}  (kpctl on this host uses it automatically)")
    print(f"  CA pin:          {info.ca_pin}")
    if info.kube_address:
        print(f"  kube front door: {info.kube_address}  (kubectl reaches every cluster here)")
    print()
    print("Try, in another terminal:")
    print("  kpctl status")
    print("  kpctl create kube_cluster.yaml          # see README: register a cluster")
    print("  kpctl get kube_clusters --format text")
    if all_in_one:
        print("  kubeport kube ls                        # what the local agent serves")
    print("  kpctl tokens add --type=kube --ttl=1h    # to join agents on other hosts")
    print()
    print("kubectl through kubeport (seed 003's kube-access role, see README: access):")
    print("  kpctl create -f kube-access.yaml")
    print("  kpctl users add alice --roles=kube-access")
    print("  kpctl auth sign --user=alice --format=kubernetes --out=kubeconfig --ttl=25h")
    print("  kubectl --kubeconfig kubeconfig get pods")
    print()
    print("Press Ctrl-C to stop.", flush=True)


def _warn_second_factor(args: argparse.Namespace) -> None:
    if args.second_factor == "off":
        print(f"WARNING: {SECOND_FACTOR_OFF_WARNING}", file=sys.stderr, flush=True)


class _Default(str):
    """A flag's default value, told apart from the same text given on the command line: ``--config`` fills
    a setting the user did not give as a flag (flags override the file, the file overrides defaults).
    argparse keeps the object as is (``flag_value`` and the identity type return their argument)."""


CONFIG_HELP = (
    "a YAML file with the settings below, in Teleport's shape (teleport.data_dir, teleport.diag_addr, "
    "teleport.storage: {type: sqlite|etcd, peers, prefix, tls_ca_file, tls_cert_file, tls_key_file}, "
    "auth_service.listen_addr/public_addr/authentication.second_factor, proxy_service.kube_listen_addr/"
    "kube_public_addr/tunnel_public_addr; README: etcd backend); flags given on the command line override it"
)


_STORAGE_DESTS = frozenset({"store", "etcd_prefix", "etcd_ca", "etcd_cert", "etcd_key"})


def _apply_config(args: argparse.Namespace, *, all_in_one: bool) -> None:
    """Fill the settings the command line left unset (still their :class:`_Default`) from ``--config FILE``."""
    if getattr(args, "config", None):
        config = load_registry_config(args.config)
        values = config.values()
        if all_in_one:
            for dest, what in (("store", "teleport.storage"), ("public_addr", "auth_service.public_addr")):
                if dest in values and values[dest] != "sqlite":
                    raise BadParameter(
                        f"{config.source}: {what}: kubeport start runs on this host's SQLite store only; "
                        "use kubeport registry start --config for it"
                    )
        if not isinstance(getattr(args, "store", None), _Default | None):
            # --store on the command line replaces the file's whole storage section, not just its type.
            values = {k: v for k, v in values.items() if k not in _STORAGE_DESTS}
        for dest, value in values.items():
            current = getattr(args, dest, None)
            if current is None or isinstance(current, _Default):
                setattr(args, dest, value)


def _store_flags(p: argparse.ArgumentParser, *, flag: str = "--store") -> None:
    """``--store`` and the etcd flags of ``registry start`` (README: etcd backend); ``registry migrate`` names
    its target with the same flags, ``--to`` for ``--store``."""
    g = p.add_argument_group("store")
    g.add_argument(
        flag,
        dest="store",
        metavar="STORE",
        type=flag_value(flag),
        default=_Default("sqlite"),
        help="sqlite (default: registry.db in the data dir) or etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster "
        "several registries share; everything is sealed with DATA_DIR/etcd.key, which every replica needs)",
    )
    g.add_argument(
        "--etcd-prefix",
        metavar="PREFIX",
        type=flag_value("--etcd-prefix"),
        default=_Default(DEFAULT_PREFIX),
        help=f"etcd key prefix of this kubeport cluster, so several can share one etcd (default {DEFAULT_PREFIX})",
    )
    g.add_argument("--etcd-ca", metavar="FILE", type=flag_value("--etcd-ca"), help="CA (PEM) to verify etcd with")
    g.add_argument("--etcd-cert", metavar="FILE", type=flag_value("--etcd-cert"), help="client certificate for etcd")
    g.add_argument("--etcd-key", metavar="FILE", type=flag_value("--etcd-key"), help="its private key")


def _store_config(args: argparse.Namespace) -> StoreConfig:
    def path(value: str | None) -> Path | None:
        return Path(value).expanduser() if value else None

    return StoreConfig(
        store=args.store,
        etcd_prefix=args.etcd_prefix,
        etcd_ca=path(args.etcd_ca),
        etcd_cert=path(args.etcd_cert),
        etcd_key=path(args.etcd_key),
    ).check()


async def cmd_registry_start(args: argparse.Namespace) -> int:
    _apply_config(args, all_in_one=False)
    stop = StopSignals()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop.watch, nursery.cancel_scope)
        info: RegistryInfo = await nursery.start(
            lambda task_status: serve_registry(
                data_dir=_data_dir(args),
                listen=args.listen,
                public_addrs=tuple(args.public_addr or ()),
                store_config=_store_config(args),
                companions=[_frontdoor(args)],
                metrics_listen=args.metrics_listen,
                second_factor=args.second_factor,
                task_status=task_status,
            )
        )
        # What the start loaded (modules, CA, store, caches) lives as long as the process: keep it out of
        # the collector's full scans, which otherwise paused every watch line and request 40-90 ms every
        # few seconds under load (the 100-watcher p99). The agent daemons do the same once synced.
        gc.collect()
        gc.freeze()
        stop.started = True
        _print_registry_banner(info, all_in_one=False)
        _warn_second_factor(args)
    return stop.exit_code()


MIGRATE_CONFIG_HELP = (
    "the registry's config file (the one registry start --config reads): its teleport.data_dir is the data dir "
    "and its teleport.storage (type: etcd, peers, prefix, tls_*_file) the target; its other keys are checked "
    "and not used; flags given on the command line override it"
)


def _migrate_target(args: argparse.Namespace) -> StoreConfig:
    """``registry migrate``'s target: ``--to`` and the etcd flags, else ``--config FILE``'s storage section."""
    from_flag = not isinstance(args.store, _Default)
    _apply_config(args, all_in_one=False)
    if isinstance(args.store, _Default):
        raise BadParameter(
            "registry migrate needs a target: --to etcd://HOST:PORT[,HOST:PORT...] or --config FILE with "
            "teleport.storage type etcd"
        )
    if not from_flag and args.store == "sqlite":
        raise BadParameter(
            f"{args.config}: teleport.storage is the SQLite store; a migration needs an etcd target there "
            "(type: etcd, peers: [...]) or --to etcd://HOST:PORT"
        )
    return _store_config(args)


async def cmd_registry_migrate(args: argparse.Namespace) -> int:
    """``kubeport registry migrate``: the SQLite store into an empty etcd prefix (registry/server/migrate.py)."""
    report = await migrate.migrate_sqlite_to_etcd(args.source, _migrate_target(args), _data_dir(args))
    for kind, count in sorted(report.counts.items()):
        print(f"  {kind:<24} {count}")
    print(f"migrated {report.total} records to {report.target}")
    if args.config:
        print(f"start the registry on it with the same file: kubeport registry start --config {args.config}")
    else:
        print("start the registry on it with the same --data-dir (it holds etcd.key) and --store/--etcd-* flags")
    return 0


async def local_agent_config(info: RegistryInfo, allowed_label_commands: Sequence[str] = ()) -> AgentConfig:
    """The all-in-one's agent: serves every kube_cluster (``"*": "*"``), state in DATA_DIR/agent. It joins
    with a short-lived token the first time only; later starts reuse its identity. It runs no dynamic-label
    program unless ``--allow-label-command`` names it (kubernetes_service.allowed_label_commands)."""
    agent_dir = info.data_dir / "agent"
    token = None
    if not (agent_dir / IDENTITY_FILE).exists():
        async with RegistryClient.from_identity_file(info.admin_identity) as client:
            token = (await client.generate_token(roles=["Kube"], ttl_seconds=300))["metadata"]["name"]
    text = render_config(
        registry=info.address,
        token=token,
        token_file=None,
        ca_pins=[info.ca_pin],
        data_dir=str(agent_dir),
        allowed_label_commands=allowed_label_commands,
    )
    return parse_config(text, source="kubeport start (local agent)")


async def cmd_start(args: argparse.Namespace) -> int:
    # A signal stops the agent first, while the registry still answers its heartbeat deletions; then the registry.
    _apply_config(args, all_in_one=True)
    agent_scope = trio.CancelScope()
    stop = StopSignals()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop.watch, agent_scope)
        info: RegistryInfo = await nursery.start(
            lambda task_status: serve_registry(
                data_dir=_data_dir(args),
                listen=args.listen,
                companions=[_frontdoor(args)],
                metrics_listen=args.metrics_listen,  # one listener for the whole process, the agent included
                second_factor=args.second_factor,
                task_status=task_status,
            )
        )
        with agent_scope:
            config = await local_agent_config(info, args.allow_label_command or ())
            agent = Agent(config, health_interval=args.health_interval, freeze_gc=True)
            async with trio.open_nursery() as agent_nursery:
                await agent_nursery.start(agent.serve)
                stop.started = True
                _print_registry_banner(info, all_in_one=True)
                _warn_second_factor(args)
        nursery.cancel_scope.cancel()
    return stop.exit_code()


LISTEN_HELP = (
    f"registry API address: HOST:PORT, [IPv6]:PORT, :PORT or PORT; a missing host means 127.0.0.1, so only "
    f"this host can connect (use 0.0.0.0:PORT to let agents on other hosts in; default {DEFAULT_LISTEN})"
)
DATA_DIR_HELP = (
    "the command's state directory: the registry's (start, registry start), the agent's (configure), or the "
    "one holding the local admin identity (kube ls); default: $KUBEPORT_DATA_DIR, /var/lib/kubeport as root, "
    "~/.kubeport otherwise"
)
FLAGS_EPILOG = (
    "--data-dir, --registry, --identity and --debug may come before or after the command (given twice, the "
    "last one wins); a command refuses one it does not use."
)


def _public_addr(text: str) -> str:
    """``--public-addr`` is what agents dial: it needs a host (a bare port would be advertised as is)."""
    try:
        host, _ = parse_hostport(text, default_port=DEFAULT_PORT, what="--public-addr", default_host="")
    except BadParameter as err:
        raise argparse.ArgumentTypeError(err.message) from None
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r} needs a host name or address agents can reach, e.g. HOST:3025")
    return text.strip()


def _global_flags(parser: argparse.ArgumentParser) -> None:
    add_connection_flags(parser, data_dir_help=DATA_DIR_HELP)
    add_debug_flag(parser)


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=FLAGS_EPILOG)
    _global_flags(p)
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeport",
        description="kubeport: a dynamic Kubernetes cluster registry with agents.",
        epilog=FLAGS_EPILOG,
    )
    _global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def data_flags(p: argparse.ArgumentParser) -> None:
        add_data_dir_flag(
            p, "where state lives (default: $KUBEPORT_DATA_DIR, /var/lib/kubeport as root, ~/.kubeport otherwise)"
        )
        p.add_argument("--config", metavar="FILE", type=flag_value("--config"), help=CONFIG_HELP)
        p.add_argument("--listen", metavar="HOST:PORT", default=_Default(DEFAULT_LISTEN), help=LISTEN_HELP)
        p.add_argument(
            "--kube-listen",
            metavar="HOST:PORT",
            default=_Default(DEFAULT_KUBE_LISTEN),
            help=f"the Kubernetes front door kubectl and agents' tunnels connect to (default {DEFAULT_KUBE_LISTEN})",
        )
        p.add_argument(
            "--kube-public-addr",
            metavar="HOST:PORT",
            type=_public_addr,
            help="the front door address kubeconfigs and agents use (a load balancer, a DNS name); default: the "
            "--kube-listen address (this host's name when that is a wildcard)",
        )
        p.add_argument(
            "--kube-tunnel-addr",
            metavar="HOST:PORT",
            type=_public_addr,
            help="the address agents dial for their tunnel to this front door (default: --kube-public-addr). With "
            "several registries behind one load balancer, give each its own so agents reach every front door",
        )
        add_metrics_flag(p)
        p.add_argument(
            "--second-factor",
            choices=SECOND_FACTORS,
            default=_Default("otp"),
            help="local users' second factor at login: otp (password + one-time code, the default) or off "
            "(password only, for labs; warned about at start)",
        )
        add_debug_flag(p)

    p = sub.add_parser(
        "start",
        help="run everything on this machine (registry with the embedded SQLite store)",
        description="Run the all-in-one kubeport on this machine: the registry with its embedded store.",
        epilog=FLAGS_EPILOG,
    )
    data_flags(p)
    p.add_argument("--health-interval", type=float, default=60.0, help="seconds between cluster health checks")
    p.add_argument(
        "--allow-label-command",
        action="append",
        metavar="PROGRAM",
        help="a program kube_cluster dynamic labels may run on this host (repeatable; a bare name is looked up "
        "on PATH at start; default: none)",
    )
    set_command(p, cmd_start)

    rsub = _group(sub, "registry", "the registry daemon")
    p = rsub.add_parser(
        "start", help="run the registry", description="Run the registry (mutual-TLS API).", epilog=FLAGS_EPILOG
    )
    data_flags(p)
    p.add_argument(
        "--public-addr",
        action="append",
        metavar="HOST:PORT",
        type=_public_addr,
        help="address agents and kpctl use to reach this registry (repeatable; the first one is advertised, "
        "and 'kpctl tokens add' prints it for new agents)",
    )
    _store_flags(p)
    set_command(p, cmd_registry_start)
    p = rsub.add_parser(
        "migrate",
        help="copy a stopped registry's SQLite store into an empty etcd prefix",
        description="Copy every record (the CA, users, tokens, heartbeats, audit events, ...) with its expiry from "
        "the SQLite store into an empty etcd prefix, sealed with DATA_DIR/etcd.key (created when missing). Stop the "
        "registry first.",
        epilog=FLAGS_EPILOG,
    )
    add_data_dir_flag(p, "the registry's data dir: the SQLite store and etcd.key (default as for registry start)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="STORE",
        type=flag_value("--from"),
        help="sqlite:///path/registry.db or a path (default: registry.db in the data dir)",
    )
    p.add_argument("--config", metavar="FILE", type=flag_value("--config"), help=MIGRATE_CONFIG_HELP)
    _store_flags(p, flag="--to")
    add_debug_flag(p)
    set_command(p, cmd_registry_migrate)

    agent_cli.add_commands(sub, group=_group, epilog=FLAGS_EPILOG, systemd_bot=bot_cli.cmd_install_systemd_bot)
    bot_cli.add_commands(sub, group=_group, epilog=FLAGS_EPILOG)  # kubeport bot start (machine identity)

    ksub = _group(sub, "kube", "Kubernetes clusters you can reach")
    p = ksub.add_parser(
        "ls",
        help="list the clusters you may reach (logged in), else the clusters agents serve",
        description="Logged in (kubeport login) and naming no other identity: the clusters your roles reach, "
        "with * on the current kubeconfig context's. Otherwise every served cluster (from heartbeats).",
        epilog=FLAGS_EPILOG,
    )
    add_connection_flags(p)
    add_debug_flag(p)
    p.add_argument("--format", choices=render.FORMATS, default="text")
    p.add_argument("-v", "--verbose", action="store_true", help="do not shorten the Labels column")
    set_command(p, kube_user.cmd_kube_ls)
    kube_user.register(ksub, common=_global_flags, set_command=set_command)
    session_cmd.register(sub, common=_global_flags, set_command=set_command)
    login_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args: Any = parse_command_line(build_parser(), argv)
    return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
