"""The one seam between the mint and a Kubernetes API server: a thin adapter over the ``kubernetes`` client.

``Kube`` speaks plain dicts in and out for the few object kinds the mint manages (``Kind``). The admin's
kubeconfig is loaded by the client's own loader, so exec and auth-provider plugins (EKS, GKE, OIDC) work on
the admin's workstation; this is deliberately unlike the registry, which refuses them in stored kubeconfigs.

Invariants:

* every call carries ``timeout`` and is tried once (the client's retries are off), so an unreachable server
  fails in about ``timeout``; the steps are idempotent, so running again is the retry;
* every client, urllib3 and ssl exception is mapped here, and only here, to the kubeport error tree with a
  one-line message: 403 names the user and the permissions needed, 401 the context, status 0 (transport)
  the most specific reason ``network_error`` can find (TLS verification, timeout, refused);
* ``get`` returns None for a missing object; a non-JSON answer is a ``ConnectionProblem``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

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
from registry.mint.rbac import RBAC_GROUP
from registry.mint.source import Source

NEEDED_PERMISSIONS = (
    "permission to get, create and update namespaces, serviceaccounts, secrets, clusterroles and "
    "clusterrolebindings (for example the cluster-admin ClusterRole)"
)

_FORBIDDEN_USER = re.compile(r'User "((?:[^"\\]|\\.)*)"')

log = logging.getLogger("kubeport.get_kubeconfig")  # the name from before the split, kept for log filters


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
