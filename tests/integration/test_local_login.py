"""A local user end to end (issue 10 §1): a real registry with its front door, a real agent, the fake
Kubernetes API, kpctl for the admin, ``kubeport signup`` / ``kubeport login`` (their real code, in this
trio loop, secrets on stdin) for the user, and real kubectl with the certificate the login saved.

    kpctl users add alice --roles=kube-access      # prints: kubeport signup --registry ... --token ...
    kubeport signup --registry ... --token ... --password-stdin
    kubeport login --registry ... --user alice --password-stdin
    kubectl get pods                               # through the front door, as alice
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import httpx
import pyotp
import pytest
import trio
import yaml

from registry.cli.kpctl.auth import kubeconfig_document
from registry.cli.profile import KubeportHome
from registry.client import RegistryClient
from registry.core.identity import REGISTRY_SERVER_NAME
from registry.server.local_auth import SECOND_FACTOR_OFF_WARNING
from registry.server.serve import RegistryInfo, serve_registry
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import require_kubectl
from tests.helpers import KUBE_ACCESS, kpctl
from tests.integration.access_setup import (  # noqa: F401
    AccessRegistry,
    access_registry,
    add_cluster,
    kubectl_until_routed,
    start_agent,
)
from tests.integration.test_agent_inprocess import admin
from tests.integration.user_loop_helpers import kubeport

PASSWORD = "a long pässwörd for alice ✓"
SIGNUP_LINE = re.compile(r"kubeport signup --registry (\S+) --token (\S+) --ca-pin (\S+)")


def code_after(secret: str, seconds: float) -> str:
    """The code an authenticator shows ``seconds`` from now (a later step than one already used)."""
    return pyotp.TOTP(secret).at(time.time() + seconds)


async def add_alice(tmp_path: Path) -> tuple[str, str, str]:
    """kpctl creates the role and alice; the (registry, token, pin) of the signup line it prints."""
    (tmp_path / "kube-access.yaml").write_text(KUBE_ACCESS)
    assert (await kpctl("create", "-f", str(tmp_path / "kube-access.yaml"))).code == 0
    added = await kpctl("users", "add", "alice", "--roles=kube-access")
    assert added.code == 0, added.err
    found = SIGNUP_LINE.search(added.out)
    assert found, added.out
    return found.group(1), found.group(2), found.group(3)


async def totp_secret(registry: str, token: str, ca_pem: bytes) -> str:
    """What the user's authenticator app learns from the QR code (the same secret for the same token)."""
    async with RegistryClient(registry, ca_pems=[ca_pem]) as client:
        info = await client.signup_info(token)
    return str(pyotp.parse_uri(info["otpauth_uri"]).secret)


async def test_signup_login_and_kubectl_get_pods_with_the_login(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = access_registry.info
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "alice-home"))
    address, token, pin = await add_alice(tmp_path)
    assert address == registry.address and pin == registry.ca_pin
    secret = await totp_secret(address, token, access_registry.ca.cert_pem)

    signed_up = await kubeport(
        "signup", "--registry", address, "--token", token, "--ca-pin", pin, "--password-stdin",
        stdin=f"{PASSWORD}\n{code_after(secret, 0)}\n",
    )  # fmt: skip
    assert signed_up.code == 0, signed_up.err
    assert "otpauth://totp/" in signed_up.out
    assert f"kubeport login --registry {address} --user alice --ca-pin {pin}" in signed_up.out
    reused = await kubeport(
        "signup", "--registry", address, "--token", token, "--ca-pin", pin, "--password-stdin",
        stdin=f"{PASSWORD}\n000000\n",
    )  # fmt: skip
    assert reused.code == 1 and reused.err.startswith("ERROR: the signup token is not valid"), reused.err

    wrong = await kubeport(
        "login", "--registry", address, "--user", "alice", "--ca-pin", pin, "--password-stdin",
        stdin="not it at all\n123456\n",
    )  # fmt: skip
    assert (wrong.code, wrong.err.count("\n")) == (1, 1), wrong.err
    assert wrong.err.startswith("ERROR: login failed")
    logged_in = await kubeport(
        "login", "--registry", address, "--user", "alice", "--password-stdin",
        stdin=f"{PASSWORD}\n{code_after(secret, 30)}\n",
    )  # fmt: skip
    assert logged_in.code == 0, logged_in.err
    assert 'Logged in as "alice" on cluster "test-cluster"' in logged_in.out
    assert "kube-access" in logged_in.out
    assert PASSWORD not in logged_in.out + logged_in.err

    # The saved profile works: whoami with its identity.
    login = KubeportHome(tmp_path / "alice-home").load()
    assert login.profile.user == "alice" and login.profile.ca_pin == pin and login.profile.auth == "local"
    assert login.identity_path.stat().st_mode & 0o777 == 0o600
    async with RegistryClient.from_identity(login.identity, address) as client:
        me = await client.whoami()
    assert (me["name"], me["kind"], me["roles"]) == ("alice", "user", ["kube-access"])
    remaining = login.expires.timestamp() - time.time()
    assert 11.9 * 3600 < remaining <= 12 * 3600  # the default, under the role's cap (30h)

    # Real kubectl through the front door with that certificate.
    kubectl = require_kubectl()
    fake_kube.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake_kube.add_pod("web-1")
    await start_agent(registry, nursery, tmp_path / "agent")
    await add_cluster(registry, fake_kube, "mycluster", {"env": "prod"})
    document = kubeconfig_document(
        kubeport_cluster=login.profile.cluster,
        user="alice",
        clusters=["mycluster"],
        current="mycluster",
        front_door=registry.kube_address,
        cert_pem=login.identity.cert_pem,
        key_pem=login.identity.key_pem,
        ca_pems=login.identity.ca_pems,
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(document))
    code, out, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=tmp_path / "h")
    assert code == 0, err
    assert "web-1" in out
    listed = [r for r in fake_kube.requests if r.path == "/api/v1/namespaces/default/pods" and r.status == 200]
    assert listed and listed[-1].impersonated_user == "alice"

    # Every attempt was audited, without the secrets.
    async with await admin(registry) as client:
        page, _ = await client.events_page(limit=500)
    logins = [e for e in page if e.get("event") == "user.login"]
    assert [e["success"] for e in logins] == [False, True]
    text = json.dumps(page)
    assert PASSWORD not in text and token not in text and secret not in text


async def test_a_huge_login_body_gets_a_status_not_a_crash(access_registry: AccessRegistry) -> None:  # noqa: F811
    registry = access_registry.info
    context = httpx.create_ssl_context(verify=False)
    context.load_verify_locations(cadata=access_registry.ca.cert_pem.decode())
    context.check_hostname = True
    async with httpx.AsyncClient(verify=context, timeout=30) as client:
        body = b'{"user": "alice", "password": "' + b"x" * (3 * 1024 * 1024) + b'"}'
        response = await client.post(
            f"https://{registry.address}/v1/login",
            content=body,
            headers={"content-type": "application/json"},
            extensions={"sni_hostname": REGISTRY_SERVER_NAME},
        )
    assert response.status_code == 413
    assert response.json()["kind"] == "Status"


async def test_login_without_a_terminal_or_stdin_and_unknown_sso_give_one_error_line(
    access_registry: AccessRegistry,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "home"))
    address = access_registry.info.address
    sso = await kubeport("login", "--registry", address, "--auth", "github")
    assert sso.code == 1 and sso.err.splitlines()[-1].startswith("ERROR:") and "github" in sso.err, sso.err
    empty = await kubeport("login", "--registry", address, "--user", "alice", "--password-stdin", stdin="")
    assert empty.code == 1 and empty.err.splitlines()[-1] == "ERROR: the password is empty", empty.err
    huge = await kubeport("login", "--registry", address, "--user", "alice", "--password-stdin", stdin="x" * 100_000)
    assert (huge.code, huge.err) == (1, "ERROR: --password-stdin: standard input is larger than 16384 bytes\n")
    bad_user = await kubeport("login", "--registry", address, "--user", "../etc", "--password-stdin", stdin="a\nb\n")
    assert bad_user.code == 1 and bad_user.err.splitlines()[-1].startswith("ERROR: --user"), bad_user.err


async def test_second_factor_off_warns_at_start_and_logs_in_with_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with trio.open_nursery() as nursery:
        info: RegistryInfo = await nursery.start(
            lambda task_status: serve_registry(
                data_dir=tmp_path / "data",
                listen="127.0.0.1:0",
                cluster_name="lab",
                second_factor="off",
                task_status=task_status,
            )
        )
        assert SECOND_FACTOR_OFF_WARNING in caplog.text
        monkeypatch.setenv("KUBEPORT_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "home"))
        assert (await kpctl("users", "add", "bob")).code == 0
        async with RegistryClient.from_identity_file(info.admin_identity) as client:
            token = (await client.create_signup_token("bob"))["token"]
        signed_up = await kubeport("signup", "--registry", info.address, "--token", token, "--password-stdin",
                                   stdin=f"{PASSWORD}\n")  # fmt: skip
        assert signed_up.code == 0, signed_up.err
        assert "otpauth" not in signed_up.out
        assert "Trusting the CA" in signed_up.err  # trust on first use, with the pin shown
        logged_in = await kubeport(
            "login", "--registry", info.address, "--user", "bob", "--password-stdin", stdin=f"{PASSWORD}\n"
        )
        assert logged_in.code == 0, logged_in.err
        nursery.cancel_scope.cancel()


async def test_users_reset_prints_a_new_signup_and_the_old_password_stops_working(
    access_registry: AccessRegistry,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "home"))
    address, token, pin = await add_alice(tmp_path)
    secret = await totp_secret(address, token, access_registry.ca.cert_pem)
    signed_up = await kubeport(
        "signup", "--registry", address, "--token", token, "--ca-pin", pin, "--password-stdin",
        stdin=f"{PASSWORD}\n{code_after(secret, 0)}\n",
    )  # fmt: skip
    assert signed_up.code == 0, signed_up.err

    reset = await kpctl("users", "reset", "alice")
    assert reset.code == 0, reset.err
    assert reset.out.startswith('User "alice" has been reset')
    found = SIGNUP_LINE.search(reset.out)
    assert found and found.group(2) != token
    login = await kubeport(
        "login", "--registry", address, "--user", "alice", "--ca-pin", pin, "--password-stdin",
        stdin=f"{PASSWORD}\n{code_after(secret, 30)}\n",
    )  # fmt: skip
    assert (login.code, login.err) == (1, "ERROR: login failed: wrong user name, password or one-time code\n")

    missing = await kpctl("users", "reset", "nobody")
    assert (missing.code, missing.err) == (1, 'ERROR: user "nobody" not found (create it with kpctl users add)\n')
