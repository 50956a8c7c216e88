"""The cluster CA: generation, reload, pins, issuing and verifying every kind of identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry.core.errors import AccessDenied, BadParameter, TooLarge, Unauthenticated
from registry.core.identity import (
    AGENT_TTL,
    CA_TTL,
    CLOCK_SKEW,
    DEFAULT_TTLS,
    REGISTRY_SERVER_NAME,
    CertAuthority,
    Identity,
    ca_pin,
    check_pin,
    generate_private_key,
    identity_from_cert,
    needs_renewal,
    public_key_pem,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=NOW)


@pytest.fixture(scope="module")
def pub() -> bytes:
    return public_key_pem(generate_private_key())


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


# ------------------------------------------------------------------------------------------- generation


def test_generated_ca_has_the_decided_shape(ca: CertAuthority) -> None:
    cert = _cert(ca.cert_pem)
    assert ca.cluster_name == "prod"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "prod"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "kubeport"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + CA_TTL
    assert ca.expires == NOW + CA_TTL
    assert b"BEGIN PRIVATE KEY" in ca.key_pem
    assert "BEGIN" not in repr(ca)


def test_reload_keeps_name_and_pin(ca: CertAuthority) -> None:
    again = CertAuthority.from_pem(ca.cert_pem, ca.key_pem)
    assert again.cluster_name == ca.cluster_name
    assert again.pin == ca.pin == ca_pin(ca.cert_pem)
    assert again.cert_pem == ca.cert_pem


def test_reloaded_ca_verifies_what_the_original_issued(ca: CertAuthority, pub: bytes) -> None:
    cert = ca.issue(pub, Identity("alice", "user"), ttl=timedelta(hours=1), now=NOW)
    assert CertAuthority.from_pem(ca.cert_pem, ca.key_pem).verify(cert, now=NOW).name == "alice"


def test_reload_refuses_a_key_from_another_ca(ca: CertAuthority) -> None:
    other = CertAuthority.generate("prod", now=NOW)
    with pytest.raises(BadParameter, match="does not belong"):
        CertAuthority.from_pem(ca.cert_pem, other.key_pem)


def test_reload_refuses_a_leaf_as_ca(ca: CertAuthority) -> None:
    key = generate_private_key()
    leaf = ca.issue(public_key_pem(key), Identity("a", "admin"), ttl=timedelta(hours=1), now=NOW)
    with pytest.raises(BadParameter, match="not a CA"):
        CertAuthority.from_pem(leaf, key)


@pytest.mark.parametrize(
    ("cert_pem", "key_pem", "error", "match"),
    [
        (b"garbage", None, BadParameter, "CA certificate is malformed"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", None, BadParameter, "malformed"),
        (None, b"garbage", BadParameter, "CA private key is malformed"),
        (b"x" * 100_000, None, TooLarge, "limit"),
        (None, b"x" * 100_000, TooLarge, "limit"),
    ],
)
def test_reload_refuses_malformed_input(
    ca: CertAuthority, cert_pem: bytes | None, key_pem: bytes | None, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        CertAuthority.from_pem(cert_pem or ca.cert_pem, key_pem or ca.key_pem)


def test_reload_refuses_an_encrypted_key(ca: CertAuthority) -> None:
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(BadParameter, match="encrypted"):
        CertAuthority.from_pem(ca.cert_pem, encrypted)


@pytest.mark.parametrize("name", ["", " prod", "a\nb", "x" * 65, "tab\there"])
def test_bad_cluster_names_are_refused(name: str) -> None:
    with pytest.raises(BadParameter, match="cluster name"):
        CertAuthority.generate(name, now=NOW)


def test_naive_now_is_refused() -> None:
    with pytest.raises(BadParameter, match="timezone-aware"):
        CertAuthority.generate("prod", now=datetime(2025, 1, 1))


# ------------------------------------------------------------------------------------------------- pins


def test_pin_format(ca: CertAuthority) -> None:
    assert ca.pin.startswith("sha256:")
    assert len(ca.pin) == len("sha256:") + 64
    assert ca.pin == ca.pin.lower()
    assert ca.pin != CertAuthority.generate("prod", now=NOW).pin


@pytest.mark.parametrize("transform", [str, str.upper, lambda p: f"  {p}\n"])
def test_check_pin_accepts_the_right_pin(ca: CertAuthority, transform: object) -> None:
    assert callable(transform)
    check_pin(ca.cert_pem, transform(ca.pin))


def test_check_pin_mismatch_names_both_pins(ca: CertAuthority) -> None:
    other = CertAuthority.generate("prod", now=NOW)
    with pytest.raises(AccessDenied) as info:
        check_pin(ca.cert_pem, other.pin)
    assert info.value.message == f"registry CA pin mismatch: expected {other.pin}, got {ca.pin}"


@pytest.mark.parametrize(
    "pin",
    ["", "sha256:", "sha256:abc", "md5:" + "0" * 64, "0" * 64, "sha256:" + "g" * 64, "sha256:" + "0" * 65],
)
def test_check_pin_rejects_malformed_pins(ca: CertAuthority, pin: str) -> None:
    with pytest.raises(BadParameter, match="malformed"):
        check_pin(ca.cert_pem, pin)


# ---------------------------------------------------------------------------------------- issue + verify


@pytest.mark.parametrize(
    "identity",
    [
        Identity("root", "admin", roles=("admin",)),
        Identity("alice@example.com", "user", roles=("dev", "ops", "readers")),
        Identity("vm-7", "agent", roles=("Kube",), host_id="1b6e3a44-1a6c-4c8e-9f62-0c7d1f2a9b11"),
        Identity("registry-1", "registry"),
        Identity("bob", "user"),
    ],
)
def test_issue_and_verify_round_trip(ca: CertAuthority, pub: bytes, identity: Identity) -> None:
    cert = ca.issue(pub, identity, ttl=DEFAULT_TTLS[identity.kind], now=NOW)
    got = ca.verify(cert, now=NOW)
    assert (got.name, got.kind, got.roles, got.host_id) == (
        identity.name,
        identity.kind,
        identity.roles,
        identity.host_id,
    )
    assert got.not_before == NOW - CLOCK_SKEW
    assert got.expires == NOW + DEFAULT_TTLS[identity.kind]
    assert got.serial is not None
    assert identity_from_cert(cert) == got
    # DER works as well as PEM.
    assert ca.verify(_cert(cert).public_bytes(serialization.Encoding.DER), now=NOW) == got


def test_serials_are_random(ca: CertAuthority, pub: bytes) -> None:
    ident = Identity("bob", "user")
    serials = {ca.verify(ca.issue(pub, ident, ttl=AGENT_TTL, now=NOW), now=NOW).serial for _ in range(5)}
    assert len(serials) == 5


@pytest.mark.parametrize(
    ("kind", "usages"),
    [
        ("admin", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("user", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("agent", {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}),
        ("registry", {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}),
    ],
)
def test_leaf_extensions(ca: CertAuthority, pub: bytes, kind: str, usages: set[object]) -> None:
    cert = _cert(ca.issue(pub, Identity("n", kind), ttl=timedelta(hours=1), now=NOW))  # type: ignore[arg-type]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature
    assert not key_usage.key_cert_sign
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages


def test_registry_cert_always_names_the_fixed_server_name(ca: CertAuthority, pub: bytes) -> None:
    cert = ca.issue(
        pub,
        Identity("registry-1", "registry"),
        ttl=timedelta(days=1),
        now=NOW,
        dns_names=["Registry.Example.COM", "localhost"],
        ip_addresses=["10.0.0.5"],
    )
    dns, ips = _sans(_cert(cert))
    assert dns == [REGISTRY_SERVER_NAME, "localhost", "registry.example.com"]
    assert ips == ["127.0.0.1", "::1", "10.0.0.5"]


def test_agent_cert_names_only_what_it_is_given(ca: CertAuthority, pub: bytes) -> None:
    ident = Identity("vm-7", "agent", host_id="h1")
    assert _sans(_cert(ca.issue(pub, ident, ttl=AGENT_TTL, now=NOW))) == ([], [])
    cert = ca.issue(pub, ident, ttl=AGENT_TTL, now=NOW, dns_names=["vm-7.lan"], ip_addresses=["10.1.1.1"])
    assert _sans(_cert(cert)) == (["vm-7.lan"], ["10.1.1.1"])


@pytest.mark.parametrize("kind", ["admin", "user", "agent"])
@pytest.mark.parametrize("name", [REGISTRY_SERVER_NAME, "REGISTRY.kubeport.LOCAL", "registry.kubeport.local."])
def test_registry_server_name_is_refused_for_other_kinds(ca: CertAuthority, pub: bytes, kind: str, name: str) -> None:
    # As a SAN (agents would otherwise be able to serve as the registry)...
    if name.endswith("."):
        match = "not a valid DNS name"
    else:
        match = "reserved for the registry" if kind == "agent" else "carry no DNS names"
    with pytest.raises(BadParameter, match=match):
        ca.issue(pub, Identity("n", kind), ttl=AGENT_TTL, now=NOW, dns_names=[name])  # type: ignore[arg-type]
    # ...and as the common name (a client with CN fallback would otherwise accept it).
    with pytest.raises(BadParameter, match="reserved for the registry"):
        ca.issue(pub, Identity(name, kind), ttl=AGENT_TTL, now=NOW)  # type: ignore[arg-type]


def test_registry_may_be_named_registry(ca: CertAuthority, pub: bytes) -> None:
    cert = ca.issue(pub, Identity(REGISTRY_SERVER_NAME, "registry"), ttl=AGENT_TTL, now=NOW)
    assert ca.verify(cert, now=NOW).name == REGISTRY_SERVER_NAME


@pytest.mark.parametrize(
    "dns", ["*.kubeport.local", "*", "exa mple.com", "bücher.de", "a..b", "-a.com", "", "a" * 64 + ".com"]
)
def test_bad_dns_names_are_refused(ca: CertAuthority, pub: bytes, dns: str) -> None:
    with pytest.raises(BadParameter, match="not a valid DNS name"):
        ca.issue(pub, Identity("r", "registry"), ttl=AGENT_TTL, now=NOW, dns_names=[dns])


@pytest.mark.parametrize("ip", ["1.2.3", "localhost", "::g", ""])
def test_bad_ip_addresses_are_refused(ca: CertAuthority, pub: bytes, ip: str) -> None:
    with pytest.raises(BadParameter, match="not an IP address"):
        ca.issue(pub, Identity("r", "registry"), ttl=AGENT_TTL, now=NOW, ip_addresses=[ip])


@pytest.mark.parametrize("kind", ["admin", "user"])
def test_client_kinds_take_no_names(ca: CertAuthority, pub: bytes, kind: str) -> None:
    with pytest.raises(BadParameter, match="carry no DNS names"):
        ca.issue(pub, Identity("n", kind), ttl=AGENT_TTL, now=NOW, ip_addresses=["10.0.0.1"])  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1)])
def test_non_positive_ttl_is_refused(ca: CertAuthority, pub: bytes, ttl: timedelta) -> None:
    with pytest.raises(BadParameter, match="TTL must be positive"):
        ca.issue(pub, Identity("n", "user"), ttl=ttl, now=NOW)


def test_leaf_never_outlives_the_ca(ca: CertAuthority, pub: bytes) -> None:
    cert = ca.issue(pub, Identity("n", "admin"), ttl=CA_TTL * 3, now=NOW + timedelta(days=1))
    assert identity_from_cert(cert).expires == ca.expires


@pytest.mark.parametrize(
    ("public_key", "match"),
    [
        (b"not a key", "public key is malformed"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "public key is malformed"),
        (b"x" * 100_000, "limit"),
    ],
)
def test_issue_refuses_bad_public_keys(ca: CertAuthority, public_key: bytes, match: str) -> None:
    with pytest.raises((BadParameter, TooLarge), match=match):
        ca.issue(public_key, Identity("n", "user"), ttl=AGENT_TTL, now=NOW)


def test_issue_refuses_non_p256_keys(ca: CertAuthority) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    for key in (ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        with pytest.raises(BadParameter, match="must be ECDSA P-256"):
            ca.issue(pem, Identity("n", "user"), ttl=AGENT_TTL, now=NOW)


# ------------------------------------------------------------------------------------------ verification


def test_verify_rejects_another_cas_cert(ca: CertAuthority, pub: bytes) -> None:
    # Same cluster name, different key: the name in the issuer field proves nothing.
    other = CertAuthority.generate("prod", now=NOW)
    cert = other.issue(pub, Identity("mallory", "admin", roles=("admin",)), ttl=AGENT_TTL, now=NOW)
    with pytest.raises(Unauthenticated, match="not issued by the CA of cluster 'prod'"):
        ca.verify(cert, now=NOW)


@pytest.mark.parametrize(
    ("offset", "match"),
    [
        (AGENT_TTL + timedelta(seconds=1), "certificate expired at 2025-01-02T12:00:00Z"),
        (-CLOCK_SKEW - timedelta(seconds=1), "certificate is not valid until 2025-01-01T11:59:00Z"),
    ],
)
def test_verify_rejects_certs_outside_their_validity(
    ca: CertAuthority, pub: bytes, offset: timedelta, match: str
) -> None:
    cert = ca.issue(pub, Identity("vm", "agent"), ttl=AGENT_TTL, now=NOW)
    with pytest.raises(Unauthenticated, match=match):
        ca.verify(cert, now=NOW + offset)


@pytest.mark.parametrize("offset", [-CLOCK_SKEW, timedelta(0), AGENT_TTL])
def test_validity_bounds_are_inclusive(ca: CertAuthority, pub: bytes, offset: timedelta) -> None:
    cert = ca.issue(pub, Identity("vm", "agent"), ttl=AGENT_TTL, now=NOW)
    assert ca.verify(cert, now=NOW + offset).name == "vm"


@pytest.mark.parametrize(
    "blob",
    [b"", b"garbage", b"\x30\x82\xff\xff" + b"\x00" * 20, b"-----BEGIN CERTIFICATE-----\n", b"x" * 200_000],
)
def test_verify_maps_malformed_input_to_unauthenticated(ca: CertAuthority, blob: bytes) -> None:
    with pytest.raises(Unauthenticated):
        ca.verify(blob, now=NOW)


def test_the_ca_cert_itself_is_not_an_identity(ca: CertAuthority) -> None:
    with pytest.raises(Unauthenticated, match="malformed"):
        ca.verify(ca.cert_pem, now=NOW)


def test_identity_from_cert_rejects_garbage() -> None:
    with pytest.raises(BadParameter, match="malformed"):
        identity_from_cert(b"\x00\x01")


# --------------------------------------------------------------------------------------- identity values


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "kind": "user"}, "identity name"),
        ({"name": "a\x00b", "kind": "user"}, "control characters"),
        ({"name": "n", "kind": "root"}, "kind must be one of"),
        ({"name": "n", "kind": "user", "roles": ["a"]}, "roles must be a tuple"),
        ({"name": "n", "kind": "user", "roles": ("a", "a")}, "must not repeat"),
        ({"name": "n", "kind": "user", "roles": ("",)}, "role"),
        ({"name": "n", "kind": "user", "roles": ("r" * 65,)}, "role"),
        ({"name": "n", "kind": "user", "host_id": "h"}, "only agent identities"),
        ({"name": "n", "kind": "agent", "host_id": "h\n"}, "host_id"),
        ({"name": "n", "kind": "agent", "host_id": "h" * 129}, "host_id must be 1 to 128"),
        ({"name": "n" * 65, "kind": "agent"}, "identity name must be 1 to 64"),
        ({"name": "n", "kind": "agent", "expires": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"name": "n", "kind": "agent", "serial": -1}, "serial"),
    ],
)
def test_identity_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(BadParameter, match=match):
        Identity(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (timedelta(0), False),
        (timedelta(hours=11), False),
        (timedelta(hours=12), True),  # half life of a 24h certificate
        (timedelta(hours=23), True),
        (timedelta(days=3), True),  # expired
    ],
)
def test_needs_renewal_at_half_life(elapsed: timedelta, expected: bool) -> None:
    ident = Identity("vm", "agent", not_before=NOW, expires=NOW + timedelta(hours=24))
    assert needs_renewal(ident, NOW + elapsed) is expected


def test_needs_renewal_for_an_issued_cert(ca: CertAuthority, pub: bytes) -> None:
    ident = ca.verify(ca.issue(pub, Identity("vm", "agent"), ttl=AGENT_TTL, now=NOW), now=NOW)
    assert not needs_renewal(ident, NOW + timedelta(hours=11))
    assert needs_renewal(ident, NOW + timedelta(hours=12))


def test_long_host_ids_fit(ca: CertAuthority, pub: bytes) -> None:
    ident = Identity("vm", "agent", host_id="h" * 128)
    assert ca.verify(ca.issue(pub, ident, ttl=AGENT_TTL, now=NOW), now=NOW).host_id == "h" * 128


def test_identity_without_times_always_needs_renewal() -> None:
    assert needs_renewal(Identity("vm", "agent"), NOW)


# ------------------------------------------------------------------------------ verification cache


def test_a_certificate_seen_before_is_not_checked_again_but_its_validity_is(
    pub: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertAuthority.generate("prod", now=NOW)
    cert = ca.issue(pub, Identity("vm", "agent"), ttl=AGENT_TTL, now=NOW)
    assert ca.verify(cert, now=NOW).name == "vm"
    from registry.core import identity as identity_module

    def no_parse(*_args: object) -> None:
        raise AssertionError("parsed and signature-checked again")

    monkeypatch.setattr(identity_module, "load_certificate", no_parse)
    assert ca.verify(cert, now=NOW + timedelta(hours=1)).name == "vm"  # remembered
    with pytest.raises(Unauthenticated, match="certificate expired at"):  # the clock still counts on a hit
        ca.verify(cert, now=NOW + AGENT_TTL + timedelta(seconds=1))
    with pytest.raises(Unauthenticated, match="not valid until"):
        ca.verify(cert, now=NOW - CLOCK_SKEW - timedelta(seconds=1))


def test_refused_certificates_are_not_remembered_and_the_cache_is_bounded(pub: bytes) -> None:
    from registry.core import identity as identity_module

    ca = CertAuthority.generate("prod", now=NOW)
    other = CertAuthority.generate("prod", now=NOW)
    forged = other.issue(pub, Identity("mallory", "admin", roles=("admin",)), ttl=AGENT_TTL, now=NOW)
    for _ in range(2):  # refused every time, never served from memory
        with pytest.raises(Unauthenticated, match="not issued by the CA"):
            ca.verify(forged, now=NOW)
    assert ca._verified == {}
    certs = [ca.issue(pub, Identity(f"vm{i}", "agent"), ttl=AGENT_TTL, now=NOW) for i in range(3)]
    with pytest.MonkeyPatch.context() as monkey:
        monkey.setattr(identity_module, "_VERIFIED_CACHE", 2)
        for cert in certs:
            ca.verify(cert, now=NOW)
        assert len(ca._verified) == 2 and certs[0] not in ca._verified  # oldest out first
    # A CA that did not issue a remembered certificate does not accept it through another CA's memory.
    with pytest.raises(Unauthenticated):
        other.verify(certs[2], now=NOW)
