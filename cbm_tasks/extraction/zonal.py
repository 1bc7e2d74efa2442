"""Per-parcel statistics of one band over a label raster (Numba kernels).

``zonal_stats`` reduces a band to count, mean, std, min, max and the 25/50/75 percentiles
per parcel; ``class_counts`` counts the pixels of each class of a categorical band (S2 SCL).
Both take the label raster of ``rasterize.rasterize_parcels`` (0 = no parcel).

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from cbm_tasks.errors import BandError, GridMismatchError

__all__ = ["ClassCounts", "ParcelStats", "class_counts", "warmup_signatures", "zonal_stats"]

log = logging.getLogger(__name__)

_VALUE_DTYPES = frozenset(
    np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)
)
# (passes of 8 bits, bias) of the radix sort per dtype; others use a comparison sort
_RADIX = {np.dtype(np.uint8): (1, 0), np.dtype(np.int8): (1, 128), np.dtype(np.uint16): (2, 0),
          np.dtype(np.int16): (2, 32768)}
_RADIX_MIN = 64  # shorter groups: the comparison sort is as fast
_CLASS_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32))
# Below this many pixels the kernels run on one thread. Measured with a 64 x 64 band on this
# project's 2-core machine: 0.4 ms per zonal_stats call on one thread, 3-10 ms on two (60 ms when
# the machine is loaded); from about 512 x 512 pixels the second thread pays for itself.
_SERIAL_BELOW_PIXELS = 1 << 18


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
    _check_grids(labels, values, band=band, allowed=_VALUE_DTYPES)
    if n_labels < 0:
        raise ValueError(f"band {band}: n_labels must be >= 0, got {n_labels}")
    has_nodata, nodata_value = _nodata_in_dtype(nodata, values.dtype)
    with _threads_for(labels.size):
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
    _check_grids(labels, values, band=band, allowed=_CLASS_DTYPES)
    if n_classes <= 0:
        raise ValueError(f"band {band}: n_classes must be >= 1, got {n_classes}")
    n_labels = int(labels.max(initial=0))
    has_nodata, nodata_value = _nodata_in_dtype(nodata, values.dtype)
    with _threads_for(labels.size):
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


@contextmanager
def _threads_for(n_pixels: int) -> Iterator[None]:
    """Run the kernels called inside on one thread when *n_pixels* is small (see the module doc).

    ``numba.set_num_threads`` applies to the calling thread only, and is restored on the way out.
    """
    if n_pixels >= _SERIAL_BELOW_PIXELS:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _check_grids(labels: np.ndarray, values: np.ndarray, *, band: str, allowed: frozenset[np.dtype]) -> None:
    if labels.ndim != 2 or values.ndim != 2:
        raise BandError(f"band {band}: expected 2-D labels and values, got {labels.ndim}-D and {values.ndim}-D")
    if labels.shape != values.shape:
        raise GridMismatchError(f"band {band}: values {values.shape} do not match label grid {labels.shape}")
    if labels.dtype != np.int32:
        raise BandError(f"band {band}: labels must be int32, got {labels.dtype}")
    if values.dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed))
        raise BandError(f"band {band}: unsupported dtype {values.dtype}; expected one of {names}")


def _nodata_in_dtype(nodata: float | None, dtype: np.dtype) -> tuple[bool, np.generic]:
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


def warmup_signatures(value_dtypes: Sequence[np.dtype],
                      class_dtypes: Sequence[np.dtype]) -> list[tuple[str, Any, tuple[Any, ...]]]:
    """Return ``(name, kernel, example arguments)`` for each kernel call the wrappers make, to compile ahead of use.

    The arguments are tiny arrays built as :func:`zonal_stats` and :func:`class_counts` build
    them, so their Numba types are the ones the extraction passes. Labels come writable (fresh
    from rasterisation) and read-only (memory-mapped by the label cache): both are listed.
    Nothing is run (``cbm_tasks.extraction.preload`` explains why).

    Args:
        value_dtypes: band dtypes for ``zonal_stats``.
        class_dtypes: band dtypes for ``class_counts``.
    """
    writable = np.zeros((2, 2), np.int32)
    read_only = np.zeros((2, 2), np.int32)
    read_only.flags.writeable = False
    calls: list[tuple[str, Any, tuple[Any, ...]]] = []
    n_labels, n_parts = 1, 1  # Python ints, as the wrapper passes them
    for dtype in map(np.dtype, value_dtypes):
        values = np.zeros((2, 2), dtype)
        has_nodata, nodata = _nodata_in_dtype(0, dtype)
        counts = np.zeros((n_parts, n_labels + 1), np.int64)
        offsets = np.zeros(n_labels + 2, np.int64)
        grouped = np.empty(0, dtype)
        radix_passes, bias = _RADIX.get(dtype, (0, 0))
        for labels in (writable, read_only):
            calls.append(("zonal._count_kernel", _count_kernel,
                          (labels, values, has_nodata, nodata, n_labels, n_parts)))
            calls.append(("zonal._scatter_kernel", _scatter_kernel,
                          (labels, values, has_nodata, nodata, offsets, counts, grouped)))
        calls.append(("zonal._reduce_kernel", _reduce_kernel,
                      (grouped, offsets, np.zeros(1, np.int32), radix_passes, bias, np.empty((1, 7), np.float64))))
    for dtype in map(np.dtype, class_dtypes):
        values = np.zeros((2, 2), dtype)
        has_nodata, nodata = _nodata_in_dtype(0, dtype)
        calls += [("zonal._class_count_kernel", _class_count_kernel, (labels, values, has_nodata, nodata, 1, 12, 1))
                  for labels in (writable, read_only)]
    return calls
