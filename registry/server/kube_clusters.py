"""``GET /v1/kube_clusters``: the kube clusters the *calling user* may reach, for ``kubeport kube ls``.

The decision is :func:`registry.core.kube_listing.visible_clusters` with the caller's current roles (the
certificate's roles the user still holds, as :meth:`Registry.caller_for` resolves them on every request)
and the user's traits, over the registry's ``kube_cluster`` resources and the live heartbeats. It needs no
``kube_server`` or ``kube_cluster`` read rule: a user sees exactly what the front door would route for
them, and nothing else (seed 003's ``kube-access`` role works unchanged).

Invariants:

* Only users: an agent or admin certificate gets AccessDenied (admins have ``kpctl get kube_servers``).
* The answer holds names, labels and health, never a kubeconfig or another secret field
  (resources are decoded without secrets; only :class:`VisibleCluster` fields are sent).
* A stored value this registry cannot read (a newer writer, a broken row) is skipped with a warning, never
  a 500: one bad heartbeat must not hide every other cluster.

Cost: one list of ``kube_cluster`` and one of ``kube_server`` per call; ``kube ls`` is a human's command.
"""

from __future__ import annotations

import logging
from typing import Any

from registry.core import codec
from registry.core.errors import AccessDenied, BadParameter, NotFound, TooLarge, Unauthenticated
from registry.core.kube_listing import kube_principals, visible_clusters
from registry.core.resources import KubeCluster, KubeServer, User
from registry.core.wire import KubeAccessView, KubeClusterView
from registry.server.authz import Caller
from registry.server.service import Registry

log = logging.getLogger(__name__)


def _decode(value: dict[str, Any], what: str) -> Any:
    try:
        return codec.resource_from_dict(value, verify_kubeconfig=False)
    except (BadParameter, TooLarge) as err:
        log.warning("kube_clusters: ignoring an unreadable %s: %s", what, err)
        return None


async def kube_access_view(registry: Registry, caller: Caller) -> KubeAccessView:
    """What ``GET /v1/kube_clusters`` answers for ``caller`` (module docstring)."""
    identity = caller.identity
    if identity.kind != "user":
        raise AccessDenied(
            "only users have a list of kube clusters they may reach; admins see every served cluster with "
            "kpctl get kube_servers"
        )
    try:
        record = await registry.store.get("user", identity.name)
    except NotFound:  # deleted between authentication and now
        raise Unauthenticated(f'user "{identity.name}" no longer exists') from None
    user = codec.resource_from_dict(record.value)
    assert isinstance(user, User)
    clusters: dict[str, KubeCluster] = {}
    for item in await registry.store.list("kube_cluster"):
        cluster = _decode(item.value, "kube_cluster")
        if isinstance(cluster, KubeCluster):
            clusters[cluster.metadata.name] = cluster
    servers = []
    for item in await registry.store.list("kube_server"):
        server = _decode(item.value, "kube_server heartbeat")
        if isinstance(server, KubeServer):
            servers.append(server)
    roles = caller.roles
    groups, users = kube_principals(user, roles)
    items: list[KubeClusterView] = [
        {"name": c.name, "labels": dict(c.labels), "health": dict(c.health)}
        for c in visible_clusters(user, roles, clusters, servers, now=registry.now())
    ]
    return {
        "user": user.name,
        "roles": list(identity.roles),
        "kubernetes_groups": groups,
        "kubernetes_users": users,
        "expires": identity.expires.isoformat() if identity.expires else None,
        "items": items,
    }
