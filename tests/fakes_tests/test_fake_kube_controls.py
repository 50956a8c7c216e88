"""The test-control surface of FakeKube: injected failures, grants, direct object access, the request log,
kubeconfigs and client certificates."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio

from tests.fakes.kube_api import FakeKube
from tests.fakes.kube_inproc import body_json, call

TOKEN = "t"


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube(admin_token=TOKEN)


async def test_fail_next_injects_errors_for_a_path_prefix(fake: FakeKube) -> None:
    fake.fail_next("/api/v1/namespaces", 503, times=2, message="etcd is down")
    statuses = [(await call(fake, "GET", "/api/v1/namespaces", token=TOKEN)).status for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert (await call(fake, "GET", "/version", token=TOKEN)).status == 200
    fake.fail_next("/version", 500)
    failed = await call(fake, "GET", "/version")  # injected before authentication is even looked at
    assert body_json(failed) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "injected failure (500 InternalError)",
        "reason": "InternalError",
        "code": 500,
    }


async def test_the_request_log_records_who_asked_and_who_acted(fake: FakeKube) -> None:
    fake.add_token("bob-token", "bob", ["devs"])
    fake.grant("bob", verbs=["impersonate"], resources=["users", "groups"])
    headers = [("Impersonate-User", "alice"), ("Impersonate-Group", "x"), ("Impersonate-Group", "y")]
    response = await call(fake, "GET", "/api/v1/namespaces/default/pods?limit=5", token="bob-token", headers=headers)
    assert response.status == 403  # alice may not list pods
    recorded = fake.requests[-1]
    assert (recorded.method, recorded.path, recorded.query) == (
        "GET",
        "/api/v1/namespaces/default/pods",
        {"limit": ["5"]},
    )
    assert (recorded.user, recorded.groups) == ("bob", ("devs", "system:authenticated"))
    assert (recorded.impersonated_user, recorded.impersonated_groups) == ("alice", ("x", "y", "system:authenticated"))
    assert recorded.header_values("impersonate-group") == ["x", "y"]
    assert recorded.status == 403
    unauthenticated = await call(fake, "GET", "/api")
    assert unauthenticated.status == 401
    assert (fake.requests[-1].user, fake.requests[-1].groups) == (None, ())
    fake.clear_requests()
    assert fake.requests == []


async def test_wait_request_returns_the_first_match_and_times_out(fake: FakeKube, autojump_clock: object) -> None:
    async def later() -> None:
        await trio.sleep(5)
        await call(fake, "GET", "/version", token=TOKEN)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        found = await fake.wait_request(lambda r: r.path == "/version")
    assert found.status == 200
    with pytest.raises(trio.TooSlowError):
        await fake.wait_request(lambda r: r.path == "/never", timeout=1)


async def test_namespaced_grants_and_direct_object_access(fake: FakeKube) -> None:
    fake.add_token("bob-token", "bob")
    fake.grant("bob", verbs=["get", "list"], resources=["configmaps"], namespace="default")
    fake.create_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}})
    assert (await call(fake, "GET", "/api/v1/namespaces/default/configmaps/c", token="bob-token")).status == 200
    assert (await call(fake, "GET", "/api/v1/namespaces/kube-system/configmaps", token="bob-token")).status == 403
    stored = fake.get_object("cm", "c", "default")
    assert stored is not None
    updated = fake.update_object({**stored, "data": {"k": "w"}})
    assert int(updated["metadata"]["resourceVersion"]) > int(stored["metadata"]["resourceVersion"])
    assert [o["metadata"]["name"] for o in fake.list_objects("configmaps")] == ["c"]
    fake.delete_object("configmaps", "c", "default")
    assert fake.get_object("configmaps", "c", "default") is None
    with pytest.raises(KeyError):
        fake.get_object("widgets", "w")
    with pytest.raises(KeyError):
        fake.create_object({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}})
    kube_system = fake.get_object("namespaces", "kube-system")
    assert kube_system is not None
    assert fake.kube_system_uid == kube_system["metadata"]["uid"]


async def test_rules_review_lists_what_a_user_may_do(fake: FakeKube) -> None:
    fake.add_token("bob-token", "bob")
    fake.grant("bob", verbs=["get"], resources=["pods"], resource_names=["p"], namespace="default")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": "default"},
    }
    answer = body_json(
        await call(
            fake, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", token="bob-token", json_body=review
        )
    )
    rules: list[dict[str, Any]] = answer["status"]["resourceRules"]
    assert {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["p"]} in rules
    assert {
        "verbs": ["create"],
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    } in rules
    assert answer["status"]["incomplete"] is False


async def test_subject_access_review_for_someone_else(fake: FakeKube) -> None:
    fake.grant("ops", kind="Group", verbs=["delete"], resources=["pods"])
    review = {"spec": {"user": "eve", "groups": ["ops"], "resourceAttributes": {"verb": "delete", "resource": "pods"}}}
    answer = body_json(
        await call(fake, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", token=TOKEN, json_body=review)
    )
    assert answer["status"]["allowed"] is True
    bad = await call(
        fake, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token=TOKEN, json_body={"spec": {}}
    )
    assert bad.status == 422


def test_kubeconfigs_embed_the_ca_and_one_credential(fake: FakeKube) -> None:
    config = fake.kubeconfig("tok", context="c", cluster="k", user="u", namespace="team", server="https://proxy:3027")
    assert config["current-context"] == "c"
    assert config["contexts"] == [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team"}}]
    assert config["clusters"][0]["cluster"]["server"] == "https://proxy:3027"
    assert config["users"] == [{"name": "u", "user": {"token": "tok"}}]
    cert, key = fake.issue_client_cert("carol", ["ops"])
    with_cert = fake.kubeconfig(client_cert=(cert, key), server="https://x")
    assert set(with_cert["users"][0]["user"]) == {"client-certificate-data", "client-key-data"}
    with pytest.raises(ValueError, match="not both"):
        fake.kubeconfig("tok", client_cert=(cert, key))
    with pytest.raises(RuntimeError, match="not serving"):
        fake.kubeconfig("tok")  # no server address to put in it yet
    assert b"token: tok" in fake.kubeconfig_yaml("tok", server="https://x")


async def test_client_certificates_name_the_user_and_groups(fake: FakeKube) -> None:
    cert, _ = fake.issue_client_cert("carol", ["ops", "dev"])
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    der = ssl.PEM_cert_to_DER_cert(cert.decode())
    answer = await call(
        fake, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", peer_cert=der, json_body=review
    )
    assert body_json(answer)["status"]["userInfo"] == {
        "username": "carol",
        "groups": ["ops", "dev", "system:authenticated"],
    }
    garbage = await call(fake, "GET", "/version", peer_cert=b"\x30\x03garbage")
    assert garbage.status == 401


@pytest.mark.parametrize("bad", [{"git_version": "1.30"}, {"token_delay": -1}])
def test_bad_constructor_arguments(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (each message is asserted where it is produced)
        FakeKube(**bad)
