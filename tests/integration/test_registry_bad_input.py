"""Bad input against a real registry: a clear error, the server still serving, nothing stored.

Files go through kpctl (which validates every document before writing any); raw API bodies go straight to
the server over mutual TLS (it validates again and must survive anything); TLS misuse is refused.
"""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from registry.core.identity import (
    REGISTRY_SERVER_NAME,
    CertAuthority,
    Identity,
    generate_private_key,
    public_key_pem,
)
from registry.core.identity_file import IdentityFile
from registry.host.tls import client_context
from registry.server.serve import RegistryInfo, serve_registry
from registry.store import MemoryStore
from tests.helpers import kpctl, kubeconfig_bytes, kubeconfig_dict, seed_kube_cluster_yaml


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def cluster_doc(name: str = "ok", **spec: object) -> str:
    body = {"kind": "kube_cluster", "version": "v3", "metadata": {"name": name}, "spec": spec}
    return yaml.safe_dump(body)


def kubeconfig_with(**user: object) -> bytes:
    config = kubeconfig_dict()
    config["users"][0]["user"] = user
    return yaml.safe_dump(config).encode()


def several_contexts() -> bytes:
    config = kubeconfig_dict()
    config.pop("current-context")
    config["contexts"].append({"name": "other", "context": {"cluster": "sample-cluster", "user": "sample-user"}})
    return yaml.safe_dump(config).encode()


BAD_FILES: list[tuple[str, str, str]] = [
    ("malformed-yaml", "kind: kube_cluster\nmetadata: [unclosed\n", "yaml"),
    ("wrong-kind", cluster_doc().replace("kube_cluster", "kube_clusterz"), "kind"),
    ("wrong-version", cluster_doc().replace("v3", "v2"), "version"),
    ("name-slash", cluster_doc("a/b"), "metadata.name"),
    ("name-dotdot", cluster_doc(".."), "metadata.name"),
    ("name-empty", cluster_doc(""), "name"),
    ("name-300", cluster_doc("a" * 300), "metadata.name"),
    (
        "label-key",
        yaml.safe_dump({"kind": "kube_cluster", "version": "v3", "metadata": {"name": "x", "labels": {"a b": "c"}}}),
        "a b",
    ),
    (
        "label-value-int",
        yaml.safe_dump({"kind": "kube_cluster", "version": "v3", "metadata": {"name": "x", "labels": {"a": 5}}}),
        "metadata.labels",
    ),
    ("bad-base64", cluster_doc(kubeconfig="!!!not-base64!!!"), "base64"),
    ("not-a-kubeconfig", cluster_doc(kubeconfig=b64(b"hello: [world]\n")), "kubeconfig"),
    (
        "exec-plugin",
        cluster_doc(
            kubeconfig=b64(kubeconfig_with(exec={"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}))
        ),
        "exec",
    ),
    ("reads-local-file", cluster_doc(kubeconfig=b64(kubeconfig_with(**{"client-key": "/etc/shadow"}))), "client-key"),
    ("ambiguous-contexts", cluster_doc(kubeconfig=b64(several_contexts())), "context"),
    ("empty-command", cluster_doc(dynamic_labels={"region": {"period": "1h", "command": []}}), "command"),
    ("period-1d", cluster_doc(dynamic_labels={"region": {"period": "1d", "command": ["date"]}}), "1d"),
    (
        "one-bad-document",
        cluster_doc("first-ok") + "---\n" + cluster_doc("second/bad"),
        "document 2",
    ),
    (
        "alias-bomb",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n",
        "alias",
    ),
]


@pytest.mark.parametrize(("label", "content", "needle"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
async def test_bad_files_are_refused_and_nothing_is_stored(
    registry: RegistryInfo, tmp_path: Path, label: str, content: str, needle: str
) -> None:
    path = tmp_path / f"{label}.yaml"
    path.write_text(content)
    r = await kpctl("create", str(path))
    assert r.code == 1, r.out
    assert r.err.startswith("ERROR: ") and r.err.count("\n") == 1, r.err
    assert needle.lower() in r.err.lower(), r.err
    assert "Traceback" not in r.err
    assert "sample-token-value" not in r.err, "secrets never appear in errors"
    listed = await kpctl("get", "kube_clusters", "--format", "json")
    assert listed.code == 0
    assert yaml.safe_load(listed.out) == []


async def test_ten_megabyte_file_is_refused_before_parsing(registry: RegistryInfo, tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"a: " + b"x" * (10 * 1024 * 1024) + b"\n")
    r = await kpctl("create", str(path))
    assert r.code == 1
    assert "limit" in r.err and "1048576" in r.err


async def test_valid_seed_file_still_works_after_all_that(registry: RegistryInfo, tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(seed_kube_cluster_yaml("fine", kubeconfig_bytes(), labels={"env": "prod"}))
    assert (await kpctl("create", str(path))).code == 0


# -- raw API bodies ---------------------------------------------------------------------------------


def admin_client(registry: RegistryInfo) -> httpx.AsyncClient:
    identity = IdentityFile.parse(registry.admin_identity.read_bytes(), source="admin")
    ctx = client_context(identity.ca_pems, identity.cert_pem, identity.key_pem)
    return httpx.AsyncClient(base_url=f"https://{registry.address}", verify=ctx)


SNI = {"sni_hostname": REGISTRY_SERVER_NAME}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2, 3]", 400),
        (b'{"kind": "kube_cluster"}', 400),
        (b'{"kind": "role", "version": "v5", "metadata": {"name": "r"}}', 400),  # kind does not match URL
        (b"\xff\xfe\x00garbage", 400),
        (b'{"kind": "kube_cluster", "version": "v3", "metadata": {"name": "x", "labels": {"k": {"deep": 1}}}}', 400),
    ],
)
async def test_malformed_api_bodies_get_status_errors(registry: RegistryInfo, body: bytes, status: int) -> None:
    async with admin_client(registry) as client:
        r = await client.post("/v1/resources/kube_cluster", content=body, extensions=SNI)
        assert r.status_code == status
        assert r.json()["kind"] == "Status" and r.json()["message"]
        r = await client.get("/v1/resources/kube_cluster", extensions=SNI)
        assert r.status_code == 200 and r.json()["items"] == []


HOSTILE_BODIES = [
    ("nan", b'{"ttl_seconds": NaN, "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("infinity", b'{"ttl_seconds": Infinity, "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("minus-infinity", b'{"ttl_seconds": -Infinity, "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("overflowing-float", b'{"ttl_seconds": 1e999, "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("huge-float", b'{"ttl_seconds": 1e308, "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("huge-int", b'{"ttl_seconds": 1' + b"0" * 400 + b', "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("negative", b'{"ttl_seconds": -5, "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("bool-ttl", b'{"ttl_seconds": true, "csr_pem": "x", "user": "u", "roles": ["Kube"]}'),
    ("deep-array", b"[" * 100_000 + b"]" * 100_000),
    ("deep-object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("duplicate-keys", b'{"ttl_seconds": 60, "ttl_seconds": 1e308, "roles": ["Kube"], "user": "u", "csr_pem": "x"}'),
    ("lone-surrogate", b'{"user": "\\ud800", "csr_pem": "x", "roles": ["\\udfff"]}'),
    ("invalid-utf8", b'{"user": "\xc3\x28"}'),
    ("empty", b""),
    ("nul", b"\x00"),
]
BODY_ROUTES = [
    "/v1/certs/user",
    "/v1/certs/renew",
    "/v1/tokens",
    "/v1/join",
    "/v1/resources/kube_cluster",
    "/v1/resources/role",
    "/v1/resources/token",
]


@pytest.mark.parametrize("route", BODY_ROUTES)
async def test_hostile_json_bodies_are_400_on_every_route(registry: RegistryInfo, route: str) -> None:
    """One hardened JSON reader for every body: a Status 400 with a message, never a 500 or a traceback,
    nothing stored, and the server still answers."""
    async with admin_client(registry) as client:
        for label, body in HOSTILE_BODIES:
            r = await client.post(route, content=body, extensions=SNI)
            assert r.status_code in (400, 401, 403, 429), (label, r.status_code, r.text[:200])
            status = r.json()
            assert status["kind"] == "Status" and status["message"], label
            assert "Traceback" not in r.text and "Error(" not in status["message"], (label, status["message"])
        assert (await client.get("/v1/resources/kube_cluster", extensions=SNI)).json()["items"] == []
        assert (await client.get("/v1/ping", extensions=SNI)).status_code == 200


@pytest.mark.parametrize("label", ["nan", "infinity", "overflowing-float", "huge-float", "huge-int", "duplicate-keys"])
async def test_hostile_numbers_are_400_with_a_message(registry: RegistryInfo, label: str) -> None:
    body = dict(HOSTILE_BODIES)[label]
    async with admin_client(registry) as client:
        for route in ("/v1/tokens", "/v1/certs/user"):
            r = await client.post(route, content=body, extensions=SNI)
            assert r.status_code == 400, (route, r.status_code, r.text[:200])
        assert [t for t in (await client.get("/v1/resources/token", extensions=SNI)).json()["items"]] == []


async def test_oversized_api_body_is_refused(registry: RegistryInfo) -> None:
    async with admin_client(registry) as client:
        r = await client.post("/v1/resources/kube_cluster", content=b"x" * (3 * 1024 * 1024), extensions=SNI)
        assert r.status_code == 413
        assert (await client.get("/v1/ping", extensions=SNI)).status_code == 200


async def test_unknown_routes_and_kinds(registry: RegistryInfo) -> None:
    async with admin_client(registry) as client:
        assert (await client.get("/v1/nope", extensions=SNI)).status_code == 404
        assert (await client.get("/v1/resources/secrets", extensions=SNI)).status_code == 404
        assert (await client.get("/", extensions=SNI)).status_code == 404


# -- TLS misuse -------------------------------------------------------------------------------------


async def test_no_client_certificate_is_refused_with_a_clear_message(registry: RegistryInfo) -> None:
    identity = IdentityFile.parse(registry.admin_identity.read_bytes(), source="admin")
    ctx = client_context(identity.ca_pems)  # trusts the registry, presents no certificate
    async with httpx.AsyncClient(base_url=f"https://{registry.address}", verify=ctx) as client:
        r = await client.get("/v1/resources/kube_cluster", extensions=SNI)
        assert r.status_code == 401
        assert "client certificate is required" in r.json()["message"]
        # public routes work without one
        assert (await client.get("/v1/ping", extensions=SNI)).json()["ca_pin"] == registry.ca_pin


def foreign_identity(expired: bool = False, same_ca: CertAuthority | None = None) -> tuple[bytes, bytes]:
    now = datetime.now(tz=UTC)
    ca = same_ca or CertAuthority.generate("evil", now=now)
    key = generate_private_key()
    issued_at = now - timedelta(days=2) if expired else now
    cert = ca.issue(
        public_key_pem(key),
        Identity(name="admin", kind="admin", roles=("admin",)),
        ttl=timedelta(hours=1),
        now=issued_at,
    )
    return cert, key


async def _try_with(registry: RegistryInfo, cert: bytes, key: bytes) -> None:
    identity = IdentityFile.parse(registry.admin_identity.read_bytes(), source="admin")
    ctx = client_context(identity.ca_pems, cert, key)
    async with httpx.AsyncClient(base_url=f"https://{registry.address}", verify=ctx) as client:
        await client.get("/v1/resources/kube_cluster", extensions=SNI)


async def test_certificate_from_another_ca_is_refused(registry: RegistryInfo) -> None:
    cert, key = foreign_identity()
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        await _try_with(registry, cert, key)
    assert (await kpctl("get", "kube_clusters")).code == 0


async def test_expired_certificate_is_refused(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registry over a store this test can read, to sign an expired certificate with the real CA.
    store = MemoryStore()
    data_dir = tmp_path / "data"
    registry: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(
            data_dir=data_dir, listen="127.0.0.1:0", store=store, task_status=task_status
        )
    )
    monkeypatch.setenv("KUBEPORT_DATA_DIR", str(data_dir))
    record = await store.get("cert_authority", "cluster")
    ca = CertAuthority.from_pem(record.value["cert_pem"].encode(), record.value["key_pem"].encode())
    cert, key = foreign_identity(expired=True, same_ca=ca)
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        await _try_with(registry, cert, key)
    # kpctl with that expired identity says so in one line
    expired_file = tmp_path / "expired.identity"
    expired_file.write_bytes(
        IdentityFile(cert_pem=cert, key_pem=key, ca_pems=(ca.cert_pem,), registry=registry.address).dump()
    )
    r = await kpctl("get", "kube_clusters", "--identity", str(expired_file))
    assert r.code == 1
    assert r.err.startswith("ERROR: ") and "expired" in r.err
    assert (await kpctl("get", "kube_clusters")).code == 0
