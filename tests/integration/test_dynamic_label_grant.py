"""Issue 7 §2: running code on agent hosts through dynamic labels needs a grant on both sides.

Registry: setting or changing ``spec.dynamic_labels`` needs a rule on ``kube_cluster_dynamic_labels`` (seed
003's kube-manager role does not have one), through the API and kpctl alike, and it is audited. Agent: a
registry-stored label command runs only if the host admin listed its program in
``allowed_label_commands`` (default: none); a refused one never starts and says why, in the heartbeat and
in ``kpctl kube explain``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from agent.service import Agent
from registry.client import RegistryClient
from registry.core.errors import AccessDenied, BadParameter, CompareFailed
from registry.server.serve import RegistryInfo
from tests.fakes.kube_api import FakeKube
from tests.helpers import cluster_doc, kpctl, kubeconfig_bytes
from tests.integration.test_agent_inprocess import admin, agent_config, new_token, wait_for

KUBE_MANAGER = {
    "kind": "role",
    "version": "v5",
    "metadata": {"name": "kube-manager"},
    "spec": {
        "allow": {"rules": [{"resources": ["kube_cluster"], "verbs": ["list", "create", "read", "update", "delete"]}]}
    },
}
LABEL_SETTER = {
    "kind": "role",
    "version": "v7",
    "metadata": {"name": "label-setter"},
    "spec": {"allow": {"rules": [{"resources": ["kube_cluster_dynamic_labels"], "verbs": ["create", "update"]}]}},
}
REGION = {"region": {"period": "24h", "command": ["python3", "get_region.py"]}}


def _user(name: str, *roles: str) -> dict[str, Any]:
    return {"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": list(roles)}}


async def _identity(tmp_path: Path, name: str, *roles: str) -> Path:
    async with RegistryClient.from_identity_file(_admin_identity()) as client:
        await client.create(_user(name, *roles))
    out = tmp_path / f"{name}.identity"
    result = await kpctl("auth", "sign", "--user", name, "--out", str(out))
    assert result.code == 0, result.err
    return out


def _admin_identity() -> Path:
    import os

    return Path(os.environ["KUBEPORT_DATA_DIR"]) / "admin.identity"


async def _setup_roles() -> None:
    async with RegistryClient.from_identity_file(_admin_identity()) as client:
        for role in (KUBE_MANAGER, LABEL_SETTER):
            await client.create(role)


async def test_a_kube_manager_may_not_set_or_change_dynamic_labels(registry: RegistryInfo, tmp_path: Path) -> None:
    await _setup_roles()
    alice = await _identity(tmp_path, "alice", "kube-manager")
    kubeconfig = kubeconfig_bytes()
    async with RegistryClient.from_identity_file(alice) as client:
        # create with dynamic labels: 403, naming the field and the grant
        with pytest.raises(AccessDenied) as denied:
            await client.create(cluster_doc("c1", kubeconfig, {}, dynamic_labels=REGION))
        message = denied.value.message
        assert "spec.dynamic_labels" in message
        assert "kube_cluster_dynamic_labels" in message
        assert "allowed_label_commands" in message
        # without them: fine; then an update that adds them: 403
        await client.create(cluster_doc("c1", kubeconfig, {"env": "a"}))
        current = await client.get("kube_cluster", "c1")
        current["spec"]["dynamic_labels"] = REGION
        with pytest.raises(AccessDenied, match=r"spec\.dynamic_labels"):
            await client.update(current)

    # The admin sets them; alice may still edit everything else, leaving them as they are.
    async with RegistryClient.from_identity_file(_admin_identity()) as root:
        current = await root.get("kube_cluster", "c1")
        current["spec"]["dynamic_labels"] = REGION
        await root.update(current)
    async with RegistryClient.from_identity_file(alice) as client:
        current = await client.get("kube_cluster", "c1")
        current["metadata"]["labels"]["env"] = "b"
        await client.update(current)
        unchanged = await client.get("kube_cluster", "c1")
        unchanged.pop("metadata")["revision"] = None
        unchanged["metadata"] = {"name": "c1", "labels": {"env": "c"}}  # no revision: pinned server-side
        await client.update(unchanged)
        # any change of command, arguments, period or schedule, or a new key: 403
        base = await client.get("kube_cluster", "c1")
        edits = [
            {"region": {"period": "24h", "command": ["curl", "http://evil.example"]}},
            {"region": {"period": "24h", "command": ["python3", "get_region.py", "--evil"]}},
            {"region": {"period": "1s", "command": ["python3", "get_region.py"]}},
            {"region": {"schedule": "* * * * *", "command": ["python3", "get_region.py"]}},
            {**REGION, "extra": {"period": "1h", "command": ["id"]}},
            {"region": {"period": "24h", "command": ["python3 ", "get_region.py"]}},
        ]
        for edit in edits:
            attempt = copy.deepcopy(base)
            attempt["spec"]["dynamic_labels"] = edit
            with pytest.raises(AccessDenied, match="kube_cluster_dynamic_labels"):
                await client.update(attempt)
        # Removing them starts nothing (like deleting the cluster, which alice may do): allowed.
        base["spec"].pop("dynamic_labels")
        await client.update(base)
        assert "dynamic_labels" not in (await client.get("kube_cluster", "c1"))["spec"]
        # create -f of an existing cluster goes through the same check
        with pytest.raises(AccessDenied):
            await client.create_or_update(cluster_doc("c1", kubeconfig, {}, dynamic_labels=REGION))

    # kpctl: one ERROR line, exit 1, nothing written
    path = tmp_path / "c2.yaml"
    path.write_text(yaml.safe_dump(cluster_doc("c2", kubeconfig, {}, dynamic_labels=REGION)))
    result = await kpctl("create", str(path), "--identity", str(alice))
    assert result.code == 1
    assert result.err.startswith("ERROR: access denied") and "spec.dynamic_labels" in result.err
    assert len(result.err.strip().splitlines()) == 1
    result = await kpctl("create", "-f", str(path), "--identity", str(alice))
    assert result.code == 1 and "kube_cluster_dynamic_labels" in result.err
    assert (await kpctl("get", "kube_clusters/c2")).code == 1

    # every refusal is audited, with who and why
    events = yaml.safe_load((await kpctl("get", "events", "--format", "json", "--limit", "1000")).out)
    denied_events = [e for e in events if e["event"] == "access.denied" and e.get("user") == "alice"]
    assert len(denied_events) == 2 + len(edits) + 1 + 2
    assert all("spec.dynamic_labels" in e["error"] for e in denied_events)


async def test_the_grant_rule_allows_dynamic_labels_and_is_audited(registry: RegistryInfo, tmp_path: Path) -> None:
    await _setup_roles()
    carol = await _identity(tmp_path, "carol", "kube-manager", "label-setter")
    kubeconfig = kubeconfig_bytes()
    async with RegistryClient.from_identity_file(carol) as client:
        await client.create(cluster_doc("c1", kubeconfig, {}, dynamic_labels=REGION))
        current = await client.get("kube_cluster", "c1")
        current["spec"]["dynamic_labels"] = {"region": {"period": "1h", "command": ["/usr/bin/uname", "-m"]}}
        await client.update(current)
    path = tmp_path / "c2.yaml"
    path.write_text(yaml.safe_dump(cluster_doc("c2", kubeconfig, {}, dynamic_labels=REGION)))
    result = await kpctl("create", str(path), "--identity", str(carol))
    assert result.code == 0, result.err

    events = yaml.safe_load((await kpctl("get", "events", "--format", "json", "--limit", "1000")).out)
    writes = [(e["event"], e["name"], e.get("dynamic_labels")) for e in events if e.get("user") == "carol"]
    assert writes == [
        ("kube.create", "c1", {"region": "python3 get_region.py"}),
        ("kube.update", "c1", {"region": "/usr/bin/uname -m"}),
        ("kube.create", "c2", {"region": "python3 get_region.py"}),
    ]


async def test_a_grant_needs_the_matching_verb_and_deny_rules_win(registry: RegistryInfo, tmp_path: Path) -> None:
    await _setup_roles()
    async with RegistryClient.from_identity_file(_admin_identity()) as root:
        await root.create(
            {
                "kind": "role",
                "version": "v7",
                "metadata": {"name": "create-only"},
                "spec": {"allow": {"rules": [{"resources": ["kube_cluster_dynamic_labels"], "verbs": ["create"]}]}},
            }
        )
        await root.create(
            {
                "kind": "role",
                "version": "v7",
                "metadata": {"name": "everything-but"},
                "spec": {
                    "allow": {"rules": [{"resources": ["*"], "verbs": ["*"]}]},
                    "deny": {"rules": [{"resources": ["kube_cluster_dynamic_labels"], "verbs": ["*"]}]},
                },
            }
        )
    dave = await _identity(tmp_path, "dave", "kube-manager", "create-only")
    erin = await _identity(tmp_path, "erin", "everything-but")
    kubeconfig = kubeconfig_bytes()
    async with RegistryClient.from_identity_file(dave) as client:
        await client.create(cluster_doc("d1", kubeconfig, {}, dynamic_labels=REGION))
        current = await client.get("kube_cluster", "d1")
        current["spec"]["dynamic_labels"] = {"region": {"period": "1h", "command": ["id"]}}
        with pytest.raises(AccessDenied, match="update on kube_cluster_dynamic_labels"):
            await client.update(current)
    async with RegistryClient.from_identity_file(erin) as client:
        with pytest.raises(AccessDenied):
            await client.create(cluster_doc("e1", kubeconfig, {}, dynamic_labels=REGION))


async def test_an_update_without_the_grant_never_reverts_a_concurrent_change() -> None:
    """The unchanged-labels check holds for the revision it was made against: when the admin changes the
    dynamic labels between that check and the write, a kube-manager's replace (sent without a revision)
    fails as modified concurrently instead of putting the old labels back. Service layer, with the
    admin's write injected right after the kube-manager's request read the stored value."""
    from datetime import UTC, datetime

    from registry.core import codec
    from registry.core.identity import CertAuthority, Identity
    from registry.core.resources import Role
    from registry.server.authz import Caller
    from registry.server.service import Registry
    from registry.store.memory import MemoryStore

    admin_caller = Caller(Identity(name="admin", kind="admin", roles=("admin",)))
    role = codec.resource_from_dict(KUBE_MANAGER)
    assert isinstance(role, Role)
    alice = Caller(Identity(name="alice", kind="user", roles=("kube-manager",)), roles=(role,))

    class RacingStore(MemoryStore):
        race: Any = None

        async def get(self, kind: str, name: str) -> Any:
            record = await super().get(kind, name)
            if self.race is not None:
                race, self.race = self.race, None
                await race()
            return record

    store = RacingStore()
    service = Registry(store, CertAuthority.generate("t", now=datetime.now(tz=UTC)), cluster_name="t")
    await service.create(
        admin_caller, codec.resource_from_dict(cluster_doc("c1", kubeconfig_bytes(), {}, dynamic_labels=REGION))
    )
    stale = cluster_doc("c1", kubeconfig_bytes(), {"env": "edited"}, dynamic_labels=REGION)
    changed = cluster_doc(
        "c1", kubeconfig_bytes(), {}, dynamic_labels={"region": {"period": "1h", "command": ["/usr/bin/uname"]}}
    )

    async def admin_changes_the_labels() -> None:
        await service.update(admin_caller, codec.resource_from_dict(changed))

    store.race = admin_changes_the_labels
    with pytest.raises(CompareFailed, match="modified concurrently"):
        await service.update(alice, codec.resource_from_dict(stale))
    stored = codec.resource_from_dict((await store.get("kube_cluster", "c1")).value)
    assert stored.dynamic_labels["region"].command == ("/usr/bin/uname",)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["kube_cluster_dynamic_label", "kube_cluster_dynamic_labels "])
async def test_misspelled_grant_resources_are_refused_when_the_role_is_written(
    registry: RegistryInfo, kind: str
) -> None:
    async with RegistryClient.from_identity_file(_admin_identity()) as root:
        with pytest.raises(BadParameter):
            await root.create(
                {
                    "kind": "role",
                    "version": "v7",
                    "metadata": {"name": "typo"},
                    "spec": {"allow": {"rules": [{"resources": [kind], "verbs": ["create"]}]}},
                }
            )


# ------------------------------------------------------------------------------------------ agent side


async def _result(registry: RegistryInfo, cluster: str, key: str) -> str | None:
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    for server in servers:
        if server["metadata"]["name"] == cluster:
            labels = server["spec"]["cluster"]["spec"].get("dynamic_labels") or {}
            if key in labels and labels[key].get("result"):
                return str(labels[key]["result"])
    return None


async def test_an_agent_with_the_default_config_runs_no_registry_stored_command(
    registry: RegistryInfo, fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path
) -> None:
    proof = tmp_path / "ran"
    config = agent_config(registry, await new_token(registry), tmp_path / "agent", [{"labels": {"*": "*"}}])
    assert config.kube.allowed_label_commands == ()
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        await client.create(
            cluster_doc(
                "victim",
                fake_kube.kubeconfig_yaml(token="admin-token"),
                {},
                dynamic_labels={
                    "pwn": {"period": "1s", "command": ["touch", str(proof)]},
                    "region": REGION["region"],
                },
            )
        )

    value = await wait_for(lambda: _result(registry, "victim", "pwn"), what="the refused label's value")
    assert value == 'command not allowed on this agent: "touch" (kubernetes_service.allowed_label_commands) output: '
    assert await _result(registry, "victim", "region") == (
        'command not allowed on this agent: "python3" (kubernetes_service.allowed_label_commands) output: '
    )
    assert not proof.exists(), "a refused command ran"

    async def explained() -> str | None:
        result = await kpctl("kube", "explain", "victim")
        return result.out if "dynamic label pwn" in result.out else None

    text = await wait_for(explained, what="kube explain to show the refusal")
    assert 'dynamic label pwn: command not allowed on this agent: "touch"' in text
    assert 'dynamic label region: command not allowed on this agent: "python3"' in text
    assert not proof.exists()


async def test_an_allowed_command_runs_the_seed_example(
    registry: RegistryInfo, fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Seed 003's ``python3 get_region.py`` with the host admin's ``allowed_label_commands: [python3]``."""
    script = tmp_path / "get_region.py"
    script.write_text("print('us-east-2')\n")
    proof = tmp_path / "ran"
    config = agent_config(
        registry,
        await new_token(registry),
        tmp_path / "agent",
        [{"labels": {"region": "us-*"}}],
        allowed_label_commands=["python3", "touch"],
    )
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        await client.create(
            cluster_doc(
                "mycluster",
                fake_kube.kubeconfig_yaml(token="admin-token"),
                {},
                dynamic_labels={
                    "region": {"period": "24h", "command": ["python3", str(script)]},
                    "touched": {"period": "24h", "command": ["touch", str(proof)]},
                    "nope": {"period": "24h", "command": ["sh", "-c", f"echo > {proof}.sh"]},
                },
            )
        )
    assert await wait_for(lambda: _result(registry, "mycluster", "region"), what="region") == "us-east-2"
    assert proof.exists()
    assert "command not allowed" in (await _result(registry, "mycluster", "nope") or "")
    assert not await trio.Path(f"{proof}.sh").exists()


async def test_the_all_in_one_allows_no_label_program_unless_named(registry: RegistryInfo) -> None:
    from registry.cli.kubeport_main import build_parser, local_agent_config

    assert (await local_agent_config(registry)).kube.allowed_label_commands == ()
    args = build_parser().parse_args(["start", "--allow-label-command", "python3", "--allow-label-command=/bin/sh"])
    config = await local_agent_config(registry, args.allow_label_command)
    assert config.kube.allowed_label_commands == ("python3", "/bin/sh")
    assert build_parser().parse_args(["start"]).allow_label_command is None


def test_explain_lists_failing_labels_under_each_agent_with_escapes() -> None:
    from registry.cli.kube_cmd import explain_cluster

    cluster = {"metadata": {"name": "c1", "labels": {}}, "spec": {"dynamic_labels": {"region": {}}}}
    refusal = 'command not allowed on this agent: "python3" (kubernetes_service.allowed_label_commands) output: '
    agents = [
        {
            "host_id": "h1",
            "nodename": "a1",
            "resources": [{"labels": {"region": "us-*"}}],
            "label_errors": {"c1": {"region": refusal}},
        },
        {
            "host_id": "h2",
            "nodename": "a2",
            "resources": [{"labels": {"*": "*"}}],
            "label_errors": {"c1": {"region": "exit status 1 output:  stderr: \x1b[2Jforged\nline"}},
        },
    ]
    servers = [
        {"metadata": {"name": "c1"}, "spec": {"host_id": "h2", "hostname": "a2:3027", "health": {"status": "healthy"}}}
    ]
    text = explain_cluster(cluster, servers, agents)
    assert f"    dynamic label region: {refusal}" in text
    assert "\x1b" not in text and "\\x1b[2Jforged\\nline" in text
    assert len(text.splitlines()) == 9  # no line was forged


@pytest.mark.parametrize(
    "label_errors",
    [[], {"c1": "oops"}, {"c1": {"k": 5}}, {"c1": {"k": ["v"]}}, {"c1": None}, "x"],
)
def test_agent_records_with_malformed_label_errors_are_refused(label_errors: Any) -> None:
    from registry.server.service import validate_agent_record

    with pytest.raises(BadParameter, match="label_errors"):
        validate_agent_record("h1", {"host_id": "h1", "label_errors": label_errors})


def test_agent_records_bound_label_errors() -> None:
    from registry.server.service import validate_agent_record

    huge = {f"c{i}": {f"k{j}": "e" * 5000 for j in range(100)} for i in range(1200)}
    record = validate_agent_record("h1", {"host_id": "h1", "label_errors": huge})
    assert len(record["label_errors"]) == 1000
    assert all(len(errors) == 64 for errors in record["label_errors"].values())
    assert all(len(v) == 1000 for errors in record["label_errors"].values() for v in errors.values())
