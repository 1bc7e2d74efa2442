"""Load the extraction's Numba kernels once, in Airflow's forkserver, for every task process to inherit.

This module exists only to be listed in ``[scheduler] mp_forkserver_preload``
(``cbm_tasks.ops.airflow_config``). **Importing it has an effect**: it compiles, or loads from
Numba's on-disk cache, every kernel of ``cbm_tasks.extraction.zonal`` and ``cbm_tasks.extraction.rasterize`` for the
argument types the public wrappers pass. Without it every task process loads the cached kernels
again on its first call (~1 s per image, most of a warm extraction); with it the forked task
finds them ready in the dispatchers it inherited. Nothing else should import it.

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

from cbm_tasks.extraction.kernels import CLASS_DTYPES, VALUE_DTYPES, Warmup, kernels, warm_kernels

__all__ = ["CLASS_DTYPES", "VALUE_DTYPES", "WARMUP", "Warmup", "kernels", "warm_kernels"]

WARMUP = warm_kernels()
