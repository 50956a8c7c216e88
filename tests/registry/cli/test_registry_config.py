"""``kubeport registry start --config FILE`` / ``kubeport start --config FILE``: the registry's YAML file.

What a user notices: Teleport's storage section maps to the store flags; flags on the command line win over
the file, the file over defaults; an unknown key, a wrong type or a hostile/huge/malformed file is one
ERROR line naming the key (never a traceback, never the file's secret contents).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from registry.cli import kubeport_main
from registry.core.errors import BadParameter
from registry.host.cmdline import parse_command_line
from registry.server.registry_config import MAX_CONFIG_BYTES, load_registry_config, parse_registry_config
from registry.server.store_config import DEFAULT_PREFIX

SECRET = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7secretsecret\n"
Q = json.dumps(SECRET)  # a YAML double-quoted scalar: the newlines stay real

FULL = """\
version: v3
teleport:
  data_dir: /var/lib/kp
  diag_addr: 127.0.0.1:9464
  storage:
    type: etcd
    peers: [10.0.0.1:2379, "10.0.0.2:2379"]
    prefix: /kubeport/prod/
    tls_ca_file: ca.pem
    tls_cert_file: client.pem
    tls_key_file: client-key.pem
auth_service:
  enabled: yes
  listen_addr: 0.0.0.0:3025
  public_addr: [r1.example.com:3025, r.example.com:3025]
  authentication:
    second_factor: "off"
proxy_service:
  enabled: "yes"
  kube_listen_addr: 0.0.0.0:3026
  kube_public_addr: kube.example.com:443
  tunnel_public_addr: r1.example.com:3026
"""


def parse(text: str) -> dict[str, Any]:
    return parse_registry_config(text, source="reg.yaml").values()


def refusal(text: str | bytes) -> str:
    with pytest.raises(BadParameter) as err:
        parse_registry_config(text, source="reg.yaml")
    message = err.value.message
    assert message.startswith("reg.yaml"), message
    return message


def args_for(tmp_path: Path, text: str, *argv: str, command: tuple[str, ...] = ("registry", "start")) -> Any:
    path = tmp_path / "reg.yaml"
    path.write_text(text)
    args = parse_command_line(kubeport_main.build_parser(), [*command, "--config", str(path), *argv])
    kubeport_main._apply_config(args, all_in_one=command == ("start",))
    return args


# -- the shape --------------------------------------------------------------------------------------------


def test_every_key_maps_to_its_flag() -> None:
    assert parse(FULL) == {
        "data_dir": "/var/lib/kp",
        "metrics_listen": "127.0.0.1:9464",
        "store": "etcds://10.0.0.1:2379,10.0.0.2:2379",  # tls_* files mean https, as the --etcd-* flags do
        "etcd_prefix": "/kubeport/prod/",
        "etcd_ca": "ca.pem",
        "etcd_cert": "client.pem",
        "etcd_key": "client-key.pem",
        "listen": "0.0.0.0:3025",
        "public_addr": ["r1.example.com:3025", "r.example.com:3025"],
        "second_factor": "off",
        "kube_listen": "0.0.0.0:3026",
        "kube_public_addr": "kube.example.com:443",
        "kube_tunnel_addr": "r1.example.com:3026",
    }


@pytest.mark.parametrize(
    ("storage", "store"),
    [
        ("{type: sqlite}", "sqlite"),
        ("{type: dir}", "sqlite"),  # Teleport's name for its local backend
        ("{type: etcd, peers: [127.0.0.1:2379]}", "etcd://127.0.0.1:2379"),
        ("{type: etcd, peers: ['http://a:1', 'http://b:2']}", "etcd://http://a:1,http://b:2"),
        ("{type: etcd, peers: ['https://a:1']}", "etcds://https://a:1"),
    ],
)
def test_storage_types(storage: str, store: str) -> None:
    assert parse(f"teleport:\n  storage: {storage}\n")["store"] == store


def test_an_empty_file_sets_nothing() -> None:
    assert parse("") == {}
    assert parse("# only a comment\n") == {}
    assert parse("teleport:\nauth_service:\n") == {}


def test_a_single_public_addr_string_is_a_list_of_one() -> None:
    assert parse("auth_service: {public_addr: r.example.com:3025}")["public_addr"] == ["r.example.com:3025"]


def test_the_store_config_built_from_the_file_is_the_flags_one(tmp_path: Path) -> None:
    args = args_for(tmp_path, FULL)
    config = kubeport_main._store_config(args)
    assert config.endpoints() == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert config.etcd_prefix == "/kubeport/prod/" and config.etcd_key == Path("client-key.pem")


# -- precedence ---------------------------------------------------------------------------------------------


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    args = args_for(tmp_path, FULL, "--listen", "127.0.0.1:4000", "--etcd-prefix", "/other/", "--data-dir", "/d")
    assert args.listen == "127.0.0.1:4000"
    assert args.etcd_prefix == "/other/"
    assert args.data_dir == "/d"
    # not given as flags: the file's
    assert args.kube_listen == "0.0.0.0:3026"
    assert args.second_factor == "off"
    assert args.store == "etcds://10.0.0.1:2379,10.0.0.2:2379"
    assert args.public_addr == ["r1.example.com:3025", "r.example.com:3025"]


def test_a_flag_equal_to_its_default_still_overrides_the_file(tmp_path: Path) -> None:
    args = args_for(tmp_path, FULL, "--second-factor", "otp", "--store", "sqlite", "--etcd-prefix", DEFAULT_PREFIX)
    assert args.second_factor == "otp"
    assert args.store == "sqlite"
    assert args.etcd_prefix == DEFAULT_PREFIX


def test_store_on_the_command_line_replaces_the_files_whole_storage_section(tmp_path: Path) -> None:
    args = args_for(tmp_path, FULL, "--store", "sqlite")
    assert kubeport_main._store_config(args).store == "sqlite"  # no --etcd-* left over from the file
    assert (args.etcd_prefix, args.etcd_ca, args.etcd_key) == (DEFAULT_PREFIX, None, None)
    args = args_for(tmp_path, FULL, "--store", "etcd://127.0.0.1:2379")
    assert kubeport_main._store_config(args).endpoints() == ["http://127.0.0.1:2379"]
    args = args_for(tmp_path, FULL, "--etcd-prefix", "/mine/")  # one etcd flag: the file's others stay
    assert (args.store, args.etcd_prefix, args.etcd_ca) == ("etcds://10.0.0.1:2379,10.0.0.2:2379", "/mine/", "ca.pem")


def test_without_the_key_the_defaults_stay(tmp_path: Path) -> None:
    args = args_for(tmp_path, "auth_service: {listen_addr: '127.0.0.1:4000'}\n")
    defaults = parse_command_line(kubeport_main.build_parser(), ["registry", "start"])
    assert args.listen == "127.0.0.1:4000"
    for dest in ("kube_listen", "second_factor", "store", "etcd_prefix", "metrics_listen", "data_dir"):
        assert getattr(args, dest) == getattr(defaults, dest), dest


def test_kubeport_start_takes_the_file_but_not_an_etcd_store(tmp_path: Path) -> None:
    args = args_for(tmp_path, "auth_service: {listen_addr: ':4000'}\nteleport: {storage: {type: sqlite}}\n",
                    command=("start",))  # fmt: skip
    assert args.listen == ":4000"
    for text in ("teleport: {storage: {type: etcd, peers: ['a:1']}}\n", "auth_service: {public_addr: a:1}\n"):
        with pytest.raises(BadParameter, match="kubeport registry start"):
            args_for(tmp_path, text, command=("start",))


def test_the_command_line_refuses_a_bad_file_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "reg.yaml"
    path.write_text("teleport:\n  storage:\n    type: etcd\n    peers: [a:1]\n    tls_key_file: k\n    colour: x\n")
    assert kubeport_main.main(["registry", "start", "--config", str(path), "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ERROR: ") and "teleport.storage.colour" in err
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_help_documents_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["registry", "start"], ["start"]):
        with pytest.raises(SystemExit):
            kubeport_main.build_parser().parse_args([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--config FILE" in text and "teleport.storage" in text and "override" in text


# -- strict parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour: x\n", '"colour"'),
        ("teleport: {data_dri: /x}\n", "(did you mean data_dir?)"),
        ("teleport: {storage: {type: etcd, peers: [a:1], peer: [b:1]}}\n", "teleport.storage.peer"),
        ("teleport: {storage: {type: sqlite, prefix: /x/}}\n", "teleport.storage.prefix"),
        ("auth_service: {authentication: {type: local}}\n", "auth_service.authentication.type"),
        ("proxy_service: {web_listen_addr: ':443'}\n", "proxy_service.web_listen_addr"),
    ],
)
def test_unknown_keys_are_named(text: str, key: str) -> None:
    message = refusal(text)
    assert "unknown key" in message and key in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("- a\n- b\n", "the file", "mapping"),
        ("just text\n", "the file", "mapping"),
        ("teleport: [a]\n", "teleport", "mapping"),
        ("teleport: {data_dir: 5}\n", "teleport.data_dir", "string"),
        ("teleport: {storage: etcd}\n", "teleport.storage", "mapping"),
        ("teleport: {storage: {type: 3}}\n", "teleport.storage.type", "string"),
        ("teleport: {storage: {type: etcd, peers: 'a:1'}}\n", "teleport.storage.peers", "list"),
        ("teleport: {storage: {type: etcd, peers: [1]}}\n", "teleport.storage.peers[0]", "string"),
        ("teleport: {storage: {type: etcd, peers: [a:1], prefix: [x]}}\n", "teleport.storage.prefix", "string"),
        ("auth_service: {listen_addr: 3025}\n", "auth_service.listen_addr", "string"),
        ("auth_service: {public_addr: [a:1, {b: 2}]}\n", "auth_service.public_addr[1]", "string"),
        ("proxy_service: {kube_public_addr: true}\n", "proxy_service.kube_public_addr", "string"),
        ("{1: x}\n", "keys", "string"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(text: str, key: str, expected: str) -> None:
    message = refusal(text)
    assert key in message and expected in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("version: v9\n", "version"),
        ("teleport: {storage: {}}\n", "type is required"),
        ("teleport: {storage: {type: dynamodb}}\n", "sqlite or etcd"),
        ("teleport: {storage: {type: etcd}}\n", "peers"),
        ("teleport: {storage: {type: etcd, peers: []}}\n", "peers"),
        ("teleport: {storage: {type: etcd, peers: ['a:1,b:2']}}\n", "one endpoint per list item"),
        ("teleport: {storage: {type: etcd, peers: ['ftp://a:1']}}\n", "peers[0]"),
        ("teleport: {storage: {type: etcd, peers: ['a']}}\n", "peers[0]"),
        ("teleport: {storage: {type: etcd, peers: ['http://a:1', 'https://b:1']}}\n", "mixes"),
        ("teleport: {storage: {type: etcd, peers: ['http://a:1'], tls_ca_file: ca}}\n", "https"),
        ("teleport: {storage: {type: etcd, peers: [a:1], prefix: ''}}\n", "empty"),
        ("auth_service: {enabled: no}\n", "auth_service.enabled"),
        ("proxy_service: {enabled: false}\n", "proxy_service.enabled"),
        ("auth_service: {authentication: {second_factor: webauthn}}\n", "otp, off"),
        ("auth_service: {listen_addr: 'http://a:1'}\n", "auth_service.listen_addr"),
        ("auth_service: {listen_addr: 'a:99999'}\n", "auth_service.listen_addr"),
        ("auth_service: {public_addr: ':3025'}\n", "needs a host"),
        ("auth_service: {public_addr: []}\n", "at least one"),
        ("proxy_service: {tunnel_public_addr: '3026'}\n", "needs a host"),
        ("teleport: {storage: {type: etcd, peers: [" + ", ".join(f"h{i}:1" for i in range(33)) + "]}}\n", "at most"),
    ],
)
def test_bad_values_are_refused(text: str, words: str) -> None:
    assert words in refusal(text)


# -- hostile, malformed, huge -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: &x [1]\nb: *x\n", "anchor"),
        ("teleport: !!python/object:os.system {}\n", "not allowed"),
        ("teleport: {data_dir: /a}\nteleport: {data_dir: /b}\n", "duplicate"),
        ("teleport:\n  <<: {data_dir: /a}\n", "merge"),
        ("teleport: {data_dir: /a}\n---\nteleport: {}\n", "one YAML document"),
        ("teleport: [" * 200 + "]" * 200, "nest"),
        ("teleport: {data_dir: /a\n", "not valid YAML"),
    ],
)
def test_hostile_and_malformed_yaml(text: str, words: str) -> None:
    assert words in refusal(text)


def test_a_billion_laughs_file_is_refused_before_expanding() -> None:
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for parent, child in zip("abcdefgh", "bcdefghi", strict=True):
        lol += f"{child}: &{child} [" + ", ".join([f"*{parent}"] * 9) + "]\n"
    assert "not allowed" in refusal(lol)


def test_not_utf8_is_refused() -> None:
    assert "UTF-8" in refusal(b"teleport: {data_dir: /\xff}\n")


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(BadParameter) as err:
        load_registry_config(path)
    assert "limit" in err.value.message and str(path) in err.value.message
    assert "limit" in refusal("# " + "x" * MAX_CONFIG_BYTES)


def test_a_missing_file_is_one_message(tmp_path: Path) -> None:
    with pytest.raises(BadParameter, match="cannot read --config file"):
        load_registry_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text",
    [
        SECRET,  # a key file given as --config: not a mapping
        f"teleport: {{storage: {{type: etcd, peers: [a:1], tls_key_file: {Q}}}}}\n",  # a PEM, not a path
        f"teleport: {{storage: {{type: etcd, peers: [a:1], tls_key_file: [{Q}]}}}}\n",
        f"auth_service: {{listen_addr: {Q}}}\n",
        f"teleport: {{storage: {{type: {Q}}}}}\n",
        f"teleport: {{{Q}: x}}\n",
        "teleport:\n  storage: {type: etcd, peers: [a:1]\n  tls_key_file: "
        + SECRET.replace("\n", " ")
        + "\n",  # bad YAML
    ],
)
def test_secrets_in_a_file_are_never_printed(text: str) -> None:
    message = refusal(text)
    assert "secretsecret" not in message and "BEGIN PRIVATE KEY" not in message


def test_apply_config_leaves_a_namespace_without_config_alone() -> None:
    args = argparse.Namespace(config=None, listen="x")
    kubeport_main._apply_config(args, all_in_one=False)
    assert vars(args) == {"config": None, "listen": "x"}


# -- registry migrate --config: the same file names the target etcd and the data dir -----------------------------


def migrate_args(tmp_path: Path, text: str, *argv: str) -> argparse.Namespace:
    path = tmp_path / "reg.yaml"
    path.write_text(text)
    return parse_command_line(kubeport_main.build_parser(), ["registry", "migrate", "--config", str(path), *argv])


def test_migrate_takes_its_target_and_data_dir_from_the_file(tmp_path: Path) -> None:
    args = migrate_args(tmp_path, FULL)
    target = kubeport_main._migrate_target(args)
    assert target.endpoints() == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert target.etcd_prefix == "/kubeport/prod/"
    assert (target.etcd_ca, target.etcd_cert, target.etcd_key) == (
        Path("ca.pem"), Path("client.pem"), Path("client-key.pem"),
    )  # fmt: skip
    assert kubeport_main._data_dir(args) == Path("/var/lib/kp")  # the SQLite store and etcd.key are read there


def test_migrate_flags_override_the_file(tmp_path: Path) -> None:
    args = migrate_args(tmp_path, FULL, "--etcd-prefix", "/other/", "--data-dir", "/d")
    target = kubeport_main._migrate_target(args)
    assert (target.etcd_prefix, target.etcd_ca) == ("/other/", Path("ca.pem"))  # the file's other keys stay
    assert kubeport_main._data_dir(args) == Path("/d")
    args = migrate_args(tmp_path, FULL, "--to", "etcd://127.0.0.1:2379")  # --to replaces the storage section
    target = kubeport_main._migrate_target(args)
    assert target.endpoints() == ["http://127.0.0.1:2379"]
    assert (target.etcd_prefix, target.etcd_ca, target.etcd_key) == (DEFAULT_PREFIX, None, None)
    args = parse_command_line(kubeport_main.build_parser(), ["--data-dir", "/g", "registry", "migrate",
                                                             "--config", str(tmp_path / "reg.yaml")])  # fmt: skip
    kubeport_main._migrate_target(args)
    assert kubeport_main._data_dir(args) == Path("/g")  # the global spelling of --data-dir is a flag too


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("auth_service: {listen_addr: ':4000'}\n", "needs a target"),  # no storage section
        ("", "needs a target"),
        ("teleport: {storage: {type: sqlite}}\n", "reg.yaml: teleport.storage is the SQLite store"),
        ("teleport: {storage: {type: dir}}\n", "needs an etcd target"),
    ],
)
def test_migrate_without_an_etcd_target_in_the_file_is_refused(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(BadParameter, match=words):
        kubeport_main._migrate_target(migrate_args(tmp_path, text))


def test_migrate_without_to_or_config_is_refused_naming_both() -> None:
    args = parse_command_line(kubeport_main.build_parser(), ["registry", "migrate"])
    with pytest.raises(BadParameter) as err:
        kubeport_main._migrate_target(args)
    assert "--to" in err.value.message and "--config" in err.value.message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (f"teleport:\n  storage:\n    type: etcd\n    peers: [a:1]\n    tls_key_file: {Q}\n", "printable"),
        ("teleport: {storage: {type: etcd, peers: [a:1], colour: x}}\n", "teleport.storage.colour"),
        ("teleport: {storage: {type: etcd, peers: [a:1]}}\n" + "#" * (MAX_CONFIG_BYTES + 10), "--config"),
        (b"\xff\xfe\x00binary", "reg.yaml"),
        ("a: &x [1]\nb: *x\n", "reg.yaml"),
    ],
)
def test_a_bad_migrate_config_is_one_error_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, words: str
) -> None:
    path = tmp_path / "reg.yaml"
    data = tmp_path / "d"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert kubeport_main.main(["registry", "migrate", "--config", str(path), "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ERROR: ") and words in err, err
    assert "MIIEvQ" not in err and "secretsecret" not in err
    assert not data.exists()  # refused before anything (etcd.key) was created


def test_migrate_help_documents_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        kubeport_main.build_parser().parse_args(["registry", "migrate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--config FILE" in text and "teleport.storage" in text and "override" in text


@pytest.mark.parametrize("value", ["", " ", "reg.yaml\x00", "x" * 100_000])
def test_empty_huge_or_control_migrate_config_values_are_usage_errors(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_command_line(kubeport_main.build_parser(), ["registry", "migrate", "--config", value])
    assert exc.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_a_missing_migrate_config_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kubeport_main.main(["registry", "migrate", "--config", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ERROR: ") and "nope.yaml" in err, err
