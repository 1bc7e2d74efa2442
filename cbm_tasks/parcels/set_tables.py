"""The rows one parcel import writes, inside the import's transaction (``sets.load_parcels``).

The locked ``cbm.parcel_set`` row, the parcels by binary COPY, the time-series rows and
markers of retired parcels removed, the set's counts and extent, and the ``cbm.parcel_import``
record with its rejections. Each function takes the import's cursor; none commits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import psycopg
import shapely
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import TupleRow
from psycopg.types import TypeInfo

from cbm_tasks.aoi import id_limit_error
from cbm_tasks.errors import MigrationError, ParcelImportError, TransientError
from cbm_tasks.parcels.read import ParcelTable

__all__ = ["LockedSet", "copy_parcels", "delete_stale_rows", "lock_set", "record_import", "update_set"]

_COPY_CHUNK = 10_000  # geometries converted to EWKB at a time


class LockedSet(NamedTuple):
    """A parcel set's row, locked until commit: what an import needs of it."""

    set_id: int
    version: int  # the version of its current parcels (a new set: the column default, replaced by 1)
    created: bool  # the row was inserted by this import
    max_parcel_key: int  # the highest key ever given in the set: new parcels get keys above it
    inner_buffer_m: int  # the buffer its parcels were imported with (0 for a new set)


def lock_set(cur: psycopg.Cursor[TupleRow], aoi_id: int, year: int, table: ParcelTable) -> LockedSet:
    """Return the set's row (inserted if new), locked until commit."""
    # look up first: INSERT ... ON CONFLICT draws a (smallint) id even when the set exists
    exists = cur.execute(
        "SELECT 1 FROM cbm.parcel_set WHERE aoi_id = %s AND year = %s", (aoi_id, year)
    ).fetchone() is not None
    created = False
    if not exists:
        try:
            row = cur.execute(
                "INSERT INTO cbm.parcel_set (aoi_id, year, srid, source_file, source_layer) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (aoi_id, year) DO NOTHING RETURNING parcel_set_id",
                (aoi_id, year, table.srid, table.source_file, table.layer),
            ).fetchone()
        except psycopg.errors.SequenceGeneratorLimitExceeded as err:
            raise id_limit_error(err, table="cbm.parcel_set",
                                 what=f"the parcel set of AOI id {aoi_id} for {year}") from err
        created = row is not None
    locked = cur.execute(
        "SELECT parcel_set_id, version, max_parcel_key, inner_buffer_m FROM cbm.parcel_set "
        "WHERE aoi_id = %s AND year = %s FOR UPDATE",
        (aoi_id, year),
    ).fetchone()
    if locked is None:  # neither inserted nor there: a concurrent transaction deleted it
        raise TransientError(f"parcel set of AOI id {aoi_id} and {year}: deleted by another transaction meanwhile")
    row = LockedSet(int(locked[0]), int(locked[1]), created, int(locked[2]), int(locked[3]))
    if created:
        cur.execute("SELECT cbm.ensure_parcel_set_partitions(%s::smallint)", (row.set_id,))
    return row


class _EwkbDumper(Dumper):
    """Sends EWKB bytes as-is: PostGIS's binary input of geometry is EWKB."""

    format = Format.BINARY

    def dump(self, obj: bytes) -> bytes:
        return obj


def copy_parcels(cur: psycopg.Cursor[TupleRow], set_id: int, table: ParcelTable, keys: np.ndarray,
                  since: np.ndarray) -> None:
    """COPY the parcels in binary, converting geometries chunk by chunk to bound memory."""
    info = TypeInfo.fetch(cur.connection, "geometry")
    if info is None:
        raise ParcelImportError("PostGIS type 'geometry' not found: is the postgis extension installed?")
    # registered by oid on this cursor only, so bytes stay bytea everywhere else
    cur.adapters.register_dumper(None, type("GeometryEwkbDumper", (_EwkbDumper,), {"oid": info.oid}))
    with cur.copy(
        "COPY cbm.parcel (parcel_set_id, parcel_key, parcel_id, crop_code, crop_name, area_m2, geom, geom_version) "
        "FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int2", "int4", "text", "text", "text", "float8", info.oid, "int4"])
        for start in range(0, table.n_parcels, _COPY_CHUNK):
            stop = min(start + _COPY_CHUNK, table.n_parcels)
            # EWKB carries the SRID: cbm.parcel.geom has no type modifier, one column serves every CRS
            ewkb = shapely.to_wkb(
                shapely.set_srid(table.geometries[start:stop], table.srid), include_srid=True, byte_order=1
            )
            for i, geom in zip(range(start, stop), ewkb, strict=True):
                copy.write_row(
                    (
                        set_id,
                        int(keys[i]),
                        table.parcel_ids[i],
                        table.crop_codes[i],
                        table.crop_names[i],
                        float(table.areas_m2[i]),
                        geom,
                        int(since[i]),
                    )
                )


def delete_stale_rows(cur: psycopg.Cursor[TupleRow], set_id: int, stale_keys: Sequence[int]) -> int:
    """Delete the time series, markers and lights of the parcels *stale_keys* (removed, or their geometry changed).

    Returns:
        The number of time-series rows deleted.
    """
    if not stale_keys:
        return 0
    n = 0
    for statement in (
        "DELETE FROM cbm.parcel_obs WHERE parcel_set_id = %s AND parcel_key = ANY(%s)",
        "DELETE FROM cbm.parcel_class_counts WHERE parcel_set_id = %s AND parcel_key = ANY(%s)",
    ):
        n += cur.execute(statement, (set_id, list(stale_keys))).rowcount
    # markers, events and traffic lights of retired parcels (sql/011_marker_lineage.sql)
    cur.execute("SELECT cbm.forget_parcel_markers(%s::smallint, %s::integer[])", (set_id, list(stale_keys)))
    return n


_UPDATE_SET = """
UPDATE cbm.parcel_set s
SET srid = %(srid)s, version = %(version)s, source_file = %(source_file)s, source_layer = %(layer)s,
    n_parcels = %(n)s, imported_at = now(), inner_buffer_m = %(buffer)s,
    max_parcel_key = greatest(s.max_parcel_key,
                              (SELECT coalesce(max(parcel_key), 0) FROM cbm.parcel WHERE parcel_set_id = %(id)s)),
    -- the envelope is densified before the transform: a projected box's edges are curves in lon/lat
    extent = (SELECT ST_Envelope(ST_Transform(ST_Segmentize(box,
                     greatest(ST_XMax(box) - ST_XMin(box), ST_YMax(box) - ST_YMin(box)) / 32), 4326))
              FROM (SELECT ST_SetSRID(ST_Extent(geom)::geometry, %(srid)s) AS box
                    FROM cbm.parcel WHERE parcel_set_id = %(id)s) b)
WHERE parcel_set_id = %(id)s
"""


def update_set(cur: psycopg.Cursor[TupleRow], set_id: int, version: int, table: ParcelTable, *,
               inner_buffer_m: int = 0) -> None:
    """Record the new version, source, parcel count, highest key, extent (EPSG:4326) and inner buffer on the set."""
    cur.execute(
        _UPDATE_SET,
        {
            "srid": table.srid,
            "version": version,
            "source_file": table.source_file,
            "layer": table.layer,
            "n": table.n_parcels,
            "id": set_id,
            "buffer": inner_buffer_m,
        },
    )


def record_import(cur: psycopg.Cursor[TupleRow], set_id: int, table: ParcelTable, *, strict: bool,
                  inner_buffer_m: int = 0) -> int:
    """Write the ``cbm.parcel_import`` record, options and counts, and its rejections; return the import id."""
    options = {
        "id_column": list(table.columns.id),
        "crop_code_column": table.columns.crop_code,
        "crop_name_column": table.columns.crop_name,
        "srid": table.srid,
        "strict": strict,
        "inner_buffer_m": inner_buffer_m,
    }
    row = cur.execute(
        "INSERT INTO cbm.parcel_import (parcel_set_id, source_file, source_layer, options, n_read, n_imported, "
        "n_repaired, n_rejected) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s) RETURNING import_id",
        (
            set_id,
            table.source_file,
            table.layer,
            json.dumps(options),
            table.n_read,
            table.n_parcels,
            table.n_repaired,
            len(table.rejections),
        ),
    ).fetchone()
    if row is None:  # INSERT ... RETURNING gives a row unless the table was changed by hand
        raise MigrationError(f"{table.source_file}: cbm.parcel_import returned no id; is the schema migrated?")
    import_id = int(row[0])
    with cur.copy("COPY cbm.parcel_rejection (import_id, source_fid, parcel_id, reason) FROM STDIN") as copy:
        for r in table.rejections:
            copy.write_row((import_id, r.source_fid, r.parcel_id, r.reason))
    return import_id
