"""What a bot writes for each ``type: kubernetes`` output: which clusters, the kubeconfig, the files.

Pure parts (:func:`select_clusters`, :func:`output_files`) decide; :func:`write_output` only writes.

Files in each destination directory (tbot's names; the kubeconfig embeds everything, so it works alone):

    kubeconfig.yaml   one cluster + context per selected cluster (``<kubeport cluster>-<kube cluster>``),
                      the bot's certificate and key, the registry CA; current context: the first
    tlscert           the bot's certificate (PEM)
    key               its private key (PEM)
    tlscacerts        the registry CA(s) (PEM)

Invariants:
- Each file is replaced atomically with exactly the output's mode (0600 by default; 0640/0660 for a group
  reader, as seed 004 describes for another Linux user); a reader never sees a half-written file. The
  kubeconfig embeds its own copy of the certificate and key, so it never depends on the other files.
- A destination that is a symbolic link or not a directory is refused (one error naming it), never followed.
- A directory the bot creates gets 0700, or 0750 when the output's mode lets a group read (the group must
  be able to enter it); an existing directory keeps its owner's mode.
- The contexts are a convenience, never a grant: the front door decides with the bot's current roles on
  every request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from labels import match_labels
from registry.cli.bot.config import KubernetesOutput
from registry.cli.kpctl.auth import kubeconfig_document
from registry.core.errors import BadParameter
from registry.host.files import write_file_atomic

KUBECONFIG_FILE = "kubeconfig.yaml"
IDENTITY_FILES = ("tlscert", "key", "tlscacerts")


def select_clusters(output: KubernetesOutput, reachable: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cluster names ``output`` gets contexts for: its ``kubernetes_cluster`` when the bot may reach it,
    or every reachable cluster its ``kubernetes_labels`` select, sorted."""
    if output.cluster is not None:
        return [output.cluster] if any(item.get("name") == output.cluster for item in reachable) else []
    assert output.labels is not None
    return sorted(
        str(item["name"]) for item in reachable if match_labels(output.labels, dict(item.get("labels") or {}))
    )


def output_files(
    clusters: Sequence[str],
    *,
    kubeport_cluster: str,
    user: str,
    front_door: str,
    cert_pem: bytes,
    key_pem: bytes,
    ca_pems: Sequence[bytes],
) -> dict[str, bytes]:
    """File name -> content for one output (identity files first, kubeconfig.yaml last)."""
    document = kubeconfig_document(
        kubeport_cluster=kubeport_cluster,
        user=user,
        clusters=clusters,
        current=clusters[0] if clusters else None,
        front_door=front_door,
        cert_pem=cert_pem,
        key_pem=key_pem,
        ca_pems=ca_pems,
    )
    cas = b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in ca_pems)
    return {
        "tlscert": cert_pem,
        "key": key_pem,
        "tlscacerts": cas,
        KUBECONFIG_FILE: yaml.safe_dump(document, sort_keys=False).encode(),
    }


def _ensure_dir(path: Path, mode: int) -> None:
    dir_mode = 0o750 if mode & 0o070 else 0o700
    if path.is_symlink():
        raise BadParameter(f"output directory {path} is a symbolic link: point destination.path at the real directory")
    if path.exists():
        if not path.is_dir():
            raise BadParameter(f"output destination {path} exists and is not a directory")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.mkdir(mode=dir_mode)
        os.chmod(path, dir_mode)  # mkdir's mode is narrowed by the umask: make it exactly what we chose
    except FileExistsError:
        return
    except OSError as err:
        raise BadParameter(f"cannot create output directory {path}: {err.strerror or err}") from None


def write_output(output: KubernetesOutput, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into the output's directory, each atomically with the output's mode."""
    _ensure_dir(output.destination, output.mode)
    for name, data in files.items():
        target = output.destination / name
        try:
            write_file_atomic(target, data, mode=output.mode)
        except OSError as err:
            raise BadParameter(f"cannot write {target}: {err.strerror or err}") from None
