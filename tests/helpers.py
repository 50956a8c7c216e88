"""Helpers shared by tests: sample kubeconfigs, resource files built the way the seed docs build them,
and a way to run kpctl's real code path inside the test's trio loop while capturing what it prints."""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from registry.core.identity import CertAuthority


def sample_ca_pem() -> bytes:
    return CertAuthority.generate("sample-kube", now=datetime.now(tz=UTC)).cert_pem


def kubeconfig_dict(
    *,
    server: str = "https://127.0.0.1:6443",
    token: str = "sample-token-value",
    ca_pem: bytes | None = None,
    context: str = "sample",
    cluster: str = "sample-cluster",
    user: str = "sample-user",
) -> dict[str, Any]:
    ca = ca_pem if ca_pem is not None else sample_ca_pem()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca).decode()},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
    }


def kubeconfig_bytes(**kwargs: Any) -> bytes:
    return yaml.safe_dump(kubeconfig_dict(**kwargs)).encode()


def cluster_doc(name: str, kubeconfig: bytes, labels: Mapping[str, str], **spec: Any) -> dict[str, Any]:
    """A kube_cluster wire dict as the API takes it (kubeconfig base64-encoded)."""
    return {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"kubeconfig": base64.b64encode(kubeconfig).decode(), **spec},
    }


def printf_recipe_base64(data: bytes) -> str:
    """What ``printf "    %s" $(cat kubeconfig | base64)`` appends: 76-column base64 lines, each chunk
    prefixed with four spaces, all on one line (word splitting joins them)."""
    encoded = base64.encodebytes(data).decode()  # 76-char lines, like coreutils base64
    return "".join(f"    {chunk}" for chunk in encoded.split())


def seed_kube_cluster_yaml(name: str, kubeconfig: bytes, labels: dict[str, str] | None = None) -> str:
    """A kube_cluster file built exactly as seed 003 tells the reader to: header, then the printf recipe."""
    head = f"kind: kube_cluster\nversion: v3\nmetadata:\n  name: {name}\n"
    if labels:
        head += "  labels:\n" + "".join(f"    {k}: {v}\n" for k, v in labels.items())
    head += "spec:\n  kubeconfig: |\n"
    return head + printf_recipe_base64(kubeconfig)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


async def kpctl(*argv: str) -> CliResult:
    """Run kpctl's real code path (argument parsing, client, TLS, rendering) in this trio loop."""
    from registry.cli import kpctl as kpctl_module

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = await kpctl_module.amain(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# seed 003's kube-access.yaml (flattened in the seed text; re-indented, nothing else changed)
KUBE_ACCESS = """\
kind: role
metadata:
  name: kube-access
version: v7
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_resources:
      - kind: '*'
        namespace: '*'
        name: '*'
        verbs: ['*']
    kubernetes_groups:
    - viewers
  deny: {}
"""


# seed 004's example role exactly as written there (a v6 role with kind '*', which Teleport refuses)
SEED_004_EXAMPLE_ROLE = """
kind: role
version: v6
metadata:
  name: example-role
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_groups:
      - editor
    kubernetes_resources:
      - kind: "*"
        namespace: "*"
        name: "*"
"""


def kube_server_doc(host_id: str, cluster: Any, *, expires: float, status: str | None = None) -> dict[str, Any]:
    """A kube_server (heartbeat) wire dict as an agent sends it: ``cluster`` served by ``host_id`` until
    ``expires`` (unix seconds), with ``status`` as its health when given."""
    spec: dict[str, Any] = {
        "host_id": host_id,
        "hostname": "agent:3027",
        "version": "1.0",
        "cluster": {"kind": "kube_cluster", "version": "v3", "metadata": {"name": cluster}, "spec": {}},
    }
    if status is not None:
        spec["health"] = {"status": status}
    expiry = datetime.fromtimestamp(expires, tz=UTC).isoformat()
    return {"kind": "kube_server", "version": "v3", "metadata": {"name": cluster, "expires": expiry}, "spec": spec}
