"""Which agents may carry a kubectl connection to a cluster, and in which order to try them.

Pure (no I/O; randomness injected). The front door reads the cluster's ``kube_cluster`` resource and its
``kube_server`` heartbeats, then asks :func:`route` whether the user may see the cluster at all and which
heartbeats (agents) the user may reach it through, and :func:`order_agents` in which order to try the
agents that also hold a live tunnel to this front door.

Rules (issue 9 §2-§3, access-design.md §7.3, Teleport RFD 0203):

* A cluster exists when a ``kube_cluster`` resource names it or a heartbeat serves it (an agent's static,
  config-file cluster has heartbeats only; the registry refuses heartbeats for clusters that do neither).
* Labels are judged per heartbeat, as the agent behind it will judge them on every request: the cluster's
  static labels (the registry's current copy when the resource exists, else the heartbeat's copy), the
  heartbeat's service labels, then the dynamic label results that agent reported (a dynamic value wins a
  key conflict, Teleport's precedence). Without heartbeats the resource's own labels decide.
* Visible = some label set passes :func:`registry.core.kube_access.cluster_visible` with the user's current
  roles. A hidden cluster and an unknown one are indistinguishable to the caller (the same NotFound).
* Candidates are the visible heartbeats whose host holds a live tunnel; they are tried healthy first, then
  unknown, then unhealthy (fail open: an unhealthy agent is better than none), shuffled within each group
  so load spreads over equally good agents. One try per host.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from registry.core.kube_access import cluster_visible
from registry.core.kube_listing import reachable_servers
from registry.core.resources import KubeCluster, KubeServer, Role, User

HEALTH_ORDER = ("healthy", "unknown", "unhealthy")


@dataclass(frozen=True)
class Route:
    """What the front door may do for one user and one cluster name."""

    cluster: str
    visible: bool  # False: answer exactly as for a cluster that does not exist
    servers: tuple[KubeServer, ...] = ()  # heartbeats the user may reach the cluster through


def route(
    name: str,
    user: User,
    roles: Sequence[Role],
    cluster: KubeCluster | None,
    servers: Iterable[KubeServer],
) -> Route:
    """Whether ``user`` (with its current ``roles``) may see cluster ``name``, and through which heartbeats."""
    serving = [server for server in servers if server.metadata.name == name]
    if cluster is None and not serving:
        return Route(name, visible=False)
    if not serving:
        assert cluster is not None
        return Route(name, visible=cluster_visible(user, roles, cluster.all_labels()))
    reachable = reachable_servers(user, roles, cluster, serving)
    return Route(name, visible=bool(reachable), servers=reachable)


def order_agents(servers: Iterable[KubeServer], live: Set[str], rng: random.Random) -> list[str]:
    """Host ids to try, in order: live ones only, grouped healthy / unknown / unhealthy, shuffled within."""
    groups: Mapping[str, list[str]] = {status: [] for status in HEALTH_ORDER}
    seen: set[str] = set()
    for server in servers:
        host = server.host_id
        if host in seen or host not in live:
            continue
        seen.add(host)
        status: str = server.health.status if server.health.status in groups else "unknown"
        groups[status].append(host)
    ordered: list[str] = []
    for status in HEALTH_ORDER:
        group = sorted(groups[status])  # a deterministic start, so a seeded rng gives a reproducible order
        rng.shuffle(group)
        ordered.extend(group)
    return ordered
