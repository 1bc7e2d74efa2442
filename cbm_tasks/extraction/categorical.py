"""Pixel counts per class of a categorical band (S2 SCL) per parcel (a Numba kernel).

``class_counts`` counts, for each parcel of the label raster of ``rasterize.rasterize_parcels``
(0 = no parcel), the pixels of each class value; the continuous bands go through
``zonal.zonal_stats``. One parallel pass over blocks of rows, a count array per block, summed.

The kernel runs on Numba's thread pool (NUMBA_NUM_THREADS); call it from one Python thread
at a time, as the default 'workqueue' threading layer does not support concurrent callers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from cbm_tasks.errors import BandError
from cbm_tasks.extraction.valid_pixels import (
    check_band_grid,
    example_labels,
    nodata_in_dtype,
    read_only_labels,
    threads_for,
)

__all__ = ["ClassCounts", "class_counts", "warmup_signatures"]

log = logging.getLogger(__name__)

_CLASS_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32))


@dataclass(frozen=True, slots=True)
class ClassCounts:
    """Pixel counts per class of a categorical band, one row per parcel with >= 1 counted pixel.

    Attributes:
        keys: parcel keys, int32, ascending.
        counts: int32 array [len(keys), n_classes]; column c counts the pixels of class c.
    """

    keys: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def class_counts(
    labels: np.ndarray, values: np.ndarray, *, band: str, n_classes: int, nodata: int | None
) -> ClassCounts:
    """Count the pixels of each class value per label (categorical bands such as S2 SCL).

    Args:
        labels: 2-D int32 label raster (0 = no parcel).
        values: 2-D integer class band on the same grid, classes 0..n_classes-1.
        band: band name, used in messages.
        n_classes: number of classes (12 for S2 SCL).
        nodata: class value that is not counted (0 for SCL), or None.

    Returns:
        ClassCounts of the labels with at least one counted pixel.

    Raises:
        GridMismatchError: labels and values differ in shape.
        BandError: not 2-D, not an integer dtype, or a (non-nodata) value outside 0..n_classes-1.
    """
    t0 = time.perf_counter()
    check_band_grid(labels, values, band=band, allowed=_CLASS_DTYPES)
    if n_classes <= 0:
        raise ValueError(f"band {band}: n_classes must be >= 1, got {n_classes}")
    n_labels = int(labels.max(initial=0))
    has_nodata, nodata_value = nodata_in_dtype(nodata, values.dtype)
    labels = read_only_labels(labels)
    with threads_for(labels.size):
        n_parts = max(1, min(numba.get_num_threads(), labels.shape[0]))
        counts, bad_value, bad_label = _class_count_kernel(
            labels, values, has_nodata, nodata_value, n_labels, n_classes, n_parts
        )
    if bad_label != 0:
        raise BandError(f"band {band}: label raster holds negative label {bad_label}")
    if bad_value != 0:
        wrong = _first_bad_class(values, has_nodata, nodata_value, n_classes)
        raise BandError(f"band {band}: class value {wrong} outside 0..{n_classes - 1} (n_classes={n_classes})")
    keys = np.flatnonzero(counts[1:].any(axis=1)).astype(np.int32) + 1
    log.debug("class counts band=%s parcels=%d seconds=%.3f", band, len(keys), time.perf_counter() - t0)
    return ClassCounts(keys=keys, counts=np.ascontiguousarray(counts[keys]))


@njit(cache=True, nogil=True, parallel=True)
def _class_count_kernel(
    labels: np.ndarray,
    values: np.ndarray,
    has_nodata: bool,
    nodata: np.generic,
    n_labels: int,
    n_classes: int,
    n_chunks: int,
) -> tuple[np.ndarray, int, int]:
    """Pixels per (label, class); also returns flags for a class value or label out of range."""
    rows, cols = labels.shape
    chunk_rows = (rows + n_chunks - 1) // n_chunks
    partial = np.zeros((n_chunks, n_labels + 1, n_classes), np.int32)
    bad_value = np.zeros(n_chunks, np.int64)
    bad_label = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        for y in range(c * chunk_rows, min(rows, (c + 1) * chunk_rows)):
            for x in range(cols):
                value = values[y, x]
                if has_nodata and value == nodata:
                    continue
                if value < 0 or value >= n_classes:
                    bad_value[c] = 1
                    continue
                label = labels[y, x]
                if label < 0:
                    bad_label[c] = label
                elif label > 0:
                    partial[c, label, value] += 1
    counts = np.zeros((n_labels + 1, n_classes), np.int32)
    for label in prange(n_labels + 1):
        for c in range(n_chunks):
            for k in range(n_classes):
                counts[label, k] += partial[c, label, k]
    return counts, bad_value.max(), bad_label.min()


def _first_bad_class(values: np.ndarray, has_nodata: bool, nodata: np.generic, n_classes: int) -> int:
    wrong = (values < 0) | (values >= n_classes)
    if has_nodata:
        wrong &= values != nodata
    return int(values.ravel()[np.flatnonzero(wrong.ravel())[0]])


def warmup_signatures(class_dtypes: Sequence[np.dtype]) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """Return ``(name, kernel, example arguments)`` for each kernel call :func:`class_counts` makes.

    The arguments are tiny arrays built as the wrapper builds them, so their Numba types are the
    ones the extraction passes (labels read-only: ``read_only_labels``). Nothing is run
    (``cbm_tasks.extraction.preload`` explains why).

    Args:
        class_dtypes: band dtypes for ``class_counts``.
    """
    labels = example_labels()
    calls: list[tuple[str, Any, tuple[Any, ...]]] = []
    for dtype in map(np.dtype, class_dtypes):
        values = np.zeros((2, 2), dtype)
        has_nodata, nodata = nodata_in_dtype(0, dtype)
        calls.append(("categorical._class_count_kernel", _class_count_kernel,
                      (labels, values, has_nodata, nodata, 1, 12, 1)))
    return calls
