"""The per-parcel time series of an AOI and year as CSV or Parquet files (``cbm timeseries export``).

The content is :func:`cbm_tasks.timeseries.read.read_time_series`'s, streamed in batches.

File format (the marker engine's file input):

``FILE`` (long format, one row per parcel, image and band; ordered by parcel, time, image, band):
    parcel_id (string), obs_time (UTC timestamp, acquisition start), product_id (int32),
    source (product type: S2MSI2A, CARD-BS, ...), band (string), count (int32, valid pixels),
    mean, std (population), min, max, p25, p50, p75 (float32, physical units: scale and offset
    applied; numpy 'linear' percentiles). A band without a valid pixel in the parcel has
    count 0 and empty (null) statistics.

``FILE stem + "_classes" + suffix`` (categorical bands such as S2 SCL):
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

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import BadInputError
from cbm_tasks.timeseries.read import (
    BAND_STATS_SCHEMA,
    CLASS_COUNTS_SCHEMA,
    band_stats_batches,
    class_counts_batches,
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


def export_time_series(conn: psycopg.Connection, *, aoi: str, year: int, out: Path,
                       batch_rows: int = 50_000) -> ExportResult:
    """Write the time series of *aoi*'s parcel set of *year* to *out* and its class counts next to it.

    Args:
        conn: connection to the CbM database.
        aoi: AOI name.
        year: parcel-set year.
        out: ``.csv`` or ``.parquet`` file; the class counts go to :func:`classes_path` (out).
        batch_rows: rows fetched and written at a time (memory bound).

    Raises:
        BadInputError: *out* has another extension.
        NotFoundError: no parcel set for (aoi, year).
    """
    if out.suffix.lower() not in _FORMATS:
        raise BadInputError(f"export file {out}: extension must be one of {', '.join(_FORMATS)}, got {out.suffix!r}")
    out = out.with_suffix(out.suffix.lower())
    t0 = time.perf_counter()
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    n_rows = _write(band_stats_batches(conn, parcel_set_id=parcel_set.parcel_set_id, batch_rows=batch_rows),
                    BAND_STATS_SCHEMA, out)
    n_class_rows = _write(class_counts_batches(conn, parcel_set_id=parcel_set.parcel_set_id, batch_rows=batch_rows),
                          CLASS_COUNTS_SCHEMA, classes_path(out))
    log.info("exported aoi=%s year=%d file=%s rows=%d class_rows=%d seconds=%.2f",
             aoi, year, out, n_rows, n_class_rows, time.perf_counter() - t0)
    return ExportResult(out, classes_path(out), n_rows, n_class_rows)
