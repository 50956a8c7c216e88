"""Which store a registry runs on: the embedded SQLite file (default) or an etcd cluster (``--store etcd://``).

``kubeport registry start --store etcd://HOST:PORT[,HOST:PORT...]`` with ``--etcd-prefix`` (one prefix per
kubeport cluster sharing an etcd) and ``--etcd-ca/--etcd-cert/--etcd-key`` for TLS to etcd (``etcds://``
or any TLS flag switches the endpoints to https).

The etcd key file (``etcd.key`` in the data dir, 0600) seals every value kubeport writes to etcd
(``registry.store.etcd_seal``). Invariants:

* The first ``registry start`` on an empty prefix creates it; every other replica needs a copy of the same
  file (the admin copies it, like the admin identity). A replica with another key, or none, is refused
  before it writes anything ("copy etcd.key ..."), and a key file this start created is removed again, so a
  wrong key never lingers.
* Losing the etcd data is caught by the same rule as losing ``registry.db``: a data dir with ``ca.pin`` or
  ``admin.identity`` never gets a new CA (``serve.load_or_create_ca``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from registry.core.errors import BadParameter
from registry.host.files import read_limited, write_secret_file
from registry.host.paths import STORE_FILE
from registry.store import SQLiteStore, Store
from registry.store.etcd import DEFAULT_PREFIX, EtcdStore, check_prefix
from registry.store.etcd_client import parse_endpoints
from registry.store.etcd_seal import decode_key_file, encode_key_file, generate_key

__all__ = ["DEFAULT_PREFIX", "ETCD_KEY_FILE", "StoreConfig", "open_registry_store"]

ETCD_KEY_FILE = "etcd.key"
_MAX_PEM = 1024 * 1024


@dataclass(frozen=True)
class StoreConfig:
    """``store``: "" or "sqlite" for the data dir's SQLite file, else ``etcd://HOST:PORT[,...]``."""

    store: str = ""
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None

    def check(self) -> StoreConfig:
        """Validate every flag before anything is opened (BadParameter naming the flag)."""
        if self.store in ("", "sqlite"):
            if any((self.etcd_ca, self.etcd_cert, self.etcd_key)) or self.etcd_prefix != DEFAULT_PREFIX:
                raise BadParameter("--etcd-prefix/--etcd-ca/--etcd-cert/--etcd-key need --store etcd://HOST:PORT")
            return self
        self.endpoints()
        check_prefix(self.etcd_prefix)
        if (self.etcd_cert is None) != (self.etcd_key is None):
            raise BadParameter("--etcd-cert and --etcd-key go together")
        return self

    def describe(self) -> str | None:
        """How messages name this store (None: the SQLite file, which the caller names)."""
        if self.store in ("", "sqlite"):
            return None
        return f"the etcd data under prefix {check_prefix(self.etcd_prefix)} ({', '.join(self.endpoints())})"

    @property
    def tls(self) -> bool:
        return self.store.startswith("etcds://") or any((self.etcd_ca, self.etcd_cert, self.etcd_key))

    def endpoints(self) -> list[str]:
        for scheme in ("etcd://", "etcds://"):
            if self.store.startswith(scheme):
                return parse_endpoints(self.store[len(scheme) :], tls=self.tls)
        raise BadParameter(f"--store {self.store!r:.100}: use sqlite (the default) or etcd://HOST:PORT[,HOST:PORT...]")


async def open_registry_store(config: StoreConfig, data_dir: Path) -> Store:
    """The store ``config`` names, for a registry whose (private, existing) data dir is ``data_dir``."""
    config.check()
    if config.store in ("", "sqlite"):
        return await SQLiteStore.open(data_dir / STORE_FILE)
    key, created = _load_or_create_key(data_dir / ETCD_KEY_FILE)
    try:
        return await EtcdStore.open(config.endpoints(), key=key, prefix=config.etcd_prefix, tls=_tls_context(config))
    except BaseException:
        if created:  # never leave behind a key that does not belong to the data in etcd
            (data_dir / ETCD_KEY_FILE).unlink(missing_ok=True)
        raise


def _load_or_create_key(path: Path) -> tuple[bytes, bool]:
    if path.exists():
        return decode_key_file(read_limited(path, limit=4096, what="etcd key file"), where=str(path)), False
    key = generate_key()
    write_secret_file(path, encode_key_file(key))
    return key, True


def _tls_context(config: StoreConfig) -> ssl.SSLContext | None:
    """TLS to etcd: verify it against ``--etcd-ca`` (the system roots without it), present the client cert."""
    if not config.tls:
        return None
    try:
        if config.etcd_ca is not None:
            ca = read_limited(config.etcd_ca, limit=_MAX_PEM, what="--etcd-ca").decode("ascii")
            context = ssl.create_default_context(cadata=ca)
        else:
            context = ssl.create_default_context()
        if config.etcd_cert is not None and config.etcd_key is not None:
            for path, what in ((config.etcd_cert, "--etcd-cert"), (config.etcd_key, "--etcd-key")):
                read_limited(path, limit=_MAX_PEM, what=what)  # readable and not huge, with a clear message
            context.load_cert_chain(config.etcd_cert, config.etcd_key)
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        raise BadParameter(f"the etcd TLS files do not load: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
