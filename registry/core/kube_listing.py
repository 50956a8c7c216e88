"""Which kube clusters a user may reach, as ``kubeport kube ls`` shows them, and what they would be there.

Pure (no I/O). One decision shared by every place that names a user's clusters: the registry's
``GET /v1/kube_clusters`` (the user's own view), ``kpctl auth sign --format=kubernetes`` (which contexts to
write) and the front door (which agents may carry a connection, :func:`reachable_servers`).

Rules (teleport-behaviour.md §3.4, access-design.md §7.3):

* A cluster is listed only while some live agent serves it (a heartbeat that has not expired), once per
  name however many agents serve it, as tsh does.
* Labels are judged per heartbeat, exactly as the agent behind it judges every request
  (:func:`server_labels`): the cluster's static labels (the registry's current ``kube_cluster`` copy when
  there is one, else the heartbeat's copy), the heartbeat's service labels, then that agent's dynamic
  label results (a dynamic value wins a key conflict).
* A cluster is visible when the labels of at least one heartbeat pass
  :func:`registry.core.kube_access.cluster_visible` with the user's *current* roles. No ``kube_server``
  read rule is involved: seeing what one may reach needs no admin grant.
* The labels shown are those of the first visible heartbeat by host id (stable output); the health is the
  best over the visible heartbeats (:func:`combined_health`).
* Only names, labels and health leave this module: never a kubeconfig or a credential.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from labels import combine
from registry.core.kube_access import cluster_visible, expand_template
from registry.core.resources import KubeCluster, KubeServer, Role, User


@dataclass(frozen=True)
class VisibleCluster:
    """One row of a user's ``kube ls``."""

    name: str
    labels: Mapping[str, str]
    health: Mapping[str, str]  # {"status": healthy|unhealthy|unknown[, "reason": ...]}

    def to_wire(self) -> dict[str, object]:
        return {"name": self.name, "labels": dict(self.labels), "health": dict(self.health)}


def server_labels(server: KubeServer, cluster: KubeCluster | None) -> dict[str, str]:
    """The labels the agent behind ``server`` judges the cluster by (module docstring)."""
    static = cluster.static_labels() if cluster is not None else dict(server.cluster.metadata.labels)
    return combine(combine(static, server.metadata.labels), server.cluster.results())


def reachable_servers(
    user: User, roles: Sequence[Role], cluster: KubeCluster | None, serving: Iterable[KubeServer]
) -> tuple[KubeServer, ...]:
    """The heartbeats of one cluster through which ``user`` may reach it (their labels select it)."""
    return tuple(server for server in serving if cluster_visible(user, roles, server_labels(server, cluster)))


def combined_health(reports: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """``{"status": ...[, "reason": ...]}`` over ``(host_id, status, reason)`` reports of one cluster:
    ``healthy`` when any agent reports it healthy (the front door picks a healthy agent), else ``unhealthy``
    with the first unhealthy agent's reason by host id, else ``unknown`` (not checked yet)."""
    reports = sorted(reports)
    statuses = {status for _, status, _ in reports}
    if "healthy" in statuses:
        return {"status": "healthy"}
    unhealthy = [reason for _, status, reason in reports if status == "unhealthy"]
    if unhealthy:
        return {"status": "unhealthy", "reason": unhealthy[0]} if unhealthy[0] else {"status": "unhealthy"}
    return {"status": "unknown"}


def _health_report(server: KubeServer) -> tuple[str, str, str]:
    status = server.health.status if server.health.status in ("healthy", "unhealthy") else "unknown"
    return server.host_id, status, server.health.reason


def visible_clusters(
    user: User,
    roles: Sequence[Role],
    clusters: Mapping[str, KubeCluster],
    servers: Iterable[KubeServer],
    *,
    now: datetime | None = None,
) -> list[VisibleCluster]:
    """The clusters ``user`` may reach now, sorted by name (module docstring).

    ``clusters`` maps names to the registry's ``kube_cluster`` resources (static clusters of agents have
    none); ``servers`` are the heartbeats; with ``now`` an expired heartbeat is ignored.
    """
    by_name: dict[str, list[KubeServer]] = {}
    for server in servers:
        expires = server.metadata.expires
        if now is not None and expires is not None and expires <= now:
            continue
        by_name.setdefault(server.name, []).append(server)
    result = []
    for name in sorted(by_name):
        serving = sorted(by_name[name], key=lambda s: s.host_id)
        cluster = clusters.get(name)
        reachable = reachable_servers(user, roles, cluster, serving)
        if not reachable:
            continue
        labels = server_labels(reachable[0], cluster)
        result.append(VisibleCluster(name, labels, combined_health(_health_report(s) for s in reachable)))
    return result


def _expand_all(values: Iterable[str], traits: Mapping[str, Sequence[str]]) -> list[str]:
    return list(dict.fromkeys(item for value in values for item in expand_template(value, traits) if item))


def kube_principals(user: User, roles: Sequence[Role]) -> tuple[list[str], list[str]]:
    """``(kubernetes_groups, kubernetes_users)`` the roles grant at most, templates expanded, minus every
    role's deny lists: what ``kubeport status`` shows (per cluster the agent narrows it further)."""
    traits = user.traits
    groups = _expand_all((g for role in roles for g in role.allow.kubernetes_groups), traits)
    users = _expand_all((u for role in roles for u in role.allow.kubernetes_users), traits)
    denied_groups = set(_expand_all((g for role in roles for g in role.deny.kubernetes_groups), traits))
    denied_users = set(_expand_all((u for role in roles for u in role.deny.kubernetes_users), traits))
    return [g for g in groups if g not in denied_groups], [u for u in users if u not in denied_users]
