"""The import direction of the packages: core <- models, tasks <- harness <- run_suite.py / benchmarks.

``core`` imports none of the others; ``models`` and ``tasks`` import ``core`` (and ``tasks`` never ``models``, nor
``models`` ``tasks``), never ``harness``. Checked on the source (every import statement, at any depth), so an import
inside a function counts as much as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "models", "tasks", "harness")
MAY_NOT_IMPORT = {"core": {"models", "tasks", "harness"}, "models": {"tasks", "harness"},
                  "tasks": {"models", "harness"}}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in ``path`` that names one of ours."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(MAY_NOT_IMPORT))
def test_no_package_imports_upward(package: str) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {imported}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for imported, line in sorted(imported_packages(path)) if imported in MAY_NOT_IMPORT[package]]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from harness.train import fit\n    import models.s4\n")
    assert imported_packages(module) == {("harness", 4), ("models", 5)}
