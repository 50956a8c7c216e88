"""Label patterns reach exactly one regex engine, RE2, through one module (issue 7 §3).

``labels.regex`` is the only importer of ``re2``; the selector code never imports Python's backtracking
``re``, so a caller's pattern cannot end up there by a later edit without this test saying so.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_labels_regex_imports_re2() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in ("labels", "registry", "agent", "scripts")
        for path in (ROOT / package).rglob("*.py")
        if "re2" in _imported_modules(path)
    }
    assert importers == {"labels/regex.py"}


def test_selector_code_does_not_use_the_backtracking_engine() -> None:
    for name in ("selectors.py", "regex.py", "keys.py"):
        assert "re" not in _imported_modules(ROOT / "labels" / name), name
