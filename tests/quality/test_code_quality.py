"""The code stays `ruff` clean, `mypy --strict` clean, and keeps DESIGN.md's dependency direction.

These run as tests so the one test command in the README enforces them everywhere, CI included.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("labels", "registry", "agent")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_clean() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_clean() -> None:
    result = _run(sys.executable, "-m", "mypy")
    if "No module named mypy" in result.stderr:
        pytest.skip("mypy is not installed (pip install -e '.[test]' installs it)")
    assert result.returncode == 0, result.stdout + result.stderr


# -- dependency direction ------------------------------------------------------------------------------
#
# DESIGN.md: labels <- registry.core <- registry.store, registry.client <- registry.server, registry.cli, agent;
# only one composition root imports both the registry server and the agent. One row per room (a package or a
# module, keyed by its dotted name): the rooms of ours it may import. A module belongs to the room with the
# longest matching name, so a row for one module refines its package's row. Every module of ours must fall in
# a room: a new package needs a row here (and a thought about where it sits) before it can land.
ROOMS: dict[str, frozenset[str]] = {
    # the pure leaf every side shares
    "labels": frozenset(),
    # the version string only
    "registry": frozenset(),
    # pure shared kernel: models, codecs, errors, identity maths
    "registry.core": frozenset({"labels"}),
    # host-side I/O helpers (files, TLS contexts, state paths, command-line plumbing), below every process
    "registry.host": frozenset({"labels", "registry.core"}),
    # storage: knows the models, nothing about who serves or reads them (registry.host: the etcd client's
    # HTTP/1.1 connection pool, registry.host.http1)
    "registry.store": frozenset({"labels", "registry.core", "registry.host"}),
    # the one way to talk to the registry: never the server's or the store's internals
    "registry.client": frozenset({"labels", "registry", "registry.core", "registry.host"}),
    # the registry server: serves the store; never a client of itself, never the agent or a command line
    "registry.server": frozenset({"labels", "registry", "registry.core", "registry.host", "registry.store"}),
    # the Kubernetes front door (kubectl's TLS endpoint, the tunnels' server side): part of the registry process,
    # so it may use the server's service and adapters; never the agent, a client of itself or a command line
    "registry.frontdoor": frozenset(
        {"labels", "registry", "registry.core", "registry.host", "registry.store", "registry.server"}
    ),
    # get-kubeconfig: talks to Kubernetes, and to the registry (--register) only through the client
    "registry.mint": frozenset({"labels", "registry.core", "registry.host", "registry.client"}),
    # the agent: reaches the registry only through the client (no server, store or command-line code)
    "agent": frozenset({"labels", "registry", "registry.core", "registry.host", "registry.client"}),
    # kpctl and the user side: clients of the registry
    "registry.cli": frozenset({"labels", "registry", "registry.core", "registry.host", "registry.client"}),
    # tests' in-process registry (the real API handlers over a MemoryStore, as an httpx transport): it joins
    # server and client on purpose, and no row lets production code import it
    "registry.testing": frozenset(
        {"labels", "registry", "registry.core", "registry.host", "registry.store", "registry.server", "registry.client"}
    ),
    # the composition root (kubeport start = registry + front door + agent): the only module that may import
    # the server, the front door and the agent together
    "registry.cli.kubeport_main": frozenset(
        {"labels", "registry", "registry.core", "registry.host", "registry.client", "registry.cli", "registry.server"}
        | {"agent", "registry.frontdoor"}
    ),
}
COMPOSITION_ROOT = "registry.cli.kubeport_main"
# Rows that stand for one module, not a package: registry/__init__.py is not the room of registry's subpackages.
ONE_MODULE_ROOMS = frozenset({"registry"})


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to: the longest ROOMS key equal to it or a package above it."""
    best = None
    for room in ROOMS:
        inside = module == room or (room not in ONE_MODULE_ROOMS and module.startswith(room + "."))
        if inside and (best is None or len(room) > len(best)):
            best = room
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(module: str, source: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of every import of ours in ``source``, nested and TYPE_CHECKING ones included.
    ``from pkg import name`` counts as ``pkg.name`` when that is a module (``from registry.core import
    codec`` imports registry.core.codec), relative imports are resolved against ``module``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if _is_module(full) else base))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def layering_violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """Why ``module`` (with this ``source``) breaks ROOMS, one ``line: message`` per import; [] when it
    does not."""
    room = room_of(module)
    if room is None:
        return [f"0: module {module} belongs to no room in ROOMS: add a row for its package"]
    out = []
    for line, name in imports_of(module, source, is_package=is_package):
        target = room_of(name)
        if target is None:
            out.append(f"{line}: imports {name}, which belongs to no room in ROOMS")
        elif target != room and target not in ROOMS[room]:
            shown = ", ".join(sorted(ROOMS[room])) or "nothing of ours"
            out.append(f"{line}: {room} imports {name} ({target}); it may import only {shown}")
    return out


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_module_keeps_the_dependency_direction() -> None:
    violations = []
    for package in PACKAGES:
        for path in _modules(package):
            module = module_name(path)
            for problem in layering_violations(module, path.read_text(), is_package=path.name == "__init__.py"):
                line, _, message = problem.partition(": ")
                violations.append(f"{path.relative_to(ROOT)}:{line}: {message}")
    assert not violations, "dependency direction (tests/quality ROOMS):\n" + "\n".join(violations)


def test_the_composition_root_is_the_only_room_allowed_both_server_and_agent() -> None:
    both = [room for room, allowed in ROOMS.items() if {"registry.server", "agent"} <= allowed]
    assert both == [COMPOSITION_ROOT]
    assert (ROOT / (COMPOSITION_ROOT.replace(".", "/") + ".py")).is_file()
    # nothing imports the composition root, and only command lines import the command-line room
    assert all(COMPOSITION_ROOT not in allowed for allowed in ROOMS.values())
    assert [room for room, allowed in ROOMS.items() if "registry.cli" in allowed] == [COMPOSITION_ROOT]


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("labels.keys", "import re\nfrom labels import _text\n", []),
        ("labels.keys", "from registry.core import errors\n", ["1: labels imports registry.core.errors"]),
        ("registry.core.codec", "from labels import LabelError\nfrom registry.core import validation\n", []),
        ("registry.core.codec", "import trio\nfrom registry.host.files import read_limited\n", ["2: registry.core"]),
        ("registry.store.sqlite", "from registry.server import api\n", ["1: registry.store imports registry.server"]),
        ("registry.client", "from registry.store import memory\n", ["1: registry.client imports registry.store"]),
        ("registry.server.api", "from registry.cli import render\n", ["1: registry.server imports registry.cli"]),
        ("registry.server.api", "from registry.client import RegistryClient\n", ["1: registry.server imports"]),
        ("registry.server.serve", "from registry import __version__\nfrom registry.host import tls\n", []),
        ("agent.service", "from registry.server.serve import serve_registry\n", ["1: agent imports registry.server"]),
        ("agent.cli", "def f():\n    from registry.cli import render\n", ["2: agent imports registry.cli.render"]),
        ("agent.watcher", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import registry.store\n", ["3:"]),
        ("registry.cli.kpctl", "from agent.service import Agent\n", ["1: registry.cli imports agent.service"]),
        ("registry.cli.kubeport_main", "from agent.service import Agent\nfrom registry.server import serve\n", []),
        ("registry.cli.kubeport_main", "from registry.cli import render\n", []),
        ("registry.mint.cli", "from registry.client import RegistryClient\n", []),
        ("registry.mint.cli", "from registry.cli import render\n", ["1: registry.mint imports registry.cli.render"]),
        ("registry.host.files", "from registry.client import RegistryClient\n", ["1: registry.host imports"]),
        (
            "registry.host.tls",
            "from . import files\nfrom .. import client\n",
            ["2: registry.host imports registry.client"],
        ),
        ("registry.nowhere.route", "", ["0: module registry.nowhere.route belongs to no room"]),
        ("registry.frontdoor.serve", "from registry.server import api\nfrom registry.host import h2tunnel\n", []),
        ("registry.frontdoor.serve", "from registry.client import RegistryClient\n", ["1: registry.frontdoor"]),
        ("registry.frontdoor.tunnels", "from agent import tunnel\n", ["1: registry.frontdoor imports agent"]),
    ],
)
def test_layering_check_finds_each_kind_of_violation(module: str, source: str, expected: list[str]) -> None:
    problems = layering_violations(module, source)
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem


def _imports(path: Path) -> set[str]:
    return {name for _, name in imports_of(module_name(path), path.read_text(), is_package=path.name == "__init__.py")}


def test_labels_is_a_stdlib_leaf() -> None:
    """labels/ uses no third-party package but its linear-time regex engine, except the runner and cron helpers
    (trio, croniter); ROOMS keeps it from importing anything of ours."""
    for path in _modules("labels"):
        if path.name in ("runner.py", "schedule.py"):
            continue
        for name in _third_party(path):
            assert name.split(".")[0] not in ("trio", "croniter", "yaml", "httpx"), f"{path} imports {name}"


def _third_party(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_registry_core_is_pure() -> None:
    """registry.core does no I/O of its own: no trio, httpx or h11 (ROOMS keeps it from reaching outwards)."""
    for path in _modules("registry/core"):
        for name in _third_party(path):
            assert name.split(".")[0] not in ("trio", "httpx", "h11"), f"{path} imports {name}: core is pure"
