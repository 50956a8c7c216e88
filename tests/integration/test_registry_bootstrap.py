"""Registry bootstrap: first start creates the CA and admin identity (0600), restarts reuse them, the
advertised address follows --public-addr, and a bad address is refused before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from registry.core.errors import BadParameter
from registry.core.identity_file import IdentityFile
from registry.server.serve import RegistryInfo, serve_registry


async def start(nursery: trio.Nursery, data_dir: Path, **kwargs: object) -> RegistryInfo:
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(data_dir=data_dir, listen="127.0.0.1:0", task_status=task_status, **kwargs)
    )
    return info


async def test_restart_reuses_the_ca_and_the_admin_identity(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        first = await start(nursery, data_dir, public_addrs=("registry.example.com:3025",))
        identity = first.admin_identity.read_bytes()
        nursery.cancel_scope.cancel()
    assert first.address == "registry.example.com:3025"
    assert IdentityFile.parse(identity, source="admin").registry == "registry.example.com:3025"
    assert first.admin_identity.stat().st_mode & 0o777 == 0o600
    assert (data_dir / "registry.db").stat().st_mode & 0o777 == 0o600
    assert data_dir.stat().st_mode & 0o777 == 0o700
    async with trio.open_nursery() as nursery:
        second = await start(nursery, data_dir, public_addrs=("registry.example.com:3025",))
        nursery.cancel_scope.cancel()
    assert second.ca_pin == first.ca_pin
    assert second.admin_identity.read_bytes() == identity  # still valid, same address: reused as is


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:port", "[::1"])
async def test_bad_listen_addresses_are_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(BadParameter, match="--listen"):
        await serve_registry(data_dir=tmp_path / "d", listen=listen)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def _snapshot(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in data_dir.iterdir() if p.name in ("admin.identity", "ca.pin")}


@pytest.mark.parametrize("damage", ["zero-bytes", "deleted", "deleted-and-no-identity"])
async def test_a_lost_store_never_mints_a_new_ca(tmp_path: Path, damage: str) -> None:
    """An emptied or missing registry.db beside an earlier cluster's files refuses to start: a fresh CA
    would lock out every agent and identity. Nothing is overwritten, and the message says how to restore."""
    data_dir = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        first = await start(nursery, data_dir)
        nursery.cancel_scope.cancel()
    assert (data_dir / "ca.pin").read_text().strip() == first.ca_pin
    store = data_dir / "registry.db"
    for extra in ("-wal", "-shm"):
        store.with_name(store.name + extra).unlink(missing_ok=True)
    if damage == "zero-bytes":
        store.write_bytes(b"")
    else:
        store.unlink()
    if damage == "deleted-and-no-identity":
        (data_dir / "admin.identity").unlink()
    before = _snapshot(data_dir)
    with pytest.raises(BadParameter) as caught:
        await serve_registry(data_dir=data_dir, listen="127.0.0.1:0")  # refused before it serves
    message = caught.value.message
    assert "Refusing to create a new CA" in message
    assert str(data_dir) in message and "Restore" in message and "backup" in message
    assert _snapshot(data_dir) == before


async def test_moving_the_old_files_away_starts_a_new_cluster_on_purpose(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        first = await start(nursery, data_dir)
        nursery.cancel_scope.cancel()
    for name in ("registry.db", "registry.db-wal", "registry.db-shm", "admin.identity", "ca.pin"):
        (data_dir / name).unlink(missing_ok=True)
    async with trio.open_nursery() as nursery:
        second = await start(nursery, data_dir)
        nursery.cancel_scope.cancel()
    assert second.ca_pin != first.ca_pin
    assert (data_dir / "ca.pin").read_text().strip() == second.ca_pin
