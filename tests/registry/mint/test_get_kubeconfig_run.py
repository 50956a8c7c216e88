"""get_kubeconfig against the fake Kubernetes API: a fresh cluster, a second run, custom names, the token
controller's timing, and pre-1.24 clusters."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
import trio

from registry.mint.rbac import ROLE_RULES
from tests.fakes.kube_api import FakeKube
from tests.registry.mint.getkc_helpers import ADMIN_TOKEN, admin_kubeconfig, load_yaml, run_getkc, start_fake, writes

PROGRESS_FRESH = [
    "Creating the Kubernetes Service Account with minimal RBAC permissions.",
    "namespace/teleport created",
    "serviceaccount/teleport-sa created",
    "clusterrole.rbac.authorization.k8s.io/teleport-role created",
    "clusterrolebinding.rbac.authorization.k8s.io/teleport-crb created",
    "secret/teleport-sa created",
]


def _secret_token(fake: FakeKube, namespace: str, name: str) -> str:
    secret = fake.get_object("secrets", name, namespace)
    assert secret is not None
    return base64.b64decode(secret["data"]["token"]).decode()


async def test_fresh_cluster_gets_minimal_rbac_and_a_working_kubeconfig(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery)
    output = tmp_path / "out" / "kubeconfig"
    output.parent.mkdir()
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "--output", str(output)])

    assert result.code == 0, result.err
    assert result.lines[: len(PROGRESS_FRESH)] == PROGRESS_FRESH
    assert "Writing kubeconfig." in result.lines
    assert "Done!" in result.lines
    assert "kpctl create" in result.out  # tells the reader how to register the cluster
    assert result.err == ""

    assert fake.get_object("namespaces", "teleport") is not None
    assert fake.get_object("serviceaccounts", "teleport-sa", "teleport") is not None
    role = fake.get_object("clusterroles", "teleport-role")
    assert role is not None
    assert role["rules"] == [dict(r) for r in ROLE_RULES]
    binding = fake.get_object("clusterrolebindings", "teleport-crb")
    assert binding is not None
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "teleport-role",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "teleport-sa", "namespace": "teleport"}]
    secret = fake.get_object("secrets", "teleport-sa", "teleport")
    assert secret is not None
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "teleport-sa"

    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    written = load_yaml(output)
    # The original's structure, key for key (teleport-behaviour.md §6 step 10).
    assert written == {
        "apiVersion": "v1",
        "clusters": [
            {
                "cluster": {
                    "certificate-authority-data": base64.b64encode(fake.ca_pem).decode(),
                    "server": fake.url,
                },
                "name": "fake-cluster",
            }
        ],
        "contexts": [{"context": {"cluster": "fake-cluster", "user": "fake-cluster-teleport-sa"}, "name": "fake"}],
        "current-context": "fake",
        "kind": "Config",
        "preferences": {},
        "users": [
            {"name": "fake-cluster-teleport-sa", "user": {"token": _secret_token(fake, "teleport", "teleport-sa")}}
        ],
    }
    assert list(written) == sorted(written)  # same key order as kubectl config view


async def test_second_run_changes_nothing_and_succeeds(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    argv = ["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "--output", str(tmp_path / "kubeconfig")]
    first = await run_getkc(argv)
    assert first.code == 0, first.err
    token = load_yaml(tmp_path / "kubeconfig")["users"]
    fake.clear_requests()

    second = await run_getkc(argv)

    assert second.code == 0, second.err
    assert [(r.method, r.path) for r in writes(fake)] == []
    assert "Creating the Kubernetes Service Account with minimal RBAC permissions." in second.lines
    assert [line for line in second.lines if line.endswith(" unchanged")] == [
        "namespace/teleport unchanged",
        "serviceaccount/teleport-sa unchanged",
        "clusterrole.rbac.authorization.k8s.io/teleport-role unchanged",
        "clusterrolebinding.rbac.authorization.k8s.io/teleport-crb unchanged",
        "secret/teleport-sa unchanged",
    ]
    assert "Waiting" not in second.out  # the token is already there
    assert load_yaml(tmp_path / "kubeconfig")["users"] == token  # same credential, nothing new minted
    assert fake.controllers.tokens_issued == 1


@pytest.mark.parametrize(
    ("env", "flags", "namespace", "account"),
    [
        pytest.param({"TELEPORT_NAMESPACE": "kp", "TELEPORT_SA_NAME": "kp-sa"}, [], "kp", "kp-sa", id="env"),
        pytest.param({}, ["--namespace", "ops", "--service-account", "agent.sa"], "ops", "agent.sa", id="flags"),
        pytest.param(
            {"TELEPORT_NAMESPACE": "kp", "TELEPORT_SA_NAME": "kp-sa"},
            ["-n", "ops", "--service-account", "ops-sa"],
            "ops",
            "ops-sa",
            id="flags-override-env",
        ),
        # TELEPORT_SA is what the shell script overwrites internally: setting it has no effect there either.
        pytest.param({"TELEPORT_SA": "ignored"}, [], "teleport", "teleport-sa", id="TELEPORT_SA-ignored"),
    ],
)
async def test_namespace_and_service_account_from_env_or_flags(
    nursery: trio.Nursery,
    tmp_path: Path,
    *,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    flags: list[str],
    namespace: str,
    account: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fake = await start_fake(nursery, token_delay=0.0)
    output = tmp_path / "kc"
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(output), *flags])

    assert result.code == 0, result.err
    assert f"serviceaccount/{account} created" in result.lines
    assert fake.get_object("serviceaccounts", account, namespace) is not None
    binding = fake.get_object("clusterrolebindings", "teleport-crb")
    assert binding is not None
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    written = load_yaml(output)
    assert written["users"] == [
        {"name": f"fake-cluster-{account}", "user": {"token": _secret_token(fake, namespace, account)}}
    ]


async def test_slow_token_controller_is_waited_for(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.5)
    output = tmp_path / "kubeconfig"
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(output)])

    assert result.code == 0, result.err
    assert "Waiting for the token controller to fill secret teleport/teleport-sa..." in result.lines
    assert load_yaml(output)["users"] == [
        {"name": "fake-cluster-teleport-sa", "user": {"token": _secret_token(fake, "teleport", "teleport-sa")}}
    ]


async def test_token_never_filled_times_out_and_writes_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=None)
    output = tmp_path / "kubeconfig"
    cluster_file = tmp_path / "kube_cluster.yaml"
    with trio.fail_after(10):
        result = await run_getkc(
            [
                *("--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(output)),
                *("--wait", "1", "--kube-cluster", "c1", "--kube-cluster-file", str(cluster_file)),
            ]
        )

    assert result.code == 1
    assert result.err.startswith("ERROR: the token controller did not fill secret teleport/teleport-sa within 1s"), (
        result.err
    )
    assert len(result.err.splitlines()) == 1
    assert "Waiting for the token controller to fill secret teleport/teleport-sa..." in result.lines
    assert not output.exists()
    assert not cluster_file.exists()
    left = {p.name for p in await trio.Path(tmp_path).iterdir()} - {"home"}  # conftest may put HOME here
    assert left == {"admin.yaml"}  # no temporary files either


async def test_pre_1_24_cluster_uses_the_auto_created_token_secret(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0, legacy_sa_secrets=True)
    output = tmp_path / "kubeconfig"
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(output)])

    assert result.code == 0, result.err
    sa = fake.get_object("serviceaccounts", "teleport-sa", "teleport")
    assert sa is not None
    legacy_name = sa["secrets"][0]["name"]
    assert legacy_name.startswith("teleport-sa-token-")
    assert fake.get_object("secrets", "teleport-sa", "teleport") is None  # no extra secret was made
    assert not [line for line in result.lines if line.startswith("secret/")]
    token = load_yaml(output)["users"][0]["user"]["token"]
    assert token == _secret_token(fake, "teleport", legacy_name)


def _jwt(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


async def test_expiring_token_is_reported(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=None)
    fake.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "teleport"}})
    fake.create_object(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "teleport-sa", "namespace": "teleport"}}
    )
    token = _jwt({"sub": "system:serviceaccount:teleport:teleport-sa", "exp": 4102444800})  # 2100-01-01
    fake.create_object(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": "teleport-sa",
                "namespace": "teleport",
                "annotations": {"kubernetes.io/service-account.name": "teleport-sa"},
            },
            "data": {
                "token": base64.b64encode(token.encode()).decode(),
                "ca.crt": base64.b64encode(fake.ca_pem).decode(),
            },
        }
    )
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")])

    assert result.code == 0, result.err
    assert "The token expires at 2100-01-01 00:00:00 UTC" in result.out
    assert result.err == ""  # said once, not again as the kubeconfig check's warning
    assert "secret/teleport-sa unchanged" in result.lines


async def test_default_paths_and_current_context_from_home(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    home = Path(str(tmp_path / "home"))
    (home / ".kube").mkdir(parents=True, exist_ok=True)
    (home / ".kube" / "config").write_bytes(fake.kubeconfig_yaml(ADMIN_TOKEN))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)

    result = await run_getkc(["--kube-cluster", "fake1"])

    assert result.code == 0, result.err
    assert stat.S_IMODE((work / "kubeconfig").stat().st_mode) == 0o600
    assert stat.S_IMODE((work / "kube_cluster.yaml").stat().st_mode) == 0o600
    assert "    kpctl create ./kube_cluster.yaml" in result.lines
