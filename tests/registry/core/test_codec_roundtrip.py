"""kube_server heartbeats, and the round-trip invariant from_dict(to_dict(r)) == r through dicts, YAML and JSON."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from registry.core import codec
from registry.core.errors import BadParameter
from registry.core.resources import (
    ORIGIN_LABEL,
    AWSSpec,
    AzureSpec,
    CommandLabel,
    GCPSpec,
    Health,
    KubeCluster,
    KubeServer,
    Metadata,
    Resource,
    Role,
    RoleConditions,
    Rule,
    Token,
    User,
)
from tests.registry.core.core_helpers import kubeconfig_bytes

KUBECONFIG = kubeconfig_bytes()
TRICKY_VALUES = ["prod", "", "yes", "5", "1.5", "null", "2027-01-01", "ünïcode ✓", "a: b", "- x", "'q'", "#x", " pad "]


def _server(**kwargs: Any) -> KubeServer:
    cluster = KubeCluster(
        metadata=Metadata(name="c1", labels={"env": "prod", "region": "static", ORIGIN_LABEL: "dynamic"}),
        dynamic_labels={"region": CommandLabel(("get-region",), period="1h", result="eu-west-1")},
    )
    defaults: dict[str, Any] = {
        "metadata": Metadata(name="c1", expires=datetime(2027, 1, 1, tzinfo=UTC), labels={"env": "svc", "arch": "x"}),
        "host_id": "5f0c8d2e-host",
        "hostname": "kube.example.com:3027",
        "version": "0.1.0",
        "cluster": cluster,
        "health": Health("unhealthy", "connection refused", datetime(2026, 12, 31, tzinfo=UTC)),
    }
    defaults.update(kwargs)
    return KubeServer(**defaults)


def test_kube_server_labels_precedence_and_store_name() -> None:
    server = _server()
    assert server.store_name() == "5f0c8d2e-host/c1"
    # cluster static < server (service) labels < dynamic results
    assert server.all_labels() == {"env": "svc", "region": "eu-west-1", ORIGIN_LABEL: "dynamic", "arch": "x"}


def test_kube_server_wire_keeps_results_and_never_a_kubeconfig() -> None:
    server = _server(cluster=replace(_server().cluster, kubeconfig=KUBECONFIG))
    wire = codec.resource_to_dict(server)
    assert "kubeconfig" not in wire["spec"]["cluster"]["spec"]
    assert wire["spec"]["cluster"]["spec"]["dynamic_labels"]["region"]["result"] == "eu-west-1"
    assert wire["spec"]["health"] == {
        "status": "unhealthy",
        "reason": "connection refused",
        "checked_at": "2026-12-31T00:00:00Z",
    }
    decoded = codec.resource_from_dict(wire)
    assert isinstance(decoded, KubeServer)
    assert decoded.cluster.dynamic_labels["region"].result == "eu-west-1"
    assert decoded == _server()


def _server_doc(**spec: Any) -> dict[str, Any]:
    wire = codec.resource_to_dict(_server())
    wire["spec"].update(spec)
    return wire


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_server_doc(host_id="a/b"), 'kube_server "c1": spec.host_id must match'),
        (_server_doc(host_id=None), "spec.host_id is required"),
        (_server_doc(cluster=None), "spec.cluster must be the kube_cluster this server serves"),
        (
            _server_doc(cluster={"metadata": {"name": "c1"}, "spec": {"kubeconfig": "YWJj"}}),
            'kube_server "c1": spec.cluster.spec.kubeconfig must not be set: heartbeats never carry credentials',
        ),
        (_server_doc(cluster={"metadata": {"name": "other"}}), "spec.cluster.metadata.name must equal metadata.name"),
        (_server_doc(cluster={"kind": "role", "metadata": {"name": "c1"}}), "spec.cluster.kind must be kube_cluster"),
        (_server_doc(health={"status": "great"}), "spec.health.status must be one of healthy, unhealthy, unknown"),
        (_server_doc(health={"status": "healthy", "latency": 1}), "unknown field spec.health.latency"),
        (_server_doc(hostname=5), "spec.hostname must be a string (got int 5)"),
    ],
)
def test_invalid_kube_servers(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message


# -- the round-trip invariant ---------------------------------------------------------------------------------


def _text(rng: random.Random) -> str:
    return rng.choice(TRICKY_VALUES)


def _time(rng: random.Random) -> datetime | None:
    if rng.random() < 0.3:
        return None
    if rng.random() < 0.1:
        return rng.choice([datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)])
    micro = rng.choice([0, 1, 500000, 999999])
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**8), microseconds=micro)


def _metadata(rng: random.Random, name: str) -> Metadata:
    labels = {f"k{i}/{rng.choice('ab.:_-*')}": _text(rng) for i in range(rng.randrange(4))}
    if rng.random() < 0.5:
        labels[ORIGIN_LABEL] = rng.choice(["dynamic", "config-file", "cloud"])
    return Metadata(
        name=name,
        description=_text(rng),
        labels=labels,
        expires=_time(rng),
        revision=rng.choice(["", "1", "12345"]),
    )


def _command(rng: random.Random, *, result: bool) -> CommandLabel:
    argv = tuple(rng.choice(["uname", "-m", "", "a b", "ünï"]) for _ in range(rng.randrange(3)))
    timing = (
        {"period": rng.choice(["1s", "24h", "1m30s", "1.5h"])} if rng.random() < 0.6 else {"schedule": "*/5 * * * *"}
    )
    return CommandLabel(("cmd", *argv), result=_text(rng) if result else "", **timing)


def _cluster(rng: random.Random, *, in_server: bool = False, name: str = "c.1_x-y") -> KubeCluster:
    return KubeCluster(
        metadata=_metadata(rng, name),
        kubeconfig=b"" if in_server or rng.random() < 0.3 else KUBECONFIG,
        dynamic_labels={f"d{i}": _command(rng, result=in_server) for i in range(rng.randrange(3))},
        aws=AWSSpec("us-east-1", "123", "eks") if rng.random() < 0.3 else None,
        azure=AzureSpec("n", "g", rng.choice(["", "t"]), "s") if rng.random() < 0.3 else None,
        gcp=GCPSpec("l", "p", "n") if rng.random() < 0.3 else None,
        allow_exec_plugins=rng.random() < 0.3,
    )


def _conditions(rng: random.Random, version: str) -> RoleConditions:
    return RoleConditions(
        rules=tuple(Rule(("kube_cluster", "role"), (rng.choice(["list", "*"]),)) for _ in range(rng.randrange(3))),
        kubernetes_labels=rng.choice([{}, {"*": "*"}, {"env": ["prod", "^st.*$"], "team": "dev"}]),
        kubernetes_groups=tuple(rng.sample(["viewers", "{{internal.kubernetes_groups}}"], rng.randrange(3))),
        kubernetes_users=tuple(rng.sample(["alice", "bob"], rng.randrange(3))),
        kubernetes_resources=tuple(_kube_resource(rng, version) for _ in range(rng.randrange(2))),
    )


def _kube_resource(rng: random.Random, version: str) -> dict[str, Any]:
    """A valid entry for ``version``: pods with every verb before v7, v7 kinds, v8 plural resources."""
    if version in ("v3", "v4", "v5", "v6"):
        return {"kind": "pod", "namespace": rng.choice(["default", "*"]), "name": "web-*", "verbs": ["*"]}
    if version == "v7":
        kind = rng.choice(["pod", "namespace", "*"])
        namespace = "" if kind == "namespace" else rng.choice(["default", "*"])
        return {"kind": kind, "namespace": namespace, "name": "web-*", "verbs": ["get", "exec"]}
    kind, group = rng.choice([("pods", ""), ("deployments", "apps"), ("*", "*"), ("crontabs", "stable.example.com")])
    return {"kind": kind, "api_group": group, "namespace": "dev", "name": "web-*", "verbs": ["get", "exec"]}


def _random_resource(rng: random.Random) -> Resource:
    kind = rng.choice(["kube_cluster", "kube_server", "role", "user", "token"])
    if kind == "kube_cluster":
        return _cluster(rng)
    if kind == "kube_server":
        name = "srv"
        return KubeServer(
            metadata=_metadata(rng, name),
            host_id="host-1",
            hostname=rng.choice(["", "kube:3027"]),
            version=rng.choice(["", "0.1.0"]),
            cluster=_cluster(rng, in_server=True, name=name),
            health=Health(rng.choice(["healthy", "unhealthy", "unknown"]), _text(rng), _time(rng)),
        )
    if kind == "role":
        version = rng.choice(Role.VERSIONS)
        options = rng.choice([{}, {"max_session_ttl": "8h"}])
        return Role(_metadata(rng, "r"), _conditions(rng, version), _conditions(rng, version), options, version)
    if kind == "user":
        return User(_metadata(rng, "alice@example.com"), ("r1", "r2")[: rng.randrange(3)], {"logins": ("a", "")})
    return Token(_metadata(rng, "abcdef0123456789"), ("Kube",))


RESOURCES = [_random_resource(random.Random(seed)) for seed in range(150)]


@pytest.mark.parametrize("resource", RESOURCES, ids=[f"{r.KIND}-{i}" for i, r in enumerate(RESOURCES)])
def test_round_trip_through_dict_yaml_and_json(resource: Resource) -> None:
    wire = codec.resource_to_dict(resource)
    assert codec.resource_from_dict(wire) == resource
    assert codec.resource_from_dict(json.loads(json.dumps(wire))) == resource
    (from_yaml,) = codec.decode_resources(codec.dump_yaml([wire]), source="x.yaml")
    assert from_yaml == resource
    (from_json,) = codec.decode_resources(codec.dump_json([wire]), source="x.json")
    assert from_json == resource


def test_round_trip_omits_empty_optional_fields() -> None:
    cluster = KubeCluster(metadata=Metadata(name="c"))
    assert codec.resource_to_dict(cluster) == {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {"name": "c"},
        "spec": {},
    }
    role = Role(metadata=Metadata(name="r"))
    assert codec.resource_to_dict(role)["spec"] == {"allow": {}, "deny": {}}


def test_all_kinds_round_trip_together_as_one_multi_document_file() -> None:
    one_per_kind = list({r.KIND: r for r in RESOURCES}.values())
    assert len(one_per_kind) == 5
    decoded = codec.decode_resources(
        codec.dump_yaml([codec.resource_to_dict(r) for r in one_per_kind]), source="all.yaml"
    )
    assert decoded == one_per_kind


# -- dumping ---------------------------------------------------------------------------------------------------


def test_dump_yaml_separates_documents_and_sorts_keys_like_teleport() -> None:
    docs = [codec.resource_to_dict(KubeCluster(metadata=Metadata(name=n))) for n in ("a", "b")]
    text = codec.dump_yaml(docs)
    assert text == (
        "kind: kube_cluster\nmetadata:\n  name: a\nspec: {}\nversion: v3\n"
        "---\nkind: kube_cluster\nmetadata:\n  name: b\nspec: {}\nversion: v3\n"
    )
    assert list(yaml.safe_load_all(text)) == docs


def test_dump_yaml_never_folds_the_kubeconfig_line() -> None:
    cluster = KubeCluster(metadata=Metadata(name="c"), kubeconfig=b"x" * 10_000)
    text = codec.dump_yaml([codec.resource_to_dict(cluster)])
    line = next(line for line in text.splitlines() if "kubeconfig" in line)
    assert len(line) > 13_000


def test_dump_json_is_an_indented_list() -> None:
    docs = [{"b": 1, "a": (1, 2), "when": datetime(2027, 1, 1, tzinfo=UTC)}]
    text = codec.dump_json(docs)
    assert text.endswith("]\n") and text.startswith("[\n  {")
    assert json.loads(text) == [{"a": [1, 2], "b": 1, "when": "2027-01-01T00:00:00Z"}]
    assert codec.dump_json([]) == "[]\n"
