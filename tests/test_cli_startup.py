"""The ``cbm`` command starts without the heavy libraries: light commands never import them.

Each command runs in a fresh interpreter, as a user runs it; the test reads which top-level
packages the process had loaded when the command returned. What this protects is the user's
wait (``benchmarks/cli_startup_bench.py`` times it); the test checks the cause, not a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
# loaded by the engine, the parcel import, the markers, the API or the reports; each costs 0.1-1.5 s
HEAVY = ("numpy", "numba", "rasterio", "pandas", "geopandas", "pyogrio", "shapely", "pyarrow", "fastapi",
         "weasyprint", "matplotlib", "xarray", "boto3", "llvmlite", "uvicorn")
# runs `cbm ARGS` in this interpreter (as the console script does) and prints the packages it loaded
PROBE = """
import json, sys
from cbm_tasks.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as done:  # --help, argparse errors
    status = done.code
print(json.dumps({"status": status, "modules": sorted({m.split('.')[0] for m in sys.modules})}))
"""
GROUPS = ("db", "airflow", "parcels", "demo", "extract", "timeseries", "api", "markers", "audit", "kernels")


def _run_cbm(*args: str, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          cwd=PROJECT, env={**os.environ, **(env or {})}, check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, f"cbm {' '.join(args)} printed nothing; stderr:\n{done.stderr[-2000:]}"
    report = json.loads(lines[-1])
    return int(report["status"] or 0), set(report["modules"]), "\n".join(lines[:-1])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(modules.intersection(HEAVY))


@pytest.mark.parametrize("args", [("--help",), *((group, "--help") for group in GROUPS),
                                  ("db", "url"), ("db", "url", "--sqlalchemy"), ("db", "status"),
                                  ("airflow", "status"), ("airflow", "env")])
def test_light_commands_import_no_heavy_library(args: tuple[str, ...]) -> None:
    status, modules, out = _run_cbm(*args)
    assert status in (0, 3), f"cbm {' '.join(args)} exited {status}"  # 3: `status` of a stopped service
    assert out, f"cbm {' '.join(args)} printed nothing"
    assert _heavy(modules) == [], f"cbm {' '.join(args)} imported {_heavy(modules)}"


def test_commands_reading_the_database_import_only_psycopg(db_url: str) -> None:
    env = {"CBM_DATABASE_URL": db_url}
    status, modules, out = _run_cbm("parcels", "list", env=env)
    assert (status, out) == (0, "aoi  year  set  parcels  srid  buffer_m  version  imported_at  source\nno parcel sets")
    assert "psycopg" in modules and _heavy(modules) == []
    status, modules, out = _run_cbm("api", "user", "list", env=env)
    assert (status, out) == (0, "")
    assert _heavy(modules) == []


def test_heavy_command_still_loads_its_engine(tmp_path: Path, db_url: str) -> None:
    # the handler imports the engine: an extraction of a missing file fails by name, after loading it
    status, modules, _ = _run_cbm("extract", str(tmp_path / "missing.tif"), "--aoi", "none", "--year", "2018",
                                  env={"CBM_DATABASE_URL": db_url})
    assert status == 2
    assert {"numpy", "rasterio"} <= modules
