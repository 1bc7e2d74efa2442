"""Which parcels an image grid sees: the selection, the window read, and the window's parcel layers.

Parcels are selected in PostGIS by intersection with the image's valid footprint and the
raster bounds and transformed to the image CRS there; only the window covering them is read.
The window's label raster comes from the LabelCache (keyed by grid, parcel-set version and the
set's overlapping parcels) or is rasterised; overlapping parcels get their own layers
(``layers.overlap_layers``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window, from_bounds

from cbm_tasks.aoi import ParcelSetRef
from cbm_tasks.errors import CorruptProductError
from cbm_tasks.extraction.label_cache import GridKey, LabelCache
from cbm_tasks.extraction.layers import ParcelLayers, overlap_layers
from cbm_tasks.extraction.rasterize import rasterize_parcels

__all__ = ["Grid", "Selection", "grid_of", "overlap_pairs", "select_parcels", "window_layers", "window_of"]


@dataclass(frozen=True, slots=True)
class Grid:
    """The pixel grid of a band file: where its pixels are."""

    epsg: int
    transform: Affine
    height: int
    width: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the grid's CRS."""
        x0, y0 = self.transform @ (0, 0)
        x1, y1 = self.transform @ (self.width, self.height)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


@dataclass(frozen=True, slots=True)
class Selection:
    """Parcels selected for one grid (valid footprint and raster bounds), bounds in the grid's CRS."""

    parcel_keys: np.ndarray  # int32, ascending
    bounds: np.ndarray  # float64 (n, 4): xmin, ymin, xmax, ymax


_SELECT_PARCELS = """
SELECT p.parcel_key, ST_XMin(t.box), ST_YMin(t.box), ST_XMax(t.box), ST_YMax(t.box)
FROM cbm.parcel p CROSS JOIN LATERAL (SELECT Box2D(ST_Transform(p.geom, %(srid)s)) AS box) AS t
WHERE p.parcel_set_id = %(set)s
  AND ST_Intersects(p.geom, ST_Transform(ST_Segmentize(
        ST_MakeEnvelope(%(xmin)s, %(ymin)s, %(xmax)s, %(ymax)s, %(srid)s), %(step)s), %(set_srid)s))
  AND (%(footprint)s::text IS NULL
       OR ST_Intersects(p.geom, ST_Transform(ST_GeomFromText(%(footprint)s::text, 4326), %(set_srid)s)))
  AND (%(keys)s::integer[] IS NULL OR p.parcel_key = ANY(%(keys)s::integer[]))
ORDER BY p.parcel_key
"""
# geom_inner: the parcel shrunk by its set's inner buffer (cbm_tasks.parcels.inner_buffer), where there is one
_WINDOW_PARCELS = """
SELECT p.parcel_key, ST_AsBinary(ST_Transform(coalesce(p.geom_inner, p.geom), %(srid)s))
FROM cbm.parcel p
WHERE p.parcel_set_id = %(set)s
  AND ST_Intersects(p.geom, ST_Transform(ST_Segmentize(
        ST_MakeEnvelope(%(xmin)s, %(ymin)s, %(xmax)s, %(ymax)s, %(srid)s), %(step)s), %(set_srid)s))
  AND (%(keys)s::integer[] IS NULL OR p.parcel_key = ANY(%(keys)s::integer[]))
ORDER BY p.parcel_key
"""
_OVERLAP_PAIRS = """
SELECT parcel_key_a, parcel_key_b FROM cbm.parcel_overlap WHERE parcel_set_id = %(set)s ORDER BY 1, 2
"""


def _envelope_params(parcel_set: ParcelSetRef, epsg: int, bounds: Sequence[float]) -> dict[str, Any]:
    xmin, ymin, xmax, ymax = bounds
    return {"set": parcel_set.parcel_set_id, "set_srid": parcel_set.srid, "srid": epsg, "xmin": xmin,
            "ymin": ymin, "xmax": xmax, "ymax": ymax, "step": max(xmax - xmin, ymax - ymin) / 64}


def select_parcels(conn: psycopg.Connection, parcel_set: ParcelSetRef, grid: Grid,
                   footprint_wkt: str | None, only_keys: np.ndarray | None) -> Selection:
    """The parcels of the set inside the grid's bounds and the footprint (of *only_keys* when given)."""
    with conn.transaction():
        rows = conn.execute(_SELECT_PARCELS, {**_envelope_params(parcel_set, grid.epsg, grid.bounds),
                                              "footprint": footprint_wkt,
                                              "keys": None if only_keys is None else only_keys.tolist()}).fetchall()
    keys = np.fromiter((r[0] for r in rows), np.int32, len(rows))
    return Selection(keys, np.array([r[1:] for r in rows], np.float64).reshape(len(rows), 4))


def grid_of(dataset: rasterio.DatasetReader, *, product: str, href: str) -> Grid:
    """The grid of an open band file.

    Raises:
        CorruptProductError: no CRS, a CRS without EPSG code, or a rotated geotransform.
    """
    if dataset.crs is None:
        raise CorruptProductError(f"product {product}: {href} has no CRS (no georeferencing)")
    epsg = dataset.crs.to_epsg()
    if epsg is None:
        raise CorruptProductError(
            f"product {product}: the CRS of {href} has no EPSG code, which PostGIS needs: {dataset.crs.to_wkt()[:120]}"
        )
    if dataset.transform.b != 0 or dataset.transform.d != 0:
        raise CorruptProductError(
            f"product {product}: {href} has a rotated geotransform {tuple(dataset.transform)[:6]}"
        )
    return Grid(int(epsg), dataset.transform, dataset.height, dataset.width)


def window_of(grid: Grid, selection: Selection) -> Window | None:
    """The window of *grid* covering the selected parcels, rounded outwards to whole pixels; None if outside."""
    if not len(selection.parcel_keys):
        return None
    gx0, gy0, gx1, gy1 = grid.bounds
    x0, y0 = max(gx0, selection.bounds[:, 0].min()), max(gy0, selection.bounds[:, 1].min())
    x1, y1 = min(gx1, selection.bounds[:, 2].max()), min(gy1, selection.bounds[:, 3].max())
    if x0 >= x1 or y0 >= y1:
        return None
    window = from_bounds(x0, y0, x1, y1, transform=grid.transform)
    col0 = max(0, math.floor(window.col_off))
    row0 = max(0, math.floor(window.row_off))
    col1 = min(grid.width, math.ceil(window.col_off + window.width))
    row1 = min(grid.height, math.ceil(window.row_off + window.height))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def overlap_pairs(conn: psycopg.Connection, parcel_set: ParcelSetRef) -> np.ndarray:
    """The overlapping parcel pairs of the set: int32 (n, 2), key a < key b, ascending."""
    with conn.transaction():
        rows = conn.execute(_OVERLAP_PAIRS, {"set": parcel_set.parcel_set_id}).fetchall()
    return np.array(rows, np.int32).reshape(len(rows), 2)


def window_layers(conn: psycopg.Connection, cache: LabelCache, grid: Grid, window: Window,
                  parcel_set: ParcelSetRef, pairs: np.ndarray) -> ParcelLayers:
    """The parcel layers of the window: the label raster from the cache or rasterised, and the overlap layers.

    Every parcel of the set that touches the window is burnt in, not only the selected ones, so
    that the raster depends on nothing but the grid, the parcel set version and its overlapping
    parcels (the cache key). Parcels in the overlapping *pairs* are left out of the raster and
    get overlap layers (``layers.overlap_layers``): the pixels they share count for each.
    Completing an image for some parcels burns them all too: a pixel centre on an edge two
    parcels share goes to the same parcel as in a full extraction.
    """
    transform = rasterio.windows.transform(window, grid.transform)
    shape = (int(window.height), int(window.width))
    overlapping = np.unique(pairs)
    key = GridKey(crs_wkt=rasterio.crs.CRS.from_epsg(grid.epsg).to_wkt(), transform=tuple(transform)[:6],
                  shape=shape, parcel_set_id=parcel_set.parcel_set_id, parcel_set_version=parcel_set.version,
                  overlaps=hashlib.sha256(pairs.tobytes()).hexdigest() if len(pairs) else "",
                  database=parcel_set.database)
    labels: np.ndarray | None = cache.get(key)
    if labels is not None and not len(overlapping):
        return ParcelLayers(labels, np.empty(0, np.int64), np.empty(0, np.int32))
    bounds = rasterio.windows.bounds(window, grid.transform)
    # with the raster cached, only the overlapping parcels' polygons are needed
    only = overlapping.tolist() if labels is not None else None
    with conn.transaction():
        rows = conn.execute(_WINDOW_PARCELS, {**_envelope_params(parcel_set, grid.epsg, bounds),
                                              "keys": only}).fetchall()
    keys = np.fromiter((r[0] for r in rows), np.int32, len(rows))
    shared = np.isin(keys, overlapping)
    if labels is None:
        alone = np.flatnonzero(~shared)
        geoms = np.asarray(shapely.from_wkb([bytes(rows[i][1]) for i in alone]), dtype=object).reshape(len(alone))
        labels = rasterize_parcels(geoms, keys[alone], transform=transform, shape=shape)
        cache.put(key, labels)
    index, owners = overlap_layers([bytes(rows[i][1]) for i in np.flatnonzero(shared)], keys[shared], pairs,
                                   transform=transform, shape=shape)
    return ParcelLayers(labels, index, owners)
