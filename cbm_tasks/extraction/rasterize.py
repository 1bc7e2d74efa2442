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

from cbm_tasks.errors import GeometryError
from cbm_tasks.extraction import scanline, wkb
from cbm_tasks.extraction.scanline import fill_polygons
from cbm_tasks.extraction.wkb import polygon_rings

__all__ = ["rasterize_parcels", "warmup_signatures"]

log = logging.getLogger(__name__)


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

    rings = polygon_rings(geom_array)
    finite = np.isfinite(rings.xs) & np.isfinite(rings.ys)
    if not finite.all():
        bad = rings.geometry_of_vertex(int(np.flatnonzero(~finite)[0]))
        raise GeometryError(f"geometry {bad} (key {int(key_array[bad])}) has non-finite coordinates")

    labels = fill_polygons(rings, key_array[rings.part_geom], inverse=np.asarray(inverse, np.float64),
                           shape=(rows, cols))
    log.debug(
        "rasterized parcels=%d rings=%d vertices=%d shape=%dx%d seconds=%.3f",
        len(geom_array), rings.n_rings, len(rings.xs), rows, cols, time.perf_counter() - t0,
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


def warmup_signatures() -> list[tuple[str, Any, tuple[Any, ...]]]:
    """Return ``(name, kernel, example arguments)`` for each kernel call of :func:`rasterize_parcels`.

    Those of its two steps, ``wkb.polygon_rings`` and ``scanline.fill_polygons``. Nothing is run
    (``cbm_tasks.extraction.preload`` explains why).
    """
    return wkb.warmup_signatures() + scanline.warmup_signatures()
