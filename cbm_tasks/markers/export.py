"""Export the traffic lights of a parcel set with their parcels: GeoPackage (a QGIS layer) or CSV.

The rows are those of the view ``cbm.traffic_light_map`` (``sql/011_marker_lineage.sql``): one per
parcel and scheme, geometry in EPSG:4326. A GeoPackage holds one layer ``traffic_lights`` with
the geometry; a CSV holds the same columns without it. Files are written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

import numpy as np
import psycopg

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import BadInputError

__all__ = ["EXPORT_COLUMNS", "export_lights"]

log = logging.getLogger(__name__)

# columns are only appended; event_marker / event_date: the event that decided the light (none: empty)
EXPORT_COLUMNS = ("light_id", "parcel_id", "crop_code", "scheme", "colour", "reason", "rule_id", "rules_version",
                  "n_clear_obs", "longest_gap_days", "event_seq", "area_m2", "event_marker", "event_date")
_FORMATS = (".gpkg", ".csv")
_DTYPES = {"light_id": np.int64, "rules_version": np.int32, "n_clear_obs": np.int32, "longest_gap_days": np.float32,
           "event_seq": np.int16, "area_m2": np.float64}


def export_lights(conn: psycopg.Connection, *, aoi: str, year: int, out: Path, scheme: str | None = None) -> int:
    """Write the lights of *aoi*'s parcel set of *year* (only *scheme* when given) to *out*; return the row count.

    Raises:
        BadInputError: *out* does not end in .gpkg or .csv.
        NotFoundError: no parcel set for (aoi, year).
    """
    if out.suffix.lower() not in _FORMATS:
        raise BadInputError(f"export file {out}: must end in {' or '.join(_FORMATS)}")
    t0 = time.perf_counter()
    find_parcel_set(conn, aoi=aoi, year=year)  # a clear error for an unknown set
    rows = conn.execute(
        "SELECT light_id, parcel_id, crop_code, scheme, colour, reason, rule_id, rules_version, n_clear_obs, "
        "longest_gap_days, event_seq, area_m2, event_marker, to_char(event_date, 'YYYY-MM-DD'), ST_AsBinary(geom) "
        "FROM cbm.traffic_light_map "
        "WHERE aoi = %s AND year = %s AND (%s::text IS NULL OR scheme = %s) ORDER BY parcel_id, scheme",
        (aoi, year, scheme, scheme)).fetchall()
    partial = out.with_name(f".{out.name}.partial{out.suffix}")
    try:
        if out.suffix.lower() == ".csv":
            with partial.open("w", newline="") as stream:
                writer = csv.writer(stream, lineterminator="\n")
                writer.writerow(EXPORT_COLUMNS)
                writer.writerows(row[:-1] for row in rows)
        else:
            import pyogrio  # GDAL's GeoPackage driver, loaded only for this export

            columns = list(zip(*rows, strict=True)) if rows else [() for _ in range(len(EXPORT_COLUMNS) + 1)]
            fields = [np.array(values, dtype=_DTYPES.get(name, object))
                      for name, values in zip(EXPORT_COLUMNS, columns[:-1], strict=True)]
            pyogrio.raw.write(str(partial), np.array(columns[-1], dtype=object), fields, fields=list(EXPORT_COLUMNS),
                              geometry_type="MultiPolygon", crs="EPSG:4326", driver="GPKG", layer="traffic_lights")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    log.info("exported traffic lights aoi=%s year=%d scheme=%s rows=%d file=%s seconds=%.2f", aoi, year,
             scheme or "*", len(rows), out, time.perf_counter() - t0)
    return len(rows)
