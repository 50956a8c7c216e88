"""Keys and certificate signing requests: the CA signs the key a CSR proves, and nothing else it asks for."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from registry.core.errors import BadParameter, TooLarge
from registry.core.identity import (
    MAX_CSR_BYTES,
    REGISTRY_SERVER_NAME,
    CertAuthority,
    Identity,
    generate_private_key,
    make_csr,
    public_key_pem,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)
TTL = timedelta(hours=1)


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=NOW)


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


def test_generated_keys_are_p256_pkcs8() -> None:
    pem = generate_private_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert generate_private_key() != pem
    assert public_key_pem(pem).startswith(b"-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("key", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"])
def test_public_key_pem_rejects_garbage(key: bytes) -> None:
    with pytest.raises(BadParameter, match="private key is malformed"):
        public_key_pem(key)


def test_make_csr_is_a_valid_self_signed_request() -> None:
    key = generate_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, "vm-7"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "vm-7"
    assert csr.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == public_key_pem(key)


@pytest.mark.parametrize("name", ["", "x" * 65, "a\nb"])
def test_make_csr_rejects_bad_names(name: str) -> None:
    with pytest.raises(BadParameter, match="CSR common name"):
        make_csr(generate_private_key(), name)


def test_sign_csr_uses_the_servers_identity_not_the_requested_subject(ca: CertAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # A hostile CSR: asks to be an admin, a CA, and the registry.
    hostile = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "root"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "admin"),
                ]
            )
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(REGISTRY_SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert_pem = ca.sign_csr(hostile, Identity("vm-7", "agent", roles=("Kube",), host_id="h-1"), ttl=TTL, now=NOW)
    got = ca.verify(cert_pem, now=NOW)
    assert (got.name, got.kind, got.roles, got.host_id) == ("vm-7", "agent", ("Kube",), "h-1")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # ...but the key is the CSR's.
    assert cert.public_key() == key.public_key()


def test_sign_csr_rejects_a_tampered_signature(ca: CertAuthority) -> None:
    csr = x509.load_pem_x509_csr(make_csr(generate_private_key(), "node-1"))
    der = csr.public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"node-1", b"node-2")  # inside the signed part
    assert tampered != der
    with pytest.raises(BadParameter, match="certificate signing request signature is invalid"):
        ca.sign_csr(_pem(tampered, "CERTIFICATE REQUEST"), Identity("n", "agent"), ttl=TTL, now=NOW)


@pytest.mark.parametrize(
    "csr",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"\xff\xfe" * 10 + b"\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_sign_csr_rejects_garbage(ca: CertAuthority, csr: bytes) -> None:
    with pytest.raises(BadParameter, match="certificate signing request is malformed"):
        ca.sign_csr(csr, Identity("n", "agent"), ttl=TTL, now=NOW)


def test_sign_csr_rejects_huge_requests(ca: CertAuthority) -> None:
    csr = make_csr(generate_private_key(), "n")
    huge = csr + b"\n" * MAX_CSR_BYTES
    with pytest.raises(TooLarge, match=f"the limit is {MAX_CSR_BYTES}"):
        ca.sign_csr(huge, Identity("n", "agent"), ttl=TTL, now=NOW)


def test_sign_csr_rejects_keys_other_than_p256(ca: CertAuthority) -> None:
    for key in (ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()):
        algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
            .sign(key, algorithm)
            .public_bytes(serialization.Encoding.PEM)
        )
        with pytest.raises(BadParameter, match="must be ECDSA P-256"):
            ca.sign_csr(csr, Identity("n", "agent"), ttl=TTL, now=NOW)


def test_sign_csr_still_enforces_the_registry_name_rule(ca: CertAuthority) -> None:
    csr = make_csr(generate_private_key(), "vm")
    with pytest.raises(BadParameter, match="reserved for the registry"):
        ca.sign_csr(csr, Identity("vm", "agent"), ttl=TTL, now=NOW, dns_names=[REGISTRY_SERVER_NAME])
