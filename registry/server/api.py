"""The registry's HTTP routes: authenticate, parse, call the service (``Registry``), answer JSON.

Routes (all JSON; errors are Kubernetes ``Status`` bodies):

    GET    /v1/ping                                   public: cluster name, version, CA pin
    GET    /v1/ca                                     public: the CA certificate (joiners check its pin)
    POST   /v1/join                                   token-authenticated: CSR -> agent certificate
    POST   /v1/sso/oidc/start                         public: connector + loopback port + CSR -> auth URL
    POST   /v1/sso/oidc/finish                        public: state + code -> user certificate (registry.server.oidc)
    GET    /v1/whoami
    GET    /v1/kube_clusters                          a user: the clusters their roles reach (kube_clusters.py)
    POST   /v1/certs/renew                            CSR -> a fresh certificate for the caller
    POST   /v1/certs/user                             admin: CSR + user + ttl -> user certificate
    GET    /v1/resources/{kind}[?with_secrets=1&labels=k=v,...]
    POST   /v1/resources/{kind}                       create
    GET    /v1/resources/{kind}/{name}[?with_secrets=1]
    PUT    /v1/resources/{kind}/{name}                replace (metadata.revision, when given, must be current)
    DELETE /v1/resources/{kind}/{name}
    PUT    /v1/kube_servers/{host_id}/{name}          agent heartbeat
    DELETE /v1/kube_servers/{host_id}/{name}
    GET    /v1/kube_agents                            what each agent selects (kpctl kube explain)
    PUT    /v1/kube_agents/{host_id}                  an agent describes itself (TTL like heartbeats)
    DELETE /v1/kube_agents/{host_id}
    POST   /v1/tokens                                 generate a join token
    /v1/bots...                                       machine identity (routes in ``registry.server.bots``)
    GET    /v1/events[?limit=N&event=kube.create&continue=ID]  audit log, one page (see below)
    GET    /v1/watch?kinds=kube_cluster,kube_server&revision=N[&with_secrets=1]
    POST   /v1/users/{name}/signup                    a single-use signup token for the user (add, reset)
    POST   /v1/signup/info                            public: token -> user, otpauth URI, password policy
    POST   /v1/signup                                 public: token + password + code -> credentials set
    POST   /v1/login                                  public: user + password + code + CSR -> certificate

The last three are ``registry.server.local_auth``'s (their own rate limits, lockout and audit); tokens and
passwords travel only in bodies, never in URLs (which logs may show).

The watch answers newline-delimited JSON (the format lives in ``registry.core.watch``, which encodes every
line): first ``{"type": "INIT", "revision": N}``, then ``PUT`` /
``DELETE`` events with their revision, a ``BOOKMARK`` every ``bookmark_interval`` seconds of silence (so
dead connections surface), and at most one final ``ERROR`` carrying a Status (``Expired``/410 means the
revision is too old or the watcher fell behind: relist, then watch from the list's revision).

Every route except ping, ca and join requires a client certificate issued by the cluster CA; TLS already
rejected certificates of other CAs and expired ones during the handshake, and we verify again here.

Requests without a client certificate (ping, ca, join, and the 401s of everything else) are rate-limited
per source (``registry.server.ratelimit``; :data:`DEFAULT_RATE_LIMITS`): over the limit the answer is 429
with a ``Retry-After`` header and a ``TooManyRequests`` Status. A throttled join is audited like a failed
one, aggregated (``count``), so a flood costs a bounded number of rows.

``/v1/events`` answers ``{"items": [...], "continue": ID}``: at most ``limit`` events (default 100, at most
1000; 0 means the most), oldest first within the page; the first page holds the newest events, and passing
``continue`` back gives the next older page. ``continue`` is absent on the last page.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import trio
from prometheus_client import Counter, Histogram

from registry.core import codec, validation, watch
from registry.core.errors import (
    AccessDenied,
    BadParameter,
    KubeportError,
    LimitExceeded,
    NotFound,
    Unauthenticated,
)
from registry.core.origin import check_same_origin
from registry.core.resources import KIND_ALIASES, KubeServer
from registry.core.wire import EventsPage, HeartbeatBatch, ResourceList
from registry.host.metrics import REQUEST_SECONDS, REQUESTS, WATCH_CLIENTS, WATCH_EVENTS, WATCH_LAG
from registry.server import bots
from registry.server.admission import source_of_client
from registry.server.authz import Caller
from registry.server.http import Request, Response, Send
from registry.server.kube_clusters import kube_access_view
from registry.server.local_auth import LocalAuth
from registry.server.oidc import DEFAULT_SSO_TTL, OIDCLogin
from registry.server.ratelimit import Rate, RateLimiter
from registry.server.service import Registry
from registry.store.base import Event

log = logging.getLogger(__name__)

_Handler = Callable[[Caller, Request, list[str]], Awaitable[Response]]

RESOURCE_KINDS = ("kube_cluster", "kube_server", "role", "user", "token", "oidc")
WATCH_KINDS = ("kube_cluster", "kube_server")
WATCH_COALESCE_BYTES = 64 * 1024  # a watcher's buffered events go out in one write up to about this much
MAX_CURSOR_CHARS = 256
# Per source, for requests without a client certificate. An agent needs one ca + one join to start; a
# host starting many agents at once gets a burst, then a steady rate, then 429 with Retry-After.
DEFAULT_RATE_LIMITS: dict[str, Rate] = {
    "join": Rate(per_second=2.0, burst=30),
    "public": Rate(per_second=20.0, burst=100),
}


def _kind(raw: str) -> str:
    kind = KIND_ALIASES.get(raw, raw)
    if kind not in RESOURCE_KINDS:
        raise NotFound(f"unknown resource kind {raw!r}; supported: {', '.join(RESOURCE_KINDS)}")
    return kind


def _flag(request: Request, name: str) -> bool:
    value = request.query_value(name, "") or ""
    return value.lower() in ("1", "true", "yes")


def _parse_label_filter(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    out: dict[str, str] = {}
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise BadParameter(f"labels filter must look like k=v,k2=v2 (got {raw!r})")
        out[key.strip()] = value.strip()
    return out


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_value(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"query parameter {name} must be an integer (got {raw!r})") from None
    if value < 0:
        raise BadParameter(f"query parameter {name} must not be negative (got {value})")
    return value


def _body_object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    return body


MAX_BODY_SECONDS = 10 * 366 * 24 * 3600  # ten years: more than any TTL the service accepts, less than overflows


def _body_seconds(body: dict[str, Any], key: str, default: float) -> timedelta:
    """A duration field in seconds: a finite positive number of at most ten years (the service applies the
    tighter limit of each route), so no TTL can overflow a date or a timedelta."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadParameter(f"request body field {key!r} must be a number of seconds")
    if not 0 < value <= MAX_BODY_SECONDS:
        raise BadParameter(f"request body field {key!r} must be between 0 and {MAX_BODY_SECONDS} seconds (got {value})")
    return timedelta(seconds=value)


def _body_str(body: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadParameter(f"request body field {key!r} must be a non-empty string")
    return value


_METHODS = frozenset({"GET", "POST", "PUT", "DELETE"})


class RegistryAPI:
    """The request handler passed to ``serve_http``."""

    def __init__(
        self,
        registry: Registry,
        *,
        bookmark_interval: float = 10.0,
        rate_limits: Mapping[str, Rate] | None = None,
        rate_clock: Callable[[], float] = time.monotonic,
        sso: OIDCLogin | None = None,
        local_auth: LocalAuth | None = None,
    ) -> None:
        self.registry = registry
        self.sso = sso if sso is not None else OIDCLogin(registry)
        self.local_auth = local_auth if local_auth is not None else LocalAuth(registry, rate_clock=rate_clock)
        self.bookmark_interval = bookmark_interval
        self.limiter = RateLimiter(DEFAULT_RATE_LIMITS if rate_limits is None else rate_limits, clock=rate_clock)
        # (route, method, segments after the route) -> handler; built once, looked up per request.
        self._routes: dict[tuple[str, str, int], _Handler] = {
            ("whoami", "GET", 0): self._whoami,
            ("kube_clusters", "GET", 0): self._kube_clusters,
            ("certs", "POST", 1): self._certs,
            ("resources", "GET", 1): self._list,
            ("resources", "POST", 1): self._create,
            ("resources", "GET", 2): self._get,
            ("resources", "GET", 3): self._get,  # kube_server/<host_id>/<name>
            ("resources", "PUT", 2): self._update,
            ("resources", "DELETE", 2): self._delete,
            ("resources", "DELETE", 3): self._delete,
            ("kube_servers", "PUT", 2): self._heartbeat,
            ("kube_servers", "POST", 1): self._heartbeat_many,
            ("kube_servers", "DELETE", 2): self._delete_heartbeat,
            ("kube_agents", "GET", 0): self._list_agents,
            ("kube_agents", "PUT", 1): self._put_agent,
            ("kube_agents", "DELETE", 1): self._delete_agent,
            ("tokens", "POST", 0): self._generate_token,
            ("events", "GET", 0): self._events,
            ("events", "POST", 0): self._post_events,
            ("watch", "GET", 0): self._watch,
            **bots.routes(registry.bots),  # /v1/bots...: machine identity (registry.server.bots)
            ("users", "POST", 2): self._signup_token,
        }
        self._route_names = frozenset({"ping", "ca", "join"} | {route for route, _, _ in self._routes})
        # (route, method, code) -> the metric children of that label set (see __call__)
        self._request_metrics: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, request: Request) -> Response:
        """Answer ``request``, counted and timed for /metrics by route (a fixed set), method and code."""
        start = time.perf_counter()
        code = 500
        try:
            response = await self._answer(request)
            code = response.status
            return response
        except KubeportError as err:
            code = err.code
            raise
        finally:
            route = self._metric_route(request.path)
            method = request.method if request.method in _METHODS else "other"
            # The children are looked up once per label set (prometheus_client's labels() validates and
            # hashes its arguments on every call); the sets are few: fixed routes and methods, HTTP codes.
            counted = self._request_metrics.get((route, method, code))
            if counted is None:
                counted = (REQUESTS.labels(route, method, str(code)), REQUEST_SECONDS.labels(route))
                self._request_metrics[(route, method, code)] = counted
            counted[0].inc()
            counted[1].observe(time.perf_counter() - start)

    def _metric_route(self, path: str) -> str:
        """The route name for metric labels: one of the route table's (or a public route), else "other"
        (never the raw path, which a caller controls)."""
        parts = path.split("/", 3)
        name = parts[2] if len(parts) > 2 and parts[1] == "v1" else ""
        return name if name in self._route_names else "other"

    async def _answer(self, request: Request) -> Response:
        if request.peer_cert is None:
            throttled = await self._throttle(request)
            if throttled is not None:
                return throttled
        segments = [unquote(s) for s in request.path.split("/") if s]
        if len(segments) < 2 or segments[0] != "v1":
            raise NotFound(f"no route for {request.method} {request.path}")
        route = segments[1]
        rest = segments[2:]
        method = request.method

        # Public routes: nothing secret, or authenticated by the join token itself.
        if route == "ping" and method == "GET" and not rest:
            return Response.json(200, self.registry.ping())
        if route == "ca" and method == "GET" and not rest:
            return Response.json(200, self.registry.ca_bundle())
        if route == "join" and method == "POST" and not rest:
            return await self._join(request)
        if route == "sso" and method == "POST" and len(rest) == 2 and rest[0] == "oidc":
            return await self._sso(request, rest[1])  # the user has no certificate yet
        if route == "bots" and method == "POST" and rest == ["join"]:
            return await bots.handle_join(self.registry.bots, request)
        if route in ("signup", "login") and method == "POST":
            return await self._local_auth(route, rest, request)

        # A browser holding a user's certificate must not act for a page of another site (registry.core.origin).
        check_same_origin(request.header_values("origin"), request.header("host"))
        caller = await self._authenticate(request)
        handler = self._routes.get((route, method, len(rest)))
        if handler is None:
            raise NotFound(f"no route for {method} {request.path}")
        try:
            return await handler(caller, request, rest)
        except AccessDenied as err:
            # Denied attempts are audited too: they are what an investigation looks for first.
            await self.registry.audit(
                "access.denied", caller, success=False, method=method, path=request.path, error=err.message
            )
            raise

    async def _throttle(self, request: Request) -> Response | None:
        """Rate-limit a request without a certificate: None to proceed, or the 429 to answer."""
        is_join = request.path.rstrip("/") in ("/v1/join", "/v1/bots/join")
        source = source_of_client(request.client)
        wait = self.limiter.check("join" if is_join else "public", source)
        if wait <= 0:
            return None
        if is_join:
            await self.registry.audit_failure("instance.join", client=request.client, reason="rate limited")
        seconds = max(1, math.ceil(wait))
        status = LimitExceeded(
            f"too many requests without a client certificate from {source}: retry in {seconds}s"
        ).to_status()
        status["details"] = {"retryAfterSeconds": seconds}
        return Response.json(429, status, headers=[("retry-after", str(seconds))])

    async def _authenticate(self, request: Request) -> Caller:
        if request.peer_cert is None:
            raise Unauthenticated(
                "a client certificate is required: use an identity file (kpctl --identity, or run kpctl "
                "on the registry host) or join with a token"
            )
        return await self.registry.authenticate(request.peer_cert)

    # -- handlers ------------------------------------------------------------------------------------

    async def _join(self, request: Request) -> Response:
        body = _body_object(request)
        result = await self.registry.join(
            token=_body_str(body, "token"),
            host_id=_body_str(body, "host_id", required=False) or None,
            nodename=_body_str(body, "nodename"),
            csr_pem=_body_str(body, "csr_pem").encode(),
            client=request.client,
        )
        return Response.json(200, result)

    async def _sso(self, request: Request, action: str) -> Response:
        body = _body_object(request)
        if action == "start":
            started = await self.sso.start(
                connector=_body_str(body, "connector"),
                redirect_port=body.get("redirect_port"),
                csr_pem=_body_str(body, "csr_pem").encode(),
                ttl=_body_seconds(body, "ttl_seconds", DEFAULT_SSO_TTL.total_seconds()),
                client=request.client,
            )
            return Response.json(200, started)
        if action == "finish":
            result = await self.sso.finish(
                state=_body_str(body, "state"), code=_body_str(body, "code"), client=request.client
            )
            return Response.json(200, result)
        raise NotFound(f"no route for POST /v1/sso/oidc/{action}")

    async def _local_auth(self, route: str, rest: list[str], request: Request) -> Response:
        body = _body_object(request)
        if route == "login" and not rest:
            ttl = _body_seconds(body, "ttl_seconds", 12 * 3600) if "ttl_seconds" in body else None
            return Response.json(200, await self.local_auth.login(body, request.client, ttl))
        if route == "signup" and not rest:
            return Response.json(200, await self.local_auth.signup(body, request.client))
        if route == "signup" and rest == ["info"]:
            return Response.json(200, await self.local_auth.signup_info(body, request.client))
        raise NotFound(f"no route for POST {request.path}")

    async def _signup_token(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        if rest[1] != "signup":
            raise NotFound(f"no route for POST {request.path}")
        return Response.json(201, await self.local_auth.create_signup_token(caller, rest[0]))

    async def _whoami(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        identity = caller.identity
        return Response.json(
            200,
            {
                "name": identity.name,
                "kind": identity.kind,
                "roles": list(identity.roles),
                "host_id": identity.host_id,
                "expires": identity.expires.isoformat() if identity.expires else None,
            },
        )

    async def _kube_clusters(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        return Response.json(200, await kube_access_view(self.registry, caller))

    async def _certs(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        body = _body_object(request)
        csr = _body_str(body, "csr_pem").encode()
        if rest[0] == "renew":
            return Response.json(200, await self.registry.renew(caller, csr, bots.body_seconds(body, "ttl_seconds")))
        if rest[0] == "user":
            result = await self.registry.sign_user(
                caller, user=_body_str(body, "user"), csr_pem=csr, ttl=_body_seconds(body, "ttl_seconds", 12 * 3600)
            )
            return Response.json(200, result)
        raise NotFound(f"no route for POST /v1/certs/{rest[0]}")

    async def _list(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        kind = _kind(rest[0])
        # The revision is read BEFORE the items: a write landing while they are read is then after it, so a
        # watch from it replays that write (at worst one the list already has) instead of skipping it. Read
        # after, it could name a write the list missed, and a list-then-watch reader lost the change for good.
        revision = await self.registry.revision()
        items = await self.registry.list(
            caller,
            kind,
            with_secrets=_flag(request, "with_secrets"),
            labels=_parse_label_filter(request.query_value("labels")),
        )
        body: ResourceList = {"items": items, "revision": revision}
        return Response.json(200, body)

    def _resource_from_body(self, request: Request, kind: str) -> Any:
        body = _body_object(request)
        if KIND_ALIASES.get(str(body.get("kind")), body.get("kind")) != kind:
            raise BadParameter(f"request body kind {body.get('kind')!r} does not match the URL kind {kind!r}")
        return codec.resource_from_dict(body, source="request body")

    async def _create(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        kind = _kind(rest[0])
        resource = self._resource_from_body(request, kind)
        return Response.json(201, await self.registry.create(caller, resource))

    async def _get(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        kind = _kind(rest[0])
        name = "/".join(rest[1:])
        item = await self.registry.get(caller, kind, name, with_secrets=_flag(request, "with_secrets"))
        return Response.json(200, item)

    async def _update(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        kind = _kind(rest[0])
        resource = self._resource_from_body(request, kind)
        if resource.metadata.name != rest[1]:
            raise BadParameter(f"request body names {resource.metadata.name!r} but the URL names {rest[1]!r}")
        return Response.json(200, await self.registry.update(caller, resource))

    async def _delete(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        kind = _kind(rest[0])
        await self.registry.delete(caller, kind, "/".join(rest[1:]))
        return Response.json(200, {"kind": "Status", "status": "Success"})

    async def _heartbeat(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        server = codec.resource_from_dict(_body_object(request), source="heartbeat")
        if not isinstance(server, KubeServer):
            raise BadParameter("heartbeat body must be a kube_server")
        if server.host_id != rest[0] or server.metadata.name != rest[1]:
            raise BadParameter("heartbeat body host_id/name do not match the URL")
        return Response.json(200, await self.registry.heartbeat(caller, server))

    async def _heartbeat_many(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        servers = _body_object(request).get("servers")
        if not isinstance(servers, list):
            raise BadParameter("request body field 'servers' must be a list of kube_servers")
        results = await self.registry.heartbeat_many(caller, rest[0], servers)
        body: HeartbeatBatch = {"results": results}
        return Response.json(200, body)

    async def _delete_heartbeat(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        await self.registry.delete_heartbeat(caller, rest[0], rest[1])
        return Response.json(200, {"kind": "Status", "status": "Success"})

    async def _list_agents(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        return Response.json(200, {"items": await self.registry.list_agents(caller)})

    async def _put_agent(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        return Response.json(200, await self.registry.put_agent(caller, rest[0], _body_object(request)))

    async def _delete_agent(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        await self.registry.delete_agent(caller, rest[0])
        return Response.json(200, {"kind": "Status", "status": "Success"})

    async def _generate_token(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        body = _body_object(request)
        roles = body.get("roles", ["Kube"])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) or not roles:
            raise BadParameter("roles must be a non-empty list of strings")
        value = body.get("value")
        if value is not None and (not isinstance(value, str) or not value):
            raise BadParameter("value must be a non-empty string")
        token = await self.registry.generate_token(
            caller, roles=tuple(roles), ttl=_body_seconds(body, "ttl_seconds", 1800), value=value
        )
        return Response.json(201, token)

    async def _events(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        limit = _int_param(request, "limit", 100) or 0
        cursor = request.query_value("continue") or None
        if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
            raise BadParameter(f"query parameter continue is too long ({len(cursor)} characters)")
        events, more = await self.registry.events(
            caller, limit=limit, event=request.query_value("event"), before=cursor
        )
        body: EventsPage = {"items": events}
        if more is not None:
            body["continue"] = more
        return Response.json(200, body)

    async def _post_events(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        # One decode without the nesting walk: record_agent_events takes only flat events (strings, numbers,
        # booleans, nulls, lists of those), which bounds their nesting as it goes through them anyway; any
        # other field of the body is walked here.
        body = validation.load_json(request.body, source="request body", walk_depth=False)
        if not isinstance(body, dict):
            raise BadParameter("request body must be a JSON object")
        events = body.get("events")
        if not isinstance(events, list):
            raise BadParameter("request body field 'events' must be a list")
        if len(body) > 1:
            validation.check_nesting({k: v for k, v in body.items() if k != "events"}, source="request body")
        kept = await self.registry.record_agent_events(caller, events)
        return Response.json(200, {"kind": "Status", "status": "Success", "details": {"count": kept}})

    async def _watch(self, caller: Caller, request: Request, rest: list[str]) -> Response:
        kinds = tuple(k for k in (request.query_value("kinds") or "kube_cluster").split(",") if k)
        for kind in kinds:
            if kind not in WATCH_KINDS:
                raise BadParameter(f"cannot watch {kind!r}; watchable kinds: {', '.join(WATCH_KINDS)}")
        with_secrets = _flag(request, "with_secrets")
        await self.registry.check_watch(caller, kinds, with_secrets)
        since = _int_param(request, "revision", None)
        registry = self.registry
        interval = self.bookmark_interval

        async def produce(send: Send) -> None:
            lock = trio.Lock()
            start = since if since is not None else await registry.revision()
            last_revision = start
            last_sent = trio.current_time()

            async def emit_line(line: bytes) -> None:
                nonlocal last_sent
                # The lock only keeps a bookmark and an event line apart. Free (the usual case), it is taken
                # without the scheduler pass `async with lock` costs: with 100 watchers that pass alone put
                # every line behind the other 99 watchers' wake-ups. The send itself still checkpoints.
                try:
                    lock.acquire_nowait()
                except trio.WouldBlock:
                    await lock.acquire()
                try:
                    await send(line)
                    last_sent = trio.current_time()
                finally:
                    lock.release()

            async def emit(event: watch.WatchEvent) -> None:
                await emit_line(watch.encode_line(event))

            async def bookmarks() -> None:
                while True:
                    await trio.sleep(interval)
                    if trio.current_time() - last_sent >= interval * 0.9:
                        await emit(watch.Bookmark(last_revision))

            # Errors travel in-band as the last line: the HTTP status (200) is already on the wire.
            WATCH_CLIENTS.inc()
            try:
                async with registry.watch(kinds, since=start) as events:
                    await emit(watch.Init(start))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(bookmarks)
                        # Events already buffered behind this one go out in the same write (one chunk,
                        # one TLS record, one send), up to WATCH_COALESCE_BYTES: a watcher behind a burst
                        # catches up with fewer sends instead of falling further behind.
                        take_ready: Callable[[int], list[Event]] = getattr(events, "take_ready", _none_ready)
                        try:
                            async for event in events:
                                batch = [event]
                                data = registry.event_line(event.type, event.record, with_secrets=with_secrets)
                                while len(data) < WATCH_COALESCE_BYTES and (more := take_ready(1)):
                                    batch += more
                                    data += registry.event_line(more[0].type, more[0].record, with_secrets=with_secrets)
                                last_revision = batch[-1].record.revision
                                await emit_line(data)
                                WATCH_EVENTS.inc(len(batch))
                                now = trio.current_time()
                                for sent in batch:
                                    if sent.published is not None:  # live, not replayed history
                                        WATCH_LAG.observe(now - sent.published)
                        except KubeportError as err:  # fell behind: the client resumes from last_revision
                            await emit(watch.Error(err.to_status()))
                        nursery.cancel_scope.cancel()
            except KubeportError as err:  # too old to resume: the client relists
                await emit(watch.Error(err.to_status()))
            finally:
                WATCH_CLIENTS.dec()

        return Response(200, [("content-type", "application/x-ndjson")], producer=produce)


def _none_ready(limit: int) -> list[Event]:
    """``take_ready`` for a store watch that has no such method: nothing is ever ready early."""
    return []
