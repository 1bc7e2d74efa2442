"""Write marker events and traffic lights as CSV files (and scores as JSON), whole or not at all.

Files are written under a temporary name in the target folder and renamed when complete, so a
failed run leaves no partial file and a re-run replaces the files. Rows come in a fixed order and
floats in a fixed format, so running twice on the same input gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cbm_tasks.errors import BadInputError
from cbm_tasks.markers.engine import EventRow

__all__ = ["EVENT_COLUMNS", "LIGHT_COLUMNS", "read_crops", "write_csv", "write_events", "write_json"]

# contracts read by external checks: columns are only ever appended
EVENT_COLUMNS = ("parcel_id", "marker", "seq", "start_date", "main_date", "end_date", "confidence", "value",
                 "sources", "products")
# season: a file may hold several years; each parcel gets a light per scheme and season it has data in
LIGHT_COLUMNS = ("parcel_id", "scheme", "colour", "reason", "season")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write *rows* under *header* to *path* atomically; return the number of rows."""
    partial = path.with_name(f".{path.name}.partial")
    n_rows = 0
    try:
        with partial.open("w", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                n_rows += 1
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return n_rows


def write_json(path: Path, document: Any) -> None:
    """Write *document* as indented JSON to *path* atomically (as :func:`write_csv`)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_events(path: Path, events: Iterable[EventRow]) -> int:
    """Write events.csv (EVENT_COLUMNS; dates YYYY-MM-DD, confidence 3 and value 4 decimals).

    ``products`` lists the ids of the images that prove the event, ``;``-joined: the S2 images dated
    start, main and end, then the S1 coherence pairs that dated or confirmed it (``PRODUCT_ROLES``);
    it is empty when the time series had no ``product_id`` column.
    """
    return write_csv(path, EVENT_COLUMNS, (
        (e.parcel_id, e.marker, e.seq, e.start_date, e.main_date, e.end_date, f"{e.confidence:.3f}",
         f"{e.value:.4f}", e.sources, e.products) for e in events))


def read_crops(path: Path, *, column: str = "crop_code") -> dict[str, str]:
    """Read parcel id -> crop code from a CSV / Parquet file with ``parcel_id`` and *column*.

    The time-series file itself may carry the column; the first non-empty value per parcel counts.

    Raises:
        BadInputError: the file cannot be read or lacks the columns.
    """
    from cbm_tasks.markers.table_file import read_table  # the reader's CSV/Parquet handling and errors

    table = read_table(path, ("parcel_id", column))
    crops: dict[str, str] = {}
    for parcel_id, crop in zip(table.column("parcel_id").to_pylist(), table.column(column).to_pylist(),
                               strict=True):
        if parcel_id is None:
            raise BadInputError(f"crop file {path}: empty parcel_id")
        if crop is not None and str(crop) != "" and str(parcel_id) not in crops:
            text = str(crop)
            crops[str(parcel_id)] = text[:-2] if text.endswith(".0") else text
    return crops
