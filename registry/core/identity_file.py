"""Identity files: the text file holding a client's private key, its certificate and the trusted CA(s).

Format (:meth:`IdentityFile.dump`): a ``#`` comment header (``# kubeport identity: <name> (<kind>)`` and
optionally ``# registry: <host:port>``), then PEM blocks: the private key (``PRIVATE KEY``), the
certificate, then one or more CA certificates. :meth:`IdentityFile.parse` reads it back; the first
certificate is always the identity's, the rest are CAs.

Invariants:

* An :class:`IdentityFile` that exists is consistent: the key belongs to the certificate, the certificate was
  issued by one of its CAs (at least one) and names a valid identity, and ``registry`` (when set) is one
  printable token. Construction checks this; parsing checks it first so its errors name the source.
* Parsing is strict and bounded (at most :data:`MAX_IDENTITY_FILE_BYTES`, UTF-8, only ``PRIVATE KEY`` and
  ``CERTIFICATE`` blocks, one key, unterminated blocks refused); every error names the file and what is
  wrong.
* The private key is kept out of ``repr`` (logs, tracebacks).

Certificates and keys are loaded by the strict loaders of :mod:`registry.core.identity`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from registry.core.errors import BadParameter, TooLarge
from registry.core.identity import (
    Identity,
    identity_from_cert,
    is_issued_by,
    load_certificate,
    load_private_key,
    spki_der,
)

MAX_IDENTITY_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class IdentityFile:
    """Everything a client needs to talk to the registry: its key, certificate and the trusted CA(s).

    Construction validates: the key belongs to the certificate, the certificate was issued by one of the CAs,
    at least one CA. ``registry`` is the address (``host:port``) the identity was issued by, when known.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pems: tuple[bytes, ...]
    registry: str | None = None

    def __post_init__(self) -> None:
        try:
            _check_identity_file(self.cert_pem, self.key_pem, self.ca_pems, self.registry)
        except (BadParameter, TooLarge) as exc:
            raise type(exc)(f"identity file: {exc.message}") from exc

    def identity(self) -> Identity:
        return identity_from_cert(self.cert_pem)

    def dump(self) -> bytes:
        """The file text: comment header, key, certificate, CA certificate(s)."""
        who = self.identity()
        lines = [f"# kubeport identity: {who.name} ({who.kind})\n"]
        if self.registry is not None:
            lines.append(f"# registry: {self.registry}\n")
        header = "".join(lines).encode()
        blocks = [self.key_pem, self.cert_pem, *self.ca_pems]
        return header + b"".join(block if block.endswith(b"\n") else block + b"\n" for block in blocks)

    @classmethod
    def parse(cls, data: bytes, *, source: str) -> IdentityFile:
        """Parse :meth:`dump` output; ``source`` (usually the path) prefixes every error message."""
        try:
            return cls._parse(data)
        except (BadParameter, TooLarge) as exc:
            raise type(exc)(f"identity file {source}: {exc.message}") from exc

    @classmethod
    def _parse(cls, data: bytes) -> IdentityFile:
        if len(data) > MAX_IDENTITY_FILE_BYTES:
            raise TooLarge(f"it is {len(data)} bytes; the limit is {MAX_IDENTITY_FILE_BYTES}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadParameter(f"it is not UTF-8 text (byte {exc.start})") from exc
        registry: str | None = None
        keys: list[bytes] = []
        certs: list[bytes] = []
        block: list[str] | None = None
        block_label = ""
        for number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if block is not None:
                block.append(line)
                if line.startswith("-----END "):
                    if line != f"-----END {block_label}-----":
                        raise BadParameter(f"line {number}: expected -----END {block_label}-----")
                    pem = ("\n".join(block) + "\n").encode("ascii", errors="replace")
                    (keys if block_label == "PRIVATE KEY" else certs).append(pem)
                    block = None
                continue
            if not line:
                continue
            if line.startswith("#"):
                value = _header_value(line, "registry")
                if value is not None:
                    if registry is not None:
                        raise BadParameter(f"line {number}: the registry is named twice")
                    registry = value
                continue
            match = re.fullmatch(r"-----BEGIN ([A-Z0-9 ]{1,40})-----", line)
            if match is None:
                # Never quote the line: outside a block it may be part of a private key pasted out of place.
                raise BadParameter(f"line {number}: expected a PEM block or a # comment")
            block_label = match.group(1)
            if block_label not in ("PRIVATE KEY", "CERTIFICATE"):
                hint = " (encrypted keys are not supported)" if "ENCRYPTED" in block_label else ""
                raise BadParameter(f"line {number}: unexpected PEM block {block_label!r}{hint}")
            block = [line]
        if block is not None:
            raise BadParameter(f"the {block_label} block is not terminated")
        if not keys:
            raise BadParameter("it has no private key")
        if len(keys) > 1:
            raise BadParameter(f"it has {len(keys)} private keys; expected one")
        if not certs:
            raise BadParameter("it has no certificate")
        if len(certs) < 2:
            raise BadParameter("it has no CA certificate after the identity certificate")
        # Checked here first so the messages carry the source (parse() prefixes it); construction then
        # re-checks, which cannot fail and costs a few microseconds.
        _check_identity_file(certs[0], keys[0], tuple(certs[1:]), registry)
        return cls(cert_pem=certs[0], key_pem=keys[0], ca_pems=tuple(certs[1:]), registry=registry)


def _check_identity_file(cert_pem: bytes, key_pem: bytes, ca_pems: tuple[bytes, ...], registry: str | None) -> None:
    cert = load_certificate(cert_pem, "certificate")
    key = load_private_key(key_pem, "private key")
    if spki_der(key.public_key()) != spki_der(cert.public_key()):
        raise BadParameter("the private key does not belong to the certificate")
    if not isinstance(ca_pems, tuple) or not ca_pems:
        raise BadParameter("it has no CA certificate")
    cas = [load_certificate(pem, f"CA certificate #{i}") for i, pem in enumerate(ca_pems, start=1)]
    if not any(is_issued_by(cert, ca) for ca in cas):
        raise BadParameter("the certificate was not issued by any CA in the file")
    identity_from_cert(cert_pem)  # its subject must name a valid identity (the bytes were loaded above)
    if registry is not None and (
        not registry or len(registry) > 512 or any(ch.isspace() or not ch.isprintable() for ch in registry)
    ):
        raise BadParameter(f"registry address {registry[:80]!r} is not a host:port")


def _header_value(line: str, key: str) -> str | None:
    body = line.lstrip("#").strip()
    prefix = f"{key}:"
    if not body.startswith(prefix):
        return None
    return body[len(prefix) :].strip()
