"""Request paths to Kubernetes request attributes, as the apiserver's ``RequestInfoFactory`` derives them.

Pure. The attributes (verb, API group/version, namespace, resource, subresource, name) are what
authorization and routing both use, so the fake decides "who may do this" on exactly the same reading of
the URL as the real server:

- ``/api/v1/...`` is the core group, ``/apis/<group>/<version>/...`` any other; anything else, and the
  discovery prefixes themselves (``/api``, ``/api/v1``, ``/apis/<group>/<version>``), is a non-resource
  request whose verb is the lower-case HTTP method.
- ``namespaces/<ns>/<resource>...`` puts ``<ns>`` into the namespace; ``/api/v1/namespaces/<ns>`` is the
  namespace object itself (namespace attribute = its own name, as in the real server).
- GET without a name is ``list`` (``watch`` with ``watch=true``), DELETE without a name
  ``deletecollection``; the legacy ``/watch/`` path segment makes the verb ``watch``.
- ``pods/exec``, ``pods/attach`` and ``pods/portforward`` are ``create`` for GET as for POST: WebSocket
  upgrades must be GETs (RFC 6455), and the real server (KEP-4006,
  ``AuthorizePodWebsocketUpgradeCreatePermission``) does not let ``get`` alone open a shell.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_STREAMING_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True)
class RequestInfo:
    path: str
    verb: str
    is_resource: bool = False
    api_prefix: str = ""  # "api" or "apis" for resource requests
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    extra_parts: tuple[str, ...] = ()  # segments after name/subresource (never valid for the fake)


def parse_bool(value: str) -> bool | None:
    """Go's strconv.ParseBool, which the apiserver uses for boolean query parameters; None if invalid."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def parse_request(method: str, path: str, query: dict[str, list[str]]) -> RequestInfo:
    parts = [unquote(p) for p in path.strip("/").split("/") if p != ""]
    non_resource = RequestInfo(path=path, verb=method.lower())
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    if parts and parts[0] == "watch":
        if len(parts) < 2:
            return non_resource
        verb, parts = "watch", parts[1:]
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 else ""
    if not name and verb == "get":
        watch = query.get("watch", [""])[-1]
        verb = "watch" if parse_bool(watch) else "list"
        # A list/watch pinned to one name by field selector is authorized as that name (resourceNames).
        name = _exact_name(query.get("fieldSelector", [""])[-1])
    if not name and verb == "delete":
        verb = "deletecollection"
    if resource == "pods" and not group and subresource in _STREAMING_SUBRESOURCES and verb == "get":
        verb = "create"
    return RequestInfo(
        path=path,
        verb=verb,
        is_resource=True,
        api_prefix=prefix,
        group=group,
        version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        extra_parts=tuple(parts[3:]),
    )


def _exact_name(field_selector: str) -> str:
    for term in field_selector.split(","):
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if sep and not key.endswith("!") and key.strip() == "metadata.name" and "/" not in value:
            return value.strip()
    return ""
