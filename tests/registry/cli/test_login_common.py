"""First contact with a registry before a user has a certificate (``registry/cli/login_common.py``): the
CA is verified by pin, by the pin saved at the first login, or trusted on first use with the pin shown."""

from __future__ import annotations

import dataclasses
import io
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from registry.cli.login_common import first_contact, save_login, split_registries
from registry.cli.profile import KubeportHome
from registry.core.errors import AccessDenied, BadParameter, ConnectionProblem
from registry.core.identity import CertAuthority, Identity, generate_private_key, make_csr
from registry.server.serve import RegistryInfo


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_trust_on_first_use_prints_the_pin(registry: RegistryInfo) -> None:
    err = io.StringIO()
    contact = await first_contact([registry.address], err=err)
    assert contact.ca_pin == registry.ca_pin
    assert registry.ca_pin in err.getvalue() and "first use" in err.getvalue()
    assert contact.ping["cluster_name"] == "test-cluster"


async def test_a_matching_pin_is_silent_and_a_wrong_pin_refuses(registry: RegistryInfo) -> None:
    err = io.StringIO()
    contact = await first_contact([registry.address], pin=registry.ca_pin, err=err)
    assert contact.ca_pin == registry.ca_pin and err.getvalue() == ""
    with pytest.raises(AccessDenied, match="does not match --ca-pin"):
        await first_contact([registry.address], pin="sha256:" + "0" * 64, err=err)


async def test_an_unreachable_address_falls_through_to_the_next(registry: RegistryInfo) -> None:
    contact = await first_contact([_closed_port(), registry.address], pin=registry.ca_pin)
    assert contact.address == registry.address
    with pytest.raises(ConnectionProblem):
        await first_contact([_closed_port()])


async def test_the_pin_saved_at_the_first_login_is_checked_later(registry: RegistryInfo, tmp_path: Path) -> None:
    home = KubeportHome(tmp_path)
    contact = await first_contact([registry.address], err=io.StringIO())
    # A login saved under this cluster's name but pinned to another CA: what an impostor would look like.
    now = datetime.now(tz=UTC)
    other = CertAuthority.generate("test-cluster", now=now)
    key = generate_private_key()
    cert = other.sign_csr(make_csr(key, "alice"), Identity("alice", "user"), ttl=timedelta(hours=1), now=now)
    forged = dataclasses.replace(contact, ca_pin=other.pin)
    save_login(home, forged, user="alice", key_pem=key, cert_pem=cert, ca_pems=[other.cert_pem])
    err = io.StringIO()
    with pytest.raises(AccessDenied, match="saved at your first login"):
        await first_contact([registry.address], home=home, err=err)


@pytest.mark.parametrize("value", ["", ",", "a:1,,b:2", " , "])
def test_split_registries_refuses_empty_parts(value: str) -> None:
    with pytest.raises(BadParameter):
        split_registries(value)


def test_split_registries_keeps_order() -> None:
    assert split_registries("b:1, a:2") == ("b:1", "a:2")
