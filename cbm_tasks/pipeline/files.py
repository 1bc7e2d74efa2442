"""The unit of work of ``cbm extract``: one image file or SAFE folder, catalogued or not.

An image that is not in the catalogue is registered (catalogue ``file``) in the same
transaction as its rows, and marked ``extracted`` (or ``skipped``) for the AOI.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.registry import ProductStatus
from cbm_tasks.errors import BadInputError, TransientError
from cbm_tasks.extraction.bands import BandSource, digital_number_bands, raster_file_bands, renamed, with_decoding
from cbm_tasks.extraction.extract import ExtractionResult, extract_image
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.extraction.raster_io import RasterStore, raster_acquired_at
from cbm_tasks.extraction.s2_safe import is_safe, read_safe_metadata
from cbm_tasks.extraction.sources import product_bands
from cbm_tasks.store.base import is_remote, local_path

__all__ = ["SEASON_TOLERANCE", "check_season", "extract_file"]

# An image belongs to a parcel set of year Y when it was acquired in Y, or up to this long
# before or after: winter crops are sown and checked from the autumn before, and late
# harvests and catch crops are seen in the following winter.
SEASON_TOLERANCE = timedelta(days=183)


def check_season(acquired_at: datetime, *, year: int, image: str, source: str) -> None:
    """Refuse an acquisition time outside the season of the parcel set of *year*.

    The season is the calendar year *year* widened by :data:`SEASON_TOLERANCE` at both ends.

    Raises:
        BadInputError: *acquired_at* is outside it; the message names the image, the time,
            where it came from (*source*) and the accepted range.
    """
    first = datetime(year, 1, 1, tzinfo=UTC) - SEASON_TOLERANCE
    last = datetime(year + 1, 1, 1, tzinfo=UTC) + SEASON_TOLERANCE
    if not first <= acquired_at < last:
        raise BadInputError(
            f"image {image}: acquisition time {acquired_at.isoformat()} ({source}) is outside the season of "
            f"the {year} parcel set: expected {first.date()} .. {(last - timedelta(days=1)).date()} "
            f"(the year +/- {SEASON_TOLERANCE.days} days); check --obs-time and --year"
        )


def _utc(moment: datetime) -> datetime:
    """A naive time is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _file_product(store: RasterStore, uri: str, *, obs_time: datetime | None, product_type: str | None) -> Product:
    """A catalogue record (catalogue ``file``, uid = the absolute path/URI) for an uncatalogued image."""
    local = None if is_remote(uri) else local_path(uri)
    footprint = platform = baseline = None
    orbit = None
    acquired_at: datetime | None
    if local is not None and (local / "MTD_MSIL2A.xml").exists():
        meta = read_safe_metadata(local)
        name, acquired_at, product_type = meta.product_uri, meta.acquired_at, product_type or "S2MSI2A"
        footprint, platform, baseline, orbit = meta.footprint_wkt, meta.platform, meta.processing_baseline, \
            meta.relative_orbit
    else:
        name = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        acquired_at = raster_acquired_at(uri, store=store)
        product_type = product_type or "UNKNOWN"
    if obs_time is not None:
        acquired_at = _utc(obs_time)
    if acquired_at is None:
        raise BadInputError(
            f"image {uri}: no acquisition time in its tags (TIFFTAG_DATETIME, ACQUISITION_*) or name; "
            "give it with --obs-time (ISO 8601, e.g. 2018-04-05T10:50:31Z)"
        )
    if product_type.startswith("S2"):
        collection = "SENTINEL-2"
    elif product_type.startswith(("CARD", "IW_", "EW_")):
        collection = "SENTINEL-1"
    else:
        collection = "UNKNOWN"
    return Product(uid=uri, name=name, catalogue="file", collection=collection, product_type=product_type,
                   acquired_at=acquired_at, location=uri, platform=platform, relative_orbit=orbit,
                   processing_baseline=baseline, footprint_wkt=footprint)


def _file_bands(store: RasterStore, product: Product, *, names: list[str] | None, scale: float | None,
                offset: float | None, like: list[dict[str, object]] | None = None) -> tuple[BandSource, ...]:
    """The bands of a raster file as the user's options and the catalogue record *like* complete them."""
    bands = raster_file_bands(product.location, store=store, product=product.name)
    if names:
        bands = renamed(bands, names, image=product.location)
    return with_decoding(bands, scale=scale, offset=offset, like=like or ())


def _decoded(store: RasterStore, product: Product, *, names: list[str] | None, scale: float | None,
             offset: float | None, like: list[dict[str, object]] | None = None) -> Product:
    """*product* (a raster file) with its bands settled: the file's, *like*'s, or the user's names and decoding.

    The bands are given as descriptors in the product's attributes when the file alone does not say
    what they are (the user's *names*, *scale*, *offset*, or the catalogue descriptors *like* of the
    product it is a copy of); a registered image keeps them, so that a re-run reads it the same way.

    Raises:
        BadInputError: band names, scale or offset for a SAFE folder; Sentinel-2 reflectance left as
            digital numbers.
        BandError: not one name per band of the file, or a name twice.
    """
    if is_safe(product.location, store=store):
        if names or scale is not None or offset is not None:
            raise BadInputError(f"image {product.location}: a SAFE folder names its bands and states their scale "
                                "and offset (QUANTIFICATION_VALUE, BOA_ADD_OFFSET); --bands, --scale and --offset "
                                "are for raster files")
        return product
    bands = _file_bands(store, product, names=names, scale=scale, offset=offset, like=like)
    if product.product_type.upper().startswith("S2"):
        raw = digital_number_bands(bands, store=store, product=product.name)
        if raw:
            raise BadInputError(
                f"image {product.location}: band{'s' if len(raw) > 1 else ''} {', '.join(raw)} of this "
                f"{product.product_type} image hold{'' if len(raw) > 1 else 's'} Sentinel-2 digital numbers "
                "(integers, reflectance x 10000) and "
                "the file states no scale: give --scale 0.0001 --offset -0.1 (processing baseline 04.00 and later, "
                "acquired from 25 January 2022) or --scale 0.0001 --offset 0 (earlier), so that the statistics "
                "are reflectance as the markers read them")
    if not names and scale is None and offset is None and not like:
        return product  # the file says it all: read as it is at extraction
    return replace(product, attributes={**product.attributes, "bands": [band.descriptor() for band in bands]})


def _check_registered_bands(store: RasterStore, product: Product, product_id: int, *, names: list[str] | None,
                            scale: float | None, offset: float | None) -> None:
    """Refuse --bands/--scale/--offset that differ from how a registered image reads (its record is kept)."""
    if not names and scale is None and offset is None:
        return
    registered = {band.name: (band.scale, band.offset) for band in product_bands(product, store=store)
                  if not band.categorical}
    wanted = {band.name: (band.scale, band.offset) for band in _file_bands(
        store, product, names=names, scale=scale, offset=offset) if not band.categorical}
    if registered != wanted:
        shown = ", ".join(f"{name} x {s:g} {o:+g}" for name, (s, o) in sorted(registered.items()))
        raise BadInputError(f"image {product.uid} is registered (product {product_id}) reading its bands as "
                            f"{shown}; --bands/--scale/--offset say otherwise and the registered reading is kept: "
                            "give the same or none")


def extract_file(
    conn: psycopg.Connection,
    store: RasterStore,
    path_or_uri: str | Path,
    *,
    aoi: str,
    year: int,
    obs_time: datetime | None = None,
    product_id: int | None = None,
    product_type: str | None = None,
    label_cache: LabelCache | None = None,
    bands: list[str] | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> ExtractionResult:
    """Extract one image file or SAFE folder (``cbm extract``) for the parcels of *aoi* in *year*.

    Without *product_id*, the image is registered in cbm.product (catalogue ``file``, uid =
    its absolute path or URI, product type *product_type* or ``UNKNOWN``, ``S2MSI2A`` for a
    SAFE folder) in the same transaction as its rows, and marked ``extracted`` for *aoi*;
    an image registered before keeps its record. With *product_id*, the rows belong to that
    catalogue product and its bands are read from *path_or_uri* (e.g. a local copy).

    Args:
        conn: connection to the CbM database.
        store: where the image is (local paths work with any store).
        path_or_uri: a GeoTIFF/COG, or an S2 L2A SAFE folder.
        aoi: AOI name.
        year: parcel-set year.
        obs_time: acquisition time, required when the image states none (tags, SAFE
            metadata, a date in its name); naive = UTC. It wins over the image's own.
        product_id: an existing catalogue product the rows belong to.
        product_type: product type of a newly registered image (``--product-type``).
        label_cache: as for :func:`extract_product`.
        bands: the names of a raster file's bands in file order (``--bands``), for a file whose
            band descriptions are absent or other; recorded with a newly registered image.
        scale: physical = DN * scale + offset for every measurement band of a raster file
            (``--scale``), for files that do not state it; recorded with a newly registered
            image. Without it a band decodes as the file states, and a local copy of a
            catalogued product (*product_id*) as the catalogue's band descriptors say where
            the file is silent.
        offset: see *scale* (``--offset``).

    Raises:
        BadInputError: no acquisition time and no *obs_time*; an acquisition time outside the
            season of *year* (:func:`check_season`); an *obs_time* or a *scale*/*offset* that
            differs from the one the image was registered with; Sentinel-2 reflectance bands
            held as digital numbers without a scale; *bands*/*scale*/*offset* for a SAFE folder.
        BandError: *bands* does not name every band of the file once.
        ProductNotFoundError: *product_id* is not in the catalogue.
        NotFoundError, BandError, CorruptProductError: as :func:`extract_product`; the
            database is left unchanged.
    """
    uri = str(path_or_uri)
    if not is_remote(uri):  # a path given on the command line is relative to the working directory
        uri = str(local_path(uri).resolve())
    if product_id is not None:
        with conn.transaction():
            catalogued = registry.get_product(conn, product_id)
        attributes = {k: v for k, v in catalogued.attributes.items() if k != "bands"}
        product = _decoded(store, replace(catalogued, location=uri, attributes=attributes), names=bands,
                           scale=scale, offset=offset, like=list(catalogued.attributes.get("bands") or []))
        return extract_image(conn, store, product, product_id=product_id, aoi=aoi, year=year,
                             label_cache=label_cache)
    with conn.transaction():
        known = conn.execute("SELECT product_id FROM cbm.product WHERE uid = %s", (uri,)).fetchone()
        product = (registry.get_product(conn, int(known[0])) if known is not None
                   else _file_product(store, uri, obs_time=obs_time, product_type=product_type))
    if known is None:
        product = _decoded(store, product, names=bands, scale=scale, offset=offset)
    else:
        _check_registered_bands(store, product, int(known[0]), names=bands, scale=scale, offset=offset)
    if known is not None and obs_time is not None and _utc(obs_time) != product.acquired_at:
        raise BadInputError(
            f"image {uri} is registered (product {known[0]}) with acquisition time "
            f"{product.acquired_at.isoformat()}, --obs-time says {_utc(obs_time).isoformat()}; the registered "
            "time is kept: give the same --obs-time or none"
        )
    source = "--obs-time" if obs_time is not None else ("its catalogue record" if known is not None
                                                        else "read from the image")
    check_season(product.acquired_at, year=year, image=uri, source=source)

    def register(conn: psycopg.Connection, covers_parcels: bool) -> int:
        registry.register(conn, [product], aoi=aoi)
        row = conn.execute("SELECT product_id FROM cbm.product WHERE uid = %s", (product.uid,)).fetchone()
        if row is None:  # registered just above in this transaction: only a concurrent delete removes it
            raise TransientError(f"image {product.uid}: its catalogue record vanished while it was registered")
        product_id = int(row[0])
        status = ProductStatus.EXTRACTED if covers_parcels else ProductStatus.SKIPPED
        registry.mark_done(conn, product_id, aoi=aoi, status=status)
        return product_id

    return extract_image(conn, store, product, aoi=aoi, year=year, register=register, label_cache=label_cache)
