"""Encryption at rest for what kubeport puts in etcd: AES-256-GCM with a key that stays on the registry hosts.

Everything the etcd backend stores under ``items/`` and ``hist/`` (records, history, the cluster CA with
its private key, kubeconfigs, tokens) is sealed; only the revision counter, the compaction floor and the
key names are plain. Whoever reads etcd (a backup, a snapshot, another tenant of a shared etcd, etcd's own
MVCC history of superseded values) sees ciphertext.

Invariants:

* The master key is 32 random bytes from the key file (``etcd.key`` in the registry data dir, base64, 0600;
  the same file on every replica). It never goes to etcd.
* Nonces never repeat: each :class:`Sealer` draws a random 16-byte session id, derives its own AES key from
  the master key with HKDF-SHA256 (info = session id), and numbers its messages with a 64-bit counter. A
  random 96-bit nonce per message would cap a key at about 2^32 messages; heartbeats reach that in months.
* The etcd key is the associated data: a sealed value moved to another key (or another kubeport prefix)
  does not open.
* Blob layout: ``b"\\x01" + session id (16) + nonce (12) + ciphertext with tag``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from registry.core.errors import BadParameter, ConnectionProblem

KEY_BYTES = 32
_VERSION = b"\x01"
_SESSION = 16
_NONCE = 12
_HEADER = 1 + _SESSION + _NONCE
_MAX_CACHED_SESSIONS = 256  # one per registry process that ever wrote; old ones are re-derived on demand


class Unsealable(ConnectionProblem):
    """A stored value did not open with this key (another key file, or damaged data)."""


def generate_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def encode_key_file(key: bytes) -> bytes:
    return base64.b64encode(key) + b"\n"


def decode_key_file(data: bytes, *, where: str) -> bytes:
    """The master key from a key file's bytes; BadParameter naming ``where`` when it is not one."""
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadParameter(f"{where} is not an etcd key file (base64 of {KEY_BYTES} bytes)") from None
    if len(key) != KEY_BYTES:
        raise BadParameter(f"{where} is not an etcd key file (base64 of {KEY_BYTES} bytes)")
    return key


class Sealer:
    """Seals and opens values for one master key; see the module docstring."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise BadParameter(f"the etcd encryption key must be {KEY_BYTES} bytes")
        self._key = key
        self._session = os.urandom(_SESSION)
        self._aead = self._derive(self._session)
        self._counter = 0
        self._sessions: OrderedDict[bytes, AESGCM] = OrderedDict({self._session: self._aead})

    def _derive(self, session: bytes) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"kubeport-etcd:" + session)
        return AESGCM(hkdf.derive(self._key))

    def seal(self, where: bytes, plaintext: bytes) -> bytes:
        self._counter += 1
        nonce = self._counter.to_bytes(_NONCE, "big")
        return _VERSION + self._session + nonce + self._aead.encrypt(nonce, plaintext, where)

    def open(self, where: bytes, blob: bytes) -> bytes:
        if len(blob) < _HEADER + 16 or blob[:1] != _VERSION:
            raise Unsealable(f"etcd value at {where!r:.80} is not sealed by kubeport")
        session = blob[1 : 1 + _SESSION]
        aead = self._sessions.get(session)
        if aead is None:
            aead = self._derive(session)
            self._sessions[session] = aead
            if len(self._sessions) > _MAX_CACHED_SESSIONS:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(session)
        try:
            return aead.decrypt(blob[1 + _SESSION : _HEADER], blob[_HEADER:], where)
        except InvalidTag:
            raise Unsealable(
                f"etcd value at {where!r:.80} does not open with this key file (another key, or damaged data)"
            ) from None
