"""Numba's on-disk cache of the project's kernels: one folder per installation, filled at install.

Every kernel is ``@njit(cache=True)``: compiled once, its machine code is written to the cache
and later processes load it (~ms) instead of compiling it again (a minute or more for all of them). So
that the first extraction after an install does not compile, ``scripts/install.sh`` runs
``cbm kernels warm``, and every process that runs a kernel uses the same folder:

- the ``cbm`` command sets ``NUMBA_CACHE_DIR`` (when unset) before a handler imports Numba;
- the Airflow components get it in their environment (``cbm_tasks.ops.airflow_config``), so the
  forkserver's preload and every task load from it;
- the tests set it in ``tests/conftest.py``.

The folder is ``<venv>/var/numba_cache`` (``sys.prefix``): the machine code belongs to the
installed Numba and LLVM, which live in that venv, and to this machine's CPU. Numba keys each
entry by the kernel's source file (path, modification time, size) and argument types, so an
edited kernel is compiled again on first use; run ``cbm kernels warm`` after editing one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cbm_tasks.errors import ConfigError

__all__ = ["CACHE_ENV", "KernelWarmup", "cache_dir", "dispatchers", "kernel_modules", "use_cache_dir", "warm_kernels"]

log = logging.getLogger(__name__)

CACHE_ENV = "NUMBA_CACHE_DIR"
# The packages whose modules hold @njit kernels (kernel_modules() finds those modules), in the two halves of
# the warm-up, compiled in two processes on a machine of two or more CPUs (Numba compiles on one thread).
# They share no kernel: Numba's cache of a kernel is one index file that a process reads, extends and
# writes back, so two processes compiling one kernel for different argument types could each write an
# index without the other's entry.
_HALVES = {"extraction": ("extraction",), "markers": ("markers", "traffic_light")}
KERNEL_PACKAGES = tuple(package for packages in _HALVES.values() for package in packages)


@dataclass(frozen=True, slots=True)
class KernelWarmup:
    """What :func:`warm_kernels` did.

    Attributes:
        cache_dir: Numba's cache folder.
        kernels: dispatchers with at least one compiled signature.
        signatures: compiled signatures in all.
        compiled: signatures compiled now (not found in the cache, or stale).
        loaded: signatures loaded from the cache.
        seconds: wall time.
    """

    cache_dir: Path
    kernels: int
    signatures: int
    compiled: int
    loaded: int
    seconds: float


def cache_dir() -> Path:
    """Return Numba's cache folder: ``$NUMBA_CACHE_DIR``, else ``<sys.prefix>/var/numba_cache``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path(sys.prefix) / "var" / "numba_cache"


def use_cache_dir() -> Path:
    """Make this process use :func:`cache_dir` (sets ``NUMBA_CACHE_DIR`` when unset); return it.

    Numba reads the variable once, when it is imported: call this first. When Numba was
    imported before with another folder (a library user's process), that one stays in use:
    a warning says so.
    """
    folder = cache_dir()
    os.environ.setdefault(CACHE_ENV, str(folder))
    config = sys.modules.get("numba.core.config")
    if config is not None and getattr(config, "CACHE_DIR", "") != str(folder):
        log.warning("numba was imported with cache folder %r before %s=%s was set: kernels compiled at install "
                    "are not used by this process", getattr(config, "CACHE_DIR", ""), CACHE_ENV, folder)
    return folder


def kernel_modules() -> list[str]:
    """Return the modules that hold Numba kernels, found by reading their source for ``@njit``.

    Read, not imported: a list kept by hand went stale when a module was split, and its kernels
    were neither counted by ``cbm kernels warm`` nor checked by the tests.
    """
    from cbm_tasks.paths import REPO_ROOT

    root = REPO_ROOT / "cbm_tasks"
    return sorted(f"cbm_tasks.{package}.{path.stem}" for package in KERNEL_PACKAGES
                  for path in (root / package).glob("*.py") if "\n@njit(" in path.read_text(encoding="utf-8"))


def dispatchers(packages: tuple[str, ...] = KERNEL_PACKAGES) -> dict[str, Any]:
    """Return every Numba kernel of the project (or of *packages*) by qualified name (``zonal._count_kernel``)."""
    import importlib

    from numba.core.registry import CPUDispatcher

    found: dict[str, Any] = {}
    for module_name in kernel_modules():
        if module_name.split(".")[1] not in packages:
            continue
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.__module__ == module_name:
                found[f"{module_name.rsplit('.', 1)[-1]}.{name}"] = value
    return found


def warm_kernels(*, processes: int | None = None) -> KernelWarmup:
    """Compile every kernel for the argument types the pipeline passes, into the cache; load what is there.

    The extraction kernels are compiled from their published signatures and not run
    (``cbm_tasks.extraction.kernels``); the markers and traffic-light kernels run once on a
    tiny in-memory series of two parcels (Sentinel-2, CARD backscatter and coherence, SCL
    counts), through the same functions as ``cbm markers run``, so that their types are the
    pipeline's. With two or more CPUs (*processes*, default: those this process may use) the
    markers half is compiled in a second process meanwhile.

    Raises:
        ConfigError: the warm-up series gave no traffic light (the markers engine is broken).
    """
    folder = use_cache_dir()
    t0 = time.perf_counter()
    if (processes or len(os.sched_getaffinity(0))) < 2:
        counts = [_warm_half("extraction"), _warm_half("markers")]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fork of this process would inherit Numba's threading layer, which the extraction
        # half selects (cbm_tasks.extraction.preload says why a forked child must not run kernels then)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            markers = pool.submit(_warm_half, "markers")
            counts = [_warm_half("extraction"), markers.result()]
    kernels, signatures, compiled, loaded = (sum(part) for part in zip(*counts, strict=True))
    return KernelWarmup(cache_dir=folder, kernels=kernels, signatures=signatures, compiled=compiled, loaded=loaded,
                        seconds=time.perf_counter() - t0)


def _warm_half(half: str) -> tuple[int, int, int, int]:
    """Warm one half of the kernels (``_HALVES``); return its kernels, signatures, compiled and loaded."""
    use_cache_dir()  # a spawned process: before Numba is imported
    if half == "extraction":
        from cbm_tasks.extraction.kernels import warm_kernels as warm_extraction

        warm_extraction()
    else:
        _run_markers_once()
    kernels = [d for d in dispatchers(_HALVES[half]).values() if d.signatures]
    return (len(kernels), sum(len(d.signatures) for d in kernels),
            int(sum(sum(d.stats.cache_misses.values()) for d in kernels)),
            int(sum(sum(d.stats.cache_hits.values()) for d in kernels)))


def _run_markers_once() -> None:
    import numpy as np
    import pyarrow as pa

    from cbm_tasks.markers.bare_soil_explain import explain_bare_soil
    from cbm_tasks.markers.db_order import series_order
    from cbm_tasks.markers.emergence_explain import explain_emergence
    from cbm_tasks.markers.engine import run_markers
    from cbm_tasks.markers.harvest_explain import explain_harvest
    from cbm_tasks.markers.mowing_explain import explain_mowing
    from cbm_tasks.markers.params import load_params
    from cbm_tasks.markers.reader import series_from_arrow
    from cbm_tasks.traffic_light.evaluate import evaluate_lights
    from cbm_tasks.traffic_light.rules import load_rules

    start = datetime(2021, 3, 1, 10, 30, tzinfo=UTC)
    band_rows: list[tuple[Any, ...]] = []  # parcel_id, obs_time, source, band, mean, clear_fraction
    count_rows: list[tuple[Any, ...]] = []  # parcel_id, obs_time, band, class, count
    for parcel in ("1", "2"):
        for day in range(0, 240, 5):
            when = start + timedelta(days=day)
            ndvi = 0.8 if day % 60 < 40 else 0.35  # grass cut every two months
            band_rows += [(parcel, when, "s2", "B04", 0.3 * (1 - ndvi) / (1 + ndvi), 0.95),
                          (parcel, when, "s2", "B08", 0.3, 0.95)]
            count_rows += [(parcel, when, "SCL", 4, 90), (parcel, when, "SCL", 9, 10)]
            band_rows += [(parcel, when + timedelta(hours=7), source, band, value, None)
                          for source, band, value in (("bs", "VV", 0.05), ("bs", "VH", 0.01), ("c6", "VV", 0.4),
                                                      ("c6", "VH", 0.3))]
    utc_us = pa.timestamp("us", tz="UTC")
    band_stats = pa.table({"parcel_id": pa.array([r[0] for r in band_rows]),
                           "obs_time": pa.array([r[1] for r in band_rows], utc_us),
                           "source": pa.array([r[2] for r in band_rows]), "band": pa.array([r[3] for r in band_rows]),
                           "mean": pa.array([r[4] for r in band_rows], pa.float32()),
                           "clear_fraction": pa.array([r[5] for r in band_rows], pa.float32())})
    class_counts = pa.table({"parcel_id": pa.array([r[0] for r in count_rows]),
                             "obs_time": pa.array([r[1] for r in count_rows], utc_us),
                             "band": pa.array([r[2] for r in count_rows]),
                             "class": pa.array([r[3] for r in count_rows], pa.int16()),
                             "count": pa.array([r[4] for r in count_rows], pa.int32())})
    params, rules = load_params(None), load_rules(None)
    for table in (band_stats, band_stats.drop_columns(["clear_fraction"])):
        series = series_from_arrow(table, class_counts, name="kernel warm-up")
        for use_s1 in (True, False):
            result = run_markers(series, params, use_s1=use_s1)
            lights = list(evaluate_lights(result, rules))
            if not lights or not np.all([light.parcel_id in ("1", "2") for light in lights]):
                raise ConfigError(f"kernel warm-up: the markers of the warm-up series gave {len(lights)} lights")
            # the tests that cbm markers explain and the audit report call from Python (falls, cycles, lows, rises)
            explain_mowing(series, "1", params, use_s1=use_s1)
        explain_harvest(series, "1", params)
        explain_bare_soil(series, "1", params)
        explain_emergence(series, "1", params)
    # the database read's ordering of a batch (markers.db_read), with the argument types it passes
    rows, *_ = series_order(np.array([1, 0], np.int64), np.array([0, 0], np.int64), np.array([2, 2], np.int8), 2,
                            np.array([0], np.int64), np.array([True]), 13, np.array([0], np.int64),
                            np.array([0], np.int64), np.array([0.5]))
    if rows.tolist() != [1, 0]:
        raise ConfigError(f"kernel warm-up: the database read's row order is {rows.tolist()}, not [1, 0]")
