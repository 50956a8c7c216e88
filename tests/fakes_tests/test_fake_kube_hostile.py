"""Bad, malformed and hostile requests over real HTTPS: each gets the status and Status body the real server
would give (or a documented stand-in), and none of them disturbs the fake."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httpx
import pytest

from registry.host.tls import client_context
from tests.fakes.fixtures import ADMIN_TOKEN, fake_kube  # noqa: F401  (fixture)
from tests.fakes.kube_api import MAX_BODY_BYTES, FakeKube

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {**ADMIN, "content-type": "application/json"}


@pytest.fixture
async def http(fake_kube: FakeKube) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    async with httpx.AsyncClient(base_url=fake_kube.url, verify=client_context([fake_kube.ca_pem])) as client:
        yield client


class Case(NamedTuple):
    id: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    reason: str
    fragment: str  # of the Status message


CASES = [Case(*row) for row in [
    ("no token", "GET", "/api/v1/namespaces", {}, b"", 401, "Unauthorized", "Unauthorized"),
    ("bearer, no token", "GET", "/api", {"authorization": "Bearer"}, b"", 401, "Unauthorized", "Unauthorized"),
    ("basic auth", "GET", "/api", {"authorization": "Basic YTpi"}, b"", 401, "Unauthorized", "Unauthorized"),
    ("unknown token", "GET", "/version", {"authorization": "Bearer guess"}, b"", 401, "Unauthorized", "Unauthorized"),
    ("garbage json", "POST", "/api/v1/namespaces", JSON, b"{not json", 400, "BadRequest", "json parse error"),
    ("json array", "POST", "/api/v1/namespaces", JSON, b"[1,2]", 400, "BadRequest", "must be a Namespace object"),
    ("bad utf-8", "POST", "/api/v1/namespaces", JSON, b'{"a":"\xff"}', 400, "BadRequest", "json parse error"),
    ("deep json", "POST", "/api/v1/namespaces", JSON, b"[" * 50_000, 400, "BadRequest", ""),
    ("wrong kind", "POST", "/api/v1/namespaces", JSON, b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"}}',
     400, "BadRequest", "unrecognized"),
    ("name not a string", "POST", "/api/v1/namespaces", JSON, b'{"metadata":{"name":7}}', 400, "BadRequest",
     "cannot unmarshal"),
    ("unknown path", "GET", "/no/such/thing", ADMIN, b"", 404, "NotFound", "could not find the requested resource"),
    ("unknown resource", "GET", "/api/v1/widgets", ADMIN, b"", 404, "NotFound", "could not find"),
    ("unknown group", "GET", "/apis/example.com/v1/things", ADMIN, b"", 404, "NotFound", "could not find"),
    ("openapi v2", "GET", "/openapi/v2", ADMIN, b"", 404, "NotFound", "could not find"),
    ("openapi v3", "GET", "/openapi/v3", ADMIN, b"", 404, "NotFound", "could not find"),
    ("missing object", "GET", "/api/v1/namespaces/nope", ADMIN, b"", 404, "NotFound", 'namespaces "nope" not found'),
    ("missing namespace", "POST", "/api/v1/namespaces/nope/configmaps", JSON, b'{"metadata":{"name":"c"}}', 404,
     "NotFound", 'namespaces "nope" not found'),
    ("invalid name", "POST", "/api/v1/namespaces", JSON, b'{"metadata":{"name":"Bad_Name"}}', 422, "Invalid",
     'Namespace "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 label'),
    ("no name", "POST", "/api/v1/namespaces", JSON, b'{"metadata":{}}', 422, "Invalid",
     "name or generateName is required"),
    ("protobuf", "POST", "/api/v1/namespaces", {**ADMIN, "content-type": "application/vnd.kubernetes.protobuf"},
     b"k8s\x00\n", 415, "UnsupportedMediaType", "accepted media types include: application/json"),
    ("yaml body", "POST", "/api/v1/namespaces", {**ADMIN, "content-type": "application/yaml"}, b"metadata: {}", 415,
     "UnsupportedMediaType", ""),
    ("apply patch", "PATCH", "/api/v1/namespaces/default", {**ADMIN, "content-type": "application/apply-patch+yaml"},
     b"{}", 415, "UnsupportedMediaType", "application/merge-patch+json"),
    ("bad json patch", "PATCH", "/api/v1/namespaces/default", {**ADMIN, "content-type": "application/json-patch+json"},
     b'{"op":"add"}', 400, "BadRequest", "array of operations"),
    ("json patch miss", "PATCH", "/api/v1/namespaces/default", {**ADMIN, "content-type": "application/json-patch+json"},
     b'[{"op":"remove","path":"/nope"}]', 422, "Invalid", "missing path"),
    ("bad selector", "GET", "/api/v1/pods?labelSelector=a+in+(b", ADMIN, b"", 400, "BadRequest",
     "unable to parse requirement"),
    ("bad field", "GET", "/api/v1/pods?fieldSelector=spec.x%3Dy", ADMIN, b"", 400, "BadRequest",
     "is not a known field selector"),
    ("bad rv", "GET", "/api/v1/pods?watch=1&resourceVersion=abc", ADMIN, b"", 400, "BadRequest", "resourceVersion"),
    ("bad timeout", "GET", "/api/v1/pods?watch=1&timeoutSeconds=-1", ADMIN, b"", 400, "BadRequest", "timeoutSeconds"),
    ("dry run", "POST", "/api/v1/namespaces?dryRun=All", JSON, b'{"metadata":{"name":"d"}}', 400, "BadRequest",
     "dryRun"),
    ("create at cluster scope", "POST", "/api/v1/pods", JSON, b'{"metadata":{"name":"p"}}', 405,
     "MethodNotAllowed", ""),
    ("put to a collection", "PUT", "/api/v1/namespaces/default/configmaps", JSON, b"{}", 405, "MethodNotAllowed",
     ""),
    ("post to an object", "POST", "/api/v1/namespaces/default", JSON, b"{}", 405, "MethodNotAllowed", ""),
    ("body namespace mismatch", "POST", "/api/v1/namespaces/default/configmaps", JSON,
     b'{"metadata":{"name":"c","namespace":"kube-system"}}', 400, "BadRequest", "does not match the namespace"),
    ("unsupported subresource", "GET", "/api/v1/namespaces/default/pods/p/log", ADMIN, b"", 404, "NotFound", ""),
    ("sa token without annotation", "POST", "/api/v1/namespaces/default/secrets", JSON,
     b'{"metadata":{"name":"s"},"type":"kubernetes.io/service-account-token"}', 422, "Invalid",
     "metadata.annotations[kubernetes.io/service-account.name]: Required value"),
    ("secret not base64", "POST", "/api/v1/namespaces/default/secrets", JSON,
     b'{"metadata":{"name":"s"},"data":{"k":"***"}}', 400, "BadRequest", "illegal base64"),
]]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_requests_get_kubernetes_status_errors(http: httpx.AsyncClient, case: Case) -> None:
    response = await http.request(case.method, case.path, headers=case.headers, content=case.body)
    assert response.status_code == case.status, response.text
    answer: dict[str, Any] = response.json()
    assert answer["kind"] == "Status"
    assert answer["apiVersion"] == "v1"
    assert answer["status"] == "Failure"
    assert answer["code"] == case.status
    assert answer["reason"] == case.reason
    assert case.fragment in answer["message"]


async def test_huge_body_is_413_and_the_fake_keeps_serving(
    http: httpx.AsyncClient,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    huge = b'{"metadata":{"name":"big"},"data":{"x":"' + b"a" * (MAX_BODY_BYTES + 10) + b'"}}'
    response = await http.post("/api/v1/namespaces/default/configmaps", headers=JSON, content=huge)
    assert response.status_code == 413
    assert response.json()["reason"] == "RequestEntityTooLarge"
    assert fake_kube.get_object("configmaps", "big", "default") is None
    assert (await http.get("/version", headers=ADMIN)).status_code == 200


async def test_non_admin_is_forbidden_from_unknown_paths_before_404(
    http: httpx.AsyncClient,
    fake_kube: FakeKube,  # noqa: F811
) -> None:
    fake_kube.add_token("bob-token", "bob")
    response = await http.get("/no/such/thing", headers={"authorization": "Bearer bob-token"})
    assert response.status_code == 403
    assert response.json()["message"] == 'forbidden: User "bob" cannot get path "/no/such/thing"'
    for discovery in ("/version", "/api", "/api/v1", "/apis", "/apis/rbac.authorization.k8s.io/v1"):
        assert (await http.get(discovery, headers={"authorization": "Bearer bob-token"})).status_code == 200


async def test_groups_without_a_user_is_the_real_servers_plain_500(http: httpx.AsyncClient) -> None:
    headers = [("authorization", f"Bearer {ADMIN_TOKEN}"), ("impersonate-group", "a"), ("impersonate-group", "b")]
    response = await http.get("/api/v1/namespaces/default/pods", headers=headers)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == (
        'Internal Server Error: "/api/v1/namespaces/default/pods": '
        "requested [{Group  a    } {Group  b    }] without impersonating a user\n"
    )


async def test_stale_resource_version_update_is_a_conflict(http: httpx.AsyncClient) -> None:
    created = await http.post("/api/v1/namespaces/default/configmaps", headers=JSON, json={"metadata": {"name": "c"}})
    assert created.status_code == 201
    first = created.json()
    update = {**first, "data": {"k": "v"}}
    assert (await http.put("/api/v1/namespaces/default/configmaps/c", headers=JSON, json=update)).status_code == 200
    stale = await http.put("/api/v1/namespaces/default/configmaps/c", headers=JSON, json={**update, "data": {"k": "w"}})
    assert stale.status_code == 409
    assert stale.json()["reason"] == "Conflict"
    assert stale.json()["message"] == (
        'Operation cannot be fulfilled on configmaps "c": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


async def test_header_and_query_oddities_do_not_break_the_fake(http: httpx.AsyncClient) -> None:
    headers = [("authorization", f"Bearer {ADMIN_TOKEN}")] + [("impersonate-group", f"g{i}") for i in range(200)]
    headers.append(("impersonate-user", "bob"))
    response = await http.get("/api/v1/namespaces", headers=headers)
    assert response.status_code == 403  # bob (with 200 groups) may not list namespaces
    response = await http.get("/api/v1/namespaces?limit=abc&continue=%00&labelSelector=", headers=ADMIN)
    assert response.status_code == 200
    assert json.loads(response.text)["kind"] == "NamespaceList"


async def test_head_gets_the_status_without_a_body(http: httpx.AsyncClient) -> None:
    response = await http.head("/api/v1/namespaces", headers=ADMIN)
    assert (response.status_code, response.content) == (200, b"")
    response = await http.head("/api/v1/namespaces/nope", headers=ADMIN)
    assert (response.status_code, response.content) == (404, b"")
    assert (await http.get("/version", headers=ADMIN)).status_code == 200  # the connection survived
