"""bot.yaml validation (registry.cli.bot.config): defaults, tbot's shape, and one ERROR naming the key for every
bad input (unknown keys, bad durations, missing token, bad modes, paths, huge files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.cli.bot.config import parse_config
from registry.core.errors import BadParameter

TOKEN = "0123456789abcdef0123456789abcdef"
PIN = "sha256:" + "a" * 64


def config_text(tmp_path: Path, extra: str = "", output: str | None = None) -> str:
    out = output or (
        "  - type: kubernetes\n"
        "    kubernetes_cluster: example-k8s-cluster\n"
        "    destination:\n"
        "      type: directory\n"
        f"      path: {tmp_path}/out\n"
    )
    return (
        "registry: registry.example.com:3025\n"
        "onboarding:\n"
        "  join_method: token\n"
        f"  token: {TOKEN}\n"
        f"storage: {tmp_path}/storage\n"
        f"{extra}"
        "outputs:\n"
        f"{out}"
    )


def test_defaults_and_seed_004_shape(tmp_path: Path) -> None:
    config = parse_config(config_text(tmp_path), source="bot.yaml")
    assert config.registries == ("registry.example.com:3025",)
    assert config.token == TOKEN
    assert TOKEN not in repr(config)
    assert config.storage == tmp_path / "storage"
    assert (config.certificate_ttl, config.renewal_interval) == (3600.0, 1200.0)
    [out] = config.outputs
    assert (out.cluster, out.destination, out.mode) == ("example-k8s-cluster", tmp_path / "out", 0o600)


def test_everything_set(tmp_path: Path) -> None:
    text = config_text(
        tmp_path,
        f"version: v2\nca_pins: ['{PIN.upper().replace('SHA256', 'sha256')}']\ncertificate_ttl: 30m\n"
        "renewal_interval: 10m\n",
        output=(
            "  - type: kubernetes\n"
            "    kubernetes_labels: {env: prod, team: [a, b]}\n"
            f"    destination: {{type: directory, path: {tmp_path}/prod, mode: 0640}}\n"
            "  - type: kubernetes\n"
            "    kubernetes_cluster: one\n"
            f"    destination: {{path: {tmp_path}/one, mode: '0660'}}\n"
        ),
    ).replace("registry.example.com:3025", "r1:3025, r2:4025,r1:3025")
    text = text.replace(f"storage: {tmp_path}/storage", f"storage: {{type: directory, path: {tmp_path}/s}}")
    config = parse_config(text, source="bot.yaml")
    assert config.registries == ("r1:3025", "r2:4025")
    assert config.ca_pins == (PIN,)
    assert (config.certificate_ttl, config.renewal_interval) == (1800.0, 600.0)
    labels_out, one = config.outputs
    assert labels_out.labels == {"env": "prod", "team": ["a", "b"]}
    assert labels_out.mode == 0o640
    assert one.mode == 0o660
    assert config.storage == tmp_path / "s"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t + "colour: blue\n", "colour"),
        (lambda t: t.replace("  join_method: token\n", "  join_method: token\n  tokn: x\n"), "onboarding.tokn"),
        (lambda t: t.replace("    destination:\n", "    destinaton: {}\n    destination:\n"), "outputs[0].destinaton"),
        (lambda t: t.replace(f"  token: {TOKEN}\n", ""), "onboarding.token"),
        (lambda t: t.replace(f"  token: {TOKEN}\n", "  token: ''\n"), "onboarding.token"),
        (lambda t: t.replace(f"  token: {TOKEN}\n", "  token: 'a b;c'\n"), "onboarding.token"),
        (lambda t: t.replace("join_method: token", "join_method: iam"), "onboarding.join_method"),
        (lambda t: t.replace("registry: registry.example.com:3025\n", ""), "registry"),
        (lambda t: t.replace("registry.example.com:3025", "host:99999"), "registry"),
        (lambda t: "certificate_ttl: 1d\n" + t, "certificate_ttl"),
        (lambda t: "certificate_ttl: 48h\n" + t, "certificate_ttl"),
        (lambda t: "certificate_ttl: 3600\n" + t, "certificate_ttl"),
        (lambda t: "renewal_interval: 1s\n" + t, "renewal_interval"),
        (lambda t: "renewal_interval: 2h\n" + t, "renewal_interval"),
        (lambda t: "ca_pins: [sha256:abc]\n" + t, "ca_pins[0]"),
        (lambda t: "version: v1\n" + t, "version"),
        (lambda t: t.replace("      type: directory\n", "      type: directory\n      mode: 0644\n"), "mode"),
        (lambda t: t.replace("      type: directory\n", "      type: directory\n      mode: 0700\n"), "mode"),
        (lambda t: t.replace("      type: directory\n", "      type: directory\n      mode: rw-r-----\n"), "mode"),
        (lambda t: t.replace("      type: directory\n", "      type: directory\n      mode: true\n"), "mode"),
        (lambda t: t.replace("      type: directory\n", "      type: memory\n"), "destination.type"),
        (lambda t: t.replace("type: kubernetes", "type: identity"), "outputs[0].type"),
        (
            lambda t: t.replace("kubernetes_cluster: example-k8s-cluster", "kubernetes_cluster: 'a b'"),
            "kubernetes_cluster",
        ),
        (
            lambda t: t.replace("kubernetes_cluster: example-k8s-cluster", "kubernetes_labels: {'bad key!': x}"),
            "kubernetes_labels",
        ),
        (
            lambda t: t.replace(
                "    kubernetes_cluster: example-k8s-cluster\n",
                "    kubernetes_cluster: a\n    kubernetes_labels: {env: prod}\n",
            ),
            "exactly one",
        ),
        (lambda t: t.replace("    kubernetes_cluster: example-k8s-cluster\n", ""), "exactly one"),
        (lambda t: t.split("outputs:")[0] + "outputs: []\n", "outputs"),
        (lambda t: t.replace("storage:", "storag:"), "storag"),
        (lambda t: t.replace("/storage", "/out/storage"), "storage"),
        (lambda t: t.replace("/out\n", "/storage\n"), "storage"),
        (lambda t: t.replace("/out\n", "/o\x01ut\n"), "control character"),
        (
            lambda t: t.replace("/out\n", '/out"\n').replace("path: /", 'path: "/').replace("/out", "/o\\x01ut"),
            "destination.path",
        ),
        (lambda t: t.replace("/out\n", "/" + "x" * 2000 + "\n"), "destination.path"),
        (lambda t: t + "---\nother: 1\n", "one YAML document"),
        (lambda t: "a: &x 1\nb: *x\n" + t, "bot.yaml"),
        (lambda t: "[" * 10_000, "bot.yaml"),
        (lambda t: "", "empty"),
        (lambda t: "- a list\n", "mapping"),
    ],
)
def test_each_problem_is_one_error_naming_the_key(tmp_path: Path, change: object, key: str) -> None:
    text = change(config_text(tmp_path))  # type: ignore[operator]
    with pytest.raises(BadParameter) as info:
        parse_config(text, source="bot.yaml")
    message = info.value.message
    assert message.startswith("bot.yaml")
    assert key in message
    assert "\n" not in message
    assert TOKEN not in message


def test_outputs_cannot_share_a_destination(tmp_path: Path) -> None:
    out = (
        f"  - {{type: kubernetes, kubernetes_cluster: a, destination: {{path: {tmp_path}/o}}}}\n"
        f"  - {{type: kubernetes, kubernetes_cluster: b, destination: {{path: {tmp_path}/o/sub}}}}\n"
    )
    with pytest.raises(BadParameter, match=r"outputs\[1\].*overlaps outputs\[0\]"):
        parse_config(config_text(tmp_path, output=out), source="bot.yaml")


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    text = config_text(tmp_path) + "#" * (70 * 1024)
    with pytest.raises(BadParameter, match=r"bot\.yaml"):
        parse_config(text, source="bot.yaml")


def test_invalid_utf8_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadParameter, match=r"bot\.yaml"):
        parse_config(config_text(tmp_path).encode() + b"\xff\xfe", source="bot.yaml")


def test_a_value_echoing_the_token_is_redacted(tmp_path: Path) -> None:
    text = config_text(tmp_path).replace("example-k8s-cluster", f"'{TOKEN} x'")
    with pytest.raises(BadParameter) as info:
        parse_config(text, source="bot.yaml")
    assert TOKEN not in info.value.message
