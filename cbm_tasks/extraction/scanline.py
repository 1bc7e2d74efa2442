"""The scanline fill of ``rasterize.rasterize_parcels``: polygons burnt into a label grid, GDAL's rule (Numba).

The rule (pixel centres, even-odd rings, GDAL's ring orientation and "bottom horizontal
segment" rule, burn order) is spelt out in ``rasterize``'s docstring; these kernels implement
it pixel for pixel, in parallel over bands of rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from cbm_tasks.extraction.wkb import PolygonRings

__all__ = ["fill_polygons", "warmup_signatures"]

_OGR_EPSILON = 1e-5  # OGRLinearRing::isClockwise treats closer vertices as duplicates
_ROW_BAND = 256  # rows per parallel work item: small enough to balance 2 threads, big enough to amortise


def fill_polygons(rings: PolygonRings, part_keys: np.ndarray, *, inverse: np.ndarray,
                  shape: tuple[int, int]) -> np.ndarray:
    """Return an int32 label grid of *shape* with each polygon's key burnt where it covers pixel centres.

    Args:
        rings: the polygons (``wkb.polygon_rings``), finite coordinates in the grid's CRS.
        part_keys: int32 key of each polygon (``rings.part_geom`` order); later ones overwrite earlier ones.
        inverse: float64 [6], GDAL's inverse geotransform of the grid (CRS -> pixel, line).
        shape: (rows, columns).

    Returns:
        The label grid, 0 where no polygon covers the pixel centre.
    """
    labels = np.zeros(shape, np.int32)
    _burn_kernel(rings.xs, rings.ys, inverse, rings.ring_start, rings.part_ring_start, part_keys, labels)
    return labels


@njit(cache=True, nogil=True, parallel=True)
def _burn_kernel(
    xs: np.ndarray,
    ys: np.ndarray,
    inverse: np.ndarray,
    ring_start: np.ndarray,
    part_ring_start: np.ndarray,
    keys: np.ndarray,
    labels: np.ndarray,
) -> None:
    rows = labels.shape[0]
    n_parts = len(keys)
    px = np.empty(len(xs), np.float64)
    py = np.empty(len(xs), np.float64)
    for i in prange(len(xs)):
        px[i] = inverse[0] + xs[i] * inverse[1] + ys[i] * inverse[2]
        py[i] = inverse[3] + xs[i] * inverse[4] + ys[i] * inverse[5]
    # GDAL (as measured against 3.10) walks every ring, exterior or hole, clockwise in CRS
    # coordinates; the direction decides which horizontal edges on a centre line are filled
    reverse = np.zeros(len(ring_start) - 1, np.bool_)
    first_row = np.empty(n_parts, np.int64)
    last_row = np.empty(n_parts, np.int64)
    for g in prange(n_parts):
        for r in range(part_ring_start[g], part_ring_start[g + 1]):
            clockwise = _ring_is_clockwise(xs, ys, ring_start[r], ring_start[r + 1])
            reverse[r] = not clockwise
        v0 = ring_start[part_ring_start[g]]
        v1 = ring_start[part_ring_start[g + 1]]
        if v0 == v1:  # an empty polygon inside a MultiPolygon
            first_row[g], last_row[g] = 0, -1
            continue
        lo = py[v0]
        hi = py[v0]
        for v in range(v0 + 1, v1):
            lo = min(lo, py[v])
            hi = max(hi, py[v])
        # GDAL's loop bounds (int) min_y .. (int) max_y, clamped to the grid
        first_row[g] = max(0, int(lo)) if lo > -1e18 else 0
        last_row[g] = min(rows - 1, int(hi)) if hi < 1e18 else rows - 1
    n_bands = (rows + _ROW_BAND - 1) // _ROW_BAND
    for band in prange(n_bands):
        band_lo = band * _ROW_BAND
        band_hi = min(rows, band_lo + _ROW_BAND)  # exclusive
        for g in range(n_parts):  # input order: later parcels overwrite earlier ones
            lo = max(first_row[g], band_lo)
            hi = min(last_row[g] + 1, band_hi)
            if lo < hi:
                _fill_polygon(px, py, ring_start, reverse, part_ring_start[g], part_ring_start[g + 1], keys[g],
                              lo, hi, labels)


@njit(cache=True, nogil=True)
def _ring_is_clockwise(xs: np.ndarray, ys: np.ndarray, v0: int, v1: int) -> bool:
    """Orientation of a closed ring as OGR decides it (turn at the lowest-rightmost vertex).

    Differs from the signed area only for self-intersecting rings; OGR's rule is kept so
    that those, too, burn as in GDAL.
    """
    n = v1 - v0
    if n < 4:
        return True
    pivot = 0
    fallback = False
    for i in range(1, n - 1):
        x, y = xs[v0 + i], ys[v0 + i]
        if y < ys[v0 + pivot] or (y == ys[v0 + pivot] and x > xs[v0 + pivot]):
            pivot = i
            fallback = False
        elif y == ys[v0 + pivot] and x == xs[v0 + pivot]:
            fallback = True
    prev = pivot - 1 if pivot > 0 else n - 2
    nxt = pivot + 1 if pivot + 1 < n - 1 else 0
    px, py = xs[v0 + pivot], ys[v0 + pivot]
    if (abs(xs[v0 + prev] - px) < _OGR_EPSILON and abs(ys[v0 + prev] - py) < _OGR_EPSILON) or (
        abs(xs[v0 + nxt] - px) < _OGR_EPSILON and abs(ys[v0 + nxt] - py) < _OGR_EPSILON
    ):
        fallback = True
    dx0 = xs[v0 + prev] - px
    dy0 = ys[v0 + prev] - py
    dx1 = xs[v0 + nxt] - px
    dy1 = ys[v0 + nxt] - py
    cross = dx1 * dy0 - dx0 * dy1
    if not fallback and cross != 0.0:
        return bool(cross < 0.0)
    area2 = xs[v0] * (ys[v0 + 1] - ys[v0 + n - 1])  # Green's formula as OGR's fallback
    for i in range(1, n - 1):
        area2 += xs[v0 + i] * (ys[v0 + i + 1] - ys[v0 + i - 1])
    area2 += xs[v0 + n - 1] * (ys[v0] - ys[v0 + n - 2])
    return bool(area2 < 0.0)


@njit(cache=True, nogil=True)
def _fill_polygon(
    px: np.ndarray,
    py: np.ndarray,
    ring_start: np.ndarray,
    reverse: np.ndarray,
    ring_lo: int,
    ring_hi: int,
    key: np.int32,
    row_lo: int,
    row_hi: int,
    labels: np.ndarray,
) -> None:
    """Fill rows row_lo..row_hi-1 of one polygon (all its rings, even-odd)."""
    cols = labels.shape[1]
    n_rows = row_hi - row_lo
    counts = np.zeros(n_rows + 1, np.int64)
    # pass 1: crossings per row; horizontal edges on a centre line are burnt directly
    for r in range(ring_lo, ring_hi):
        v0 = ring_start[r]
        v1 = ring_start[r + 1]
        for i in range(v0, v1):
            j = v1 - 1 if i == v0 else i - 1  # edge j -> i, the first one closes the ring
            y1 = py[j]
            y2 = py[i]
            if y1 == y2:
                # GDAL fills a horizontal edge on a centre line when it runs right to left
                if (px[j] > px[i]) != reverse[r]:
                    y = int(math.floor(y1))
                    if y1 == y + 0.5 and row_lo <= y < row_hi:
                        x_start = max(int(math.floor(min(px[i], px[j]) + 0.5)), 0)
                        x_end = min(int(math.floor(max(px[i], px[j]) + 0.5)), cols)
                        for x in range(x_start, x_end):
                            labels[y, x] = key
                continue
            a, b = _crossed_rows(min(y1, y2), max(y1, y2), row_lo, row_hi)
            for y in range(a, b):
                counts[y - row_lo + 1] += 1
    for k in range(n_rows):
        counts[k + 1] += counts[k]
    total = counts[n_rows]
    if total == 0:
        return
    crossings = np.empty(total, np.int64)
    fill = counts[:-1].copy()
    # pass 2: crossing columns, with GDAL's formula and operand order for identical rounding
    for r in range(ring_lo, ring_hi):
        v0 = ring_start[r]
        v1 = ring_start[r + 1]
        for i in range(v0, v1):
            j = v1 - 1 if i == v0 else i - 1
            if py[j] == py[i]:
                continue
            if py[j] < py[i]:
                dy1, dy2, dx1, dx2 = py[j], py[i], px[j], px[i]
            else:
                dy1, dy2, dx1, dx2 = py[i], py[j], px[i], px[j]
            a, b = _crossed_rows(dy1, dy2, row_lo, row_hi)
            for y in range(a, b):
                dy = y + 0.5
                intersect = (dy - dy1) * (dx2 - dx1) / (dy2 - dy1) + dx1
                crossings[fill[y - row_lo]] = int(math.floor(intersect + 0.5))
                fill[y - row_lo] += 1
    for k in range(n_rows):
        seg = crossings[counts[k]:counts[k + 1]]
        if len(seg) < 2:
            continue
        _insertion_sort(seg)
        y = row_lo + k
        for p in range(0, len(seg) - 1, 2):
            x_start = max(seg[p], 0)
            x_end = min(seg[p + 1], cols)
            for x in range(x_start, x_end):
                labels[y, x] = key


@njit(cache=True, nogil=True)
def _crossed_rows(dy1: float, dy2: float, row_lo: int, row_hi: int) -> tuple[int, int]:
    """Rows y in [row_lo, row_hi) with dy1 <= y + 0.5 < dy2, tested exactly as GDAL does."""
    if not dy2 > row_lo or not dy1 < row_hi + 1:
        return row_lo, row_lo
    # clamp in floating point first: far-away vertices must not overflow the int conversion
    a = int(max(float(row_lo), min(float(row_hi), math.ceil(dy1 - 0.5))))
    while a > row_lo and (a - 1) + 0.5 >= dy1:
        a -= 1
    while a < row_hi and a + 0.5 < dy1:
        a += 1
    b = int(max(float(a), min(float(row_hi), math.ceil(dy2 - 0.5))))
    while b > a and (b - 1) + 0.5 >= dy2:
        b -= 1
    while b < row_hi and b + 0.5 < dy2:
        b += 1
    return a, b


@njit(cache=True, nogil=True)
def _insertion_sort(seg: np.ndarray) -> None:
    # crossings per row are few (2 for a convex parcel), insertion sort beats np.sort here
    for i in range(1, len(seg)):
        value = seg[i]
        j = i - 1
        while j >= 0 and seg[j] > value:
            seg[j + 1] = seg[j]
            j -= 1
        seg[j + 1] = value


def warmup_signatures() -> list[tuple[str, Any, tuple[Any, ...]]]:
    """Return ``(name, kernel, example arguments)`` for each kernel call of :func:`fill_polygons`.

    Nothing is run (``cbm_tasks.extraction.preload`` explains why).
    """
    offsets = np.zeros(2, np.int64)
    coords = np.zeros(4, np.float64)
    return [
        ("scanline._burn_kernel", _burn_kernel, (coords, coords, np.zeros(6, np.float64), offsets, offsets,
                                                 np.zeros(1, np.int32), np.zeros((2, 2), np.int32))),
    ]
