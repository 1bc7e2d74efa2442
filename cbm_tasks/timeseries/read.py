"""Read the per-parcel time series back: one parcel, or a whole parcel set in the long format.

The long format (one row per parcel, image and band) is what ``cbm timeseries export``
writes and what markers, reports and the API read: :func:`read_time_series` returns it as
Arrow tables, :func:`iter_band_stats` and :func:`iter_class_counts` stream it in batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pyarrow as pa

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import NotFoundError

__all__ = [
    "BAND_STATS_COLUMNS",
    "BAND_STATS_SCHEMA",
    "CLASS_COUNTS_SCHEMA",
    "CLASS_COUNT_COLUMNS",
    "BandObs",
    "TimeSeries",
    "band_stats_batches",
    "class_counts_batches",
    "iter_band_stats",
    "iter_class_counts",
    "parcel_time_series",
    "read_time_series",
    "table_of_rows",
]

BAND_STATS_COLUMNS = ("parcel_id", "obs_time", "product_id", "source", "band",
                      "count", "mean", "std", "min", "max", "p25", "p50", "p75")
CLASS_COUNT_COLUMNS = ("parcel_id", "obs_time", "product_id", "band", "class", "count")
_TIME = pa.timestamp("us", tz="UTC")
BAND_STATS_SCHEMA = pa.schema(
    [("parcel_id", pa.string()), ("obs_time", _TIME), ("product_id", pa.int32()), ("source", pa.string()),
     ("band", pa.string()), ("count", pa.int32())]
    + [(name, pa.float32()) for name in ("mean", "std", "min", "max", "p25", "p50", "p75")]
)
CLASS_COUNTS_SCHEMA = pa.schema(
    [("parcel_id", pa.string()), ("obs_time", _TIME), ("product_id", pa.int32()), ("band", pa.string()),
     ("class", pa.int16()), ("count", pa.int32())]
)


@dataclass(frozen=True, slots=True)
class BandObs:
    """One band of one image over one parcel, in physical units."""

    obs_time: datetime
    product_id: int
    source: str
    band: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    p25: float
    p50: float
    p75: float


@dataclass(frozen=True, slots=True)
class TimeSeries:
    """The long time series of one parcel set.

    Attributes:
        band_stats: one row per parcel, image and band (BAND_STATS_SCHEMA); a band without a
            valid pixel in the parcel has count 0 and null statistics.
        class_counts: one row per parcel, image, categorical band and class present
            (CLASS_COUNTS_SCHEMA).
    """

    band_stats: pa.Table
    class_counts: pa.Table


def parcel_time_series(
    conn: psycopg.Connection, *, aoi: str, year: int, parcel_id: str, bands: Sequence[str] | None = None
) -> list[BandObs]:
    """Return the observations of one parcel, ordered by time, product and band order.

    Raises:
        NotFoundError: no parcel set for (aoi, year), or no parcel *parcel_id* in it.
    """
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    key = conn.execute(
        "SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_id = %s",
        (parcel_set.parcel_set_id, parcel_id),
    ).fetchone()
    if key is None:
        raise NotFoundError(f"parcel {parcel_id!r} is not in the {year} parcel set of AOI {aoi!r}")
    rows = conn.execute(
        "SELECT v.obs_time, v.product_id, v.source, v.band, v.count, v.mean, v.std, v.min, v.max, v.p25, v.p50, "
        "v.p75 FROM cbm.parcel_band_stats v JOIN cbm.extraction e USING (parcel_set_id, product_id) "
        "WHERE v.parcel_set_id = %(set)s AND v.parcel_key = %(key)s "
        "AND (%(bands)s::text[] IS NULL OR v.band = ANY(%(bands)s::text[])) "
        "ORDER BY v.obs_time, v.product_id, array_position(e.bands, v.band)",
        {"set": parcel_set.parcel_set_id, "key": key[0], "bands": None if bands is None else list(bands)},
    ).fetchall()
    return [BandObs(*row) for row in rows]


_BAND_STATS_EXPORT = """
SELECT p.parcel_id, pr.acquired_at, o.product_id, pr.product_type, b.band,
       o.stats[(b.i - 1) * 8 + 1]::integer,
       o.stats[(b.i - 1) * 8 + 2], o.stats[(b.i - 1) * 8 + 3], o.stats[(b.i - 1) * 8 + 4],
       o.stats[(b.i - 1) * 8 + 5], o.stats[(b.i - 1) * 8 + 6], o.stats[(b.i - 1) * 8 + 7],
       o.stats[(b.i - 1) * 8 + 8]
FROM cbm.parcel_obs o
JOIN cbm.extraction e ON e.parcel_set_id = o.parcel_set_id AND e.product_id = o.product_id
JOIN cbm.product pr ON pr.product_id = o.product_id
JOIN cbm.parcel p ON p.parcel_set_id = o.parcel_set_id AND p.parcel_key = o.parcel_key
CROSS JOIN LATERAL unnest(e.bands) WITH ORDINALITY AS b(band, i)
WHERE o.parcel_set_id = %s
ORDER BY o.parcel_key, pr.acquired_at, o.product_id, b.i
"""

_CLASS_COUNTS_EXPORT = """
SELECT p.parcel_id, pr.acquired_at, c.product_id, e.class_bands[c.class_band], (k.i - 1)::integer, k.n
FROM cbm.parcel_class_counts c
JOIN cbm.extraction e ON e.parcel_set_id = c.parcel_set_id AND e.product_id = c.product_id
JOIN cbm.product pr ON pr.product_id = c.product_id
JOIN cbm.parcel p ON p.parcel_set_id = c.parcel_set_id AND p.parcel_key = c.parcel_key
CROSS JOIN LATERAL unnest(c.counts) WITH ORDINALITY AS k(n, i)
WHERE c.parcel_set_id = %s AND k.n > 0
ORDER BY c.parcel_key, pr.acquired_at, c.product_id, c.class_band, k.i
"""


def _iter_batches(conn: psycopg.Connection, query: str, parcel_set_id: int,
                  batch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
    # a server-side cursor, so that an export of a whole season never sits in memory at once
    with conn.transaction(), conn.cursor(name="cbm_export") as cur:
        cur.execute(query, (parcel_set_id,))
        while batch := cur.fetchmany(batch_rows):
            yield batch


def iter_band_stats(conn: psycopg.Connection, *, parcel_set_id: int,
                    batch_rows: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    """Yield the long format of a parcel set in batches, rows as BAND_STATS_COLUMNS.

    Ordered by parcel, acquisition time, product and band order. A band without a valid pixel
    in the parcel has count 0 and NaN statistics.
    """
    yield from _iter_batches(conn, _BAND_STATS_EXPORT, parcel_set_id, batch_rows)


def iter_class_counts(conn: psycopg.Connection, *, parcel_set_id: int,
                      batch_rows: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    """Yield the class counts of a parcel set in batches, rows as CLASS_COUNT_COLUMNS.

    Only classes present in the parcel are listed (an absent class has count 0).
    """
    yield from _iter_batches(conn, _CLASS_COUNTS_EXPORT, parcel_set_id, batch_rows)


def table_of_rows(batch: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """Rows of a query as an Arrow table of *schema* (column for column; NaN becomes null)."""
    columns = list(zip(*batch, strict=True))
    arrays = [pa.array(column, type=field.type, from_pandas=True)  # from_pandas: NaN -> null
              for column, field in zip(columns, schema, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


def band_stats_batches(conn: psycopg.Connection, *, parcel_set_id: int,
                       batch_rows: int = 50_000) -> Iterator[pa.Table]:
    """Yield the band statistics of a parcel set as Arrow tables of BAND_STATS_SCHEMA, *batch_rows* at a time."""
    for batch in iter_band_stats(conn, parcel_set_id=parcel_set_id, batch_rows=batch_rows):
        yield table_of_rows(batch, BAND_STATS_SCHEMA)


def class_counts_batches(conn: psycopg.Connection, *, parcel_set_id: int,
                         batch_rows: int = 50_000) -> Iterator[pa.Table]:
    """Yield the class counts of a parcel set as Arrow tables of CLASS_COUNTS_SCHEMA, *batch_rows* at a time."""
    for batch in iter_class_counts(conn, parcel_set_id=parcel_set_id, batch_rows=batch_rows):
        yield table_of_rows(batch, CLASS_COUNTS_SCHEMA)


def read_time_series(conn: psycopg.Connection, *, aoi: str, year: int) -> TimeSeries:
    """Return the long time series of *aoi*'s parcel set of *year*: what ``cbm timeseries export`` writes.

    The whole set is held in memory; for a country-sized set stream it with
    :func:`band_stats_batches` and :func:`class_counts_batches` instead.

    Args:
        conn: connection to the CbM database.
        aoi: AOI name.
        year: parcel-set year.

    Returns:
        TimeSeries, rows ordered by parcel, acquisition time, image and band order.

    Raises:
        NotFoundError: no parcel set for (aoi, year).
    """
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    band_stats = list(band_stats_batches(conn, parcel_set_id=parcel_set.parcel_set_id))
    class_counts = list(class_counts_batches(conn, parcel_set_id=parcel_set.parcel_set_id))
    return TimeSeries(
        band_stats=pa.concat_tables(band_stats) if band_stats else BAND_STATS_SCHEMA.empty_table(),
        class_counts=pa.concat_tables(class_counts) if class_counts else CLASS_COUNTS_SCHEMA.empty_table(),
    )
