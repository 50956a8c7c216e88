"""Secret files on disk: private modes, atomic replacement, no leftovers, bounded reads."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.core.errors import BadParameter, TooLarge
from registry.host.files import ensure_private_dir, read_limited, write_secret_file


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_file_is_0600_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "key.pem"
    write_secret_file(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert _mode(path) == 0o600


def test_temp_file_is_created_private(tmp_path: Path, umask_zero: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file must be private from the very open() call, not only after a later chmod.
    seen: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            seen.append(mode)
            assert flags & os.O_EXCL
        return real_open(path, flags, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    write_secret_file(tmp_path / "key.pem", b"secret")
    assert seen == [0o600]


def test_explicit_mode(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    write_secret_file(path, b"public", mode=0o644)
    assert _mode(path) == 0o644


def test_existing_file_is_replaced_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "id.pem"
    path.write_bytes(b"old contents that are longer")
    os.chmod(path, 0o644)
    before = path.stat().st_ino
    write_secret_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o600
    # A new inode: readers holding the old file never saw a half-written one.
    assert path.stat().st_ino != before
    assert [p.name for p in tmp_path.iterdir()] == ["id.pem"]


def test_large_data_is_written_completely(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    write_secret_file(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_failure_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    path = tmp_path / "id.pem"
    path.write_bytes(b"old")

    def boom(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(BadParameter, match=f"cannot write {path}: No space left on device"):
        write_secret_file(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["id.pem"]


def test_non_os_errors_also_clean_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_secret_file(tmp_path / "id.pem", b"new")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "id.pem"
    with pytest.raises(BadParameter, match=f"cannot write {path}: No such file or directory"):
        write_secret_file(path, b"x")


def test_replacing_a_directory_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(BadParameter, match="cannot write"):
        write_secret_file(tmp_path / "dir", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


# --------------------------------------------------------------------------------------- private dirs


def test_fresh_dirs_are_0700_all_the_way_down(tmp_path: Path, umask_zero: None) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert ensure_private_dir(target) == target
    for path in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert _mode(path) == 0o700


def test_fresh_dir_is_usable_under_a_hostile_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        target = ensure_private_dir(tmp_path / "d")
    finally:
        os.umask(old)
    assert _mode(target) == 0o700


def test_existing_dir_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    os.chmod(target, 0o750)  # noqa: S103 -- a user-chosen mode the helper must leave alone
    assert ensure_private_dir(str(target)) == target
    assert _mode(target) == 0o750


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(BadParameter, match="exists and is not a directory"):
        ensure_private_dir(tmp_path / "f")
    with pytest.raises(BadParameter, match="cannot create directory"):
        ensure_private_dir(tmp_path / "f" / "sub")


# ---------------------------------------------------------------------------------------- bounded reads


def test_read_limited_reads_small_files(tmp_path: Path) -> None:
    path = tmp_path / "id.pem"
    path.write_bytes(b"12345")
    assert read_limited(path, limit=5, what="identity file") == b"12345"


def test_read_limited_refuses_big_files(tmp_path: Path) -> None:
    path = tmp_path / "id.pem"
    path.write_bytes(b"123456")
    with pytest.raises(TooLarge) as info:
        read_limited(path, limit=5, what="identity file")
    assert info.value.message == f"identity file {path} is 6 bytes; the limit is 5"


def test_read_limited_bounds_files_without_a_size(tmp_path: Path) -> None:
    # /dev/zero claims size 0 and never ends: the read must stop anyway.
    with pytest.raises(TooLarge, match="is more than 1024 bytes"):
        read_limited("/dev/zero", limit=1024, what="kubeconfig")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "No such file or directory"),
        (lambda p: p.mkdir(), "Is a directory"),
    ],
)
def test_read_limited_maps_os_errors(tmp_path: Path, make: object, reason: str) -> None:
    path = tmp_path / "x"
    assert callable(make)
    make(path)
    with pytest.raises(BadParameter) as info:
        read_limited(path, limit=10, what="identity file")
    assert info.value.message == f"cannot read identity file {path}: {reason}"


def test_read_limited_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Injected rather than chmod 0: the suite may run as root, who reads anything.
    path = tmp_path / "x"
    path.write_bytes(b"x")
    real_open = open

    def refusing_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(BadParameter, match="Permission denied"):
        read_limited(path, limit=10, what="identity file")
