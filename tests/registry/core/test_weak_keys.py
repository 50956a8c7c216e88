"""A kubeconfig whose client key the agents' OpenSSL would refuse (RSA under 2048 bits) is refused at
create time, with the reason, instead of failing later on every agent."""

from __future__ import annotations

import base64
import datetime

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from registry.core.errors import BadParameter
from registry.core.kubeconfig import check_kubeconfig
from tests.helpers import kubeconfig_dict


def client_cert_kubeconfig(bits: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    config = kubeconfig_dict()
    config["users"][0]["user"] = {
        "client-certificate-data": base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode(),
        "client-key-data": base64.b64encode(key_pem).decode(),
    }
    return yaml.safe_dump(config).encode()


def test_1024_bit_rsa_client_key_is_refused_with_the_reason() -> None:
    with pytest.raises(BadParameter, match="1024-bit RSA key; agents refuse RSA keys under 2048 bits"):
        check_kubeconfig(client_cert_kubeconfig(1024), cluster_name="weak")


def test_2048_bit_rsa_client_key_is_fine() -> None:
    target = check_kubeconfig(client_cert_kubeconfig(2048), cluster_name="ok")
    assert target.auth == "client-cert"


def test_verify_kubeconfig_false_skips_only_the_kubeconfig_check() -> None:
    from registry.core import codec

    doc = {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {"name": "trusted"},
        "spec": {"kubeconfig": base64.b64encode(client_cert_kubeconfig(1024)).decode()},
    }
    with pytest.raises(BadParameter):
        codec.resource_from_dict(doc)
    assert codec.resource_from_dict(doc, verify_kubeconfig=False).name == "trusted"
    # everything else is still validated
    doc["metadata"] = {"name": "a/b"}
    with pytest.raises(BadParameter, match=r"metadata\.name"):
        codec.resource_from_dict(doc, verify_kubeconfig=False)
