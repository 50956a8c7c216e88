"""Builders for the core tests: certificates (made once, cached), kubeconfigs, seed-style resource files."""

from __future__ import annotations

import base64
import copy
import functools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_NOT_AFTER = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
SECRET_TOKEN = "s3cr3t-token-value-0123456789"


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer if not ca else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(CERT_NOT_AFTER - timedelta(days=3650))
        .not_valid_after(CERT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@functools.cache
def pki() -> dict[str, bytes]:
    """A CA, a client certificate it signed, the client key (plain and encrypted), and an unrelated key."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": _cert("test-ca", ca_key, ca_key, ca=True),
        "client_cert": _cert("kubeport-agent", client_key, ca_key, ca=False),
        "client_key": _key_pem(client_key),
        "client_key_encrypted": _key_pem(client_key, b"pw"),
        "other_key": _key_pem(other_key),
    }


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def kubeconfig(
    *, user: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    """A valid single-context token kubeconfig; ``user``/``cluster`` replace those entries' bodies and
    ``top`` replaces top-level keys (``None`` deletes one; ``current_context`` means ``current-context``)."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "prod",
                "cluster": cluster
                if cluster is not None
                else {"server": "https://10.0.0.1:6443", "certificate-authority-data": b64(pki()["ca"])},
            }
        ],
        "users": [{"name": "agent", "user": user if user is not None else {"token": SECRET_TOKEN}}],
        "contexts": [{"name": "prod-ctx", "context": {"cluster": "prod", "user": "agent"}}],
        "current-context": "prod-ctx",
        "preferences": {},
    }
    for name, value in top.items():
        key = "current-context" if name == "current_context" else name
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return copy.deepcopy(doc)


def kubeconfig_bytes(**kwargs: Any) -> bytes:
    return yaml.safe_dump(kubeconfig(**kwargs), sort_keys=False).encode()


def printf_recipe(data: bytes) -> str:
    """What ``printf "    %s" $(cat kubeconfig | base64)`` appends to a file: coreutils base64 wraps at 76
    columns, ``$(...)`` splits the output into words, printf repeats its format per word, no newline."""
    wrapped = base64.encodebytes(data).decode()  # 76-character lines, like coreutils base64
    return "".join(f"    {word}" for word in wrapped.split())


def cluster_doc(name: str = "mycluster", **spec: Any) -> dict[str, Any]:
    return {"kind": "kube_cluster", "version": "v3", "metadata": {"name": name}, "spec": spec}


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT-shaped token (the checker reads ``exp`` without verifying anything)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'kid': 'x'})}.{part(claims)}.c2lnbmF0dXJl"
