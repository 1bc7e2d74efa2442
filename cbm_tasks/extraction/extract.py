"""One image to per-parcel statistics rows in PostGIS.

Rules:

- A pixel belongs to a parcel when its centre is inside the polygon (holes excluded), also
  when it is inside another parcel too: overlapping parcels (``cbm.parcel_overlap``, found at
  import) are left out of the label raster and burnt into a few extra layers (no two
  overlapping parcels in one), kept as flat pixel indices: overlaps cost little when rare.
- Parcels are selected in PostGIS by intersection with the image's valid footprint (the
  catalogue footprint when known) and with the raster bounds, and are transformed to the
  image CRS there (``ST_Transform``).
- Each band is read at its own resolution, never resampled: one label raster per distinct
  grid (CRS, transform, shape), reused through a LabelCache keyed by that grid and the parcel
  set's id and version. Only the window covering the selected parcels is read (rounded
  outwards to whole pixels), so memory follows the parcels, not the tile.
- Nodata is excluded per band; the product's scale and offset are applied to the statistics.
- A parcel without a valid pixel in any band gets no row (no cloud-free pixel, or outside
  the data area); a band without a valid pixel in a parcel that has a row has count 0.
- All rows of an image are written in one transaction (write.replace_image_stats): a re-run
  replaces them and a failure leaves the database as it was.
- Rows are only written for the parcel-set version they were computed from: the write
  transaction locks the set row (``FOR SHARE``) and checks its version; when an import
  committed meanwhile, the image is recomputed from the new version.

Reading and reducing the bands is ``compute``'s job; this module writes the rows and records them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg

from cbm_tasks import lineage
from cbm_tasks.aoi import ParcelSetRef, find_parcel_set
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import ParcelSetChangedError
from cbm_tasks.extraction.bands import BandSource
from cbm_tasks.extraction.compute import ENGINE_OPTIONS, ComputedImage, compute_image
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.extraction.raster_io import RasterStore
from cbm_tasks.extraction.sources import product_bands
from cbm_tasks.timeseries import write

__all__ = ["ENGINE_OPTIONS", "ExtractionResult", "RegisterImage", "extract_image", "extract_product"]

log = logging.getLogger(__name__)

# (conn, covers_parcels) -> product_id, called inside the write transaction (see extract_image)
RegisterImage = Callable[[psycopg.Connection, bool], int]
# an import committed between reading the set and writing its rows: recompute this often, then
# let the error (a TransientError) reach the task's retry
_MAX_SET_CHANGES = 3


@dataclass(frozen=True, slots=True)
class ExtractionResult:
    """What one extraction wrote: parcels with a row, statistics rows, bands, time taken, and a warning."""

    product_id: int
    parcel_set_id: int
    n_parcels: int
    n_rows: int
    n_bands: int
    seconds: float
    warning: str | None = None  # why no row was written (image misses every parcel, or only nodata)


def _write(conn: psycopg.Connection, product: Product, parcel_set: ParcelSetRef, computed: ComputedImage, *,
           product_id: int | None, register: RegisterImage | None, t0: float,
           pipeline_run_id: int | None) -> tuple[int, int]:
    """Write the rows of one image in one transaction; return (product id, rows written).

    Raises:
        ParcelSetChangedError: an import committed a new version of the set after it was read;
            nothing was written (the caller recomputes).
    """
    with conn.transaction():
        if product_id is None and register is not None:
            product_id = register(conn, computed.n_selected > 0)
        if product_id is None:  # extract_image checked that one of the two is given
            raise ValueError(f"image {product.name}: no product id to write its rows under")
        if computed.n_selected == 0:
            write.check_parcel_set_version(conn, parcel_set.parcel_set_id, parcel_set.version)
            write.delete_image_stats(conn, parcel_set.parcel_set_id, product_id)
            return product_id, 0
        n_rows = write.replace_image_stats(
            conn, parcel_set.parcel_set_id, product_id, computed.image,
            parcel_set_version=parcel_set.version, params=computed.params,
            seconds=time.perf_counter() - t0, pipeline_run_id=pipeline_run_id,
        )
    return product_id, n_rows


def extract_image(
    conn: psycopg.Connection,
    store: RasterStore,
    product: Product,
    *,
    aoi: str,
    year: int,
    product_id: int | None = None,
    register: RegisterImage | None = None,
    label_cache: LabelCache | None = None,
    pipeline_run_id: int | None = None,
    complete: bool = False,
) -> ExtractionResult:
    """Read the bands of *product*, reduce them per parcel of *aoi* in *year*, and write the rows in one transaction.

    Args:
        conn: connection to the CbM database (idle: the rows are committed here).
        store: where the band files are.
        product: the image (its location and band descriptors are read).
        aoi: AOI name.
        year: parcel-set year.
        product_id: the catalogue product the rows belong to; or None with *register*.
        register: called in the write transaction with ``(conn, covers_parcels)`` when
            *product_id* is None; returns the product id (the caller registers the image and
            sets its status, so that the record, status and rows commit together).
        label_cache: as for :func:`extract_product`.
        pipeline_run_id: lineage row of this extraction, or None.
        complete: when the image was extracted at an older version of the set, extract only
            the parcels new or changed since (``cbm.parcel.geom_version``) and keep the
            other rows; otherwise (and without an earlier extraction) replace all rows.

    Raises:
        ValueError: neither or both of *product_id* and *register*.
        NotFoundError, BandError, CorruptProductError: as :func:`extract_product`.
        ParcelSetChangedError: imports kept changing the set while it was extracted (a
            TransientError: the task's retry extracts it again).
    """
    if (product_id is None) == (register is None):
        raise ValueError(f"image {product.name}: give exactly one of product_id and register")
    t0 = time.perf_counter()
    bands = product_bands(product, store=store)
    cache = label_cache if label_cache is not None else LabelCache()
    for attempt in range(1, _MAX_SET_CHANGES + 1):
        with conn.transaction():
            parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
        write.ensure_partitions(conn, parcel_set.parcel_set_id)
        missing = (_missing_parcels(conn, parcel_set, product_id, bands)
                   if complete and product_id is not None else None)
        computed = compute_image(conn, store, product, bands, parcel_set, cache, missing)
        try:
            if missing is not None and product_id is not None:
                written_id, n_rows = product_id, write.merge_parcel_stats(
                    conn, parcel_set.parcel_set_id, product_id, computed.image, parcel_keys=missing,
                    parcel_set_version=parcel_set.version)
            else:
                written_id, n_rows = _write(conn, product, parcel_set, computed, product_id=product_id,
                                            register=register, t0=t0, pipeline_run_id=pipeline_run_id)
            break
        except ParcelSetChangedError as err:
            if attempt == _MAX_SET_CHANGES:
                raise
            log.warning("recomputing product=%s aoi=%s year=%d (try %d of %d): %s", product.name, aoi, year,
                        attempt + 1, _MAX_SET_CHANGES, err)
    if missing is None:
        warning, n_parcels = _empty_warning(computed, parcel_set), len(computed.image.parcel_keys)
    else:
        warning, n_parcels = None, _parcels_with_rows(conn, parcel_set.parcel_set_id, written_id)
        log.info("completed product=%s product_id=%d aoi=%s year=%d version=%d parcels_missing=%d parcels_new_rows=%d",
                 product.name, written_id, aoi, year, parcel_set.version, len(missing),
                 len(computed.image.parcel_keys))
    result = ExtractionResult(written_id, parcel_set.parcel_set_id, n_parcels, n_rows,
                              len(bands), time.perf_counter() - t0, warning)
    if warning is not None:
        log.warning("image %s (product_id=%d, aoi=%s, year=%d): %s", product.name, written_id, aoi, year, warning)
    log.info("extracted product=%s product_id=%d aoi=%s year=%d bands=%d parcels_selected=%d parcels=%d rows=%d "
             "seconds=%.2f", product.name, written_id, aoi, year, len(bands), computed.n_selected,
             result.n_parcels, result.n_rows, result.seconds)
    return result


def _missing_parcels(conn: psycopg.Connection, parcel_set: ParcelSetRef, product_id: int,
                     bands: Sequence[BandSource]) -> np.ndarray | None:
    """The parcels an earlier extraction of the image lacks (new or changed since), or None to extract it whole.

    None when the image has no extraction for the set, one at the current version (a re-run
    replaces it), or one with other bands.
    """
    with conn.transaction():
        row = conn.execute("SELECT parcel_set_version, bands, class_bands FROM cbm.extraction "
                           "WHERE parcel_set_id = %s AND product_id = %s",
                           (parcel_set.parcel_set_id, product_id)).fetchone()
        if row is None or int(row[0]) >= parcel_set.version:
            return None
        if (list(row[1]) != [b.name for b in bands if not b.categorical]
                or list(row[2]) != [b.name for b in bands if b.categorical]):
            return None
        keys = conn.execute("SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s AND geom_version > %s "
                            "ORDER BY parcel_key", (parcel_set.parcel_set_id, int(row[0]))).fetchall()
    return np.fromiter((k for (k,) in keys), np.int32, len(keys))


def _parcels_with_rows(conn: psycopg.Connection, parcel_set_id: int, product_id: int) -> int:
    with conn.transaction():
        row = conn.execute("SELECT n_parcels FROM cbm.extraction WHERE parcel_set_id = %s AND product_id = %s",
                           (parcel_set_id, product_id)).fetchone()
    return 0 if row is None else int(row[0])


def _empty_warning(computed: ComputedImage, parcel_set: ParcelSetRef) -> str | None:
    """Why an image gave no row, in words for the operator; None when it gave rows."""
    if computed.n_selected == 0:
        return (f"misses every parcel of parcel set {parcel_set.parcel_set_id}: no parcel intersects its "
                f"{computed.params['footprint']}; no rows written")
    if len(computed.image.parcel_keys) == 0 and not any(len(c.parcel_keys) for c in computed.image.class_counts):
        return (f"holds only nodata over the {computed.n_selected} parcels it covers (clouds, outside the data "
                "area, or a wrong nodata value?); no rows written")
    return None


def extract_product(
    conn: psycopg.Connection,
    store: RasterStore,
    product_id: int,
    *,
    aoi: str,
    year: int | None = None,
    label_cache: LabelCache | None = None,
    run: lineage.RunContext | None = None,
    complete: bool = False,
) -> ExtractionResult:
    """Extract one catalogued image for the parcels of *aoi*, replacing its earlier rows.

    Args:
        conn: connection to the CbM database (autocommit or idle: the rows are committed here).
        store: where the band files are (cbm_tasks.store.Store, or any RasterStore).
        product_id: cbm.product id of the image.
        aoi: AOI name; its parcel set of *year* is used.
        year: parcel-set year; default the acquisition year.
        label_cache: label rasters to reuse across images of the same grid; one per worker.
        run: lineage context; when given, a cbm.pipeline_run row records this extraction.
        complete: extract only the parcels an earlier extraction lacks (see :func:`extract_image`).

    Returns:
        ExtractionResult; n_parcels 0 when the image covers none of the parcels (the caller
        marks it ``skipped``).

    Raises:
        ProductNotFoundError: no such product.
        NotFoundError: no parcel set for (aoi, year).
        BandError, CorruptProductError: bad band files; the database is left unchanged.
    """
    with conn.transaction():
        product = registry.get_product(conn, product_id)
    year = product.acquired_at.year if year is None else year
    run_id = None
    if run is not None:
        run_id = lineage.start_run(conn, run, {"product_id": product_id, "aoi": aoi, "year": year})
    try:
        result = extract_image(conn, store, product, product_id=product_id, aoi=aoi, year=year,
                               label_cache=label_cache, pipeline_run_id=run_id, complete=complete)
    except BaseException as err:
        # BaseException: Airflow's execution timeout is one, and must not leave the run 'running'
        if run_id is not None:
            lineage.finish_failed(conn, run_id, err)  # a lost connection does not hide the original error
        raise
    if run_id is not None:
        lineage.record_io(conn, run_id, inputs=_lineage_inputs(product, product_id),
                          outputs=_lineage_outputs(result))
        lineage.finish_run(conn, run_id, status="success")
    return result


def _lineage_inputs(product: Product, product_id: int) -> list[lineage.RunInput]:
    """The image an extraction read: its location, the catalogue's checksum and its band files."""
    bands = product.attributes.get("bands") or []
    hrefs = [str(band.get("href")) for band in bands if isinstance(band, dict) and band.get("href")]
    return [lineage.RunInput(
        "product", product.location, product_id=product_id, checksum=product.checksum,
        version=product.processing_baseline,
        detail={"name": product.name, "product_type": product.product_type, "band_files": hrefs},
    )]


def _lineage_outputs(result: ExtractionResult) -> list[lineage.RunOutput]:
    """The rows an extraction wrote (one row per parcel; n_rows parcel x band statistics)."""
    detail = {"parcel_set_id": result.parcel_set_id, "stats": result.n_rows, "bands": result.n_bands}
    return [lineage.RunOutput("table", "cbm.parcel_obs", product_id=result.product_id, n_rows=result.n_parcels,
                              detail=detail)]
