"""Marker events as one PostgreSQL binary ``COPY`` stream, encoded by NumPy without a Python object per event.

The columns are those of ``cbm.marker_event`` that :mod:`cbm_tasks.markers.db_write` fills
(``sql/007_markers.sql``, ``011``, ``015``): ``COPY_COLUMNS``. Rows differ in length only through
the marker and sources texts, which products are NULL and how many images ``evidence`` lists; events
that agree in those share one fixed-width record layout, so each such group is one NumPy structured
array turned into bytes at once. Rows are written group by group (the table has no order; its key is
(marker_run_id, parcel_key, marker, seq)).

Binary COPY format: PostgreSQL documentation, "COPY", section "Binary Format"; a date is days since
2000-01-01, an array is (ndim, has-null flag, element type oid, per dimension size and lower bound)
followed by (length, value) per element.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from cbm_tasks.markers.engine import MARKERS, MarkerResult, dated_products, distinct_products, sources_text

__all__ = ["COPY_COLUMNS", "events_copy_payload"]

COPY_COLUMNS = ("marker_run_id", "parcel_key", "marker", "seq", "event_start", "main_date", "event_end", "value",
                "confidence", "sources", "start_product", "main_product", "end_product", "evidence")
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_INT4_OID = 23
_PG_EPOCH_DAY = 10_957  # 2000-01-01 in days since 1970-01-01


def _packed_evidence(products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (ids, count): per event the distinct ids of *products* (n, k) moved to the left, and their count.

    The same images, in the same order, as :func:`cbm_tasks.markers.engine.evidence_lists`.
    """
    ids = distinct_products(products)
    order = np.argsort(ids < 0, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1), (ids >= 0).sum(axis=1)


def _group_records(n: int, fields: list[tuple[str, Any]]) -> bytes:
    """Encode *n* rows of one layout: *fields* are (NumPy type, value per row or one for all)."""
    dtype = np.dtype([(f"f{i}", kind) for i, (kind, _) in enumerate(fields)])
    records = np.empty(n, dtype)
    for i, (_, value) in enumerate(fields):
        records[f"f{i}"] = value
    return records.tobytes()


def events_copy_payload(marker_run_id: int, parcel_keys: np.ndarray, result: MarkerResult) -> bytes:
    """Return the binary COPY stream of every event of *result* for ``COPY cbm.marker_event (COPY_COLUMNS)``.

    Args:
        marker_run_id: the run the events belong to.
        parcel_keys: int (n_parcels,), the parcel key of each index of ``result.parcel_ids``.
        result: the markers of the batch.

    Returns:
        Header, one row per event and trailer; dates by day, value and confidence as float4
        (confidence clipped to [0, 1]), products NULL where an event has none.
    """
    n = result.n_events
    if n == 0:
        return _HEADER + _TRAILER
    dated = dated_products(result.products)
    evidence, n_evidence = _packed_evidence(result.products)
    nulls = (dated < 0).astype(np.int64) @ np.array([1, 2, 4])
    layout = (((result.marker.astype(np.int64) * 64 + result.sources) * 8 + n_evidence) * 8 + nulls)
    keys, group = np.unique(layout, return_inverse=True)
    parcel_key = parcel_keys[result.parcel].astype(np.int64)
    days = [np.floor(d).astype(np.int64) - _PG_EPOCH_DAY for d in (result.start, result.main, result.end)]
    confidence = np.clip(result.confidence, 0.0, 1.0)
    pieces = [_HEADER]
    for code, key in enumerate(keys.tolist()):
        rows = np.flatnonzero(group == code)
        marker = MARKERS[int(result.marker[rows[0]])].encode()
        sources = sources_text(int(result.sources[rows[0]])).encode()
        count = int(n_evidence[rows[0]])
        fields: list[tuple[str, Any]] = [
            (">i2", len(COPY_COLUMNS)), (">i4", 4), (">i4", marker_run_id), (">i4", 4), (">i4", parcel_key[rows]),
            (">i4", len(marker)), (f"S{len(marker)}", marker), (">i4", 2), (">i2", result.seq[rows])]
        for column in days:
            fields += [(">i4", 4), (">i4", column[rows])]
        fields += [(">i4", 4), (">f4", result.value[rows]), (">i4", 4), (">f4", confidence[rows]),
                   (">i4", len(sources)), (f"S{len(sources)}", sources)]
        for role in range(3):
            fields += [(">i4", -1)] if (key >> role) & 1 else [(">i4", 4), (">i4", dated[rows, role])]
        if count == 0:
            fields += [(">i4", 12), (">i4", 0), (">i4", 0), (">i4", _INT4_OID)]
        else:
            fields += [(">i4", 20 + 8 * count), (">i4", 1), (">i4", 0), (">i4", _INT4_OID), (">i4", count), (">i4", 1)]
            for k in range(count):
                fields += [(">i4", 4), (">i4", evidence[rows, k])]
        pieces.append(_group_records(len(rows), fields))
    pieces.append(_TRAILER)
    return b"".join(pieces)
