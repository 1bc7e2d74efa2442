"""Layering of cbm_tasks: no Airflow, the domain never reaches into tooling, no import circles.

- cbm_tasks is the domain library: it never imports Airflow (STYLE R1).
- The domain packages never import the deployment tooling (``ops``), the demo or the command
  line: those sit on top of the domain, not under it.
- Only ``cbm_tasks.pipeline`` changes a product's status (the registry's state functions).
- Modules of cbm_tasks import each other without circles (a circle means two modules share
  one job, or one of them belongs lower).

Imports are read with ``ast`` from the source, so a module imported inside a function counts
too: deferring an import hides a dependency from a reader, not from this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cbm_tasks"
# future packages are listed now, so that they are checked the day they land
DOMAIN = ("extraction", "parcels", "timeseries", "catalogue", "store", "markers", "traffic_light", "card",
          "report", "api", "aoi", "errors", "db", "lineage", "paths", "pipeline")
TOOLING = ("ops", "demo", "cli")


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, package: Path) -> set[str]:
    """Every module *path* imports; ``from x import y`` counts ``x.y`` when that is a module of ours."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = _module_name(path, package)
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = this.split(".")[: len(this.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _our_modules(package: Path) -> dict[str, Path]:
    return {_module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def _graph(package: Path) -> dict[str, set[str]]:
    modules = _our_modules(package)
    return {name: {m for m in _imported_modules(path, package) if m in modules and m != name}
            for name, path in modules.items()}


def airflow_imports(package: Path) -> dict[str, list[str]]:
    """Modules of *package* that import Airflow, with what they import."""
    found = {name: sorted(m for m in _imported_modules(path, package) if m.split(".")[0] == "airflow")
             for name, path in _our_modules(package).items()}
    return {name: imports for name, imports in found.items() if imports}


def _top(module: str, package: Path) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def tooling_imports(package: Path) -> dict[str, list[str]]:
    """Domain modules of *package* that import ops, demo or cli, with what they import."""
    found: dict[str, list[str]] = {}
    for name, imports in _graph(package).items():
        if _top(name, package) not in DOMAIN:
            continue
        bad = sorted(m for m in imports if _top(m, package) in TOOLING)
        if bad:
            found[name] = bad
    return found


def import_cycles(package: Path) -> list[list[str]]:
    """The import circles among the modules of *package* (strongly connected components, Tarjan)."""
    graph = _graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles



STATUS_CHANGES = ("register", "claim", "renew_claims", "take_lease", "renew_lease", "release_lease",
                  "mark_done", "mark_failed", "reset")


def status_changers(package: Path) -> dict[str, list[str]]:
    """Modules outside ``pipeline`` (and the registry itself) that call a state function of the registry."""
    found: dict[str, list[str]] = {}
    for name, path in _our_modules(package).items():
        if _top(name, package) == "pipeline" or name.endswith("catalogue.registry"):
            continue
        calls = sorted({node.func.attr for node in ast.walk(ast.parse(path.read_text()))
                        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "registry"
                        and node.func.attr in STATUS_CHANGES})
        if calls:
            found[name] = calls
    return found


def test_cbm_tasks_never_imports_airflow() -> None:
    assert len(_our_modules(PACKAGE)) > 5
    assert airflow_imports(PACKAGE) == {}


def test_domain_never_imports_ops_demo_or_cli() -> None:
    assert tooling_imports(PACKAGE) == {}


def test_only_the_pipeline_changes_a_product_status() -> None:
    assert status_changers(PACKAGE) == {}


def test_no_import_circles() -> None:
    assert import_cycles(PACKAGE) == []


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "cbm_tasks"
    for name, source in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root


@pytest.mark.parametrize("source", ["import airflow.sdk", "from airflow.sdk import dag",
                                    "def f():\n    from airflow.models import Variable\n"])
def test_an_airflow_import_is_caught(tmp_path: Path, source: str) -> None:
    root = _fake_package(tmp_path, {"extraction/__init__.py": "", "extraction/zonal.py": source})
    assert list(airflow_imports(root)) == ["cbm_tasks.extraction.zonal"]


@pytest.mark.parametrize("source", ["from cbm_tasks.ops import settings", "import cbm_tasks.demo.run",
                                    "from cbm_tasks import cli", "from ..ops import settings"])
def test_a_domain_import_of_tooling_is_caught(tmp_path: Path, source: str) -> None:
    root = _fake_package(tmp_path, {"ops/__init__.py": "", "ops/settings.py": "", "demo/__init__.py": "",
                                    "demo/run.py": "", "cli/__init__.py": "", "parcels/__init__.py": "",
                                    "parcels/sets.py": source,
                                    "demo/data.py": "from cbm_tasks.ops import settings"})  # tooling may
    assert list(tooling_imports(root)) == ["cbm_tasks.parcels.sets"]


def test_a_circle_is_caught(tmp_path: Path) -> None:
    root = _fake_package(tmp_path, {"store/__init__.py": "from cbm_tasks.store.base import Store",
                                    "store/base.py": "class Store: ...",
                                    "store/s3.py": "from cbm_tasks.store import Store",
                                    "a.py": "from cbm_tasks import b", "b.py": "import cbm_tasks.a"})
    assert import_cycles(root) == [["cbm_tasks.a", "cbm_tasks.b"]]


def test_a_status_change_outside_the_pipeline_is_caught(tmp_path: Path) -> None:
    root = _fake_package(tmp_path, {"pipeline/__init__.py": "", "extraction/__init__.py": "",
                                    "pipeline/extract.py": "registry.mark_done(conn, 1, aoi='a')",
                                    "extraction/extract.py": "registry.mark_done(conn, 1, aoi='a')\n"
                                                             "registry.get_product(conn, 1)"})
    assert status_changers(root) == {"cbm_tasks.extraction.extract": ["mark_done"]}


def test_the_checkout_root_is_found_in_one_place() -> None:
    from cbm_tasks import db, paths
    from cbm_tasks.ops import settings

    users = sorted(name for name, path in _our_modules(PACKAGE).items() if "__file__" in path.read_text())
    assert users == ["cbm_tasks.paths"]
    assert settings.project_dir() == paths.REPO_ROOT == PACKAGE.parent
    assert db.SQL_DIR == paths.SQL_DIR == PACKAGE.parent / "sql"
