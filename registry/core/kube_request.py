"""Map one kubectl HTTP request (method, path, query) to what Kubernetes will do: verb, group, resource.

Pure: no I/O. The agent's forwarder maps every request it reads before the role engine
(:mod:`registry.core.kube_access`) authorizes it; the front door may map the first request head for audit.
It lives in ``registry.core`` (not ``agent/forward``) because both sides use it and ``registry`` must not
import ``agent`` (DESIGN.md's dependency direction).

The algorithm follows kube-apiserver's ``RequestInfoFactory`` (so we authorize what the API server will
actually execute), with these deliberate tightenings:

* A path with an empty inner segment (``//``), a ``.`` or ``..`` segment, an encoded slash or backslash
  (``%2F``, ``%5C``), a NUL or an invalid percent escape is refused (:class:`BadParameter`): the API server
  decodes the path before splitting it, so such a path could name a different object than it seems to.
* ``pods/{exec,attach,portforward}`` are ``create`` for GET and POST alike (WebSocket upgrades are GETs;
  KEP-4006's synthetic check), so a read-only grant never opens a shell.
* ``watch`` read as the API server's parameter codec reads it (``Convert_Slice_string_To_bool``: present
  with any first value but ``0`` or ``false`` in any case, ``watch=`` and ``watch=yes`` included) turns a
  collection GET into ``watch``; a named GET with it is also mapped to ``watch`` (a role must allow
  watching to stream), and ``/watch/...`` legacy paths are ``watch``.
* The query is split as Go's ``url.ParseQuery`` splits it (``&`` only, ``+`` is a blank, first value
  wins). A pair Go would silently skip (a ``;`` in its key, an invalid percent escape in key or value) is
  refused instead: otherwise the parameter we authorize (``fieldSelector=metadata.name=...``, ``watch``)
  would not be the one the API server executes.
* A known cluster-scoped resource (nodes, persistentvolumes, clusterroles, ...) addressed under
  ``/namespaces/{ns}/`` is refused (CVE-2019-11247: never authorize a cluster-scoped object with
  namespace rules). The namespace object itself (``/api/v1/namespaces/{name}``) has namespace ``""``.
* An unknown HTTP method maps to verb ``""``, which no role grants.

``path`` is the Kubernetes path after the front door removed the cluster prefix; ``query`` is the raw
query string (without ``?``).

Invariants: ``parse_request`` never raises anything but :class:`BadParameter`; a request it returns with
``is_resource`` False is a discovery/non-resource path (``/api``, ``/apis``, ``/version``, ``/openapi/v2``...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

from registry.core.errors import BadParameter

# Resources the API server serves at cluster scope (the core and well-known groups). Anything else under
# /namespaces/{ns}/ is taken to be namespaced; the API server refuses a cluster-scoped CRD there.
CLUSTER_SCOPED: frozenset[tuple[str, str]] = frozenset(
    {
        ("", "namespaces"),
        ("", "nodes"),
        ("", "persistentvolumes"),
        ("", "componentstatuses"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("certificates.k8s.io", "certificatesigningrequests"),
        ("storage.k8s.io", "storageclasses"),
        ("storage.k8s.io", "csidrivers"),
        ("storage.k8s.io", "csinodes"),
        ("storage.k8s.io", "volumeattachments"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("apiregistration.k8s.io", "apiservices"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
        ("admissionregistration.k8s.io", "validatingadmissionpolicies"),
        ("admissionregistration.k8s.io", "validatingadmissionpolicybindings"),
        ("scheduling.k8s.io", "priorityclasses"),
        ("node.k8s.io", "runtimeclasses"),
        ("networking.k8s.io", "ingressclasses"),
        ("flowcontrol.apiserver.k8s.io", "flowschemas"),
        ("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations"),
        ("authorization.k8s.io", "selfsubjectaccessreviews"),
        ("authorization.k8s.io", "selfsubjectrulesreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
        ("authentication.k8s.io", "selfsubjectreviews"),
        ("authentication.k8s.io", "tokenreviews"),
    }
)

# Subresources that start a stream into a container or a port: "create" whatever the HTTP method.
STREAM_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})
_METHOD_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_SPECIAL_VERBS = frozenset({"watch", "proxy"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(2[Ff]|5[Cc]|00)")
_FALSE = frozenset({"false", "0"})


@dataclass(frozen=True)
class KubeRequest:
    """What one request asks the API server to do (the fields of Kubernetes' ``RequestInfo``).

    ``verb`` is the Kubernetes verb (get, list, watch, create, update, patch, delete, deletecollection,
    proxy) or ``""`` for an unknown method. For a non-resource request only ``verb`` and ``path`` matter.
    """

    method: str
    path: str
    verb: str
    is_resource: bool = False
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def cluster_scoped(self) -> bool:
        """True for a known cluster-scoped resource (a namespaced one listed across namespaces is not)."""
        return (self.api_group, self.resource) in CLUSTER_SCOPED

    def describe(self) -> str:
        """``pods "nginx"``-style words for messages (kubectl's own wording)."""
        resource = f"{self.resource}.{self.api_group}" if self.api_group else self.resource
        if self.subresource:
            resource = f"{resource}/{self.subresource}"
        return f'{resource} "{self.name}"' if self.name else resource


def _segments(path: str) -> list[str]:
    if not path.startswith("/") or path.startswith("//"):
        raise BadParameter(f"request path must start with a single / (got {path[:100]!r})")
    if _ENCODED_SEPARATOR.search(path) or _BAD_ESCAPE.search(path):
        raise BadParameter(f"request path has an encoded separator or an invalid escape: {path[:200]!r}")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError as err:
        raise BadParameter(f"request path is not valid UTF-8 once decoded: {path[:200]!r}") from err
    if any(ch in decoded for ch in "\x00\\") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded):
        raise BadParameter(f"request path has a control character or a backslash: {path[:200]!r}")
    trimmed = decoded.strip("/")
    if not trimmed:
        return []
    parts = trimmed.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadParameter(f"request path has an empty, '.' or '..' segment: {path[:200]!r}")
    return parts


def _unescape_query(text: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise BadParameter(f"request query has an invalid percent escape: {text[:200]!r}")
    # surrogateescape: a non-UTF-8 byte stays distinct (Go keeps the raw bytes), never a shared U+FFFD.
    return unquote_plus(text, errors="surrogateescape")


def _query(query: str) -> dict[str, str]:
    """First value of each parameter (the API server's ``ParameterCodec`` reads the first too), split as
    Go's ``url.ParseQuery`` splits it; BadParameter for a pair Go would drop (module docstring)."""
    values: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        if ";" in raw_key:
            raise BadParameter(f"request query has a ';' in a parameter name: {raw_key[:200]!r}")
        values.setdefault(_unescape_query(raw_key), _unescape_query(raw_value))
    return values


def _watch(params: dict[str, str]) -> bool:
    """The API server's reading of ``watch``: present, and its first value neither ``0`` nor ``false``."""
    value = params.get("watch")
    return value is not None and value.lower() not in _FALSE


def _exact_name(field_selector: str) -> str:
    """``metadata.name=x`` (or ``==``) in a field selector: the API server narrows the request to x."""
    for term in field_selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and key.strip() == "metadata.name" and "!" not in key:
                return value.strip()
    return ""


def parse_request(method: str, path: str, query: str = "") -> KubeRequest:
    """Map (HTTP method, path, raw query) to a :class:`KubeRequest` (module docstring for the rules).

    Raises :class:`BadParameter` for a path that cannot be mapped safely.
    """
    method = method.upper()
    parts = _segments(path)
    clean = "/" + "/".join(parts)
    method_verb = _METHOD_VERBS.get(method, "")
    nonresource = KubeRequest(method=method, path=clean, verb=method_verb)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return nonresource
    rest = parts[1:]
    group = ""
    if parts[0] == "apis":
        if len(rest) < 3:
            return nonresource  # /apis/{group}/{version}: discovery
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]

    verb = method_verb
    special = ""
    if rest[0] in _SPECIAL_VERBS:
        if len(rest) < 2:
            raise BadParameter(f"cannot tell the resource of {clean!r}")
        special, rest = rest[0], rest[1:]
        verb = special if special == "proxy" else ("watch" if method_verb == "get" else "")

    namespace = ""
    in_namespace = False  # the path went through /namespaces/{ns}/ to reach the resource
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
            in_namespace = True

    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 and special != "proxy" else ""
    if not in_namespace and group == "" and resource == "namespaces":
        namespace = ""  # the namespace object itself is cluster-scoped
    elif namespace and (group, resource) in CLUSTER_SCOPED:
        raise BadParameter(f"{resource} is cluster-scoped and cannot be addressed in namespace {namespace!r}")

    params = _query(query)
    if not special:
        if subresource in STREAM_SUBRESOURCES and method in ("GET", "POST"):
            verb = "create"
        elif verb == "get" and (not name or _watch(params)):
            verb = "watch" if _watch(params) else "list"
        elif verb == "delete" and not name:
            verb = "deletecollection"
    if not name and verb in ("list", "watch"):
        name = _exact_name(params.get("fieldSelector", ""))
    return KubeRequest(
        method=method,
        path=clean,
        verb=verb,
        is_resource=True,
        api_group=group,
        api_version=version,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )
