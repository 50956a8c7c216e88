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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_labels_is_a_stdlib_leaf() -> None:
    """labels/ imports nothing of ours; only the runner and cron helpers may use trio/croniter."""
    for path in _modules("labels"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in ("registry", "agent"), f"{path} imports {name}"
            if path.name not in ("runner.py", "schedule.py"):
                assert top not in ("trio", "croniter", "yaml", "httpx"), f"{path} imports {name}"


def test_registry_core_does_not_reach_outwards() -> None:
    for path in _modules("registry/core"):
        for name in _imports(path):
            assert not name.startswith(("registry.server", "registry.store", "registry.cli", "registry.client")), (
                f"{path} imports {name}"
            )
            assert not name.startswith("agent"), f"{path} imports {name}"
            assert name.split(".")[0] not in ("trio", "httpx", "h11"), f"{path} imports {name}: core is pure"


def test_only_the_composition_root_imports_both_server_and_agent() -> None:
    root = ROOT / "registry" / "cli" / "kubeport_main.py"
    for package in PACKAGES:
        for path in _modules(package):
            names = _imports(path)
            server = any(n == "registry.server" or n.startswith("registry.server.") for n in names)
            agent = any(n == "agent" or n.startswith("agent.") for n in names)
            if server and agent:
                assert path == root, f"{path} imports both the registry server and the agent"
    for path in _modules("agent"):
        for name in _imports(path):
            top = ".".join(name.split(".")[:2])
            assert top not in ("registry.server", "registry.cli"), f"{path} imports {name}"
