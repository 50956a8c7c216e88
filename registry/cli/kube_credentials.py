"""``kubeport kube credentials --cluster NAME``: the kubectl exec credential plugin.

kubectl runs it before every request it cannot serve from its in-process cache, so it must be fast: it reads
the saved login (``registry.cli.profile``) from disk and prints an ``ExecCredential``
(``client.authentication.k8s.io/v1``) with the login's certificate, key and expiry. No network, no trio, no
client: ``registry.cli.entry`` dispatches here before importing the rest of kubeport (measured in
tests/registry/cli/test_kube_user.py).

An expired or absent login exits 1 with one ``ERROR: ... run kubeport login ...`` line on stderr, which
kubectl shows the user (instead of the TLS error an expired certificate would give). The key is printed only
to kubectl, on stdout, as the exec protocol requires; nothing is logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from registry.cli.profile import KubeportHome, require_fresh
from registry.core.errors import KubeportError
from registry.core.timefmt import format_rfc3339

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def exec_credential(home: KubeportHome, cluster: str | None, now: datetime) -> dict[str, object]:
    """The ExecCredential for the login to ``cluster`` (the current login when None); NotLoggedIn when
    there is none or it expired."""
    login = require_fresh(home.load(cluster), now)
    identity = login.identity
    return {
        "apiVersion": EXEC_API_VERSION,
        "kind": "ExecCredential",
        "status": {
            "clientCertificateData": identity.cert_pem.decode(),
            "clientKeyData": identity.key_pem.decode(),
            "expirationTimestamp": format_rfc3339(login.expires),
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster", metavar="NAME", help="the registry cluster whose login to use (default: the current login)"
    )


def run(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The plugin on its own (argv after ``kube credentials``): exit 0 with the ExecCredential on stdout, or
    1 with one ERROR line on stderr."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = argparse.ArgumentParser(
        prog="kubeport kube credentials", description="kubectl's exec credential plugin (written by kube login)"
    )
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    return emit(args.cluster, out=out, err=err)


def emit(cluster: str | None, *, out: TextIO, err: TextIO, home: KubeportHome | None = None) -> int:
    try:
        credential = exec_credential(home or KubeportHome(), cluster, datetime.now(tz=UTC))
    except KubeportError as exc:
        print(f"ERROR: {exc.message}", file=err)
        return 1
    out.write(json.dumps(credential) + "\n")
    return 0
