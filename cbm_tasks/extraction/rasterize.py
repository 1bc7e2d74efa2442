"""Parcel polygons to a label raster: a Numba scanline fill with GDAL's pixel-centre rule.

``rasterize_parcels`` burns each parcel's key into an int32 grid, the first step of the
per-parcel extraction (labels, then ``zonal.zonal_stats`` per band). It reproduces
``rasterio.features.rasterize(..., all_touched=False)`` (GDAL's ``GDALdllImageFilledPolygon``)
pixel for pixel, but runs in parallel over bands of rows and skips GDAL's per-geometry
OGR conversion, so 100,000 parcels on a 10980 x 10980 Sentinel-2 tile take well under a
second instead of ~8 s.

The rule, as in GDAL:

* Coordinates are mapped to pixel space with the inverse geotransform exactly as GDAL
  computes it (``GDALInvGeoTransform``; no-rotation special case).
* For each row ``y`` the scanline runs through the pixel centres at ``y + 0.5``. An edge
  from ``y1 < y2`` crosses it when ``y1 <= y + 0.5 < y2``; the crossing ``x`` is rounded
  to ``floor(x + 0.5)`` and consecutive sorted crossings delimit the filled pixels. A
  pixel whose centre lies exactly on a left edge is outside, on a right edge inside.
* The rings of one polygon (exterior and holes) are filled together with the even-odd
  rule, so holes are excluded.
* A horizontal edge lying exactly on a centre line is filled when it runs from right to
  left in pixel space after every ring (exterior or hole) has been oriented clockwise in
  CRS coordinates (orientation decided as OGR does, at the lowest-rightmost vertex). This
  is GDAL's "bottom horizontal segment" rule; it only matters for vertices exactly on
  pixel-centre lines, and the input ring orientation does not change the result.
* Each polygon of a MultiPolygon is filled on its own (overlapping parts stay filled).
* Later geometries overwrite earlier ones where they overlap (GDAL burns in input order
  with ``MERGE_ALG=REPLACE``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numba import njit, prange

from cbm_tasks.errors import GeometryError

__all__ = ["rasterize_parcels", "warmup_signatures"]

log = logging.getLogger(__name__)

_WKB_MULTIPOLYGON = 6
_OGR_EPSILON = 1e-5  # OGRLinearRing::isClockwise treats closer vertices as duplicates
_ROW_BAND = 256  # rows per parallel work item: small enough to balance 2 threads, big enough to amortise


def rasterize_parcels(
    geoms: Sequence[shapely.Geometry] | np.ndarray,
    keys: np.ndarray,
    *,
    transform: Affine,
    shape: tuple[int, int],
) -> np.ndarray:
    """Burn parcel keys into a label raster; a pixel belongs to a parcel when its centre is inside.

    Args:
        geoms: Polygons or MultiPolygons in the CRS of the raster grid (holes are excluded,
            parts outside the grid are clipped).
        keys: one positive integer key per geometry (the parcel key), fitting in int32.
        transform: the grid's affine transform (pixel -> CRS coordinates), as rasterio's.
        shape: (rows, columns) of the grid.

    Returns:
        int32 array of *shape*; 0 where no parcel covers the pixel centre. Where parcels
        overlap, the one later in *geoms* wins (GDAL's burn order).

    Raises:
        GeometryError: a geometry is missing, empty, not polygonal or has non-finite
            coordinates (the message names its index and key).
        ValueError: *shape* is not two positive sizes, *keys* are not positive int32
            integers or their number differs from the number of geometries, or the
            transform is not invertible.

    Notes:
        Memory: the output grid (4 bytes per pixel) plus three float64/int64 arrays of the
        vertices. Geometries are not checked for OGC validity: self-intersecting rings are
        filled with the even-odd rule, as GDAL does.
    """
    t0 = time.perf_counter()
    rows, cols = _check_shape(shape)
    geom_array = np.asarray(geoms, dtype=object)
    if geom_array.ndim != 1:
        raise ValueError(f"geoms must be a 1-D sequence, got shape {geom_array.shape}")
    key_array = _check_keys(keys, len(geom_array))
    _check_geoms(geom_array, key_array)
    inverse = _inverse_geotransform(transform)

    # WKB is GEOS's fastest bulk export: one C call, parsed below in Numba (3x faster than
    # shapely's get_parts/get_rings/get_coordinates, which create a Python object per ring)
    wkb = shapely.to_wkb(geom_array, output_dimension=2, byte_order=1)
    buffer = np.frombuffer(b"".join(wkb.tolist()), np.uint8)
    geom_start = np.zeros(len(geom_array) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, wkb), np.int64, len(wkb)), out=geom_start[1:])
    n_parts, n_rings, n_vertices = _wkb_sizes_kernel(buffer, geom_start)
    xs, ys = np.empty(n_vertices, np.float64), np.empty(n_vertices, np.float64)
    ring_start = np.empty(n_rings + 1, np.int64)
    part_ring_start = np.empty(n_parts + 1, np.int64)
    part_geom = np.empty(n_parts, np.int64)
    _wkb_parse_kernel(buffer, geom_start, xs, ys, ring_start, part_ring_start, part_geom)
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.all():
        vertex = int(np.flatnonzero(~finite)[0])
        ring = int(np.searchsorted(ring_start, vertex, side="right")) - 1
        bad = int(part_geom[np.searchsorted(part_ring_start, ring, side="right") - 1])
        raise GeometryError(f"geometry {bad} (key {int(key_array[bad])}) has non-finite coordinates")

    labels = np.zeros((rows, cols), np.int32)
    _burn_kernel(xs, ys, np.asarray(inverse, np.float64), ring_start, part_ring_start, key_array[part_geom], labels)
    log.debug(
        "rasterized parcels=%d rings=%d vertices=%d shape=%dx%d seconds=%.3f",
        len(geom_array), n_rings, n_vertices, rows, cols, time.perf_counter() - t0,
    )
    return labels


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(size) != size or size <= 0 for size in shape):
        raise ValueError(f"shape must be 2 positive integers (rows, columns), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_keys(keys: np.ndarray, n_geoms: int) -> np.ndarray:
    key_array = np.asarray(keys)
    if key_array.ndim != 1 or len(key_array) != n_geoms:
        raise ValueError(f"keys must be 1-D with one key per geometry ({n_geoms}), got shape {key_array.shape}")
    if n_geoms and key_array.dtype.kind not in "iu":
        raise ValueError(f"keys must be integers, got dtype {key_array.dtype}")
    if n_geoms and (key_array.min() <= 0 or key_array.max() > np.iinfo(np.int32).max):
        bad = int(np.flatnonzero((key_array <= 0) | (key_array > np.iinfo(np.int32).max))[0])
        raise ValueError(f"keys must be in 1..2147483647 (0 means no parcel): key {key_array[bad]} at index {bad}")
    return np.ascontiguousarray(key_array, dtype=np.int32)


def _check_geoms(geoms: np.ndarray, keys: np.ndarray) -> None:
    if not len(geoms):
        return
    is_geom = np.fromiter((isinstance(g, shapely.Geometry) for g in geoms), bool, len(geoms))
    if not is_geom.all():
        bad = int(np.flatnonzero(~is_geom)[0])
        raise GeometryError(f"geometry {bad} (key {int(keys[bad])}) is not a shapely geometry: {geoms[bad]!r:.80}")
    type_ids = shapely.get_type_id(geoms)
    polygonal = (type_ids == shapely.GeometryType.POLYGON) | (type_ids == shapely.GeometryType.MULTIPOLYGON)
    if not polygonal.all():
        bad = int(np.flatnonzero(~polygonal)[0])
        raise GeometryError(
            f"geometry {bad} (key {int(keys[bad])}) is a {geoms[bad].geom_type}; expected Polygon or MultiPolygon"
        )
    empty = shapely.is_empty(geoms)
    if empty.any():
        bad = int(np.flatnonzero(empty)[0])
        raise GeometryError(f"geometry {bad} (key {int(keys[bad])}) is empty")


def _inverse_geotransform(transform: Affine) -> tuple[float, float, float, float, float, float]:
    """Return GDAL's inverse geotransform (pixel = g0 + x*g1 + y*g2, line = g3 + x*g4 + y*g5).

    Computed as GDALInvGeoTransform does, so that the pixel coordinates and hence the
    rounding at pixel-centre ties are bit-identical to GDAL's.
    """
    gt = (transform.c, transform.a, transform.b, transform.f, transform.d, transform.e)
    if gt[2] == 0.0 and gt[4] == 0.0 and gt[1] != 0.0 and gt[5] != 0.0:
        return (-gt[0] / gt[1], 1.0 / gt[1], 0.0, -gt[3] / gt[5], 0.0, 1.0 / gt[5])
    det = gt[1] * gt[5] - gt[2] * gt[4]
    magnitude = max(abs(gt[1]), abs(gt[2]), abs(gt[4]), abs(gt[5]))
    if not math.isfinite(det) or abs(det) <= 1e-10 * magnitude * magnitude:
        raise ValueError(f"transform {tuple(transform)[:6]} is not invertible")
    inv_det = 1.0 / det
    return (
        (gt[2] * gt[3] - gt[0] * gt[5]) * inv_det,
        gt[5] * inv_det,
        -gt[2] * inv_det,
        (-gt[1] * gt[3] + gt[0] * gt[4]) * inv_det,
        -gt[4] * inv_det,
        gt[1] * inv_det,
    )


@njit(cache=True, nogil=True)
def _read_u32(buffer: np.ndarray, pos: int) -> int:
    """Little-endian uint32 (shapely.to_wkb(byte_order=1))."""
    return (int(buffer[pos]) | (int(buffer[pos + 1]) << 8) | (int(buffer[pos + 2]) << 16)
            | (int(buffer[pos + 3]) << 24))


@njit(cache=True, nogil=True)
def _wkb_sizes_kernel(buffer: np.ndarray, geom_start: np.ndarray) -> tuple[int, int, int]:
    """Count polygons, rings and vertices of little-endian 2-D (Multi)Polygon WKB records."""
    n_parts = 0
    n_rings = 0
    n_vertices = 0
    for g in range(len(geom_start) - 1):
        pos = geom_start[g]
        n_polygons = 1
        if _read_u32(buffer, pos + 1) == _WKB_MULTIPOLYGON:
            n_polygons = _read_u32(buffer, pos + 5)
            pos += 9
        for _ in range(n_polygons):
            rings = _read_u32(buffer, pos + 5)
            pos += 9
            n_parts += 1
            n_rings += rings
            for _ in range(rings):
                points = _read_u32(buffer, pos)
                n_vertices += points
                pos += 4 + 16 * points
    return n_parts, n_rings, n_vertices


@njit(cache=True, nogil=True)
def _wkb_parse_kernel(
    buffer: np.ndarray,
    geom_start: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    ring_start: np.ndarray,
    part_ring_start: np.ndarray,
    part_geom: np.ndarray,
) -> None:
    """Fill vertex coordinates, ring and polygon offsets (sized by _wkb_sizes_kernel)."""
    part = 0
    ring = 0
    vertex = 0
    ring_start[0] = 0
    part_ring_start[0] = 0
    for g in range(len(geom_start) - 1):
        pos = geom_start[g]
        n_polygons = 1
        if _read_u32(buffer, pos + 1) == _WKB_MULTIPOLYGON:
            n_polygons = _read_u32(buffer, pos + 5)
            pos += 9
        for _ in range(n_polygons):
            rings = _read_u32(buffer, pos + 5)
            pos += 9
            for _ in range(rings):
                points = _read_u32(buffer, pos)
                pos += 4
                xy = buffer[pos:pos + 16 * points].view(np.float64)
                for k in range(points):
                    xs[vertex] = xy[2 * k]
                    ys[vertex] = xy[2 * k + 1]
                    vertex += 1
                pos += 16 * points
                ring += 1
                ring_start[ring] = vertex
            part_geom[part] = g
            part += 1
            part_ring_start[part] = ring


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
    """Return ``(name, kernel, example arguments)`` for each kernel call of :func:`rasterize_parcels`.

    WKB bytes are read-only (``np.frombuffer``), everything else writable, as in the wrapper.
    Nothing is run (``cbm_tasks.extraction.preload`` explains why).
    """
    buffer = np.frombuffer(b"\x00" * 8, np.uint8)
    offsets = np.zeros(2, np.int64)
    coords = np.zeros(4, np.float64)
    return [
        ("rasterize._wkb_sizes_kernel", _wkb_sizes_kernel, (buffer, offsets)),
        ("rasterize._wkb_parse_kernel", _wkb_parse_kernel,
         (buffer, offsets, coords, coords, offsets, offsets, offsets)),
        ("rasterize._burn_kernel", _burn_kernel, (coords, coords, np.zeros(6, np.float64), offsets, offsets,
                                                  np.zeros(1, np.int32), np.zeros((2, 2), np.int32))),
    ]
