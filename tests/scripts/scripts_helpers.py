"""What the tests of scripts/ share: loading a script as a module, its usage errors, its markdown table.

A script is loaded the way ``python scripts/<name>.py`` sees its imports: with scripts/ on ``sys.path``, so
its ``import benchlib`` finds the shared harness. scripts/ is appended, never prepended, so its modules
cannot shadow anything the tests import.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a fresh module named ``<name>_under_test``."""
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def usage_error(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``main(argv)`` says on stderr; it must stop with exit code 2 (a usage error) before any work."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def table_rows(out: str) -> list[list[str]]:
    """The cells (stripped) of every row of the markdown table in ``out``, without header and separator."""
    lines = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
