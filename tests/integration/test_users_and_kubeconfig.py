"""Issue 9 §1 against a real registry over mutual TLS: ``kpctl users add/update/ls/rm`` (seeds 000 and 003) and
``kpctl auth sign --format=kubernetes``, whose kubeconfig the ``kubernetes`` client's loader and real, versioned
kubectl binaries read. One test runs the seed walkthrough lines as real ``kpctl`` processes."""

from __future__ import annotations

import base64
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from registry.client import RegistryClient
from registry.core import codec
from registry.core.errors import KubeportError
from registry.core.identity import identity_from_cert, load_certificate, load_private_key
from registry.core.identity_file import IdentityFile
from registry.core.kube_route import cluster_prefix, split_prefix
from registry.core.resources import CommandLabel, KubeCluster, KubeServer, Metadata
from registry.server.serve import RegistryInfo
from tests.fakes.kubectl import SKIP_REASON, find_kubectl, run_kubectl
from tests.helpers import KUBE_ACCESS, cluster_doc, kpctl, kubeconfig_bytes

REPO = Path(__file__).resolve().parents[2]

# seed 003's kube-access role (re-indented), and a role that lets its holder manage users only
KUBE_MANAGER = """\
kind: role
metadata:
  name: kube-manager
spec:
  allow:
    rules:
    - resources: [kube_cluster]
      verbs: [list, create, read, update, delete]
version: v5
"""
USER_ADMIN = """\
kind: role
version: v7
metadata:
  name: user-admin
spec:
  allow:
    rules:
    - resources: [user, role]
      verbs: [list, read, create, update]
"""
USER_READER = """\
kind: role
version: v7
metadata:
  name: user-reader
spec:
  allow:
    rules:
    - resources: [user, role]
      verbs: [list, read]
"""
# selects env=prod or the dynamic label tier=web, never env=secret; sessions at most 2h
PROD_VIEWER = """\
kind: role
version: v8
metadata:
  name: prod-viewer
spec:
  options:
    max_session_ttl: 2h
  allow:
    kubernetes_labels:
      env: prod
    kubernetes_groups: [viewers]
  deny:
    kubernetes_labels:
      env: secret
---
kind: role
version: v8
metadata:
  name: web-viewer
spec:
  allow:
    kubernetes_labels:
      tier: web
    kubernetes_groups: [viewers]
"""


async def create(tmp_path: Path, text: str, name: str = "r.yaml") -> None:
    path = tmp_path / name
    path.write_text(text)
    r = await kpctl("create", "-f", str(path))
    assert r.code == 0, r.err


def admin(registry: RegistryInfo) -> RegistryClient:
    return RegistryClient.from_identity_file(registry.admin_identity)


async def serve(
    registry: RegistryInfo, name: str, labels: dict[str, str], *, dynamic: dict[str, str] | None = None
) -> None:
    """A kube_cluster and one agent heartbeat for it (written with the admin identity), with dynamic label
    results only the heartbeat carries."""
    async with admin(registry) as client:
        await client.create(cluster_doc(name, kubeconfig_bytes(), labels))
        cluster = KubeCluster(
            metadata=Metadata(name=name, labels=labels),
            dynamic_labels={k: CommandLabel(("true",), period="1m", result=v) for k, v in (dynamic or {}).items()},
        )
        server = KubeServer(
            metadata=Metadata(name=name, expires=datetime.now(tz=UTC) + timedelta(minutes=5)),
            host_id="host-1",
            hostname="agent-1:3027",
            version="0.1.0",
            cluster=cluster,
        )
        await client.heartbeat(codec.resource_to_dict(server))


def users_by_name(text: str) -> dict[str, dict[str, Any]]:
    return {u["metadata"]["name"]: u for u in json.loads(text)}


# -- users ---------------------------------------------------------------------------------------------------


async def test_users_add_update_ls_rm(registry: RegistryInfo, tmp_path: Path) -> None:
    await create(tmp_path, KUBE_ACCESS)

    r = await kpctl("users", "add", "alice", "--roles=kube-access")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == 'User "alice" has been created'
    assert "kpctl auth sign --user=alice --format=kubernetes" in r.out

    # seed 000: traits from --k8s-groups / --k8s-users, lists split on commas and de-duplicated
    r = await kpctl("users", "add", "joe", "--roles=kube-access", "--k8s-groups=system:masters, devs,devs")
    assert r.code == 0, r.err
    r = await kpctl("users", "add", "jenkins", "--k8s-users=jenkins")  # no roles: allowed, with a warning
    assert r.code == 0 and "has no roles" in r.err

    r = await kpctl("users", "add", "alice", "--roles=kube-access")
    assert (r.code, r.err) == (
        1,
        'ERROR: user "alice" already exists: change it with kpctl users update, or remove it first\n',
    )

    r = await kpctl("users", "add", "bob", "--roles=kube-access,kube-acess,nope")
    assert r.code == 1
    assert r.err.startswith('ERROR: roles "kube-acess", "nope" not found: create it first with kpctl create')
    assert "existing roles: kube-access" in r.err

    r = await kpctl("users", "ls", "--format", "json")
    users = users_by_name(r.out)
    assert set(users) == {"alice", "joe", "jenkins"}
    assert users["joe"]["spec"]["traits"] == {"kubernetes_groups": ["system:masters", "devs"]}
    assert users["jenkins"]["spec"] == {"traits": {"kubernetes_users": ["jenkins"]}}

    r = await kpctl("users", "ls")
    lines = r.out.splitlines()
    assert lines[0].split() == ["User", "Roles", "Kubernetes", "Groups", "Kubernetes", "Users"]
    assert lines[2].split() == ["alice", "kube-access"]
    assert lines[3].split() == ["jenkins", "jenkins"]
    assert lines[4].split() == ["joe", "kube-access", "system:masters,devs"]
    r = await kpctl("users", "ls", "--format", "yaml")
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(r.out) if d] == ["alice", "jenkins", "joe"]

    # seed 003: --set-roles needs the roles to exist; the other fields are kept
    r = await kpctl("users", "update", "joe", "--set-roles", "kube-access,kube-manager")
    assert (r.code, r.err) == (
        1,
        'ERROR: role "kube-manager" not found: create it first with kpctl create (existing roles: kube-access)\n',
    )
    await create(tmp_path, KUBE_MANAGER)
    r = await kpctl("users", "update", "joe", "--set-roles", "kube-access,kube-manager", "--set-k8s-users=joe-k8s")
    assert r.code == 0, r.err
    assert (
        r.out
        == 'User "joe" has been updated:\n\tNew roles: kube-access,kube-manager\n\tNew kubernetes_users: joe-k8s\n'
    )
    joe = users_by_name((await kpctl("users", "ls", "--format", "json")).out)["joe"]
    assert joe["spec"]["roles"] == ["kube-access", "kube-manager"]
    assert joe["spec"]["traits"] == {"kubernetes_groups": ["system:masters", "devs"], "kubernetes_users": ["joe-k8s"]}
    r = await kpctl("users", "update", "joe", "--set-k8s-groups=")
    assert r.code == 0 and "\tNew kubernetes_groups: (none)\n" in r.out
    joe = users_by_name((await kpctl("users", "ls", "--format", "json")).out)["joe"]
    assert joe["spec"]["traits"] == {"kubernetes_users": ["joe-k8s"]}

    r = await kpctl("users", "update", "joe")
    assert r.code == 1 and "nothing to update" in r.err
    r = await kpctl("users", "update", "nobody", "--set-roles=kube-access")
    assert (r.code, r.err) == (1, 'ERROR: user "nobody" not found (create it with kpctl users add)\n')

    r = await kpctl("users", "rm", "alice")
    assert (r.code, r.out) == (0, 'User "alice" has been deleted\n')
    r = await kpctl("users", "rm", "alice")
    assert (r.code, r.err) == (1, 'ERROR: user "alice" not found\n')

    events = json.loads((await kpctl("get", "events", "--format", "json")).out)
    assert [e["event"] for e in events if e.get("kind") == "user"] == [
        "user.create",
        "user.create",
        "user.create",
        "user.update",
        "user.update",
        "user.delete",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bob smith"], 'user "bob smith": metadata.name must match'),
        (["a/b"], 'user "a/b": metadata.name must match'),
        (["../etc"], 'user "../etc": metadata.name must match'),
        (["evil\x1b[2J"], 'user "evil\\u001b[2J": metadata.name must match'),
        (["new\nline"], 'user "new\\nline": metadata.name must match'),
        (["x" * 300], "metadata.name must be at most 253 characters"),
        (["."], "metadata.name"),
        (["bob", "--k8s-groups=ok,bad\x07"], '--k8s-groups: "bad\\u0007"'),
        (["bob", "--k8s-users=a\u202eb"], "--k8s-users"),
        (["bob", "--roles=a/b"], "spec.roles[0] must match"),
        (["bob", "--roles=" + ",".join(f"r{i}" for i in range(300))], "--roles has 300 items"),
    ],
)
async def test_users_add_refuses_hostile_input(registry: RegistryInfo, argv: list[str], message: str) -> None:
    r = await kpctl("users", "add", *argv)
    assert r.code == 1, r.out
    assert r.err.startswith("ERROR: ") and len(r.err.splitlines()) == 1, r.err
    assert message in r.err
    assert not any(ch in r.err[:-1] for ch in "\x1b\x07\u202e")
    assert (await kpctl("users", "ls", "--format", "json")).out.strip() == "[]"


async def test_only_callers_allowed_to_write_users_may_add_them(registry: RegistryInfo, tmp_path: Path) -> None:
    await create(tmp_path, USER_ADMIN + "---\n" + USER_READER + "---\n" + KUBE_ACCESS)
    for name, role in (("ursula", "user-admin"), ("rita", "user-reader")):
        assert (await kpctl("users", "add", name, f"--roles={role}")).code == 0
        assert (await kpctl("auth", "sign", "--user", name, "--out", str(tmp_path / name))).code == 0
    r = await kpctl("users", "add", "carl", "--roles=kube-access", "--identity", str(tmp_path / "rita"))
    assert r.code == 1 and r.err.startswith('ERROR: access denied: user "rita" may not create user'), r.err
    r = await kpctl("users", "add", "carl", "--roles=kube-access", "--identity", str(tmp_path / "ursula"))
    assert r.code == 0, r.err
    r = await kpctl("users", "update", "carl", "--set-roles=", "--identity", str(tmp_path / "rita"))
    assert r.code == 1 and "may not update user" in r.err
    r = await kpctl("users", "rm", "carl", "--identity", str(tmp_path / "ursula"))
    assert r.code == 1 and "may not delete user" in r.err
    r = await kpctl("users", "ls", "--identity", str(tmp_path / "rita"))
    assert r.code == 0 and "carl" in r.out
    # a caller who may write users but not list roles is told why the role check failed
    await create(tmp_path, USER_ADMIN.replace("[user, role]", "[user]").replace("user-admin", "user-only"), "u.yaml")
    assert (await kpctl("users", "add", "ulla", "--roles=user-only")).code == 0
    assert (await kpctl("auth", "sign", "--user", "ulla", "--out", str(tmp_path / "ulla"))).code == 0
    r = await kpctl("users", "add", "dan", "--roles=kube-access", "--identity", str(tmp_path / "ulla"))
    assert r.code == 1 and "may not list role" in r.err and "needs list on role" in r.err, r.err
    r = await kpctl("users", "add", "dan", "--identity", str(tmp_path / "ulla"))  # no roles: nothing to check
    assert r.code == 0, r.err


async def test_update_from_a_stale_read_is_refused(registry: RegistryInfo, tmp_path: Path) -> None:
    """``users update`` writes with the revision it read: a concurrent change is never overwritten."""
    await create(tmp_path, KUBE_ACCESS + "---\n" + KUBE_MANAGER)
    assert (await kpctl("users", "add", "dave", "--roles=kube-access")).code == 0
    async with admin(registry) as client:
        stale = await client.get("user", "dave")
        await client.update({**stale, "spec": {"roles": ["kube-manager"]}})
        with pytest.raises(KubeportError, match=r"modified concurrently|revision"):
            await client.update({**stale, "spec": {"roles": []}})


# -- auth sign --format=kubernetes ---------------------------------------------------------------------------


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


async def test_kubeconfig_has_one_context_per_allowed_cluster(registry: RegistryInfo, tmp_path: Path) -> None:
    await create(tmp_path, PROD_VIEWER)
    await serve(registry, "prod-b", {"env": "prod"})
    await serve(registry, "prod-a", {"env": "prod"})
    await serve(registry, "web", {"env": "dev"}, dynamic={"tier": "web"})  # selected through its dynamic label
    await serve(registry, "vault", {"env": "secret"}, dynamic={"tier": "web"})  # denied
    await serve(registry, "other", {"env": "dev"})  # not selected
    async with admin(registry) as client:  # a kube_cluster no agent serves is no context (like kube ls)
        await client.create(cluster_doc("unserved", kubeconfig_bytes(), {"env": "prod"}))
    assert (await kpctl("users", "add", "alice", "--roles=prod-viewer,web-viewer")).code == 0

    out = tmp_path / "kubeconfig"
    r = await kpctl("auth", "sign", "--user=alice", "--format=kubernetes", f"--out={out}", "--ttl=25h")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == f"The credentials have been written to {out}"
    assert "(capped by the roles' max_session_ttl)" in lines[1]
    assert "contexts: test-cluster-prod-a (current), test-cluster-prod-b, test-cluster-web" in r.out
    assert "note: the registry does not report a Kubernetes front door address" in r.err  # no front door yet
    host = registry.address.rsplit(":", 1)[0]

    config = _read_kubeconfig(out)
    names = ["prod-a", "prod-b", "web"]
    assert [c["name"] for c in config["contexts"]] == [f"test-cluster-{n}" for n in names]
    assert config["current-context"] == "test-cluster-prod-a"
    assert [c["cluster"]["server"] for c in config["clusters"]] == [
        f"https://{host}:3026{cluster_prefix(n)}" for n in names
    ]
    assert [split_prefix(c["cluster"]["server"].split(":3026", 1)[1])[0] for c in config["clusters"]] == names
    assert {c["context"]["user"] for c in config["contexts"]} == {"test-cluster-alice"}
    (user,) = config["users"]
    cert_pem = base64.b64decode(user["user"]["client-certificate-data"])
    key_pem = base64.b64decode(user["user"]["client-key-data"])
    ca_pem = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    identity = identity_from_cert(cert_pem)
    assert (identity.name, identity.kind, identity.roles) == ("alice", "user", ("prod-viewer", "web-viewer"))
    assert identity.expires is not None and identity.expires <= datetime.now(tz=UTC) + timedelta(hours=2)
    assert load_certificate(ca_pem, "ca").subject == load_certificate(cert_pem, "cert").issuer
    assert load_private_key(key_pem, "key").public_key() == load_certificate(cert_pem, "cert").public_key()
    async with admin(registry) as client:
        assert (await client.ping())["kube_public_addr"] == ""
    # The embedded credentials pass mutual TLS with a server whose certificate the same CA issued (the registry)
    embedded = IdentityFile(cert_pem=cert_pem, key_pem=key_pem, ca_pems=(ca_pem,))
    async with RegistryClient.from_identity(embedded, registry.address) as client:
        assert (await client.whoami())["name"] == "alice"
    assert b"PRIVATE KEY" not in (r.out + r.err).encode()  # no secret printed

    # The kubernetes client's loader accepts it, for the current context and any other
    for context, name in ((None, "prod-a"), ("test-cluster-web", "web")):
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config_from_dict(
            config, context=context, client_configuration=configuration, temp_file_path=str(tmp_path)
        )
        assert configuration.host == f"https://{host}:3026{cluster_prefix(name)}"
        assert await trio.Path(configuration.cert_file).read_bytes() == cert_pem
        assert await trio.Path(configuration.key_file).read_bytes() == key_pem
        assert await trio.Path(configuration.ssl_ca_cert).read_bytes() == ca_pem

    # --kube-cluster picks the current context; --kube-public-addr names the front door
    r = await kpctl(
        "auth", "sign", "--user=alice", "--format=kubernetes", f"--out={out}", "--kube-cluster=web",
        "--kube-public-addr=kube.example.com:443",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "note:" not in r.err
    config = _read_kubeconfig(out)
    assert config["current-context"] == "test-cluster-web"
    assert config["clusters"][2]["cluster"]["server"] == f"https://kube.example.com:443{cluster_prefix('web')}"


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ("vault", 'user "alice" may not reach kubernetes cluster "vault": none of its roles (prod-viewer) selects it'),
        ("other", 'may not reach kubernetes cluster "other"'),
        ("unserved", 'kubernetes cluster "unserved" is not served by any agent (served clusters: other, prod, vault'),
        ("nope\x1b[2J", 'kubernetes cluster "nope\\u001b[2J" is not served by any agent'),
    ],
)
async def test_kube_cluster_not_allowed_is_a_clear_error(
    registry: RegistryInfo, tmp_path: Path, cluster: str, message: str
) -> None:
    await create(tmp_path, PROD_VIEWER)
    await serve(registry, "prod", {"env": "prod"})
    await serve(registry, "vault", {"env": "secret"})
    await serve(registry, "other", {"env": "dev"})
    async with admin(registry) as client:
        await client.create(cluster_doc("unserved", kubeconfig_bytes(), {"env": "prod"}))
    assert (await kpctl("users", "add", "alice", "--roles=prod-viewer")).code == 0
    out = tmp_path / "kubeconfig"
    r = await kpctl("auth", "sign", "--user=alice", "--format=kubernetes", f"--out={out}", f"--kube-cluster={cluster}")
    assert r.code == 1 and r.err.startswith("ERROR: ") and message in r.err, r.err
    assert "\x1b" not in r.err
    assert not out.exists()
    events = json.loads((await kpctl("get", "events", "--format", "json")).out)
    assert "cert.create" not in [e["event"] for e in events]  # refused before anything was signed


async def test_user_whose_roles_select_no_cluster_still_gets_credentials(
    registry: RegistryInfo, tmp_path: Path
) -> None:
    await create(tmp_path, PROD_VIEWER)
    await serve(registry, "dev", {"env": "dev"})
    assert (await kpctl("users", "add", "alice", "--roles=prod-viewer")).code == 0
    out = tmp_path / "kubeconfig"
    r = await kpctl("auth", "sign", "--user=alice", "--format=kubernetes", f"--out={out}")
    assert r.code == 0, r.err
    assert r.out.startswith(f"The credentials have been written to {out}\n")
    assert 'no kubernetes cluster is reachable for user "alice" yet' in r.err
    config = _read_kubeconfig(out)
    assert (config["clusters"], config["contexts"], config["current-context"]) == ([], [], "")
    assert [u["name"] for u in config["users"]] == ["test-cluster-alice"]


async def test_sign_flags_and_defaults(registry: RegistryInfo, tmp_path: Path) -> None:
    await create(tmp_path, KUBE_ACCESS)
    assert (await kpctl("users", "add", "alice", "--roles=kube-access")).code == 0
    out = tmp_path / "id"
    r = await kpctl("auth", "sign", "--user=alice", f"--out={out}", "--kube-cluster=x")
    assert (r.code, r.err) == (1, "ERROR: --kube-cluster is only valid with --format=kubernetes\n")
    r = await kpctl("auth", "sign", "--user=alice", f"--out={out}")  # the default is still the identity file
    assert r.code == 0 and out.read_text().startswith("# kubeport identity: alice (user)")
    for bad in ("0.0.0.0:3026", "https://kube:3026", "kube:99999", "a b:1"):
        r = await kpctl(
            "auth", "sign", "--user=alice", "--format=kubernetes", f"--out={out}", f"--kube-public-addr={bad}"
        )
        assert r.code == 1 and "--kube-public-addr" in r.err, (bad, r.err)
    r = await kpctl("auth", "sign", "--user=nobody", "--format=kubernetes", f"--out={out}")
    assert (r.code, r.err) == (1, 'ERROR: user "nobody" not found; create it first with kpctl users add\n')
    r = await kpctl("auth", "sign", "--help")
    assert "identity (the default)" in " ".join(r.out.split())


# -- kubectl reads it ------------------------------------------------------------------------------------------


@pytest.mark.skipif(find_kubectl() is None, reason=SKIP_REASON)
@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_kubectl_lists_the_contexts(registry: RegistryInfo, tmp_path: Path, version: str) -> None:
    binary = find_kubectl(version) or find_kubectl()
    assert binary is not None
    await create(tmp_path, KUBE_ACCESS)
    for name in ("zeta", "alpha", "mid"):
        await serve(registry, name, {"env": name})
    assert (await kpctl("users", "add", "alice", "--roles=kube-access")).code == 0
    out = tmp_path / "kubeconfig"
    assert (await kpctl("auth", "sign", "--user=alice", "--format=kubernetes", f"--out={out}")).code == 0

    home = tmp_path / "home"
    r = await run_kubectl(binary, ["config", "get-contexts", "-o", "name"], kubeconfig=out, home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["test-cluster-alpha", "test-cluster-mid", "test-cluster-zeta"]
    r = await run_kubectl(binary, ["config", "current-context"], kubeconfig=out, home=home)
    assert r.stdout.decode().strip() == "test-cluster-alpha"
    r = await run_kubectl(binary, ["config", "view", "--raw", "-o", "json"], kubeconfig=out, home=home)
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    assert [c["name"] for c in view["clusters"]] == ["test-cluster-alpha", "test-cluster-mid", "test-cluster-zeta"]
    assert view["clusters"][0]["cluster"]["server"].endswith(cluster_prefix("alpha"))
    r = await run_kubectl(binary, ["config", "view"], kubeconfig=out, home=home)  # data omitted by kubectl
    assert r.stdout.decode().count("DATA+OMITTED") == 5  # three CAs, the certificate and the key
    assert view["users"][0]["user"]["client-key-data"] not in r.stdout.decode()


# -- the seed walkthrough lines as real processes --------------------------------------------------------------


async def _kpctl_process(*argv: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEPORT_IDENTITY")}
    env["PYTHONPATH"] = str(REPO)
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "registry.cli.kpctl", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.mark.slow
async def test_seed_walkthrough_with_kpctl_processes(registry: RegistryInfo, tmp_path: Path) -> None:
    """Seed 003 / issue 9: create the role, add the user, sign a kubeconfig (KUBEPORT_DATA_DIR from the
    fixture names the registry's admin identity)."""
    await serve(registry, "cookie", {"env": "prod"})
    role = tmp_path / "kube-access.yaml"
    role.write_text(KUBE_ACCESS)
    assert await _kpctl_process("create", "-f", str(role)) == (0, 'role "kube-access" has been created\n', "")
    code, out, err = await _kpctl_process("users", "add", "alice", "--roles=kube-access")
    assert (code, out.splitlines()[0], err) == (0, 'User "alice" has been created', "")
    kubeconfig = tmp_path / "kubeconfig"
    code, out, _ = await _kpctl_process(
        "auth", "sign", "--user=alice", "--format=kubernetes", f"--out={kubeconfig}", "--ttl=25h"
    )
    assert code == 0 and out.splitlines()[0] == f"The credentials have been written to {kubeconfig}"
    assert _read_kubeconfig(kubeconfig)["current-context"] == "test-cluster-cookie"
    code, out, _ = await _kpctl_process("users", "update", "alice", "--set-roles", "kube-access")
    assert (code, out) == (0, 'User "alice" has been updated:\n\tNew roles: kube-access\n')
