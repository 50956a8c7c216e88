"""The agent's configuration file: parse and validate it once.

The file is YAML. Its ``kubernetes_service`` section uses Teleport's field names, so snippets from
Teleport's docs work unchanged; a ``kubeport:`` section holds what Teleport keeps under ``teleport:``
(registry addresses: one, or several sharing one store as ``A,B`` or a YAML list; join token, CA pins,
data directory, node name). See
:func:`agent.config_render.render_config` for an annotated example; :mod:`agent.static_clusters` splits
the ``kubeconfig_file`` into static clusters.

Invariants:

* Validation happens here, once (Teleport's ``CheckAndSetDefaults`` habit): an :class:`AgentConfig` that
  exists is complete and valid, with every default filled in. Nothing downstream re-checks it.
* Every failure is a :class:`BadParameter` whose message starts with the source name and names the key
  path and the offending value: ``agent.yaml: kubernetes_service.labels: invalid label key "a b": ...``.
* The join token never appears in an error message: it is never quoted, YAML syntax errors are reported
  without the source line, and as a last guard any message containing it is redacted.
* Unknown keys are errors (with a close-match hint), so a typo cannot silently disable a setting.
* Input is bounded and parsed by the registry's hardened YAML loader: at most :data:`MAX_CONFIG_BYTES`,
  bounded nesting, anchors/aliases refused (no "billion laughs"), duplicate keys refused (the last one
  would silently win otherwise).
* Relative paths (``data_dir``, ``token_file``, ``kubeconfig_file``) are kept as written; they resolve
  against the agent's working directory.
* ``kubernetes_service.allowed_label_commands`` (the programs kube_cluster dynamic labels may run here;
  default none) is checked for shape here (bare names or normalised absolute paths) and resolved against
  PATH when the agent starts (:mod:`agent.label_commands`), not here.

Only :func:`load_config` touches the filesystem (it reads the one path it is given); the rest is pure
apart from the default node name, which comes from ``socket.gethostname()``.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from agent.label_commands import is_bare_name, is_normal_absolute
from labels import parse_go_duration, validate_label_key, validate_labels, validate_selector_items
from labels.schedule import validate_cron
from registry.core import validation
from registry.core.errors import BadParameter
from registry.core.netaddr import format_hostport, parse_hostport

MAX_CONFIG_BYTES = 1 << 20
DEFAULT_REGISTRY_PORT = 3025
MAX_REGISTRIES = 16  # addresses in kubeport.registry
DEFAULT_LISTEN_ADDR = ("0.0.0.0", 3027)
DEFAULT_DATA_DIR = Path("/var/lib/kubeport")
DEFAULT_HEARTBEAT_TTL = 600.0  # Teleport's ServerAnnounceTTL
MIN_HEARTBEAT_TTL = 1.0
MIN_COMMAND_PERIOD = 1.0
DATA_DIR_ENV = "KUBEPORT_DATA_DIR"
# Labels under this prefix are set by kubeport itself (kubeport.dev/origin); service labels override cluster
# labels in heartbeats, so letting the config set them would let an agent relabel a cluster's origin.
RESERVED_LABEL_PREFIX = "kubeport.dev/"
LOG_LEVELS = ("debug", "info", "warning", "error")

_PIN_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})
_UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::"})

_TOP_KEYS = ("version", "kubeport", "kubernetes_service")
_KUBEPORT_KEYS = (
    "registry",
    "token",
    "token_file",
    "ca_pin",
    "data_dir",
    "nodename",
    "heartbeat_ttl",
    "log_level",
)
_KUBE_KEYS = (
    "enabled",
    "listen_addr",
    "public_addr",
    "kubeconfig_file",
    "labels",
    "commands",
    "resources",
    "allowed_label_commands",
)
MAX_ALLOWED_LABEL_COMMANDS = 256
MAX_PROGRAM_LENGTH = 4096
_COMMAND_KEYS = ("name", "command", "period", "schedule")

# Sections a Teleport config has and kubeport does not; each gets a message saying what to do instead.
_TELEPORT_SECTIONS = frozenset(
    {
        "auth_service",
        "proxy_service",
        "ssh_service",
        "app_service",
        "db_service",
        "windows_desktop_service",
        "discovery_service",
        "jamf_service",
    }
)
_SPECIFIC_HINTS = {
    ("kubernetes_service", "kube_cluster_name"): (
        "in-pod credentials (kube_cluster_name) are not supported: kubeport agents run on hosts; "
        "use kubeconfig_file for static clusters"
    ),
}

# Below this length a token is too short to redact without garbling every message; such a token is still
# never quoted by this module, the redaction is only a second guard.
_MIN_REDACT_LENGTH = 6


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class CommandConfig:
    """A service dynamic label: ``name`` gets the output of ``command`` every ``period`` or per ``schedule``.

    Exactly one of ``period`` (seconds, >= 1) and ``schedule`` (a normalised cron expression) is set.
    """

    name: str
    command: tuple[str, ...]
    period: float | None
    schedule: str | None


@dataclass(frozen=True)
class KubeServiceConfig:
    """The ``kubernetes_service`` section. ``enabled`` is always True in a validated config (kept for shape).

    ``resources`` holds normalised selector items (``{"labels": {key: str | list[str]}}``) ready for
    :func:`labels.matches_any`. ``allowed_label_commands`` lists, as written (bare names or normalised
    absolute paths, no duplicates), the programs kube_cluster dynamic labels may run on this host; they are
    resolved against PATH when the agent starts (:mod:`agent.label_commands`). Empty: none.
    """

    enabled: bool
    listen_addr: tuple[str, int]
    public_addr: str
    kubeconfig_file: Path | None
    labels: Mapping[str, str]
    commands: tuple[CommandConfig, ...]
    resources: tuple[Mapping[str, Any], ...]
    allowed_label_commands: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentConfig:
    """A complete, validated agent configuration. ``token`` is kept out of ``repr`` (logs, tracebacks)."""

    registries: tuple[tuple[str, int], ...]  # kubeport.registry: one address or several (failover, in order)
    token: str | None = field(repr=False)
    token_file: Path | None
    ca_pins: tuple[str, ...]
    data_dir: Path
    nodename: str
    heartbeat_ttl: float
    log_level: str
    kube: KubeServiceConfig

    @property
    def registry(self) -> tuple[str, int]:
        """The first registry address (the one tried first)."""
        return self.registries[0]


# --------------------------------------------------------------------------------------------- helpers


# Values a user wrote are shown the way the registry shows them: JSON-quoted (control characters escaped),
# shortened, and wrong types described in YAML words ("int 5", "a mapping").
_show = validation.describe


def _plain(text: str) -> str:
    """A key path for a message: unquoted when short and plain, else quoted (escaped and shortened)."""
    quoted = validation.quote(text)
    return quoted[1:-1] if quoted == f'"{text}"' else quoted


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Ctx:
    """Where messages come from: the source name, and the environment for defaults."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env

    def fail(self, message: str) -> NoReturn:
        raise BadParameter(f"{self.source}: {message}")

    def mapping(self, value: object, path: str, *, required: bool = False) -> Mapping[str, Any]:
        """``value`` as a mapping with string keys; null is an empty mapping unless ``required``."""
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{path} must be a mapping, got {_show(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(f"{path}: keys must be strings, got {_show(key)}")
        return value

    def check_keys(self, section: Mapping[str, Any], path: str, allowed: Sequence[str]) -> None:
        for key in section:
            if key in allowed:
                continue
            hint = _SPECIFIC_HINTS.get((path, key))
            if hint is not None:
                self.fail(f"{_join(path, key)}: {hint}")
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            suggestion = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(allowed)})"
            self.fail(f"unknown key {_plain(_join(path, key))}{suggestion}")

    def string(self, value: object, path: str, *, secret: bool = False) -> str:
        if not isinstance(value, str):
            shown = "a non-string value" if secret else _show(value)
            self.fail(f"{path} must be a string (quote it in YAML), got {shown}")
        if not value.strip():
            self.fail(f"{path} must not be empty")
        if "\0" in value:
            self.fail(f"{path} must not contain NUL characters")
        return value


def _redact(message: str, token: str | None) -> str:
    if token and len(token) >= _MIN_REDACT_LENGTH and token in message:
        return message.replace(token, "<redacted>")
    return message


# ------------------------------------------------------------------------------------------------ YAML


def load_yaml_document(data: str | bytes, source: str) -> object:
    """One YAML document (the config, or the kubeconfig_file for :mod:`agent.static_clusters`) through the
    registry's hardened loader (``registry.core.validation``): size checked before parsing (at most
    :data:`MAX_CONFIG_BYTES`), UTF-8 only, no anchors/aliases/merge/duplicate keys, bounded nesting, and
    syntax errors reported by position without echoing the source line (which could hold the token).
    Every failure is a BadParameter naming ``source``."""
    return validation.load_yaml_document(data, source=source, limit=MAX_CONFIG_BYTES)


# ------------------------------------------------------------------------------------------ addresses


def _parse_hostport(
    ctx: _Ctx, value: object, path: str, *, default_port: int, default_host: str | None, min_port: int
) -> tuple[str, int]:
    """An address through kubeport's one host:port parser (:func:`registry.core.netaddr.parse_hostport`)."""
    raw = ctx.string(value, path)
    try:
        return parse_hostport(raw, default_port=default_port, what=path, default_host=default_host, min_port=min_port)
    except BadParameter as err:
        ctx.fail(err.message)


# ---------------------------------------------------------------------------------------- the sections


def _parse_bool(ctx: _Ctx, value: object, path: str) -> bool:
    """Teleport's boolean strings (yes/no/true/false/on/off/1/0, any case) or YAML booleans."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return ctx.fail(f"{path} must be yes/no/true/false/on/off/1/0, got {_show(value)}")


def _parse_duration(ctx: _Ctx, value: object, path: str, minimum: float) -> float:
    with validation.label_errors(path, fail=ctx.fail):
        seconds = parse_go_duration(value, what=path)
    if seconds < minimum:
        ctx.fail(f"{path}: {_show(value)} is shorter than the minimum of {minimum:g}s")
    return seconds


def _parse_path(ctx: _Ctx, value: object, path: str) -> Path:
    return Path(ctx.string(value, path))


def _parse_registries(ctx: _Ctx, value: object, path: str) -> tuple[tuple[str, int], ...]:
    """``HOST:PORT``, ``HOST:PORT,HOST:PORT`` or a YAML list of addresses: registries sharing one store,
    tried in order (duplicates dropped, at most :data:`MAX_REGISTRIES`)."""
    if isinstance(value, list):
        if not value:
            ctx.fail(f"{path} must name at least one registry")
        items = [(ctx.string(item, f"{path}[{i}]"), f"{path}[{i}]") for i, item in enumerate(value)]
    else:
        text = ctx.string(value, path)
        items = [(part.strip(), path) for part in text.split(",")] if "," in text else [(text, path)]
    if len(items) > MAX_REGISTRIES:
        ctx.fail(f"{path} names {len(items)} registries; at most {MAX_REGISTRIES} are allowed")
    found: list[tuple[str, int]] = []
    for raw, where in items:
        if not raw:
            ctx.fail(f"{where}: an empty registry address (check for a stray comma)")
        address = _parse_hostport(ctx, raw, where, default_port=DEFAULT_REGISTRY_PORT, default_host=None, min_port=1)
        if address not in found:
            found.append(address)
    return tuple(found)


def _parse_pins(ctx: _Ctx, value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        ctx.fail(f"{path} must be a pin or a list of pins, got {_show(value)}")
    pins: list[str] = []
    for index, item in enumerate(items):
        where = f"{path}[{index}]" if not isinstance(value, str) else path
        pin = ctx.string(item, where).strip().lower()
        if not _PIN_RE.match(pin):
            ctx.fail(f"{where}: expected sha256:<64 hex digits>, got {_show(item)}")
        if pin not in pins:
            pins.append(pin)
    return tuple(pins)


def _check_not_reserved(ctx: _Ctx, key: str, path: str) -> None:
    if key.startswith(RESERVED_LABEL_PREFIX):
        ctx.fail(f"{path}: label key {_show(key)} uses the prefix {RESERVED_LABEL_PREFIX}, reserved for kubeport")


def _parse_commands(ctx: _Ctx, value: object, path: str) -> tuple[CommandConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        ctx.fail(f"{path} must be a list of {{name, command, period}} items, got {_show(value)}")
    commands: list[CommandConfig] = []
    seen: set[str] = set()
    for index, raw in enumerate(value):
        where = f"{path}[{index}]"
        item = ctx.mapping(raw, where, required=True)
        ctx.check_keys(item, where, _COMMAND_KEYS)
        if "name" not in item:
            ctx.fail(f"{where}.name is required (the label key the output is stored under)")
        with validation.label_errors(f"{where}.name", fail=ctx.fail):
            name = validate_label_key(item["name"])
        _check_not_reserved(ctx, name, f"{where}.name")
        if name in seen:
            ctx.fail(f"{where}.name: duplicate command label {_show(name)}")
        seen.add(name)
        argv = item.get("command")
        if isinstance(argv, str):
            ctx.fail(
                f"{where}.command must be a list (argv, never run through a shell), e.g. [uname, -p]; got {_show(argv)}"
            )
        if not isinstance(argv, list):
            ctx.fail(f"{where}.command must be a list of strings, e.g. [uname, -p]; got {_show(argv)}")
        if not argv:
            ctx.fail(f"{where}.command is empty: name the program to run, e.g. [uname, -p]")
        for position, arg in enumerate(argv):
            if not isinstance(arg, str):
                ctx.fail(f"{where}.command[{position}] must be a string (quote it in YAML), got {_show(arg)}")
            if "\0" in arg:
                ctx.fail(f"{where}.command[{position}] must not contain NUL characters")
        if not argv[0].strip():
            ctx.fail(f"{where}.command[0] (the program) must not be empty")
        has_period, has_schedule = item.get("period") is not None, item.get("schedule") is not None
        if has_period == has_schedule:
            ctx.fail(f"{where}: set exactly one of period (a Go duration such as 1h) and schedule (cron)")
        period = _parse_duration(ctx, item["period"], f"{where}.period", MIN_COMMAND_PERIOD) if has_period else None
        schedule: str | None = None
        if has_schedule:
            with validation.label_errors(f"{where}.schedule", fail=ctx.fail):
                schedule = validate_cron(item["schedule"])
        commands.append(CommandConfig(name, tuple(argv), period, schedule))
    return tuple(commands)


def _parse_allowed_commands(ctx: _Ctx, value: object, path: str) -> tuple[str, ...]:
    """Bare program names (looked up on PATH at agent start) or normalised absolute paths; nothing else."""
    if value is None:
        return ()
    if not isinstance(value, list):
        ctx.fail(f"{path} must be a list of programs, e.g. [python3, /usr/bin/uname]; got {_show(value)}")
    if len(value) > MAX_ALLOWED_LABEL_COMMANDS:
        ctx.fail(f"{path} lists {len(value)} programs; at most {MAX_ALLOWED_LABEL_COMMANDS} are allowed")
    programs: list[str] = []
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        program = ctx.string(item, where)
        if len(program) > MAX_PROGRAM_LENGTH or any(not ch.isprintable() for ch in program):
            ctx.fail(f"{where}: {_show(program)} is too long or contains control characters")
        if program != program.strip():
            ctx.fail(f"{where}: {_show(program)} has surrounding spaces")
        if any(ch in program for ch in "*?"):
            ctx.fail(f"{where}: {_show(program)}: wildcards are not supported; list each program")
        if not (is_bare_name(program) or is_normal_absolute(program)):
            ctx.fail(
                f"{where}: {_show(program)} must be a bare name looked up on PATH (python3) or an absolute "
                "path without . or .. parts (/usr/bin/uname); a relative path depends on the working directory"
            )
        if program not in programs:
            programs.append(program)
    return tuple(programs)


def _parse_kube(ctx: _Ctx, value: object, nodename: str) -> KubeServiceConfig:
    path = "kubernetes_service"
    section = ctx.mapping(value, path)
    ctx.check_keys(section, path, _KUBE_KEYS)
    # The section's presence says what the agent is for; "enabled" only matters when it says no.
    enabled = _parse_bool(ctx, section["enabled"], f"{path}.enabled") if "enabled" in section else True
    if not enabled:
        ctx.fail(f"{path} is disabled; an agent only serves Kubernetes clusters, so it would have nothing to serve")

    listen = DEFAULT_LISTEN_ADDR
    if section.get("listen_addr") is not None:
        listen = _parse_hostport(
            ctx,
            section["listen_addr"],
            f"{path}.listen_addr",
            default_port=DEFAULT_LISTEN_ADDR[1],
            default_host=DEFAULT_LISTEN_ADDR[0],
            min_port=0,
        )

    public_raw = section.get("public_addr")
    if isinstance(public_raw, list):
        # Teleport allows a list here; kubeport announces one address.
        if len(public_raw) != 1:
            ctx.fail(f"{path}.public_addr: give one address, got a list of {len(public_raw)}")
        public_raw = public_raw[0]
    if public_raw is None:
        host = nodename if listen[0] in _UNSPECIFIED_HOSTS else listen[0]
        public_addr = format_hostport(host, listen[1])
    else:
        public_addr = format_hostport(
            *_parse_hostport(
                ctx,
                public_raw,
                f"{path}.public_addr",
                default_port=listen[1],
                default_host=None,
                min_port=1,
            )
        )

    kubeconfig = section.get("kubeconfig_file")
    kubeconfig_file = None if kubeconfig is None else _parse_path(ctx, kubeconfig, f"{path}.kubeconfig_file")

    with validation.label_errors(fail=ctx.fail):  # the library names the paths (what=)
        raw_labels = section.get("labels")
        labels = validate_labels({} if raw_labels is None else raw_labels, what=f"{path}.labels")
        raw_resources = section.get("resources")
        resources = validate_selector_items([] if raw_resources is None else raw_resources, what=f"{path}.resources")
    for key in labels:
        _check_not_reserved(ctx, key, f"{path}.labels")
    commands = _parse_commands(ctx, section.get("commands"), f"{path}.commands")
    allowed = _parse_allowed_commands(ctx, section.get("allowed_label_commands"), f"{path}.allowed_label_commands")

    if kubeconfig_file is None and not resources:
        ctx.fail(f"{path} has neither static clusters (kubeconfig_file) nor resources selectors: nothing to serve")
    return KubeServiceConfig(
        enabled=True,
        listen_addr=listen,
        public_addr=public_addr,
        kubeconfig_file=kubeconfig_file,
        labels=MappingProxyType(labels),
        commands=commands,
        resources=tuple(MappingProxyType({"labels": MappingProxyType(item["labels"])}) for item in resources),
        allowed_label_commands=allowed,
    )


def _parse_nodename(ctx: _Ctx, value: object) -> str:
    if value is None:
        return socket.gethostname()
    name = ctx.string(value, "kubeport.nodename").strip()
    if len(name) > 253 or any(ch.isspace() or not ch.isprintable() for ch in name):
        ctx.fail(f"kubeport.nodename must be at most 253 printable characters without spaces, got {_show(value)}")
    return name


def _parse_log_level(ctx: _Ctx, value: object) -> str:
    if value is None:
        return "info"
    level = value.strip().lower() if isinstance(value, str) else ""
    level = "warning" if level == "warn" else level
    if level not in LOG_LEVELS:
        ctx.fail(f"kubeport.log_level must be one of {', '.join(LOG_LEVELS)}, got {_show(value)}")
    return level


def _build(ctx: _Ctx, raw: object) -> AgentConfig:
    if raw is None:
        ctx.fail("the file is empty; expected a mapping with kubeport: and kubernetes_service: sections")
    if not isinstance(raw, Mapping):
        ctx.fail(f"expected a mapping with kubeport: and kubernetes_service: sections, got {_show(raw)}")
    top = ctx.mapping(raw, "the top level")
    if "teleport" in top:
        ctx.fail(
            "teleport: is Teleport's section; kubeport reads registry, token, ca_pin and data_dir "
            "from a kubeport: section instead"
        )
    for key in top:
        if key in _TELEPORT_SECTIONS:
            ctx.fail(f"{key}: kubeport has no such service; an agent reads only kubeport: and kubernetes_service:")
    ctx.check_keys(top, "", _TOP_KEYS)
    version = top.get("version", "v1")
    if version != "v1":
        ctx.fail(f'version: only "v1" is supported, got {_show(version)}')

    if top.get("kubeport") is None:
        ctx.fail("kubeport.registry is required (the kubeport: section is missing)")
    kp = ctx.mapping(top["kubeport"], "kubeport", required=True)
    ctx.check_keys(kp, "kubeport", _KUBEPORT_KEYS)
    if kp.get("registry") is None:
        ctx.fail("kubeport.registry is required")
    registries = _parse_registries(ctx, kp["registry"], "kubeport.registry")

    token = None if kp.get("token") is None else ctx.string(kp["token"], "kubeport.token", secret=True).strip()
    token_file = None if kp.get("token_file") is None else _parse_path(ctx, kp["token_file"], "kubeport.token_file")
    if token is not None and token_file is not None:
        ctx.fail("kubeport.token and kubeport.token_file are both set; keep exactly one")

    if kp.get("data_dir") is not None:
        data_dir = _parse_path(ctx, kp["data_dir"], "kubeport.data_dir")
    elif ctx.env.get(DATA_DIR_ENV):
        data_dir = _parse_path(ctx, ctx.env[DATA_DIR_ENV], f"${DATA_DIR_ENV}")
    else:
        data_dir = DEFAULT_DATA_DIR

    nodename = _parse_nodename(ctx, kp.get("nodename"))
    ttl = (
        DEFAULT_HEARTBEAT_TTL
        if kp.get("heartbeat_ttl") is None
        else _parse_duration(ctx, kp["heartbeat_ttl"], "kubeport.heartbeat_ttl", MIN_HEARTBEAT_TTL)
    )
    return AgentConfig(
        registries=registries,
        token=token,
        token_file=token_file,
        ca_pins=_parse_pins(ctx, kp.get("ca_pin"), "kubeport.ca_pin"),
        data_dir=data_dir,
        nodename=nodename,
        heartbeat_ttl=ttl,
        log_level=_parse_log_level(ctx, kp.get("log_level")),
        kube=_parse_kube(ctx, top.get("kubernetes_service"), nodename),
    )


def _peek_token(raw: object) -> str | None:
    """The token as written, if any, so the last-guard redaction knows what to hide."""
    if isinstance(raw, Mapping):
        section = raw.get("kubeport")
        if isinstance(section, Mapping):
            token = section.get("token")
            if isinstance(token, str):
                return token.strip() or None
    return None


# ------------------------------------------------------------------------------------------------- API


def parse_config(text: str | bytes, *, source: str, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Parse and validate an agent config; ``source`` names it in messages, ``env`` defaults to os.environ."""
    raw = load_yaml_document(text, source)
    token = _peek_token(raw)
    try:
        return _build(_Ctx(source, os.environ if env is None else env), raw)
    except BadParameter as err:
        # "from None": the original message (identical unless redacted) must not ride along as __cause__.
        raise BadParameter(_redact(err.message, token)) from None


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the config file at ``path`` (at most :data:`MAX_CONFIG_BYTES`) and :func:`parse_config` it."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise BadParameter(f"{source}: cannot read the config: {err.strerror or err}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise BadParameter(f"{source}: the config is larger than {MAX_CONFIG_BYTES} bytes")
    return parse_config(data, source=source, env=env)
