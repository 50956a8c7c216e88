"""kubeport-get-kubeconfig: mint a service-account kubeconfig for a cluster and (optionally) register it.

A Python port of Teleport's ``examples/k8s-auth/get-kubeconfig.sh`` (run as ``python
scripts/get_kubeconfig.py`` or the ``kubeport-get-kubeconfig`` console command). Against the cluster of the
chosen kubeconfig context it creates or updates, idempotently:

* Namespace ``$TELEPORT_NAMESPACE`` (default ``teleport``) and ServiceAccount ``$TELEPORT_SA_NAME`` (default
  ``teleport-sa``) in it;
* ClusterRole ``teleport-role`` with exactly the original's rules (impersonate users/groups/serviceaccounts,
  get pods, create self-subject access/rules reviews) and ClusterRoleBinding ``teleport-crb`` to the SA (the
  names stay the original's so both tools manage the same objects; ``--role-name``/``--binding-name``
  choose others);
* on Kubernetes >= 1.24 (the SA lists no token secret) a ``kubernetes.io/service-account-token`` Secret
  named like the SA,

then waits until the token controller has filled the secret's ``token`` and ``ca.crt`` and writes a
kubeconfig with the original's structure (mode 0600). ``--kube-cluster NAME`` also writes a kube_cluster
file that ``kpctl create`` accepts; ``--register`` creates it in the registry in the same run.

Invariants:

* every expected failure is one ``ERROR: ...`` line on stderr and exit code 1 (tracebacks with --debug);
* no file is written unless every cluster step succeeded and the token is non-empty; files are written
  atomically with mode 0600 (they hold a credential), so no partial kubeconfig is ever left behind;
* a second run changes nothing in the cluster (read first; write only what differs) and prints the same
  progress (``kind/name unchanged``, like the ``kubectl apply`` the original runs);
* nothing an admin added is removed silently: a ClusterRole that grants more than the original, or a
  ClusterRoleBinding bound to another subject, is reported and only reset with ``--force``;
* every API call carries a timeout and is tried once, so an unreachable server fails in about ``--timeout``.

Unlike the registry (which rejects ``exec``/``auth-provider`` users in stored kubeconfigs because they would
run code on agent hosts), this script runs on the admin's own workstation with the admin's own kubeconfig,
where exec plugins (EKS, GKE, OIDC) are the normal way to log in: the ``kubernetes`` client's loader may run
them here. The kubeconfig it *writes* holds only a static token, which the registry accepts.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import yaml

from registry.core.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConnectionProblem,
    KubeportError,
    NotFound,
    Timeout,
    Unauthenticated,
)

DEFAULT_NAMESPACE = "teleport"
DEFAULT_SERVICE_ACCOUNT = "teleport-sa"
DEFAULT_ROLE_NAME = "teleport-role"
DEFAULT_BINDING_NAME = "teleport-crb"
DEFAULT_OUTPUT = "kubeconfig"
DEFAULT_KUBE_CLUSTER_FILE = "kube_cluster.yaml"
DEFAULT_TIMEOUT = 10.0
DEFAULT_WAIT = 60.0
MAX_KUBECONFIG_BYTES = 16 << 20  # a merged admin kubeconfig with many clusters is still far below this

RBAC_GROUP = "rbac.authorization.k8s.io"
TOKEN_SECRET_TYPE = "kubernetes.io/service-account-token"  # noqa: S105 (a Secret type, not a password)
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"

# The original's ClusterRole rules, verbatim (teleport-behaviour.md §6 step 5).
ROLE_RULES: tuple[dict[str, list[str]], ...] = (
    {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        "verbs": ["create"],
    },
)

NEEDED_PERMISSIONS = (
    "permission to get, create and update namespaces, serviceaccounts, secrets, clusterroles and "
    "clusterrolebindings (for example the cluster-admin ClusterRole)"
)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # used with fullmatch: "$" would accept "x\n"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_FORBIDDEN_USER = re.compile(r'User "((?:[^"\\]|\\.)*)"')

if TYPE_CHECKING:
    from registry.cli.common import Connection

log = logging.getLogger("kubeport.get_kubeconfig")


# -- pure: names, labels, rules, bindings, the kubeconfig --------------------------------------------------


def check_namespace_name(value: str, source: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise BadParameter(
            f"{source} {value!r} is not a valid namespace name: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


def check_service_account_name(value: str, source: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise BadParameter(
            f"{source} {value!r} is not a valid service account name: lower-case letters, digits, '-' and "
            "'.', starting and ending with a letter or digit, at most 253 characters"
        )
    return value


def check_rbac_name(value: str, source: str) -> str:
    # RBAC object names only have to be valid path segments ("system:foo" is a real ClusterRole name).
    if (
        not value
        or len(value) > 253
        or value in (".", "..")
        or any(c in value for c in "/%")
        or not value.isprintable()
    ):
        raise BadParameter(f"{source} {value!r} is not a valid name: 1..253 printable characters, no '/' or '%'")
    return value


def parse_labels(values: Sequence[str]) -> dict[str, str]:
    """``--labels env=prod,team=a`` (repeatable) as a dict; validation of keys/values is the codec's job."""
    labels: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            if not sep or not key.strip():
                raise BadParameter(f"--labels {value!r}: expected key=value[,key=value...] (bad item {item!r})")
            labels[key.strip()] = val.strip()
    return labels


def _strings(rule: Mapping[str, Any], key: str) -> list[str]:
    return [str(v) for v in _list(rule, key)]


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    """``obj[key]`` when it is a list, else ``[]``: objects read from a cluster are not trusted to be well-formed."""
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _mapping(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


Permission = tuple[str, str, str]  # (apiGroup, resource, verb)


def _needed() -> tuple[Permission, ...]:
    """The original's permissions one by one, in the original's order (for messages)."""
    return tuple(
        (group, resource, verb)
        for rule in ROLE_RULES
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


def _covers(rule: Mapping[str, Any], perm: Permission) -> bool:
    if _strings(rule, "resourceNames") or _strings(rule, "nonResourceURLs"):
        return False  # restricted to some names (or not about resources at all): not the blanket grant we need
    group, resource, verb = perm
    return (
        any(g in (group, "*") for g in _strings(rule, "apiGroups"))
        and any(r in (resource, "*") for r in _strings(rule, "resources"))
        and any(v in (verb, "*") for v in _strings(rule, "verbs"))
    )


def _grants_extra(rule: Mapping[str, Any], needed: Sequence[Permission]) -> bool:
    if _strings(rule, "nonResourceURLs"):
        return True
    for group in _strings(rule, "apiGroups"):
        for resource in _strings(rule, "resources"):
            for verb in _strings(rule, "verbs"):
                if "*" in (group, resource, verb) or (group, resource, verb) not in needed:
                    return True
    return False


def describe_permission(perm: Permission) -> str:
    group, resource, verb = perm
    return f"{verb} {resource}" + (f".{group}" if group else "")


def describe_rule(rule: Mapping[str, Any]) -> str:
    parts = [f"{key}={_strings(rule, key)}" for key in ("apiGroups", "resources", "verbs") if key in rule]
    parts += [f"{key}={_strings(rule, key)}" for key in ("resourceNames", "nonResourceURLs") if rule.get(key)]
    return "{" + ", ".join(parts).replace("'", '"') + "}"


@dataclass(frozen=True)
class RuleReport:
    """How stored ClusterRole rules differ from the original's, by meaning (not by spelling)."""

    missing: tuple[Permission, ...]
    extra_rules: tuple[Mapping[str, Any], ...]

    @property
    def same(self) -> bool:
        return not self.missing and not self.extra_rules


def analyse_rules(stored: object) -> RuleReport:
    rules = [r for r in stored if isinstance(r, Mapping)] if isinstance(stored, list) else []
    needed = _needed()
    missing = tuple(p for p in needed if not any(_covers(r, p) for r in rules))
    extra = tuple(r for r in rules if _grants_extra(r, needed))
    return RuleReport(missing=missing, extra_rules=extra)


def service_account_subject(namespace: str, name: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def describe_subject(subject: object) -> str:
    if not isinstance(subject, Mapping):
        return repr(subject)
    kind = str(subject.get("kind", "?"))
    name = str(subject.get("name", "?"))
    if kind == "ServiceAccount":
        return f"ServiceAccount {subject.get('namespace', '?')}/{name}"
    return f"{kind} {name}"


def _is_subject(subject: object, wanted: Mapping[str, str]) -> bool:
    return isinstance(subject, Mapping) and all(subject.get(k) == v for k, v in wanted.items())


def render_kubeconfig(
    *,
    context: str,
    cluster: str,
    server: str,
    ca_data_b64: str,
    user: str,
    token: str,
    tls_server_name: str | None = None,
) -> bytes:
    """The original's kubeconfig (§6 step 10), key for key; ``tls-server-name`` is kept when the admin's
    kubeconfig needed one, since the API server would otherwise fail certificate verification."""
    cluster_entry: dict[str, Any] = {"certificate-authority-data": ca_data_b64, "server": server}
    if tls_server_name:
        cluster_entry["tls-server-name"] = tls_server_name
    doc = {
        "apiVersion": "v1",
        "clusters": [{"cluster": cluster_entry, "name": cluster}],
        "contexts": [{"context": {"cluster": cluster, "user": user}, "name": context}],
        "current-context": context,
        "kind": "Config",
        "preferences": {},
        "users": [{"name": user, "user": {"token": token}}],
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).encode()


# -- the admin's kubeconfig ---------------------------------------------------------------------------------


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
    from registry.files import read_limited

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


# -- the Kubernetes API, through the kubernetes client --------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One object kind this script manages: how the client names its methods and how kubectl prints it."""

    api: str  # "core" or "rbac"
    method: str  # client method stem, e.g. "cluster_role"
    resource: str  # plural resource, e.g. "clusterroles"
    group: str
    namespaced: bool

    @property
    def display(self) -> str:
        """``kubectl apply``'s prefix: ``namespace``, ``clusterrole.rbac.authorization.k8s.io``."""
        singular = self.resource.removesuffix("s")
        return f"{singular}.{self.group}" if self.group else singular

    def describe(self) -> str:
        return f"{self.resource} ({self.group})" if self.group else self.resource


NAMESPACE = Kind("core", "namespace", "namespaces", "", namespaced=False)
SERVICE_ACCOUNT = Kind("core", "service_account", "serviceaccounts", "", namespaced=True)
SECRET = Kind("core", "secret", "secrets", "", namespaced=True)
CLUSTER_ROLE = Kind("rbac", "cluster_role", "clusterroles", RBAC_GROUP, namespaced=False)
CLUSTER_ROLE_BINDING = Kind("rbac", "cluster_role_binding", "clusterrolebindings", RBAC_GROUP, namespaced=False)


class Kube:
    """A thin adapter over the ``kubernetes`` client: plain dicts in and out, one attempt per call with a
    timeout, and every client/urllib3/ssl error mapped to the kubeport error tree at this one seam."""

    def __init__(self, source: Source, *, timeout: float) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        self.source = source
        self.timeout = timeout
        cfg = client.Configuration()
        try:
            # cast: kubernetes.config has no type hints (kubernetes.client does).
            cast(Any, config).load_kube_config(
                config_file=os.pathsep.join(str(p) for p in source.paths),
                context=source.context,
                client_configuration=cfg,
                persist_config=False,
            )
        except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
            raise BadParameter(f"cannot use context {source.context!r} of the kubeconfig: {exc}") from None
        # The client retries connection errors three times by default; one attempt keeps "unreachable"
        # within --timeout. The steps are idempotent: running the script again is the retry.
        cfg.retries = False
        self._api = client.ApiClient(cfg)
        self._clients = {"core": client.CoreV1Api(self._api), "rbac": client.RbacAuthorizationV1Api(self._api)}

    def close(self) -> None:
        cast(Any, self._api).close()

    # Each verb builds the client's method name: read_namespace / read_namespaced_secret, ...
    def get(self, kind: Kind, name: str, namespace: str = "") -> dict[str, Any] | None:
        try:
            return self._call("get", kind, name, namespace, None)
        except NotFound:
            return None

    def create(self, kind: Kind, body: Mapping[str, Any], namespace: str = "") -> dict[str, Any]:
        return self._call("create", kind, str(body["metadata"]["name"]), namespace, body)

    def replace(self, kind: Kind, body: Mapping[str, Any], namespace: str = "") -> dict[str, Any]:
        return self._call("update", kind, str(body["metadata"]["name"]), namespace, body)

    def delete(self, kind: Kind, name: str, namespace: str = "") -> None:
        self._call("delete", kind, name, namespace, None)

    def _call(self, verb: str, kind: Kind, name: str, namespace: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        prefix = {"get": "read", "create": "create", "update": "replace", "delete": "delete"}[verb]
        method = f"{prefix}_namespaced_{kind.method}" if kind.namespaced else f"{prefix}_{kind.method}"
        kwargs: dict[str, Any] = {"_request_timeout": self.timeout, "_preload_content": False}
        if verb != "create":
            kwargs["name"] = name
        if kind.namespaced:
            kwargs["namespace"] = namespace
        if body is not None:
            kwargs["body"] = dict(body)
        log.debug("%s %s %s/%s", verb, kind.resource, namespace, name)
        try:
            response = getattr(self._clients[kind.api], method)(**kwargs)
            raw = response.data
        except Exception as exc:  # the client raises ApiException, urllib3 and ssl errors; map them here
            raise self._map_error(exc, verb, kind, name, namespace) from None
        try:
            result = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConnectionProblem(f"the Kubernetes API at {self.source.server} answered with non-JSON") from None
        return result if isinstance(result, dict) else {}

    def _map_error(self, exc: Exception, verb: str, kind: Kind, name: str, namespace: str) -> Exception:
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException) and exc.status:
            return self._map_status(exc, verb, kind, name, namespace)
        return network_error(self.source.server, exc, self.timeout)  # status 0: TLS or transport failure

    def _map_status(self, exc: Any, verb: str, kind: Kind, name: str, namespace: str) -> Exception:
        status = _parse_status(getattr(exc, "body", None))
        message = str(status.get("message") or getattr(exc, "reason", "") or "")
        code = int(getattr(exc, "status", 0) or 0)
        where = f'in namespace "{namespace}"' if kind.namespaced else "at the cluster scope"
        if code == 403:
            user_match = _FORBIDDEN_USER.search(message)
            user = user_match.group(1) if user_match else self.source.user
            return AccessDenied(
                f'forbidden: cannot {verb} {kind.describe()} {where}: your kubeconfig user "{user}" '
                f"needs {NEEDED_PERMISSIONS}"
            )
        if code == 401:
            return Unauthenticated(
                f"the Kubernetes API at {self.source.server} rejected the credentials of context "
                f'"{self.source.context}" (401 Unauthorized{": " + message if message else ""})'
            )
        if code == 404:
            return NotFound(message or f'{kind.resource} "{name}" not found')
        if code == 409 and status.get("reason") == "AlreadyExists":
            return AlreadyExists(message)
        if code == 409:
            return CompareFailed(
                f"{kind.display}/{name} changed while this script was updating it ({message}); run it again"
            )
        return KubeportError(f"cannot {verb} {kind.display}/{name} {where}: HTTP {code}: {message or 'no details'}")


def _parse_status(body: object) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return {}
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return {"message": body.strip()[:300]}
    return parsed if isinstance(parsed, dict) else {}


def network_error(server: str, exc: BaseException, timeout: float) -> KubeportError:
    """``cannot reach the Kubernetes API at URL: reason``, one line, with the most specific reason found."""
    import urllib3.exceptions as u3

    prefix = f"cannot reach the Kubernetes API at {server}"
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__ or _first_arg_exception(cause)
    # The client turns urllib3's SSLError into ApiException(status=0) whose reason is the only text left.
    text = " ".join(" ".join(str(getattr(item, "reason", "") or item) for item in chain).split())
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            return ConnectionProblem(
                f"{prefix}: TLS certificate verification failed ({item.verify_message or item.reason})"
            )
    verify = re.search(r"certificate verify failed: ([^(]+)", text)
    if verify:
        return ConnectionProblem(f"{prefix}: TLS certificate verification failed ({verify.group(1).strip()})")
    # urllib3's NewConnectionError subclasses its ConnectTimeoutError: a refused connection is not a timeout.
    refused = any(isinstance(item, u3.NewConnectionError) for item in chain)
    if not refused and any(isinstance(item, u3.TimeoutError | TimeoutError) for item in chain):
        return Timeout(f"{prefix}: no answer within {timeout:g}s")
    for item in chain:
        if isinstance(item, OSError) and item.strerror:
            return ConnectionProblem(f"{prefix}: {item.strerror}")
    return ConnectionProblem(f"{prefix}: {text or exc.__class__.__name__}")


def _first_arg_exception(exc: BaseException) -> BaseException | None:
    # urllib3 keeps the underlying socket/ssl error in args (e.g. SSLError(SSLCertVerificationError(...))).
    return next((a for a in exc.args if isinstance(a, BaseException)), None)


# -- the steps ------------------------------------------------------------------------------------------------


@dataclass
class Steps:
    """The cluster-side work, step by step. ``say`` prints progress, ``warn`` prints a warning."""

    kube: Kube
    namespace: str
    service_account: str
    role_name: str
    binding_name: str
    force: bool
    say: Callable[[str], None]
    warn: Callable[[str], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    poll_interval: float = 0.1

    def _report(self, kind: Kind, name: str, what: str) -> None:
        self.say(f"{kind.display}/{name} {what}")

    def _ensure(self, kind: Kind, body: dict[str, Any], namespace: str = "") -> tuple[dict[str, Any], bool]:
        """Read; create on 404. Returns (object, created). An object a concurrent run created between our read
        and our create counts as found, so two runs at once both succeed."""
        name = str(body["metadata"]["name"])
        found = self.kube.get(kind, name, namespace)
        if found is not None:
            return found, False
        try:
            return self.kube.create(kind, body, namespace), True
        except AlreadyExists:
            again = self.kube.get(kind, name, namespace)
            if again is None:
                raise
            return again, False

    def ensure_namespace(self) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        _, created = self._ensure(NAMESPACE, body)
        self._report(NAMESPACE, self.namespace, "created" if created else "unchanged")

    def ensure_service_account(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": self.service_account, "namespace": self.namespace},
        }
        _, created = self._ensure(SERVICE_ACCOUNT, body, self.namespace)
        self._report(SERVICE_ACCOUNT, self.service_account, "created" if created else "unchanged")

    def ensure_cluster_role(self) -> None:
        body = {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": self.role_name},
            "rules": [dict(r) for r in ROLE_RULES],
        }
        obj, created = self._ensure(CLUSTER_ROLE, body)
        if created:
            self._report(CLUSTER_ROLE, self.role_name, "created")
            return
        report = analyse_rules(obj.get("rules"))
        if report.same:
            self._report(CLUSTER_ROLE, self.role_name, "unchanged")
            return
        stored_rules = [r for r in _list(obj, "rules") if isinstance(r, Mapping)]
        if report.extra_rules and not self.force:
            extras = "; ".join(describe_rule(r) for r in report.extra_rules)
            self.warn(
                f'ClusterRole "{self.role_name}" grants more than kubeport needs (an admin edited it?): {extras}. '
                "Left as it is; run with --force to reset it to the minimal rules"
            )
            if not report.missing:
                self._report(CLUSTER_ROLE, self.role_name, "unchanged")
                return
            # Add what is missing and keep the admin's additions: shrinking is --force's job.
            new_rules = stored_rules + [dict(r) for r in ROLE_RULES]
        else:
            new_rules = [dict(r) for r in ROLE_RULES]
        if report.missing:
            missing = ", ".join(describe_permission(p) for p in report.missing)
            self.say(f'ClusterRole "{self.role_name}" lacked: {missing}')
        obj["rules"] = new_rules
        self.kube.replace(CLUSTER_ROLE, obj)
        self._report(CLUSTER_ROLE, self.role_name, "configured")

    def ensure_binding(self) -> None:
        subject = service_account_subject(self.namespace, self.service_account)
        role_ref = {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": self.role_name}
        body = {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": self.binding_name},
            "roleRef": role_ref,
            "subjects": [subject],
        }
        obj, created = self._ensure(CLUSTER_ROLE_BINDING, body)
        if created:
            self._report(CLUSTER_ROLE_BINDING, self.binding_name, "created")
            return
        stored_ref = _mapping(obj, "roleRef")
        if stored_ref.get("kind") != "ClusterRole" or stored_ref.get("name") != self.role_name:
            if not self.force:
                raise AlreadyExists(
                    f'ClusterRoleBinding "{self.binding_name}" refers to {stored_ref.get("kind", "?")} '
                    f'"{stored_ref.get("name", "?")}", not ClusterRole "{self.role_name}"; pass --force to recreate '
                    "it, or choose another --binding-name"
                )
            # roleRef is immutable in Kubernetes: replace the binding by deleting and creating it.
            self.kube.delete(CLUSTER_ROLE_BINDING, self.binding_name)
            self.kube.create(CLUSTER_ROLE_BINDING, body)
            self._report(CLUSTER_ROLE_BINDING, self.binding_name, "configured")
            return
        subjects = _list(obj, "subjects")
        others = [s for s in subjects if not _is_subject(s, subject)]
        ours = len(others) < len(subjects)
        if ours and not others:
            self._report(CLUSTER_ROLE_BINDING, self.binding_name, "unchanged")
            return
        if others and not self.force:
            names = ", ".join(describe_subject(s) for s in others)
            if ours:
                self.warn(
                    f'ClusterRoleBinding "{self.binding_name}" also binds {names}; left as it is '
                    "(run with --force to bind only the kubeport service account)"
                )
                self._report(CLUSTER_ROLE_BINDING, self.binding_name, "unchanged")
                return
            raise AlreadyExists(
                f'ClusterRoleBinding "{self.binding_name}" is bound to {names}, not to ServiceAccount '
                f"{self.namespace}/{self.service_account}; rebinding it would revoke that access. Pass --force to "
                "rebind it, or choose another --binding-name"
            )
        obj["subjects"] = [subject]
        self.kube.replace(CLUSTER_ROLE_BINDING, obj)
        self._report(CLUSTER_ROLE_BINDING, self.binding_name, "configured")

    def token_secret_name(self) -> str:
        """The SA's auto-created token secret (Kubernetes < 1.24), else our own ``<sa>`` secret (created if
        needed). Only token secrets count: OpenShift lists dockercfg secrets in ``.secrets`` too."""
        # Read the SA again: before 1.24 the token controller adds .secrets just after the SA is created.
        service_account = self.kube.get(SERVICE_ACCOUNT, self.service_account, self.namespace) or {}
        for ref in _list(service_account, "secrets"):
            name = ref.get("name") if isinstance(ref, Mapping) else None
            if isinstance(name, str) and name:
                secret = self.kube.get(SECRET, name, self.namespace)
                if secret is not None and secret.get("type") == TOKEN_SECRET_TYPE:
                    return name
        name = self.service_account
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": TOKEN_SECRET_TYPE,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "annotations": {SA_NAME_ANNOTATION: self.service_account},
            },
        }
        obj, created = self._ensure(SECRET, body, self.namespace)
        annotations = _mapping(_mapping(obj, "metadata"), "annotations")
        if obj.get("type") != TOKEN_SECRET_TYPE or annotations.get(SA_NAME_ANNOTATION) != self.service_account:
            raise AlreadyExists(
                f'secret {self.namespace}/{name} already exists but is not a service-account token for "{name}" '
                f"(type {obj.get('type') or 'Opaque'!s}); delete it or choose another --service-account"
            )
        self._report(SECRET, name, "created" if created else "unchanged")
        return name

    def wait_token(self, secret_name: str, wait: float) -> tuple[str, str]:
        """Poll until the token controller filled ``token`` and ``ca.crt``; returns (token, ca base64)."""
        deadline = self.clock() + wait
        announced = False
        interval = self.poll_interval
        while True:
            secret = self.kube.get(SECRET, secret_name, self.namespace)
            if secret is None:
                raise NotFound(f"secret {self.namespace}/{secret_name} disappeared while waiting for its token")
            filled = _filled(secret)
            if filled is not None:
                return filled
            if not announced:
                self.say(f"Waiting for the token controller to fill secret {self.namespace}/{secret_name}...")
                announced = True
            left = deadline - self.clock()
            if left <= 0:
                raise Timeout(
                    f"the token controller did not fill secret {self.namespace}/{secret_name} within {wait:g}s "
                    "(data.token or data.ca.crt is still empty); is kube-controller-manager running? "
                    "Run again, or pass a longer --wait"
                )
            self.sleep(min(interval, left))
            interval = min(interval * 2, 1.0)


def _filled(secret: Mapping[str, Any]) -> tuple[str, str] | None:
    data = _mapping(secret, "data")
    token_b64, ca_b64 = data.get("token"), data.get("ca.crt")
    if not isinstance(token_b64, str) or not token_b64 or not isinstance(ca_b64, str) or not ca_b64:
        return None
    try:
        token = base64.b64decode(token_b64, validate=True).decode("ascii").strip()
        ca = base64.b64decode(ca_b64, validate=True)
    except (binascii.Error, UnicodeDecodeError):
        raise BadParameter(
            f"secret {_mapping(secret, 'metadata').get('name')!s} holds a token or ca.crt that is not valid base64"
        ) from None
    if not token or not ca.strip():
        return None
    if any(c.isspace() for c in token):
        raise BadParameter("the service-account token contains whitespace; refusing to write it")
    return token, base64.b64encode(ca).decode()


# -- the command ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeport-get-kubeconfig",
        description=(
            "Create a service account with minimal RBAC permissions for kubeport in the cluster of your "
            "current kubeconfig context, and write a kubeconfig with its long-lived token (a Python port of "
            "Teleport's get-kubeconfig.sh). Running it again changes nothing and mints nothing new."
        ),
        epilog=(
            "environment:\n"
            "  TELEPORT_NAMESPACE  namespace of the service account (default teleport)\n"
            "  TELEPORT_SA_NAME    service account name (default teleport-sa)\n"
            "  KUBECONFIG          kubeconfig file(s) to read, like kubectl\n"
            "Flags override the environment. The ClusterRole and ClusterRoleBinding keep the original\n"
            "script's names (teleport-role, teleport-crb), so both tools manage the same objects.\n\n"
            "example (from nothing to a registered cluster):\n"
            "  %(prog)s --kube-cluster prod --labels env=prod,region=eu --register"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("source cluster")
    source.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig to read (default: $KUBECONFIG, ~/.kube/config)"
    )
    source.add_argument("--context", metavar="NAME", help="context to use (default: the current context)")
    source.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"timeout of each Kubernetes API call (default {DEFAULT_TIMEOUT:g})",
    )
    source.add_argument(
        "--wait",
        type=_positive,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for the token controller to fill the token (default {DEFAULT_WAIT:g})",
    )

    account = parser.add_argument_group("service account")
    account.add_argument(
        "--namespace",
        "-n",
        metavar="NS",
        help=f"namespace of the service account (default: $TELEPORT_NAMESPACE or {DEFAULT_NAMESPACE})",
    )
    account.add_argument(
        "--service-account",
        metavar="NAME",
        help=f"service account name (default: $TELEPORT_SA_NAME or {DEFAULT_SERVICE_ACCOUNT})",
    )
    account.add_argument(
        "--role-name", default=DEFAULT_ROLE_NAME, metavar="NAME", help="ClusterRole name (default %(default)s)"
    )
    account.add_argument(
        "--binding-name",
        default=DEFAULT_BINDING_NAME,
        metavar="NAME",
        help="ClusterRoleBinding name (default %(default)s)",
    )
    account.add_argument(
        "--force",
        "-f",
        action="store_true",
        help="rebind a ClusterRoleBinding bound elsewhere, reset an edited ClusterRole, "
        "replace an existing kube_cluster",
    )

    output = parser.add_argument_group("output and registration")
    output.add_argument(
        "--output",
        "-o",
        default=DEFAULT_OUTPUT,
        metavar="FILE",
        help="where to write the kubeconfig (mode 0600; default ./%(default)s)",
    )
    output.add_argument(
        "--kube-cluster", metavar="NAME", help="also write a kube_cluster resource file for this cluster name"
    )
    output.add_argument(
        "--labels", action="append", default=[], metavar="K=V[,K=V]", help="static labels of the kube_cluster"
    )
    output.add_argument(
        "--kube-cluster-file",
        default=DEFAULT_KUBE_CLUSTER_FILE,
        metavar="FILE",
        help="where to write the kube_cluster resource (mode 0600: it holds the token; default ./%(default)s)",
    )
    output.add_argument(
        "--register",
        action="store_true",
        help="create the kube_cluster in the registry too (like kpctl create; with --force, create or replace)",
    )
    from registry.cli.common import add_connection_flags

    add_connection_flags(parser)
    parser.add_argument("--debug", "-d", action="store_true", help="verbose logs and tracebacks on errors")
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


@dataclass(frozen=True)
class Plan:
    """Everything decided from flags and environment before the cluster is touched."""

    namespace: str
    service_account: str
    role_name: str
    binding_name: str
    output: Path
    kube_cluster: str | None
    labels: dict[str, str]
    kube_cluster_file: Path


def make_plan(args: argparse.Namespace, env: Mapping[str, str]) -> Plan:
    if args.namespace:
        namespace = check_namespace_name(args.namespace, "--namespace")
    else:
        namespace = check_namespace_name(env.get("TELEPORT_NAMESPACE") or DEFAULT_NAMESPACE, "TELEPORT_NAMESPACE")
    if args.service_account:
        sa = check_service_account_name(args.service_account, "--service-account")
    else:
        sa = check_service_account_name(env.get("TELEPORT_SA_NAME") or DEFAULT_SERVICE_ACCOUNT, "TELEPORT_SA_NAME")
    labels = parse_labels(args.labels)
    if (labels or args.register) and not args.kube_cluster:
        raise BadParameter("--labels and --register need --kube-cluster NAME (the name to register the cluster as)")
    output = Path(args.output).expanduser()
    cluster_file = Path(args.kube_cluster_file).expanduser()
    if args.kube_cluster and output.resolve() == cluster_file.resolve():
        raise BadParameter(f"--output and --kube-cluster-file are the same file ({output})")
    plan = Plan(
        namespace=namespace,
        service_account=sa,
        role_name=check_rbac_name(args.role_name, "--role-name"),
        binding_name=check_rbac_name(args.binding_name, "--binding-name"),
        output=output,
        kube_cluster=args.kube_cluster,
        labels=labels,
        kube_cluster_file=cluster_file,
    )
    if plan.kube_cluster is not None:
        kube_cluster_document(plan.kube_cluster, plan.labels, b"")  # name and labels checked before any change
    return plan


def kube_cluster_document(name: str, labels: Mapping[str, str], kubeconfig: bytes) -> dict[str, Any]:
    """The kube_cluster resource, validated exactly as ``kpctl create`` validates it."""
    from registry.core import codec

    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    doc: dict[str, Any] = {"kind": "kube_cluster", "version": "v3", "metadata": metadata, "spec": {}}
    if kubeconfig:
        doc["spec"]["kubeconfig"] = base64.b64encode(kubeconfig).decode()
    resource = codec.resource_from_dict(doc)  # its messages name the kube_cluster already
    wire: dict[str, Any] = codec.resource_to_dict(resource, with_secrets=True)
    return wire


def run(args: argparse.Namespace, *, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    def warn(line: str) -> None:
        print(f"warning: {line}", file=err, flush=True)

    plan = make_plan(args, env)
    connection: Connection | None = None
    if args.register:
        from registry.cli.common import resolve_connection

        connection = resolve_connection(args, env)  # fail on a missing identity before changing the cluster
    source = load_source(args.kubeconfig, args.context, env)
    targets = [("--output", plan.output)] + (
        [("--kube-cluster-file", plan.kube_cluster_file)] if plan.kube_cluster else []
    )
    for flag, target in targets:
        if any(target.resolve() == p.resolve() for p in source.paths):
            raise BadParameter(f"{flag} {target} is the kubeconfig being read; choose another path")

    kube = Kube(source, timeout=args.timeout)
    try:
        steps = Steps(
            kube=kube,
            namespace=plan.namespace,
            service_account=plan.service_account,
            role_name=plan.role_name,
            binding_name=plan.binding_name,
            force=args.force,
            say=say,
            warn=warn,
        )
        say("Creating the Kubernetes Service Account with minimal RBAC permissions.")
        steps.ensure_namespace()
        steps.ensure_service_account()
        steps.ensure_cluster_role()
        steps.ensure_binding()
        secret = steps.token_secret_name()
        token, ca_b64 = steps.wait_token(secret, args.wait)
    finally:
        kube.close()

    kubeconfig = render_kubeconfig(
        context=source.context,
        cluster=source.cluster,
        server=source.server,
        ca_data_b64=ca_b64,
        user=f"{source.cluster}-{plan.service_account}",
        token=token,
        tls_server_name=source.tls_server_name,
    )
    expires = _check_written(kubeconfig, plan, warn)
    cluster_doc = cluster_yaml = None
    if plan.kube_cluster is not None:
        from registry.core import codec

        cluster_doc = kube_cluster_document(plan.kube_cluster, plan.labels, kubeconfig)
        cluster_yaml = codec.dump_yaml([cluster_doc])

    from registry.files import write_secret_file

    say("Writing kubeconfig.")
    write_secret_file(plan.output, kubeconfig)
    if cluster_yaml is not None:
        say(f"Writing {_shown(plan.kube_cluster_file)}.")
        write_secret_file(plan.kube_cluster_file, cluster_yaml.encode())
    if expires is not None:
        say(f"The token expires at {expires:%Y-%m-%d %H:%M:%S} UTC; run this again before then to mint a new one.")
    if connection is not None and cluster_doc is not None:
        created = _register(connection, cluster_doc, force=args.force, cluster_file=plan.kube_cluster_file)
        say(f'kubernetes cluster "{plan.kube_cluster}" has been {"created" if created else "updated"}')
    say(_done_message(plan, secret, registered=connection is not None))
    return 0


def _check_written(kubeconfig: bytes, plan: Plan, warn: Callable[[str], None]) -> datetime | None:
    """Run the registry's own kubeconfig check: an error when a kube_cluster file was asked for (it would be
    rejected), a warning otherwise. Returns the token's expiry when it has one."""
    from registry.core.kubeconfig import check_kubeconfig

    name = plan.kube_cluster or "kubeconfig"
    try:
        target = check_kubeconfig(kubeconfig, cluster_name=name)
    except KubeportError as exc:
        if plan.kube_cluster is not None:
            raise
        warn(f"kpctl create would reject this kubeconfig: {exc.message}")
        return None
    expires = target.credential_expires
    for note in target.warnings:
        # The token's expiry is reported on its own line with what to do about it; do not say it twice.
        if expires is None or "expire" not in note:
            warn(note)
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires.astimezone(UTC) if expires is not None else None


def _register(connection: Connection, doc: dict[str, Any], *, force: bool, cluster_file: Path) -> bool:
    """``kpctl create`` (``-f`` with --force) of one kube_cluster, run in its own trio loop."""
    import trio

    async def register() -> bool:
        async with connection.client() as client:
            if force:
                _, created = await client.create_or_update(doc)
                return bool(created)
            try:
                await client.create(doc)
            except AlreadyExists:
                raise AlreadyExists(
                    f'kubernetes cluster "{doc["metadata"]["name"]}" already exists in the registry; pass --force '
                    "to replace it"
                ) from None
            return True

    try:
        return trio.run(register)
    except KubeportError as exc:
        # The kubeconfig and kube_cluster file are complete: say how to finish by hand.
        raise type(exc)(
            f"{exc.message} (the files were written: register later with kpctl create {cluster_file})"
        ) from None


def _shown(path: Path) -> str:
    """``./kubeconfig`` rather than a bare ``kubeconfig``, which reads like a word in a sentence."""
    return str(path) if path.is_absolute() or path.parent != Path() else f"./{path}"


def _done_message(plan: Plan, secret: str, *, registered: bool) -> str:
    lines = [
        "---",
        "Done!",
        "",
        f"{_shown(plan.output)} (mode 0600) holds the token of service account "
        f"{plan.namespace}/{plan.service_account};",
        f"revoke it by deleting secret {plan.namespace}/{secret}.",
    ]
    if registered:
        lines.append(f'The cluster is registered with kubeport as kube_cluster "{plan.kube_cluster}".')
    elif plan.kube_cluster is not None:
        lines += ["Register the cluster with kubeport:", f"    kpctl create {_shown(plan.kube_cluster_file)}"]
    else:
        lines += [
            "Register the cluster with kubeport: run this again with --kube-cluster NAME [--labels k=v,...]",
            f"to write {DEFAULT_KUBE_CLUSTER_FILE} for 'kpctl create {DEFAULT_KUBE_CLUSTER_FILE}', and add",
            "--register to register it in the same run.",
        ]
    lines += ["", "Note: Kubernetes RBAC rules for kubeport were created, you won't need to create them manually."]
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run the command; returns the exit code (0, 1 for expected errors, 2 for usage errors, 130 on Ctrl-C)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = os.environ if env is None else env
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and usage errors: argparse's code, without leaving the caller's process
        return exc.code if isinstance(exc.code, int) else 2
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args, env=env, out=out, err=err)
    except KubeportError as exc:
        if args.debug:
            raise
        print(f"ERROR: {exc.message}", file=err, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
