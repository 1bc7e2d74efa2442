"""Read a parcel set's time series from PostGIS into the markers' in-memory form, fast.

The database keeps one row per (parcel, image) with all band statistics in one ``real[]``
(``cbm.parcel_obs``, see ``sql/006_timeseries.sql``). The markers need four S2 band means, the
S1 VV / VH means and the share of unusable SCL pixels. For each band layout (the extraction's
``bands``), one ``COPY (SELECT parcel_key, product_id, stats[i], ...) TO STDOUT (FORMAT BINARY)``
sends exactly those values as fixed-width rows, which NumPy reads with one ``frombuffer``: no
Python object per row. SCL class counts are reduced to (bad, total) pixel sums in the same way.

:func:`read_parcel_series` returns a :class:`DbSeries`: the :class:`SeriesTable` of the markers
core (parcel ids are the set's parcel keys as strings) plus which image each S2 / S1 observation
came from, so that the lineage of every parcel (images used and rejected) can be written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from cbm_tasks.markers.series import BAND_CODE, PRODUCT_TYPES, SCL_BAD_CLASSES, SOURCE_CODE, SeriesTable

__all__ = ["DbSeries", "ProductInfo", "read_parcel_series", "read_products"]

log = logging.getLogger(__name__)

# bands the markers use, per source (others are not read at all)
_WANTED = {"s2": ("B02", "B04", "B08", "B11"), "bs": ("VV", "VH"), "c6": ("VV", "VH"), "c12": ("VV", "VH")}
_SCL_CLASSES = 12  # Sentinel-2 scene classification values 0..11
_MEAN = 2  # position of the mean in each band's 8-value block of parcel_obs.stats
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


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
        products.append(ProductInfo(int(product_id), source, float(day), int(orbit), tuple(bands), int(scl)))
    return products


def _copy_binary(conn: psycopg.Connection, query: sql.Composable, params: Sequence[object],
                 n_floats: int, n_ints: int = 0) -> np.ndarray:
    """Run ``COPY (query) TO STDOUT (FORMAT BINARY)`` of rows (int4 x (2 + n_ints), float4 x n_floats)."""
    fields = [("n", ">i2")]
    names = ["parcel_key", "product_id", *(f"i{k}" for k in range(n_ints))]
    for name in names:
        fields += [(f"len_{name}", ">i4"), (name, ">i4")]
    for k in range(n_floats):
        fields += [(f"len_f{k}", ">i4"), (f"f{k}", ">f4")]
    row = np.dtype(fields)
    with conn.cursor() as cur:
        copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)
        with cur.copy(copy_sql, params) as copy:
            buffer = b"".join(bytes(chunk) for chunk in copy)
    if not buffer.startswith(_COPY_SIGNATURE):
        raise psycopg.DataError("binary COPY: unexpected header")
    header = 11 + 4 + 4 + int.from_bytes(buffer[15:19], "big")
    body = len(buffer) - header - 2  # the trailer is int16 -1
    if body % row.itemsize:
        raise psycopg.DataError(f"binary COPY: {body} bytes is not a whole number of {row.itemsize}-byte rows")
    rows = np.frombuffer(buffer, dtype=row, count=body // row.itemsize, offset=header)
    if len(rows) and (np.any(rows["n"] != len(names) + n_floats)
                      or any(np.any(rows[f"len_{name}"] != 4) for name in names)):
        raise psycopg.DataError("binary COPY: a NULL or a wrong field count in a fixed-width row")
    return rows


def _key_filter(parcel_keys: np.ndarray | None) -> tuple[sql.Composable, list[object]]:
    if parcel_keys is None:
        return sql.SQL(""), []
    lo, hi = (int(parcel_keys.min()), int(parcel_keys.max())) if len(parcel_keys) else (0, -1)
    return (sql.SQL(" AND parcel_key BETWEEN %s AND %s AND parcel_key = ANY(%s::integer[])"),
            [lo, hi, parcel_keys.astype(np.int64).tolist()])


def _read_band_means(conn: psycopg.Connection, parcel_set_id: int, products: list[ProductInfo],
                     parcel_keys: np.ndarray | None) -> list[tuple[np.ndarray, ...]]:
    """Return [(parcel_key, product_id, band_code, mean)] per band layout."""
    layouts: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for product in products:
        wanted = tuple((product.bands.index(name), BAND_CODE[name])
                       for name in _WANTED[product.source] if name in product.bands)
        if wanted:
            layouts.setdefault(wanted, []).append(product.product_id)
    key_sql, key_params = _key_filter(parcel_keys)
    parts: list[tuple[np.ndarray, ...]] = []
    for wanted, product_ids in layouts.items():
        means = sql.SQL(", ").join(
            sql.SQL("coalesce(stats[{}], 'NaN')").format(sql.Literal(position * 8 + _MEAN)) for position, _ in wanted)
        query = sql.SQL("SELECT parcel_key, product_id, {} FROM cbm.parcel_obs WHERE parcel_set_id = %s "
                        "AND product_id = ANY(%s::integer[])").format(means) + key_sql
        rows = _copy_binary(conn, query, [parcel_set_id, product_ids, *key_params], len(wanted))
        n = len(rows)
        for k, (_, band_code) in enumerate(wanted):
            parts.append((rows["parcel_key"].astype(np.int32), rows["product_id"].astype(np.int32),
                          np.full(n, band_code, np.int8), rows[f"f{k}"].astype(np.float64)))
    return parts


def _read_scl_share(conn: psycopg.Connection, parcel_set_id: int, products: list[ProductInfo],
                    parcel_keys: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (sorted key parcel_key << 32 | product_id, share of unusable SCL pixels)."""
    by_band: dict[int, list[int]] = {}
    for product in products:
        if product.source == "s2" and product.scl_band:
            by_band.setdefault(product.scl_band, []).append(product.product_id)
    key_sql, key_params = _key_filter(parcel_keys)
    total = sql.SQL(" + ").join(sql.SQL("coalesce(counts[{}], 0)").format(sql.Literal(c + 1))
                                for c in range(_SCL_CLASSES))
    bad = sql.SQL(" + ").join(sql.SQL("coalesce(counts[{}], 0)").format(sql.Literal(c + 1)) for c in SCL_BAD_CLASSES)
    keys, shares = [], []
    for class_band, product_ids in by_band.items():
        query = sql.SQL("SELECT parcel_key, product_id, {}, {} FROM cbm.parcel_class_counts WHERE parcel_set_id = %s "
                        "AND class_band = %s AND product_id = ANY(%s::integer[])").format(bad, total) + key_sql
        rows = _copy_binary(conn, query, [parcel_set_id, class_band, product_ids, *key_params], 0, n_ints=2)
        keys.append((rows["parcel_key"].astype(np.int64) << 32) | rows["product_id"].astype(np.int64))
        with np.errstate(invalid="ignore", divide="ignore"):
            shares.append(np.where(rows["i1"] > 0, rows["i0"] / np.maximum(rows["i1"], 1), np.nan))
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0)
    key, share = np.concatenate(keys), np.concatenate(shares)
    order = np.argsort(key, kind="stable")
    return key[order], share[order]


def read_parcel_series(conn: psycopg.Connection, *, parcel_set_id: int, products: list[ProductInfo],
                       parcel_keys: np.ndarray) -> DbSeries:
    """Read the series of *parcel_keys* (sorted int array) of a parcel set.

    Args:
        conn: connection to the CbM database (reads only; the caller's transaction is used).
        parcel_set_id: the set.
        products: its images (:func:`read_products`).
        parcel_keys: the parcels to read, sorted ascending; a parcel without any observation still
            gets an (empty) entry, so that its light says NO_DATA.

    Returns:
        The series and the image of every observation.
    """
    t0 = time.perf_counter()
    keys = np.asarray(parcel_keys, dtype=np.int32)
    by_id = {product.product_id: product for product in products}
    parts = _read_band_means(conn, parcel_set_id, products, keys)
    scl_key, scl_share = _read_scl_share(conn, parcel_set_id, products, keys)
    if parts:
        row_key, row_product, band, mean = (np.concatenate(column) for column in zip(*parts, strict=True))
    else:
        row_key, row_product = np.zeros(0, np.int32), np.zeros(0, np.int32)
        band, mean = np.zeros(0, np.int8), np.zeros(0)
    ids = np.array(sorted(by_id), dtype=np.int32)
    product_index = np.searchsorted(ids, row_product)
    source_of = np.array([SOURCE_CODE[by_id[int(i)].source] for i in ids], np.int8)
    day_of = np.array([by_id[int(i)].obs_day for i in ids])
    orbit_of = np.array([by_id[int(i)].orbit for i in ids], np.int32)
    source, obs_day = source_of[product_index], day_of[product_index]
    # S2 observations have no orbit in the markers' grouping; S1 keep theirs (per-orbit dB series)
    orbit = np.where(source == SOURCE_CODE["s2"], -1, orbit_of[product_index]).astype(np.int32)
    scl = np.full(len(row_key), np.nan)
    if len(scl_key):
        combined = (row_key.astype(np.int64) << 32) | row_product.astype(np.int64)
        position = np.clip(np.searchsorted(scl_key, combined), 0, len(scl_key) - 1)
        found = (scl_key[position] == combined) & (source == SOURCE_CODE["s2"])
        scl[found] = scl_share[position[found]]
    parcel_index = np.searchsorted(keys, row_key)
    series = SeriesTable.from_arrays(parcel_id=parcel_index.astype(np.int32), source=source, band=band,
                                     obs_day=obs_day, mean=mean, orbit=orbit, scl_bad_share=scl)
    series = _with_all_parcels(series, keys)
    # one entry per (parcel, image): the lineage of what was read
    obs_key = (parcel_index.astype(np.int64) << 32) | row_product.astype(np.int64)
    unique_obs, first = np.unique(obs_key, return_index=True)
    obs_parcel = (unique_obs >> 32).astype(np.int32)
    obs_product = (unique_obs & 0xFFFFFFFF).astype(np.int32)
    obs_source = source[first]
    log.info("markers read parcel_set=%d parcels=%d rows=%d observations=%d images=%d seconds=%.2f",
             parcel_set_id, len(keys), len(row_key), len(unique_obs), len(np.unique(obs_product)),
             time.perf_counter() - t0)
    return DbSeries(series, keys, obs_parcel, obs_product, obs_day[first],
                    obs_source == SOURCE_CODE["s2"], np.unique(obs_product))


def _with_all_parcels(series: SeriesTable, keys: np.ndarray) -> SeriesTable:
    """Re-index *series* (parcel ids = indices into *keys*) to every key, empty parcels included."""
    present = series.parcel_ids.astype(np.int64)  # indices into keys, as strings from from_arrays
    parcel = present[series.parcel].astype(np.int32)
    offsets = np.searchsorted(parcel, np.arange(len(keys) + 1), side="left").astype(np.int64)
    return SeriesTable(parcel_ids=keys.astype(str), offsets=offsets, parcel=parcel, source=series.source,
                       band=series.band, obs_day=series.obs_day, mean=series.mean,
                       clear_fraction=series.clear_fraction, orbit=series.orbit,
                       scl_bad_share=series.scl_bad_share)

