"""The objects a fresh fake cluster starts with, as a real cluster's bootstrap creates them.

- namespaces ``default`` and ``kube-system`` (the serviceaccount controller adds their ``default``
  ServiceAccounts);
- bootstrap RBAC (labelled ``kubernetes.io/bootstrapping: rbac-defaults``): ``cluster-admin`` bound to group
  ``system:masters``; ``system:discovery`` and ``system:basic-user`` bound to ``system:authenticated`` (every
  signed-in user may read discovery documents and create self access/rules/subject reviews);
  ``system:public-info-viewer`` (``/version``, ``/healthz``, ...); and an unbound, trimmed ``view`` role.

Simplified: the real bootstrap has dozens more roles (controllers, nodes, aggregation); the fake keeps the
ones whose absence a client would notice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.fakes.kube_discovery import AUTHN, AUTHZ, RBAC


def bootstrap_objects(create: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Create what a fresh cluster has through ``create`` (FakeKube.create_object)."""
    for name in ("default", "kube-system"):
        create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    bootstrap = {
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    }
    roles: dict[str, list[dict[str, Any]]] = {
        "cluster-admin": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]},
        ],
        "system:discovery": [
            {
                "nonResourceURLs": [
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                "verbs": ["get"],
            }
        ],
        "system:basic-user": [
            {"apiGroups": [AUTHN], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            {
                "apiGroups": [AUTHZ],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                "verbs": ["create"],
            },
        ],
        "system:public-info-viewer": [
            {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}
        ],
        "view": [
            {
                "apiGroups": [""],
                "resources": ["configmaps", "namespaces", "pods", "serviceaccounts", "services"],
                "verbs": ["get", "list", "watch"],
            },
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
        ],
    }
    bindings = {
        "cluster-admin": ["system:masters"],
        "system:discovery": ["system:authenticated"],
        "system:basic-user": ["system:authenticated"],
        "system:public-info-viewer": ["system:authenticated", "system:unauthenticated"],
    }
    for name, rules in roles.items():
        create(
            {
                "apiVersion": f"{RBAC}/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name, **bootstrap},
                "rules": rules,
            }
        )
    for name, groups in bindings.items():
        create(
            {
                "apiVersion": f"{RBAC}/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name, **bootstrap},
                "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
                "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": g} for g in groups],
            }
        )
