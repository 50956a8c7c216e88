"""Identity files: dump/parse round trip, and every way a file can be wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from registry.core.errors import BadParameter, TooLarge
from registry.core.identity import (
    CertAuthority,
    Identity,
    generate_private_key,
    public_key_pem,
)
from registry.core.identity_file import MAX_IDENTITY_FILE_BYTES, IdentityFile

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=NOW)


@pytest.fixture(scope="module")
def good(ca: CertAuthority) -> IdentityFile:
    key = generate_private_key()
    cert = ca.issue(public_key_pem(key), Identity("alice", "user", roles=("dev",)), ttl=timedelta(hours=12), now=NOW)
    return IdentityFile(cert_pem=cert, key_pem=key, ca_pems=(ca.cert_pem,), registry="reg.example.com:3025")


def _parse(data: bytes) -> IdentityFile:
    return IdentityFile.parse(data, source="/home/a/.kubeport/id.pem")


def test_round_trip(good: IdentityFile) -> None:
    text = good.dump()
    assert text.startswith(
        b"# kubeport identity: alice (user)\n# registry: reg.example.com:3025\n-----BEGIN PRIVATE KEY"
    )
    again = _parse(text)
    assert again == good
    assert again.identity().name == "alice"
    assert again.identity().roles == ("dev",)
    assert again.dump() == text


def test_round_trip_without_registry_and_with_two_cas(ca: CertAuthority, good: IdentityFile) -> None:
    other = CertAuthority.generate("prod", now=NOW)  # e.g. during CA rotation
    ident = IdentityFile(good.cert_pem, good.key_pem, (other.cert_pem, ca.cert_pem))
    text = ident.dump()
    assert b"# registry" not in text
    assert _parse(text) == ident


def test_key_is_not_in_repr(good: IdentityFile) -> None:
    assert "PRIVATE" not in repr(good)
    assert "BEGIN CERTIFICATE" in repr(good)


def test_parse_tolerates_comments_blank_lines_and_crlf(good: IdentityFile) -> None:
    text = good.dump().replace(b"\n", b"\r\n").replace(b"-----BEGIN CERTIFICATE", b"\n# note\n\n-----BEGIN CERTIFICATE")
    assert _parse(text) == good


def _blocks(good: IdentityFile) -> tuple[bytes, bytes, bytes]:
    return good.key_pem, good.cert_pem, good.ca_pems[0]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda k, c, a: c + a, "has no private key"),
        (lambda k, c, a: k + k + c + a, "2 private keys"),
        (lambda k, c, a: k, "has no certificate"),
        (lambda k, c, a: k + c, "no CA certificate"),
        (lambda k, c, a: b"", "has no private key"),
        (lambda k, c, a: b"hello\n" + k + c + a, "line 1: expected a PEM block or a # comment"),
        (lambda k, c, a: k + c + a + b"trailing junk\n", "expected a PEM block"),
        (lambda k, c, a: k + c + a[:-30], "block is not terminated"),
        (
            lambda k, c, a: k + c + a.replace(b"END CERTIFICATE", b"END PRIVATE KEY"),
            "expected -----END CERTIFICATE",
        ),
        (
            lambda k, c, a: k + c + b"-----BEGIN RSA PUBLIC KEY-----\nAA==\n-----END RSA PUBLIC KEY-----\n",
            "unexpected PEM",
        ),
        (
            lambda k, c, a: (
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----\n" + c + a
            ),
            "encrypted keys are not supported",
        ),
        (lambda k, c, a: k + a + c, "does not belong to the certificate"),
        (lambda k, c, a: k + c + c, "not issued by any CA in the file"),
        (lambda k, c, a: k.replace(b"M", b"N", 3) + c + a, "private key is malformed"),
        (lambda k, c, a: k + c.replace(b"M", b"N", 3) + a, "certificate is malformed"),
        (lambda k, c, a: b"\xff\xfe" + k + c + a, "not UTF-8"),
        (lambda k, c, a: b"# registry: a:1\n# registry: b:2\n" + k + c + a, "registry is named twice"),
        (lambda k, c, a: b"# registry:\n" + k + c + a, "is not a host:port"),
        (lambda k, c, a: b"\x00" * 10 + k + c + a, "expected a PEM block"),
    ],
)
def test_malformed_files_are_refused_with_a_clear_error(good: IdentityFile, build: object, match: str) -> None:
    assert callable(build)
    with pytest.raises(BadParameter, match=match) as info:
        _parse(build(*_blocks(good)))
    assert info.value.message.startswith("identity file /home/a/.kubeport/id.pem: ")


def test_key_mismatch_with_a_key_of_the_same_ca(ca: CertAuthority, good: IdentityFile) -> None:
    other_key = generate_private_key()
    with pytest.raises(BadParameter, match="private key does not belong"):
        _parse(other_key + good.cert_pem + ca.cert_pem)


def test_huge_file_is_refused(good: IdentityFile) -> None:
    huge = good.dump() + b"#" * MAX_IDENTITY_FILE_BYTES
    with pytest.raises(TooLarge, match=f"identity file /home/a/.kubeport/id.pem: it is {len(huge)} bytes"):
        _parse(huge)


def test_a_huge_pem_block_is_refused(good: IdentityFile) -> None:
    block = b"-----BEGIN CERTIFICATE-----\n" + b"QUFB\n" * 20_000 + b"-----END CERTIFICATE-----\n"
    with pytest.raises(TooLarge, match="limit"):
        _parse(good.key_pem + good.cert_pem + block)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"ca_pems": ()}, "no CA certificate"),
        ({"registry": "has space:1"}, "not a host:port"),
        ({"registry": "a\n# registry: evil:1"}, "not a host:port"),
        ({"key_pem": b"nope"}, "private key is malformed"),
    ],
)
def test_constructor_validates_too(good: IdentityFile, change: dict[str, object], error: str) -> None:
    fields: dict[str, object] = {
        "cert_pem": good.cert_pem,
        "key_pem": good.key_pem,
        "ca_pems": good.ca_pems,
        "registry": good.registry,
    }
    fields.update(change)
    with pytest.raises(BadParameter, match=error):
        IdentityFile(**fields)  # type: ignore[arg-type]


def test_an_error_never_quotes_key_material(good: IdentityFile) -> None:
    # A private key's base64 body pasted without its BEGIN line: the error must not echo any of it.
    body = b"".join(line + b"\n" for line in good.key_pem.splitlines()[1:-1])
    with pytest.raises(BadParameter) as caught:
        _parse(body + good.cert_pem + good.ca_pems[0])
    for line in body.decode().splitlines():
        assert line[:20] not in caught.value.message
