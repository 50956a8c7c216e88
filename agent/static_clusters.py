"""Static clusters: the agent's own ``kubeconfig_file``, one cluster per context.

Each context becomes a static cluster named after the context, which the agent serves from its own
configuration (origin ``config-file``) rather than from a registered ``kube_cluster``.
:func:`load_static_clusters` is the one entry point that touches the disk: it reads the file, splits it with
:func:`static_clusters` (pure) and embeds the local files each context names with :func:`inline_local_files`.

Invariants:

* The input goes through the same bounded, hardened YAML loader as the agent config
  (:func:`agent.config.load_yaml_document`): size-checked, no anchors/aliases, no duplicate keys.
* Every result holds exactly one context, the cluster and (when it names one) the user it references, and
  ``current-context`` naming it; nothing else from the source file is carried over.
* Result names obey the kube_cluster name rule (``codec.NAME_RE``) and are unique; contexts that break a
  rule are skipped with a warning rather than failing the whole file, as Teleport does. A file that is not
  a kubeconfig, or has no contexts, is a BadParameter.
* :func:`static_clusters` is pure: the caller reads the file and decides what to do with the warnings.
* Local file references (``certificate-authority``, ``tokenFile``, ...) are the ones the kubeconfig checker
  refuses in kube_cluster resources (``registry.core.kubeconfig.FILE_FIELDS``, one table): here they are
  read and embedded, because the agent's own kubeconfig_file is the host admin's.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agent.config import load_yaml_document
from registry.core import codec, validation
from registry.core.errors import BadParameter
from registry.core.kubeconfig import FILE_FIELDS
from registry.core.resources import ORIGIN_LABEL, KubeCluster, Metadata
from registry.host.files import read_limited

log = logging.getLogger(__name__)

MAX_KUBECONFIG_FILE_BYTES = 4 << 20
MAX_REFERENCED_FILE_BYTES = 1 << 20

_show = validation.describe  # values appear in warnings the way the registry shows them (JSON-quoted)


def _named_entries(
    doc: Mapping[str, Any], list_key: str, item_key: str, warnings: list[str], source: str
) -> dict[str, Mapping[str, Any]]:
    """``clusters``/``users`` as name -> whole entry; malformed entries are skipped with a warning."""
    entries: dict[str, Mapping[str, Any]] = {}
    raw = doc.get(list_key) or []
    if not isinstance(raw, list):
        warnings.append(f"{source}: {list_key} is not a list; ignored")
        return entries
    for index, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not isinstance(entry.get(item_key), Mapping):
            warnings.append(f"{source}: {list_key}[{index}] has no name or no {item_key}; ignored")
            continue
        # kubectl keeps the first of two same-named entries; so do we.
        entries.setdefault(name, entry)
    return entries


def static_clusters(kubeconfig_bytes: bytes, *, source: str) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Split a kubeconfig into one single-context kubeconfig per context, named after the context.

    Each result has ``current-context`` set to its context and holds only the cluster and user that
    context references. Contexts whose name breaks the kube_cluster name rule, that are duplicated, or
    that reference a missing cluster or user are skipped with a warning (Teleport skips them too). Returns
    ``(clusters, warnings)``; a file that is not a kubeconfig or has no contexts is a BadParameter.
    """
    doc = load_yaml_document(kubeconfig_bytes, source)
    if not isinstance(doc, Mapping):
        raise BadParameter(f"{source}: a kubeconfig must be a mapping, got {_show(doc)}")
    contexts = doc.get("contexts")
    if not isinstance(contexts, list) or not contexts:
        raise BadParameter(f"{source}: the kubeconfig has no contexts, so there are no clusters to serve")
    warnings: list[str] = []
    clusters = _named_entries(doc, "clusters", "cluster", warnings, source)
    users = _named_entries(doc, "users", "user", warnings, source)
    result: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for index, entry in enumerate(contexts):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        context = entry.get("context") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not isinstance(context, Mapping):
            warnings.append(f"{source}: contexts[{index}] has no name or no context; skipped")
            continue
        label = f"{source}: context {_show(name)}"
        try:
            # The kube_cluster name rule: static clusters are named like dynamic ones, and names become
            # file names on clients.
            validation.check_name(name, subject=source, path="context name", pattern=codec.NAME_RE)
        except BadParameter as err:
            warnings.append(f"{err.message}; skipped")
            continue
        if name in seen:
            warnings.append(f"{label} skipped: the name appears twice")
            continue
        cluster_name = context.get("cluster")
        if not isinstance(cluster_name, str):
            warnings.append(f"{label} skipped: context.cluster must name a cluster, got {_show(cluster_name)}")
            continue
        cluster = clusters.get(cluster_name)
        if cluster is None:
            warnings.append(f"{label} skipped: its cluster {_show(cluster_name)} is not defined")
            continue
        user_name = context.get("user")
        user = users.get(user_name) if isinstance(user_name, str) else None
        if user_name is not None and user is None:
            warnings.append(f"{label} skipped: its user {_show(user_name)} is not defined")
            continue
        seen.add(name)
        single = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [dict(cluster)],
            "contexts": [dict(entry)],
            "current-context": name,
            "users": [dict(user)] if user is not None else [],
        }
        result.append((name, yaml.safe_dump(single, sort_keys=False).encode("utf-8")))
    return result, warnings


def inline_local_files(kubeconfig: bytes, base_dir: Path) -> bytes:
    """Embed the files a kubeconfig refers to (relative paths resolve against its directory).

    The agent's own kubeconfig_file is the host admin's: reading files it names is legitimate here (as in
    Teleport), unlike in kube_cluster resources, where a path would read files on every agent's host.
    """
    doc = yaml.safe_load(kubeconfig)
    for section, inner in (("clusters", "cluster"), ("users", "user")):
        for entry in doc.get(section) or []:
            body = entry.get(inner) or {}
            for field, embedded in FILE_FIELDS.items():
                ref = body.pop(field, None)
                if not isinstance(ref, str) or not ref:
                    continue
                file = Path(ref) if Path(ref).is_absolute() else base_dir / ref
                content = read_limited(file, limit=MAX_REFERENCED_FILE_BYTES, what=f"{inner} {field}")
                # ``*-data`` fields are base64 of the file; ``token`` is the file's text.
                as_base64 = embedded.endswith("-data")
                body[embedded] = base64.b64encode(content).decode() if as_base64 else content.decode().strip()
    return yaml.safe_dump(doc).encode()


def load_static_clusters(path: Path) -> list[KubeCluster]:
    """Every context of the agent's own kubeconfig becomes a cluster named after the context."""
    data = read_limited(path, limit=MAX_KUBECONFIG_FILE_BYTES, what="kubeconfig_file")
    pairs, warnings = static_clusters(data, source=str(path))
    for warning in warnings:
        log.warning("%s", warning)
    if not pairs:
        raise BadParameter(f"kubeconfig_file {path} has no usable contexts: no Kubernetes credentials found")
    return [
        KubeCluster(
            metadata=Metadata(name=name, labels={ORIGIN_LABEL: "config-file"}),
            kubeconfig=inline_local_files(kubeconfig, path.parent),
        )
        for name, kubeconfig in pairs
    ]
