"""The fake's pure parts: URL reading, selectors, patches, validation, tables, discovery, store semantics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fakes import kube_discovery as disc
from tests.fakes.kube_patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.fakes.kube_paths import parse_request
from tests.fakes.kube_select import Selector, parse_field_selector, parse_label_selector
from tests.fakes.kube_status import KubeStatusError
from tests.fakes.kube_store import KubeStore
from tests.fakes.kube_tables import short_age, wants_table


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", "/api/v1/namespaces", ("list", "", "", "namespaces", "", "")),
        ("GET", "/api/v1/namespaces/x", ("get", "", "x", "namespaces", "", "x")),
        ("GET", "/api/v1/namespaces/x/status", ("get", "", "x", "namespaces", "status", "x")),
        ("GET", "/api/v1/namespaces/x/pods?watch=true", ("watch", "", "x", "pods", "", "")),
        ("GET", "/api/v1/pods?watch=0", ("list", "", "", "pods", "", "")),
        ("GET", "/api/v1/watch/namespaces/x/pods/p", ("watch", "", "x", "pods", "", "p")),
        ("POST", f"/apis/{disc.RBAC}/v1/clusterroles", ("create", disc.RBAC, "", "clusterroles", "", "")),
        ("DELETE", "/api/v1/namespaces/x/configmaps", ("deletecollection", "", "x", "configmaps", "", "")),
        ("GET", "/api/v1/namespaces/x/pods/p/log", ("get", "", "x", "pods", "log", "p")),
        ("GET", "/api/v1/namespaces/x/pods?fieldSelector=metadata.name%3Dp", ("list", "", "x", "pods", "", "p")),
        ("PATCH", "/apis/apps/v1/namespaces/x/deployments/d", ("patch", "apps", "x", "deployments", "", "d")),
    ],
)  # fmt: skip
def test_request_attributes(method: str, target: str, expected: tuple[str, ...]) -> None:
    split = urlsplit(target)
    info = parse_request(method, split.path, parse_qs(split.query))
    assert info.is_resource
    assert (info.verb, info.group, info.namespace, info.resource, info.subresource, info.name) == expected


@pytest.mark.parametrize("path", ["/", "/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/version", "/x/y/z"])
def test_non_resource_paths(path: str) -> None:
    info = parse_request("GET", path, {})
    assert not info.is_resource
    assert info.verb == "get"


LABELS = {"app": "web", "tier": "front"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app=db", False),
        ("missing!=x", True),
        ("app", True),
        ("!app", False),
        ("!missing", True),
        ("app in (db, web)", True),
        ("app notin (db,web)", False),
        ("missing notin (a)", True),
        ("app=web,tier=front", True),
        ("app=web,tier=back", False),
        ("app=", False),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    requirements = parse_label_selector(selector)
    assert Selector("pods", requirements).matches({"metadata": {"labels": LABELS}}) is matches


@pytest.mark.parametrize("bad", ["a in (b", "a)", "=x", "a b", "!", "a in b", "x" * 5000, "ä=1"])
def test_malformed_label_selectors_are_bad_requests(bad: str) -> None:
    with pytest.raises(KubeStatusError) as caught:
        parse_label_selector(bad)
    assert caught.value.code == 400


def test_field_selectors() -> None:
    secret = {"metadata": {"name": "s", "namespace": "n"}, "type": "Opaque"}
    assert Selector("secrets", (), parse_field_selector("type=Opaque,metadata.name!=x", "secrets")).matches(secret)
    assert not Selector("secrets", (), parse_field_selector("metadata.namespace==m", "secrets")).matches(secret)
    for bad in ("type=Opaque", "spec.x=y", "metadata.name"):
        with pytest.raises(KubeStatusError):
            parse_field_selector(bad, "pods")


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": 1, "b": {"c": 2}}, {"b": {"d": 3}}, {"a": 1, "b": {"c": 2, "d": 3}}),
        ({"a": 1, "b": 2}, {"a": None}, {"b": 2}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": {"b": 1}}, {"a": "x"}, {"a": "x"}),
        ({}, {"a": {"b": None}}, {"a": {}}),
    ],
)
def test_merge_patch_rfc7386(target: Any, patch: Any, result: Any) -> None:
    before = repr(target)
    assert merge_patch(target, patch) == result
    assert repr(target) == before  # inputs untouched


def test_strategic_merge_directives_are_applied_not_stored() -> None:
    target = {"spec": {"containers": [{"name": "a"}], "extra": {"x": 1}, "gone": {"y": 2}}, "keep": 1}
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "b"}],
            "containers": [{"name": "b"}],
            "extra": {"$patch": "replace", "z": 3},
            "gone": {"$patch": "delete"},
        }
    }
    assert strategic_merge_patch(target, patch) == {
        "spec": {"containers": [{"name": "b"}], "extra": {"z": 3}},
        "keep": 1,
    }


def test_json_patch_rfc6902() -> None:
    doc = {"metadata": {"labels": {"a": "1"}}, "list": [1, 2]}
    ops = [
        {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
        {"op": "replace", "path": "/list/0", "value": 9},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "copy", "from": "/list", "path": "/copy"},
        {"op": "move", "from": "/copy", "path": "/moved"},
        {"op": "test", "path": "/moved/2", "value": 3},
    ]
    assert json_patch(doc, ops) == {"metadata": {"labels": {"b/c": "2"}}, "list": [9, 2, 3], "moved": [9, 2, 3]}
    assert doc == {"metadata": {"labels": {"a": "1"}}, "list": [1, 2]}


@pytest.mark.parametrize(
    ("ops", "malformed"),
    [
        ({"op": "add"}, True),
        ([{"op": "add", "path": "/a"}], True),
        ([{"op": "jump", "path": "/a"}], True),
        ([{"op": "remove", "path": "a"}], True),
        ([{"op": "remove", "path": "/nope"}], False),
        ([{"op": "replace", "path": "/list/9", "value": 1}], False),
        ([{"op": "add", "path": "/list/01", "value": 1}], False),
        ([{"op": "test", "path": "/list/0", "value": 2}], False),
        ([{"op": "move", "from": "/list", "path": "/list/0"}], False),
    ],
)
def test_json_patch_errors(ops: Any, malformed: bool) -> None:
    with pytest.raises(PatchError) as caught:
        json_patch({"list": [1]}, ops)
    assert caught.value.malformed is malformed


@pytest.mark.parametrize(
    ("accept", "table"),
    [
        ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json", True),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", True),
        ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json", False),
        ("application/json", False),
        ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json", False),
        ("", False),
        (None, False),
    ],
)
def test_table_negotiation(accept: str | None, table: bool) -> None:
    assert wants_table(accept) is table


AGES = [(5, "5s"), (119, "119s"), (150, "2m30s"), (3600, "60m"), (7 * 3600, "7h"), (3 * 86400, "3d")]


@pytest.mark.parametrize(("seconds", "text"), AGES)
def test_ages_read_like_kubectl(seconds: int, text: str) -> None:
    now = datetime(2024, 1, 2, tzinfo=UTC)
    created = (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert short_age(created, now) == text


def test_discovery_documents_list_what_kubectl_needs() -> None:
    core = disc.resource_list("", "v1")
    assert core is not None
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["namespaces"]["shortNames"] == ["ns"]
    assert by_name["namespaces"]["namespaced"] is False
    assert by_name["serviceaccounts"]["shortNames"] == ["sa"]
    assert by_name["pods"]["shortNames"] == ["po"]
    assert "serviceaccounts/token" in by_name
    groups = [g["name"] for g in disc.api_group_list()["groups"]]
    assert {"rbac.authorization.k8s.io", "authorization.k8s.io"} <= set(groups)
    assert disc.resource_list("example.com", "v1") is None
    assert disc.version_document("v1.29.3")["minor"] == "29"


@pytest.mark.parametrize(
    ("resource", "name", "ok"),
    [
        ("namespaces", "team-a", True),
        ("namespaces", "a.b", False),  # a label, not a subdomain
        ("configmaps", "a.b", True),
        ("configmaps", "-a", False),
        ("services", "1abc", False),  # DNS-1035: must start with a letter
        ("clusterroles", "system:basic-user", True),
        ("clusterroles", "a/b", False),
        ("configmaps", "a" * 254, False),
    ],
)
def test_name_validation(resource: str, name: str, ok: bool) -> None:
    store = KubeStore()
    store.create(disc.NAMESPACES, "", {"metadata": {"name": "default"}})
    rt = disc.resolve(resource)
    if ok:
        store.create(rt, "default", {"metadata": {"name": name}})
        return
    with pytest.raises(KubeStatusError) as caught:
        store.create(rt, "default", {"metadata": {"name": name}})
    assert caught.value.code == 422
    assert caught.value.details is not None
    assert caught.value.details["causes"][0]["field"] == "metadata.name"


def test_store_versions_no_op_updates_and_preconditions() -> None:
    store = KubeStore()
    ns = store.create(disc.NAMESPACES, "", {"metadata": {"name": "default"}})
    cm = store.create(disc.CONFIG_MAPS, "default", {"metadata": {"generateName": "cm-"}, "data": {"k": "v"}})
    assert re.fullmatch(r"cm-[a-z0-9]{5}", cm["metadata"]["name"])
    assert int(cm["metadata"]["resourceVersion"]) > int(ns["metadata"]["resourceVersion"])
    name = cm["metadata"]["name"]
    same = store.update(disc.CONFIG_MAPS, "default", name, cm)
    assert same["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]  # nothing changed
    hijack = {**cm, "metadata": {**cm["metadata"], "uid": "forged", "creationTimestamp": "1999-01-01T00:00:00Z"}}
    kept = store.update(disc.CONFIG_MAPS, "default", name, {**hijack, "data": {"k": "w"}})
    assert (kept["metadata"]["uid"], kept["metadata"]["creationTimestamp"]) == (
        cm["metadata"]["uid"],
        cm["metadata"]["creationTimestamp"],
    )
    with pytest.raises(KubeStatusError) as caught:
        store.delete(disc.CONFIG_MAPS, "default", name, precondition_uid="other")
    assert caught.value.code == 409
    with pytest.raises(KubeStatusError) as caught:
        store.update(disc.CONFIG_MAPS, "default", "ghost", {"metadata": {"name": "ghost"}})
    assert caught.value.message == 'configmaps "ghost" not found'
    deleted = store.delete(disc.CONFIG_MAPS, "default", name)
    assert int(deleted["metadata"]["resourceVersion"]) == store.revision


def test_role_ref_is_required_and_immutable() -> None:
    store = KubeStore()
    binding: dict[str, Any] = {
        "metadata": {"name": "b"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "bob"}],
    }
    with pytest.raises(KubeStatusError) as caught:
        store.create(disc.CLUSTER_ROLE_BINDINGS, "", {"metadata": {"name": "b"}})
    assert caught.value.code == 422
    assert "roleRef.kind: Unsupported value" in caught.value.message
    created = store.create(disc.CLUSTER_ROLE_BINDINGS, "", binding)
    changed = {**created, "roleRef": {**binding["roleRef"], "name": "cluster-admin"}}
    with pytest.raises(KubeStatusError) as caught:
        store.update(disc.CLUSTER_ROLE_BINDINGS, "", "b", changed)
    assert "cannot change roleRef" in caught.value.message
