"""Load the extraction's Numba kernels once, in Airflow's forkserver, for every task process to inherit.

This module exists only to be listed in ``[scheduler] mp_forkserver_preload``
(``cbm_tasks.ops.airflow_config``). **Importing it has an effect**: it compiles, or loads from
Numba's on-disk cache, every kernel of ``cbm_tasks.extraction.zonal``, ``categorical`` and
``rasterize`` (its steps ``wkb`` and ``scanline``) for the argument types the public wrappers
pass. Without it every task process loads the cached kernels again on its first call (~1 s
per image, most of a warm extraction); with it the forked task finds them ready in the
dispatchers it inherited. Nothing else should import it.

Why ``compile(signature)`` and never a call: loading a ``parallel=True`` kernel only *selects*
Numba's threading layer (for GNU OpenMP, the default on Linux wheels, that sets the thread count
and records the pid); running one starts the thread pool, and threads do not survive ``fork``.
GNU OpenMP used before a fork hangs or crashes the child; Numba therefore kills (SIGTERM) a
*direct* child of the process that selected the layer when it runs a parallel kernel. Airflow
runs each task in a grandchild of the forkserver (forkserver -> LocalExecutor worker ->
supervised task process), which is safe: no thread pool exists in any ancestor, and the child
starts its own on first use (``tests/test_preload.py`` runs exactly this chain, also under
NUMBA_THREADING_LAYER=workqueue). Under GNU OpenMP a *direct* child of a process that imported
this module is killed when it runs a parallel kernel (measured): never run kernels there.

The argument types are built from tiny arrays passed through the same helpers as the wrappers
(``numba.typeof``), so a signature here is one the extraction really calls; the test checks that
calling the public functions in a forked child adds no signature.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from cbm_tasks.extraction import categorical, rasterize, zonal

__all__ = ["CLASS_DTYPES", "VALUE_DTYPES", "Warmup", "WARMUP", "kernels", "warm_kernels"]

log = logging.getLogger(__name__)

# band dtypes the extraction reads: S2 digital numbers (uint16), SCL (uint8), S1 dB x 10000
# (int16/int32) or linear backscatter (float32); every other allowed dtype still works, compiled on use
VALUE_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.int32,
                                                                  np.float32))
CLASS_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclass(frozen=True, slots=True)
class Warmup:
    """What :func:`warm_kernels` did.

    Attributes:
        kernels: Numba dispatchers touched.
        signatures: (kernel, argument types) pairs compiled or loaded from the cache.
        seconds: wall time.
    """

    kernels: int
    signatures: int
    seconds: float


def _signatures(value_dtypes: Sequence[np.dtype] = VALUE_DTYPES,
                class_dtypes: Sequence[np.dtype] = CLASS_DTYPES) -> list[tuple[str, Any, tuple[Any, ...]]]:
    # each kernel module publishes the calls its wrappers make; this module knows no kernel by name
    return (zonal.warmup_signatures(value_dtypes) + categorical.warmup_signatures(class_dtypes)
            + rasterize.warmup_signatures())


def kernels() -> dict[str, Any]:
    """Return the Numba dispatchers the public wrappers call, by qualified name (``zonal._count_kernel``)."""
    return {name: kernel for name, kernel, _ in _signatures()}


def warm_kernels(
    *, value_dtypes: Sequence[np.dtype] = VALUE_DTYPES, class_dtypes: Sequence[np.dtype] = CLASS_DTYPES
) -> Warmup:
    """Compile or load from the cache every kernel for the types the extraction passes; run none.

    The calls are those ``zonal``, ``categorical`` and ``rasterize`` publish (``warmup_signatures``).

    Args:
        value_dtypes: band dtypes for ``zonal_stats``.
        class_dtypes: band dtypes for ``class_counts``.

    Returns:
        The number of kernels and signatures, and the seconds it took (a cold cache compiles:
        tens of seconds once, then the cache serves every process).
    """
    t0 = time.perf_counter()
    calls = _signatures(value_dtypes, class_dtypes)
    for _, kernel, args in calls:
        kernel.compile(tuple(numba.typeof(arg) for arg in args))  # type: ignore[no-untyped-call]
    result = Warmup(kernels=len({name for name, _, _ in calls}), signatures=len(calls),
                    seconds=time.perf_counter() - t0)
    log.info("numba kernels preloaded kernels=%d signatures=%d threading_layer_selected=%s seconds=%.2f",
             result.kernels, result.signatures, _layer_selected(), result.seconds)
    return result


def _layer_selected() -> bool:
    # whether loading a parallel kernel initialised Numba's threading layer (it does for every layer)
    from numba.np.ufunc import parallel

    return bool(getattr(parallel, "_is_initialized", False))


WARMUP = warm_kernels()
