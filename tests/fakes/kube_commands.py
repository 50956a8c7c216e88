"""The tiny command set the fake's containers "run" for ``pods/exec``; nothing runs on the host.

Built-ins: ``echo [-n] ARGS``, ``cat [FILE...]`` (no file: stdin to stdout), ``sh|bash -c SCRIPT`` (commands
separated by ``;`` or newlines, each one of these built-ins or ``exit N``), ``env``, ``hostname``, ``true``,
``false``, ``sleep SECONDS``, ``ls PATH``, ``tar cf - PATH...`` and ``tar xf - [-C DIR]`` (``-m``/``-v``
accepted) against the pod's in-memory file system (:attr:`PodRuntime.files`), which is what ``kubectl cp``
runs. Tests add their own with :meth:`PodRuntime.add_command`.

An unknown program is the container runtime's failure (a 500 ``InternalError`` Status on the error channel,
which kubectl prints as ``error: Internal error occurred: ...``), not an exit status.
"""

from __future__ import annotations

import io
import posixpath
import shlex
import tarfile

import trio

from tests.fakes.kube_pods import ExecContext, ExecIO


class ExecFailure(Exception):
    """The command could not be started at all (reported as a Status, not as an exit code)."""


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


async def run_command(argv: list[str], io_: ExecIO, ctx: ExecContext) -> int:
    """Run ``argv`` in the pod's container; its exit status. Raises :class:`ExecFailure`."""
    try:
        return await _run(argv, io_, ctx)
    except _Exit as stop:
        return stop.code


async def _run(argv: list[str], io_: ExecIO, ctx: ExecContext) -> int:
    program, args = argv[0], argv[1:]
    custom = ctx.runtime.commands.get(program) or ctx.runtime.commands.get(posixpath.basename(program))
    if custom is not None:
        return await custom(argv, io_, ctx)
    name = posixpath.basename(program)
    if name == "echo":
        newline = not (args and args[0] == "-n")
        text = " ".join(args[0 if newline else 1 :]) + ("\n" if newline else "")
        await io_.stdout(text.encode())
        return 0
    if name == "cat":
        return await _cat(args, io_, ctx)
    if name in ("sh", "bash") and len(args) >= 2 and args[0] == "-c":
        return await _script(args[1], io_, ctx)
    if name == "exit":
        raise _Exit(int(args[0]) & 0xFF if args and args[0].lstrip("-").isdigit() else 0)
    if name == "env":
        await io_.stdout("".join(f"{k}={v}\n" for k, v in ctx.env.items()).encode())
        return 0
    if name == "hostname":
        await io_.stdout(ctx.pod.encode() + b"\n")
        return 0
    if name in ("true", "false"):
        return 0 if name == "true" else 1
    if name == "sleep" and len(args) == 1:
        await trio.sleep(float(args[0]))
        return 0
    if name == "ls":
        return await _ls(args, io_, ctx)
    if name == "tar":
        return await _tar(args, io_, ctx)
    raise ExecFailure(
        f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{program}": '
        "executable file not found in $PATH: unknown"
    )


async def _script(script: str, io_: ExecIO, ctx: ExecContext) -> int:
    status = 0
    for line in script.replace("\n", ";").split(";"):
        words = shlex.split(line)
        if not words:
            continue
        try:
            status = await _run(words, io_, ctx)
        except ExecFailure:
            await io_.stderr(f"sh: {words[0]}: not found\n".encode())
            status = 127
    return status


def _files(ctx: ExecContext) -> dict[str, bytes]:
    return {path: data for (ns, pod, path), data in ctx.runtime.files.items() if (ns, pod) == (ctx.namespace, ctx.pod)}


async def _cat(args: list[str], io_: ExecIO, ctx: ExecContext) -> int:
    if not args or args == ["-"]:
        while data := await io_.read_stdin():
            await io_.stdout(data)
        return 0
    status = 0
    for path in args:
        content = ctx.runtime.read_file(ctx.pod, path, namespace=ctx.namespace)
        if content is None:
            await io_.stderr(f"cat: {path}: No such file or directory\n".encode())
            status = 1
        else:
            await io_.stdout(content)
    return status


async def _ls(args: list[str], io_: ExecIO, ctx: ExecContext) -> int:
    base = "/" + (args[-1] if args else "/").strip("/")
    files = _files(ctx)
    if base in files:
        await io_.stdout(base.encode() + b"\n")
        return 0
    prefix = base.rstrip("/") + "/"
    names = sorted({p[len(prefix) :].split("/")[0] for p in files if p.startswith(prefix)})
    if not names:
        await io_.stderr(f"ls: {args[-1] if args else '/'}: No such file or directory\n".encode())
        return 1
    await io_.stdout("".join(n + "\n" for n in names).encode())
    return 0


async def _read_all(io_: ExecIO) -> bytes:
    parts = []
    while data := await io_.read_stdin():
        parts.append(data)
    return b"".join(parts)


async def _tar(args: list[str], io_: ExecIO, ctx: ExecContext) -> int:
    flags = args[0].lstrip("-") if args else ""
    rest = args[1:]
    directory = "/"
    if "-C" in rest:
        index = rest.index("-C")
        directory = rest[index + 1] if index + 1 < len(rest) else "/"
        rest = rest[:index] + rest[index + 2 :]
    if "f" not in flags or not rest or rest[0] != "-":
        await io_.stderr(b"tar: the fake supports only 'tar cf - PATH...' and 'tar xf - [-C DIR]'\n")
        return 2
    paths = rest[1:]
    if "c" in flags:
        return await _tar_create(paths, directory, io_, ctx)
    if "x" in flags:
        return await _tar_extract(directory, io_, ctx)
    await io_.stderr(b"tar: you must specify one of the '-ctx' options\n")
    return 2


async def _tar_create(paths: list[str], directory: str, io_: ExecIO, ctx: ExecContext) -> int:
    files = _files(ctx)
    buffer = io.BytesIO()
    status = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path in paths:
            full = posixpath.normpath(posixpath.join("/", directory, path))
            matches = {p: d for p, d in files.items() if p == full or p.startswith(full.rstrip("/") + "/")}
            if not matches:
                await io_.stderr(f"tar: {path}: Cannot stat: No such file or directory\n".encode())
                status = 2
            for file_path, data in sorted(matches.items()):
                name = posixpath.relpath(file_path, posixpath.join("/", directory))
                if path.startswith("/"):
                    name = file_path.lstrip("/")  # GNU tar strips the leading "/" of absolute names
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    await io_.stdout(buffer.getvalue())
    if status:
        await io_.stderr(b"tar: Exiting with failure status due to previous errors\n")
    return status


async def _tar_extract(directory: str, io_: ExecIO, ctx: ExecContext) -> int:
    data = await _read_all(io_)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                extracted = archive.extractfile(member)
                content = extracted.read() if extracted is not None else b""
                path = posixpath.normpath(posixpath.join("/", directory, member.name))
                ctx.runtime.write_file(ctx.pod, path, content, namespace=ctx.namespace)
    except tarfile.TarError as exc:
        await io_.stderr(f"tar: {exc}\n".encode())
        return 2
    return 0
