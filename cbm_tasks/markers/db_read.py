"""Read a parcel set's time series from PostGIS into the markers' in-memory form, fast.

The database keeps one row per (parcel, image) with all band statistics in one ``real[]``
(``cbm.parcel_obs``, see ``sql/006_timeseries.sql``). The markers need four S2 band means (B8A where
an image has no B08, its NDVI where it has one) and the red band's spread (std), the S1
VV / VH means and the share of unusable SCL pixels. For each band layout (the extraction's ``bands``), one
``COPY (SELECT parcel_key, product_id, stats[i], ...) TO STDOUT (FORMAT BINARY)`` sends exactly
those values as fixed-width rows, which NumPy reads with one ``frombuffer``: no Python object per row.
SCL class counts are reduced to (bad, total) pixel sums in the same way. The rows come image by image;
:func:`cbm_tasks.markers.db_order.series_order` puts them parcel by parcel in one linear pass.

:func:`read_parcel_series` returns a :class:`DbSeries`: the :class:`SeriesTable` of the markers
core (parcel ids are the set's parcel keys as strings) plus which image each S2 / S1 observation
came from, so that the lineage of every parcel (images used and rejected) can be written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from cbm_tasks.markers.db_order import series_order
from cbm_tasks.markers.series import (
    BAND_CODE,
    OVERPASS_SECONDS,
    PRODUCT_TYPES,
    SCL_BAD_CLASSES,
    SOURCE_CODE,
    SeriesTable,
    band_name,
    group_offsets,
)

__all__ = ["DbSeries", "ProductInfo", "parcel_series", "read_parcel_series", "read_products"]

log = logging.getLogger(__name__)

# bands the markers use, per source (others are not read at all)
_WANTED = {"s2": ("B02", "B04", "B08", "B11"), "bs": ("VV", "VH"), "c6": ("VV", "VH"), "c12": ("VV", "VH")}
_SCL_CLASSES = 12  # Sentinel-2 scene classification values 0..11
_MEAN, _STD = 2, 3  # positions of the mean and the std in each band's 8-value block of parcel_obs.stats
_RED = BAND_CODE["B04"]
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
# The server aggregates a batch's values into one array per image, all images at once (a hash
# aggregate): ~300 MB for 50,000 parcels x 90 images. Under PostgreSQL's default work_mem (4 MB, x2
# for hashing) it spills them to disk and reads them back, which doubled the read's server time on
# the benchmark; the read's transaction raises work_mem to this (never lowers it; the caller's
# transaction ends it).
READ_WORK_MEM = "256MB"


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """An image extracted for the parcel set, as the markers see it."""

    product_id: int
    source: str  # s2, bs, c6, c12
    obs_day: float  # days since 1970-01-01 UTC
    orbit: int  # relative orbit, -1 when unknown
    bands: tuple[str, ...]  # order of the 8-value blocks of parcel_obs.stats
    scl_band: int  # 1-based index into the extraction's class_bands of SCL, 0 when absent


@dataclass(frozen=True, slots=True)
class DbSeries:
    """The observations of a batch of parcels, and where each came from.

    Attributes:
        series: the markers core's table; ``parcel_ids`` are parcel keys as strings.
        parcel_keys: int32 (n_parcels,), the keys of ``series.parcel_ids`` (every requested parcel,
            also those without any observation).
        obs_parcel, obs_product, obs_day, obs_is_s2: one entry per (parcel, image) read: parcel index
            into ``parcel_keys``, product id, days since 1970-01-01, and whether it is Sentinel-2
            (only Sentinel-2 observations can be rejected).
        product_ids: sorted ids of all images read.
    """

    series: SeriesTable
    parcel_keys: np.ndarray
    obs_parcel: np.ndarray
    obs_product: np.ndarray
    obs_day: np.ndarray
    obs_is_s2: np.ndarray
    product_ids: np.ndarray


def read_products(conn: psycopg.Connection, parcel_set_id: int) -> list[ProductInfo]:
    """Return the images extracted for *parcel_set_id* whose product type the markers know."""
    rows = conn.execute(
        "SELECT e.product_id, p.product_type, extract(epoch FROM p.acquired_at)::float8 / 86400.0, "
        "coalesce(p.relative_orbit, -1), e.bands, coalesce(array_position(e.class_bands, 'SCL'), 0) "
        "FROM cbm.extraction e JOIN cbm.product p USING (product_id) WHERE e.parcel_set_id = %s "
        "ORDER BY e.product_id",
        (parcel_set_id,),
    ).fetchall()
    products = []
    for product_id, product_type, day, orbit, bands, scl in rows:
        source = PRODUCT_TYPES.get(str(product_type))
        if source is None:
            log.warning("markers: product %s of type %s is not a marker input (known: %s); skipped",
                        product_id, product_type, ", ".join(PRODUCT_TYPES))
            continue
        # bands as the file named them: B4 or red (Earth Engine, STAC asset keys) is the markers' B04
        products.append(ProductInfo(int(product_id), source, float(day), int(orbit),
                                    tuple(band_name(str(b)) for b in bands), int(scl)))
    return products


def _array(buffer: bytes, at: int, kind: str) -> tuple[np.ndarray, int]:
    """Parse one binary array field (int4[] or float4[], no NULL element) at *at*; return (values, next offset).

    float4 values come as float64, the markers' type, in the one conversion from network byte order.
    """
    length = int.from_bytes(buffer[at:at + 4], "big", signed=True)
    if length < 0:
        raise psycopg.DataError("binary COPY: NULL array")
    ndim = int.from_bytes(buffer[at + 4:at + 8], "big")
    if ndim == 0:
        return np.zeros(0, np.int32 if kind == "i" else np.float64), at + 4 + length
    count = int.from_bytes(buffer[at + 16:at + 20], "big")
    items = np.frombuffer(buffer, dtype=np.dtype([("len", ">i4"), ("value", f">{kind}4")]), count=count,
                          offset=at + 24)
    if np.any(items["len"] != 4):
        raise psycopg.DataError("binary COPY: NULL element in an array")
    return items["value"].astype(np.int32 if kind == "i" else np.float64), at + 4 + length


def _copy_binary(conn: psycopg.Connection, values: Sequence[sql.Composable], source: sql.Composable,
                 params: Sequence[object], kinds: str) -> list[np.ndarray]:
    """Return columns (parcel_key, product_id, *values) of *source*, read as one row of arrays per image.

    libpq hands a ``COPY TO`` over row by row, so rows of a few bytes would cost a Python call
    each; aggregated per image, a batch is a few hundred rows of long arrays parsed by NumPy.
    *kinds* gives each value's type: ``i`` int4, ``f`` float4.
    """
    aggregates = sql.SQL(", ").join(sql.SQL("array_agg({})").format(value) for value in values)
    query = sql.SQL("COPY (SELECT product_id, array_agg(parcel_key), {} FROM {} GROUP BY product_id) "
                    "TO STDOUT (FORMAT BINARY)").format(aggregates, source)
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        buffer = b"".join(bytes(chunk) for chunk in copy)
    if not buffer.startswith(_COPY_SIGNATURE):
        raise psycopg.DataError("binary COPY: unexpected header")
    at = 11 + 4 + 4 + int.from_bytes(buffer[15:19], "big")
    columns: list[list[np.ndarray]] = [[] for _ in range(2 + len(values))]
    while (n_fields := int.from_bytes(buffer[at:at + 2], "big", signed=True)) != -1:
        if n_fields != 2 + len(values):
            raise psycopg.DataError(f"binary COPY: {n_fields} fields, expected {2 + len(values)}")
        product_id = int.from_bytes(buffer[at + 6:at + 10], "big")
        at += 10
        keys, at = _array(buffer, at, "i")
        columns[0].append(keys)
        columns[1].append(np.full(len(keys), product_id, np.int32))
        for k, kind in enumerate(kinds):
            column, at = _array(buffer, at, kind)
            columns[2 + k].append(column)
    return [np.concatenate(parts) if parts else np.zeros(0, np.int32) for parts in columns]


def _key_filter(parcel_keys: np.ndarray | None, whole_range: bool) -> tuple[sql.Composable, list[object]]:
    if parcel_keys is None:
        return sql.SQL(""), []
    lo, hi = (int(parcel_keys.min()), int(parcel_keys.max())) if len(parcel_keys) else (0, -1)
    if whole_range or hi - lo + 1 == len(parcel_keys):  # no key of the range is left out: no list to test
        return sql.SQL(" AND parcel_key BETWEEN %s AND %s"), [lo, hi]
    return (sql.SQL(" AND parcel_key BETWEEN %s AND %s AND parcel_key = ANY(%s::integer[])"),
            [lo, hi, parcel_keys.astype(np.int64).tolist()])


def _wanted(product: ProductInfo) -> tuple[str, ...]:
    """The bands to read of *product*: the markers' own, and what stands in for a missing one.

    B8A for a missing B08 (an image extracted at 20 or 60 m has no B08); the image's own NDVI wherever it
    has one, as in the file reader (``preprocess`` takes them so: ``data.file_ndvi``).
    """
    names = _WANTED[product.source]
    if product.source != "s2":
        return names
    if "B08" not in product.bands:
        names = (*names, "B8A")
    return (*names, "NDVI") if "NDVI" in product.bands else names


def _read_band_means(conn: psycopg.Connection, parcel_set_id: int, products: list[ProductInfo],
                     parcel_keys: np.ndarray | None, whole_range: bool) -> list[tuple[np.ndarray, ...]]:
    """Return [(parcel_key, product_id, band_code, mean, std)] per band layout.

    The spread (std) is read for the red band only, the one the markers judge it on
    (``validity.max_red_spread``); the other bands' is NaN.
    """
    layouts: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for product in products:
        wanted = tuple((product.bands.index(name), BAND_CODE[name])
                       for name in _wanted(product) if name in product.bands)
        if wanted:
            layouts.setdefault(wanted, []).append(product.product_id)
    key_sql, key_params = _key_filter(parcel_keys, whole_range)
    parts: list[tuple[np.ndarray, ...]] = []
    for wanted, product_ids in layouts.items():
        values = [sql.SQL("coalesce(stats[{}], 'NaN')").format(sql.Literal(position * 8 + _MEAN))
                  for position, _ in wanted]
        red = next((k for k, (_, band_code) in enumerate(wanted) if band_code == _RED), None)
        if red is not None:  # its spread: the last value
            values.append(sql.SQL("coalesce(stats[{}], 'NaN')").format(sql.Literal(wanted[red][0] * 8 + _STD)))
        source = sql.SQL("cbm.parcel_obs WHERE parcel_set_id = %s AND product_id = ANY(%s::integer[])") + key_sql
        columns = _copy_binary(conn, values, source, [parcel_set_id, product_ids, *key_params], "f" * len(values))
        n = len(columns[0])
        for k, (_, band_code) in enumerate(wanted):
            std = columns[-1].astype(np.float64, copy=False) if k == red else np.full(n, np.nan)
            parts.append((columns[0], columns[1], np.full(n, band_code, np.int8),
                          columns[2 + k].astype(np.float64, copy=False), std))
    return parts


def _read_scl_share(conn: psycopg.Connection, parcel_set_id: int, products: list[ProductInfo],
                    parcel_keys: np.ndarray | None, whole_range: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (parcel_key, product_id, share of unusable SCL pixels) of every S2 observation with SCL counts."""
    by_band: dict[int, list[int]] = {}
    for product in products:
        if product.source == "s2" and product.scl_band:
            by_band.setdefault(product.scl_band, []).append(product.product_id)
    key_sql, key_params = _key_filter(parcel_keys, whole_range)
    total = sql.SQL(" + ").join(sql.SQL("coalesce(counts[{}], 0)").format(sql.Literal(c + 1))
                                for c in range(_SCL_CLASSES))
    bad = sql.SQL(" + ").join(sql.SQL("coalesce(counts[{}], 0)").format(sql.Literal(c + 1)) for c in SCL_BAD_CLASSES)
    keys, images, shares = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)], [np.zeros(0)]
    for class_band, product_ids in by_band.items():
        source = sql.SQL("cbm.parcel_class_counts WHERE parcel_set_id = %s AND class_band = %s "
                         "AND product_id = ANY(%s::integer[])") + key_sql
        key, image, n_bad, n_total = _copy_binary(conn, [bad, total], source,
                                                    [parcel_set_id, class_band, product_ids, *key_params], "ii")
        keys.append(key)
        images.append(image)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares.append(np.where(n_total > 0, n_bad / np.maximum(n_total, 1), np.nan))
    return np.concatenate(keys), np.concatenate(images), np.concatenate(shares)


def read_parcel_series(conn: psycopg.Connection, *, parcel_set_id: int, products: list[ProductInfo],
                       parcel_keys: np.ndarray, whole_range: bool = False,
                       overpass_seconds: float = OVERPASS_SECONDS) -> DbSeries:
    """Read the series of *parcel_keys* (sorted int array) of a parcel set.

    Args:
        conn: connection to the CbM database (reads only; the caller's transaction is used, with
            work_mem raised to :data:`READ_WORK_MEM` for its rest).
        parcel_set_id: the set.
        products: its images (:func:`read_products`).
        parcel_keys: the parcels to read, sorted ascending; a parcel without any observation still
            gets an (empty) entry, so that its light says NO_DATA.
        whole_range: every parcel of the set with a key between the first and the last of
            *parcel_keys* is in it (a full run's batch): the keys are then not sent as a list.
        overpass_seconds: images at most this far apart (same source and orbit) are one
            observation: the run's ``data.overpass_seconds`` (0 for parameters before version 8).

    Returns:
        The series and the image of every observation.
    """
    t0 = time.perf_counter()
    keys = np.asarray(parcel_keys, dtype=np.int32)
    conn.execute("SELECT set_config('work_mem', %s, true) "
                 "WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(%s)", (READ_WORK_MEM, READ_WORK_MEM))
    parts = _read_band_means(conn, parcel_set_id, products, keys, whole_range)
    scl_key, scl_product, scl_share = _read_scl_share(conn, parcel_set_id, products, keys, whole_range)
    if parts:
        row_key, row_product, band, mean, std = (np.concatenate(column) for column in zip(*parts, strict=True))
    else:
        row_key, row_product = np.zeros(0, np.int32), np.zeros(0, np.int32)
        band, mean, std = np.zeros(0, np.int8), np.zeros(0), np.zeros(0)
    slot, source_of, orbit_of, day_of = _product_slots(products, overpass_seconds)
    ids = np.array(sorted(product.product_id for product in products), dtype=np.int32)
    # rows in the order of SeriesTable: parcel, then time, source, orbit (the image's overpass), band, and last
    # the product-id order of the images of one overpass, of which only the first counts (as in
    # SeriesTable.from_arrays: overlapping tiles of one datatake); with each S2 row's SCL share and the lineage
    row_parcel, row_image = _parcel_index(keys, row_key), np.searchsorted(ids, row_product).astype(np.int64)
    rows, scl, obs_parcel, obs_image = series_order(
        row_parcel, row_image, band, len(keys), slot, source_of == SOURCE_CODE["s2"], len(BAND_CODE),
        _parcel_index(keys, scl_key), np.searchsorted(ids, scl_product).astype(np.int64), scl_share)
    image, parcel = row_image[rows], row_parcel[rows].astype(np.int32)
    series = SeriesTable(
        parcel_ids=keys.astype(str), offsets=group_offsets(parcel, len(keys)), parcel=parcel,
        source=source_of[image], band=band[rows], obs_day=day_of[image], mean=mean[rows],
        clear_fraction=np.full(len(rows), np.nan), orbit=orbit_of[image], scl_bad_share=scl,
        product_id=ids[image].astype(np.int64), std=std[rows])
    obs_product = ids[obs_image]
    log.info("markers read parcel_set=%d parcels=%d rows=%d observations=%d images=%d seconds=%.2f",
             parcel_set_id, len(keys), len(row_key), len(obs_image), len(np.unique(obs_product)),
             time.perf_counter() - t0)
    return DbSeries(series, keys, obs_parcel.astype(np.int32), obs_product, day_of[obs_image],
                    source_of[obs_image] == SOURCE_CODE["s2"], np.unique(obs_product))


def _parcel_index(keys: np.ndarray, parcel_key: np.ndarray) -> np.ndarray:
    """Index into the sorted *keys* of every *parcel_key* (each one of them: the query asked for those only)."""
    if len(keys) and int(keys[-1]) - int(keys[0]) + 1 == len(keys):  # a full run's batch: keys without holes
        index = parcel_key.astype(np.int64) - int(keys[0])
    else:
        index = np.searchsorted(keys, parcel_key).astype(np.int64)
    if len(index) and (index.min() < 0 or index.max() >= len(keys)):  # the order's kernel indexes with it
        raise psycopg.DataError("markers read: the database answered a parcel the batch did not ask for")
    return index


def _product_slots(products: list[ProductInfo],
                   overpass_seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per product (in product-id order): sort slot, source code, orbit (-1 for S2) and day.

    The slot orders images by (time to the millisecond, source, orbit, product id); images of one
    overpass (same source and orbit, at most *overpass_seconds* apart: overlapping tiles of a
    datatake) share the slot's upper bits (``slot >> 8``), differ in the lower 8 and take the day
    of the overpass's first image, as in :meth:`SeriesTable.from_arrays`.
    """
    ordered = sorted(products, key=lambda p: p.product_id)
    source = np.array([SOURCE_CODE[p.source] for p in ordered], np.int8)
    # S2 observations have no orbit in the markers' grouping; S1 keep theirs (per-orbit dB series)
    orbit = np.array([-1 if p.source == "s2" else p.orbit for p in ordered], np.int32)
    day = np.array([p.obs_day for p in ordered], np.float64)
    ids = np.array([p.product_id for p in ordered], np.int64)
    millis = np.rint(day * 86_400e3).astype(np.int64)
    order = np.lexsort((ids, orbit, source, millis))
    slot = np.zeros(len(ordered), np.int64)
    # per (source, orbit): the overpass last seen, as (its group, subs used, its first image, its last image's time)
    overpass: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    n_groups = 0
    for index in order.tolist():
        kind = (int(source[index]), int(orbit[index]))
        seen = overpass.get(kind)
        if seen is not None and millis[index] - seen[3] <= overpass_seconds * 1000:  # one overpass: its first time
            group, sub, first = seen[0], seen[1] + 1, seen[2]
            day[index] = day[first]
        else:
            group, sub, first = n_groups, 0, index
            n_groups += 1
        if sub > 255 or group >= 1 << 24:
            raise ValueError(f"too many images for one parcel set ({len(ordered)})")
        overpass[kind] = (group, sub, first, int(millis[index]))
        slot[index] = (group << 8) | sub
    return slot, source, orbit, day


def parcel_series(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, name: str,
                  overpass_seconds: float = OVERPASS_SECONDS) -> SeriesTable:
    """Return the series of one parcel, named *name* (its declared id; empty when it has no observation)."""
    read = read_parcel_series(conn, parcel_set_id=parcel_set_id, products=read_products(conn, parcel_set_id),
                              parcel_keys=np.array([parcel_key], np.int32), overpass_seconds=overpass_seconds)
    return dataclasses.replace(read.series, parcel_ids=np.array([name]))
