"""The database side of the per-parcel time series: write one image's rows, read them back.

Writing (:func:`replace_image_stats`) is one transaction per (parcel set, image): the old
rows of that pair are deleted, the new ones streamed in with binary ``COPY`` and the
``cbm.extraction`` record upserted, so a re-run replaces its rows and a crash leaves none.
Reading: the time series of one parcel (:func:`parcel_time_series`) and batches of the long
format for exports (:func:`iter_band_stats`, :func:`iter_class_counts`).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from cbm_tasks.errors import NotFoundError, TransientError

__all__ = [
    "BAND_STATS_COLUMNS",
    "CLASS_COUNT_COLUMNS",
    "STATS_PER_BAND",
    "BandObs",
    "ClassCountRows",
    "ImageStats",
    "ParcelSetRef",
    "delete_image_stats",
    "ensure_partitions",
    "find_parcel_set",
    "iter_band_stats",
    "iter_class_counts",
    "parcel_time_series",
    "replace_image_stats",
]

log = logging.getLogger(__name__)

STATS_PER_BAND = 8  # count, mean, std, min, max, p25, p50, p75 (sql/006_timeseries.sql)
BAND_STATS_COLUMNS = ("parcel_id", "obs_time", "product_id", "source", "band",
                      "count", "mean", "std", "min", "max", "p25", "p50", "p75")
CLASS_COUNT_COLUMNS = ("parcel_id", "obs_time", "product_id", "band", "class", "count")

_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_PGCOPY_TRAILER = struct.pack(">h", -1)
_FLOAT4_OID, _INT4_OID = 700, 23
_COPY_CHUNK_ROWS = 20_000  # bounds the size of one encoded buffer


@dataclass(frozen=True, slots=True)
class ParcelSetRef:
    """The parcel set of an AOI and year."""

    parcel_set_id: int
    version: int
    srid: int
    n_parcels: int


@dataclass(frozen=True, slots=True)
class ClassCountRows:
    """Per-parcel pixel counts per class of one categorical band.

    Attributes:
        band: band name (an entry of cbm.extraction.class_bands).
        parcel_keys: int32 (n,), the parcels with at least one valid pixel of this band.
        counts: int32 (n, n_classes); counts[i, c] = pixels of class c in parcel_keys[i].
    """

    band: str
    parcel_keys: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True, slots=True)
class ImageStats:
    """All rows one image yields for one parcel set.

    Attributes:
        bands: names of the measured bands, the order of the 8-value blocks in ``stats``.
        parcel_keys: int32 (n,), parcels with a valid pixel in at least one band.
        stats: float32 (n, 8 * len(bands)), physical units; count 0 and NaN for a band without
            a valid pixel in the parcel.
        class_counts: one entry per categorical band.
    """

    bands: tuple[str, ...]
    parcel_keys: np.ndarray
    stats: np.ndarray
    class_counts: tuple[ClassCountRows, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.parcel_keys)
        if self.stats.shape != (n, STATS_PER_BAND * len(self.bands)):
            raise ValueError(
                f"stats must be ({n}, {STATS_PER_BAND * len(self.bands)}) for {n} parcels and bands "
                f"{list(self.bands)}, got {self.stats.shape}"
            )
        for rows in self.class_counts:
            if rows.counts.ndim != 2 or rows.counts.shape[0] != len(rows.parcel_keys):
                raise ValueError(f"class band {rows.band}: counts {rows.counts.shape} do not match its parcels")

    @property
    def n_rows(self) -> int:
        """Parcel x band statistics plus parcel x class-band counts."""
        return len(self.parcel_keys) * len(self.bands) + sum(len(r.parcel_keys) for r in self.class_counts)


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


def find_parcel_set(conn: psycopg.Connection, *, aoi: str, year: int) -> ParcelSetRef:
    """Return the parcel set of *aoi* for *year*.

    Raises:
        NotFoundError: the AOI has no parcel set for that year.
    """
    row = conn.execute(
        "SELECT s.parcel_set_id, s.version, s.srid, s.n_parcels FROM cbm.parcel_set s "
        "JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %s AND s.year = %s",
        (aoi, year),
    ).fetchone()
    if row is None:
        years = [r[0] for r in conn.execute(
            "SELECT s.year FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %s ORDER BY 1", (aoi,)
        ).fetchall()]
        raise NotFoundError(
            f"AOI {aoi!r} has no parcel set for {year}; years with parcels: {', '.join(map(str, years)) or 'none'}"
        )
    return ParcelSetRef(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def _row_header(n_fields: int, parcel_set_id: int, product_id: int, n: int) -> np.ndarray:
    """The fixed head of a binary COPY tuple: field count, parcel_set_id, parcel_key, product_id."""
    head = np.zeros(n, np.dtype([("nf", ">i2"), ("l1", ">i4"), ("set", ">i2"), ("l2", ">i4"), ("key", ">i4"),
                                 ("l3", ">i4"), ("product", ">i4")]))
    head["nf"], head["l1"], head["set"], head["l2"], head["l3"] = n_fields, 2, parcel_set_id, 4, 4
    head["product"] = product_id
    return head


def _encode_obs(parcel_set_id: int, product_id: int, keys: np.ndarray, stats: np.ndarray) -> bytes:
    """Encode (parcel_set_id, parcel_key, product_id, stats real[]) rows in PostgreSQL binary COPY format."""
    n, width = stats.shape
    row = np.zeros(n, np.dtype([("head", _row_header(4, 0, 0, 0).dtype), ("alen", ">i4"), ("ndim", ">i4"),
                                ("flags", ">i4"), ("oid", ">i4"), ("dim", ">i4"), ("lbound", ">i4"),
                                ("items", [("len", ">i4"), ("value", ">f4")], (width,))]))
    row["head"] = _row_header(4, parcel_set_id, product_id, n)
    row["head"]["key"] = keys
    row["alen"], row["ndim"], row["oid"], row["dim"], row["lbound"] = 20 + 8 * width, 1, _FLOAT4_OID, width, 1
    row["items"]["len"] = 4
    row["items"]["value"] = stats
    return row.tobytes()


def _encode_counts(parcel_set_id: int, product_id: int, class_band: int, keys: np.ndarray,
                   counts: np.ndarray) -> bytes:
    """Encode (parcel_set_id, parcel_key, product_id, class_band, counts integer[]) rows for binary COPY."""
    n, width = counts.shape
    row = np.zeros(n, np.dtype([("head", _row_header(5, 0, 0, 0).dtype), ("l4", ">i4"), ("class_band", ">i2"),
                                ("alen", ">i4"), ("ndim", ">i4"), ("flags", ">i4"), ("oid", ">i4"), ("dim", ">i4"),
                                ("lbound", ">i4"), ("items", [("len", ">i4"), ("value", ">i4")], (width,))]))
    row["head"] = _row_header(5, parcel_set_id, product_id, n)
    row["head"]["key"] = keys
    row["l4"], row["class_band"] = 2, class_band
    row["alen"], row["ndim"], row["oid"], row["dim"], row["lbound"] = 20 + 8 * width, 1, _INT4_OID, width, 1
    row["items"]["len"] = 4
    row["items"]["value"] = counts
    return row.tobytes()


def _delete(conn: psycopg.Connection, parcel_set_id: int, product_id: int) -> None:
    params = (parcel_set_id, product_id)
    conn.execute("DELETE FROM cbm.parcel_obs WHERE parcel_set_id = %s AND product_id = %s", params)
    conn.execute("DELETE FROM cbm.parcel_class_counts WHERE parcel_set_id = %s AND product_id = %s", params)


def replace_image_stats(
    conn: psycopg.Connection,
    parcel_set_id: int,
    product_id: int,
    image: ImageStats,
    *,
    parcel_set_version: int,
    params: Mapping[str, Any],
    seconds: float,
    pipeline_run_id: int | None = None,
) -> int:
    """Replace the rows of one image for one parcel set, in one transaction; return rows written.

    The partitions of the parcel set must exist (:func:`ensure_partitions`). Deletes the old rows
    of (parcel set, product) in cbm.parcel_obs and cbm.parcel_class_counts,
    streams the new ones with binary COPY, and upserts cbm.extraction (bands, class bands,
    *params*, counts, *seconds*, *pipeline_run_id*). Either all of it is committed or nothing.

    Args:
        conn: open connection; when the caller has a transaction open, this becomes a savepoint in it.
        parcel_set_id: the parcel set whose rows are replaced.
        product_id: the image whose rows are replaced.
        image: the rows (see ImageStats).
        parcel_set_version: cbm.parcel_set.version the parcels were read at.
        params: JSON-serialisable decoding parameters per band and engine options.
        seconds: extraction time, stored for monitoring.
        pipeline_run_id: lineage row of the run writing this, or None (command line without lineage).

    Returns:
        ImageStats.n_rows: parcel x band statistics plus parcel x class-band counts.

    Raises:
        TransientError: the connection was lost (nothing was committed).
    """
    try:
        _replace(conn, parcel_set_id, product_id, image, parcel_set_version=parcel_set_version, params=params,
                 seconds=seconds, pipeline_run_id=pipeline_run_id)
    except psycopg.OperationalError as err:  # connection lost, server shutting down: a retry may succeed
        raise TransientError(f"writing the rows of product {product_id} for parcel set {parcel_set_id}: {err}") \
            from err
    return image.n_rows


def _replace(conn: psycopg.Connection, parcel_set_id: int, product_id: int, image: ImageStats, *,
             parcel_set_version: int, params: Mapping[str, Any], seconds: float,
             pipeline_run_id: int | None) -> None:
    class_bands = [rows.band for rows in image.class_counts]
    with conn.transaction():
        # two writers of the same image (a DAG run and a CLI re-run) take turns instead of both
        # deleting nothing and then colliding on the unique index
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cbm.parcel_obs ' || %s || ' ' || %s, 0))",
                     (parcel_set_id, product_id))
        _delete(conn, parcel_set_id, product_id)
        with conn.cursor() as cur:
            if len(image.parcel_keys):
                with cur.copy("COPY cbm.parcel_obs (parcel_set_id, parcel_key, product_id, stats) "
                              "FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(_PGCOPY_HEADER)
                    for lo in range(0, len(image.parcel_keys), _COPY_CHUNK_ROWS):
                        hi = lo + _COPY_CHUNK_ROWS
                        copy.write(_encode_obs(parcel_set_id, product_id, image.parcel_keys[lo:hi],
                                               image.stats[lo:hi]))
                    copy.write(_PGCOPY_TRAILER)
            if any(len(rows.parcel_keys) for rows in image.class_counts):
                with cur.copy("COPY cbm.parcel_class_counts (parcel_set_id, parcel_key, product_id, class_band, "
                              "counts) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(_PGCOPY_HEADER)
                    for class_band, rows in enumerate(image.class_counts, start=1):
                        for lo in range(0, len(rows.parcel_keys), _COPY_CHUNK_ROWS):
                            hi = lo + _COPY_CHUNK_ROWS
                            copy.write(_encode_counts(parcel_set_id, product_id, class_band,
                                                      rows.parcel_keys[lo:hi], rows.counts[lo:hi]))
                    copy.write(_PGCOPY_TRAILER)
        conn.execute(
            "INSERT INTO cbm.extraction (parcel_set_id, product_id, bands, class_bands, parcel_set_version, "
            "n_parcels, n_rows, params, pipeline_run_id, seconds) "
            "VALUES (%(set)s, %(product)s, %(bands)s, %(class_bands)s, %(version)s, %(n_parcels)s, %(n_rows)s, "
            "%(params)s, %(run)s, %(seconds)s) "
            "ON CONFLICT (parcel_set_id, product_id) DO UPDATE SET bands = EXCLUDED.bands, "
            "class_bands = EXCLUDED.class_bands, parcel_set_version = EXCLUDED.parcel_set_version, "
            "n_parcels = EXCLUDED.n_parcels, n_rows = EXCLUDED.n_rows, params = EXCLUDED.params, "
            "pipeline_run_id = EXCLUDED.pipeline_run_id, seconds = EXCLUDED.seconds, extracted_at = now()",
            {"set": parcel_set_id, "product": product_id, "bands": list(image.bands), "class_bands": class_bands,
             "version": parcel_set_version, "n_parcels": len(image.parcel_keys), "n_rows": image.n_rows,
             "params": json.dumps(params, sort_keys=True, default=str), "run": pipeline_run_id,
             "seconds": seconds},
        )


def ensure_partitions(conn: psycopg.Connection, parcel_set_id: int) -> None:
    """Make sure the time-series partitions of a parcel set exist (parcel import makes them too).

    Its own transaction: the SQL function holds a per-parcel-set lock until commit, which inside
    the write transaction would serialise the writers of all images of the set.
    """
    with conn.transaction():
        conn.execute("SELECT cbm.ensure_parcel_set_partitions(%s::smallint)", (parcel_set_id,))


def delete_image_stats(conn: psycopg.Connection, parcel_set_id: int, product_id: int) -> None:
    """Remove every row and the extraction record of one image for one parcel set (one transaction)."""
    with conn.transaction():
        _delete(conn, parcel_set_id, product_id)
        conn.execute("DELETE FROM cbm.extraction WHERE parcel_set_id = %s AND product_id = %s",
                     (parcel_set_id, product_id))


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
