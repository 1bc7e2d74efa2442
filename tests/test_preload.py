"""cbm_tasks.extraction.preload: kernels loaded in a forkserver serve the task processes forked from it.

The scenario runs in its own interpreter (importing cbm_tasks.extraction.preload selects Numba's threading
layer, which must not happen in the pytest process), laid out as Airflow's LocalExecutor does
it: a forkserver that preloads cbm_tasks.extraction.preload, a worker process forked from it, and the task
process forked (os.fork) from the worker, which rasterises real parcels and reduces real
Sentinel-2 bands through the public functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import shapely
import xarray as xr
from affine import Affine
from conftest import shared_data

Scenario = tuple[dict[str, np.ndarray], dict[str, object], list[shapely.Geometry]]
PROJECT = Path(__file__).resolve().parents[1]
T10 = Affine(10.0, 0.0, 501360.0, 0.0, -10.0, 5629680.0)
T20 = Affine(20.0, 0.0, 501360.0, 0.0, -20.0, 5629680.0)
DATE = 48

SCENARIO = textwrap.dedent('''
    import json, multiprocessing, os, sys, time
    from pathlib import Path

    def task(out: str, data: str) -> None:
        """The task process: first extraction calls after the fork."""
        import numpy as np, shapely, xarray as xr
        from affine import Affine
        from numba.core import event
        from cbm_tasks.extraction import preload
        from cbm_tasks.extraction.rasterize import rasterize_parcels
        from cbm_tasks.extraction.categorical import class_counts
        from cbm_tasks.extraction.zonal import zonal_stats

        before = {name: len(d.signatures) for name, d in preload.kernels().items()}
        arrays = {}
        for prefix, name in (("S2_L2A_10m", "B04"), ("S2_L2A_20m", "SCL"), ("OUTPUT_POLY-110_10m", "CT")):
            (path,) = Path(data).glob(f"{prefix}_*.nc")
            with xr.open_dataset(path, engine="netcdf4", mask_and_scale=False) as cube:
                arrays[name] = cube[name].values[DATE] if name != "CT" else cube[name].values
        geoms = shapely.from_wkb(json.loads(Path(out + ".wkb.json").read_text()))
        keys = np.arange(1, len(geoms) + 1, dtype=np.int32)
        with event.install_recorder("numba:compile") as compiles:
            t0 = time.perf_counter()
            labels10 = rasterize_parcels(geoms, keys, transform=Affine(*T10), shape=arrays["CT"].shape)
            labels20 = rasterize_parcels(geoms, keys, transform=Affine(*T20), shape=arrays["SCL"].shape)
            labels10.flags.writeable = False  # as the label cache hands them out
            stats = zonal_stats(labels10, arrays["B04"], band="B04", nodata=0, n_labels=len(keys))
            counts = class_counts(labels20, arrays["SCL"], band="SCL", n_classes=12, nodata=0)
            seconds = time.perf_counter() - t0
        after = {name: len(d.signatures) for name, d in preload.kernels().items()}
        np.savez(out, labels10=labels10, labels20=labels20, keys=stats.keys, mean=stats.mean, p50=stats.p50,
                 count=stats.count, class_keys=counts.keys, class_counts=counts.counts)
        Path(out + ".json").write_text(json.dumps({
            "seconds": seconds, "compile_events": len(compiles.buffer),
            "new_signatures": {k: after[k] - before[k] for k in after if after[k] != before[k]},
            "preload_in_sys_modules": "cbm_tasks.extraction.preload" in sys.modules}))

    def worker(out: str, data: str, timeout: float) -> None:
        """The LocalExecutor worker: forks the task process and waits for it, at most *timeout* s."""
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                task(out, data)
            except BaseException as err:  # report, then leave without running the parent's cleanup
                print(f"task failed: {err!r}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                sys.exit(os.waitstatus_to_exitcode(status) and 2)
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        sys.exit(3)

    if __name__ == "__main__":
        out, data = sys.argv[1], sys.argv[2]
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["cbm_tasks.extraction.preload"])
        process = ctx.Process(target=worker, args=(out, data, 120.0))
        process.start()
        process.join(180)
        print(json.dumps({"worker_exitcode": process.exitcode}))
''')


def _chip() -> dict[str, np.ndarray]:
    folder = shared_data("worldcereal_31UDS")
    out: dict[str, np.ndarray] = {}
    for prefix, name in (("S2_L2A_10m", "B04"), ("S2_L2A_20m", "SCL"), ("OUTPUT_POLY-110_10m", "CT")):
        (path,) = folder.glob(f"{prefix}_*.nc")
        with xr.open_dataset(path, engine="netcdf4", mask_and_scale=False) as cube:
            out[name] = cube[name].values[DATE] if name != "CT" else cube[name].values
    return out


@pytest.fixture(scope="module")
def forked_task(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    chip = _chip()
    shapes = list(rasterio.features.shapes(chip["CT"], mask=chip["CT"] > 0, transform=T10))
    geoms = [shapely.geometry.shape(g) for g, _ in shapes]
    folder = tmp_path_factory.mktemp("preload")
    out = str(folder / "task")
    Path(out + ".wkb.json").write_text(json.dumps([g.wkb_hex for g in geoms]))
    script = folder / "scenario.py"
    script.write_text(f"DATE = {DATE}\nT10 = {tuple(T10)[:6]}\nT20 = {tuple(T20)[:6]}\n" + SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([sys.executable, str(script), out, str(shared_data("worldcereal_31UDS"))],
                          capture_output=True, text=True, timeout=300, env=env, cwd=folder, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["worker_exitcode"] == 0, f"task process failed or hung (2 = failed, 3 = killed after 120 s): " \
                                           f"{done.stderr[-3000:]}"
    with np.load(out + ".npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    return arrays, json.loads(Path(out + ".json").read_text()), geoms


def test_forked_task_uses_the_preloaded_kernels(forked_task: Scenario) -> None:
    _, info, _ = forked_task
    assert info["preload_in_sys_modules"], "the task process did not inherit cbm_tasks.extraction.preload"
    assert info["new_signatures"] == {}, "the extraction called a kernel signature the preload does not load"
    assert info["compile_events"] == 0  # nothing compiled or loaded from the cache in the task
    # (timings belong in benchmarks, not here: the signature and compile-event checks are exact)


def test_forked_task_results_are_correct(forked_task: Scenario) -> None:
    arrays, _, geoms = forked_task
    chip = _chip()
    keys = np.arange(1, len(geoms) + 1)
    for labels, transform in ((arrays["labels10"], T10), (arrays["labels20"], T20)):
        gdal = rasterio.features.rasterize(list(zip(geoms, keys, strict=True)), out_shape=labels.shape,
                                           transform=transform, dtype="int32")
        np.testing.assert_array_equal(labels, gdal)
    labels10, b04 = arrays["labels10"], chip["B04"]
    assert len(arrays["keys"]) > 10
    for i, key in enumerate(arrays["keys"]):
        values = b04[(labels10 == key) & (b04 != 0)]
        assert arrays["count"][i] == len(values)
        assert arrays["mean"][i] == pytest.approx(values.astype(np.float64).mean(), rel=1e-12)
        assert arrays["p50"][i] == np.percentile(values, [50])[0]
    labels20, scl = arrays["labels20"], chip["SCL"]
    for i, key in enumerate(arrays["class_keys"]):
        observed = scl[(labels20 == key) & (scl != 0)]
        np.testing.assert_array_equal(arrays["class_counts"][i], np.bincount(observed, minlength=12))


def test_kernels_are_the_modules_dispatchers() -> None:
    """Each kernel module lists all its kernels for the preload, which touches no private name (no import here)."""
    import ast

    preload = ast.parse((PROJECT / "cbm_tasks" / "extraction" / "preload.py").read_text())
    private = [node.attr for node in ast.walk(preload) if isinstance(node, ast.Attribute) and node.attr.startswith("_")
               and isinstance(node.value, ast.Name) and node.value.id in ("zonal", "categorical", "rasterize")]
    assert private == []
    # rasterize's kernels are in its two steps, wkb and scanline; rasterize.warmup_signatures joins theirs
    for module in ("zonal", "categorical", "wkb", "scanline"):
        tree = ast.parse((PROJECT / "cbm_tasks" / "extraction" / f"{module}.py").read_text())
        (warmup,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)
                     and node.name == "warmup_signatures"]
        listed = {node.value for node in ast.walk(warmup)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("_kernel")}
        passed = {node.id for node in ast.walk(warmup) if isinstance(node, ast.Name) and node.id.endswith("_kernel")}
        parallel_or_kernel = {node.name for node in tree.body
                              if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel")}
        assert {f"{module}.{name}" for name in parallel_or_kernel} == listed, f"kernels of {module} missing"
        assert parallel_or_kernel == passed, f"kernels of {module} named but not passed"
