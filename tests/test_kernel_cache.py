"""The Numba kernels are compiled once (``cbm kernels warm``, run at install) and never by an extraction.

Every step runs in a fresh interpreter, as a user's ``cbm`` or an Airflow task does; the
probe reads Numba's own counters (``dispatcher.stats``: a cache miss is a compilation).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import psycopg
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, write_tif

from cbm_tasks.extraction import kernels as extraction_kernels
from cbm_tasks.extraction.valid_pixels import read_only_labels
from cbm_tasks.extraction.zonal import zonal_stats
from cbm_tasks.ops import airflow_config, kernel_cache

PROJECT = Path(__file__).resolve().parents[1]
X0, Y0 = 500000, 5600100
TRANSFORM = Affine(10, 0, X0, 0, -10, Y0)
# runs `cbm ARGS` in this interpreter, then prints what the project's kernels did in this process
PROBE = """
import json, sys
from cbm_tasks.cli import main
status = main(sys.argv[1:])
from cbm_tasks.ops import kernel_cache
stats = {name: {"hits": sum(d.stats.cache_hits.values()), "misses": sum(d.stats.cache_misses.values())}
         for name, d in kernel_cache.dispatchers().items()}
import numba.core.config
print(json.dumps({"status": status, "stats": stats, "cache_dir": numba.core.config.CACHE_DIR}))
"""


def _cbm(*args: str, env: dict[str, str] | None = None, probe: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", PROBE, *args] if probe else [str(Path(sys.executable).parent / "cbm"), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=PROJECT, check=False,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"cbm {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _warm_counts(out: str) -> tuple[int, int, int]:
    found = re.search(r"(\d+) signatures \((\d+) compiled, (\d+) loaded from the cache\)", out)
    assert found is not None, out
    signatures, compiled, loaded = map(int, found.groups())
    return signatures, compiled, loaded


def test_an_extraction_after_the_warm_up_compiles_nothing(tmp_path: Path, db_url: str,
                                                          conn: psycopg.Connection) -> None:
    _cbm("kernels", "warm")  # what install.sh did (compiles once more only if a kernel was edited since)
    signatures, compiled, loaded = _warm_counts(_cbm("kernels", "warm").stdout)
    assert (compiled, loaded) == (0, signatures)  # a new process finds all in the cache
    # all the extraction's calls (distinct argument types), and the markers' kernels besides
    extraction = {(name, tuple(numba.typeof(arg) for arg in args))
                  for name, _, args in extraction_kernels._signatures()}
    assert signatures > len(extraction) >= 20
    # label rasters reach the kernels read-only, fresh or memory-mapped: one signature per band dtype, not two
    label_types = {str(numba.typeof(args[0])) for name, _, args in extraction_kernels._signatures()
                   if name.endswith(("_count_kernel", "_scatter_kernel"))}
    assert label_types == {"readonly array(int32, 2d, C)"}

    parcels = [(f"p{i}", shapely.box(X0 + 20 * i, Y0 - 60, X0 + 20 * i + 20, Y0)) for i in range(4)]
    add_parcel_set(conn, aoi="warm", year=2018, srid=32631, parcels=parcels)
    rng = np.random.default_rng(7)
    b04 = rng.integers(1, 3000, size=(8, 10), dtype=np.uint16)
    scl = rng.integers(0, 12, size=(8, 10), dtype=np.uint16)
    image = write_tif(tmp_path / "S2_20180601.tif", np.stack([b04, scl]), transform=TRANSFORM, nodata=0,
                      descriptions=["B04", "SCL"], scales=[1e-4, 1], offsets=[-0.1, 0])
    env = {"CBM_DATABASE_URL": db_url, "CBM_STORE_ROOT": str(tmp_path / "store")}
    for run in ("labels rasterised", "labels from the disk cache"):
        report = json.loads(_cbm("extract", str(image), "--aoi", "warm", "--year", "2018", env=env,
                                 probe=True).stdout.strip().splitlines()[-1])
        assert report["status"] == 0
        assert report["cache_dir"] == str(kernel_cache.cache_dir())
        misses = {name: s["misses"] for name, s in report["stats"].items() if s["misses"]}
        assert misses == {}, f"{run}: compiled in the extraction: {misses}"
        assert sum(s["hits"] for s in report["stats"].values()) >= 4, f"{run}: no kernel loaded from the cache"
    rows = conn.execute("SELECT count(*) FROM cbm.parcel_obs").fetchone()
    assert rows == (4,)


WARM_PROBE = """
import sys
from cbm_tasks.ops.kernel_cache import warm_kernels
done = warm_kernels(processes=int(sys.argv[1]))
print(done.kernels, done.signatures, done.compiled, done.loaded)
"""


def test_the_warm_up_in_two_processes_loads_what_one_process_does() -> None:
    _cbm("kernels", "warm")
    one, two = (subprocess.run([sys.executable, "-c", WARM_PROBE, n], capture_output=True, text=True, timeout=600,
                               cwd=PROJECT, check=True).stdout.split() for n in ("1", "2"))
    assert one == two
    kernels, signatures, compiled, loaded = map(int, one)
    assert kernels >= 18 and compiled == 0 and loaded == signatures > 20


def test_the_two_halves_of_the_warm_up_share_no_module() -> None:
    # compiled in two processes at once: a kernel of one half calling one of the other would be compiled by both
    halves = {half: {m for m in kernel_cache.kernel_modules() if m.split(".")[1] in packages}
              for half, packages in kernel_cache._HALVES.items()}
    assert set.union(*halves.values()) == set(kernel_cache.kernel_modules())
    for half, packages in kernel_cache._HALVES.items():
        for package in packages:
            for path in (PROJECT / "cbm_tasks" / package).glob("*.py"):
                imported = {node.module for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                            if isinstance(node, ast.ImportFrom) and node.module}
                others = {m for name, modules in halves.items() if name != half for m in modules}
                assert not imported & others, f"{path.name} imports kernels of another half: {imported & others}"


def test_labels_go_to_the_kernels_as_a_read_only_view_and_stay_writable() -> None:
    labels = np.array([[1, 1, 0], [2, 2, 2]], np.int32)
    view = read_only_labels(labels)
    assert np.shares_memory(view, labels) and not view.flags.writeable
    assert read_only_labels(view) is view
    values = np.array([[10, 20, 99], [1, 2, 3]], np.uint16)
    stats = zonal_stats(labels, values, band="B04", nodata=None, n_labels=2)
    assert stats.keys.tolist() == [1, 2] and stats.mean.tolist() == [15.0, 2.0]
    assert labels.flags.writeable  # the caller's array is not changed
    labels[0, 0] = 3


def test_airflow_and_the_command_line_share_the_cache() -> None:
    cfg = airflow_config.default_config(port=8999)
    assert airflow_config.environment(cfg)["NUMBA_CACHE_DIR"] == str(kernel_cache.cache_dir())
    assert kernel_cache.cache_dir() == Path(os.environ["NUMBA_CACHE_DIR"])  # conftest: the suite's too
