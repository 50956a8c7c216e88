"""get_kubeconfig's decisions without a cluster: rule comparison, the kubeconfig it renders, label and name
parsing, kubectl's kubeconfig merge, and how transport failures read."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions as u3
import yaml

from registry.core.errors import BadParameter, ConnectionProblem, Timeout
from registry.mint.kube import network_error
from registry.mint.kubeconfig_out import render_kubeconfig
from registry.mint.names import parse_labels
from registry.mint.rbac import ROLE_RULES, analyse_rules
from registry.mint.source import choose_context, merge_kubeconfigs

IMPERSONATE = {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]}
GET_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
REVIEWS = {
    "apiGroups": ["authorization.k8s.io"],
    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    "verbs": ["create"],
}


@pytest.mark.parametrize(
    ("rules", "missing", "extra"),
    [
        pytest.param([IMPERSONATE, GET_PODS, REVIEWS], 0, 0, id="the-original"),
        pytest.param([REVIEWS, GET_PODS, IMPERSONATE], 0, 0, id="reordered"),
        pytest.param(
            [
                {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]},
                {"apiGroups": [""], "resources": ["groups", "serviceaccounts"], "verbs": ["impersonate"]},
                GET_PODS,
                REVIEWS,
            ],
            0,
            0,
            id="split-differently",
        ),
        pytest.param([IMPERSONATE, GET_PODS], 2, 0, id="no-reviews"),
        pytest.param([], 6, 0, id="empty"),
        pytest.param("not a list", 6, 0, id="garbage"),
        pytest.param([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], 0, 1, id="cluster-admin-like"),
        pytest.param(
            [IMPERSONATE, {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}, REVIEWS],
            0,
            1,
            id="pods-list-added",
        ),
        pytest.param(
            [IMPERSONATE, {**GET_PODS, "resourceNames": ["web-1"]}, REVIEWS], 1, 0, id="pods-narrowed-to-a-name"
        ),
        pytest.param(
            [IMPERSONATE, GET_PODS, REVIEWS, {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}], 0, 1, id="urls"
        ),
        pytest.param([IMPERSONATE, GET_PODS, REVIEWS, "junk", {"verbs": "get"}], 0, 0, id="junk-rules-ignored"),
    ],
)
def test_rules_are_compared_by_meaning(rules: Any, missing: int, extra: int) -> None:
    report = analyse_rules(rules)
    assert (len(report.missing), len(report.extra_rules)) == (missing, extra)
    assert report.same == (missing == 0 and extra == 0)


def test_role_rules_are_the_originals() -> None:
    assert [dict(r) for r in ROLE_RULES] == [IMPERSONATE, GET_PODS, REVIEWS]


def test_rendered_kubeconfig_has_the_originals_layout() -> None:
    text = render_kubeconfig(
        context="arn:aws:eks:eu-west-1:1:cluster/prod",
        cluster="prod",
        server="https://10.0.0.1:6443",
        ca_data_b64="Q0E=",
        user="prod-teleport-sa",
        token="eyJhbGciOi.J9.sig",
    ).decode()
    assert text == (
        "apiVersion: v1\n"
        "clusters:\n"
        "- cluster:\n"
        "    certificate-authority-data: Q0E=\n"
        "    server: https://10.0.0.1:6443\n"
        "  name: prod\n"
        "contexts:\n"
        "- context:\n"
        "    cluster: prod\n"
        "    user: prod-teleport-sa\n"
        "  name: arn:aws:eks:eu-west-1:1:cluster/prod\n"
        "current-context: arn:aws:eks:eu-west-1:1:cluster/prod\n"
        "kind: Config\n"
        "preferences: {}\n"
        "users:\n"
        "- name: prod-teleport-sa\n"
        "  user:\n"
        "    token: eyJhbGciOi.J9.sig\n"
    )


@pytest.mark.parametrize("name", ["a: b", "- x", "'quoted'", "#hash", "yes", "multi\nline", "{flow}"])
def test_hostile_names_survive_the_yaml_round_trip(name: str) -> None:
    text = render_kubeconfig(context=name, cluster=name, server="https://h", ca_data_b64="", user=name, token="t")
    doc = yaml.safe_load(text)
    assert doc["current-context"] == name
    assert doc["clusters"][0]["name"] == name


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {}),
        (["env=prod"], {"env": "prod"}),
        (["env=prod,team=a", "region=eu"], {"env": "prod", "team": "a", "region": "eu"}),
        (["env=prod,", " team = a "], {"env": "prod", "team": "a"}),
        (["empty="], {"empty": ""}),
        (["k=a=b"], {"k": "a=b"}),
        (["env=dev", "env=prod"], {"env": "prod"}),
    ],
)
def test_labels_flag(values: list[str], expected: dict[str, str]) -> None:
    assert parse_labels(values) == expected


@pytest.mark.parametrize("value", ["env", "=prod", "env=prod,oops", " = "])
def test_labels_flag_rejects_items_without_a_key(value: str) -> None:
    with pytest.raises(BadParameter, match="expected key=value"):
        parse_labels([value])


def _config(context: str, cluster: str, server: str, current: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "clusters": [{"name": cluster, "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": "u"}}],
    }
    if current is not None:
        doc["current-context"] = current
    return doc


def test_merge_is_first_wins_like_kubectl() -> None:
    first = _config("a", "c", "https://first", current="a")
    second = _config("a", "c", "https://second", current="b") | {
        "contexts": [{"name": "a", "context": {}}, {"name": "b", "context": {"cluster": "c", "user": "u"}}]
    }
    merged = merge_kubeconfigs([first, second])
    source = choose_context(merged, None, "KUBECONFIG", [Path("x")])
    assert (source.context, source.server) == ("a", "https://first")
    assert choose_context(merged, "b", "KUBECONFIG", [Path("x")]).server == "https://first"


@pytest.mark.parametrize(
    ("doc", "context", "expected"),
    [
        ({}, None, "no current context in cfg: pass --context NAME (it has no contexts)"),
        (_config("a", "c", "https://h"), "zz", "context 'zz' not found in cfg (available: a)"),
        (
            {"contexts": [{"name": "a", "context": {"cluster": "gone"}}], "current-context": "a"},
            None,
            "context 'a' names cluster 'gone', which is not defined in cfg",
        ),
        (_config("a", "c", "", current="a"), None, "cluster 'c' in cfg has no server URL"),
        ({"contexts": "junk", "clusters": [1, None, {"name": 3}], "current-context": 7}, None, "no current context"),
    ],
)
def test_context_choice_errors(doc: dict[str, Any], context: str | None, expected: str) -> None:
    with pytest.raises(BadParameter) as caught:
        choose_context(merge_kubeconfigs([doc]), context, "cfg", [Path("cfg")])
    assert caught.value.message.startswith(expected)


def test_tls_server_name_is_kept() -> None:
    doc = _config("a", "c", "https://10.0.0.1", current="a")
    doc["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes.default"
    source = choose_context(merge_kubeconfigs([doc]), None, "cfg", [Path("cfg")])
    assert source.tls_server_name == "kubernetes.default"
    rendered = yaml.safe_load(
        render_kubeconfig(
            context="a", cluster="c", server=source.server, ca_data_b64="", user="u", token="t", tls_server_name="k"
        )
    )
    assert rendered["clusters"][0]["cluster"]["tls-server-name"] == "k"


def _refused() -> BaseException:
    inner = ConnectionRefusedError(111, "Connection refused")
    exc = u3.NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    exc.__cause__ = inner
    return exc


def _bad_cert() -> BaseException:
    inner = ssl.SSLCertVerificationError(1, "certificate verify failed")
    inner.verify_message = "self-signed certificate in certificate chain"
    return u3.SSLError(inner)


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        (_refused(), ConnectionProblem, "Connection refused"),
        (u3.ReadTimeoutError(None, "/api", "Read timed out."), Timeout, "no answer within 2s"),
        (u3.ConnectTimeoutError("timed out"), Timeout, "no answer within 2s"),
        (_bad_cert(), ConnectionProblem, "TLS certificate verification failed (self-signed certificate in certificate"),
        (
            Exception("SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch (x)"),
            ConnectionProblem,
            "TLS certificate verification failed (IP address mismatch)",
        ),
        (u3.ProtocolError("Connection aborted.\nRemoteDisconnected"), ConnectionProblem, "Connection aborted."),
    ],
)
def test_network_errors_read_as_one_line(exc: BaseException, cls: type[Exception], reason: str) -> None:
    err = network_error("https://k:6443", exc, 2.0)
    assert isinstance(err, cls)
    assert err.message.startswith(f"cannot reach the Kubernetes API at https://k:6443: {reason}")
    assert "\n" not in err.message
