"""Serving an authenticated, authorized request: discovery, the REST verbs, watches and access reviews.

The caller (``kube_api``) has already authenticated, impersonated, authorized and logged; this module maps
one request to the store and back to JSON like the real server:

- ``GET`` one object → the object (with kind/apiVersion); ``GET`` a collection → ``<Kind>List`` with
  ``metadata.resourceVersion`` and items without kind/apiVersion (``limit``/``continue`` are ignored: one
  page); either as a Table when the Accept header asks for one;
- ``POST`` → 201 + object, ``PUT`` → 200 + object, ``PATCH`` (merge, strategic without merge keys, JSON patch) → 200;
  ``application/apply-patch+yaml`` and any protobuf body → 415;
- ``DELETE`` → a ``Status`` Success with details, except namespaces and pods, which return the object
  (with deletionTimestamp, as the real server's graceful deletes do); DELETE on a collection → ``<Kind>List``
  of what was deleted;
- watches (``watch=true``/``1``, or ``/watch/`` paths) stream ``{"type":..,"object":..}\\n`` lines until
  ``timeoutSeconds`` (trio time, so MockClock drives it) or until the client leaves; a too-old
  resourceVersion yields one ``ERROR`` event with a 410 Expired Status;
- Self/SubjectAccessReview, SelfSubjectRulesReview, SelfSubjectReview and ServiceAccount TokenRequest are
  computed, never stored.

Simplified: ``dryRun`` is refused (400) rather than emulated; YAML bodies are refused (415).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from registry.server.http import Request, Response
from tests.fakes import kube_discovery as disc
from tests.fakes.kube_exec import serve_exec
from tests.fakes.kube_logs import serve_log
from tests.fakes.kube_paths import RequestInfo, parse_bool
from tests.fakes.kube_pods import PodRuntime
from tests.fakes.kube_portforward import serve_portforward
from tests.fakes.kube_rbac import Attributes, UserInfo, authorize, rules_for
from tests.fakes.kube_select import Selector, selector_from_query
from tests.fakes.kube_status import (
    KubeStatusError,
    bad_request,
    invalid,
    method_not_allowed,
    unknown_resource,
    unsupported_media_type,
)
from tests.fakes.kube_store import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    KubeStore,
    Obj,
    Subscription,
    timestamp,
)
from tests.fakes.kube_tables import include_object, to_table, wants_table

MAX_JSON_DEPTH = 100  # deeper bodies are refused before anything recurses over them
DEFAULT_WATCH_SECONDS = 1800.0
_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)
_OBJECT_ON_DELETE = (disc.NAMESPACES, disc.PODS)

TokenMinter = Callable[[str, str, int], tuple[str, datetime]]  # (namespace, sa, seconds) -> (token, expiry)


@dataclass
class Call:
    """One request as the routes see it."""

    request: Request
    info: RequestInfo
    user: UserInfo
    store: KubeStore
    git_version: str
    server_address: str
    now: datetime
    mint_token: TokenMinter
    runtime: PodRuntime | None = None  # what runs in pods (logs, exec, port-forward); None: 404 for those


def json_response(status: int, obj: Any) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    return Response(status, [("content-type", "application/json")], body)


# ---------------------------------------------------------------------------------------- body decoding


def _depth_ok(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return False
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return True


def _media_type(request: Request) -> str:
    return (request.header("content-type") or "application/json").split(";")[0].strip().lower()


def decode_json(request: Request) -> Any:
    try:
        value = json.loads(request.body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from None
    except RecursionError:
        raise bad_request("couldn't get version/kind; json parse error: exceeded max depth") from None
    if not _depth_ok(value):
        raise bad_request(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def decode_object_body(request: Request) -> Any:
    media = _media_type(request)
    if media != "application/json":
        # The real server also reads protobuf and YAML; the fake speaks JSON only, and protobuf must fail
        # loudly so tests notice kubectl's imperative commands (which send protobuf) need another path.
        raise unsupported_media_type("application/json")
    return decode_json(request)


# -------------------------------------------------------------------------------------------- discovery


def serve_non_resource(call: Call) -> Response:
    path = call.info.path.rstrip("/") or "/"
    if call.request.method not in ("GET", "HEAD"):
        raise method_not_allowed()
    if path == "/version":
        return json_response(200, disc.version_document(call.git_version))
    if path == "/api":
        return json_response(200, disc.api_versions(call.server_address))
    if path == "/apis":
        return json_response(200, disc.api_group_list())
    if path in ("/healthz", "/livez", "/readyz"):
        return Response(200, [("content-type", "text/plain; charset=utf-8")], b"ok")
    parts = path.strip("/").split("/")
    document: dict[str, Any] | None = None
    if parts[0] == "api" and len(parts) == 2:
        document = disc.resource_list("", parts[1])
    elif parts[0] == "apis" and len(parts) == 2:
        document = disc.api_group(parts[1])
    elif parts[0] == "apis" and len(parts) == 3:
        document = disc.resource_list(parts[1], parts[2])
    if document is None:
        raise unknown_resource()  # includes /openapi/v2 and /openapi/v3: callers use --validate=false
    return json_response(200, document)


# ---------------------------------------------------------------------------------------- resource verbs


def _strip_type(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _resource_version(query: dict[str, list[str]]) -> int | None:
    raw = (query.get("resourceVersion") or [""])[-1]
    if raw in ("", "0"):
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise bad_request(f'resourceVersion: Invalid value: "{raw[:40]}": must be a decimal resource version')
    return int(raw)


def _timeout_seconds(query: dict[str, list[str]]) -> float:
    raw = (query.get("timeoutSeconds") or [""])[-1]
    if raw == "":
        return DEFAULT_WATCH_SECONDS
    if not raw.isdigit() or len(raw) > 9:
        raise bad_request(f'timeoutSeconds: Invalid value: "{raw[:40]}": must be a non-negative integer')
    return float(raw)


def _refuse_dry_run(query: dict[str, list[str]]) -> None:
    if query.get("dryRun"):
        raise bad_request("the fake Kubernetes API does not emulate dryRun")


async def serve_resource(call: Call) -> Response:
    info = call.info
    rt = disc.find(info.group, info.version, info.resource)
    if rt is None or info.extra_parts:
        raise unknown_resource()
    if info.subresource:
        if rt is disc.SERVICE_ACCOUNTS and info.subresource == "token" and info.verb == "create":
            return _token_request(call)
        if rt is disc.PODS and call.runtime is not None and info.subresource in _POD_STREAMS:
            return _pod_stream(call, call.runtime)
        raise unknown_resource()
    if not rt.stored:
        if info.verb != "create" or info.namespace:
            raise method_not_allowed()
        return _review(call, rt)
    namespace = info.namespace
    if not rt.namespaced and namespace and rt is not disc.NAMESPACES:
        raise unknown_resource()
    if rt.namespaced and not namespace and info.verb not in ("list", "watch"):
        raise method_not_allowed()
    if (info.verb == "create" and info.name) or (info.verb in ("update", "patch") and not info.name):
        raise method_not_allowed()  # POST to an object, PUT/PATCH to a collection
    # A list's name (from a metadata.name field selector) is for authorization only: the selector filters.
    name = "" if info.verb in ("list", "create", "deletecollection") else info.name
    query = call.request.query
    if info.verb == "watch" or (info.verb == "get" and parse_bool((query.get("watch") or [""])[-1])):
        return _watch(call, rt, namespace or None, name)
    if info.verb == "get":
        obj = call.store.get(rt, namespace, name)
        return _object_or_table(call, rt, obj)
    if info.verb == "list":
        items, revision = call.store.list_objects(rt, namespace or None, selector_from_query(rt.name, query))
        if wants_table(call.request.header("accept")):
            table = to_table(
                rt.name, items, now=call.now, include=include_object(query), resource_version=str(revision)
            )
            return json_response(200, table)
        return json_response(
            200,
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(revision)},
                "items": [_strip_type(o) for o in items],
            },
        )
    _refuse_dry_run(query)
    if info.verb == "create":
        created = call.store.create(rt, namespace, decode_object_body(call.request))
        return json_response(201, created)
    if info.verb == "update":
        return json_response(200, call.store.update(rt, namespace, name, decode_object_body(call.request)))
    if info.verb == "patch":
        media = _media_type(call.request)
        if media not in _PATCH_TYPES:
            raise unsupported_media_type(", ".join(_PATCH_TYPES))
        return json_response(200, call.store.patch(rt, namespace, name, media, decode_json(call.request)))
    if info.verb == "delete":
        return _delete(call, rt, namespace, name)
    if info.verb == "deletecollection":
        deleted = call.store.delete_collection(rt, namespace or None, selector_from_query(rt.name, query))
        return json_response(
            200,
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(call.store.revision)},
                "items": [_strip_type(o) for o in deleted],
            },
        )
    raise method_not_allowed()


_POD_STREAMS = {"log": ("get",), "exec": ("create",), "portforward": ("create",)}


def _pod_stream(call: Call, runtime: PodRuntime) -> Response:
    info = call.info
    if info.verb not in _POD_STREAMS[info.subresource] or (info.subresource == "log" and call.request.method == "HEAD"):
        raise method_not_allowed()
    pod = call.store.get(disc.PODS, info.namespace, info.name)  # 404 pods "x" not found
    if info.subresource == "log":
        return serve_log(call.store, runtime, pod, call.request.query)
    if info.subresource == "exec":
        return serve_exec(runtime, pod, call.request)
    return serve_portforward(runtime, pod, call.request)


def _object_or_table(call: Call, rt: disc.ResourceType, obj: Obj) -> Response:
    if wants_table(call.request.header("accept")):
        include = include_object(call.request.query)
        return json_response(200, to_table(rt.name, [obj], now=call.now, include=include))
    return json_response(200, obj)


def _delete(call: Call, rt: disc.ResourceType, namespace: str, name: str) -> Response:
    uid = rv = None
    if call.request.body.strip():
        options = decode_json(call.request)
        if not isinstance(options, dict):
            raise bad_request("the body of a DELETE must be a DeleteOptions object")
        preconditions = options.get("preconditions") or {}
        if isinstance(preconditions, dict):
            uid = preconditions.get("uid") if isinstance(preconditions.get("uid"), str) else None
            rv = preconditions.get("resourceVersion") if isinstance(preconditions.get("resourceVersion"), str) else None
    deleted = call.store.delete(rt, namespace, name, precondition_uid=uid, precondition_rv=rv)
    if rt in _OBJECT_ON_DELETE:
        deleted["metadata"]["deletionTimestamp"] = timestamp(call.now)
        if rt is disc.NAMESPACES:
            deleted["status"] = {"phase": "Terminating"}
        return json_response(200, deleted)
    details: dict[str, Any] = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.name
    details["uid"] = deleted["metadata"]["uid"]
    return json_response(
        200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
    )


# ------------------------------------------------------------------------------------------------- watch


def _watch(call: Call, rt: disc.ResourceType, namespace: str | None, name: str) -> Response:
    query = call.request.query
    selector = selector_from_query(rt.name, query)
    if name:
        by_name = selector_from_query(rt.name, {"fieldSelector": [f"metadata.name={name}"]})
        selector = Selector(rt.name, selector.labels, (*selector.fields, *by_name.fields))
    timeout = _timeout_seconds(query)
    since = _resource_version(query)
    table = wants_table(call.request.header("accept"))
    include = include_object(query) if table else "Object"
    encode = _event_encoder(rt, call.now, table, include)
    headers = [("content-type", "application/json"), ("cache-control", "no-cache, private")]
    try:
        subscription = call.store.watch(rt, namespace, selector, since)
    except KubeStatusError as err:
        return Response(
            200, headers, stream=_single(json.dumps({"type": "ERROR", "object": err.to_status()}).encode() + b"\n")
        )
    deadline = trio.current_time() + timeout
    return Response(200, headers, stream=_stream(subscription, deadline, encode))


def _event_encoder(rt: disc.ResourceType, now: datetime, table: bool, include: str) -> Callable[[str, Obj], bytes]:
    first = True

    def encode(kind: str, obj: Obj) -> bytes:
        nonlocal first
        body: Any = obj
        if table:
            # Like the real server, only the first Table of a watch repeats the column definitions.
            body = to_table(rt.name, [obj], now=now, include=include, with_columns=first)
            first = False
        return json.dumps({"type": kind, "object": body}, separators=(",", ":")).encode() + b"\n"

    return encode


async def _single(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


async def _stream(
    subscription: Subscription, deadline: float, encode: Callable[[str, Obj], bytes]
) -> AsyncIterator[bytes]:
    try:
        for kind, obj in subscription.initial:
            yield encode(kind, obj)
        while True:
            event: tuple[str, Obj] | None = None
            # The cancel scope must not span the yield (trio forbids yielding inside one from a generator).
            with trio.move_on_at(deadline):
                try:
                    event = await subscription.receive()
                except trio.EndOfChannel:
                    return
            if event is None:
                return
            yield encode(*event)
    finally:
        subscription.close()


# --------------------------------------------------------------------------------------- computed kinds


def _spec(body: Any, rt: disc.ResourceType) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request(f"the body of the request must be a {rt.kind} object")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        spec = {}
    return spec


def _attributes(user: UserInfo, spec: dict[str, Any], rt: disc.ResourceType) -> Attributes:
    resource_attrs = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if isinstance(resource_attrs, dict) == isinstance(non_resource, dict):
        text = 'Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified'
        raise invalid(rt.kind, rt.group, "", [("spec.resourceAttributes", "FieldValueInvalid", text)])
    if isinstance(non_resource, dict):
        return Attributes(user, str(non_resource.get("verb", "")), False, path=str(non_resource.get("path", "")))
    assert isinstance(resource_attrs, dict)
    return Attributes(
        user,
        str(resource_attrs.get("verb", "")),
        True,
        api_group=str(resource_attrs.get("group", "")),
        namespace=str(resource_attrs.get("namespace", "")),
        resource=str(resource_attrs.get("resource", "")),
        subresource=str(resource_attrs.get("subresource", "")),
        name=str(resource_attrs.get("name", "")),
    )


def _review(call: Call, rt: disc.ResourceType) -> Response:
    body = decode_object_body(call.request)
    spec = _spec(body, rt)
    result: dict[str, Any] = {
        "kind": rt.kind,
        "apiVersion": rt.api_version,
        "metadata": {"creationTimestamp": None},
        "spec": spec,
    }
    if rt is disc.SELF_SUBJECT_REVIEWS:
        user_info: dict[str, Any] = {"username": call.user.name, "groups": list(call.user.groups)}
        if call.user.uid:
            user_info["uid"] = call.user.uid
        if call.user.extra:
            user_info["extra"] = {k: list(v) for k, v in call.user.extra.items()}
        result["status"] = {"userInfo": user_info}
        return json_response(201, result)
    if rt is disc.SELF_SUBJECT_RULES_REVIEWS:
        namespace = str(spec.get("namespace", ""))
        resource_rules, non_resource_rules = rules_for(call.store, call.user, namespace)
        result["status"] = {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": False,
        }
        return json_response(201, result)
    user = call.user
    if rt is disc.SUBJECT_ACCESS_REVIEWS:
        raw_groups = spec.get("groups")
        groups = raw_groups if isinstance(raw_groups, list) else []
        user = UserInfo(str(spec.get("user", "")), tuple(str(g) for g in groups), str(spec.get("uid", "")))
    decision = authorize(call.store, _attributes(user, spec, rt))
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    result["status"] = status
    return json_response(201, result)


def _token_request(call: Call) -> Response:
    info = call.info
    body = decode_object_body(call.request)
    spec = _spec(body, disc.SERVICE_ACCOUNTS)
    call.store.get(disc.SERVICE_ACCOUNTS, info.namespace, info.name)  # 404 when the SA does not exist
    seconds = spec.get("expirationSeconds", 3600)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 600 <= seconds <= 2**32:
        text = f"Invalid value: {seconds!r}: may not specify a duration less than 10 minutes"
        raise invalid("TokenRequest", disc.AUTHN, info.name, [("spec.expirationSeconds", "FieldValueInvalid", text)])
    token, expires = call.mint_token(info.namespace, info.name, seconds)
    raw_audiences = spec.get("audiences")
    audiences = raw_audiences if isinstance(raw_audiences, list) else ["https://kubernetes.default.svc"]
    return json_response(
        201,
        {
            "kind": "TokenRequest",
            "apiVersion": f"{disc.AUTHN}/v1",
            "metadata": {"name": info.name, "namespace": info.namespace, "creationTimestamp": timestamp(call.now)},
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
            "status": {"token": token, "expirationTimestamp": timestamp(expires.astimezone(UTC))},
        },
    )
