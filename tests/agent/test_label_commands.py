"""Issue 7 §2, agent side: ``kubernetes_service.allowed_label_commands`` — its config shape, its resolution
at start, and which spellings of a label's argv[0] it allows (hostile ones included)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from agent.config import parse_config
from agent.config_render import render_config
from agent.label_commands import LabelCommandPolicy, resolve_service_command, search_path
from agent.state import command_specs
from registry.core.errors import BadParameter
from registry.core.resources import CommandLabel


def _exe(path: Path, body: str = "#!/bin/sh\necho hi\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    """A fake host: two PATH directories, an allowed program, a multi-call-style symlink to it, a
    same-named program later on PATH, a non-executable file and a directory with a program's name."""
    first, second = tmp_path / "bin1", tmp_path / "bin2"
    tool = _exe(first / "tool")
    _exe(second / "tool")  # shadowed by bin1/tool
    _exe(second / "other")
    (first / "sh-alias").symlink_to(tool)  # same file, other name (busybox style)
    (first / "plain").write_text("not executable")
    (first / "dir").mkdir()
    return {"first": first, "second": second, "tool": tool, "root": tmp_path}


def _config(allowed: object) -> str:
    doc = {
        "kubeport": {"registry": "r.example:3025", "token": "tok-123456"},
        "kubernetes_service": {"resources": [{"labels": {"*": "*"}}], "allowed_label_commands": allowed},
    }
    return yaml.safe_dump(doc)


# ---------------------------------------------------------------------------------------- config shape


def test_default_allows_nothing() -> None:
    doc = {"kubeport": {"registry": "r:3025"}, "kubernetes_service": {"resources": [{"labels": {"*": "*"}}]}}
    assert parse_config(yaml.safe_dump(doc), source="agent.yaml", env={}).kube.allowed_label_commands == ()


def test_names_and_absolute_paths_are_kept_as_written_without_duplicates() -> None:
    config = parse_config(_config(["python3", "/usr/bin/uname", "python3", "["]), source="agent.yaml", env={})
    assert config.kube.allowed_label_commands == ("python3", "/usr/bin/uname", "[")


@pytest.mark.parametrize(
    ("allowed", "complaint"),
    [
        ("python3", "must be a list"),
        ({"python3": True}, "must be a list"),
        ([5], "must be a string"),
        ([None], "must be a string"),
        ([""], "must not be empty"),
        (["   "], "must not be empty"),
        ([" python3"], "surrounding spaces"),
        (["./get_region.py"], "relative path depends on the working directory"),
        (["bin/tool"], "relative path"),
        (["../bin/tool"], "relative path"),
        (["~/bin/tool"], "relative path"),
        (["."], "bare name"),
        ([".."], "bare name"),
        (["/usr/bin/../bin/sh"], "without . or .. parts"),
        (["/usr/bin/./sh"], "without . or .. parts"),
        (["/usr//bin/sh"], "without . or .. parts"),
        (["//usr/bin/sh"], "without . or .. parts"),
        (["/usr/bin/"], "without . or .. parts"),
        (["*"], "wildcards are not supported"),
        (["python?"], "wildcards are not supported"),
        (["py\x1bthon"], "control characters"),
        (["py\u202ethon"], "control characters"),
        (["/" + "a" * 5000], "too long"),
        (["x"] * 300, "at most 256"),
    ],
)
def test_hostile_or_malformed_entries_are_config_errors(allowed: object, complaint: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_config(_config(allowed), source="agent.yaml", env={})
    message = caught.value.message
    assert message.startswith("agent.yaml: kubernetes_service.allowed_label_commands"), message
    assert complaint in message, message
    assert "tok-123456" not in message


def test_render_config_writes_a_commented_example_by_default_and_the_list_when_given() -> None:
    common = {"registry": "r:3025", "token": "t0ken-value", "token_file": None, "ca_pins": (), "data_dir": "/d"}
    default = render_config(**common)
    assert "# allowed_label_commands: [python3, /usr/bin/uname]" in default
    assert parse_config(default, source="x", env={}).kube.allowed_label_commands == ()
    given = render_config(**common, allowed_label_commands=["python3", "/usr/bin/uname"])
    assert parse_config(given, source="x", env={}).kube.allowed_label_commands == ("python3", "/usr/bin/uname")
    with pytest.raises(BadParameter, match="relative path"):
        render_config(**common, allowed_label_commands=["./x"])
    # A quote and newlines stay inside one (refused) entry: they never become keys of the file.
    with pytest.raises(BadParameter, match="control characters"):
        render_config(**common, allowed_label_commands=['python3"\nkubeport:\n  registry: evil:1'])


# ------------------------------------------------------------------------------------- start-up resolution


def test_entries_resolve_on_the_start_path_and_unresolvable_ones_stop_the_agent(host: dict[str, Path]) -> None:
    path_env = os.pathsep.join(["", "relative/dir", str(host["first"]), str(host["second"])])
    policy = LabelCommandPolicy.from_entries(["tool", "other", str(host["tool"])], path_env=path_env)
    assert policy.allowed == {str(host["tool"]), str(host["second"] / "other")}
    assert policy.dirs == (str(host["first"]), str(host["second"]))  # relative PATH entries are never searched
    for missing, complaint in [
        ("no-such-program", "was not found on the agent's PATH"),
        ("plain", "was not found"),  # not executable
        ("dir", "was not found"),  # a directory
        (str(host["first"] / "plain"), "is not an executable file"),
        (str(host["root"] / "nope"), "is not an executable file"),
    ]:
        with pytest.raises(BadParameter, match=complaint):
            LabelCommandPolicy.from_entries([missing], path_env=path_env)


def test_search_path_keeps_absolute_directories_once_in_order() -> None:
    assert search_path("/a:/b/../c::.:rel:/a/:/d") == ("/a", "/c", "/d")


# ------------------------------------------------------------------------------------ argv[0] decisions


def test_allowed_spellings_run_exactly_the_allowed_file(host: dict[str, Path]) -> None:
    path_env = os.pathsep.join([str(host["first"]), str(host["second"])])
    policy = LabelCommandPolicy.from_entries(["tool"], path_env=path_env)
    for spelling in ("tool", str(host["tool"])):
        decision = policy.check(spelling)
        assert (decision.executable, decision.refusal) == (str(host["tool"]), None), spelling


def test_hostile_spellings_are_refused(host: dict[str, Path]) -> None:
    first, second = host["first"], host["second"]
    path_env = os.pathsep.join([str(first), str(second)])
    policy = LabelCommandPolicy.from_entries(["tool"], path_env=path_env)
    os.symlink(host["tool"], host["root"] / "elsewhere")
    hostile = [
        "curl",
        "other",  # on PATH, executable, not allowed
        str(second / "tool"),  # same name, other file
        "sh-alias",  # the same file under another name: multi-call binaries dispatch on argv[0]
        str(first / "sh-alias"),
        str(host["root"] / "elsewhere"),  # a symlink to the allowed file from another place
        f"{first}/../bin1/tool",  # the allowed file through ..
        f"{first}/./tool",
        f"{first}//tool",
        "/" + str(host["tool"]),  # //...
        f"{host['tool']}/",
        "./tool",
        "bin1/tool",
        "../tool",
        "~/tool",
        ".",
        "..",
        "tool ",
        " tool",
        "to\x00ol",
        "",
        "TOOL",
        "t\u043eol",  # Cyrillic o
        "*",
        "x" * 10_000,
    ]
    for spelling in hostile:
        decision = policy.check(spelling)
        assert decision.executable is None, spelling
        assert decision.refusal is not None
        assert decision.refusal.startswith("command not allowed on this agent: "), decision.refusal
        assert "\x00" not in decision.refusal and len(decision.refusal) < 400


def test_a_policy_without_entries_refuses_even_the_most_ordinary_program() -> None:
    policy = LabelCommandPolicy((), search_path(os.environ.get("PATH", "")))
    assert (
        policy.check("echo").refusal
        == 'command not allowed on this agent: "echo" (kubernetes_service.allowed_label_commands)'
    )


def test_command_specs_carry_the_decision(host: dict[str, Path]) -> None:
    policy = LabelCommandPolicy.from_entries(["tool"], path_env=str(host["first"]))
    specs = command_specs(
        {
            "ok": CommandLabel(command=("tool", "-x"), period="1h"),
            "no": CommandLabel(command=("curl", "http://evil"), period="1h"),
        },
        timeout=5,
        policy=policy,
    )
    by_key = {spec.key: spec for spec in specs}
    assert (by_key["ok"].executable, by_key["ok"].refusal) == (str(host["tool"]), None)
    assert by_key["no"].executable is None
    assert by_key["no"].refusal is not None and '"curl"' in by_key["no"].refusal


def test_service_commands_resolve_at_start(host: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    path_env = str(host["first"])
    assert resolve_service_command("arch", "tool", path_env, "/somewhere") == str(host["tool"])
    assert resolve_service_command("arch", "/bin/uname", path_env, "/somewhere") is None  # run as written
    assert resolve_service_command("arch", "./probe.sh", path_env, "/srv/agent") == "/srv/agent/probe.sh"
    assert "relative to the agent's working directory" in caplog.text
    assert resolve_service_command("arch", "no-such-program", path_env, "/x") is None
    assert "was not found on the agent's PATH" in caplog.text
