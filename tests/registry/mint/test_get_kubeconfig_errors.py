"""get_kubeconfig's failures: one ``ERROR:`` line, exit code 1, and no file written. Also what it refuses to
overwrite silently: a ClusterRoleBinding bound elsewhere and a ClusterRole an admin widened."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import pytest
import trio
import yaml

from registry.core.errors import BadParameter
from registry.mint.cli import main
from registry.mint.rbac import ROLE_RULES
from tests.fakes.kube_api import FakeKube
from tests.registry.mint.getkc_helpers import ADMIN_TOKEN, Result, admin_kubeconfig, run_getkc, start_fake, writes

RBAC = "rbac.authorization.k8s.io"


def _assert_failed(result: Result, expected: str, output: Path) -> None:
    code, err = result.code, result.err
    assert code == 1
    assert err.startswith(f"ERROR: {expected}"), err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert not output.exists()


# -- the admin's kubeconfig ---------------------------------------------------------------------------------


async def test_no_current_context(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "admin.yaml"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    result = await run_getkc(["--kubeconfig", str(kubeconfig), "-o", str(tmp_path / "kc")])
    _assert_failed(result, f"no current context in {kubeconfig}: pass --context NAME (available: one)", tmp_path / "kc")


async def test_no_kubeconfig_at_all_is_no_current_context(tmp_path: Path) -> None:
    result = await run_getkc(["-o", str(tmp_path / "kc")], env={"HOME": str(tmp_path / "empty-home")})
    _assert_failed(result, "no current context: ", tmp_path / "kc")
    assert "--kubeconfig FILE" in result.err


async def test_kubeconfig_env_var_is_honoured(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = await run_getkc(["-o", str(tmp_path / "kc")], env={"KUBECONFIG": str(missing), "HOME": str(tmp_path)})
    _assert_failed(result, f"no current context: KUBECONFIG={missing} does not exist", tmp_path / "kc")


async def test_unknown_context(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery)
    kubeconfig = admin_kubeconfig(fake, tmp_path)
    result = await run_getkc(["--kubeconfig", str(kubeconfig), "--context", "prod", "-o", str(tmp_path / "kc")])
    _assert_failed(result, f"context 'prod' not found in {kubeconfig} (available: fake)", tmp_path / "kc")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"clusters: [\n", "kubeconfig {path} is not valid YAML", id="malformed-yaml"),
        pytest.param(b"- a\n- b\n", "kubeconfig {path} is not a YAML mapping", id="not-a-mapping"),
        pytest.param(b"a: &x [1]\nb: *x\n", "no current context", id="aliases-are-harmless-data"),
        pytest.param(b"\xff\xfe\x00garbage", "kubeconfig {path} is not", id="binary"),
    ],
)
async def test_hostile_admin_kubeconfig(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "admin.yaml"
    path.write_bytes(content)
    result = await run_getkc(["--kubeconfig", str(path), "-o", str(tmp_path / "kc")])
    _assert_failed(result, expected.format(path=path), tmp_path / "kc")


async def test_huge_admin_kubeconfig_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "admin.yaml"
    with path.open("wb") as handle:
        handle.truncate(17 << 20)  # sparse: cheap to make, too big to read
    result = await run_getkc(["--kubeconfig", str(path), "-o", str(tmp_path / "kc")])
    _assert_failed(result, f"kubeconfig {path} is {17 << 20} bytes; the limit is {16 << 20}", tmp_path / "kc")


async def test_output_may_not_overwrite_the_admin_kubeconfig(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery)
    kubeconfig = admin_kubeconfig(fake, tmp_path)
    before = kubeconfig.read_bytes()
    result = await run_getkc(["--kubeconfig", str(kubeconfig), "-o", str(kubeconfig)])
    assert result.code == 1
    assert result.err == f"ERROR: --output {kubeconfig} is the kubeconfig being read; choose another path\n"
    assert kubeconfig.read_bytes() == before
    assert fake.requests == []


# -- flags and environment, checked before the cluster is touched ---------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        (["--namespace", "Bad_NS"], {}, "--namespace 'Bad_NS' is not a valid namespace name"),
        (["--namespace", "a" * 64], {}, "--namespace '" + "a" * 64 + "' is not a valid namespace name"),
        ([], {"TELEPORT_NAMESPACE": "../etc"}, "TELEPORT_NAMESPACE '../etc' is not a valid namespace name"),
        ([], {"TELEPORT_SA_NAME": "sa/../x"}, "TELEPORT_SA_NAME 'sa/../x' is not a valid service account name"),
        (["--service-account", "x\n"], {}, "--service-account 'x\\n' is not a valid service account name"),
        (["--role-name", "a/b"], {}, "--role-name 'a/b' is not a valid name"),
        (["--binding-name", ".."], {}, "--binding-name '..' is not a valid name"),
        (["--labels", "env"], {}, "--labels 'env': expected key=value"),
        (["--labels", "env=prod"], {}, "--labels and --register need --kube-cluster NAME"),
        (["--register"], {}, "--labels and --register need --kube-cluster NAME"),
        (["--kube-cluster", "a/b"], {}, 'kube_cluster "a/b": metadata.name'),
        (["--kube-cluster", "ok", "--labels", "bad key!=x"], {}, 'kube_cluster "ok"'),
        (["--kube-cluster", "c", "--register"], {"KUBEPORT_DATA_DIR": "/nonexistent"}, "no identity"),
    ],
)
async def test_bad_flags_fail_before_any_request(
    nursery: trio.Nursery,
    tmp_path: Path,
    *,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fake = await start_fake(nursery)
    result = await run_getkc(
        ["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc"), *flags]
    )
    _assert_failed(result, expected, tmp_path / "kc")
    assert fake.requests == []


@pytest.mark.parametrize("flag", ["--timeout", "--wait"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
async def test_bad_durations_are_usage_errors(tmp_path: Path, flag: str, value: str) -> None:
    result = await run_getkc([flag, value, "-o", str(tmp_path / "kc")])
    assert result.code == 2
    assert not (tmp_path / "kc").exists()


# -- the cluster says no ----------------------------------------------------------------------------------------


def _grant_some(fake: FakeKube, user: str) -> None:
    fake.grant(user, verbs=["get", "create"], resources=["namespaces", "serviceaccounts", "secrets"])
    fake.grant(user, verbs=["get"], resources=["clusterroles"], api_groups=[RBAC])


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        pytest.param(
            False,
            'forbidden: cannot get namespaces at the cluster scope: your kubeconfig user "bob" needs permission to '
            "get, create and update namespaces, serviceaccounts, secrets, clusterroles and clusterrolebindings",
            id="no-rights",
        ),
        pytest.param(
            True,
            "forbidden: cannot create clusterroles (rbac.authorization.k8s.io) at the cluster scope: your kubeconfig "
            'user "bob" needs permission to get, create and update namespaces, serviceaccounts, secrets, clusterroles '
            "and clusterrolebindings",
            id="may-not-create-clusterroles",
        ),
    ],
)
async def test_forbidden_names_the_missing_permission(
    nursery: trio.Nursery, tmp_path: Path, grant: bool, expected: str
) -> None:
    fake = await start_fake(nursery)
    fake.add_token("bob-token", "bob")
    if grant:
        _grant_some(fake, "bob")
    result = await run_getkc(
        ["--kubeconfig", str(admin_kubeconfig(fake, tmp_path, token="bob-token")), "-o", str(tmp_path / "kc")]
    )
    _assert_failed(result, expected, tmp_path / "kc")


async def test_rejected_credentials(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery)
    result = await run_getkc(
        ["--kubeconfig", str(admin_kubeconfig(fake, tmp_path, token="wrong")), "-o", str(tmp_path / "kc")]
    )
    _assert_failed(
        result, f'the Kubernetes API at {fake.url} rejected the credentials of context "fake"', tmp_path / "kc"
    )


async def test_server_error_is_one_line(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery)
    fake.fail_next("/apis/rbac.authorization.k8s.io/v1/clusterroles", 500, message="etcd is on fire")
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")])
    _assert_failed(
        result,
        "cannot get clusterrole.rbac.authorization.k8s.io/teleport-role at the cluster scope: "
        "HTTP 500: etcd is on fire",
        tmp_path / "kc",
    )


async def test_unreachable_server_closed_port(tmp_path: Path) -> None:
    # Bind then close: nothing listens on this port any more.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    kubeconfig = tmp_path / "admin.yaml"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    started = time.monotonic()
    result = await run_getkc(["--kubeconfig", str(kubeconfig), "--timeout", "1", "-o", str(tmp_path / "kc")])
    _assert_failed(result, f"cannot reach the Kubernetes API at https://127.0.0.1:{port}: ", tmp_path / "kc")
    assert "refused" in result.err.lower()
    assert time.monotonic() - started < 5


async def test_silent_server_times_out(nursery: trio.Nursery, tmp_path: Path) -> None:
    # A listener that never accepts: the kernel completes the TCP handshake, TLS never answers.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    fake = await start_fake(nursery)
    kubeconfig = tmp_path / "admin.yaml"
    kubeconfig.write_bytes(fake.kubeconfig_yaml(ADMIN_TOKEN, server=f"https://127.0.0.1:{port}"))
    started = time.monotonic()
    result = await run_getkc(["--kubeconfig", str(kubeconfig), "--timeout", "0.5", "-o", str(tmp_path / "kc")])
    _assert_failed(
        result, f"cannot reach the Kubernetes API at https://127.0.0.1:{port}: no answer within 0.5s", tmp_path / "kc"
    )
    assert time.monotonic() - started < 5
    await listeners[0].aclose()


async def test_wrong_ca_is_a_tls_error(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery)
    other = FakeKube()  # a cluster with another CA
    config = fake.kubeconfig(ADMIN_TOKEN)
    config["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(other.ca_pem).decode()
    kubeconfig = tmp_path / "admin.yaml"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = await run_getkc(["--kubeconfig", str(kubeconfig), "-o", str(tmp_path / "kc")])
    _assert_failed(
        result, f"cannot reach the Kubernetes API at {fake.url}: TLS certificate verification failed", tmp_path / "kc"
    )


# -- objects that exist already and differ ---------------------------------------------------------------------


def _binding(subjects: list[dict[str, str]], role: str = "teleport-role") -> dict[str, object]:
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "teleport-crb"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }


OTHER_SA = {"kind": "ServiceAccount", "name": "other-sa", "namespace": "other"}
OURS = {"kind": "ServiceAccount", "name": "teleport-sa", "namespace": "teleport"}


async def test_binding_bound_elsewhere_is_an_error_unless_forced(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    fake.create_object(_binding([OTHER_SA]))
    argv = ["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")]

    refused = await run_getkc(argv)
    _assert_failed(
        refused,
        'ClusterRoleBinding "teleport-crb" is bound to ServiceAccount other/other-sa, not to ServiceAccount '
        "teleport/teleport-sa; rebinding it would revoke that access. Pass --force to rebind it",
        tmp_path / "kc",
    )
    binding = fake.get_object("clusterrolebindings", "teleport-crb")
    assert binding is not None
    assert binding["subjects"] == [OTHER_SA]

    forced = await run_getkc([*argv, "--force"])
    assert forced.code == 0, forced.err
    assert "clusterrolebinding.rbac.authorization.k8s.io/teleport-crb configured" in forced.lines
    binding = fake.get_object("clusterrolebindings", "teleport-crb")
    assert binding is not None
    assert binding["subjects"] == [OURS]


async def test_binding_with_extra_subjects_is_left_alone_with_a_warning(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    fake.create_object(_binding([OURS, {"kind": "User", "name": "mallory", "apiGroup": RBAC}]))
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")])
    assert result.code == 0, result.err
    assert 'warning: ClusterRoleBinding "teleport-crb" also binds User mallory' in result.err
    assert not [r for r in writes(fake) if "clusterrolebindings" in r.path]


async def test_binding_to_another_role_needs_force_to_recreate(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    fake.create_object(_binding([OURS], role="cluster-admin"))
    argv = ["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")]
    refused = await run_getkc(argv)
    _assert_failed(refused, 'ClusterRoleBinding "teleport-crb" refers to ClusterRole "cluster-admin"', tmp_path / "kc")

    forced = await run_getkc([*argv, "--force"])
    assert forced.code == 0, forced.err
    binding = fake.get_object("clusterrolebindings", "teleport-crb")
    assert binding is not None
    assert binding["roleRef"]["name"] == "teleport-role"


def _role(rules: list[dict[str, list[str]]]) -> dict[str, object]:
    return {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": {"name": "teleport-role"}, "rules": rules}


async def test_widened_cluster_role_warns_and_is_kept_unless_forced(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    widened = [*(dict(r) for r in ROLE_RULES), {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    fake.create_object(_role(widened))
    argv = ["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")]

    kept = await run_getkc(argv)
    assert kept.code == 0, kept.err
    assert kept.err.startswith(
        'warning: ClusterRole "teleport-role" grants more than kubeport needs (an admin edited it?): '
        '{apiGroups=[""], resources=["secrets"], verbs=["get", "list"]}'
    ), kept.err
    assert "clusterrole.rbac.authorization.k8s.io/teleport-role unchanged" in kept.lines
    role = fake.get_object("clusterroles", "teleport-role")
    assert role is not None
    assert role["rules"] == widened

    forced = await run_getkc([*argv, "--force"])
    assert forced.code == 0, forced.err
    assert "clusterrole.rbac.authorization.k8s.io/teleport-role configured" in forced.lines
    role = fake.get_object("clusterroles", "teleport-role")
    assert role is not None
    assert role["rules"] == [dict(r) for r in ROLE_RULES]


async def test_narrowed_cluster_role_is_repaired(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    fake.create_object(_role([dict(ROLE_RULES[1])]))
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")])
    assert result.code == 0, result.err
    assert "clusterrole.rbac.authorization.k8s.io/teleport-role configured" in result.lines
    assert (
        'ClusterRole "teleport-role" lacked: impersonate users, impersonate groups, impersonate serviceaccounts, '
        "create selfsubjectaccessreviews.authorization.k8s.io, create selfsubjectrulesreviews.authorization.k8s.io"
    ) in result.lines
    role = fake.get_object("clusterroles", "teleport-role")
    assert role is not None
    assert role["rules"] == [dict(r) for r in ROLE_RULES]


async def test_existing_secret_of_another_type_is_not_used(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = await start_fake(nursery, token_delay=0.0)
    fake.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "teleport"}})
    fake.create_object(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "teleport-sa", "namespace": "teleport"},
            "data": {"token": "aGVsbG8="},
        }
    )
    result = await run_getkc(["--kubeconfig", str(admin_kubeconfig(fake, tmp_path)), "-o", str(tmp_path / "kc")])
    _assert_failed(
        result,
        'secret teleport/teleport-sa already exists but is not a service-account token for "teleport-sa" (type Opaque)',
        tmp_path / "kc",
    )


# -- the command line itself ------------------------------------------------------------------------------------


def test_debug_raises_instead_of_printing(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "admin.yaml"
    kubeconfig.write_text("{}")
    err = io.StringIO()
    with pytest.raises(BadParameter, match="no current context"):
        main(["--kubeconfig", str(kubeconfig), "--debug", "-o", str(tmp_path / "kc")], stdout=io.StringIO(), stderr=err)
    assert err.getvalue() == ""


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["--no-such-flag"], 2), (["extra-positional"], 2)])
def test_usage_returns_argparse_codes(argv: list[str], code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    captured = capsys.readouterr()
    assert ("usage: kubeport-get-kubeconfig" in captured.out) if code == 0 else ("usage:" in captured.err)
