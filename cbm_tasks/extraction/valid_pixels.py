"""Which pixels of a band count: the label and value grids checked, nodata expressed in the band's dtype.

Shared by the two reductions over a label raster, ``zonal.zonal_stats`` (continuous bands) and
``categorical.class_counts`` (class bands such as S2 SCL), so both refuse the same inputs with
the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np

from cbm_tasks.errors import BandError, GridMismatchError

__all__ = ["check_band_grid", "example_labels", "nodata_in_dtype", "read_only_labels", "threads_for"]

# Below this many pixels the kernels run on one thread. Measured with a 64 x 64 band on this
# project's 2-core machine: 0.4 ms per zonal_stats call on one thread, 3-10 ms on two (60 ms when
# the machine is loaded); from about 512 x 512 pixels the second thread pays for itself.
SERIAL_BELOW_PIXELS = 1 << 18


@contextmanager
def threads_for(n_pixels: int) -> Iterator[None]:
    """Run the kernels called inside on one thread when *n_pixels* is small (``SERIAL_BELOW_PIXELS``).

    ``numba.set_num_threads`` applies to the calling thread only, and is restored on the way out.
    """
    if n_pixels >= SERIAL_BELOW_PIXELS:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def check_band_grid(labels: np.ndarray, values: np.ndarray, *, band: str, allowed: frozenset[np.dtype]) -> None:
    """Check that *values* is a 2-D band of an *allowed* dtype on the int32 label grid *labels*.

    Args:
        labels: the label raster (``rasterize.rasterize_parcels``).
        values: the band.
        band: band name, used in messages.
        allowed: the band dtypes the caller's kernels are compiled for.

    Raises:
        GridMismatchError: labels and values differ in shape.
        BandError: not 2-D, labels not int32, or a dtype not in *allowed*.
    """
    if labels.ndim != 2 or values.ndim != 2:
        raise BandError(f"band {band}: expected 2-D labels and values, got {labels.ndim}-D and {values.ndim}-D")
    if labels.shape != values.shape:
        raise GridMismatchError(f"band {band}: values {values.shape} do not match label grid {labels.shape}")
    if labels.dtype != np.int32:
        raise BandError(f"band {band}: labels must be int32, got {labels.dtype}")
    if values.dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed))
        raise BandError(f"band {band}: unsupported dtype {values.dtype}; expected one of {names}")


def nodata_in_dtype(nodata: float | None, dtype: np.dtype) -> tuple[bool, np.generic]:
    """Return (has_nodata, nodata as *dtype*); a nodata the dtype cannot hold matches no pixel."""
    zero = dtype.type(0)
    if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)):
        return False, zero
    if dtype.kind in "iu":
        if float(nodata) != int(nodata) or not (np.iinfo(dtype).min <= int(nodata) <= np.iinfo(dtype).max):
            return False, zero
        return True, dtype.type(int(nodata))
    cast = dtype.type(nodata)
    return (True, cast) if float(cast) == float(nodata) else (False, zero)


def read_only_labels(labels: np.ndarray) -> np.ndarray:
    """Return *labels* as the kernels receive them: read-only (a view, no copy).

    Label rasters come writable (fresh from rasterisation) or read-only (memory-mapped by the label
    cache). Numba types the two differently and compiled every kernel twice, a fifth of a cold
    ``cbm kernels warm``; the kernels only read the labels.
    """
    if not labels.flags.writeable:
        return labels
    view = labels.view()
    view.flags.writeable = False
    return view


def example_labels() -> np.ndarray:
    """Return a tiny label raster typed as the kernels receive it, for the ``warmup_signatures``."""
    return read_only_labels(np.zeros((2, 2), np.int32))
