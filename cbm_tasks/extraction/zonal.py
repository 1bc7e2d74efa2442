"""Per-parcel statistics of one band over a label raster (Numba kernels).

``zonal_stats`` reduces a band to count, mean, std, min, max and the 25/50/75 percentiles
per parcel, over the label raster of ``rasterize.rasterize_parcels`` (0 = no parcel); the
pixels of each class of a categorical band (S2 SCL) are counted by ``categorical.class_counts``.

How: one parallel pass counts the valid pixels of each label, a counting sort scatters the
valid values into one buffer grouped by label (memory ~ one value per labelled valid pixel,
in the band's own dtype), then each group is sorted (radix sort for 8/16-bit integers, the
digital numbers of optical bands; comparison sort otherwise) and reduced. Percentiles are
numpy's default ('linear') method, reproduced bit for bit; mean and std accumulate in float64
with two passes, so they match numpy to ~1e-15 relative.

The kernels run on Numba's thread pool (NUMBA_NUM_THREADS); call them from one Python thread
at a time, as the default 'workqueue' threading layer does not support concurrent callers.
Bands smaller than ``_SERIAL_BELOW_PIXELS`` run on the calling thread only: waking the pool costs
more than the work there (a 640 m chip has 4,096 pixels at 10 m), and much more on a busy machine,
where each parallel call waits for the other threads to be scheduled.
"""

from __future__ import annotations

import logging
import math
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

__all__ = ["ParcelStats", "warmup_signatures", "zonal_stats"]

log = logging.getLogger(__name__)

_VALUE_DTYPES = frozenset(
    np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)
)
# (passes of 8 bits, bias) of the radix sort per dtype; others use a comparison sort
_RADIX = {np.dtype(np.uint8): (1, 0), np.dtype(np.int8): (1, 128), np.dtype(np.uint16): (2, 0),
          np.dtype(np.int16): (2, 32768)}
_RADIX_MIN = 64  # shorter groups: the comparison sort is as fast


@dataclass(frozen=True, slots=True)
class ParcelStats:
    """Statistics of one band per parcel, one array element per parcel with >= 1 valid pixel.

    Attributes:
        keys: parcel keys (the label values), int32, ascending.
        count: valid pixels per parcel, int64.
        mean, std: float64; std is the population standard deviation (ddof=0).
        min, max, p25, p50, p75: float64; percentiles as numpy's default ('linear').
    """

    keys: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    p25: np.ndarray
    p50: np.ndarray
    p75: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def scaled(self, *, scale: float, offset: float) -> ParcelStats:
        """Return the statistics of ``value * scale + offset`` (digital numbers to physical units).

        Exact for every statistic, because linear interpolation commutes with an affine
        map; a negative scale swaps min/max and p25/p75.

        Args:
            scale: multiplier from the product metadata (1e-4 for S2 L2A reflectance).
            offset: added after scaling (-0.1 for S2 processing baseline >= 04.00).
        """
        if not (math.isfinite(scale) and math.isfinite(offset)):
            raise ValueError(f"scale and offset must be finite, got scale={scale} offset={offset}")
        lo, hi, q1, q3 = (self.min, self.max, self.p25, self.p75) if scale >= 0 else (
            self.max, self.min, self.p75, self.p25)
        return ParcelStats(
            keys=self.keys,
            count=self.count,
            mean=self.mean * scale + offset,
            std=self.std * abs(scale),
            min=lo * scale + offset,
            max=hi * scale + offset,
            p25=q1 * scale + offset,
            p50=self.p50 * scale + offset,
            p75=q3 * scale + offset,
        )


def zonal_stats(
    labels: np.ndarray, values: np.ndarray, *, band: str, nodata: float | None, n_labels: int
) -> ParcelStats:
    """Compute count, mean, std, min, max, p25, p50, p75 of *values* per label.

    Args:
        labels: 2-D int32 label raster (0 = no parcel), values in 0..n_labels.
        values: 2-D band on the same grid, raw digital numbers (integer) or float.
        band: band name, used in messages and the log line.
        nodata: value excluded from the statistics, or None. NaN is always excluded.
        n_labels: the largest label value that may occur (the parcel count).

    Returns:
        ParcelStats of the labels that have at least one valid pixel; labels without any
        (outside the image, all nodata) are absent.

    Raises:
        GridMismatchError: labels and values differ in shape.
        BandError: not 2-D, an unsupported dtype, or a label outside 0..n_labels.

    Notes:
        Memory: the valid labelled pixels are copied once, in the band's dtype, plus 8
        bytes per label per thread for the counts.
    """
    t0 = time.perf_counter()
    check_band_grid(labels, values, band=band, allowed=_VALUE_DTYPES)
    if n_labels < 0:
        raise ValueError(f"band {band}: n_labels must be >= 0, got {n_labels}")
    has_nodata, nodata_value = nodata_in_dtype(nodata, values.dtype)
    labels = read_only_labels(labels)
    with threads_for(labels.size):
        n_parts = max(1, min(numba.get_num_threads(), labels.shape[0]))
        counts, bad = _count_kernel(labels, values, has_nodata, nodata_value, n_labels, n_parts)
        if bad != 0:
            raise BandError(f"band {band}: label raster holds {bad} outside 0..n_labels={n_labels}")
        per_label = counts.sum(axis=0)
        keys = np.flatnonzero(per_label[1:]).astype(np.int32) + 1
        offsets = np.zeros(n_labels + 2, np.int64)
        np.cumsum(per_label, out=offsets[1:])
        grouped = np.empty(offsets[-1], values.dtype)
        _scatter_kernel(labels, values, has_nodata, nodata_value, offsets, counts, grouped)
        stats = np.empty((len(keys), 7), np.float64)
        radix_passes, bias = _RADIX.get(values.dtype, (0, 0))
        _reduce_kernel(grouped, offsets, keys, radix_passes, bias, stats)
    result = ParcelStats(
        keys=keys,
        count=(offsets[keys + 1] - offsets[keys]).astype(np.int64),
        mean=stats[:, 0].copy(),
        std=stats[:, 1].copy(),
        min=stats[:, 2].copy(),
        max=stats[:, 3].copy(),
        p25=stats[:, 4].copy(),
        p50=stats[:, 5].copy(),
        p75=stats[:, 6].copy(),
    )
    log.debug("zonal stats band=%s parcels=%d pixels=%d seconds=%.3f",
              band, len(keys), int(offsets[-1]), time.perf_counter() - t0)
    return result


@njit(cache=True, nogil=True, inline="always")
def _is_valid(value: np.generic, has_nodata: bool, nodata: np.generic) -> bool:
    if value != value:  # NaN; never true for integers
        return False
    return not (has_nodata and value == nodata)


@njit(cache=True, nogil=True, parallel=True)
def _count_kernel(
    labels: np.ndarray, values: np.ndarray, has_nodata: bool, nodata: np.generic, n_labels: int, n_chunks: int
) -> tuple[np.ndarray, int]:
    """Valid pixels per (block of rows, label); the second value is a label out of range, or 0."""
    rows, cols = labels.shape
    chunk_rows = (rows + n_chunks - 1) // n_chunks  # one block per thread keeps the count arrays few
    counts = np.zeros((n_chunks, n_labels + 1), np.int64)
    bad = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        for y in range(c * chunk_rows, min(rows, (c + 1) * chunk_rows)):
            for x in range(cols):
                label = labels[y, x]
                if label == 0:
                    continue
                if label < 0 or label > n_labels:
                    bad[c] = label
                    continue
                if _is_valid(values[y, x], has_nodata, nodata):
                    counts[c, label] += 1
    out_of_range = 0
    for c in range(n_chunks):
        if bad[c] != 0:
            out_of_range = bad[c]
    return counts, out_of_range


@njit(cache=True, nogil=True, parallel=True)
def _scatter_kernel(
    labels: np.ndarray,
    values: np.ndarray,
    has_nodata: bool,
    nodata: np.generic,
    offsets: np.ndarray,
    counts: np.ndarray,
    grouped: np.ndarray,
) -> None:
    """Copy the valid values into *grouped*, label by label (counting sort)."""
    rows, cols = labels.shape
    n_chunks, n_slots = counts.shape
    chunk_rows = (rows + n_chunks - 1) // n_chunks  # the blocks of _count_kernel
    # each chunk writes to its own sub-range of every label's segment: no write conflicts
    cursor = np.empty((n_chunks, n_slots), np.int64)
    for label in prange(n_slots):
        position = offsets[label]
        for c in range(n_chunks):
            cursor[c, label] = position
            position += counts[c, label]
    for c in prange(n_chunks):
        for y in range(c * chunk_rows, min(rows, (c + 1) * chunk_rows)):
            for x in range(cols):
                label = labels[y, x]
                if label == 0:
                    continue
                value = values[y, x]
                if _is_valid(value, has_nodata, nodata):
                    grouped[cursor[c, label]] = value
                    cursor[c, label] += 1


@njit(cache=True, nogil=True, parallel=True)
def _reduce_kernel(
    grouped: np.ndarray, offsets: np.ndarray, keys: np.ndarray, radix_passes: int, bias: int, stats: np.ndarray
) -> None:
    """Sort each label's values and write mean, std, min, max, p25, p50, p75."""
    for k in prange(len(keys)):
        label = keys[k]
        segment = grouped[offsets[label]:offsets[label + 1]]
        n = len(segment)
        if radix_passes == 0 or n < _RADIX_MIN:
            segment.sort()
        else:
            _radix_sort(segment, radix_passes, bias)
        total = 0.0
        for v in segment:
            total += float(v)
        mean = total / n
        squares = 0.0
        for v in segment:
            squares += (float(v) - mean) ** 2
        stats[k, 0] = mean
        stats[k, 1] = math.sqrt(squares / n)
        stats[k, 2] = float(segment[0])
        stats[k, 3] = float(segment[n - 1])
        stats[k, 4] = _percentile_linear(segment, 0.25)
        stats[k, 5] = _percentile_linear(segment, 0.5)
        stats[k, 6] = _percentile_linear(segment, 0.75)


@njit(cache=True, nogil=True)
def _radix_sort(segment: np.ndarray, passes: int, bias: int) -> None:
    """LSD radix sort, 8 bits per pass, of 8/16-bit integers (bias makes signed values non-negative).

    ~15x faster than a comparison sort on the uint16 digital numbers of optical bands.
    """
    n = len(segment)
    scratch = np.empty(n, segment.dtype)
    counts = np.empty(256, np.int64)
    src, dst = segment, scratch
    for p in range(passes):
        shift = 8 * p
        counts[:] = 0
        for v in src:
            counts[((int(v) + bias) >> shift) & 255] += 1
        position = 0
        for digit in range(256):
            c = counts[digit]
            counts[digit] = position
            position += c
        for v in src:
            digit = ((int(v) + bias) >> shift) & 255
            dst[counts[digit]] = v
            counts[digit] += 1
        src, dst = dst, src
    if passes % 2 == 1:
        segment[:] = scratch


@njit(cache=True, nogil=True)
def _percentile_linear(ordered: np.ndarray, q: float) -> float:
    """numpy.percentile(values, [..], method='linear') of sorted values, same operations and rounding.

    Like numpy, the difference b - a is taken in the input dtype (float32 stays float32)
    and the interpolation in float64; numpy's float64 result for a list of percentiles is
    reproduced bit for bit (a scalar q on float32 input makes numpy round to float32).
    """
    n = len(ordered)
    virtual = float(n - 1) * q
    lower = math.floor(virtual)
    gamma = virtual - lower
    i = int(lower)
    if i >= n - 1:
        return float(ordered[n - 1])
    a = float(ordered[i])
    b = float(ordered[i + 1])
    diff = float(ordered[i + 1] - ordered[i])
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma


def warmup_signatures(value_dtypes: Sequence[np.dtype]) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """Return ``(name, kernel, example arguments)`` for each kernel call of :func:`zonal_stats`, to compile ahead.

    The arguments are tiny arrays built as :func:`zonal_stats` builds them, so their Numba types
    are the ones the extraction passes (labels read-only: ``read_only_labels``). Nothing is run
    (``cbm_tasks.extraction.preload`` explains why).

    Args:
        value_dtypes: band dtypes for ``zonal_stats``.
    """
    labels = example_labels()
    calls: list[tuple[str, Any, tuple[Any, ...]]] = []
    n_labels, n_parts = 1, 1  # Python ints, as the wrapper passes them
    for dtype in map(np.dtype, value_dtypes):
        values = np.zeros((2, 2), dtype)
        has_nodata, nodata = nodata_in_dtype(0, dtype)
        counts = np.zeros((n_parts, n_labels + 1), np.int64)
        offsets = np.zeros(n_labels + 2, np.int64)
        grouped = np.empty(0, dtype)
        radix_passes, bias = _RADIX.get(dtype, (0, 0))
        calls.append(("zonal._count_kernel", _count_kernel, (labels, values, has_nodata, nodata, n_labels, n_parts)))
        calls.append(("zonal._scatter_kernel", _scatter_kernel,
                      (labels, values, has_nodata, nodata, offsets, counts, grouped)))
        calls.append(("zonal._reduce_kernel", _reduce_kernel,
                      (grouped, offsets, np.zeros(1, np.int32), radix_passes, bias, np.empty((1, 7), np.float64))))
    return calls
