"""Connection flags, ``--data-dir`` and ``--debug`` work before and after the subcommand (as with tctl and
kubectl), in the ``--flag=value`` form too; given twice, the last one wins; a flag a command does not use is
refused instead of ignored; empty, huge and control-character values are usage errors (exit 2).
``kubeport configure`` takes Teleport's ``--proxy`` for ``--registry`` and names both when neither is given."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from registry.cli import kpctl as kpctl_module
from registry.cli import kubeport_main
from registry.core.errors import BadParameter
from registry.host.cmdline import parse_command_line
from registry.server.serve import RegistryInfo
from tests.helpers import kpctl


def _port(info: RegistryInfo) -> int:
    return int(info.address.rsplit(":", 1)[1])


# -- kpctl against a live registry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--registry", "localhost:{port}", "status"],
        ["--registry=localhost:{port}", "status"],
        ["status", "--registry", "localhost:{port}"],
        ["status", "--registry=localhost:{port}"],
        ["--registry", "127.0.0.1:1", "status", "--registry", "localhost:{port}"],  # the last one wins
    ],
)
async def test_kpctl_registry_flag_in_any_position(registry: RegistryInfo, argv: list[str]) -> None:
    r = await kpctl(*(a.format(port=_port(registry)) for a in argv))
    assert r.code == 0, r.err
    assert f"localhost:{_port(registry)}" in r.out  # the Registry row shows the address that was used


async def test_kpctl_later_registry_flag_overrides_earlier(registry: RegistryInfo) -> None:
    r = await kpctl("--registry", f"localhost:{_port(registry)}", "status", "--registry", "127.0.0.1:1")
    assert r.code == 1
    assert r.err.startswith("ERROR: ") and "127.0.0.1:1" in r.err, r.err


@pytest.mark.parametrize(
    "argv",
    [
        ["-i", "{file}", "status"],
        ["--identity", "{file}", "status"],
        ["--identity={file}", "status"],
        ["-i{file}", "status"],
        ["status", "-i", "{file}"],
        ["status", "--identity={file}"],
        ["-i", "/nonexistent/identity", "status", "-i", "{file}"],
        ["tokens", "-i", "{file}", "ls"],
        ["-i", "{file}", "tokens", "ls"],
        ["tokens", "ls", "-i", "{file}"],
        ["-i", "{file}", "get", "kube_clusters", "--format", "text"],
    ],
)
async def test_kpctl_identity_flag_in_any_position(
    registry: RegistryInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.delenv("KUBEPORT_DATA_DIR")  # only the flag can lead kpctl to the identity
    copy = tmp_path / "elsewhere" / "admin.identity"
    copy.parent.mkdir()
    shutil.copy(registry.admin_identity, copy)
    r = await kpctl(*(a.format(file=copy) for a in argv))
    assert r.code == 0, r.err


@pytest.mark.parametrize("before", [True, False])
async def test_kpctl_data_dir_flag_in_any_position(
    registry: RegistryInfo, monkeypatch: pytest.MonkeyPatch, before: bool
) -> None:
    monkeypatch.delenv("KUBEPORT_DATA_DIR")
    flag = ["--data-dir", str(registry.data_dir)]
    r = await kpctl(*([*flag, "status"] if before else ["status", *flag]))
    assert r.code == 0, r.err
    r = await kpctl(*(["--data-dir=/nonexistent", "status", *flag] if before else [*flag, "status", "--data-dir=/x"]))
    assert (r.code == 0) is before, r.err  # the last one wins


@pytest.mark.parametrize(
    "argv", [["--debug", "get", "secrets"], ["get", "secrets", "--debug"], ["-d", "get", "secrets"]]
)
async def test_kpctl_debug_flag_in_any_position(registry: RegistryInfo, argv: list[str]) -> None:
    with pytest.raises(BadParameter):  # --debug shows the traceback: the error is not turned into a line
        await kpctl(*argv)
    assert (await kpctl("get", "secrets")).code == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--registry=", "status"],
        ["status", "--registry", "   "],
        ["--identity=", "status"],
        ["-i", "", "status"],
        ["--data-dir=", "status"],
        ["--registry", "a\nb", "status"],
        ["--registry", "a\x1b[2Jb", "status"],
        ["status", "--identity", "x\x00y"],
        ["--registry", "h" * 100_000, "status"],
        ["--registry"],
        ["status", "--registry"],
        ["--bogus", "status"],
    ],
)
async def test_kpctl_hostile_flag_values_are_usage_errors(registry: RegistryInfo, argv: list[str]) -> None:
    r = await kpctl(*argv)
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err
    assert len(r.err) < 2000  # a huge value is not echoed back whole


# -- kubeport's parser ------------------------------------------------------------------------------------


def kubeport_args(*argv: str) -> dict[str, object]:
    return vars(parse_command_line(kubeport_main.build_parser(), list(argv)))


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "/d", "start"],
        ["--data-dir=/d", "start"],
        ["start", "--data-dir", "/d"],
        ["start", "--data-dir=/d"],
        ["--data-dir", "/other", "start", "--data-dir", "/d"],
        ["--data-dir", "/d", "registry", "start"],
        ["registry", "--data-dir", "/d", "start"],
        ["registry", "start", "--data-dir", "/d"],
        ["--data-dir", "/d", "configure", "--registry", "r:1"],
        ["configure", "--registry", "r:1", "--data-dir", "/d"],
        ["--data-dir", "/d", "kube", "ls"],
        ["kube", "ls", "--data-dir", "/d"],
    ],
)
def test_kubeport_data_dir_in_any_position(argv: list[str]) -> None:
    assert kubeport_args(*argv)["data_dir"] == "/d"


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "start"],
        ["start", "--debug"],
        ["-d", "registry", "start"],
        ["registry", "-d", "start"],
        ["--debug", "agent", "start"],
        ["agent", "start", "--debug"],
        ["--debug", "install", "systemd"],
        ["--debug", "kube", "ls"],
    ],
)
def test_kubeport_debug_in_any_position(argv: list[str]) -> None:
    assert kubeport_args(*argv)["debug"] is True


def test_kubeport_defaults_when_no_flag_is_given() -> None:
    args = kubeport_args("start")
    assert args["data_dir"] is None
    assert args["debug"] is False
    assert args["listen"] == "127.0.0.1:3025"


@pytest.mark.parametrize(
    "argv",
    [
        ["--registry", "r:1", "start"],
        ["--registry", "r:1", "agent", "start"],
        ["agent", "--data-dir", "/d", "start"],
        ["-i", "/x", "registry", "start"],
        ["--data-dir", "/d", "install", "systemd"],
    ],
)
def test_kubeport_refuses_a_flag_the_command_does_not_use(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        kubeport_args(*argv)
    assert exc.value.code == 2
    assert "does not apply to" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--registry", "localhost:3025", "status"],
        ["status", "--registry", "localhost:3025"],
        ["-i", "/x", "tokens", "add", "--type=kube"],
        ["tokens", "add", "-i", "/x", "--type=kube"],
        ["kube", "--data-dir", "/d", "explain", "c"],
    ],
)
def test_kpctl_parses_flags_in_any_position(argv: list[str]) -> None:
    args = vars(parse_command_line(kpctl_module.build_parser(), argv))
    assert {"localhost:3025", "/x", "/d"} & {args["registry"], args["identity"], args["data_dir"]}


# -- kubeport configure --proxy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["configure", "--proxy=reg.example.com:3025"],
        ["configure", "--proxy", "reg.example.com:3025"],
        ["configure", "--registry=reg.example.com:3025"],
        ["--registry", "reg.example.com:3025", "configure"],
        ["configure", "--registry=other:1", "--proxy=reg.example.com:3025"],  # the last one wins
    ],
)
def test_configure_accepts_teleports_proxy_flag(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kubeport.yaml"
    code = kubeport_main.main([*argv, "--token", "t0ken-value", "--data-dir", str(tmp_path / "a"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert '"reg.example.com:3025"' in out.read_text()


def test_configure_without_a_registry_names_both_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = kubeport_main.main(["configure", "--token", "t", "-o", str(tmp_path / "k.yaml")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("ERROR: ") and err.count("\n") == 1, err
    assert "--registry" in err and "--proxy" in err
    assert not (tmp_path / "k.yaml").exists()


def test_help_of_every_command_mentions_flag_positions(capsys: pytest.CaptureFixture[str]) -> None:
    def help_text() -> str:
        return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width

    for parser_argv in (["--help"], ["start", "--help"], ["registry", "start", "--help"], ["kube", "ls", "--help"]):
        with pytest.raises(SystemExit):
            kubeport_main.build_parser().parse_args(parser_argv)
        assert "before or after the command" in help_text()
    with pytest.raises(SystemExit):
        kubeport_main.build_parser().parse_args(["start", "--help"])
    assert ":PORT or PORT" in help_text()  # --listen documents the bare port
    for parser_argv in (["--help"], ["status", "--help"], ["tokens", "add", "--help"]):
        with pytest.raises(SystemExit):
            kpctl_module.build_parser().parse_args(parser_argv)
        assert "before or after the command" in help_text()


@pytest.mark.parametrize("value", ["3025", ":3025", "", "a b:1", "http://h:1", "h" * 300])
def test_public_addr_needs_a_host(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        kubeport_args("registry", "start", "--public-addr", value)
    assert exc.value.code == 2
    assert "--public-addr" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["reg.example.com:3025", "reg.example.com", "[2001:db8::1]:3025", "10.0.0.1:443"])
def test_public_addr_accepted(value: str) -> None:
    assert kubeport_args("registry", "start", "--public-addr", value)["public_addr"] == [value]
