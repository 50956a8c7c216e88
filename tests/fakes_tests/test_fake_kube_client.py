"""The real ``kubernetes`` Python client against the fake over TLS (CA verified, bearer token or client cert).

The client is synchronous, so each call runs in a worker thread while the fake serves in the test's trio
loop. Passing here means the fake's wire format (paths, JSON shapes, Status errors, watch lines, created
codes) is what the generated models deserialize.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from tests.fakes.fixtures import ADMIN_TOKEN, fake_kube  # noqa: F401  (fixture)
from tests.fakes.kube_api import FakeKube


@contextmanager
def api_client(fake: FakeKube, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> Iterator[k8s.ApiClient]:
    cfg = k8s.Configuration()
    load: Any = k8s_config.load_kube_config_from_dict  # untyped in the client
    load(fake.kubeconfig(token, **kwargs), client_configuration=cfg, persist_config=False)
    with k8s.ApiClient(cfg) as client:
        yield client


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


async def api_error(fn: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        await in_thread(fn)
    return caught.value


# The tests hand the client raw JSON-shaped dicts (the fake's wire format is what is under test), which the
# client accepts at run time but its type hints do not; these accessors opt out of those hints.
def _core(client: k8s.ApiClient) -> Any:
    return k8s.CoreV1Api(client)


def _rbac(client: k8s.ApiClient) -> Any:
    return k8s.RbacAuthorizationV1Api(client)


def _authz(client: k8s.ApiClient) -> Any:
    return k8s.AuthorizationV1Api(client)


def _authn(client: k8s.ApiClient) -> Any:
    return k8s.AuthenticationV1Api(client)


_Watch: Any = k8s_watch.Watch


@dataclass(frozen=True)
class KindOps:
    """How the typed client creates, reads, lists, patches and deletes one kind."""

    kind: str
    body: dict[str, Any]
    create: Callable[[k8s.ApiClient, dict[str, Any]], Any]
    read: Callable[[k8s.ApiClient, str], Any]
    names: Callable[[k8s.ApiClient], list[str]]
    patch: Callable[[k8s.ApiClient, str, dict[str, Any]], Any]
    delete: Callable[[k8s.ApiClient, str], Any]


NS = "team-a"
KINDS = [
    KindOps(
        "namespace",
        {"metadata": {"name": "lifecycle"}},
        lambda c, b: _core(c).create_namespace(b),
        lambda c, n: _core(c).read_namespace(n),
        lambda c: [o.metadata.name for o in _core(c).list_namespace().items],
        lambda c, n, p: _core(c).patch_namespace(n, p),
        lambda c, n: _core(c).delete_namespace(n),
    ),
    KindOps(
        "serviceaccount",
        {"metadata": {"name": "teleport-sa"}},
        lambda c, b: _core(c).create_namespaced_service_account(NS, b),
        lambda c, n: _core(c).read_namespaced_service_account(n, NS),
        lambda c: [o.metadata.name for o in _core(c).list_namespaced_service_account(NS).items],
        lambda c, n, p: _core(c).patch_namespaced_service_account(n, NS, p),
        lambda c, n: _core(c).delete_namespaced_service_account(n, NS),
    ),
    KindOps(
        "secret",
        {"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}},
        lambda c, b: _core(c).create_namespaced_secret(NS, b),
        lambda c, n: _core(c).read_namespaced_secret(n, NS),
        lambda c: [o.metadata.name for o in _core(c).list_namespaced_secret(NS).items],
        lambda c, n, p: _core(c).patch_namespaced_secret(n, NS, p),
        lambda c, n: _core(c).delete_namespaced_secret(n, NS),
    ),
    KindOps(
        "clusterrole",
        {
            "metadata": {"name": "teleport-role"},
            "rules": [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}],
        },
        lambda c, b: _rbac(c).create_cluster_role(b),
        lambda c, n: _rbac(c).read_cluster_role(n),
        lambda c: [o.metadata.name for o in _rbac(c).list_cluster_role().items],
        lambda c, n, p: _rbac(c).patch_cluster_role(n, p),
        lambda c, n: _rbac(c).delete_cluster_role(n),
    ),
    KindOps(
        "clusterrolebinding",
        {
            "metadata": {"name": "teleport-crb"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "teleport-role"},
            "subjects": [{"kind": "ServiceAccount", "name": "teleport-sa", "namespace": NS}],
        },
        lambda c, b: _rbac(c).create_cluster_role_binding(b),
        lambda c, n: _rbac(c).read_cluster_role_binding(n),
        lambda c: [o.metadata.name for o in _rbac(c).list_cluster_role_binding().items],
        lambda c, n, p: _rbac(c).patch_cluster_role_binding(n, p),
        lambda c, n: _rbac(c).delete_cluster_role_binding(n),
    ),
]


@pytest.mark.parametrize("ops", KINDS, ids=[k.kind for k in KINDS])
async def test_crud_round_trip_through_the_python_client(fake_kube: FakeKube, ops: KindOps) -> None:  # noqa: F811
    fake_kube.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    name = ops.body["metadata"]["name"]
    with api_client(fake_kube) as c:
        created = await in_thread(lambda: ops.create(c, ops.body))
        assert created.metadata.name == name
        assert created.metadata.uid
        assert int(created.metadata.resource_version) > 0
        assert created.metadata.creation_timestamp is not None

        again = await in_thread(lambda: ops.read(c, name))
        assert again.metadata.uid == created.metadata.uid
        assert name in await in_thread(lambda: ops.names(c))

        patched = await in_thread(lambda: ops.patch(c, name, {"metadata": {"labels": {"team": "x"}}}))
        assert patched.metadata.labels["team"] == "x"
        assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

        error = await api_error(lambda: ops.create(c, ops.body))
        assert error.status == 409
        assert "AlreadyExists" in str(error.body)

        await in_thread(lambda: ops.delete(c, name))
        gone = await api_error(lambda: ops.read(c, name))
        assert gone.status == 404
        assert " not found" in str(gone.body)


async def test_secret_string_data_is_stored_base64(fake_kube: FakeKube) -> None:  # noqa: F811
    with api_client(fake_kube) as c:
        body = {"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}
        created = await in_thread(lambda: _core(c).create_namespaced_secret("default", body))
    assert created.type == "Opaque"
    assert base64.b64decode(created.data["password"]) == b"hunter2"


async def test_duplicate_create_says_already_exists_like_kubernetes(fake_kube: FakeKube) -> None:  # noqa: F811
    with api_client(fake_kube) as c:
        api = _core(c)
        await in_thread(lambda: api.create_namespaced_service_account("default", {"metadata": {"name": "teleport-sa"}}))
        error = await api_error(
            lambda: api.create_namespaced_service_account("default", {"metadata": {"name": "teleport-sa"}})
        )
    assert error.status == 409
    assert '"message":"serviceaccounts \\"teleport-sa\\" already exists"' in str(error.body)
    assert '"reason":"AlreadyExists"' in str(error.body)


async def test_a_user_without_rbac_is_forbidden_with_the_real_message(fake_kube: FakeKube) -> None:  # noqa: F811
    fake_kube.add_token("bob-token", "bob", ["developers"])
    with api_client(fake_kube, "bob-token") as c:
        body = {"metadata": {"name": "x"}, "rules": []}
        error = await api_error(lambda: _rbac(c).create_cluster_role(body))
    assert error.status == 403
    assert (
        'clusterroles.rbac.authorization.k8s.io is forbidden: User \\"bob\\" cannot create resource '
        '\\"clusterroles\\" in API group \\"rbac.authorization.k8s.io\\" at the cluster scope'
    ) in str(error.body)


async def test_unknown_token_is_401(fake_kube: FakeKube) -> None:  # noqa: F811
    with api_client(fake_kube, "nobody-knows-me") as c:
        error = await api_error(lambda: _core(c).list_namespace())
    assert error.status == 401
    assert '"reason":"Unauthorized"' in str(error.body)


async def test_token_controller_fills_the_secret_and_the_token_works(fake_kube: FakeKube) -> None:  # noqa: F811
    fake_kube.token_delay = 0.2
    fake_kube.grant("system:serviceaccount:default:teleport-sa", verbs=["get", "list"], resources=["pods"])
    with api_client(fake_kube) as c:
        api = _core(c)
        await in_thread(lambda: api.create_namespaced_service_account("default", {"metadata": {"name": "teleport-sa"}}))
        secret_body = {
            "metadata": {"name": "teleport-sa", "annotations": {"kubernetes.io/service-account.name": "teleport-sa"}},
            "type": "kubernetes.io/service-account-token",
        }
        created = await in_thread(lambda: api.create_namespaced_secret("default", secret_body))
        assert not created.data  # not yet: the controller fills it after the delay
        with trio.fail_after(5):
            while True:
                secret = await in_thread(lambda: api.read_namespaced_secret("teleport-sa", "default"))
                if secret.data and secret.data.get("token"):
                    break
                await trio.sleep(0.05)
    assert base64.b64decode(secret.data["ca.crt"]) == fake_kube.ca_pem
    assert base64.b64decode(secret.data["namespace"]) == b"default"
    assert secret.metadata.annotations["kubernetes.io/service-account.uid"]
    token = base64.b64decode(secret.data["token"]).decode()
    with api_client(fake_kube, token) as c:
        pods = await in_thread(lambda: _core(c).list_namespaced_pod("default"))
        assert pods.items == []
        error = await api_error(lambda: _core(c).list_namespaced_secret("default"))
    assert 'User \\"system:serviceaccount:default:teleport-sa\\" cannot list resource \\"secrets\\"' in str(error.body)


@pytest.mark.parametrize(
    ("verb", "resource", "expected"),
    [("get", "pods", True), ("list", "pods", True), ("delete", "pods", False), ("get", "secrets", False)],
)
async def test_self_subject_access_review(fake_kube: FakeKube, verb: str, resource: str, expected: bool) -> None:  # noqa: F811
    fake_kube.add_token("viewer", "vera")
    fake_kube.grant("vera", verbs=["get", "list"], resources=["pods"], namespace="default")
    review = {"spec": {"resourceAttributes": {"namespace": "default", "verb": verb, "resource": resource}}}
    with api_client(fake_kube, "viewer") as c:
        answer = await in_thread(lambda: _authz(c).create_self_subject_access_review(review))
    assert answer.status.allowed is expected


async def test_self_subject_access_review_of_impersonation_for_an_admin(fake_kube: FakeKube) -> None:  # noqa: F811
    review = {"spec": {"resourceAttributes": {"verb": "impersonate", "resource": "users"}}}
    with api_client(fake_kube) as c:
        answer = await in_thread(lambda: _authz(c).create_self_subject_access_review(review))
    assert answer.status.allowed is True


async def test_watch_stream_sees_a_namespace_being_added(fake_kube: FakeKube) -> None:  # noqa: F811
    seen: list[tuple[str, str]] = []

    def watch_namespaces(client: k8s.ApiClient) -> None:
        w = _Watch()
        for event in w.stream(_core(client).list_namespace, timeout_seconds=5):
            seen.append((event["type"], event["object"].metadata.name))
            if event["object"].metadata.name == "watched":
                w.stop()

    with api_client(fake_kube) as c:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, watch_namespaces, c)
            await fake_kube.wait_request(lambda r: r.query.get("watch") == ["true"])
            fake_kube.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "watched"}})
    assert ("ADDED", "default") in seen  # the initial state comes first
    assert seen[-1] == ("ADDED", "watched")


async def test_client_certificate_identity_is_cn_and_organisations(fake_kube: FakeKube) -> None:  # noqa: F811
    cert = fake_kube.issue_client_cert("carol", ["ops", "auditors"])
    with api_client(fake_kube, None, client_cert=cert) as c:
        review = await in_thread(
            lambda: _authn(c).create_self_subject_review(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
            )
        )
    assert review.status.user_info.username == "carol"
    assert review.status.user_info.groups == ["ops", "auditors", "system:authenticated"]
    assert fake_kube.requests[-1].user == "carol"
