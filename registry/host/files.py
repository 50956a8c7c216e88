"""Disk I/O for secrets: atomic private writes, private directories, size-limited reads.

Invariants:

* a secret file is never readable by anyone but its owner, not even for an instant: the temporary file is
  created with ``O_EXCL`` and the final mode in one system call, so the umask can only narrow it;
* a reader sees either the old file or the new one, never a half-written one (temp file in the same
  directory, fsync, rename over, fsync the directory so the rename survives a crash);
* a failed write leaves no temporary file behind;
* OSError never leaves this module: it becomes BadParameter naming the path and the system's reason.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from registry.core.errors import BadParameter, TooLarge

_PRIVATE_DIR_MODE = 0o700


def write_secret_file(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """:func:`write_file_atomic` with a private mode by default (identities, keys, kubeconfigs)."""
    write_file_atomic(path, data, mode=mode)


def write_file_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int) -> None:
    """Atomically replace ``path`` with ``data``, the file getting exactly ``mode``.

    The data goes to a new temporary file beside ``path`` (``O_EXCL|O_NOFOLLOW``: never an existing file or
    a planted symlink), is fsynced, and is renamed over ``path``. A symlink at ``path`` is replaced, never
    followed, so nobody can redirect the write to another file; a crash leaves the old file or the new one.
    """
    target = Path(path)
    directory = target.parent
    temp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(temp, flags, mode)
    except OSError as exc:
        raise BadParameter(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        try:
            # Created with mode & ~umask; fchmod gives exactly the mode asked for (never more than asked).
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the original error is the one worth reporting
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise BadParameter(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    _fsync_directory(directory)


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` where every directory created gets mode 0700. A directory that already exists is
    returned as it is: it is the user's, and its mode is the user's choice (callers may check and warn)."""
    target = Path(path)
    missing: list[Path] = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=_PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by someone else meanwhile: theirs, leave its mode alone
        except OSError as exc:
            raise BadParameter(f"cannot create directory {directory}: {exc.strerror or exc}") from exc
        try:
            # mkdir's mode is narrowed by the umask; a umask like 0o200 would leave it unusable.
            os.chmod(directory, _PRIVATE_DIR_MODE)
        except OSError as exc:
            raise BadParameter(f"cannot set the mode of {directory}: {exc.strerror or exc}") from exc
    if not target.is_dir():
        raise BadParameter(f"{target} exists and is not a directory")
    return target


def read_limited(path: str | os.PathLike[str], *, limit: int, what: str) -> bytes:
    """The contents of ``path``, refusing more than ``limit`` bytes (TooLarge). ``what`` names the file in
    messages, e.g. ``identity file``."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:
                raise TooLarge(f"{what} {os.fspath(path)} is {info.st_size} bytes; the limit is {limit}")
            # Read one byte past the limit: pipes, /dev files and growing files have no honest size.
            data = handle.read(limit + 1)
    except OSError as exc:
        raise BadParameter(f"cannot read {what} {os.fspath(path)}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise TooLarge(f"{what} {os.fspath(path)} is more than {limit} bytes; the limit is {limit}")
    return data


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # some filesystems refuse to open directories; the rename itself already happened
    try:
        with contextlib.suppress(OSError):  # best effort: some filesystems cannot fsync a directory
            os.fsync(fd)
    finally:
        os.close(fd)
