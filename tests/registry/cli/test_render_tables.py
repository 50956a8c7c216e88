"""The renderer's resource tables (``kpctl get KIND --format text``, ``kpctl tokens ls``) and field lists
(``kpctl status``): exact text for each kind, rows in a stable order. Pure: no registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.cli import render

CLUSTERS = [
    {
        "metadata": {"name": "b", "labels": {"env": "prod"}},
        "spec": {"dynamic_labels": {"arch": {"result": "arm64"}, "os": {"result": ""}}},
    },
    {"metadata": {"name": "a"}, "spec": {}},
]
SERVERS = [
    {
        "metadata": {"name": "c1", "expires": "not a time"},
        "spec": {
            "host_id": "h2",
            "hostname": "10.0.0.2",
            "health": {"status": "unhealthy", "reason": "refused"},
            "cluster": {"metadata": {"labels": {"env": "dev"}}, "spec": {}},
        },
    },
    {"metadata": {"name": "c1"}, "spec": {"host_id": "h1", "hostname": "10.0.0.1", "health": {"status": "healthy"}}},
]
ROLES = [
    {
        "metadata": {"name": "dev"},
        "spec": {
            "allow": {
                "rules": [{"resources": ["kube_cluster"], "verbs": ["list", "read"]}],
                "kubernetes_groups": ["viewers", "devs"],
            }
        },
    },
    {"metadata": {"name": "admin"}, "spec": {}},
]
USERS = [
    {
        "metadata": {"name": "zed"},
        "spec": {
            "roles": ["dev", "ops"],
            "traits": {"kubernetes_groups": ["viewers", "devs"], "kubernetes_users": ["jenkins"]},
        },
    },
    {"metadata": {"name": "amy"}, "spec": {}},
]
TOKENS = [{"metadata": {"name": "abcd****", "expires": ""}, "spec": {"roles": ["Kube"]}}]
EVENTS = [
    {"time": "t1", "event": "resource.create", "user": "admin", "kind": "role", "name": "dev"},
    {
        "time": "t2",
        "event": "instance.join",
        "user": "",
        "host_id": "h1",
        "success": False,
        "error": "bad token",
        "count": 3,
        "client": "10.0.0.9",
        "first_time": "t0",
    },
]

TABLES: list[tuple[str, list[dict[str, Any]], str]] = [
    ("kube_cluster", [], "Name  Labels\n----  ------\n"),
    ("kube_cluster", CLUSTERS, "Name  Labels\n----  -------------------\na\nb     arch=arm64,env=prod\n"),
    (
        "kube_server",
        SERVERS,
        "Cluster  Host ID  Address   Health              Expires     Labels\n"
        "-------  -------  --------  ------------------  ----------  -------\n"
        "c1       h1       10.0.0.1  healthy             never\n"
        "c1       h2       10.0.0.2  unhealthy: refused  not a time  env=dev\n",
    ),
    (
        "role",
        ROLES,
        "Role   Rules                   Kubernetes Groups\n"
        "-----  ----------------------  -----------------\n"
        "admin\n"
        "dev    kube_cluster:list,read  viewers,devs\n",
    ),
    (
        "user",
        USERS,
        "User  Roles    Kubernetes Groups  Kubernetes Users\n"
        "----  -------  -----------------  ----------------\n"
        "amy\n"
        "zed   dev,ops  viewers,devs       jenkins\n",
    ),
    ("token", TOKENS, "Token     Type  Expiry Time (UTC)\n--------  ----  -----------------\nabcd****  Kube  never\n"),
    (
        "event",
        EVENTS,
        "Time  Event            User   Resource  Result\n"
        "----  ---------------  -----  --------  ----------------------------------------------\n"
        "t1    resource.create  admin  role/dev  success\n"
        "t2    instance.join           h1        failure: bad token (x3 from 10.0.0.9 since t0)\n",
    ),
]


@pytest.mark.parametrize(("kind", "items", "expected"), TABLES)
def test_resource_table_of_each_kind(kind: str, items: list[dict[str, Any]], expected: str) -> None:
    assert render.resource_table(kind, items, verbose=True) == expected


def test_resource_table_shows_expiry_as_time_and_time_left() -> None:
    expires = (datetime.now(tz=UTC) + timedelta(hours=2, minutes=5)).replace(microsecond=0)
    token = {"metadata": {"name": "t", "expires": expires.isoformat().replace("+00:00", "Z")}, "spec": {"roles": []}}
    row = render.resource_table("token", [token], verbose=True).splitlines()[2]
    assert f"{expires:%Y-%m-%d %H:%M:%S} UTC (2h" in row
    assert row.endswith("m left)")


def test_resource_table_cuts_long_labels_unless_verbose() -> None:
    cluster = {"metadata": {"name": "a", "labels": {"k": "v" * 100}}, "spec": {}}
    assert render.resource_table("kube_cluster", [cluster], verbose=False).splitlines()[2].endswith("...")
    assert render.resource_table("kube_cluster", [cluster], verbose=True).splitlines()[2].endswith("v" * 100)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("Cluster", "main")], "Cluster  main\n"),
        ([("Cluster", "main"), ("CA pin", "sha256:ab")], "Cluster  main\nCA pin   sha256:ab\n"),
    ],
)
def test_fields_pads_keys_to_one_width(rows: list[tuple[str, str]], expected: str) -> None:
    assert render.fields(rows) == expected
