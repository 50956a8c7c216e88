"""Seed 003's walkthrough with kpctl in place of tctl, against a real registry over mutual TLS:
create, get, get -> edit -> create -f, rm, plus tokens, status and the audit log."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from registry.client import RegistryClient
from registry.core.identity import generate_private_key, identity_from_cert, make_csr
from registry.core.identity_file import IdentityFile
from registry.server.serve import RegistryInfo
from tests.helpers import kpctl, kubeconfig_bytes, seed_kube_cluster_yaml


async def test_seed_walkthrough(registry: RegistryInfo, tmp_path: Path) -> None:
    kubeconfig = kubeconfig_bytes(token="walkthrough-token")
    path = tmp_path / "kube_cluster.yaml"
    path.write_text(seed_kube_cluster_yaml("mycluster", kubeconfig))

    r = await kpctl("create", str(path))
    assert (r.code, r.out, r.err) == (0, 'kubernetes cluster "mycluster" has been created\n', "")

    r = await kpctl("create", str(path))
    assert r.code == 1
    assert r.err == 'ERROR: kubernetes cluster "mycluster" already exists: use create -f to replace it\n'

    # get: YAML documents, origin stamped by the server, the kubeconfig hidden without --with-secrets
    r = await kpctl("get", "kube_clusters")
    assert r.code == 0
    docs = [d for d in yaml.safe_load_all(r.out) if d]
    assert [d["metadata"]["name"] for d in docs] == ["mycluster"]
    assert docs[0]["metadata"]["labels"] == {"kubeport.dev/origin": "dynamic"}
    assert "kubeconfig" not in (docs[0].get("spec") or {})
    assert "walkthrough-token" not in r.out

    # get -> edit (add env: test) -> create -f: the stored kubeconfig is kept
    r = await kpctl("get", "kube_clusters/mycluster")
    edited = yaml.safe_load(r.out)
    edited["metadata"]["labels"]["env"] = "test"
    path.write_text(yaml.safe_dump(edited))
    r = await kpctl("create", "-f", str(path))
    assert (r.code, r.out) == (0, 'kubernetes cluster "mycluster" has been updated\n')

    r = await kpctl("get", "kube_clusters", "--format", "text")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split() == ["Name", "Labels"]
    assert lines[2].split() == ["mycluster", "env=test,kubeport.dev/origin=dynamic"]

    r = await kpctl("get", "kube_clusters/mycluster", "--with-secrets", "--format", "json")
    stored = yaml.safe_load(r.out)[0]
    assert base64.b64decode(stored["spec"]["kubeconfig"]) == kubeconfig

    # an edit made from a stale copy is refused instead of silently overwriting the newer one
    path.write_text(yaml.safe_dump(edited))
    r = await kpctl("create", "-f", str(path))
    assert r.code == 1
    assert "modified concurrently" in r.err or "revision" in r.err

    r = await kpctl("rm", "kube_clusters/mycluster")
    assert (r.code, r.out) == (0, 'kubernetes cluster "mycluster" has been deleted\n')
    r = await kpctl("rm", "kube_clusters/mycluster")
    assert (r.code, r.err) == (1, 'ERROR: kubernetes cluster "mycluster" not found\n')
    r = await kpctl("get", "kube_clusters/mycluster")
    assert (r.code, r.err) == (1, 'ERROR: kubernetes cluster "mycluster" not found\n')

    r = await kpctl("get", "events", "--format", "json")
    events = [e["event"] for e in yaml.safe_load(r.out)]
    assert events == ["kube.create", "kube.update", "kube.delete"]


async def test_status_shows_cluster_version_and_pin(registry: RegistryInfo) -> None:
    r = await kpctl("status")
    assert r.code == 0
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in r.out.splitlines())
    assert fields["Cluster"] == "test-cluster"
    assert fields["CA pin"] == registry.ca_pin
    assert registry.ca_pin.startswith("sha256:")


async def test_tokens_add_ls_rm(registry: RegistryInfo) -> None:
    r = await kpctl("tokens", "add", "--type=kube", "--ttl=1h", "--format=text")
    assert r.code == 0
    token = r.out.strip()
    assert len(token) == 32 and all(c in "0123456789abcdef" for c in token)

    r = await kpctl("tokens", "ls")
    assert r.code == 0
    assert token not in r.out  # masked without --with-secrets
    assert token[:4] in r.out and "Kube" in r.out

    r = await kpctl("tokens", "ls", "--with-secrets")
    assert token in r.out

    r = await kpctl("tokens", "add", "--type=kube")
    assert "kubeport configure" in r.out and registry.ca_pin in r.out

    r = await kpctl("tokens", "rm", token)
    assert r.code == 0 and "has been deleted" in r.out
    assert token not in r.out and token[8:] not in r.out  # the value is a secret: rm never echoes it
    r = await kpctl("tokens", "rm", token)
    assert r.code == 1

    events = yaml.safe_load((await kpctl("get", "events", "--format", "json")).out)
    assert all(token not in str(e) for e in events), "token values never reach the audit log"


async def test_kube_cluster_created_by_the_seed_role(registry: RegistryInfo, tmp_path: Path) -> None:
    """A user holding seed 003's kube-manager role manages kube_clusters; a user without it may not."""
    role = tmp_path / "kube-manager.yaml"
    role.write_text(
        "kind: role\nmetadata:\n  name: kube-manager\nspec:\n  allow:\n    rules:\n    - resources:\n"
        "      - kube_cluster\n      verbs:\n      - list\n      - create\n      - read\n      - update\n"
        "      - delete\nversion: v5\n"
    )
    users = tmp_path / "users.yaml"
    users.write_text(
        "kind: user\nversion: v2\nmetadata:\n  name: alice\nspec:\n  roles: [kube-manager]\n---\n"
        "kind: user\nversion: v2\nmetadata:\n  name: bob\nspec:\n  roles: []\n"
    )
    assert (await kpctl("create", "-f", str(role))).code == 0
    assert (await kpctl("create", str(users))).out.splitlines() == [
        'user "alice" has been created',
        'user "bob" has been created',
    ]
    alice, bob = tmp_path / "alice.identity", tmp_path / "bob.identity"
    assert (await kpctl("auth", "sign", "--user", "alice", "--out", str(alice))).code == 0
    assert (await kpctl("auth", "sign", "--user", "bob", "--out", str(bob), "--ttl", "1h")).code == 0
    assert alice.stat().st_mode & 0o777 == 0o600

    cluster = tmp_path / "c.yaml"
    cluster.write_text(seed_kube_cluster_yaml("alices", kubeconfig_bytes()))
    r = await kpctl("create", str(cluster), "--identity", str(alice))
    assert (r.code, r.out) == (0, 'kubernetes cluster "alices" has been created\n')

    r = await kpctl("get", "kube_clusters", "--identity", str(bob))
    assert r.code == 1
    assert r.err.startswith("ERROR: access denied") and "bob" in r.err
    r = await kpctl("tokens", "add", "--type=kube", "--identity", str(alice))
    assert r.code == 1 and "access denied" in r.err

    # both denials are in the audit log, with who and what
    events = yaml.safe_load((await kpctl("get", "events", "--format", "json")).out)
    denied = [(e["user"], e["path"]) for e in events if e["event"] == "access.denied"]
    assert denied == [("bob", "/v1/resources/kube_cluster"), ("alice", "/v1/tokens")]
    assert all(not e["success"] for e in events if e["event"] == "access.denied")


def _jwt(exp: int) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'exp': exp, 'sub': 'system:serviceaccount:teleport:teleport-sa'})}.sig"


async def test_create_warns_about_risky_but_valid_kubeconfigs(registry: RegistryInfo, tmp_path: Path) -> None:
    """Accepted, but the admin is told: no TLS verification, and a bound token that will expire."""
    config = yaml.safe_load(kubeconfig_bytes(token=_jwt(int(time.time()) + 3600)))
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = True
    path = tmp_path / "risky.yaml"
    path.write_text(seed_kube_cluster_yaml("risky", yaml.safe_dump(config).encode()))
    r = await kpctl("create", str(path))
    assert r.code == 0
    assert r.out == 'kubernetes cluster "risky" has been created\n'
    warnings = r.err.splitlines()
    assert any("insecure-skip-tls-verify" in w for w in warnings), r.err
    assert any("expires at" in w for w in warnings), r.err
    assert all(w.startswith('warning: kubernetes cluster "risky": ') for w in warnings)


async def test_a_user_certificate_follows_its_user_over_the_api(registry: RegistryInfo, tmp_path: Path) -> None:
    """Issue 7 section 4, end to end: max_session_ttl caps signing, renewal never extends, and deleting
    the user refuses its certificate on the next request with a 401 and one clear line."""
    role = tmp_path / "viewer.yaml"
    role.write_text(
        "kind: role\nversion: v7\nmetadata:\n  name: viewer\nspec:\n  options:\n    max_session_ttl: 2h\n"
        "  allow:\n    rules:\n    - resources: [kube_cluster]\n      verbs: [list, read]\n"
    )
    user = tmp_path / "carol.yaml"
    user.write_text("kind: user\nversion: v2\nmetadata:\n  name: carol\nspec:\n  roles: [viewer]\n")
    assert (await kpctl("create", str(role))).code == 0
    assert (await kpctl("create", str(user))).code == 0
    carol = tmp_path / "carol.identity"
    r = await kpctl("auth", "sign", "--user", "carol", "--out", str(carol), "--ttl", "24h")
    assert r.code == 0 and "valid until" in r.out
    identity = IdentityFile.parse(carol.read_bytes(), source=str(carol))
    expires = identity.identity().expires
    assert expires is not None and expires <= datetime.now(tz=UTC) + timedelta(hours=2)

    async with RegistryClient.from_identity(identity) as client:
        renewed = await client.renew(make_csr(generate_private_key(), "carol"))
    assert identity_from_cert(renewed["cert_pem"].encode()).expires == expires

    assert (await kpctl("get", "kube_clusters", "--identity", str(carol))).code == 0
    assert (await kpctl("rm", "user/carol")).code == 0
    r = await kpctl("get", "kube_clusters", "--identity", str(carol))
    assert r.code == 1 and r.err.startswith("ERROR: ") and len(r.err.strip().splitlines()) == 1
    assert 'user "carol" no longer exists' in r.err
