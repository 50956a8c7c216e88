"""``bot.yaml``: the configuration of ``kubeport bot start``, validated once, strictly (pure: text in, value out).

tbot's shape with kubeport's address key::

    version: v2                      # optional
    registry: HOST:PORT[,HOST:PORT]  # tried in order; the next on a connection problem
    ca_pins: [sha256:...]            # optional: without, the first contact trusts the CA it sees (logged)
    onboarding: {join_method: token, token: T}
    storage: DIR                     # or {type: directory, path: DIR}; the bot identity lives here (0700/0600)
    certificate_ttl: 1h              # default 1h, 1m..24h
    renewal_interval: 20m            # default 20m, at least 10s, shorter than certificate_ttl
    outputs:
      - type: kubernetes
        kubernetes_cluster: NAME         # one context (tbot); or
        kubernetes_labels: {env: prod}   # one context per served cluster the labels select (beyond tbot)
        destination: {type: directory, path: DIR, mode: "0640"}   # mode: 0600 (default), 0640 or 0660

Invariants:
- Every problem is one BadParameter naming the file and the key (``bot.yaml: outputs[0].destination.mode:
  ...``); the token never appears in a message (it is redacted if a value echoes it).
- The file is read with the registry's hardened YAML loader: at most :data:`MAX_CONFIG_BYTES`, UTF-8, no
  aliases or duplicate keys, bounded nesting.
- Unknown keys are refused at every level (a typo never silently falls back to a default).
- Destinations are distinct directories, none inside another, and none is the storage directory (an output
  may be group-readable; the storage never is).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from labels import LabelError, parse_go_duration, validate_selector
from registry.core import validation
from registry.core.errors import BadParameter, TooLarge
from registry.core.netaddr import format_hostport, parse_hostport

MAX_CONFIG_BYTES = 64 * 1024
DEFAULT_CERT_TTL = 3600.0
DEFAULT_RENEWAL = 1200.0
MIN_CERT_TTL = 60.0
MAX_CERT_TTL = 24 * 3600.0
MIN_RENEWAL = 10.0
MAX_OUTPUTS = 64
MAX_PATH_CHARS = 1024
MAX_REGISTRIES = 16
ALLOWED_MODES = (0o600, 0o640, 0o660)  # owner rw; a group may read (or write); never others, never exec
_PIN_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9._-]{1,253}$")


@dataclass(frozen=True)
class KubernetesOutput:
    destination: Path
    mode: int = 0o600
    cluster: str | None = None  # kubernetes_cluster
    labels: Mapping[str, Any] | None = None  # kubernetes_labels (a selector)


@dataclass(frozen=True)
class BotConfig:
    registries: tuple[str, ...]
    token: str = field(repr=False)
    storage: Path
    ca_pins: tuple[str, ...] = ()
    certificate_ttl: float = DEFAULT_CERT_TTL
    renewal_interval: float = DEFAULT_RENEWAL
    outputs: tuple[KubernetesOutput, ...] = ()


class _Ctx:
    def __init__(self, source: str, token: str | None) -> None:
        self.source = source
        self.token = token

    def fail(self, message: str) -> NoReturn:
        text = f"{self.source}: {message}"
        if self.token and len(self.token) >= 8:
            text = text.replace(self.token, "<redacted>")
        raise BadParameter(text)

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"{path} must be a mapping, got {validation.describe_type(value)}")
        return value

    def keys(self, section: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
        for key in section:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.fail(f"unknown key {validation.quote(str(key))} at {where} (allowed: {', '.join(allowed)})")

    def string(self, value: object, path: str, *, limit: int = MAX_PATH_CHARS) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{path} must be a non-empty string, got {validation.describe_type(value)}")
        if len(value) > limit:
            self.fail(f"{path} is longer than {limit} characters")
        if not value.isprintable():
            self.fail(f"{path} contains a control or invisible character")
        return value.strip()


def _duration(ctx: _Ctx, value: object, path: str, low: float, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        ctx.fail(f"{path} must be a Go duration such as 20m or 1h, got {validation.describe_type(value)}")
    try:
        seconds = parse_go_duration(value, what=path)
    except LabelError as err:
        ctx.fail(validation.label_message(err, path, value=value))
    if seconds < low or (high is not None and seconds > high):
        upper = f" and at most {high:g}s" if high is not None else ""
        ctx.fail(f"{path} must be at least {low:g}s{upper}, got {validation.quote(value)}")
    return seconds


def _path(ctx: _Ctx, value: object, path: str) -> Path:
    text = ctx.string(value, path)
    return Path(os.path.normpath(Path(text).expanduser().absolute()))


def _mode(ctx: _Ctx, value: object, path: str) -> int:
    # YAML reads 0640 as the octal integer 416; "0640" or "640" as strings are octal too.
    if isinstance(value, bool):
        ctx.fail(f'{path} must be an octal mode such as "0640"')
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value.strip()):
        mode = int(value.strip(), 8)
    else:
        ctx.fail(f'{path} must be an octal mode such as "0640", got {validation.describe(value)}')
    if mode not in ALLOWED_MODES:
        allowed = ", ".join(f"{m:04o}" for m in ALLOWED_MODES)
        ctx.fail(f"{path} {mode:04o} is not allowed: use one of {allowed} (credentials are never world-readable)")
    return mode


def _registries(ctx: _Ctx, value: object) -> tuple[str, ...]:
    text = ctx.string(value, "registry")
    out: list[str] = []
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > MAX_REGISTRIES:
        ctx.fail(f"registry names {len(parts)} addresses; at most {MAX_REGISTRIES}")
    for part in parts:
        try:
            host, port = parse_hostport(part, default_port=3025, what="registry", min_port=1)
        except BadParameter as err:
            ctx.fail(err.message)
        address = format_hostport(host, port)
        if address not in out:
            out.append(address)
    return tuple(out)


def _pins(ctx: _Ctx, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        ctx.fail("ca_pins must be a pin or a non-empty list of pins")
    pins: list[str] = []
    for index, item in enumerate(items):
        pin = ctx.string(item, f"ca_pins[{index}]").lower()
        if not _PIN_RE.fullmatch(pin):
            ctx.fail(f"ca_pins[{index}]: expected sha256:<64 hex digits>, got {validation.describe(item)}")
        pins.append(pin)
    return tuple(dict.fromkeys(pins))


def _onboarding(ctx: _Ctx, value: object) -> str:
    if value is None:
        ctx.fail("onboarding is required: onboarding: {join_method: token, token: TOKEN} (from kpctl bots add)")
    section = ctx.mapping(value, "onboarding")
    ctx.keys(section, "onboarding", ("join_method", "token"))
    method = section.get("join_method", "token")
    if method != "token":
        ctx.fail(f"onboarding.join_method {validation.describe(method)} is not supported (only token)")
    if "token" not in section:
        ctx.fail("onboarding.token is required (the join token kpctl bots add printed)")
    token = section["token"]
    if not isinstance(token, str) or not token.strip():
        ctx.fail("onboarding.token must be a non-empty string")
    token = token.strip()
    if len(token) > 253 or not re.fullmatch(r"[A-Za-z0-9._-]+", token):
        ctx.fail("onboarding.token is malformed (expected the token kpctl bots add printed)")
    return token


def _storage(ctx: _Ctx, value: object) -> Path:
    if value is None:
        ctx.fail(
            "storage is required: the directory that keeps the bot's identity (e.g. storage: /var/lib/kubeport/bot)"
        )
    if isinstance(value, dict):
        ctx.keys(value, "storage", ("type", "path"))
        if value.get("type", "directory") != "directory":
            ctx.fail(f"storage.type {validation.describe(value.get('type'))} is not supported (only directory)")
        return _path(ctx, value.get("path"), "storage.path")
    return _path(ctx, value, "storage")


def _output(ctx: _Ctx, value: object, index: int) -> KubernetesOutput:
    where = f"outputs[{index}]"
    section = ctx.mapping(value, where)
    ctx.keys(section, where, ("type", "kubernetes_cluster", "kubernetes_labels", "destination"))
    kind = section.get("type")
    if kind != "kubernetes":
        ctx.fail(f"{where}.type must be kubernetes, got {validation.describe(kind)}")
    cluster = section.get("kubernetes_cluster")
    selector = section.get("kubernetes_labels")
    if (cluster is None) == (selector is None):
        ctx.fail(f"{where}: set exactly one of kubernetes_cluster (one cluster) or kubernetes_labels (a selector)")
    if cluster is not None:
        cluster = ctx.string(cluster, f"{where}.kubernetes_cluster", limit=253)
        if not _NAME_RE.fullmatch(cluster):
            ctx.fail(f"{where}.kubernetes_cluster {validation.quote(cluster)} is not a valid cluster name")
    labels = None
    if selector is not None:
        if not isinstance(selector, dict) or not selector:
            ctx.fail(f"{where}.kubernetes_labels must be a non-empty mapping of label -> value(s)")
        try:
            labels = validate_selector(selector, what=f"{where}.kubernetes_labels")
        except LabelError as err:
            ctx.fail(validation.label_message(err, f"{where}.kubernetes_labels"))
    dest = ctx.mapping(section.get("destination"), f"{where}.destination")
    ctx.keys(dest, f"{where}.destination", ("type", "path", "mode"))
    if dest.get("type", "directory") != "directory":
        ctx.fail(f"{where}.destination.type {validation.describe(dest.get('type'))} is not supported (only directory)")
    path = _path(ctx, dest.get("path"), f"{where}.destination.path")
    mode = _mode(ctx, dest["mode"], f"{where}.destination.mode") if "mode" in dest else 0o600
    return KubernetesOutput(destination=path, mode=mode, cluster=cluster, labels=labels)


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _build(ctx: _Ctx, raw: object) -> BotConfig:
    if raw is None:
        ctx.fail("is empty: it needs registry, onboarding, storage and outputs")
    top = ctx.mapping(raw, "the document")
    ctx.keys(
        top,
        "",
        ("version", "registry", "ca_pins", "onboarding", "storage", "certificate_ttl", "renewal_interval", "outputs"),
    )
    if top.get("version", "v2") != "v2":
        ctx.fail(f"version {validation.describe(top.get('version'))} is not supported (v2)")
    if "registry" not in top:
        ctx.fail("registry is required: HOST:PORT of the registry (several, comma-separated, for failover)")
    registries = _registries(ctx, top["registry"])
    token = _onboarding(ctx, top.get("onboarding"))
    ctx.token = token
    storage = _storage(ctx, top.get("storage"))
    ttl = DEFAULT_CERT_TTL
    if "certificate_ttl" in top:
        ttl = _duration(ctx, top["certificate_ttl"], "certificate_ttl", MIN_CERT_TTL, MAX_CERT_TTL)
    renewal = DEFAULT_RENEWAL
    if "renewal_interval" in top:
        renewal = _duration(ctx, top["renewal_interval"], "renewal_interval", MIN_RENEWAL, None)
    if renewal >= ttl:
        ctx.fail(
            f"renewal_interval ({renewal:g}s) must be shorter than certificate_ttl ({ttl:g}s), or the "
            "certificate expires before it is renewed"
        )
    raw_outputs = top.get("outputs")
    if not isinstance(raw_outputs, list) or not raw_outputs:
        ctx.fail("outputs must be a non-empty list (at least one type: kubernetes output)")
    if len(raw_outputs) > MAX_OUTPUTS:
        ctx.fail(f"outputs has {len(raw_outputs)} entries; at most {MAX_OUTPUTS}")
    outputs = tuple(_output(ctx, item, i) for i, item in enumerate(raw_outputs))
    for i, out in enumerate(outputs):
        if _inside(out.destination, storage) or _inside(storage, out.destination):
            ctx.fail(f"outputs[{i}].destination.path must not be the storage directory or overlap it")
        for j in range(i):
            other = outputs[j].destination
            if _inside(out.destination, other) or _inside(other, out.destination):
                ctx.fail(f"outputs[{i}].destination.path overlaps outputs[{j}] (outputs cannot share a destination)")
    return BotConfig(
        registries=registries,
        token=token,
        storage=storage,
        ca_pins=_pins(ctx, top.get("ca_pins")),
        certificate_ttl=ttl,
        renewal_interval=renewal,
        outputs=outputs,
    )


def parse_config(data: str | bytes, *, source: str) -> BotConfig:
    """The validated configuration, or one BadParameter naming ``source`` and the key."""
    try:
        raw_bytes = validation.check_size(data, source=source, limit=MAX_CONFIG_BYTES)
    except TooLarge as err:
        raise BadParameter(err.message) from None
    text = data if isinstance(data, str) else validation.decode_utf8(raw_bytes, source=source)
    documents = validation.load_yaml(text, source=source)
    if len(documents) > 1:
        raise BadParameter(f"{source}: expected one YAML document, found {len(documents)}")
    return _build(_Ctx(source, None), documents[0] if documents else None)
