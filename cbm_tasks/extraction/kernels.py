"""The extraction's Numba kernels compiled ahead of use, for every argument type the wrappers pass.

``warm_kernels`` compiles (or loads from Numba's on-disk cache, ``NUMBA_CACHE_DIR``) each kernel
of ``zonal``, ``categorical`` and ``rasterize`` for the calls those modules publish (``warmup_signatures``), and
runs none of them: why that matters under ``fork`` is in ``cbm_tasks.extraction.preload``, which
calls it in Airflow's forkserver. ``cbm kernels warm`` (run by ``scripts/install.sh``) calls it
too, so that the cache is filled at install and no extraction compiles.
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

__all__ = ["CLASS_DTYPES", "VALUE_DTYPES", "Warmup", "kernels", "warm_kernels"]

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

