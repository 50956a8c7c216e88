"""``kubeport registry migrate``: a populated SQLite registry moves to etcd and keeps working (issue 11 §5).

A real SQLite registry gets a cluster, a role, a local user who signed up, an agent that joined and
heartbeats, a bot, an unused join token and the audit events all that wrote. It is stopped, migrated with the
real command into an empty etcd prefix, and a registry is started on the result in the same data dir:

- kpctl (the old admin identity) sees every resource, and the audit log, as before;
- the CA is the same (pin), so the agent's certificate from the old registry still works;
- the user logs in with the same password (``local_credentials`` were copied);
- the heartbeat kept its expiry;
- nothing readable in etcd (sealed with DATA_DIR/etcd.key);
- a second migration into the now non-empty prefix is refused with one ERROR line, and bad ``--from``
  values are refused the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest

from registry.cli import kubeport_main
from registry.client import RegistryClient, join
from registry.core.identity import generate_private_key, make_csr
from registry.core.identity_file import IdentityFile
from registry.host.cmdline import parse_command_line
from tests.e2e.e2e_helpers import Harness, free_port, new_token
from tests.e2e.test_e2e_etcd import one_error_line, raw_values
from tests.fakes.etcd_server import shared_etcd, unique_prefix
from tests.helpers import KUBE_ACCESS, cluster_doc, kubeconfig_bytes

pytestmark = pytest.mark.slow

PASSWORD = "the same long password after the move"
TOKEN = "migrate-kubeconfig-secret-token"


def heartbeat(name: str, host_id: str, expires_in: float = 600.0) -> dict[str, Any]:
    expires = datetime.fromtimestamp(time.time() + expires_in, tz=UTC).isoformat()
    return {
        "kind": "kube_server",
        "version": "v3",
        "metadata": {"name": name, "expires": expires},
        "spec": {
            "host_id": host_id,
            "hostname": "agent:3027",
            "version": "1.0",
            "cluster": {"kind": "kube_cluster", "version": "v3", "metadata": {"name": name}, "spec": {}},
        },
    }


def names(items: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted(str(item["metadata"]["name"]) for item in items)


async def snapshot(client: RegistryClient) -> dict[str, Any]:
    """What an admin sees through the API (names per kind, bots, the audit log)."""
    seen: dict[str, Any] = {}
    for kind in ("kube_cluster", "role", "user", "token", "kube_server"):
        items, _ = await client.list(kind)
        seen[kind] = names(items)
    seen["bots"] = sorted(str(bot["name"]) for bot in await client.bots_list())
    seen["events"] = [(e["event"], e["time"]) for e in await client.events(limit=1000)]
    return seen


async def test_a_populated_sqlite_registry_moves_to_etcd(tmp_path: Path) -> None:
    etcd = shared_etcd()
    prefix = unique_prefix()
    data = tmp_path / "registry-data"
    port = free_port()
    to_etcd = ("--to", f"etcd://{etcd.endpoint}", "--etcd-prefix", prefix)
    async with Harness(tmp_path) as h:
        old = await h.start_registry(data_dir=data, port=port)
        admin = old.client
        await admin.create(cluster_doc("prod", kubeconfig_bytes(token=TOKEN), {"env": "prod"}))
        role = tmp_path / "role.yaml"
        role.write_text(KUBE_ACCESS)
        assert (await h.kpctl("create", "-f", str(role), "--data-dir", str(data))).code == 0
        added = await h.kpctl("users", "add", "alice", "--roles=kube-access", "--data-dir", str(data))
        assert added.code == 0, added.err
        signup_token = added.out.split("--token ")[1].split()[0]
        ca_pems = list(IdentityFile.parse(old.admin_identity.read_bytes(), source="admin").ca_pems)
        async with RegistryClient(old.address, ca_pems=ca_pems) as anonymous:
            secret = pyotp.parse_uri((await anonymous.signup_info(signup_token))["otpauth_uri"]).secret
            await anonymous.signup(signup_token, PASSWORD, pyotp.TOTP(secret).now())

        agent_key = generate_private_key()
        joined = await join(
            old.address, token=await new_token(old), nodename="node-1",
            csr_pem=make_csr(agent_key, "node-1"), ca_pems=ca_pems,
        )  # fmt: skip
        host_id = joined["host_id"]
        agent_cert = joined["cert_pem"].encode()
        async with RegistryClient(old.address, ca_pems=ca_pems, cert_pem=agent_cert, key_pem=agent_key) as agent:
            await agent.heartbeat(heartbeat("prod", host_id))
        await admin.bots_add("ci", ["kube-access"], token_ttl_seconds=600)
        await new_token(old)  # an unused join token travels too
        before = await snapshot(admin)
        old_server = (await admin.get("kube_server", f"{host_id}/prod"))["metadata"]["expires"]
        assert before["token"] and before["user"] == ["alice", "bot-ci"] and before["bots"] == ["ci"]
        await old.child.stop()

        migrated = await h.kubeport("registry", "migrate", "--data-dir", str(data), *to_etcd)
        assert migrated.code == 0, migrated.err
        assert "migrated" in migrated.out and "cert_authority" in migrated.out and "local_credentials" in migrated.out
        assert (data / "etcd.key").stat().st_mode & 0o077 == 0

        again = await h.kubeport("registry", "migrate", "--data-dir", str(data), *to_etcd)
        assert again.code == 1
        assert "not empty" in one_error_line(again.err)

        new = await h.start_registry(
            data_dir=data, port=port, name="registry-etcd",
            extra=("--store", f"etcd://{etcd.endpoint}", "--etcd-prefix", prefix),
        )  # fmt: skip
        assert new.ca_pin == old.ca_pin
        after = await snapshot(new.client)
        # the new registry's start adds its own events; everything before is there, in order
        assert after["events"][: len(before["events"])] == before["events"]
        assert {k: v for k, v in after.items() if k != "events"} == {k: v for k, v in before.items() if k != "events"}
        assert (await new.client.get("kube_server", f"{host_id}/prod"))["metadata"]["expires"] == old_server
        got = await new.client.get("kube_cluster", "prod", with_secrets=True)
        assert got["spec"]["kubeconfig"]  # the credential came along, readable by the registry

        listed = await h.kpctl("get", "kube_clusters", "--format", "text", "--data-dir", str(data))
        assert listed.code == 0 and "prod" in listed.out, listed.err

        async with RegistryClient(new.address, ca_pems=ca_pems, cert_pem=agent_cert, key_pem=agent_key) as agent:
            await agent.heartbeat(heartbeat("prod", host_id))  # the old agent certificate is still accepted

        key = generate_private_key()
        async with RegistryClient(new.address, ca_pems=ca_pems) as anonymous:
            code = pyotp.TOTP(secret).at(time.time() + 30)  # a later step than the one signup used
            login = await anonymous.login("alice", PASSWORD, code, make_csr(key, "alice"))
        assert login["cert_pem"]

        values = raw_values(etcd.url, prefix)
        assert not any(b"PRIVATE KEY" in v or TOKEN.encode() in v or b"alice" in v for v in values)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("memory://", "only a SQLite store"),
        ("etcd://127.0.0.1:1", "only a SQLite store"),
        ("sqlite://", "only a SQLite store"),
        ("/nonexistent/registry.db", "no registry store there"),
    ],
)
async def test_migrate_refuses_a_bad_source(tmp_path: Path, source: str, message: str) -> None:
    async with Harness(tmp_path) as h:
        refused = await h.kubeport(
            "registry", "migrate", "--data-dir", str(tmp_path / "d"), "--from", source, "--to", "etcd://127.0.0.1:1"
        )
    assert refused.code == 1
    assert message in one_error_line(refused.err)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--to", "sqlite"], "ERROR: --to must name an etcd cluster"),
        (["--to", "mysql://h:1"], "ERROR: --store 'mysql://h:1': use sqlite"),
        (["--to", "etcd://h:1", "--etcd-prefix", "/a b/"], "ERROR: etcd prefix"),
        (["--to", "etcd://h:1", "--etcd-cert", "c.pem"], "ERROR: --etcd-cert and --etcd-key go together"),
        (["--to", "etcd://h:1", "--from", "garbage.db"], "ERROR: --from"),
        (["--to", "etcd://h:1", "--from", "empty.db"], "ERROR: --from"),
    ],
)
def test_bad_migrate_flags_and_files_are_one_error_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.db").write_bytes(b"\x00not sqlite at all" * 1000)
    (tmp_path / "empty.db").write_bytes(b"")  # sqlite opens it as a database without our tables
    assert kubeport_main.main(["registry", "migrate", "--data-dir", str(tmp_path / "d"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "d" / "etcd.key").exists()


@pytest.mark.parametrize("value", ["", " ", "etcd://h:1\x00", "x" * 100_000])
def test_empty_huge_or_control_migrate_values_are_usage_errors(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--to", "--from"):
        argv = ["registry", "migrate", flag, value] + ([] if flag == "--to" else ["--to", "etcd://h:1"])
        with pytest.raises(SystemExit) as exc:
            parse_command_line(kubeport_main.build_parser(), argv)
        assert exc.value.code == 2
        assert flag in capsys.readouterr().err
