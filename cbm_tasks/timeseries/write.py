"""Write the per-parcel time series of one image.

:func:`replace_image_stats` is one transaction per (parcel set, image): the old
rows of that pair are deleted, the new ones streamed in with binary ``COPY`` and the
``cbm.extraction`` record upserted, so a re-run replaces its rows and a crash leaves none.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from cbm_tasks.db import transient_error
from cbm_tasks.errors import ParcelSetChangedError, TransientError

__all__ = [
    "STATS_PER_BAND",
    "ClassCountRows",
    "ImageStats",
    "delete_image_stats",
    "ensure_partitions",
    "check_parcel_set_version",
    "merge_parcel_stats",
    "replace_image_stats",
]

log = logging.getLogger(__name__)

STATS_PER_BAND = 8  # count, mean, std, min, max, p25, p50, p75 (sql/006_timeseries.sql)

_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_PGCOPY_TRAILER = struct.pack(">h", -1)
_FLOAT4_OID, _INT4_OID = 700, 23
_COPY_CHUNK_ROWS = 20_000  # bounds the size of one encoded buffer

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
        ParcelSetChangedError: the set is no longer at *parcel_set_version* (an import
            committed meanwhile); nothing was written: recompute from the new version.
        TransientError: the connection was lost (nothing was committed).
    """
    try:
        _replace(conn, parcel_set_id, product_id, image, parcel_set_version=parcel_set_version, params=params,
                 seconds=seconds, pipeline_run_id=pipeline_run_id)
    except psycopg.OperationalError as err:  # connection lost, server shutting down: a retry may succeed
        raise TransientError(f"writing the rows of product {product_id} for parcel set {parcel_set_id}: "
                             f"{transient_error(err)}") from err
    return image.n_rows


def _replace(conn: psycopg.Connection, parcel_set_id: int, product_id: int, image: ImageStats, *,
             parcel_set_version: int, params: Mapping[str, Any], seconds: float,
             pipeline_run_id: int | None) -> None:
    class_bands = [rows.band for rows in image.class_counts]
    with conn.transaction():
        # the upsert comes first: its row lock makes two writers of the same image (a DAG run and a
        # CLI re-run) take turns instead of both deleting nothing and then colliding on the unique
        # index; only roles that may write cbm.extraction can take it (not an advisory key any role
        # can). Then the parcel set (FOR SHARE): an import waits for these rows, and rows computed
        # from another version never get in.
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
        check_parcel_set_version(conn, parcel_set_id, parcel_set_version)
        _delete(conn, parcel_set_id, product_id)
        _copy_rows(conn, parcel_set_id, product_id, image)


def _copy_rows(conn: psycopg.Connection, parcel_set_id: int, product_id: int, image: ImageStats) -> None:
    """Stream the rows of *image* in with binary COPY (the caller has deleted what they replace)."""
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


def check_parcel_set_version(conn: psycopg.Connection, parcel_set_id: int, version: int) -> None:
    """Lock the parcel set against imports until the caller's transaction ends, and check its version.

    Call it in the transaction that writes rows computed from the set: ``FOR SHARE`` waits for
    an import in progress (which holds ``FOR UPDATE``) and then reads the committed version, and
    keeps any later import waiting until the rows are committed. Rows computed from another
    version never get in: an import deletes the rows of the parcels it changes, so rows
    written after it from the old polygons would survive it.

    Raises:
        ParcelSetChangedError: the set's version is not *version*, or the set was deleted.
    """
    row = conn.execute("SELECT version FROM cbm.parcel_set WHERE parcel_set_id = %s FOR SHARE",
                       (parcel_set_id,)).fetchone()
    if row is None or int(row[0]) != version:
        now = "deleted" if row is None else f"at version {row[0]}"
        raise ParcelSetChangedError(
            f"parcel set {parcel_set_id}: rows were computed from version {version}, but the set is {now} "
            "(an import committed meanwhile); nothing was written"
        )


def merge_parcel_stats(
    conn: psycopg.Connection,
    parcel_set_id: int,
    product_id: int,
    image: ImageStats,
    *,
    parcel_keys: np.ndarray,
    parcel_set_version: int,
) -> int:
    """Replace the rows of some parcels of one extracted image, and bring its record to *parcel_set_version*.

    Completes an image after a re-import: *image* holds the rows of the new and changed
    parcels (*parcel_keys*, those with ``geom_version`` above the extraction's version); the
    rows of the other parcels stay. One transaction, checked against the set version as
    :func:`replace_image_stats`; re-running it gives the same rows.

    Args:
        conn: open connection (a savepoint when the caller has a transaction open).
        parcel_set_id: the parcel set.
        product_id: the image, already extracted for the set (a ``cbm.extraction`` row).
        image: rows of (a subset of) *parcel_keys*, with the extraction's bands in its order.
        parcel_keys: every parcel whose rows are replaced (a parcel without a valid pixel has none).
        parcel_set_version: the version the rows were computed from.

    Returns:
        The rows written.

    Raises:
        ParcelSetChangedError: the set changed since it was read; nothing was written.
        ValueError: *image*'s bands differ from the extraction's (extract the whole image instead).
        TransientError: the connection was lost (nothing was committed).
    """
    try:
        with conn.transaction():
            # the extraction row's lock (FOR UPDATE below) makes writers of the same image take turns
            check_parcel_set_version(conn, parcel_set_id, parcel_set_version)
            row = conn.execute("SELECT bands, class_bands FROM cbm.extraction WHERE parcel_set_id = %s "
                               "AND product_id = %s FOR UPDATE", (parcel_set_id, product_id)).fetchone()
            class_bands = [rows.band for rows in image.class_counts]
            if row is None or list(row[0]) != list(image.bands) or list(row[1]) != class_bands:
                raise ValueError(f"product {product_id}: its extraction for parcel set {parcel_set_id} has bands "
                                 f"{None if row is None else (row[0], row[1])}, the new rows "
                                 f"{(list(image.bands), class_bands)}")
            keys = parcel_keys.astype(np.int32).tolist()
            conn.execute("DELETE FROM cbm.parcel_obs WHERE parcel_set_id = %s AND product_id = %s "
                         "AND parcel_key = ANY(%s)", (parcel_set_id, product_id, keys))
            conn.execute("DELETE FROM cbm.parcel_class_counts WHERE parcel_set_id = %s AND product_id = %s "
                         "AND parcel_key = ANY(%s)", (parcel_set_id, product_id, keys))
            _copy_rows(conn, parcel_set_id, product_id, image)
            conn.execute(
                "UPDATE cbm.extraction e SET parcel_set_version = %(version)s, extracted_at = now(), "
                "n_parcels = o.n, n_rows = o.n * cardinality(e.bands) + (SELECT count(*) FROM cbm.parcel_class_counts "
                "  WHERE parcel_set_id = %(set)s AND product_id = %(product)s) "
                "FROM (SELECT count(*) AS n FROM cbm.parcel_obs WHERE parcel_set_id = %(set)s "
                "      AND product_id = %(product)s) o "
                "WHERE e.parcel_set_id = %(set)s AND e.product_id = %(product)s",
                {"version": parcel_set_version, "set": parcel_set_id, "product": product_id},
            )
    except psycopg.OperationalError as err:
        raise TransientError(f"completing the rows of product {product_id} for parcel set {parcel_set_id}: {err}") \
            from err
    return image.n_rows


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
