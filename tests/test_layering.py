"""cbm_tasks is the domain library: it must never import Airflow (STYLE R1)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cbm_tasks"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_cbm_tasks_never_imports_airflow() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 5
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imported_modules(path) if n.split(".")[0] == "airflow")
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}
