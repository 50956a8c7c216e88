"""agent.config.static_clusters: one single-context kubeconfig per context of the agent's kubeconfig_file."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from agent.static_clusters import static_clusters
from registry.core.errors import BadParameter


def kubeconfig(contexts: list[dict[str, Any]], **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": f"c{i}", "cluster": {"server": f"https://10.0.0.{i}:6443", "certificate-authority-data": "Q0E="}}
            for i in range(1, 4)
        ],
        "users": [{"name": f"u{i}", "user": {"token": f"secret-{i}"}} for i in range(1, 4)],
        "contexts": contexts,
        "current-context": "prod",
        "preferences": {},
    }
    doc.update(extra)
    return yaml.safe_dump(doc).encode()


def ctx(name: Any, cluster: Any = "c1", user: Any = "u1", **more: Any) -> dict[str, Any]:
    return {"name": name, "context": {"cluster": cluster, "user": user, **more}}


def test_three_contexts_become_three_clusters() -> None:
    data = kubeconfig([ctx("prod", "c1", "u1", namespace="web"), ctx("stage", "c2", "u2"), ctx("dev.eu_1", "c3", "u3")])
    clusters, warnings = static_clusters(data, source="kubeconfig")
    assert warnings == []
    assert [name for name, _ in clusters] == ["prod", "stage", "dev.eu_1"]
    for index, (name, raw) in enumerate(clusters, start=1):
        single = yaml.safe_load(raw)
        assert single["current-context"] == name
        assert [c["name"] for c in single["contexts"]] == [name]
        # Only the cluster and user this context references: no other cluster's credentials leak into it.
        assert single["clusters"] == [
            {
                "name": f"c{index}",
                "cluster": {"server": f"https://10.0.0.{index}:6443", "certificate-authority-data": "Q0E="},
            }
        ]
        assert single["users"] == [{"name": f"u{index}", "user": {"token": f"secret-{index}"}}]
        assert single["kind"] == "Config"
    assert yaml.safe_load(clusters[0][1])["contexts"][0]["context"]["namespace"] == "web"


def test_output_is_a_kubeconfig_the_kubernetes_client_loads() -> None:
    kube_config = pytest.importorskip("kubernetes.config.kube_config")
    clusters, _ = static_clusters(kubeconfig([ctx("prod", "c2", "u2")]), source="k")
    loader = kube_config.KubeConfigLoader(config_dict=yaml.safe_load(clusters[0][1]))
    assert loader.current_context["name"] == "prod"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (
            ctx("arn:aws:eks:us-east-1:123:cluster/prod"),
            'kc: context name must match ^[a-zA-Z0-9._-]+$ (got "arn:aws:eks',
        ),
        (ctx("has space"), "context name must match"),
        (ctx("ünïcode"), "context name must match"),
        (ctx(".."), 'context name must not be "." or ".."'),
        (ctx("x" * 254), "context name must be at most 253 characters long"),
        (ctx("prod"), "the name appears twice"),
        (ctx("nocluster", cluster="missing"), 'its cluster "missing" is not defined'),
        (ctx("badcluster", cluster=["c1"]), "context.cluster must name a cluster, got a list of 1 items"),
        (ctx("nocluster", cluster=None), "context.cluster must name a cluster, got null"),
        (ctx("nouser", user="ghost"), 'its user "ghost" is not defined'),
    ],
)
def test_bad_contexts_are_skipped_with_a_warning(bad: dict[str, Any], reason: str) -> None:
    clusters, warnings = static_clusters(kubeconfig([ctx("prod"), bad, ctx("stage", "c2", "u2")]), source="kc")
    assert [name for name, _ in clusters] == ["prod", "stage"]
    assert len(warnings) == 1
    assert warnings[0].startswith("kc: context ")
    assert reason in warnings[0]


@pytest.mark.parametrize(
    "entry", [{"name": "x"}, {"context": {"cluster": "c1"}}, "just-a-string", None, {"name": 5, "context": {}}]
)
def test_malformed_context_entries_are_skipped(entry: Any) -> None:
    clusters, warnings = static_clusters(kubeconfig([entry, ctx("prod")]), source="kc")
    assert [name for name, _ in clusters] == ["prod"]
    assert warnings == ["kc: contexts[0] has no name or no context; skipped"]


def test_context_without_user_is_kept() -> None:
    clusters, warnings = static_clusters(kubeconfig([{"name": "anon", "context": {"cluster": "c1"}}]), source="kc")
    assert warnings == []
    assert yaml.safe_load(clusters[0][1])["users"] == []


def test_malformed_cluster_and_user_lists_warn() -> None:
    data = kubeconfig(
        [ctx("prod")], users={"not": "a list"}, clusters=[{"name": "c1", "cluster": {"server": "s"}}, "junk"]
    )
    clusters, warnings = static_clusters(data, source="kc")
    assert clusters == []
    assert "kc: clusters[1] has no name or no cluster; ignored" in warnings
    assert "kc: users is not a list; ignored" in warnings
    assert any('its user "u1" is not defined' in w for w in warnings)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (kubeconfig([]), "kc: the kubeconfig has no contexts"),
        (b"apiVersion: v1\nkind: Config\n", "has no contexts"),
        (b"- a\n", "kc: a kubeconfig must be a mapping, got a list"),
        (b"", "a kubeconfig must be a mapping, got null"),
        (b"contexts: [unclosed\n", "kc is not valid YAML: line 2, column 1"),
        (b"a: &x [1]\nb: *x\n", "YAML anchors (&x) are not allowed"),
        (b"a: 1\n---\nb: 2\n", "kc: expected one YAML document, found 2"),
        (b"\xff\xfe", "not UTF-8"),
        (b"#" * (2 * 1024 * 1024), "kc is 2097152 bytes; the limit is 1048576"),
    ],
)
def test_unusable_kubeconfigs(data: bytes, fragment: str) -> None:
    with pytest.raises(BadParameter) as info:
        static_clusters(data, source="kc")
    assert fragment in info.value.message


def test_first_of_two_same_named_clusters_is_used() -> None:
    data = kubeconfig(
        [ctx("prod", "dup")],
        clusters=[
            {"name": "dup", "cluster": {"server": "https://first"}},
            {"name": "dup", "cluster": {"server": "https://second"}},
        ],
    )
    clusters, _ = static_clusters(data, source="kc")
    assert yaml.safe_load(clusters[0][1])["clusters"][0]["cluster"]["server"] == "https://first"
