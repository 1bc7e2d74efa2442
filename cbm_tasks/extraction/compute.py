"""One image's bands read and reduced to per-parcel statistics rows, ready to be written.

The rules (pixel-centre, overlap layers, selection by footprint, native resolution, windowed
reads, nodata, scale and offset) are listed in ``cbm_tasks.extraction.extract``, which writes
what :func:`compute_image` returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from cbm_tasks.aoi import ParcelSetRef
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import BandError
from cbm_tasks.extraction.bands import BandSource
from cbm_tasks.extraction.grid import (
    Grid,
    Selection,
    grid_of,
    overlap_pairs,
    select_parcels,
    window_layers,
    window_of,
)
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.extraction.layers import BandResult, reduce_band
from cbm_tasks.extraction.raster_io import RasterStore, open_raster, raster_error
from cbm_tasks.timeseries import write

__all__ = ["ENGINE_OPTIONS", "ComputedImage", "compute_image"]

log = logging.getLogger(__name__)

ENGINE_OPTIONS = {"pixel_rule": "centre", "percentiles": "linear", "std": "population", "resampling": "none"}


@dataclass(frozen=True, slots=True)
class ComputedImage:
    """One image reduced to per-parcel rows, not yet written: the rows, their parameters, parcels selected."""

    image: write.ImageStats
    params: dict[str, Any]
    n_selected: int


def _read(dataset: rasterio.DatasetReader, band: BandSource, window: Window, *, store: RasterStore,
          product: str) -> np.ndarray:
    try:
        values: np.ndarray = dataset.read(band.band_index, window=window)
    except RasterioError as err:
        raise raster_error(err, band.href, store=store, product=product, band=band.name, action="read") from err
    return values


def compute_image(conn: psycopg.Connection, store: RasterStore, product: Product, bands: Sequence[BandSource],
                  parcel_set: ParcelSetRef, label_cache: LabelCache,
                  only_keys: np.ndarray | None = None) -> ComputedImage:
    """Read the bands and reduce them to per-parcel rows (of *only_keys* when given); no database writes.

    Args:
        conn: connection to the CbM database (parcels are selected and read; nothing is written).
        store: where the band files are.
        product: the image.
        bands: its bands (``sources.product_bands``).
        parcel_set: the parcel set whose parcels are reduced.
        label_cache: label rasters by grid and parcel-set version.
        only_keys: only these parcel keys (completing an image after a re-import); None = all.

    Raises:
        BandError: a band index beyond its file's bands.
        CorruptProductError, NotFoundError: a band file that cannot be opened or read.
    """
    with conn.transaction():
        row = conn.execute("SELECT coalesce(max(parcel_key), 0) FROM cbm.parcel WHERE parcel_set_id = %s",
                           (parcel_set.parcel_set_id,)).fetchone()
    n_labels = int(row[0]) if row is not None else 0
    results: list[BandResult] = []
    # deflate/JPEG2000 decoding is the largest part of a warm run: let GDAL use every core for it
    gdal_options = {"GDAL_NUM_THREADS": "ALL_CPUS", **store.rasterio_env()}
    with rasterio.Env(**gdal_options), ExitStack() as stack:
        datasets: dict[str, rasterio.DatasetReader] = {}
        grids: dict[str, Grid] = {}
        for band in bands:
            if band.href not in datasets:
                datasets[band.href] = stack.enter_context(
                    open_raster(band.href, store=store, product=product.name, band=band.name))
                grids[band.href] = grid_of(datasets[band.href], product=product.name, href=band.href)
            if band.band_index > datasets[band.href].count:
                raise BandError(f"product {product.name}: band {band.name} is band {band.band_index} of {band.href}, "
                                f"which has {datasets[band.href].count} band(s)")
        # (select_parcels densifies the raster extent before ST_Transform, so that it keeps its shape in the
        # parcel set's CRS, and compares parcels in their own CRS, so that the GiST index applies)
        # the grids of one product usually share their extent (S2: 10, 20 and 60 m): select once per extent
        by_extent: dict[tuple[int, tuple[float, ...]], Selection] = {}
        selections: dict[Grid, Selection] = {}
        for grid in dict.fromkeys(grids.values()):
            extent = (grid.epsg, grid.bounds)
            if extent not in by_extent:
                by_extent[extent] = select_parcels(conn, parcel_set, grid, product.footprint_wkt, only_keys)
            selections[grid] = by_extent[extent]
        selected = np.unique(np.concatenate([s.parcel_keys for s in selections.values()]))
        pairs = overlap_pairs(conn, parcel_set)
        for band in bands:
            t0 = time.perf_counter()
            grid = grids[band.href]
            window = window_of(grid, selections[grid])
            if window is None:
                width = int(band.n_classes or 0) if band.categorical else write.STATS_PER_BAND
                result = BandResult(band, np.empty(0, np.int32), np.empty((0, width), np.float32))
            else:
                layers = window_layers(conn, label_cache, grid, window, parcel_set, pairs)
                values = _read(datasets[band.href], band, window, store=store, product=product.name)
                result = reduce_band(band, layers, values, n_labels)
                inside = np.isin(result.parcel_keys, selected)  # parcels outside the footprint are not reported
                result = BandResult(band, result.parcel_keys[inside], result.values[inside])
            results.append(result)
            log.info("extracted product=%s band=%s parcels=%d rows=%d seconds=%.2f", product.name, band.name,
                     len(selections[grid].parcel_keys), len(result.parcel_keys), time.perf_counter() - t0)
    measured = [r for r in results if not r.band.categorical]
    keys = np.unique(np.concatenate([r.parcel_keys for r in measured] or [np.empty(0, np.int32)]))
    stats = np.full((len(keys), write.STATS_PER_BAND * len(measured)), np.nan, np.float32)
    stats[:, 0::write.STATS_PER_BAND] = 0
    for i, result in enumerate(measured):
        column = write.STATS_PER_BAND * i
        stats[np.searchsorted(keys, result.parcel_keys), column:column + write.STATS_PER_BAND] = result.values
    class_rows = tuple(write.ClassCountRows(r.band.name, r.parcel_keys.astype(np.int32), r.values.astype(np.int32))
                       for r in results if r.band.categorical)
    image = write.ImageStats(tuple(r.band.name for r in measured), keys.astype(np.int32), stats, class_rows)
    params = {
        "bands": {b.name: b.params() for b in bands},
        "engine": ENGINE_OPTIONS,
        "footprint": "catalogue" if product.footprint_wkt else "raster bounds",
        "parcels_selected": len(selected),
    }
    return ComputedImage(image, params, len(selected))
