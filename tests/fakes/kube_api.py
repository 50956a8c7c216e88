"""The fake Kubernetes API server: one object per test cluster, served over TLS by ``serve_fake_kube``.

Request pipeline, in the real server's order: record → (injected failure) → authenticate (client cert,
then bearer token; none → 401) → impersonate (``Impersonate-*`` headers, each item authorized) → authorize
(RBAC from the stored roles/bindings; ``system:masters`` allowed everything) → serve (``kube_routes``).
Every request, whatever its outcome, lands in :attr:`FakeKube.requests` as a :class:`RecordedRequest`
(except bodies the HTTP layer refuses before the handler runs, e.g. 413 for more than ``max_body_bytes``).

A fresh fake has what a fresh cluster has (see ``kube_bootstrap``): namespaces ``default`` and
``kube-system`` (whose uid is what cluster-identity fencing reads: :attr:`FakeKube.kube_system_uid`), and
the bootstrap RBAC that gives every authenticated user discovery and self reviews, and ``system:masters``
cluster-admin. The user behind ``admin_token`` is ``kubernetes-admin`` in ``system:masters``.

Faithful vs simplified, in one place: JSON only (protobuf/YAML bodies → 415), no OpenAPI documents (404:
use ``--validate=false``), no dryRun, no server-side apply, no attach, no admission or escalation checks,
opaque tokens instead of JWTs. ``pods/log``, ``pods/exec`` and ``pods/portforward`` work against
:attr:`FakeKube.pods` (in-memory logs, a built-in command set, test-provided port handlers: see
``kube_pods``, ``kube_exec``, ``kube_portforward``); upgraded connections are recorded with status
101. The per-module docstrings say more.

Test controls (no HTTP): :meth:`FakeKube.add_pod`, :attr:`FakeKube.pods`,
:meth:`FakeKube.add_token`, :meth:`~FakeKube.grant`, :meth:`~FakeKube.create_object`,
:meth:`~FakeKube.get_object`, :meth:`~FakeKube.fail_next`, :attr:`~FakeKube.token_delay`,
:meth:`~FakeKube.kubeconfig`, :meth:`~FakeKube.issue_client_cert`, :meth:`~FakeKube.wait_request`.

``FakeKube(http2=True)`` also offers ``h2`` by ALPN (:mod:`tests.fakes.h2_server`; off by default) and
counts connections by protocol in :attr:`FakeKube.connection_counts`.

Run standalone: ``python -m tests.fakes.kube_api --port 6443 --admin-token T --write-kubeconfig kc.yaml``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import trio
import yaml

from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.tls import server_context
from registry.server.http import HTTPLimits, Request, Response, ServerInfo, serve_http
from tests.fakes import kube_discovery as disc
from tests.fakes.h2_server import ConnectionCounts, serve_http_alpn
from tests.fakes.kube_authn import Authenticator
from tests.fakes.kube_bootstrap import bootstrap_objects
from tests.fakes.kube_controllers import Controllers
from tests.fakes.kube_paths import parse_request
from tests.fakes.kube_pods import PodRuntime
from tests.fakes.kube_rbac import Attributes, UserInfo, authorize, forbidden_error, impersonate
from tests.fakes.kube_routes import Call, json_response, serve_non_resource, serve_resource
from tests.fakes.kube_status import KubeStatusError, PlainTextError, injected, unauthorized
from tests.fakes.kube_store import KubeStore

MAX_BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's request body limit
CERT_TTL = timedelta(days=1)
IMAGE = "fake.invalid/image:1"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it. ``user``/``groups`` are who authenticated (None if nobody);
    ``impersonated_*`` who the request then ran as (None/() without impersonation headers)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]  # lower-case names, order and repeats preserved
    user: str | None
    groups: tuple[str, ...]
    impersonated_user: str | None
    impersonated_groups: tuple[str, ...]
    status: int
    target: str = ""

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]


@dataclass
class _Injection:
    prefix: str
    status: int
    remaining: int
    message: str | None


@dataclass
class _Outcome:
    user: UserInfo | None = None
    acting: UserInfo | None = None


class FakeKube:
    """A fake Kubernetes cluster's API server state. Serve it with :func:`serve_fake_kube`."""

    def __init__(
        self,
        *,
        admin_token: str | None = None,
        token_delay: float | None = 0.0,
        legacy_sa_secrets: bool = False,
        git_version: str = "v1.30.0",
        cluster_name: str = "fake-kube",
        max_body_bytes: int = MAX_BODY_BYTES,
        history_limit: int = 10_000,
        max_recorded: int = 100_000,
        http2: bool = False,
    ) -> None:
        if not disc.valid_git_version(git_version):
            raise ValueError(f"git_version must look like v1.30.0, got {git_version!r}")
        now = datetime.now(UTC)
        self._ca = CertAuthority.generate(cluster_name, now=now)
        self._server_key = generate_private_key()
        self._server_cert = self._ca.issue(
            public_key_pem(self._server_key),
            Identity(name="kube-apiserver", kind="agent"),
            ttl=CERT_TTL,
            now=now,
            dns_names=["localhost", "kubernetes", "kubernetes.default.svc"],
            ip_addresses=["127.0.0.1", "::1"],
        )
        self.git_version = git_version
        self.max_body_bytes = max_body_bytes
        self.store = KubeStore(history_limit=history_limit)
        self.authenticator = Authenticator(self.store)
        self.controllers = Controllers(
            self.store,
            self.authenticator,
            self._ca.cert_pem,
            token_delay=token_delay,
            legacy_sa_secrets=legacy_sa_secrets,
        )
        self.requests: list[RecordedRequest] = []
        self.pods = PodRuntime()
        self.max_recorded = max_recorded  # long benchmark runs keep the newest requests only
        # Offer h2 by ALPN as a real API server does (tests.fakes.h2_server); off by default so the many
        # kubectl tests keep exercising the HTTP/1.1 server they were written against.
        self.http2 = http2
        self.connection_counts = ConnectionCounts()
        self._injections: list[_Injection] = []
        self._recorded = trio.Event()
        self._info: ServerInfo | None = None
        self._names = itertools.count(1)
        bootstrap_objects(self.create_object)
        if admin_token is not None:
            self.add_token(admin_token, "kubernetes-admin", ("system:masters",))

    # ----------------------------------------------------------------------------------------- addresses

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem

    @property
    def server_cert_pem(self) -> bytes:
        return self._server_cert

    @property
    def url(self) -> str:
        if self._info is None:
            raise RuntimeError("the fake Kubernetes API is not serving yet (use serve_fake_kube)")
        return f"https://{self._info.address}"

    @property
    def kube_system_uid(self) -> str:
        found = self.store.peek(disc.NAMESPACES, "", "kube-system")
        return str(found["metadata"]["uid"]) if found else ""

    # ------------------------------------------------------------------------------------- test controls

    @property
    def token_delay(self) -> float | None:
        """Seconds before the token controller fills a service-account-token Secret; None = never."""
        return self.controllers.token_delay

    @token_delay.setter
    def token_delay(self, value: float | None) -> None:
        self.controllers.token_delay = value

    def add_token(self, token: str, user: str, groups: Iterable[str] = ()) -> None:
        """Accept ``Authorization: Bearer <token>`` as ``user`` in ``groups`` (+ system:authenticated)."""
        self.authenticator.add_token(token, user, tuple(groups))

    def remove_token(self, token: str) -> None:
        self.authenticator.remove_token(token)

    def issue_client_cert(self, user: str, groups: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """(cert PEM, key PEM) of a client certificate the fake accepts as ``user`` in ``groups``."""
        key = generate_private_key()
        cert = self._ca.issue(
            public_key_pem(key),
            Identity(name=user, kind="user", roles=tuple(groups)),
            ttl=CERT_TTL,
            now=datetime.now(UTC),
        )
        return cert, key

    def create_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` (by its apiVersion/kind) without HTTP or authorization; returns the stored copy."""
        rt = disc.resolve_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rt is None or not rt.stored:
            raise KeyError(f"the fake does not store {obj.get('apiVersion')}/{obj.get('kind')}")
        namespace = (obj.get("metadata") or {}).get("namespace") or ("default" if rt.namespaced else "")
        return self.store.create(rt, namespace, obj)

    def add_pod(
        self,
        name: str,
        *,
        namespace: str = "default",
        containers: Sequence[str] = ("main",),
        phase: str = "Running",
        env: dict[str, str] | None = None,
        log: str | None = None,
    ) -> dict[str, Any]:
        """Store a pod with these containers (each with ``env``) in ``phase``, as a scheduled pod looks;
        ``log`` becomes its first container's log."""
        specs = [
            {"name": c, "image": IMAGE, "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
            for c in containers
        ]
        pod = self.create_object(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": specs, "nodeName": "fake-node"},
                "status": {
                    "phase": phase,
                    "podIP": "10.0.0.10",
                    "containerStatuses": [
                        {"name": c, "ready": phase == "Running", "restartCount": 0, "image": IMAGE} for c in containers
                    ],
                },
            }
        )
        if log is not None:
            self.pods.set_log(name, log, namespace=namespace)
        return pod

    def get_object(self, resource: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """A copy of a stored object (``resource`` as kubectl accepts it: ``sa``, ``secrets``, ``Secret``)."""
        rt = disc.resolve(resource)
        found = self.store.peek(rt, namespace, name)
        return None if found is None else self.store.get(rt, namespace, name)

    def list_objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        rt = disc.resolve(resource)
        return [
            self.store.get(rt, o["metadata"].get("namespace", ""), o["metadata"]["name"])
            for o in self.store.iter_objects(rt, namespace)
        ]

    def update_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        rt = disc.resolve_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rt is None or not rt.stored:
            raise KeyError(f"the fake does not store {obj.get('apiVersion')}/{obj.get('kind')}")
        meta = obj.get("metadata") or {}
        return self.store.update(rt, meta.get("namespace", ""), str(meta.get("name", "")), obj)

    def delete_object(self, resource: str, name: str, namespace: str = "") -> None:
        self.store.delete(disc.resolve(resource), namespace, name)

    def grant(
        self,
        subject: str,
        *,
        verbs: Sequence[str],
        resources: Sequence[str] = (),
        api_groups: Sequence[str] = ("",),
        resource_names: Sequence[str] = (),
        non_resource_urls: Sequence[str] = (),
        namespace: str | None = None,
        kind: str = "User",
    ) -> str:
        """Give ``subject`` (a User, Group or ``system:serviceaccount:<ns>:<name>``) one RBAC rule, through a
        new ClusterRole + ClusterRoleBinding, or Role + RoleBinding when ``namespace`` is given. Returns the
        name used for both objects."""
        name = f"fake-grant-{next(self._names)}"
        rule: dict[str, Any] = {"verbs": list(verbs)}
        if non_resource_urls:
            rule["nonResourceURLs"] = list(non_resource_urls)
        else:
            rule.update(apiGroups=list(api_groups), resources=list(resources))
            if resource_names:
                rule["resourceNames"] = list(resource_names)
        subject_obj: dict[str, Any] = {"kind": kind, "name": subject}
        if subject.startswith("system:serviceaccount:") and subject.count(":") == 3:
            _, _, sa_namespace, sa_name = subject.split(":")
            subject_obj = {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}
        elif kind in ("User", "Group"):
            subject_obj["apiGroup"] = disc.RBAC
        role_kind = "Role" if namespace else "ClusterRole"
        meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
        self.create_object({"apiVersion": f"{disc.RBAC}/v1", "kind": role_kind, "metadata": meta, "rules": [rule]})
        self.create_object(
            {
                "apiVersion": f"{disc.RBAC}/v1",
                "kind": f"{role_kind}Binding",
                "metadata": dict(meta),
                "roleRef": {"apiGroup": disc.RBAC, "kind": role_kind, "name": name},
                "subjects": [subject_obj],
            }
        )
        return name

    def fail_next(self, path_prefix: str, status: int, *, times: int = 1, message: str | None = None) -> None:
        """Answer the next ``times`` requests whose path starts with ``path_prefix`` with a ``status``
        Status error, before authentication is even looked at."""
        self._injections.append(_Injection(path_prefix, status, times, message))

    def clear_requests(self) -> None:
        self.requests.clear()

    async def wait_request(self, match: Callable[[RecordedRequest], bool], *, timeout: float = 10.0) -> RecordedRequest:
        """The first recorded request ``match`` accepts, waiting up to ``timeout`` seconds for it."""
        with trio.fail_after(timeout):
            while True:
                for recorded in self.requests:
                    if match(recorded):
                        return recorded
                await self._recorded.wait()

    def statistics(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "tokens_issued": self.controllers.tokens_issued,
            "url": self.url if self._info else None,
            **self.store.statistics(),
        }

    # ---------------------------------------------------------------------------------------- kubeconfig

    def kubeconfig(
        self,
        token: str | None = None,
        *,
        client_cert: tuple[bytes, bytes] | None = None,
        context: str = "fake",
        cluster: str = "fake-cluster",
        user: str = "fake-user",
        namespace: str | None = None,
        server: str | None = None,
    ) -> dict[str, Any]:
        """A kubeconfig dict for this fake with the CA embedded; credentials are a bearer ``token`` or a
        ``client_cert`` (cert PEM, key PEM) from :meth:`issue_client_cert`, or none at all."""
        if token is not None and client_cert is not None:
            raise ValueError("give a token or a client certificate, not both")
        credentials: dict[str, Any] = {}
        if token is not None:
            credentials["token"] = token
        if client_cert is not None:
            credentials["client-certificate-data"] = base64.b64encode(client_cert[0]).decode()
            credentials["client-key-data"] = base64.b64encode(client_cert[1]).decode()
        ctx: dict[str, Any] = {"cluster": cluster, "user": user}
        if namespace:
            ctx["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster,
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
            "preferences": {},
        }

    def kubeconfig_yaml(self, token: str | None = None, **kwargs: Any) -> bytes:
        return yaml.safe_dump(self.kubeconfig(token, **kwargs), sort_keys=False).encode()

    # ------------------------------------------------------------------------------------------- serving

    def _bound(self, info: ServerInfo | None) -> None:
        self._info = info

    async def handle(self, request: Request) -> Response:
        """The HTTP handler (also callable directly, without a socket, for MockClock tests)."""
        outcome = _Outcome()
        try:
            response = await self._serve(request, outcome)
        except KubeStatusError as err:
            response = json_response(err.code, err.to_status())
        except PlainTextError as err:
            headers = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]
            response = Response(err.code, headers, err.text.encode() + b"\n")
        if request.method == "HEAD":
            # A HEAD answer is the GET answer's head: no body may follow it on the wire.
            aclose = getattr(response.stream, "aclose", None)
            if aclose is not None:
                await aclose()
            response = Response(response.status, [h for h in response.headers if h[0] != "content-length"])
        self._record(request, outcome, response.status)
        return response

    async def _serve(self, request: Request, outcome: _Outcome) -> Response:
        outcome.user = self.authenticator.authenticate(request)
        for injection in self._injections:
            if request.path.startswith(injection.prefix):
                injection.remaining -= 1
                if injection.remaining <= 0:
                    self._injections.remove(injection)
                raise injected(injection.status, injection.message)
        if outcome.user is None:
            raise unauthorized()
        acting = impersonate(self.store, outcome.user, request.headers, request.target)
        outcome.acting = acting
        user = acting or outcome.user
        info = parse_request(request.method, request.path, request.query)
        attrs = Attributes(
            user,
            info.verb,
            info.is_resource,
            info.group,
            info.namespace,
            info.resource,
            info.subresource,
            info.name,
            info.path,
        )
        decision = authorize(self.store, attrs)
        if not decision.allowed:
            raise forbidden_error(attrs, decision.reason)
        call = Call(
            request=request,
            info=info,
            user=user,
            store=self.store,
            git_version=self.git_version,
            server_address=self._info.address if self._info else "127.0.0.1:6443",
            now=datetime.now(UTC),
            mint_token=self.authenticator.mint_bound_token,
            runtime=self.pods,
        )
        if info.is_resource:
            return await serve_resource(call)
        return serve_non_resource(call)

    def _record(self, request: Request, outcome: _Outcome, status: int) -> None:
        user, acting = outcome.user, outcome.acting
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query,
                headers=list(request.headers),
                user=user.name if user else None,
                groups=user.groups if user else (),
                impersonated_user=acting.name if acting else None,
                impersonated_groups=acting.groups if acting else (),
                status=status,
                target=request.target,
            )
        )
        if len(self.requests) > self.max_recorded:
            del self.requests[: len(self.requests) - self.max_recorded * 9 // 10]  # trim in batches: O(1) amortized
        self._recorded.set()
        self._recorded = trio.Event()


async def serve_fake_kube(
    fake: FakeKube,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[FakeKube] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` over TLS (its own CA; client certificates optional) until cancelled."""
    context = server_context(fake.server_cert_pem, fake._server_key, [fake.ca_pem], client_certs="optional")
    # One fake may stand in for thousands of clusters (benchmarks): every agent-side client keeps its own
    # keep-alive connection, so the default cap of 2048 would queue new connections behind idle ones.
    limits = HTTPLimits(max_body_bytes=fake.max_body_bytes, max_connections=16_384)
    try:
        async with trio.open_nursery() as nursery:
            fake.controllers.attach(nursery)
            if fake.http2:
                serve = partial(
                    serve_http_alpn, fake.handle, ssl_context=context, limits=limits, counts=fake.connection_counts
                )
            else:
                serve = partial(serve_http, fake.handle, ssl_context=context, limits=limits)
            info: ServerInfo = await nursery.start(partial(serve, host=host, port=port))
            fake._bound(info)
            task_status.started(fake)
    finally:
        fake.controllers.detach()
        fake._bound(None)


# ------------------------------------------------------------------------------------------------ the CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.kube_api", description="Run the fake Kubernetes API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--admin-token", required=True, help="bearer token of a system:masters user")
    parser.add_argument("--token-delay", default="0", help="seconds before token secrets are filled, or 'never'")
    parser.add_argument("--legacy-sa-secrets", action="store_true", help="emulate Kubernetes < 1.24 SA secrets")
    parser.add_argument("--git-version", default="v1.30.0")
    parser.add_argument("--http2", action="store_true", help="offer h2 by ALPN (as a real API server does)")
    parser.add_argument("--write-kubeconfig", type=Path, help="write an admin kubeconfig here (mode 0600)")
    args = parser.parse_args(argv)
    if args.token_delay != "never":
        try:
            if float(args.token_delay) < 0:
                raise ValueError
        except ValueError:
            parser.error(f"--token-delay must be a number of seconds >= 0 or 'never', got {args.token_delay!r}")
    return args


async def _run(args: argparse.Namespace) -> None:
    fake = FakeKube(
        admin_token=args.admin_token,
        token_delay=None if args.token_delay == "never" else float(args.token_delay),
        legacy_sa_secrets=args.legacy_sa_secrets,
        git_version=args.git_version,
        http2=args.http2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_fake_kube, fake, host=args.host, port=args.port))
        if args.write_kubeconfig:
            path: Path = args.write_kubeconfig
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(fake.kubeconfig_yaml(args.admin_token))
        print(f"fake Kubernetes API serving at {fake.url}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        trio.run(_run, args)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
