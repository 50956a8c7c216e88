"""agent.config.render_config: the file `kubeport configure` writes must load as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_config
from agent.config_render import render_config
from labels import matches_any
from registry.core.errors import BadParameter

PIN = "sha256:" + "ab" * 32


def test_round_trip_with_token() -> None:
    text = render_config(
        registry="reg.example.com:3025", token="abcd123", token_file=None, ca_pins=[PIN], data_dir="/var/lib/kubeport"
    )
    cfg = parse_config(text, source="agent.yaml", env={})
    assert cfg.registry == ("reg.example.com", 3025)
    assert cfg.token == "abcd123"
    assert cfg.token_file is None
    assert cfg.ca_pins == (PIN,)
    assert cfg.data_dir == Path("/var/lib/kubeport")
    assert [dict(i["labels"]) for i in cfg.kube.resources] == [{"*": "*"}]
    assert matches_any(cfg.kube.resources, {"env": "anything"})
    # The header explains each section.
    for word in ("# kubeport:", "# kubernetes_service:", "resources", "token_file", "ca_pin"):
        assert word in text


def test_round_trip_with_token_file_and_no_pins() -> None:
    text = render_config(registry="reg", token=None, token_file="/etc/kubeport/token", ca_pins=[], data_dir="/d")
    cfg = parse_config(text, source="agent.yaml", env={})
    assert cfg.token is None
    assert cfg.token_file == Path("/etc/kubeport/token")
    assert cfg.ca_pins == ()
    assert cfg.registry == ("reg", 3025)


@pytest.mark.parametrize("token", ['we"ird\\tok', "tok: en", "#not-a-comment", "ünïcode-😀", "yes", "0123"])
def test_odd_tokens_survive_exactly(token: str) -> None:
    text = render_config(registry="r", token=token, token_file=None, ca_pins=[], data_dir="/d")
    assert parse_config(text, source="a", env={}).token == token


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"registry": "r\nkubernetes_service: {enabled: no}"}, 'kubeport.registry "r\\nkubernetes_service'),
        ({"registry": "https://r"}, "not a URL"),
        ({"registry": "r:99999"}, "port 99999 is out of range"),
        ({"token": "a", "token_file": "/t"}, "both set"),
        ({"ca_pins": ["sha1:x"]}, "kubeport.ca_pin[0]: expected sha256"),
        ({"data_dir": ""}, "kubeport.data_dir must not be empty"),
    ],
)
def test_bad_arguments_fail_at_render_time(kwargs: dict[str, object], fragment: str) -> None:
    args: dict[str, object] = {"registry": "r", "token": None, "token_file": None, "ca_pins": [], "data_dir": "/d"}
    args.update(kwargs)
    with pytest.raises(BadParameter) as info:
        render_config(**args)  # type: ignore[arg-type]
    assert fragment in info.value.message


def test_token_is_not_in_render_errors() -> None:
    with pytest.raises(BadParameter) as info:
        render_config(registry="r:0", token="s3cret-join-token", token_file=None, ca_pins=[], data_dir="/d")
    assert "s3cret-join-token" not in str(info.value)


def test_without_resources_all_the_admin_must_choose() -> None:
    text = render_config(registry="r", token="t0ken", token_file=None, ca_pins=[], data_dir="/d", resources_all=False)
    assert "resources: [" not in text
    with pytest.raises(BadParameter, match="nothing to serve"):
        parse_config(text, source="agent.yaml", env={})
    edited = text.replace("  # resources:", "  resources:").replace("  # - labels:", "  - labels:")
    edited = edited.replace('  #     env: "prod"', '      env: "prod"')
    cfg = parse_config(edited, source="agent.yaml", env={})
    assert [dict(i["labels"]) for i in cfg.kube.resources] == [{"env": "prod"}]
