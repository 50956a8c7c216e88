"""The admin's own kubeconfig: which files, merged kubectl's way, reduced to the one context to use.

Invariants: files are found like kubectl finds them (``--kubeconfig``, else every existing file of
``$KUBECONFIG``, else ``~/.kube/config``) and merged like kubectl merges them (the first file to define a
name or a current-context wins); each file is read with a size cap and must be a YAML mapping; a missing
context, cluster or server URL is a ``BadParameter`` that says what exists. Nothing here contacts the
cluster or runs exec plugins; that happens in ``registry.mint.kube``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from registry.core.errors import BadParameter

MAX_KUBECONFIG_BYTES = 16 << 20  # a merged admin kubeconfig with many clusters is still far below this


@dataclass(frozen=True)
class Source:
    """The chosen context of the admin's kubeconfig: where the cluster is and what it is called."""

    paths: tuple[Path, ...]
    context: str
    cluster: str
    server: str
    user: str
    tls_server_name: str | None = None


def kubeconfig_paths(flag: str | None, env: Mapping[str, str]) -> tuple[list[Path], str]:
    """The files to read, kubectl's way: --kubeconfig, else every existing file of $KUBECONFIG, else
    ~/.kube/config. Also returns how they were found, for messages."""
    if flag:
        path = Path(flag).expanduser()
        if not path.is_file():
            raise BadParameter(f"--kubeconfig {flag}: no such file")
        return [path], str(path)
    if env.get("KUBECONFIG"):
        raw = [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
        return [Path(p).expanduser() for p in raw if Path(p).expanduser().is_file()], f"KUBECONFIG={env['KUBECONFIG']}"
    home = env.get("HOME") or str(Path.home())
    path = Path(home) / ".kube" / "config"
    return ([path] if path.is_file() else []), str(path)


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    from registry.host.files import read_limited

    data = read_limited(path, limit=MAX_KUBECONFIG_BYTES, what="kubeconfig")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise BadParameter(f"kubeconfig {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadParameter(f"kubeconfig {path} is not a YAML mapping")
    return doc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where (1-based line and column)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


def merge_kubeconfigs(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """kubectl's merge: the first file to define a name or a current-context wins."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": [], "current-context": ""}
    for doc in docs:
        for item in ("clusters", "contexts", "users"):
            seen = {e["name"] for e in merged[item]}
            for entry in doc.get(item) or []:
                if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"] not in seen:
                    merged[item].append(entry)
                    seen.add(entry["name"])
        if not merged["current-context"] and isinstance(doc.get("current-context"), str):
            merged["current-context"] = doc["current-context"]
    return merged


def _entry(merged: Mapping[str, Any], item: str, name: str, key: str) -> Mapping[str, Any] | None:
    for entry in merged[item]:
        if entry["name"] == name:
            body = entry.get(key)
            return body if isinstance(body, Mapping) else {}
    return None


def choose_context(merged: Mapping[str, Any], context_flag: str | None, where: str, paths: Sequence[Path]) -> Source:
    names = [e["name"] for e in merged["contexts"]]
    available = f" (available: {', '.join(names)})" if names else " (it has no contexts)"
    context = context_flag or merged["current-context"]
    if not context:
        raise BadParameter(
            f"no current context in {where}: pass --context NAME{available} or run 'kubectl config use-context NAME'"
        )
    body = _entry(merged, "contexts", context, "context")
    if body is None:
        raise BadParameter(f"context {context!r} not found in {where}{available}")
    cluster = str(body.get("cluster") or "")
    cluster_body = _entry(merged, "clusters", cluster, "cluster") if cluster else None
    if cluster_body is None:
        raise BadParameter(f"context {context!r} names cluster {cluster!r}, which is not defined in {where}")
    server = cluster_body.get("server")
    if not isinstance(server, str) or not server:
        raise BadParameter(f"cluster {cluster!r} in {where} has no server URL")
    tls_name = cluster_body.get("tls-server-name")
    return Source(
        paths=tuple(paths),
        context=context,
        cluster=cluster,
        server=server,
        user=str(body.get("user") or ""),
        tls_server_name=tls_name if isinstance(tls_name, str) and tls_name else None,
    )


def load_source(kubeconfig_flag: str | None, context_flag: str | None, env: Mapping[str, str]) -> Source:
    paths, where = kubeconfig_paths(kubeconfig_flag, env)
    if not paths:
        raise BadParameter(f"no current context: {where} does not exist; pass --kubeconfig FILE or set KUBECONFIG")
    return choose_context(merge_kubeconfigs(_read_kubeconfig(p) for p in paths), context_flag, where, paths)
