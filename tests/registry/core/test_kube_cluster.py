"""kube_cluster documents: the seed's files, every rule of the wire shape, and the model's behaviour."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from registry.core import codec
from registry.core.errors import BadParameter
from registry.core.resources import (
    ORIGIN_LABEL,
    AWSSpec,
    AzureSpec,
    CommandLabel,
    GCPSpec,
    KubeCluster,
    Metadata,
)
from tests.registry.core.core_helpers import b64, cluster_doc, kubeconfig, kubeconfig_bytes, printf_recipe

KUBECONFIG = kubeconfig_bytes()


def decode_one(text: str) -> KubeCluster:
    (resource,) = codec.decode_resources(text, source="kube_cluster.yaml")
    assert isinstance(resource, KubeCluster)
    return resource


# -- seed 003, verbatim apart from the KUBECONFIG placeholder ---------------------------------------------

SEED_CREATE = """\
kind: kube_cluster
version: v3
metadata:
  name: mycluster
spec:
  kubeconfig: |
"""

SEED_STATIC_LABELS = """\
kind: kube_cluster
version: v3
metadata:
  name: mycluster
  labels:
    env: prod
    team: dev
spec:
  kubeconfig: KUBECONFIG
"""

SEED_DYNAMIC_LABELS = """\
kind: kube_cluster
version: v3
metadata:
  name: mycluster
spec:
  kubeconfig: KUBECONFIG
  dynamic_labels:
    region:
      period: "24h"
      command: ["python3", "get_region.py"]
"""

SEED_EDITED = """\
kind: kube_cluster
metadata:
  id: 9999999999999999999
  labels:
    teleport.dev/origin: dynamic
    env: test
  name: mycluster
spec:
  aws: {}
  azure: {}
  kubeconfig: KUBECONFIG
version: v3
"""


def test_seed_printf_recipe_file() -> None:
    # `printf "    %s" $(cat kubeconfig | base64) >> kube_cluster.yaml` right after `kubeconfig: |`
    text = SEED_CREATE + printf_recipe(KUBECONFIG)
    assert "\n" not in text[len(SEED_CREATE) :]  # the recipe writes one long line of space-separated chunks
    assert text.count("    ") > 2  # several 76-character chunks
    cluster = decode_one(text)
    assert cluster.name == "mycluster"
    assert cluster.kubeconfig == KUBECONFIG
    assert cluster.static_labels() == {}


def test_seed_static_labels() -> None:
    cluster = decode_one(SEED_STATIC_LABELS.replace("KUBECONFIG", b64(KUBECONFIG)))
    assert cluster.static_labels() == {"env": "prod", "team": "dev"}
    assert cluster.all_labels() == {"env": "prod", "team": "dev"}


def test_seed_dynamic_labels() -> None:
    cluster = decode_one(SEED_DYNAMIC_LABELS.replace("KUBECONFIG", b64(KUBECONFIG)))
    label = cluster.dynamic_labels["region"]
    assert label == CommandLabel(command=("python3", "get_region.py"), period="24h")
    assert label.period_seconds() == 86400.0
    assert cluster.all_labels() == {"region": ""}  # the command has not run: Teleport shows an empty value


def test_seed_get_edit_example_with_legacy_id_and_empty_cloud_specs() -> None:
    cluster = decode_one(SEED_EDITED.replace("KUBECONFIG", b64(KUBECONFIG)))
    assert cluster.aws is None and cluster.azure is None and cluster.gcp is None
    assert cluster.static_labels() == {"teleport.dev/origin": "dynamic", "env": "test"}
    assert cluster.origin == ""  # kubeport's origin label is kubeport.dev/origin


def test_kubeconfig_base64_with_whitespace_everywhere() -> None:
    encoded = b64(KUBECONFIG)
    spaced = "\n".join(f"\t {encoded[i : i + 7]}  " for i in range(0, len(encoded), 7))
    assert codec.resource_from_dict(cluster_doc(kubeconfig=spaced)).kubeconfig == KUBECONFIG  # type: ignore[union-attr]


def test_yaml_binary_kubeconfig_is_accepted() -> None:
    text = f"kind: kube_cluster\nversion: v3\nmetadata: {{name: c}}\nspec:\n  kubeconfig: !!binary {b64(KUBECONFIG)}\n"
    assert decode_one(text).kubeconfig == KUBECONFIG


def test_no_kubeconfig_is_accepted() -> None:
    cluster = codec.resource_from_dict(cluster_doc(kubeconfig=""))
    assert isinstance(cluster, KubeCluster) and cluster.kubeconfig == b""


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("expires", "2027-01-01T00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("expires", "2027-01-01T02:00:00+02:00", datetime(2027, 1, 1, tzinfo=UTC)),
        ("expires", "2027-01-01t00:00:00.123456789z", datetime(2027, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("expires", datetime(2027, 1, 1), datetime(2027, 1, 1, tzinfo=UTC)),  # YAML timestamp without zone
        ("revision", "12", "12"),
        ("revision", 12, "12"),  # an unquoted revision after editing
        ("namespace", "default", None),
        ("description", "prod in eu", "prod in eu"),
    ],
)
def test_metadata_fields(field: str, value: Any, expected: Any) -> None:
    doc = cluster_doc()
    doc["metadata"][field] = value
    cluster = codec.resource_from_dict(doc)
    if expected is not None:
        assert getattr(cluster.metadata, field) == expected


def test_yaml_timestamp_is_normalised_to_utc() -> None:
    cluster = decode_one(
        "kind: kube_cluster\nversion: v3\nmetadata:\n  name: c\n  expires: 2027-01-01T01:00:00+01:00\n"
    )
    assert cluster.metadata.expires == datetime(2027, 1, 1, tzinfo=UTC)
    assert cluster.metadata.expires.tzinfo == UTC


def test_dynamic_label_schedule_and_dropped_result() -> None:
    doc = cluster_doc(
        dynamic_labels={
            "arch": {"command": ["uname", "-m"], "schedule": "*/5  * * * *"},
            "env": {"command": ["cat", "/etc/env"], "period": "1m30s", "result": "stale"},
        }
    )
    cluster = codec.resource_from_dict(doc)
    assert isinstance(cluster, KubeCluster)
    assert cluster.dynamic_labels["arch"].schedule == "*/5 * * * *"  # normalised by validate_cron
    assert cluster.dynamic_labels["arch"].period_seconds() is None
    assert cluster.dynamic_labels["env"].result == ""  # results are never taken from a kube_cluster
    assert cluster.dynamic_labels["env"].period_seconds() == 90.0


def test_cloud_specs() -> None:
    doc = cluster_doc(
        aws={"region": "us-east-1", "account_id": "123456789012", "name": "eks1"},
        azure={"resource_name": "aks", "resource_group": "rg", "subscription_id": "sub"},
        gcp={"location": "europe-west1", "project_id": "p", "name": "gke"},
    )
    cluster = codec.resource_from_dict(doc)
    assert isinstance(cluster, KubeCluster)
    assert cluster.aws == AWSSpec("us-east-1", "123456789012", "eks1")
    assert cluster.azure == AzureSpec(resource_name="aks", resource_group="rg", subscription_id="sub")
    assert cluster.gcp == GCPSpec("europe-west1", "p", "gke")


@pytest.mark.parametrize("spec", [{}, {"aws": None}, {"aws": {}}, {"aws": {"region": ""}}])
def test_an_absent_null_or_empty_cloud_spec_is_no_cloud(spec: dict[str, Any]) -> None:
    cluster = codec.resource_from_dict(cluster_doc(**spec))
    assert isinstance(cluster, KubeCluster)
    assert (cluster.aws, cluster.azure, cluster.gcp) == (None, None, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"aws": 5}, "spec.aws must be a mapping (got int 5)"),
        ({"gcp": []}, "spec.gcp must be a mapping"),
        ({"azure": {"bogus": "x"}}, "unknown field spec.azure.bogus"),
        ({"aws": {"region": "us-east-1"}}, "spec.aws.name is required when spec.aws is set"),
        ({"gcp": {"name": 7}}, "spec.gcp.name must be a string"),
    ],
)
def test_a_cloud_spec_that_is_there_is_still_checked(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(BadParameter, match=re.escape(message)):
        codec.resource_from_dict(cluster_doc(**spec))


NAME_RULE = "metadata.name must match ^[a-zA-Z0-9._-]+$"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metadata": {"name": "a/b"}}, f'kube_cluster "a/b": {NAME_RULE} (got "a/b")'),
        ({"metadata": {"name": ".."}}, 'kube_cluster "..": metadata.name must not be "." or ".."'),
        ({"metadata": {"name": "."}}, 'metadata.name must not be "." or ".."'),
        ({"metadata": {"name": ""}}, "kube_cluster: metadata.name is required"),
        ({"metadata": {}}, "kube_cluster: metadata.name is required"),
        ({"metadata": None}, "kube_cluster: metadata.name is required"),
        ({"metadata": {"name": "a" * 300}}, "metadata.name must be at most 253 characters long"),
        ({"metadata": {"name": "my cluster"}}, NAME_RULE),
        ({"metadata": {"name": "prod:eu"}}, NAME_RULE),
        ({"metadata": {"name": "arn:aws:eks:us-east-1:1:cluster/x"}}, NAME_RULE),
        ({"metadata": {"name": "clüster"}}, NAME_RULE),
        ({"metadata": {"name": "a\nb"}}, 'got "a\\nb"'),
        ({"metadata": {"name": 5}}, "kube_cluster: metadata.name must be a string (got int 5)"),
        ({"metadata": {"name": "x", "labels": {"a b": "v"}}}, 'metadata.labels: invalid label key "a b"'),
        ({"metadata": {"name": "x", "labels": {"": "v"}}}, 'invalid label key ""'),
        ({"metadata": {"name": "x", "labels": {"еnv": "v"}}}, "invalid label key"),  # Cyrillic е
        (
            {"metadata": {"name": "x", "labels": {"env": 5}}},
            'kube_cluster "x": metadata.labels.env must be a string (got int 5)',
        ),
        ({"metadata": {"name": "x", "labels": {"on": True}}}, "metadata.labels.on must be a string (got bool true)"),
        ({"metadata": {"name": "x", "labels": ["env"]}}, "metadata.labels must be a mapping"),
        ({"metadata": {"name": "x", "labels": {ORIGIN_LABEL: "hacked"}}}, "must be one of dynamic, config-file"),
        ({"metadata": {"name": "x", "namespace": "kube-system"}}, 'metadata.namespace must be "default"'),
        ({"metadata": {"name": "x", "expires": "tomorrow"}}, "metadata.expires must be an RFC 3339 timestamp"),
        ({"metadata": {"name": "x", "expires": "2027-02-30T00:00:00Z"}}, "not a real date or time"),
        ({"metadata": {"name": "x", "expires": 1700000000}}, "metadata.expires must be an RFC 3339"),
        ({"metadata": {"name": "x", "expires": "0001-01-01T00:00:00+01:00"}}, "metadata.expires is out of range"),
        ({"metadata": {"name": "x", "expires": "2027-01-01T24:00:00Z"}}, "not a real date or time"),
        ({"metadata": {"name": "x", "revision": ["1"]}}, "metadata.revision must be the string the registry returned"),
        ({"metadata": {"name": "x", "uid": "1"}}, 'kube_cluster "x": unknown field metadata.uid'),
        ({"version": "v2"}, 'kube_cluster "mycluster": unsupported version "v2" (only v3)'),
        ({"version": None}, "version is required (use v3)"),
        ({"sub_kind": "eks"}, 'sub_kind must be empty (got "eks")'),
        ({"status": {}}, "unknown field status"),
        (
            {"spec": {"kubeconfg": "x"}},
            'kube_cluster "mycluster": unknown field spec.kubeconfg (did you mean kubeconfig?)',
        ),
        ({"spec": []}, "spec must be a mapping (got a list of 0 items)"),
        ({"spec": {"kubeconfig": 5}}, "spec.kubeconfig must be the base64 text of a kubeconfig file (got int 5)"),
        ({"spec": {"kubeconfig": "not base64!"}}, "spec.kubeconfig: invalid base64: unexpected character '!'"),
        ({"spec": {"kubeconfig": "YWJj"}}, 'kube_cluster "mycluster": spec.kubeconfig is not a kubeconfig'),
        ({"spec": {"allow_exec_plugins": "yes"}}, 'spec.allow_exec_plugins must be true or false (got "yes")'),
        ({"spec": {"aws": {"region": "us-east-1"}}}, "spec.aws.name is required when spec.aws is set"),
        ({"spec": {"aws": {"regoin": "x"}}}, "unknown field spec.aws.regoin (did you mean region?)"),
        ({"spec": {"azure": {"tenant_id": "t"}}}, "spec.azure.resource_group is required when spec.azure is set"),
        ({"spec": {"gcp": {"name": "g"}}}, "spec.gcp.location is required"),
    ],
)
def test_invalid_kube_cluster(change: dict[str, Any], message: str) -> None:
    doc = cluster_doc(kubeconfig=b64(KUBECONFIG))
    doc.update(change)
    if doc.get("version") is None:
        doc.pop("version")
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message


def _label(**fields: Any) -> dict[str, Any]:
    return cluster_doc(dynamic_labels={"region": fields})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            _label(command=[], period="1h"),
            'kube_cluster "mycluster": spec.dynamic_labels.region.command must be a non-empty list of strings',
        ),
        (_label(command="python3 get_region.py", period="1h"), "command must be a non-empty list of strings"),
        (_label(command=["", "x"], period="1h"), "command must be a non-empty list of strings"),
        (_label(command=["a", 5], period="1h"), "command must be a non-empty list of strings"),
        (_label(command=["a\0b"], period="1h"), "command must be a non-empty list of strings"),
        (_label(command=["a"] * 300, period="1h"), "command is too long"),
        (
            _label(command=["a"], period="1d"),
            'kube_cluster "mycluster": spec.dynamic_labels.region.period "1d": unknown unit "d" (use 24h)',
        ),
        (_label(command=["a"], period="500ms"), 'spec.dynamic_labels.region.period "500ms" is below the minimum of 1s'),
        (_label(command=["a"], period="0"), 'period "0" is below the minimum of 1s'),
        (_label(command=["a"], period="-1s"), "negative"),
        (
            _label(command=["a"], period=10),
            'spec.dynamic_labels.region.period must be a Go duration string such as "1h" (got int 10)',
        ),
        (_label(command=["a"], period=""), "spec.dynamic_labels.region.period"),
        (_label(command=["a"]), "spec.dynamic_labels.region needs a period"),
        (_label(command=["a"], period="1h", schedule="@hourly"), "has both a period and a schedule"),
        (_label(command=["a"], schedule="61 * * * *"), 'spec.dynamic_labels.region.schedule "61 * * * *"'),
        (_label(command=["a"], schedule="* * *"), "expected 5 fields"),
        (_label(command=["a"], period="1h", timeout="5s"), "unknown field spec.dynamic_labels.region.timeout"),
        (
            cluster_doc(dynamic_labels={"a b": {"command": ["x"], "period": "1h"}}),
            'spec.dynamic_labels: invalid label key "a b"',
        ),
        (cluster_doc(dynamic_labels={"region": "python3"}), "spec.dynamic_labels.region must be a mapping"),
        (
            cluster_doc(dynamic_labels={f"k{i}": {"command": ["x"], "period": "1h"} for i in range(65)}),
            "spec.dynamic_labels has 65 labels; at most 64 are allowed",
        ),
    ],
)
def test_invalid_dynamic_labels(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("kubeconfig_doc", "allow_exec", "message"),
    [
        (
            kubeconfig(user={"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}}),
            False,
            'users[0].user.exec runs a credential plugin ("aws") on the agent host; set spec.allow_exec_plugins: true',
        ),
        (kubeconfig(user={"auth-provider": {"name": "gcp"}}), True, "users[0].user.auth-provider is not supported"),
        (
            kubeconfig(user={"client-key": "/etc/x", "client-certificate-data": "x"}),
            False,
            'spec.kubeconfig users[0].user.client-key reads a local file on the agent host ("/etc/x");'
            " embed it as client-key-data",
        ),
        (kubeconfig(user={"tokenFile": "/var/run/secrets/token"}), False, "users[0].user.tokenFile reads a local file"),
        (
            kubeconfig(
                contexts=[{"name": f"c{i}", "context": {"cluster": "prod"}} for i in range(3)],
                current_context=None,
            ),
            False,
            'kube_cluster "mycluster": spec.kubeconfig has 3 contexts and no current-context:'
            " ambiguous; set current-context",
        ),
    ],
)
def test_unsafe_kubeconfig_is_rejected_at_create_time(
    kubeconfig_doc: dict[str, Any], allow_exec: bool, message: str
) -> None:
    import yaml

    doc = cluster_doc(kubeconfig=b64(yaml.safe_dump(kubeconfig_doc)), allow_exec_plugins=allow_exec)
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)
    assert message in info.value.message


def test_exec_plugin_allowed_with_opt_in() -> None:
    import yaml

    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws", "args": ["eks"]}}
    doc = cluster_doc(kubeconfig=b64(yaml.safe_dump(kubeconfig(user=exec_user))), allow_exec_plugins=True)
    cluster = codec.resource_from_dict(doc)
    assert isinstance(cluster, KubeCluster) and cluster.allow_exec_plugins


# -- the model --------------------------------------------------------------------------------------------


def _cluster(**kwargs: Any) -> KubeCluster:
    labels = kwargs.pop("labels", {"env": "prod", "region": "static-value", ORIGIN_LABEL: "dynamic"})
    return KubeCluster(
        metadata=Metadata(name="c1", labels=labels, revision="7"),
        kubeconfig=KUBECONFIG,
        dynamic_labels={"region": CommandLabel(("get-region",), period="1h")},
        aws=AWSSpec("us-east-1", "1", "eks"),
        **kwargs,
    )


def test_all_labels_dynamic_result_wins_over_static() -> None:
    cluster = _cluster().with_results({"region": "eu-west-1", "unknown": "ignored"})
    assert cluster.all_labels() == {"env": "prod", "region": "eu-west-1", ORIGIN_LABEL: "dynamic"}
    assert cluster.static_labels()["region"] == "static-value"
    assert cluster.origin == "dynamic"
    assert "unknown" not in cluster.dynamic_labels


def test_without_secrets_strips_kubeconfig_and_cloud_specs() -> None:
    stripped = _cluster().without_secrets()
    assert stripped.kubeconfig == b"" and stripped.aws is None
    assert stripped.dynamic_labels == _cluster().dynamic_labels
    wire = codec.resource_to_dict(_cluster(), with_secrets=False)
    assert "kubeconfig" not in wire["spec"]


def test_same_content_ignores_only_the_revision() -> None:
    from dataclasses import replace

    cluster = _cluster()
    assert cluster.same_content(replace(cluster, metadata=replace(cluster.metadata, revision="99")))
    assert not cluster.same_content(replace(cluster, kubeconfig=b"other"))
    assert not cluster.same_content(
        replace(cluster, metadata=replace(cluster.metadata, expires=datetime(2030, 1, 1, tzinfo=UTC)))
    )
    assert not cluster.same_content("c1")


def test_models_copy_mappings_and_normalise() -> None:
    labels = {"env": "prod"}
    cluster = _cluster(labels=labels, gcp=GCPSpec())
    labels["env"] = "changed"
    assert cluster.static_labels() == {"env": "prod"}
    assert cluster.gcp is None  # an all-empty cloud spec means "absent"
    assert Metadata(name="x", expires=datetime(2027, 1, 1)).expires == datetime(2027, 1, 1, tzinfo=UTC)


def test_repr_never_shows_the_kubeconfig() -> None:
    assert "s3cr3t" not in repr(_cluster())
    assert "kubeconfig" not in repr(_cluster())


def test_wire_shape() -> None:
    wire = codec.resource_to_dict(_cluster(allow_exec_plugins=True))
    assert wire == {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {
            "name": "c1",
            "labels": {"env": "prod", "region": "static-value", ORIGIN_LABEL: "dynamic"},
            "revision": "7",
        },
        "spec": {
            "kubeconfig": base64.b64encode(KUBECONFIG).decode(),
            "dynamic_labels": {"region": {"command": ["get-region"], "period": "1h"}},
            "aws": {"region": "us-east-1", "account_id": "1", "name": "eks"},
            "allow_exec_plugins": True,
        },
    }
    assert "\n" not in wire["spec"]["kubeconfig"]
