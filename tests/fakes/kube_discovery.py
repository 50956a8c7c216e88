"""The fake API server's resource table and its static discovery documents.

Faithful: the legacy (non-aggregated) discovery shapes kubectl and the ``kubernetes`` client read —
``/version`` (``version.Info``), ``/api`` (``APIVersions``), ``/apis`` (``APIGroupList``), ``/apis/<group>``
(``APIGroup``) and ``/api/v1`` / ``/apis/<group>/<version>`` (``APIResourceList`` with name, singularName,
namespaced, kind, verbs, shortNames and categories as a real 1.30 server lists them). kubectl asks for
aggregated discovery first; plain JSON makes it fall back to these documents, as against an older server.

Simplified: only the resources below exist; one version per group; no ``storageVersionHash``; subresources
are listed only where the fake implements them (``serviceaccounts/token``, ``pods/exec|log|portforward``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.fakes.kube_status import qualified_kind, qualified_resource

CRUD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CLUSTER_CRUD_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")  # namespaces
CREATE_ONLY = ("create",)


@dataclass(frozen=True)
class ResourceType:
    """One REST resource the fake serves (a row of an APIResourceList)."""

    group: str
    version: str
    name: str  # plural, the URL segment
    singular: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = CRUD_VERBS
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def stored(self) -> bool:
        """False for create-only virtual resources (access reviews) that are computed, never stored."""
        return self.verbs != CREATE_ONLY

    @property
    def qualified(self) -> str:
        return qualified_resource(self.name, self.group)

    @property
    def qualified_kind(self) -> str:
        return qualified_kind(self.kind, self.group)

    def discovery_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        return entry


RBAC = "rbac.authorization.k8s.io"
AUTHZ = "authorization.k8s.io"
AUTHN = "authentication.k8s.io"

NAMESPACES = ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, CLUSTER_CRUD_VERBS, ("ns",))
PODS = ResourceType("", "v1", "pods", "pod", "Pod", True, CRUD_VERBS, ("po",), ("all",))
SECRETS = ResourceType("", "v1", "secrets", "secret", "Secret", True)
SERVICE_ACCOUNTS = ResourceType(
    "", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, CRUD_VERBS, ("sa",)
)
CONFIG_MAPS = ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, CRUD_VERBS, ("cm",))
SERVICES = ResourceType("", "v1", "services", "service", "Service", True, CRUD_VERBS, ("svc",), ("all",))
DEPLOYMENTS = ResourceType(
    "apps", "v1", "deployments", "deployment", "Deployment", True, CRUD_VERBS, ("deploy",), ("all",)
)
CLUSTER_ROLES = ResourceType(RBAC, "v1", "clusterroles", "clusterrole", "ClusterRole", False)
CLUSTER_ROLE_BINDINGS = ResourceType(
    RBAC, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False
)
ROLES = ResourceType(RBAC, "v1", "roles", "role", "Role", True)
ROLE_BINDINGS = ResourceType(RBAC, "v1", "rolebindings", "rolebinding", "RoleBinding", True)
SELF_SUBJECT_ACCESS_REVIEWS = ResourceType(
    AUTHZ, "v1", "selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview", False, CREATE_ONLY
)
SELF_SUBJECT_RULES_REVIEWS = ResourceType(
    AUTHZ, "v1", "selfsubjectrulesreviews", "selfsubjectrulesreview", "SelfSubjectRulesReview", False, CREATE_ONLY
)
SUBJECT_ACCESS_REVIEWS = ResourceType(
    AUTHZ, "v1", "subjectaccessreviews", "subjectaccessreview", "SubjectAccessReview", False, CREATE_ONLY
)
SELF_SUBJECT_REVIEWS = ResourceType(
    AUTHN, "v1", "selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview", False, CREATE_ONLY
)

RESOURCES: tuple[ResourceType, ...] = (
    NAMESPACES, PODS, SECRETS, SERVICE_ACCOUNTS, CONFIG_MAPS, SERVICES, DEPLOYMENTS,
    CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS,
    SELF_SUBJECT_ACCESS_REVIEWS, SELF_SUBJECT_RULES_REVIEWS, SUBJECT_ACCESS_REVIEWS, SELF_SUBJECT_REVIEWS,
)  # fmt: skip

# (group, version) pairs in the order a real server lists its groups (by priority).
GROUP_VERSIONS: tuple[tuple[str, str], ...] = (("apps", "v1"), (AUTHN, "v1"), (AUTHZ, "v1"), (RBAC, "v1"))

# Subresources the fake implements, listed in their parent's APIResourceList.
TOKEN_SUBRESOURCE: dict[str, Any] = {
    "name": "serviceaccounts/token",
    "singularName": "",
    "namespaced": True,
    "group": AUTHN,
    "version": "v1",
    "kind": "TokenRequest",
    "verbs": ["create"],
}

# As a real server lists them (name, kind, verbs), right after "pods".
POD_SUBRESOURCES: tuple[dict[str, Any], ...] = (
    {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions", "verbs": ["create", "get"]},
    {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
    {
        "name": "pods/portforward",
        "singularName": "",
        "namespaced": True,
        "kind": "PodPortForwardOptions",
        "verbs": ["create", "get"],
    },
)

_BY_PATH: dict[tuple[str, str, str], ResourceType] = {(r.group, r.version, r.name): r for r in RESOURCES}


def find(group: str, version: str, resource: str) -> ResourceType | None:
    """The resource served at ``/api[s]/<group>/<version>/<resource>``, or None."""
    return _BY_PATH.get((group, version, resource))


def resolve(name: str) -> ResourceType:
    """Look a resource up the way kubectl does: plural, singular, short name or Kind (case-insensitive),
    optionally qualified with the group (``clusterroles.rbac.authorization.k8s.io``). For test helpers."""
    wanted = name.lower()
    for rt in RESOURCES:
        names = {rt.name, rt.singular, rt.kind.lower(), *rt.short_names}
        if wanted in names or wanted in {f"{n}.{rt.group}" for n in names if rt.group}:
            return rt
    raise KeyError(f"the fake Kubernetes API has no resource type {name!r}")


def resolve_kind(api_version: str, kind: str) -> ResourceType | None:
    for rt in RESOURCES:
        if rt.api_version == api_version and rt.kind == kind:
            return rt
    return None


_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")


def version_document(git_version: str) -> dict[str, Any]:
    """``GET /version``; ``git_version`` like ``v1.30.0`` (validated by FakeKube)."""
    match = _VERSION_RE.match(git_version)
    major, minor = (match.group(1), match.group(2)) if match else ("1", "30")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-04-17T17:27:03Z",
        "goVersion": "go1.22.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def valid_git_version(git_version: str) -> bool:
    return _VERSION_RE.match(git_version) is not None


def api_versions(server_address: str) -> dict[str, Any]:
    """``GET /api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_document(group: str, version: str) -> dict[str, Any]:
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


def api_group_list() -> dict[str, Any]:
    """``GET /apis``."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_document(group, version) for group, version in GROUP_VERSIONS],
    }


def api_group(group: str) -> dict[str, Any] | None:
    """``GET /apis/<group>``, or None for an unknown group."""
    for name, version in GROUP_VERSIONS:
        if name == group:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group_document(name, version)}
    return None


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``GET /api/v1`` (group "") or ``GET /apis/<group>/<version>``, or None if not served."""
    if (group, version) != ("", "v1") and (group, version) not in GROUP_VERSIONS:
        return None
    entries = [rt.discovery_entry() for rt in RESOURCES if rt.group == group and rt.version == version]
    if group == "":
        at = next(i for i, e in enumerate(entries) if e["name"] == "serviceaccounts") + 1
        entries.insert(at, dict(TOKEN_SUBRESOURCE))
        at = next(i for i, e in enumerate(entries) if e["name"] == "pods") + 1
        entries[at:at] = [dict(entry) for entry in POD_SUBRESOURCES]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": entries,
    }
