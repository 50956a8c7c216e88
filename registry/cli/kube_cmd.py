"""``kubeport kube ls`` as the admin/agent view (every cluster agents serve) and ``kpctl kube explain NAME``
(why an agent does or does not serve a cluster).

A logged-in user's ``kube ls`` (only the clusters their roles reach, seed 003's columns) is
:mod:`registry.cli.kube_user`, which falls back to :func:`cmd_kube_ls` here when there is no login or the
command names another identity (``--identity``, ``--registry``, ``--data-dir``, ``$KUBEPORT_IDENTITY``).

``kube ls`` lists kube_server heartbeats de-duplicated by cluster name, as tsh does: a kube_cluster that no
agent serves is not shown; one served by two agents is shown once. Unlike tsh it also shows each cluster's
health (:func:`cluster_health`): ``healthy`` when any serving agent reports it healthy (the front door
picks a healthy agent), else ``unhealthy`` with the first unhealthy agent's reason, else ``unknown`` (not
checked yet). ``explain`` is new: for one kube_cluster it names the agents that serve it and, for every
other live agent, the first selector item and label that failed (or the registration error the agent
reported), and under each agent the dynamic labels of the cluster that fail there
(``label_errors`` of its kube_agent record), e.g. a command the agent's ``allowed_label_commands`` does not
allow. Every line of text output goes through ``render`` escaping: names, labels and reasons are data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from labels import combine, could_match, explain_all, format_labels, matches_any
from registry.cli import render
from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import NotFound
from registry.core.kube_listing import combined_health
from registry.host.cmdline import resolve_connection


def server_labels(server: Mapping[str, Any]) -> dict[str, str]:
    cluster = server.get("spec", {}).get("cluster") or {}
    static = dict(cluster.get("metadata", {}).get("labels") or {})
    dynamic = {
        k: str(v.get("result", ""))
        for k, v in (cluster.get("spec", {}).get("dynamic_labels") or {}).items()
        if isinstance(v, dict)
    }
    return combine({**static, **(server.get("metadata", {}).get("labels") or {})}, dynamic)


def dedupe_servers(servers: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    by_name: dict[str, dict[str, str]] = {}
    for server in servers:
        by_name[str(server["metadata"]["name"])] = server_labels(server)
    return sorted(by_name.items())


def _health_of(server: Mapping[str, Any]) -> tuple[str, str]:
    health = (server.get("spec") or {}).get("health")
    if not isinstance(health, Mapping):
        return "unknown", ""
    status = health.get("status")
    reason = health.get("reason")
    return (
        status if status in ("healthy", "unhealthy") else "unknown",
        reason if isinstance(reason, str) else "",
    )


def cluster_health(servers: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """``{cluster name: {"status": ..., "reason": ...}}`` over every agent serving it (module docstring).

    ``reason`` is present only for an unhealthy cluster, and is the reason of the first unhealthy agent by
    host id (so the output is stable).
    """
    by_name: dict[str, list[tuple[str, str, str]]] = {}
    for server in servers:
        status, reason = _health_of(server)
        host = str((server.get("spec") or {}).get("host_id", ""))
        by_name.setdefault(str(server["metadata"]["name"]), []).append((host, status, reason))
    return {name: combined_health(reports) for name, reports in by_name.items()}


async def cmd_kube_ls(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        servers, _ = await client.list("kube_server")
    rows = dedupe_servers(servers)
    health = cluster_health(servers)
    if args.format in ("json", "yaml"):
        items = [
            {"kube_cluster_name": name, "labels": labels, "health": health[name], "selected": False}
            for name, labels in rows
        ]
        sys.stdout.write(render.dump_json(items) if args.format == "json" else codec.dump_yaml([{"items": items}]))
        return 0
    table_rows = [
        [
            name,
            render.health_text(health[name]["status"], health[name].get("reason"), verbose=args.verbose),
            render.labels_cell(labels, verbose=args.verbose, sep=" "),
            "",
        ]
        for name, labels in rows
    ]
    sys.stdout.write(render.table(["Kube Cluster Name", "Health", "Labels", "Selected"], table_rows))
    return 0


def explain_cluster(
    cluster: Mapping[str, Any], servers: Sequence[Mapping[str, Any]], agents: Sequence[Mapping[str, Any]]
) -> str:
    """The explanation text for one kube_cluster (pure: tested without a registry)."""
    name = str(cluster["metadata"]["name"])
    static = dict(cluster["metadata"].get("labels") or {})
    dynamic_keys = sorted((cluster.get("spec", {}).get("dynamic_labels") or {}).keys())
    lines = [f'kubernetes cluster "{name}"', f"  labels: {format_labels(static) or '(none)'}"]
    if dynamic_keys:
        lines.append(f"  dynamic labels (computed on each agent): {', '.join(dynamic_keys)}")
    serving = {str(s["spec"]["host_id"]): s for s in servers if s["metadata"]["name"] == name}
    by_host = {str(a["host_id"]): a for a in agents}
    if not agents and not serving:
        lines.append("no agent has described itself to the registry yet (agents do within seconds of starting)")
        return "".join(render.escape(line) + "\n" for line in lines)
    lines.append("served by:")
    if not serving:
        lines.append("  (no agent)")
    for host_id, server in sorted(serving.items()):
        status = render.health_text(*_health_of(server), verbose=True)
        lines.append(f"  {server['spec'].get('hostname') or host_id} (host {host_id}): {status}")
        lines.extend(_label_error_lines(name, by_host.get(host_id, {})))
    others = [a for a in agents if str(a["host_id"]) not in serving]
    if others:
        lines.append("not served by:")
    for agent in sorted(others, key=lambda a: str(a.get("nodename", ""))):
        who = f"  {agent.get('nodename') or agent['host_id']} (host {agent['host_id']}): "
        lines.append(who + _why_not(name, static, dynamic_keys, agent))
        lines.extend(_label_error_lines(name, agent))
    return "".join(render.escape(line) + "\n" for line in lines)


def _label_error_lines(name: str, agent: Mapping[str, Any]) -> list[str]:
    errors = (agent.get("label_errors") or {}).get(name) or {}
    if not isinstance(errors, Mapping):
        return []
    return [
        f"    dynamic label {key}: {value}"
        for key, value in sorted(errors.items())  # escaped with every line
    ]


def _why_not(name: str, static: dict[str, str], dynamic_keys: list[str], agent: Mapping[str, Any]) -> str:
    failed = (agent.get("failed") or {}).get(name)
    if failed:
        return f"registration failed: {failed}"
    if name in (agent.get("static_clusters") or []):
        return "has a static cluster of that name (static clusters win over kube_cluster resources)"
    resources = agent.get("resources") or []
    if not resources:
        return "it has no resources selectors (serves only its static clusters)"
    if matches_any(resources, static):
        return "its selectors match; it should register the cluster within a second (check the agent's log)"
    if dynamic_keys and could_match(resources, static, dynamic_keys):
        return (
            "its selectors depend on dynamic labels "
            + ", ".join(dynamic_keys)
            + " whose values on that agent do not match"
        )
    return "; ".join(str(m) for m in explain_all(resources, static))


async def cmd_kube_explain(args: argparse.Namespace) -> int:
    conn = resolve_connection(args)
    async with RegistryClient.from_identity(conn.identity, conn.address) as client:
        try:
            cluster = await client.get("kube_cluster", args.name)
        except NotFound:
            raise NotFound(f'kubernetes cluster "{args.name}" not found') from None
        servers, _ = await client.list("kube_server")
        agents = await client.list_agents()
    sys.stdout.write(explain_cluster(cluster, servers, agents))
    return 0
