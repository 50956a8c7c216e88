"""kubeport-get-kubeconfig: mint a service-account kubeconfig for a cluster and (optionally) register it.

A Python port of Teleport's ``examples/k8s-auth/get-kubeconfig.sh`` (run as ``python
scripts/get_kubeconfig.py`` or the ``kubeport-get-kubeconfig`` console command). Against the cluster of the
chosen kubeconfig context it creates or updates, idempotently:

* Namespace ``$TELEPORT_NAMESPACE`` (default ``teleport``) and ServiceAccount ``$TELEPORT_SA_NAME`` (default
  ``teleport-sa``) in it;
* ClusterRole ``teleport-role`` with exactly the original's rules (impersonate users/groups/serviceaccounts,
  get pods, create self-subject access/rules reviews) and ClusterRoleBinding ``teleport-crb`` to the SA (the
  names stay the original's so both tools manage the same objects; ``--role-name``/``--binding-name``
  choose others);
* on Kubernetes >= 1.24 (the SA lists no token secret) a ``kubernetes.io/service-account-token`` Secret
  named like the SA,

then waits until the token controller has filled the secret's ``token`` and ``ca.crt`` and writes a
kubeconfig with the original's structure (mode 0600). ``--kube-cluster NAME`` also writes a kube_cluster
file that ``kpctl create`` accepts; ``--register`` creates it in the registry in the same run.

Invariants:

* every expected failure is one ``ERROR: ...`` line on stderr and exit code 1 (tracebacks with --debug);
* no file is written unless every cluster step succeeded and the token is non-empty; files are written
  atomically with mode 0600 (they hold a credential), so no partial kubeconfig is ever left behind;
* a second run changes nothing in the cluster (read first; write only what differs) and prints the same
  progress (``kind/name unchanged``, like the ``kubectl apply`` the original runs);
* nothing an admin added is removed silently: a ClusterRole that grants more than the original, or a
  ClusterRoleBinding bound to another subject, is reported and only reset with ``--force``;
* every API call carries a timeout and is tried once, so an unreachable server fails in about ``--timeout``.

Unlike the registry (which rejects ``exec``/``auth-provider`` users in stored kubeconfigs because they would
run code on agent hosts), this script runs on the admin's own workstation with the admin's own kubeconfig,
where exec plugins (EKS, GKE, OIDC) are the normal way to log in: the ``kubernetes`` client's loader may run
them here. The kubeconfig it *writes* holds only a static token, which the registry accepts.

This module is the command line only (flags, the ``Plan`` decided from flags and environment, the order of
the steps, the files and messages); the work itself is in ``registry.mint``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from registry.core.errors import AlreadyExists, BadParameter, KubeportError
from registry.mint.kube import Kube
from registry.mint.kubeconfig_out import check_written, kube_cluster_document, render_kubeconfig
from registry.mint.names import check_namespace_name, check_rbac_name, check_service_account_name, parse_labels
from registry.mint.source import load_source
from registry.mint.steps import Steps

DEFAULT_NAMESPACE = "teleport"
DEFAULT_SERVICE_ACCOUNT = "teleport-sa"
DEFAULT_ROLE_NAME = "teleport-role"
DEFAULT_BINDING_NAME = "teleport-crb"
DEFAULT_OUTPUT = "kubeconfig"
DEFAULT_KUBE_CLUSTER_FILE = "kube_cluster.yaml"
DEFAULT_TIMEOUT = 10.0
DEFAULT_WAIT = 60.0

if TYPE_CHECKING:
    from registry.host.cmdline import Connection


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeport-get-kubeconfig",
        description=(
            "Create a service account with minimal RBAC permissions for kubeport in the cluster of your "
            "current kubeconfig context, and write a kubeconfig with its long-lived token (a Python port of "
            "Teleport's get-kubeconfig.sh). Running it again changes nothing and mints nothing new."
        ),
        epilog=(
            "environment:\n"
            "  TELEPORT_NAMESPACE  namespace of the service account (default teleport)\n"
            "  TELEPORT_SA_NAME    service account name (default teleport-sa)\n"
            "  KUBECONFIG          kubeconfig file(s) to read, like kubectl\n"
            "Flags override the environment. The ClusterRole and ClusterRoleBinding keep the original\n"
            "script's names (teleport-role, teleport-crb), so both tools manage the same objects.\n\n"
            "example (from nothing to a registered cluster):\n"
            "  %(prog)s --kube-cluster prod --labels env=prod,region=eu --register"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("source cluster")
    source.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig to read (default: $KUBECONFIG, ~/.kube/config)"
    )
    source.add_argument("--context", metavar="NAME", help="context to use (default: the current context)")
    source.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"timeout of each Kubernetes API call (default {DEFAULT_TIMEOUT:g})",
    )
    source.add_argument(
        "--wait",
        type=_positive,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for the token controller to fill the token (default {DEFAULT_WAIT:g})",
    )

    account = parser.add_argument_group("service account")
    account.add_argument(
        "--namespace",
        "-n",
        metavar="NS",
        help=f"namespace of the service account (default: $TELEPORT_NAMESPACE or {DEFAULT_NAMESPACE})",
    )
    account.add_argument(
        "--service-account",
        metavar="NAME",
        help=f"service account name (default: $TELEPORT_SA_NAME or {DEFAULT_SERVICE_ACCOUNT})",
    )
    account.add_argument(
        "--role-name", default=DEFAULT_ROLE_NAME, metavar="NAME", help="ClusterRole name (default %(default)s)"
    )
    account.add_argument(
        "--binding-name",
        default=DEFAULT_BINDING_NAME,
        metavar="NAME",
        help="ClusterRoleBinding name (default %(default)s)",
    )
    account.add_argument(
        "--force",
        "-f",
        action="store_true",
        help="rebind a ClusterRoleBinding bound elsewhere, reset an edited ClusterRole, "
        "replace an existing kube_cluster",
    )

    output = parser.add_argument_group("output and registration")
    output.add_argument(
        "--output",
        "-o",
        default=DEFAULT_OUTPUT,
        metavar="FILE",
        help="where to write the kubeconfig (mode 0600; default ./%(default)s)",
    )
    output.add_argument(
        "--kube-cluster", metavar="NAME", help="also write a kube_cluster resource file for this cluster name"
    )
    output.add_argument(
        "--labels", action="append", default=[], metavar="K=V[,K=V]", help="static labels of the kube_cluster"
    )
    output.add_argument(
        "--kube-cluster-file",
        default=DEFAULT_KUBE_CLUSTER_FILE,
        metavar="FILE",
        help="where to write the kube_cluster resource (mode 0600: it holds the token; default ./%(default)s)",
    )
    output.add_argument(
        "--register",
        action="store_true",
        help="create the kube_cluster in the registry too (like kpctl create; with --force, create or replace)",
    )
    from registry.host.cmdline import add_connection_flags

    add_connection_flags(parser)
    parser.add_argument("--debug", "-d", action="store_true", help="verbose logs and tracebacks on errors")
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


@dataclass(frozen=True)
class Plan:
    """Everything decided from flags and environment before the cluster is touched."""

    namespace: str
    service_account: str
    role_name: str
    binding_name: str
    output: Path
    kube_cluster: str | None
    labels: dict[str, str]
    kube_cluster_file: Path


def make_plan(args: argparse.Namespace, env: Mapping[str, str]) -> Plan:
    if args.namespace:
        namespace = check_namespace_name(args.namespace, "--namespace")
    else:
        namespace = check_namespace_name(env.get("TELEPORT_NAMESPACE") or DEFAULT_NAMESPACE, "TELEPORT_NAMESPACE")
    if args.service_account:
        sa = check_service_account_name(args.service_account, "--service-account")
    else:
        sa = check_service_account_name(env.get("TELEPORT_SA_NAME") or DEFAULT_SERVICE_ACCOUNT, "TELEPORT_SA_NAME")
    labels = parse_labels(args.labels)
    if (labels or args.register) and not args.kube_cluster:
        raise BadParameter("--labels and --register need --kube-cluster NAME (the name to register the cluster as)")
    output = Path(args.output).expanduser()
    cluster_file = Path(args.kube_cluster_file).expanduser()
    if args.kube_cluster and output.resolve() == cluster_file.resolve():
        raise BadParameter(f"--output and --kube-cluster-file are the same file ({output})")
    plan = Plan(
        namespace=namespace,
        service_account=sa,
        role_name=check_rbac_name(args.role_name, "--role-name"),
        binding_name=check_rbac_name(args.binding_name, "--binding-name"),
        output=output,
        kube_cluster=args.kube_cluster,
        labels=labels,
        kube_cluster_file=cluster_file,
    )
    if plan.kube_cluster is not None:
        kube_cluster_document(plan.kube_cluster, plan.labels, b"")  # name and labels checked before any change
    return plan


def run(args: argparse.Namespace, *, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    def warn(line: str) -> None:
        print(f"warning: {line}", file=err, flush=True)

    plan = make_plan(args, env)
    connection: Connection | None = None
    if args.register:
        from registry.host.cmdline import resolve_connection

        connection = resolve_connection(args, env)  # fail on a missing identity before changing the cluster
    source = load_source(args.kubeconfig, args.context, env)
    targets = [("--output", plan.output)] + (
        [("--kube-cluster-file", plan.kube_cluster_file)] if plan.kube_cluster else []
    )
    for flag, target in targets:
        if any(target.resolve() == p.resolve() for p in source.paths):
            raise BadParameter(f"{flag} {target} is the kubeconfig being read; choose another path")

    kube = Kube(source, timeout=args.timeout)
    try:
        steps = Steps(
            kube=kube,
            namespace=plan.namespace,
            service_account=plan.service_account,
            role_name=plan.role_name,
            binding_name=plan.binding_name,
            force=args.force,
            say=say,
            warn=warn,
        )
        say("Creating the Kubernetes Service Account with minimal RBAC permissions.")
        steps.ensure_namespace()
        steps.ensure_service_account()
        steps.ensure_cluster_role()
        steps.ensure_binding()
        secret = steps.token_secret_name()
        token, ca_b64 = steps.wait_token(secret, args.wait)
    finally:
        kube.close()

    kubeconfig = render_kubeconfig(
        context=source.context,
        cluster=source.cluster,
        server=source.server,
        ca_data_b64=ca_b64,
        user=f"{source.cluster}-{plan.service_account}",
        token=token,
        tls_server_name=source.tls_server_name,
    )
    expires = check_written(kubeconfig, plan.kube_cluster, warn)
    cluster_doc = cluster_yaml = None
    if plan.kube_cluster is not None:
        from registry.core import codec

        cluster_doc = kube_cluster_document(plan.kube_cluster, plan.labels, kubeconfig)
        cluster_yaml = codec.dump_yaml([cluster_doc])

    from registry.host.files import write_secret_file

    say("Writing kubeconfig.")
    write_secret_file(plan.output, kubeconfig)
    if cluster_yaml is not None:
        say(f"Writing {_shown(plan.kube_cluster_file)}.")
        write_secret_file(plan.kube_cluster_file, cluster_yaml.encode())
    if expires is not None:
        say(f"The token expires at {expires:%Y-%m-%d %H:%M:%S} UTC; run this again before then to mint a new one.")
    if connection is not None and cluster_doc is not None:
        created = _register(connection, cluster_doc, force=args.force, cluster_file=plan.kube_cluster_file)
        say(f'kubernetes cluster "{plan.kube_cluster}" has been {"created" if created else "updated"}')
    say(_done_message(plan, secret, registered=connection is not None))
    return 0


def _register(connection: Connection, doc: dict[str, Any], *, force: bool, cluster_file: Path) -> bool:
    """``kpctl create`` (``-f`` with --force) of one kube_cluster, run in its own trio loop."""
    import trio

    from registry.client import RegistryClient

    async def register() -> bool:
        async with RegistryClient.from_identity(connection.identity, connection.address) as client:
            if force:
                _, created = await client.create_or_update(doc)
                return bool(created)
            try:
                await client.create(doc)
            except AlreadyExists:
                raise AlreadyExists(
                    f'kubernetes cluster "{doc["metadata"]["name"]}" already exists in the registry; pass --force '
                    "to replace it"
                ) from None
            return True

    try:
        return trio.run(register)
    except KubeportError as exc:
        # The kubeconfig and kube_cluster file are complete: say how to finish by hand.
        raise type(exc)(
            f"{exc.message} (the files were written: register later with kpctl create {cluster_file})"
        ) from None


def _shown(path: Path) -> str:
    """``./kubeconfig`` rather than a bare ``kubeconfig``, which reads like a word in a sentence."""
    return str(path) if path.is_absolute() or path.parent != Path() else f"./{path}"


def _done_message(plan: Plan, secret: str, *, registered: bool) -> str:
    lines = [
        "---",
        "Done!",
        "",
        f"{_shown(plan.output)} (mode 0600) holds the token of service account "
        f"{plan.namespace}/{plan.service_account};",
        f"revoke it by deleting secret {plan.namespace}/{secret}.",
    ]
    if registered:
        lines.append(f'The cluster is registered with kubeport as kube_cluster "{plan.kube_cluster}".')
    elif plan.kube_cluster is not None:
        lines += ["Register the cluster with kubeport:", f"    kpctl create {_shown(plan.kube_cluster_file)}"]
    else:
        lines += [
            "Register the cluster with kubeport: run this again with --kube-cluster NAME [--labels k=v,...]",
            f"to write {DEFAULT_KUBE_CLUSTER_FILE} for 'kpctl create {DEFAULT_KUBE_CLUSTER_FILE}', and add",
            "--register to register it in the same run.",
        ]
    lines += ["", "Note: Kubernetes RBAC rules for kubeport were created, you won't need to create them manually."]
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run the command; returns the exit code (0, 1 for expected errors, 2 for usage errors, 130 on Ctrl-C)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = os.environ if env is None else env
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and usage errors: argparse's code, without leaving the caller's process
        return exc.code if isinstance(exc.code, int) else 2
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args, env=env, out=out, err=err)
    except KubeportError as exc:
        if args.debug:
            raise
        print(f"ERROR: {exc.message}", file=err, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
