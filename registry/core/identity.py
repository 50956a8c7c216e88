"""Cluster identities: the cluster CA, keys, CSRs and certificates.

Pure (bytes in, bytes out, time injected as UTC-aware ``now`` parameters); all crypto is done by the
``cryptography`` library.

Who someone is lives in the X.509 subject of a certificate issued by the one cluster CA:
CN = name, OU = kind (``admin`` | ``user`` | ``agent`` | ``registry``), one O per role, and for agents
UID = host id. The extensions decide what the certificate may be used for: every leaf may authenticate a
client (clientAuth); only ``registry`` and ``agent`` certificates may also serve TLS (serverAuth).

Invariants the CA enforces on everything it signs:

* only a ``registry`` certificate ever names :data:`REGISTRY_SERVER_NAME` (as a DNS SAN or as its CN), so no
  agent or user certificate can impersonate the registry to a client that checks that name;
* the subject and extensions come from the server's :class:`Identity`, never from a CSR;
* leaf keys are ECDSA P-256, leaves are never CAs, and a leaf never outlives the CA that signed it;
* no wildcard or non-ASCII DNS names.

The strict loaders (``load_certificate``, ``load_private_key``) bound their input and turn every parse
failure into a BadParameter naming what was loaded; identity files (``registry.core.identity_file``) use
them too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeVar, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry.core.errors import AccessDenied, BadParameter, TooLarge, Unauthenticated
from registry.core.timefmt import format_rfc3339

REGISTRY_SERVER_NAME = "registry.kubeport.local"
"""The DNS name clients always verify the registry against, whatever address they dialled."""

IdentityKind = Literal["admin", "user", "agent", "registry"]
IDENTITY_KINDS: tuple[IdentityKind, ...] = get_args(IdentityKind)

ADMIN_TTL = timedelta(days=7)
USER_TTL = timedelta(hours=12)
AGENT_TTL = timedelta(hours=24)
REGISTRY_TTL = timedelta(days=90)
CA_TTL = timedelta(days=3650)
DEFAULT_TTLS: Mapping[IdentityKind, timedelta] = {
    "admin": ADMIN_TTL,
    "user": USER_TTL,
    "agent": AGENT_TTL,
    "registry": REGISTRY_TTL,
}

CLOCK_SKEW = timedelta(minutes=1)
"""Certificates start this long before ``now`` so a peer whose clock runs a little behind accepts them."""

MAX_CSR_BYTES = 16 * 1024
MAX_CERT_BYTES = 64 * 1024
MAX_KEY_BYTES = 64 * 1024

_CA_ORGANIZATION = "kubeport"
_MAX_NAME_CHARS = 64  # X.520 upper bound for CN, OU and O
_MAX_HOST_ID_CHARS = 128  # UID has no such bound; matches the join handler's host id rule
_SERVER_KINDS: frozenset[str] = frozenset({"registry", "agent"})
_REGISTRY_ONLY_NAMES = frozenset({REGISTRY_SERVER_NAME})
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME_RE = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$")
_PIN_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_PIN_PREFIX = "sha256:"


# --------------------------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for. The validity and serial fields are filled from a certificate; the CA
    ignores them when issuing (it decides validity from ``ttl`` and ``now``)."""

    name: str
    kind: IdentityKind
    roles: tuple[str, ...] = ()
    host_id: str | None = None
    not_before: datetime | None = None
    expires: datetime | None = None
    serial: int | None = None

    def __post_init__(self) -> None:
        _check_subject_text(self.name, "identity name")
        if self.kind not in IDENTITY_KINDS:
            raise BadParameter(
                f"identity {self.name!r}: kind must be one of {', '.join(IDENTITY_KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.roles, tuple):
            raise BadParameter(f"identity {self.name!r}: roles must be a tuple, got {type(self.roles).__name__}")
        for role in self.roles:
            _check_subject_text(role, f"identity {self.name!r}: role")
        if len(set(self.roles)) != len(self.roles):
            raise BadParameter(f"identity {self.name!r}: roles must not repeat, got {list(self.roles)}")
        if self.host_id is not None:
            if self.kind != "agent":
                raise BadParameter(f"identity {self.name!r}: only agent identities carry a host_id")
            _check_subject_text(self.host_id, f"identity {self.name!r}: host_id", limit=_MAX_HOST_ID_CHARS)
        for label, value in (("not_before", self.not_before), ("expires", self.expires)):
            if value is not None:
                _require_aware(value, f"identity {self.name!r}: {label}")
        if self.serial is not None and self.serial < 0:
            raise BadParameter(f"identity {self.name!r}: serial must not be negative")


def needs_renewal(identity: Identity, now: datetime) -> bool:
    """True once half of the certificate's lifetime has passed (or it expired). An identity without
    validity times (not read from a certificate) always needs a fresh certificate."""
    _require_aware(now, "now")
    if identity.not_before is None or identity.expires is None:
        return True
    half_life = identity.not_before + (identity.expires - identity.not_before) / 2
    return now >= half_life


def identity_from_cert(cert_pem_or_der: bytes) -> Identity:
    """The identity a certificate's subject describes, WITHOUT checking who signed it (see
    :meth:`CertAuthority.verify` for that). Malformed input raises BadParameter."""
    return _identity_of(load_certificate(cert_pem_or_der, "certificate"))


# ------------------------------------------------------------------------------------------ keys and CSRs


def generate_private_key() -> bytes:
    """A fresh ECDSA P-256 private key, PKCS#8 PEM, unencrypted (files holding it are written 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _private_pem(key)


def public_key_pem(key_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private key."""
    key = load_private_key(key_pem, "private key")
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_csr(key_pem: bytes, common_name: str) -> bytes:
    """A PEM certificate signing request for ``key_pem``. The subject is only a hint for logs: the CA
    decides the real subject."""
    _check_subject_text(common_name, "CSR common name")
    key = load_private_key(key_pem, "private key")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------------------------------------------- pins


def ca_pin(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of the CA certificate's DER SubjectPublicKeyInfo (Teleport's CA pin format)."""
    return _pin_of(load_certificate(cert_pem, "CA certificate"))


def check_pin(cert_pem: bytes, pin: str) -> None:
    """Raise AccessDenied unless ``cert_pem`` has the given pin (compared case-insensitively)."""
    match = _PIN_RE.match(pin.strip().lower())
    if match is None:
        raise BadParameter(f"CA pin {pin!r} is malformed: expected sha256:<64 hex digits>")
    expected = _PIN_PREFIX + match.group(1)
    actual = ca_pin(cert_pem)
    # Pins are public, but a constant-time compare costs nothing and ends the discussion.
    if not hmac.compare_digest(expected, actual):
        raise AccessDenied(f"registry CA pin mismatch: expected {expected}, got {actual}")


# ------------------------------------------------------------------------- loading certificates and keys


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """A PEM or DER certificate; refuses non-bytes, more than :data:`MAX_CERT_BYTES` and anything
    unparsable, with ``what`` naming it in the message."""
    if not isinstance(data, bytes):
        raise BadParameter(f"{what} must be bytes, got {type(data).__name__}")
    _check_size(data, MAX_CERT_BYTES, what)
    with _malformed(what):
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)


def load_private_key(data: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM ECDSA P-256 private key (at most :data:`MAX_KEY_BYTES`); anything else is refused
    with ``what`` naming it in the message."""
    _check_size(data, MAX_KEY_BYTES, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "encrypted, and no password given"
        raise BadParameter(f"{what} is encrypted; kubeport needs an unencrypted key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"{what} is malformed: {_first_line(exc)}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadParameter(f"{what} must be ECDSA P-256, got {_describe_key(key)}")
    return key


def spki_der(public_key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of an ECDSA public key: equal bytes mean the same key."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise BadParameter(f"expected an ECDSA key, got {_describe_key(public_key)}")
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def is_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (signature and issuer name; validity times are not checked)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ---------------------------------------------------------------------------------------- the cluster CA


_VERIFIED_CACHE = 4096  # verified client certificates remembered per CA (a few hundred bytes each)


class CertAuthority:
    """The cluster CA: one self-signed ECDSA P-256 certificate and its key. Issues and verifies leaves."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        # Use generate() or from_pem(); they establish the pairing and CA-ness this relies on.
        self._cert = cert
        self._key = key
        self._cluster_name = _single_attribute(cert.subject, NameOID.COMMON_NAME, "CA certificate CN")
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._key_pem = _private_pem(key)
        self._pin = _pin_of(cert)
        # Certificates whose signature and identity were checked, by their bytes (see verify).
        self._verified: dict[bytes, tuple[x509.Certificate, Identity]] = {}

    def __repr__(self) -> str:
        return f"CertAuthority(cluster_name={self._cluster_name!r}, pin={self._pin!r})"

    @classmethod
    def generate(cls, cluster_name: str, *, now: datetime) -> CertAuthority:
        """A new CA for ``cluster_name``, valid for :data:`CA_TTL` from ``now``."""
        _require_aware(now, "now")
        _check_subject_text(cluster_name, "cluster name")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cluster_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _CA_ORGANIZATION),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            _builder(subject, subject, key.public_key(), now=now, not_after=now + CA_TTL, ca=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertAuthority:
        """Reload a CA; refuses a key that does not belong to the certificate or a certificate that is not
        a self-signed CA."""
        cert = load_certificate(cert_pem, "CA certificate")
        key = load_private_key(key_pem, "CA private key")
        if spki_der(key.public_key()) != spki_der(cert.public_key()):
            raise BadParameter("CA private key does not belong to the CA certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise BadParameter("CA certificate is not a CA (basicConstraints CA:TRUE is missing)")
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise BadParameter("CA certificate is not self-signed") from exc
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def key_pem(self) -> bytes:
        return self._key_pem

    @property
    def cluster_name(self) -> str:
        return self._cluster_name

    @property
    def pin(self) -> str:
        return self._pin

    @property
    def expires(self) -> datetime:
        return self._cert.not_valid_after_utc

    def issue(
        self,
        public_key_pem: bytes,
        identity: Identity,
        *,
        ttl: timedelta,
        now: datetime,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> bytes:
        """Sign a certificate (PEM) for ``identity`` over ``public_key_pem`` (an ECDSA P-256 SPKI PEM).

        ``registry`` certificates always name REGISTRY_SERVER_NAME, ``localhost``, 127.0.0.1 and ::1 in
        addition to ``dns_names``/``ip_addresses``; ``agent`` certificates name only what is given;
        client-only kinds (``admin``, ``user``) take no names at all.
        """
        _check_size(public_key_pem, MAX_KEY_BYTES, "public key")
        with _malformed("public key"):
            public_key = serialization.load_pem_public_key(public_key_pem)
        return self._issue(public_key, identity, ttl=ttl, now=now, dns_names=dns_names, ips=ip_addresses)

    def sign_csr(
        self,
        csr_pem: bytes,
        identity: Identity,
        *,
        ttl: timedelta,
        now: datetime,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> bytes:
        """Like :meth:`issue`, over the key of a CSR whose self-signature proves possession. Everything
        else the CSR asks for (subject, extensions) is ignored: the server decides who the caller is."""
        _check_size(csr_pem, MAX_CSR_BYTES, "certificate signing request")
        with _malformed("certificate signing request"):
            csr = x509.load_pem_x509_csr(csr_pem)
            valid = csr.is_signature_valid
            public_key = csr.public_key()
        if not valid:
            raise BadParameter("certificate signing request signature is invalid")
        return self._issue(public_key, identity, ttl=ttl, now=now, dns_names=dns_names, ips=ip_addresses)

    def verify(self, cert_pem_or_der: bytes, *, now: datetime) -> Identity:
        """The identity of a certificate this CA issued and that is valid at ``now``; anything else raises
        Unauthenticated saying why (malformed, other CA, expired, not yet valid)."""
        _require_aware(now, "now")
        cert, identity = self._checked(cert_pem_or_der)
        if now < cert.not_valid_before_utc:
            start = format_rfc3339(cert.not_valid_before_utc, fraction="none")
            raise Unauthenticated(f"certificate is not valid until {start}")
        if now > cert.not_valid_after_utc:
            end = format_rfc3339(cert.not_valid_after_utc, fraction="none")
            raise Unauthenticated(f"certificate expired at {end}")
        return identity

    def _checked(self, data: bytes) -> tuple[x509.Certificate, Identity]:
        """Parse ``data``, check this CA signed it and read its identity; remembered by the exact bytes.

        Why: every API request presents its connection's client certificate again, and the signature check
        was most of authentication's cost. What is remembered depends on nothing but the bytes and this CA
        (time is checked by :meth:`verify` on every call), so a hit is exactly as good as a new check. Only
        certificates that passed are remembered, at most ``_VERIFIED_CACHE`` of them (oldest out first)."""
        hit = self._verified.get(data)
        if hit is not None:
            return hit
        try:
            cert = load_certificate(data, "certificate")
        except (BadParameter, TooLarge) as exc:
            raise Unauthenticated(exc.message) from exc
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise Unauthenticated(f"certificate was not issued by the CA of cluster {self._cluster_name!r}") from exc
        try:
            identity = _identity_of(cert)
        except BadParameter as exc:
            raise Unauthenticated(exc.message) from exc
        if len(self._verified) >= _VERIFIED_CACHE:
            del self._verified[next(iter(self._verified))]
        self._verified[bytes(data)] = (cert, identity)
        return cert, identity

    def _issue(
        self,
        public_key: object,
        identity: Identity,
        *,
        ttl: timedelta,
        now: datetime,
        dns_names: Sequence[str],
        ips: Sequence[str],
    ) -> bytes:
        _require_aware(now, "now")
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
            raise BadParameter(f"public key must be ECDSA P-256, got {_describe_key(public_key)}")
        if ttl <= timedelta(0):
            raise BadParameter(f"certificate TTL must be positive, got {ttl}")
        who = f"{identity.kind} {identity.name!r}"
        if _normalise_dns(identity.name) in _REGISTRY_ONLY_NAMES and identity.kind != "registry":
            raise BadParameter(f"{who}: the name {identity.name!r} is reserved for the registry")
        names = [_check_dns_name(name, who) for name in dns_names]
        addresses = [_check_ip(ip, who) for ip in ips]
        if identity.kind == "registry":
            names = [REGISTRY_SERVER_NAME, "localhost", *names]
            addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), *addresses]
        elif identity.kind not in _SERVER_KINDS and (names or addresses):
            raise BadParameter(f"{who}: client certificates carry no DNS names or IP addresses")
        if identity.kind != "registry" and _REGISTRY_ONLY_NAMES.intersection(names):
            # The one rule that stops an agent certificate from passing as the registry.
            raise BadParameter(f"{who}: DNS name {REGISTRY_SERVER_NAME!r} is reserved for the registry")

        # A leaf never outlives its CA: past that point nobody could verify it anyway.
        not_after = min(now + ttl, self._cert.not_valid_after_utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if identity.kind in _SERVER_KINDS:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            _builder(_subject_of(identity), self._cert.subject, public_key, now=now, not_after=not_after, ca=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in _unique(names)]
        general_names += [x509.IPAddress(a) for a in _unique(addresses)]
        if general_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------------------------------------- helpers


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: datetime,
    not_after: datetime,
    ca: bool,
) -> x509.CertificateBuilder:
    """What the CA certificate and every leaf share: a random serial, validity from ``now - CLOCK_SKEW``,
    and critical basic constraints and key usage (a CA signs certificates; a leaf only signs handshakes)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        # path_length=0: the CA signs leaves only, never intermediate CAs.
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def _check_size(data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise TooLarge(f"{what} is {len(data)} bytes; the limit is {limit}")


@contextmanager
def _malformed(what: str) -> Iterator[None]:
    """Turn the parse errors ``cryptography`` raises inside the block into BadParameter naming ``what``."""
    try:
        yield
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadParameter(f"{what} is malformed: {_first_line(exc)}") from exc


def _subject_of(identity: Identity) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind),
    ]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, role) for role in identity.roles]
    if identity.host_id is not None:
        attributes.append(x509.NameAttribute(NameOID.USER_ID, identity.host_id))
    return x509.Name(attributes)


def _identity_of(cert: x509.Certificate) -> Identity:
    subject = cert.subject
    name = _single_attribute(subject, NameOID.COMMON_NAME, "certificate CN")
    kind = _single_attribute(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "certificate OU (identity kind)")
    roles = tuple(_text(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    uids = subject.get_attributes_for_oid(NameOID.USER_ID)
    if len(uids) > 1:
        raise BadParameter("certificate is malformed: it names more than one host id (UID)")
    for wanted in IDENTITY_KINDS:
        if kind == wanted:
            return Identity(
                name=name,
                kind=wanted,
                roles=roles,
                host_id=_text(uids[0].value) if uids else None,
                not_before=cert.not_valid_before_utc,
                expires=cert.not_valid_after_utc,
                serial=cert.serial_number,
            )
    raise BadParameter(f"certificate is malformed: unknown identity kind (OU) {kind[:64]!r}")


def _single_attribute(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    found = name.get_attributes_for_oid(oid)
    if len(found) != 1:
        raise BadParameter(f"certificate is malformed: expected one {what}, found {len(found)}")
    return _text(found[0].value)


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):  # only X.500 unique identifiers are bytes; we never issue those
        raise BadParameter("certificate is malformed: a subject attribute is not text")
    return value


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pin_of(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _PIN_PREFIX + hashlib.sha256(spki).hexdigest()


def _describe_key(key: object) -> str:
    curve = getattr(key, "curve", None)
    if curve is not None:
        return f"EC {curve.name}"
    size = getattr(key, "key_size", None)
    base = type(key).__name__.removeprefix("_").replace("PublicKey", "").replace("PrivateKey", "")
    return f"{base} {size}" if size else base


def _check_subject_text(value: object, what: str, *, limit: int = _MAX_NAME_CHARS) -> None:
    if not isinstance(value, str):
        raise BadParameter(f"{what} must be a string, got {type(value).__name__}")
    if not value or len(value) > limit:
        raise BadParameter(f"{what} must be 1 to {limit} characters, got {len(value)}")
    if value != value.strip() or not value.isprintable():
        raise BadParameter(f"{what} {value!r} must not contain control characters or surrounding spaces")


def _normalise_dns(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _check_dns_name(name: object, who: str) -> str:
    if not isinstance(name, str):
        raise BadParameter(f"{who}: DNS name must be a string, got {type(name).__name__}")
    normal = name.lower()
    if len(normal) > 253 or _DNS_NAME_RE.match(normal) is None:
        # No wildcards, no trailing dots, no unicode: each could make a name match more than it says.
        raise BadParameter(f"{who}: {name[:80]!r} is not a valid DNS name (letters, digits, '-' and '.')")
    return normal


def _check_ip(value: object, who: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise BadParameter(f"{who}: IP address must be a string, got {type(value).__name__}")
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise BadParameter(f"{who}: {value[:80]!r} is not an IP address") from exc


_T = TypeVar("_T")


def _unique(items: Sequence[_T]) -> list[_T]:
    return list(dict.fromkeys(items))


def _require_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise BadParameter(f"{what} must be a timezone-aware datetime, got {value!r}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
