"""The per-parcel time series of an AOI and year as CSV or Parquet files (``cbm timeseries export``).

The content is :func:`cbm_tasks.timeseries.read.read_time_series`'s, streamed in batches.

File format (the marker engine's file input):

``FILE`` (long format, one row per parcel, image and band; ordered by parcel, time, image, band):
    parcel_id (string), obs_time (UTC timestamp, acquisition start), product_id (int32),
    source (product type: S2MSI2A, CARD-BS, ...), band (string), count (int32, valid pixels),
    mean, std (population), min, max, p25, p50, p75 (float32, physical units: scale and offset
    applied; numpy 'linear' percentiles). A band without a valid pixel in the parcel has
    count 0 and empty (null) statistics.

``FILE`` with ``wide=True`` (``--wide``; one row per parcel and image, ordered as the long one):
    parcel_id, obs_time, product_id, source, then for every band of the set's images (Sentinel-2
    bands in band order, then the others by name) ``<band>`` (its mean) and ``<band>_std``
    (float32, empty where the image has no such band or no valid pixel of it). The markers read
    it as they read the long file (``cbm_tasks.markers.wide``).

``FILE stem + "_classes" + suffix`` (categorical bands such as S2 SCL, in both layouts):
    parcel_id, obs_time, product_id, band (string), class (int16, class value), count (int32).
    Only classes present in the parcel are listed: a missing class has count 0.

CSV: header row, comma-separated, timestamps as ``2018-04-05 10:50:31.000000Z``, float32
values in their shortest round-trip form. Files are written under a temporary name and
renamed when complete, so a failed export leaves no partial file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from psycopg import sql

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import BadInputError
from cbm_tasks.timeseries.read import (
    BAND_STATS_SCHEMA,
    CLASS_COUNTS_SCHEMA,
    band_stats_batches,
    class_counts_batches,
    table_of_rows,
)

__all__ = ["ExportResult", "classes_path", "export_time_series"]

log = logging.getLogger(__name__)

_FORMATS = (".csv", ".parquet")


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Files written and their row counts."""

    path: Path
    classes_path: Path
    n_rows: int
    n_class_rows: int


def classes_path(out: Path) -> Path:
    """Return the class-count file that goes with *out*: ``<stem>_classes<suffix>``."""
    return out.with_name(f"{out.stem}_classes{out.suffix}")


def _write(batches: Iterator[pa.Table], schema: pa.Schema, path: Path) -> int:
    partial = path.with_name(f".{path.name}.partial")
    writer: pa_csv.CSVWriter | pq.ParquetWriter
    writer = pa_csv.CSVWriter(partial, schema) if path.suffix == ".csv" else pq.ParquetWriter(partial, schema)
    n_rows = 0
    try:
        with writer:
            for batch in batches:
                writer.write_table(batch)
                n_rows += batch.num_rows
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return n_rows


# Sentinel-2's bands in their own order; other bands (VV, VH, a stack's b1..bn) follow by name
_S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_KEY_FIELDS = [("parcel_id", pa.string()), ("obs_time", BAND_STATS_SCHEMA.field("obs_time").type),
               ("product_id", pa.int32()), ("source", pa.string())]


def _set_bands(conn: psycopg.Connection, parcel_set_id: int) -> list[str]:
    rows = conn.execute("SELECT DISTINCT unnest(bands) FROM cbm.extraction WHERE parcel_set_id = %s",
                        (parcel_set_id,)).fetchall()
    names = {str(name) for (name,) in rows}
    return sorted(names, key=lambda name: (_S2_ORDER.index(name) if name in _S2_ORDER else len(_S2_ORDER), name))


def _wide_batches(conn: psycopg.Connection, parcel_set_id: int, bands: list[str],
                  batch_rows: int) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """The wide layout: one row per parcel and image, each band's mean and std in its own columns."""
    names = [column for band in bands for column in (band, f"{band}_std")]
    taken = {name for name, _ in _KEY_FIELDS}
    if taken & set(names):  # a band named like a key column would make two columns of one name
        raise BadInputError(f"wide export: band(s) {', '.join(sorted(taken & set(names)))} clash with the key columns; "
                            "export the long layout")
    schema = pa.schema([*_KEY_FIELDS, *[(name, pa.float32()) for name in names]])
    # stats[] holds 8 values per band (count, mean, std, ...): a band the image lacks indexes NULL
    values = sql.SQL(", ").join(
        sql.SQL("o.stats[(array_position(e.bands, {band}) - 1) * 8 + {k}]").format(band=sql.Literal(band),
                                                                                  k=sql.Literal(k))
        for band in bands for k in (2, 3))
    query = sql.SQL(
        "SELECT p.parcel_id, pr.acquired_at, o.product_id, pr.product_type, {values} "
        "FROM cbm.parcel_obs o "
        "JOIN cbm.extraction e ON e.parcel_set_id = o.parcel_set_id AND e.product_id = o.product_id "
        "JOIN cbm.product pr ON pr.product_id = o.product_id "
        "JOIN cbm.parcel p ON p.parcel_set_id = o.parcel_set_id AND p.parcel_key = o.parcel_key "
        "WHERE o.parcel_set_id = %s ORDER BY o.parcel_key, pr.acquired_at, o.product_id").format(
        values=values if bands else sql.SQL("NULL"))

    def batches() -> Iterator[pa.Table]:
        with conn.transaction(), conn.cursor(name="cbm_export_wide") as cur:
            cur.execute(query, (parcel_set_id,))
            while batch := cur.fetchmany(batch_rows):
                yield table_of_rows([row if bands else row[:4] for row in batch], schema)

    return schema, batches()


def export_time_series(conn: psycopg.Connection, *, aoi: str, year: int, out: Path,
                       batch_rows: int = 50_000, wide: bool = False) -> ExportResult:
    """Write the time series of *aoi*'s parcel set of *year* to *out* and its class counts next to it.

    Args:
        conn: connection to the CbM database.
        aoi: AOI name.
        year: parcel-set year.
        out: ``.csv`` or ``.parquet`` file; the class counts go to :func:`classes_path` (out).
        batch_rows: rows fetched and written at a time (memory bound).
        wide: one row per parcel and image, a column per band (module docstring), instead of one
            row per parcel, image and band.

    Raises:
        BadInputError: *out* has another extension; a band named like a key column (*wide*).
        NotFoundError: no parcel set for (aoi, year).
    """
    if out.suffix.lower() not in _FORMATS:
        raise BadInputError(f"export file {out}: extension must be one of {', '.join(_FORMATS)}, got {out.suffix!r}")
    out = out.with_suffix(out.suffix.lower())
    t0 = time.perf_counter()
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    if wide:
        schema, batches = _wide_batches(conn, parcel_set.parcel_set_id, _set_bands(conn, parcel_set.parcel_set_id),
                                        batch_rows)
        n_rows = _write(batches, schema, out)
    else:
        n_rows = _write(band_stats_batches(conn, parcel_set_id=parcel_set.parcel_set_id, batch_rows=batch_rows),
                        BAND_STATS_SCHEMA, out)
    n_class_rows = _write(class_counts_batches(conn, parcel_set_id=parcel_set.parcel_set_id, batch_rows=batch_rows),
                          CLASS_COUNTS_SCHEMA, classes_path(out))
    log.info("exported aoi=%s year=%d file=%s layout=%s rows=%d class_rows=%d seconds=%.2f",
             aoi, year, out, "wide" if wide else "long", n_rows, n_class_rows, time.perf_counter() - t0)
    return ExportResult(out, classes_path(out), n_rows, n_class_rows)
