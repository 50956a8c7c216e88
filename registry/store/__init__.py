"""Registry storage: the :class:`Store` protocol and its backends.

``open_store`` picks a backend from a URL or path:

* ``memory://`` — :class:`MemoryStore` (nothing survives the process);
* ``sqlite:///var/lib/kubeport/registry.db`` — :class:`SQLiteStore` at the path after ``sqlite://``
  (so three slashes give an absolute path);
* anything without a scheme — a file path for :class:`SQLiteStore`.

The etcd backend (:mod:`registry.store.etcd`) also needs the registry's key file and TLS files, so the
registry opens it from its flags (``registry/server/store_config.py``), not through ``open_store``.
"""

from __future__ import annotations

import re

from registry.core.errors import BadParameter
from registry.store._plan import encoded as encode_value
from registry.store._secrets import without_secret_fields
from registry.store.base import EncodedValue, Event, Record, Store, StoreClosed, Write, serve_expiry
from registry.store.memory import MemoryStore
from registry.store.sqlite import SQLiteStore

__all__ = [
    "EncodedValue",
    "Event",
    "MemoryStore",
    "Record",
    "SQLiteStore",
    "Store",
    "StoreClosed",
    "Write",
    "encode_value",
    "open_store",
    "serve_expiry",
    "without_secret_fields",
]

_SCHEME_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")


async def open_store(url_or_path: str) -> Store:
    """Open the store named by ``url_or_path`` (see the module docstring); BadParameter when unusable."""
    if not isinstance(url_or_path, str) or not url_or_path:
        raise BadParameter(f"store must be memory://, sqlite:///path or a file path, got {url_or_path!r}")
    match = _SCHEME_RE.match(url_or_path)
    if match is None:
        return await SQLiteStore.open(url_or_path)
    scheme = match.group(1).lower()
    rest = url_or_path[match.end() :]
    if scheme == "memory":
        if rest:
            raise BadParameter(f"store {url_or_path!r}: memory:// takes nothing after the scheme")
        return MemoryStore()
    if scheme == "sqlite":
        if not rest:
            raise BadParameter(
                f"store {url_or_path!r}: sqlite:// needs a path, e.g. sqlite:///var/lib/kubeport/registry.db"
            )
        return await SQLiteStore.open(rest)
    raise BadParameter(f"store {url_or_path!r}: unsupported scheme {scheme!r} (use memory:// or sqlite:///path)")
