"""What the installed programs import is what ``pip install .`` installs.

The README's first command is ``pip install -e . && kubeport start``: the runtime packages (``labels``,
``registry``, ``agent``) may import only the standard library, themselves and the distributions listed in
``[project].dependencies``. A module that only ``[test]`` brings (as ``wsproto`` once was) passes every test,
since the suite runs with the test extras, and then fails the first ``kubeport start`` on a fresh machine
with ``ModuleNotFoundError``. This reads every import statement of those packages and checks it against
pyproject.toml, without installing anything.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("labels", "registry", "agent")


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` = ``pyyaml``, ``google_re2`` = ``google-re2``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_runtime_distributions(pyproject: Path) -> set[str]:
    """The distributions ``[project].dependencies`` names (normalized, without versions or markers)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    names = set()
    for requirement in project.get("dependencies", []):
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"cannot read the requirement {requirement!r}"
        names.add(_normalize(match.group(1)))
    return names


def imported_top_level_modules(roots: list[Path]) -> dict[str, str]:
    """Every absolute import's top-level module under ``roots``, with one file that imports it."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def undeclared_imports(
    imports: dict[str, str], declared: set[str], providers: dict[str, list[str]], first_party: set[str]
) -> list[str]:
    """``module (file) -> distribution`` for each third-party import no declared distribution provides."""
    problems = []
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in first_party or module == "__future__":
            continue
        distributions = {_normalize(d) for d in providers.get(module, [])}
        if not distributions & declared:
            shown = ", ".join(sorted(distributions)) or "no installed distribution"
            problems.append(f"{module} (imported by {where}) comes from {shown}")
    return problems


def test_every_runtime_import_is_a_declared_dependency() -> None:
    imports = imported_top_level_modules([ROOT / package for package in RUNTIME_PACKAGES])
    declared = declared_runtime_distributions(ROOT / "pyproject.toml")
    providers = importlib.metadata.packages_distributions()
    problems = undeclared_imports(imports, declared, providers, set(RUNTIME_PACKAGES))
    assert not problems, "add to [project].dependencies in pyproject.toml:\n" + "\n".join(problems)
    # The scan itself reads what it should: the runtime imports its best-known dependencies.
    assert {"trio", "httpx", "yaml", "cryptography", "h2", "wsproto"} <= set(imports)


def test_the_check_names_a_module_only_the_test_extras_bring() -> None:
    imports = {"wsproto": "agent/forward/exit_status.py", "yaml": "registry/x.py", "json": "registry/y.py"}
    providers = {"wsproto": ["wsproto"], "yaml": ["PyYAML"]}
    problems = undeclared_imports(imports, {"pyyaml"}, providers, {"registry"})
    assert problems == ["wsproto (imported by agent/forward/exit_status.py) comes from wsproto"]
    # An import nothing installed provides is reported too, not skipped.
    assert undeclared_imports({"nosuchmodule": "agent/z.py"}, set(), {}, set()) == [
        "nosuchmodule (imported by agent/z.py) comes from no installed distribution"
    ]
