"""agent.config: parsing and validating the agent's YAML config (what an operator sees when it is wrong)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    DEFAULT_DATA_DIR,
    MAX_CONFIG_BYTES,
    AgentConfig,
    CommandConfig,
    load_config,
    parse_config,
)
from labels import matches_any
from registry.core.errors import BadParameter

TOKEN = "abcd123-insecure-do-not-use-this"
KUBEPORT = f"kubeport:\n  registry: registry.example.com:3025\n  token: {TOKEN}\n"
SERVE_ALL = 'kubernetes_service:\n  resources: [{labels: {"*": "*"}}]\n'


def parse(text: str, env: dict[str, str] | None = None) -> AgentConfig:
    return parse_config(text, source="agent.yaml", env={} if env is None else env)


def error_of(text: str | bytes, env: dict[str, str] | None = None) -> str:
    with pytest.raises(BadParameter) as info:
        parse_config(text, source="agent.yaml", env={} if env is None else env)
    message = info.value.message
    assert message.startswith(("agent.yaml: ", "agent.yaml is ")), message
    assert TOKEN not in message
    return message


# --------------------------------------------------------------------------------------- seed snippets


def test_seed_snippet_serve_everything_verbatim() -> None:
    cfg = parse(
        KUBEPORT
        + """\
kubernetes_service:
  enabled: "yes"
  resources:
  - labels:
      "*": "*"
"""
    )
    assert cfg.kube.enabled is True
    assert [dict(item["labels"]) for item in cfg.kube.resources] == [{"*": "*"}]
    assert matches_any(cfg.kube.resources, {})
    assert matches_any(cfg.kube.resources, {"env": "anything"})


def test_seed_snippet_two_items_verbatim_selects_as_documented() -> None:
    cfg = parse(
        KUBEPORT
        + """\
kubernetes_service:
  enabled: "yes"
  resources:
  - labels:
      "env": "prod"
      "region": "us-east-2"
  - labels:
      "env": "test"
      "region": "us-west-1"
"""
    )
    items = cfg.kube.resources
    assert len(items) == 2
    # The documented counter-example: each label matches a different item, so neither item matches.
    assert not matches_any(items, {"env": "prod", "region": "us-west-1"})
    assert matches_any(items, {"env": "test", "region": "us-west-1"})
    assert matches_any(items, {"env": "prod", "region": "us-east-2", "team": "x"})


def test_full_example_from_the_brief() -> None:
    cfg = parse(
        f"""\
version: v1
kubeport:
  registry: registry.example.com:3025
  token: {TOKEN}
  ca_pin: sha256:{"AB" * 32}
  data_dir: /srv/kubeport
  nodename: myhost
  heartbeat_ttl: 5m
  log_level: debug
kubernetes_service:
  enabled: "yes"
  listen_addr: 0.0.0.0:3027
  public_addr: kube.example.com:3027
  kubeconfig_file: /etc/kubeport/kubeconfig
  labels: {{env: prod}}
  commands:
  - name: arch
    command: [uname, -p]
    period: 1h
  - name: hourly
    command: [date]
    schedule: "0  * * * *"
  resources:
  - labels:
      "*": "*"
"""
    )
    assert cfg.registry == ("registry.example.com", 3025)
    assert cfg.token == TOKEN
    assert cfg.token_file is None
    assert cfg.ca_pins == ("sha256:" + "ab" * 32,)
    assert cfg.data_dir == Path("/srv/kubeport")
    assert cfg.nodename == "myhost"
    assert cfg.heartbeat_ttl == 300.0
    assert cfg.log_level == "debug"
    kube = cfg.kube
    assert kube.listen_addr == ("0.0.0.0", 3027)
    assert kube.public_addr == "kube.example.com:3027"
    assert kube.kubeconfig_file == Path("/etc/kubeport/kubeconfig")
    assert dict(kube.labels) == {"env": "prod"}
    assert kube.commands == (
        CommandConfig("arch", ("uname", "-p"), 3600.0, None),
        CommandConfig("hourly", ("date",), None, "0 * * * *"),
    )


def test_defaults() -> None:
    cfg = parse("kubeport:\n  registry: reg.example.com\n" + SERVE_ALL)
    assert cfg.registry == ("reg.example.com", 3025)
    assert cfg.token is None  # already joined: the identity lives in data_dir
    assert cfg.token_file is None
    assert cfg.ca_pins == ()
    assert cfg.data_dir == DEFAULT_DATA_DIR == Path("/var/lib/kubeport")
    assert cfg.nodename == socket.gethostname()
    assert cfg.heartbeat_ttl == 600.0
    assert cfg.log_level == "info"
    assert cfg.kube.listen_addr == ("0.0.0.0", 3027)
    assert cfg.kube.public_addr == f"{socket.gethostname()}:3027"
    assert cfg.kube.kubeconfig_file is None
    assert dict(cfg.kube.labels) == {}
    assert cfg.kube.commands == ()


def test_data_dir_from_environment_unless_the_file_sets_it() -> None:
    env = {"KUBEPORT_DATA_DIR": "/tmp/kp"}
    assert parse(KUBEPORT + SERVE_ALL, env).data_dir == Path("/tmp/kp")
    text = KUBEPORT + "  data_dir: /opt/kp\n" + SERVE_ALL
    assert parse(text, env).data_dir == Path("/opt/kp")


def test_kubeconfig_file_alone_is_enough_to_serve() -> None:
    cfg = parse(KUBEPORT + "kubernetes_service:\n  kubeconfig_file: /etc/kubeconfig\n")
    assert cfg.kube.kubeconfig_file == Path("/etc/kubeconfig")
    assert cfg.kube.resources == ()


def test_token_file_instead_of_token() -> None:
    cfg = parse("kubeport:\n  registry: r\n  token_file: /etc/kubeport/token\n" + SERVE_ALL)
    assert cfg.token is None
    assert cfg.token_file == Path("/etc/kubeport/token")


def test_config_is_immutable() -> None:
    cfg = parse(KUBEPORT + "kubernetes_service:\n  labels: {a: b}\n" + '  resources: [{labels: {"*": "*"}}]\n')
    with pytest.raises(AttributeError):
        cfg.nodename = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.kube.labels["a"] = "c"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.kube.resources[0]["labels"]["*"] = "x"


# ------------------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("reg", ("reg", 3025)),
        ("reg.example.com:443", ("reg.example.com", 443)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("'[::1]'", ("::1", 3025)),
        ("'[::1]:4000'", ("::1", 4000)),
        ("my_host:65535", ("my_host", 65535)),
    ],
)
def test_registry_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse(f"kubeport:\n  registry: {value}\n" + SERVE_ALL).registry == expected


@pytest.mark.parametrize(
    "value",
    [
        "'reg-a:3025,reg-b'",
        "' reg-a:3025 , reg-b:3025 '",
        "[reg-a:3025, reg-b]",
        "[reg-a, reg-b:3025, reg-a:3025]",  # a duplicate is dropped, the order kept
    ],
)
def test_several_registries_as_a_comma_list_or_a_yaml_list(value: str) -> None:
    cfg = parse(f"kubeport:\n  registry: {value}\n" + SERVE_ALL)
    assert cfg.registries == (("reg-a", 3025), ("reg-b", 3025))
    assert cfg.registry == ("reg-a", 3025)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("reg:70000", 'kubeport.registry "reg:70000": port 70000 is out of range 1-65535'),
        ("reg:0", "port 0 is out of range"),
        ("reg:http", 'kubeport.registry "reg:http": the port must be a number between 1 and 65535'),
        ("reg:-1", "the port must be a number"),
        ("https://reg:3025", "must be HOST:PORT, not a URL"),
        ("'::1'", "put an IPv6 address in brackets"),
        ("'a:b:c'", "put an IPv6 address in brackets"),
        ("'[::1'", "missing ']'"),
        ("'[nothex]:1'", "invalid IPv6 address"),
        ("'[::1]x'", "unexpected text after ']'"),
        (":3025", 'kubeport.registry ":3025": missing host'),
        ("'3025'", "missing host"),  # digits alone are a port, never a host name
        ("'a b:1'", 'kubeport.registry "a b:1" contains spaces or control characters'),
        ('"a\\u0007:1"', "contains spaces or control characters"),
        ("'-bad-:1'", "invalid host name"),
        ("3025", "kubeport.registry must be a string (quote it in YAML), got int 3025"),
        ("''", "kubeport.registry must not be empty"),
        ("{a: b}", "kubeport.registry must be a string"),
        ("[]", "kubeport.registry must name at least one registry"),
        ("'a:1,'", "kubeport.registry: an empty registry address (check for a stray comma)"),
        ("'a:1,,b:2'", "an empty registry address"),
        ("[a:1, 3025]", "kubeport.registry[1] must be a string"),
        ("[a:1, 'b:99999']", 'kubeport.registry[1] "b:99999": port 99999 is out of range'),
        ("'a:1,https://b:2'", "must be HOST:PORT, not a URL"),
        ("[[a:1]]", "kubeport.registry[0] must be a string"),
        ("'" + ",".join(f"r{i}:1" for i in range(17)) + "'", "names 17 registries; at most 16 are allowed"),
        ("[" + ", ".join(f"r{i}:1" for i in range(1000)) + "]", "at most 16 are allowed"),
    ],
)
def test_bad_registry_addresses(value: str, fragment: str) -> None:
    assert fragment in error_of(f"kubeport:\n  registry: {value}\n" + SERVE_ALL)


@pytest.mark.parametrize(
    ("listen", "public", "expected_listen", "expected_public"),
    [
        ("127.0.0.1:8443", None, ("127.0.0.1", 8443), "127.0.0.1:8443"),
        ("':3028'", None, ("0.0.0.0", 3028), "myhost:3028"),
        ("'[::]:3027'", None, ("::", 3027), "myhost:3027"),
        ("'3028'", None, ("0.0.0.0", 3028), "myhost:3028"),  # a bare port, as --listen takes it
        ("127.0.0.1:0", None, ("127.0.0.1", 0), "127.0.0.1:0"),  # port 0: pick a free port (tests)
        ("0.0.0.0:4000", "kube.example.com", ("0.0.0.0", 4000), "kube.example.com:4000"),
        ("0.0.0.0:4000", "kube.example.com:443", ("0.0.0.0", 4000), "kube.example.com:443"),
        (None, "[kube.example.com:443]", ("0.0.0.0", 3027), "kube.example.com:443"),  # Teleport's list form
        (None, "'[2001:db8::1]'", ("0.0.0.0", 3027), "[2001:db8::1]:3027"),
    ],
)
def test_listen_and_public_addr(
    listen: str | None, public: str | None, expected_listen: tuple[str, int], expected_public: str
) -> None:
    text = KUBEPORT.replace("kubeport:\n", "kubeport:\n  nodename: myhost\n") + SERVE_ALL
    if listen is not None:
        text += f"  listen_addr: {listen}\n"
    if public is not None:
        text += f"  public_addr: {public}\n"
    cfg = parse(text)
    assert cfg.kube.listen_addr == expected_listen
    assert cfg.kube.public_addr == expected_public


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (
            "listen_addr: 0.0.0.0:70000",
            'kubernetes_service.listen_addr "0.0.0.0:70000": port 70000 is out of range 0-65535',
        ),
        ("public_addr: kube:70000", 'kubernetes_service.public_addr "kube:70000": port 70000 is out of range 1-65535'),
        ("public_addr: [a:1, b:2]", "kubernetes_service.public_addr: give one address, got a list of 2"),
        ("public_addr: ':443'", 'kubernetes_service.public_addr ":443": missing host'),
    ],
)
def test_bad_service_addresses(line: str, fragment: str) -> None:
    assert fragment in error_of(KUBEPORT + SERVE_ALL + f"  {line}\n")


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("value", ['"yes"', "yes", '"Yes"', "on", '"ON"', "true", "1", '"1"', "True"])
def test_enabled_true_spellings(value: str) -> None:
    assert parse(KUBEPORT + SERVE_ALL + f"  enabled: {value}\n").kube.enabled is True


@pytest.mark.parametrize("value", ['"no"', "no", "off", "false", "0", '"0"'])
def test_disabled_service_has_nothing_to_serve(value: str) -> None:
    message = error_of(KUBEPORT + SERVE_ALL + f"  enabled: {value}\n")
    assert "kubernetes_service is disabled" in message
    assert "nothing to serve" in message


@pytest.mark.parametrize("value", ['"maybe"', "2", "[yes]", "''"])
def test_enabled_garbage(value: str) -> None:
    assert "kubernetes_service.enabled must be yes/no/true/false/on/off/1/0" in error_of(
        KUBEPORT + SERVE_ALL + f"  enabled: {value}\n"
    )


@pytest.mark.parametrize(
    "service",
    [
        "kubernetes_service:\n  enabled: yes\n",
        "kubernetes_service:\n  resources: []\n",
        "kubernetes_service:\n  labels: {env: prod}\n",
        "kubernetes_service:\n",
        "",
    ],
)
def test_neither_static_clusters_nor_resources(service: str) -> None:
    assert error_of(KUBEPORT + service) == (
        "agent.yaml: kubernetes_service has neither static clusters (kubeconfig_file) "
        "nor resources selectors: nothing to serve"
    )


@pytest.mark.parametrize(
    ("pins", "expected"),
    [
        ("sha256:" + "0f" * 32, ("sha256:" + "0f" * 32,)),
        ("[sha256:" + "AA" * 32 + ", sha256:" + "bb" * 32 + "]", ("sha256:" + "aa" * 32, "sha256:" + "bb" * 32)),
        ("[sha256:" + "aa" * 32 + ", SHA256:" + "AA" * 32 + "]", ("sha256:" + "aa" * 32,)),  # duplicates merge
        ("[]", ()),
    ],
)
def test_ca_pins(pins: str, expected: tuple[str, ...]) -> None:
    assert parse(KUBEPORT + f"  ca_pin: {pins}\n" + SERVE_ALL).ca_pins == expected


@pytest.mark.parametrize(
    ("pins", "fragment"),
    [
        ("sha1:abcd", 'kubeport.ca_pin: expected sha256:<64 hex digits>, got "sha1:abcd"'),
        ("sha256:" + "g" * 64, "kubeport.ca_pin: expected sha256:<64 hex digits>"),
        ("[sha256:" + "a" * 64 + ", 12]", "kubeport.ca_pin[1] must be a string"),
        ("{a: b}", "kubeport.ca_pin must be a pin or a list of pins, got a mapping"),
    ],
)
def test_bad_ca_pins(pins: str, fragment: str) -> None:
    assert fragment in error_of(KUBEPORT + f"  ca_pin: {pins}\n" + SERVE_ALL)


@pytest.mark.parametrize(
    ("value", "expected"), [("debug", "debug"), ("INFO", "info"), ("warn", "warning"), ("Error", "error")]
)
def test_log_levels(value: str, expected: str) -> None:
    assert parse(KUBEPORT + f"  log_level: {value}\n" + SERVE_ALL).log_level == expected


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("log_level: trace", 'kubeport.log_level must be one of debug, info, warning, error, got "trace"'),
        ("heartbeat_ttl: 500ms", 'kubeport.heartbeat_ttl: "500ms" is shorter than the minimum of 1s'),
        ("heartbeat_ttl: 1d", 'kubeport.heartbeat_ttl: "1d": unknown unit "d" (use 24h)'),
        ("heartbeat_ttl: 600", "kubeport.heartbeat_ttl must be a Go duration string"),
        ("nodename: 'two words'", "kubeport.nodename must be at most 253 printable characters"),
        ('nodename: "bell\\a"', "kubeport.nodename must be at most 253 printable characters"),
        ("data_dir: ''", "kubeport.data_dir must not be empty"),
        ("data_dir: 5", "kubeport.data_dir must be a string"),
        ("token_file: /etc/token", "kubeport.token and kubeport.token_file are both set; keep exactly one"),
    ],
)
def test_bad_kubeport_values(line: str, fragment: str) -> None:
    assert fragment in error_of(KUBEPORT + f"  {line}\n" + SERVE_ALL)


def test_version_only_v1() -> None:
    assert parse("version: v1\n" + KUBEPORT + SERVE_ALL).registry[1] == 3025
    assert 'version: only "v1" is supported, got "v3"' in error_of("version: v3\n" + KUBEPORT + SERVE_ALL)


def test_registry_is_required() -> None:
    assert error_of("kubeport:\n  token: x\n" + SERVE_ALL) == "agent.yaml: kubeport.registry is required"
    assert error_of(SERVE_ALL).startswith("agent.yaml: kubeport.registry is required")


def test_bad_data_dir_environment_is_named() -> None:
    assert "$KUBEPORT_DATA_DIR must not contain NUL" in error_of(KUBEPORT + SERVE_ALL, {"KUBEPORT_DATA_DIR": "a\0"})


# --------------------------------------------------------------------------------- unknown and foreign


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            KUBEPORT + "kubernetes_service:\n  resource:\n  - labels: {a: b}\n",
            "agent.yaml: unknown key kubernetes_service.resource (did you mean resources?)",
        ),
        (
            KUBEPORT + "  regsitry: x\n" + SERVE_ALL,
            "agent.yaml: unknown key kubeport.regsitry (did you mean registry?)",
        ),
        (KUBEPORT + "  ca_pins: []\n" + SERVE_ALL, "agent.yaml: unknown key kubeport.ca_pins (did you mean ca_pin?)"),
        (
            KUBEPORT + SERVE_ALL + "kubernets_service: {}\n",
            "agent.yaml: unknown key kubernets_service (did you mean kubernetes_service?)",
        ),
        (
            KUBEPORT + SERVE_ALL + "  commands: [{name: a, command: [b], perod: 1h}]\n",
            "agent.yaml: unknown key kubernetes_service.commands[0].perod (did you mean period?)",
        ),
    ],
)
def test_unknown_keys_get_a_close_match_hint(text: str, message: str) -> None:
    assert error_of(text) == message


def test_unknown_key_without_a_close_match_lists_the_known_keys() -> None:
    message = error_of(KUBEPORT + "  zzz: 1\n" + SERVE_ALL)
    assert message.startswith("agent.yaml: unknown key kubeport.zzz (known keys: registry, token, token_file")


def test_kube_cluster_name_is_explained() -> None:
    message = error_of(KUBEPORT + SERVE_ALL + "  kube_cluster_name: local\n")
    assert "kubernetes_service.kube_cluster_name: in-pod credentials" in message
    assert "use kubeconfig_file" in message


@pytest.mark.parametrize("section", ["teleport", "ssh_service", "proxy_service", "auth_service", "db_service"])
def test_teleport_sections_are_explained(section: str) -> None:
    message = error_of(KUBEPORT + SERVE_ALL + f"{section}:\n  enabled: yes\n")
    if section == "teleport":
        assert "kubeport: section" in message
    else:
        assert f"agent.yaml: {section}: kubeport has no such service" in message


def test_resources_aws_block_from_teleport_is_accepted_and_dropped() -> None:
    cfg = parse(
        KUBEPORT + "kubernetes_service:\n  resources:\n  - labels: {env: prod}\n    aws: {assume_role_arn: x}\n"
    )
    assert [dict(i) for i in cfg.kube.resources] == [{"labels": {"env": "prod"}}]


# ----------------------------------------------------------------------------------- labels, selectors


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (
            'kubernetes_service:\n  resources:\n  - labels:\n      "a b": x\n',
            'agent.yaml: kubernetes_service.resources[0].labels: invalid label key "a b": '
            "allowed characters are A-Z a-z 0-9 / . _ : * -",
        ),
        (
            "kubernetes_service:\n  labels: {env: 1}\n  kubeconfig_file: /k\n",
            "agent.yaml: kubernetes_service.labels.env must be a string (got int 1)",
        ),
        (
            "kubernetes_service:\n  labels: {env: yes}\n  kubeconfig_file: /k\n",
            "agent.yaml: kubernetes_service.labels.env must be a string (got bool true)",
        ),
        (
            "kubernetes_service:\n  labels: {'еnv': x}\n  kubeconfig_file: /k\n",  # Cyrillic е
            'agent.yaml: kubernetes_service.labels: invalid label key "\\u0435nv"',
        ),
        ("kubernetes_service:\n  labels: [a]\n  kubeconfig_file: /k\n", "kubernetes_service.labels must be a mapping"),
        ("kubernetes_service:\n  labels: []\n  kubeconfig_file: /k\n", "kubernetes_service.labels must be a mapping"),
        ("kubernetes_service:\n  resources: [{labels: {}}]\n", "kubernetes_service.resources[0].labels is empty"),
        ("kubernetes_service:\n  resources: [{}]\n", 'kubernetes_service.resources[0]: missing "labels"'),
        ("kubernetes_service:\n  resources: {labels: {a: b}}\n", "kubernetes_service.resources must be a list"),
        (
            "kubernetes_service:\n  resources: [{labels: {env: '^(prod$'}}]\n",
            "kubernetes_service.resources[0].labels.env: invalid regular expression",
        ),
    ],
)
def test_bad_labels_and_selectors(service: str, message: str) -> None:
    if not message.startswith("agent.yaml: "):
        message = "agent.yaml: " + message
    assert error_of(KUBEPORT + service).startswith(message)


# ------------------------------------------------------------------------------------------- commands


def command_error(item: str) -> str:
    return error_of(KUBEPORT + SERVE_ALL + f"  commands:\n  - {item}\n")


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("{name: arch, command: [], period: 1h}", "kubernetes_service.commands[0].command is empty"),
        ("{name: arch, command: 'uname -p', period: 1h}", "command must be a list (argv, never run through a shell)"),
        ("{name: arch, command: [sleep, 5], period: 1h}", "commands[0].command[1] must be a string (quote it in YAML)"),
        ("{name: arch, command: [''], period: 1h}", "commands[0].command[0] (the program) must not be empty"),
        ("{name: arch, command: [uname], period: 1d}", 'commands[0].period: "1d": unknown unit "d" (use 24h)'),
        ("{name: arch, command: [uname], period: 500ms}", 'commands[0].period: "500ms" is shorter than the minimum'),
        ("{name: arch, command: [uname], period: 60}", "commands[0].period must be a Go duration string"),
        ("{name: arch, command: [uname], schedule: '61 * * * *'}", "commands[0].schedule"),
        ("{name: arch, command: [uname], schedule: '* * *'}", "expected 5 fields"),
        ("{name: arch, command: [uname], period: 1h, schedule: '@hourly'}", "set exactly one of period"),
        ("{name: arch, command: [uname]}", "set exactly one of period"),
        ("{command: [uname], period: 1h}", "commands[0].name is required"),
        ("{name: 'a b', command: [uname], period: 1h}", 'commands[0].name: invalid label key "a b"'),
        ("[uname]", "kubernetes_service.commands[0] must be a mapping, got a list"),
    ],
)
def test_bad_commands(item: str, fragment: str) -> None:
    assert fragment in command_error(item)


@pytest.mark.parametrize(
    ("service", "fragment"),
    [
        (
            "  labels: {kubeport.dev/origin: dynamic}\n",
            'kubernetes_service.labels: label key "kubeport.dev/origin" uses the prefix kubeport.dev/, reserved',
        ),
        (
            "  commands: [{name: kubeport.dev/x, command: [a], period: 1h}]\n",
            'kubernetes_service.commands[0].name: label key "kubeport.dev/x" uses the prefix kubeport.dev/',
        ),
    ],
)
def test_reserved_label_prefix(service: str, fragment: str) -> None:
    assert fragment in error_of(KUBEPORT + SERVE_ALL + service)


def test_duplicate_command_names() -> None:
    text = (
        KUBEPORT
        + SERVE_ALL
        + "  commands:\n  - {name: a, command: [x], period: 1h}\n  - {name: a, command: [y], period: 2h}\n"
    )
    assert 'kubernetes_service.commands[1].name: duplicate command label "a"' in error_of(text)


def test_schedule_is_normalised() -> None:
    cfg = parse(KUBEPORT + SERVE_ALL + "  commands:\n  - {name: a, command: [x], schedule: '@HOURLY'}\n")
    assert cfg.kube.commands[0].schedule == "@hourly"
    assert cfg.kube.commands[0].period is None


# ------------------------------------------------------------------------------------ hostile documents


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kubeport: [unclosed\n", "agent.yaml is not valid YAML: line 2, column 1: "),
        ("kubeport:\n\tregistry: x\n", "agent.yaml is not valid YAML: line 2, column 1: "),
        ("- a\n- b\n", "expected a mapping with kubeport: and kubernetes_service: sections, got a list"),
        ("just a string\n", 'got "just a string"'),
        ("", "the file is empty"),
        ("a: 1\n---\nb: 2\n", "agent.yaml: expected one YAML document, found 2"),
        ("!!python/object:os.system {}\n", 'python/object:os.system" is not allowed'),
        ("1: x\n", "the top level: keys must be strings, got int 1"),
        (KUBEPORT + "kubeport:\n  registry: other\n" + SERVE_ALL, 'line 4, column 1: duplicate key "kubeport"'),
    ],
)
def test_malformed_documents(text: str, fragment: str) -> None:
    assert fragment in error_of(text)


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    message = error_of("\n".join(lines) + "\n")
    assert "agent.yaml is not valid YAML: line 1, column 5: YAML anchors (&a0) are not allowed" in message


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 500_000,
        "a: " + "{a: " * 100_000 + "}" * 100_000,
        "".join(" " * i + "a:\n" for i in range(100)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-mappings"],
)
def test_deep_nesting_is_refused(text: str) -> None:
    assert "nested more than 32 levels deep" in error_of(text)


def test_two_megabyte_file_is_refused_before_parsing() -> None:
    text = KUBEPORT + SERVE_ALL + "# " + "x" * (2 * 1024 * 1024) + "\n"
    assert f"the limit is {MAX_CONFIG_BYTES}" in error_of(text)
    assert f"the limit is {MAX_CONFIG_BYTES}" in error_of(text.encode())


def test_not_utf8() -> None:
    assert "agent.yaml is not UTF-8 text: invalid byte 0xff" in error_of(b"kubeport:\n  registry: \xff\xfe\n")


def test_utf8_bom_is_tolerated() -> None:
    assert parse_config(("\ufeff" + KUBEPORT + SERVE_ALL).encode(), source="a", env={}).registry[1] == 3025


@pytest.mark.parametrize(
    "extra",
    [
        "  ? " + "k" * 10_000 + "\n  : 1\n",  # an explicit key: YAML limits implicit ones to 1024 characters
        "  labels: {env: [" + "x" * 10_000 + "]}\n",
        "  listen_addr: " + "h" * 10_000 + ":1\n",
        "  " + "k" * 10_000 + ": 1\n",
    ],
)
def test_huge_values_are_shortened_in_messages(extra: str) -> None:
    message = error_of(KUBEPORT + SERVE_ALL + extra)
    assert len(message) < 300, message


def test_control_characters_are_escaped_in_messages() -> None:
    message = error_of(KUBEPORT + '  log_level: "\\e[31mred"\n' + SERVE_ALL)
    assert "\x1b" not in message
    assert "\\u001b[31mred" in message


# ---------------------------------------------------------------------------------------- token safety


@pytest.mark.parametrize(
    "text",
    [
        KUBEPORT + "  token_file: /t\n" + SERVE_ALL,
        KUBEPORT + SERVE_ALL + "  enabled: no\n",
        KUBEPORT + f"  {TOKEN}: 1\n" + SERVE_ALL,  # a key that happens to be the token
        KUBEPORT + f"  nodename: 'has {TOKEN} inside'\n" + SERVE_ALL,
        KUBEPORT + f"  log_level: {TOKEN}\n" + SERVE_ALL,
        f"kubeport:\n  registry: r\n  token: {TOKEN}: oops\n" + SERVE_ALL,  # YAML error on the token's line
        f"kubeport:\n  registry: r\n  token: '{TOKEN}\n" + SERVE_ALL,  # unterminated quote
        f"kubeport:\n  registry: r\n  token: [{TOKEN}]\n" + SERVE_ALL,  # wrong type
        f"kubeport:\n  registry: r\n  token: {{{TOKEN}: 1}}\n" + SERVE_ALL,
        f"kubeport:\n  token: {TOKEN}\n  registry: {TOKEN}:99999\n" + SERVE_ALL,
        f"kubeport:\n  token: {TOKEN}\n" + SERVE_ALL + f"  labels: {{'{TOKEN} x': y}}\n",
    ],
)
def test_token_never_appears_in_errors(text: str) -> None:
    with pytest.raises(BadParameter) as info:
        parse(text)
    assert TOKEN not in str(info.value)
    assert info.value.__cause__ is None


def test_numeric_token_is_not_echoed() -> None:
    message = error_of("kubeport:\n  registry: r\n  token: 98765432123\n" + SERVE_ALL)
    assert "kubeport.token must be a string (quote it in YAML), got a non-string value" in message
    assert "98765432123" not in message


def test_token_is_not_in_repr() -> None:
    cfg = parse(KUBEPORT + SERVE_ALL)
    assert TOKEN not in repr(cfg)
    assert TOKEN not in str(cfg)


# ----------------------------------------------------------------------------------------- load_config


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(KUBEPORT + SERVE_ALL)
    cfg = load_config(path, env={"KUBEPORT_DATA_DIR": str(tmp_path)})
    assert cfg.data_dir == tmp_path
    assert cfg.token == TOKEN


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(KUBEPORT + "kubernetes_service:\n  resource: []\n")
    with pytest.raises(BadParameter, match=r"agent\.yaml: unknown key kubernetes_service\.resource"):
        load_config(str(path), env={})


@pytest.mark.parametrize("kind", ["missing", "directory", "huge"])
def test_load_config_unreadable_or_huge(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "agent.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "huge":
        path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 10))
    with pytest.raises(BadParameter) as info:
        load_config(path, env={})
    assert info.value.message.startswith(str(path) + ": ")
    assert info.value.__cause__ is None


def test_load_config_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(KUBEPORT + SERVE_ALL)
    monkeypatch.setenv("KUBEPORT_DATA_DIR", "/from/env")
    assert load_config(path).data_dir == Path("/from/env")


def _all_fields(cfg: AgentConfig) -> dict[str, Any]:
    return {"registry": cfg.registry, "kube": cfg.kube.public_addr}


def test_parse_config_accepts_bytes_and_str_alike() -> None:
    text = KUBEPORT + SERVE_ALL
    assert _all_fields(parse_config(text.encode(), source="a", env={})) == _all_fields(parse(text))
