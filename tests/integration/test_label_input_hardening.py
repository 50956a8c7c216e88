"""Issue 7 §3 and §8 against a real registry: caller-supplied label regexes cannot freeze it, patterns RE2
cannot run and labels carrying control or bidi characters are refused with a clear 400 / ERROR line, on
every route that takes them (list filters, resource bodies, kpctl files, the agent's config)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.config import parse_config
from registry.core.errors import BadParameter
from registry.core.identity import REGISTRY_SERVER_NAME
from registry.core.identity_file import IdentityFile
from registry.host.tls import client_context
from registry.server.serve import RegistryInfo
from tests.helpers import cluster_doc, kpctl, kubeconfig_bytes, kubeconfig_dict

SNI = {"sni_hostname": REGISTRY_SERVER_NAME}
ORIGIN = "kubeport.dev/origin"


def admin_client(registry: RegistryInfo) -> httpx.AsyncClient:
    identity = IdentityFile.parse(registry.admin_identity.read_bytes(), source="admin")
    ctx = client_context(identity.ca_pems, identity.cert_pem, identity.key_pem)
    return httpx.AsyncClient(base_url=f"https://{registry.address}", verify=ctx, timeout=30)


def b64_cluster(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return cluster_doc(name, kubeconfig_bytes(), labels)


def role_doc(name: str, selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "role",
        "version": "v7",
        "metadata": {"name": name},
        "spec": {"allow": {"kubernetes_labels": selector}},
    }


def assert_status(r: httpx.Response, code: int, *needles: str) -> str:
    assert r.status_code == code, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["code"] == code, body
    message = str(body["message"])
    assert "Traceback" not in message
    for needle in needles:
        assert needle in message, message
    return message


# -- list filters --------------------------------------------------------------------------------------


async def test_pathological_list_filter_answers_quickly(registry: RegistryInfo) -> None:
    async with admin_client(registry) as client:
        for i in range(20):
            labels = {"k": "a" * 40 + "!", "env": "x" * 60}
            r = await client.post("/v1/resources/kube_cluster", json=b64_cluster(f"c{i}", labels), extensions=SNI)
            assert r.status_code in (200, 201), r.text
        for pattern in ("^(a|a)*$", "^(a+)+$", "^(.?){33}Z$", "^(x+x+)+y$"):
            for key in ("k", "env", ORIGIN):
                started = time.monotonic()
                r = await client.get(
                    "/v1/resources/kube_cluster", params={"labels": f"{key}={pattern}"}, extensions=SNI
                )
                elapsed = time.monotonic() - started
                assert r.status_code == 200, r.text
                assert r.json()["items"] == []
                # minutes (for ^(a|a)*$ on 41 characters: ages) with a backtracking engine
                assert elapsed < 1.0, f"{key}={pattern} took {elapsed:.2f}s"
        r = await client.get("/v1/resources/kube_cluster", params={"labels": "k=^a+!$"}, extensions=SNI)
        assert len(r.json()["items"]) == 20  # regex filters still select


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("^(?=a).*$", "lookaround"),
        ("^(?<!a)b$", "lookaround"),
        ("^(a)\\1$", "backreference"),
        ("^a{1001}$", "1000"),
        ("^a{1000}{1000}$", "repetition"),
        ("^\\pL{1000}$", "too large"),
        ("^($", "invalid regular expression"),
        ("^" + "a" * 2000 + "$", "too long"),
        ("*" * 5000, "too long"),
        ("pr\x1bod", "U+001B"),
        ("pr\nod", "U+000A"),
        ("^pr\u202eod$", "U+202E"),
        ("\x00", "U+0000"),
    ],
)
async def test_bad_list_filters_are_400_with_the_reason(registry: RegistryInfo, pattern: str, needle: str) -> None:
    async with admin_client(registry) as client:
        for kind in ("kube_cluster", "kube_server"):
            r = await client.get(f"/v1/resources/{kind}", params={"labels": f"env={pattern}"}, extensions=SNI)
            assert_status(r, 400, needle)
        assert (await client.get("/v1/ping", extensions=SNI)).status_code == 200


# -- resource bodies --------------------------------------------------------------------------------------

HOSTILE_VALUES = [
    "\x1b[31mred\x1b[0m",
    "prod\nmycluster          env=fake",  # a forged table row
    "a\rb",
    "tab\there",
    "nul\x00",
    "del\x7f",
    "c1\x9b2J",
    "\u202eevil",
    "x\u2066y\u2069",
    "rlm\u200f",
    "line\u2028sep",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
async def test_api_refuses_hostile_label_values(registry: RegistryInfo, value: str) -> None:
    async with admin_client(registry) as client:
        r = await client.post("/v1/resources/kube_cluster", json=b64_cluster("hostile", {"env": value}), extensions=SNI)
        assert_status(r, 400, "metadata.labels.env", "U+")
        good = b64_cluster("hostile", {"env": "ok"})
        assert (await client.post("/v1/resources/kube_cluster", json=good, extensions=SNI)).status_code in (200, 201)
        stored = (await client.get("/v1/resources/kube_cluster/hostile", extensions=SNI)).json()
        # an update is validated the same way
        stored["metadata"]["labels"]["env"] = value
        r = await client.put("/v1/resources/kube_cluster/hostile", json=stored, extensions=SNI)
        assert_status(r, 400, "U+")
        after = (await client.get("/v1/resources/kube_cluster/hostile", extensions=SNI)).json()
        assert after["metadata"]["labels"]["env"] == "ok"
        # and a raw JSON body with the escape spelled out
        raw = json.dumps(b64_cluster("hostile2", {"env": value}), ensure_ascii=True).encode()
        r = await client.post("/v1/resources/kube_cluster", content=raw, extensions=SNI)
        assert_status(r, 400, "U+")


@pytest.mark.parametrize(
    ("selector", "needle"),
    [
        ({"env": "^(?=prod).*$"}, "lookaround"),
        ({"env": ["prod", "^(a)\\1$"]}, "backreference"),
        ({"env": "^" + "a" * 1100 + "$"}, "too long"),
        ({"env": "pr\x1bod"}, "U+001B"),
        ({"env": "\u202e*"}, "U+202E"),
    ],
)
async def test_api_refuses_role_selectors_re2_cannot_run(
    registry: RegistryInfo, selector: dict[str, Any], needle: str
) -> None:
    async with admin_client(registry) as client:
        r = await client.post("/v1/resources/role", json=role_doc("bad-role", selector), extensions=SNI)
        assert_status(r, 400, "kubernetes_labels", needle)
        r = await client.get("/v1/resources/role", extensions=SNI)
        assert "bad-role" not in [i["metadata"]["name"] for i in r.json()["items"]]


# -- kpctl files ----------------------------------------------------------------------------------------


def _cluster_yaml(labels: dict[str, str]) -> str:
    return yaml.safe_dump(cluster_doc("from-file", yaml.safe_dump(kubeconfig_dict()).encode(), labels))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (yaml.safe_dump(role_doc("r", {"env": "^(?!prod$).*$"})), "lookaround"),
        (yaml.safe_dump(role_doc("r", {"env": "^(a)\\1$"})), "backreference"),
        (yaml.safe_dump(role_doc("r", {"env": "^a{2000}$"})), "1000"),
        (yaml.safe_dump(role_doc("r", {"env": "^" + "x" * 1500 + "$"})), "too long"),
        (_cluster_yaml({"env": "\x1b]0;pwned\x07"}), "U+001B"),
        (_cluster_yaml({"env": "a\nb"}), "U+000A"),
        (_cluster_yaml({"env": "\u202eevil"}), "U+202E"),
        # YAML's own escapes reach the same check
        ('kind: kube_cluster\nversion: v3\nmetadata:\n  name: y\n  labels:\n    env: "\\e[2J"\n', "U+001B"),
        ('kind: kube_cluster\nversion: v3\nmetadata:\n  name: y\n  labels:\n    env: "\\u2066x"\n', "U+2066"),
    ],
)
async def test_kpctl_create_refuses_with_one_error_line(
    registry: RegistryInfo, tmp_path: Path, content: str, needle: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    r = await kpctl("create", str(path))
    assert r.code == 1, r.out
    assert r.err.startswith("ERROR: ") and r.err.count("\n") == 1, r.err
    assert needle in r.err, r.err
    assert r.err.isprintable() or r.err[:-1].isprintable(), "the error line carries no raw control character"
    for kind in ("kube_clusters", "roles"):
        listed = await kpctl("get", kind, "--format", "json")
        names = [i["metadata"]["name"] for i in json.loads(listed.out)]
        assert "r" not in names and "from-file" not in names and "y" not in names


# -- the agent's config ------------------------------------------------------------------------------------

AGENT = "kubeport:\n  registry: registry.example.com:3025\n  token: abcd123-insecure-do-not-use-this\n"


@pytest.mark.parametrize(
    ("service", "needle"),
    [
        ('  resources:\n  - labels: {env: "^(?=prod).*$"}\n', "lookaround"),
        ('  resources:\n  - labels: {env: ["x", "^(a)\\\\1$"]}\n', "backreference"),
        ('  resources:\n  - labels: {env: "^a{1000}{1000}$"}\n', "repetition"),
        ("  resources:\n  - labels: {env: ^" + "a" * 1100 + "$}\n", "too long"),
        ('  resources:\n  - labels: {env: "\\e[31m*"}\n', "U+001B"),
        ('  resources:\n  - labels: {"*": "*"}\n  labels: {site: "ber\\u202elin"}\n', "U+202E"),
        ('  resources:\n  - labels: {"*": "*"}\n  labels: {site: "a\\nb"}\n', "U+000A"),
    ],
)
def test_agent_config_refuses(service: str, needle: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_config(AGENT + "kubernetes_service:\n" + service, source="agent.yaml", env={})
    message = caught.value.message
    assert message.startswith("agent.yaml"), message
    assert needle in message, message
    assert "\n" not in message and "\x1b" not in message
