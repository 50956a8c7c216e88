"""The registry's configuration file: ``kubeport registry start --config FILE`` (and ``kubeport start``).

The file is YAML in Teleport's shape, so the storage section of a ``teleport.yaml`` works unchanged::

    version: v3                       # optional; Teleport's config version
    teleport:
      data_dir: /var/lib/kubeport     # --data-dir
      diag_addr: 127.0.0.1:9464       # --metrics-listen (/metrics, /healthz, /readyz)
      storage:
        type: etcd                    # or sqlite (the default; "dir" is Teleport's name for it)
        peers: [10.0.0.1:2379, 10.0.0.2:2379]   # HOST:PORT or http(s)://HOST:PORT; --store etcd://...
        prefix: /kubeport/prod/       # --etcd-prefix
        tls_ca_file: etcd-ca.pem      # --etcd-ca (any tls_* key means https)
        tls_cert_file: etcd-client.pem
        tls_key_file: etcd-client-key.pem
    auth_service:
      listen_addr: 0.0.0.0:3025       # --listen
      public_addr: [registry.example.com:3025]  # --public-addr (one, or a list)
      authentication:
        second_factor: otp            # --second-factor (otp or off)
    proxy_service:
      kube_listen_addr: 0.0.0.0:3026  # --kube-listen
      kube_public_addr: kube.example.com:3026   # --kube-public-addr
      tunnel_public_addr: r1.example.com:3026   # --kube-tunnel-addr

Invariants:

* Parsing is pure (:func:`parse_registry_config` takes the bytes); :func:`load_registry_config` only reads
  the one file, at most :data:`MAX_CONFIG_BYTES`, through the registry's hardened YAML loader
  (``registry.core.validation.load_yaml_document``: no tags, anchors, aliases, merge or duplicate keys).
* Strict: an unknown key is an error naming its path (with a close-match hint), a wrongly typed value names
  the key and the expected type. Every message starts with the file's name.
* The file is never printed: messages name keys and types; a value is quoted only when it is an address
  that failed to parse (shortened), never a ``tls_*`` file name or any string that is not one printable line.
* :meth:`RegistryFileConfig.values` maps what the file sets to the command line's option names; the command
  line applies them only where the user gave no flag (flags override the file).
* Relative paths are kept as written (they resolve against the working directory, as flags do).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from registry.core import validation
from registry.core.errors import BadParameter, TooLarge
from registry.core.netaddr import parse_hostport
from registry.host.files import read_limited
from registry.store.etcd_client import parse_endpoints

__all__ = ["MAX_CONFIG_BYTES", "RegistryFileConfig", "load_registry_config", "parse_registry_config"]

MAX_CONFIG_BYTES = 64 * 1024
MAX_PEERS = 32
MAX_PUBLIC_ADDRS = 16
_VERSIONS = ("v1", "v2", "v3")
_SECOND_FACTORS = ("otp", "off")
_TRUE = ("yes", "true", "on", "1")

_TOP = ("version", "teleport", "auth_service", "proxy_service")
_TELEPORT = ("data_dir", "diag_addr", "storage")
_STORAGE = ("type", "peers", "prefix", "tls_ca_file", "tls_cert_file", "tls_key_file")
_AUTH = ("enabled", "listen_addr", "public_addr", "authentication")
_AUTHENTICATION = ("second_factor",)
_PROXY = ("enabled", "kube_listen_addr", "kube_public_addr", "tunnel_public_addr")


@dataclass(frozen=True)
class RegistryFileConfig:
    """What a registry config file sets, by command-line option (argparse ``dest``); absent keys are absent.

    ``values`` uses the flags' own spellings: ``store`` is ``etcd://...``/``etcds://...``/``sqlite``,
    ``public_addr`` a list, paths strings."""

    source: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        return dict(self.settings)


def load_registry_config(path: str | Path) -> RegistryFileConfig:
    """Read and parse ``path`` (at most :data:`MAX_CONFIG_BYTES`); BadParameter naming it on any failure."""
    source = str(path)
    try:
        data = read_limited(Path(path).expanduser(), limit=MAX_CONFIG_BYTES, what="--config file")
    except TooLarge as err:
        raise BadParameter(err.message) from None
    return parse_registry_config(data, source=source)


def parse_registry_config(data: str | bytes, *, source: str) -> RegistryFileConfig:
    """The settings of one config file's text (see the module docstring for the shape)."""
    parser = _Parser(source)
    document = validation.load_yaml_document(data, source=source, limit=MAX_CONFIG_BYTES)
    if document is None:
        return RegistryFileConfig(source=source)
    top = parser.mapping(document, "the file", required=True)
    parser.check_keys(top, "", _TOP)
    if "version" in top and top["version"] not in _VERSIONS:
        parser.fail(f"version must be one of {', '.join(_VERSIONS)}")
    settings: dict[str, Any] = {}
    teleport = parser.mapping(top.get("teleport"), "teleport")
    parser.check_keys(teleport, "teleport", _TELEPORT)
    if "data_dir" in teleport:
        settings["data_dir"] = parser.path(teleport["data_dir"], "teleport.data_dir")
    if "diag_addr" in teleport:
        settings["metrics_listen"] = parser.address(teleport["diag_addr"], "teleport.diag_addr")
    if "storage" in teleport:
        settings.update(parser.storage(teleport["storage"]))
    auth = parser.mapping(top.get("auth_service"), "auth_service")
    parser.check_keys(auth, "auth_service", _AUTH)
    parser.enabled(auth, "auth_service")
    if "listen_addr" in auth:
        settings["listen"] = parser.address(auth["listen_addr"], "auth_service.listen_addr")
    if "public_addr" in auth:
        settings["public_addr"] = parser.addresses(auth["public_addr"], "auth_service.public_addr")
    authentication = parser.mapping(auth.get("authentication"), "auth_service.authentication")
    parser.check_keys(authentication, "auth_service.authentication", _AUTHENTICATION)
    if "second_factor" in authentication:
        where = "auth_service.authentication.second_factor"
        factor = parser.string(authentication["second_factor"], where)
        if factor not in _SECOND_FACTORS:
            parser.fail(f"{where} must be one of {', '.join(_SECOND_FACTORS)}")
        settings["second_factor"] = factor
    proxy = parser.mapping(top.get("proxy_service"), "proxy_service")
    parser.check_keys(proxy, "proxy_service", _PROXY)
    parser.enabled(proxy, "proxy_service")
    for key, dest, public in (
        ("kube_listen_addr", "kube_listen", False),
        ("kube_public_addr", "kube_public_addr", True),
        ("tunnel_public_addr", "kube_tunnel_addr", True),
    ):
        if key in proxy:
            settings[dest] = parser.address(proxy[key], f"proxy_service.{key}", public=public)
    return RegistryFileConfig(source=source, settings=settings)


class _Parser:
    """Messages from one file: every failure is ``BadParameter("<source>: <key path> ...")``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str) -> NoReturn:
        raise BadParameter(f"{self.source}: {message}")

    def mapping(self, value: object, where: str, *, required: bool = False) -> Mapping[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"{where} must be a mapping, got {validation.describe_type(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(f"{where}: keys must be strings, got {validation.describe_type(key)}")
        return value

    def check_keys(self, section: Mapping[str, Any], where: str, allowed: Sequence[str]) -> None:
        for key in section:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(allowed)})"
                if len(key) > 64 or not key.isprintable():  # not a misspelt key: maybe pasted secret text
                    self.fail(f"{where or 'the file'}: an unknown key of {len(key)} characters")
                path = validation.quote(f"{where}.{key}" if where else key)
                self.fail(f"unknown key {path}{hint}")

    def string(self, value: object, where: str) -> str:
        """A non-empty, single-line printable string; the value is never shown (it could be a secret)."""
        if not isinstance(value, str):
            self.fail(f"{where} must be a string, got {validation.describe_type(value)}")
        if not value.strip():
            self.fail(f"{where} must not be empty")
        if not value.isprintable() or len(value) > 4096:
            self.fail(f"{where} must be one line of printable text of at most 4096 characters")
        return value

    def path(self, value: object, where: str) -> str:
        return self.string(value, where)

    def enabled(self, section: Mapping[str, Any], where: str) -> None:
        """Teleport's ``enabled``: the registry always runs its API and front door, so only yes is accepted."""
        if "enabled" not in section:
            return
        value = section["enabled"]
        if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
            return
        self.fail(f"{where}.enabled: the registry always runs it; remove the key or set it to yes")

    def address(self, value: object, where: str, *, public: bool = False) -> str:
        """``HOST:PORT`` (a listen address may omit the host; a public one may not)."""
        text = self.string(value, where)
        try:
            host, _ = parse_hostport(text, default_port=1, what=where, default_host="")
        except BadParameter as err:
            self.fail(err.message)
        if public and not host:
            self.fail(f"{where} needs a host name or address agents can reach, e.g. HOST:3026")
        return text.strip()

    def addresses(self, value: object, where: str) -> list[str]:
        items = value if isinstance(value, list) else [value]
        if not items:
            self.fail(f"{where} must name at least one address")
        if len(items) > MAX_PUBLIC_ADDRS:
            self.fail(f"{where} names {len(items)} addresses; at most {MAX_PUBLIC_ADDRS} are allowed")
        listed = isinstance(value, list)
        return [self.address(item, f"{where}[{i}]" if listed else where, public=True) for i, item in enumerate(items)]

    def storage(self, value: object) -> dict[str, Any]:
        """``teleport.storage`` as the store flags: ``store``, ``etcd_prefix``, ``etcd_ca/cert/key``."""
        section = self.mapping(value, "teleport.storage", required=True)
        if "type" not in section:
            self.fail("teleport.storage.type is required (sqlite or etcd)")
        kind = self.string(section["type"], "teleport.storage.type")
        if kind in ("sqlite", "dir"):
            self.check_keys(section, "teleport.storage", ("type",))
            return {"store": "sqlite"}
        if kind != "etcd":
            self.fail("teleport.storage.type must be sqlite or etcd")
        self.check_keys(section, "teleport.storage", _STORAGE)
        out: dict[str, Any] = {}
        for key, dest in (("tls_ca_file", "etcd_ca"), ("tls_cert_file", "etcd_cert"), ("tls_key_file", "etcd_key")):
            if key in section:
                out[dest] = self.path(section[key], f"teleport.storage.{key}")
        peers = section.get("peers")
        if not isinstance(peers, list) or not peers:
            shown = "nothing" if peers is None else validation.describe_type(peers)
            self.fail(f"teleport.storage.peers must be a non-empty list of HOST:PORT strings, got {shown}")
        if len(peers) > MAX_PEERS:
            self.fail(f"teleport.storage.peers names {len(peers)} endpoints; at most {MAX_PEERS} are allowed")
        tls = bool(out)
        urls: list[str] = []
        texts: list[str] = []
        for i, peer in enumerate(peers):
            where = f"teleport.storage.peers[{i}]"
            text = self.string(peer, where).strip()
            if "," in text:
                self.fail(f"{where}: one endpoint per list item")
            texts.append(text)
            try:
                urls.extend(parse_endpoints(text, tls=tls))
            except BadParameter as err:
                self.fail(f"{where}: {err.message}")
        schemes = {url.split("://", 1)[0] for url in urls}
        if len(schemes) > 1:
            self.fail("teleport.storage.peers mixes http:// and https:// endpoints")
        if tls and schemes == {"http"}:
            self.fail("teleport.storage: the tls_* files need https:// peers (or peers without a scheme)")
        out["store"] = ("etcds://" if schemes == {"https"} else "etcd://") + ",".join(texts)
        if "prefix" in section:
            out["etcd_prefix"] = self.string(section["prefix"], "teleport.storage.prefix")
        return out
