"""Parcel sets in PostGIS: import a register for one AOI and year, list the sets.

An import replaces the AOI/year set in ONE transaction: either the whole new set is
visible or the old one stays (a crash, a failed COPY or a rejected ``strict`` import leave
it untouched). Parcel keys (1..n, the label value in rasterised masks and the key of every
time-series row) are stable: a parcel id present before keeps its key, a new id gets
a key above every key the set ever gave. Time-series rows (``cbm.parcel_obs``, ``cbm.parcel_class_counts``) of
parcels that disappeared or whose geometry changed are deleted, since they describe a
polygon that no longer exists; those of unchanged parcels stay valid.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

# the listing lives with the AOI look-ups (light: `cbm parcels list` loads no pandas); kept importable here
from cbm_tasks.aoi import ParcelSetInfo, ensure_aoi, list_parcel_sets
from cbm_tasks.errors import ParcelImportError, TransientError
from cbm_tasks.parcels.columns import ParcelColumns
from cbm_tasks.parcels.geometry import geometry_md5
from cbm_tasks.parcels.inner_buffer import check_units, shrink
from cbm_tasks.parcels.keys import KeyPlan, plan_keys
from cbm_tasks.parcels.overlaps import (
    OverlapSummary,
    date_neighbours,
    find_overlaps,
    neighbours_of,
    overlapping_keys,
)
from cbm_tasks.parcels.read import ParcelTable, Rejection, read_parcels, write_reject_report
from cbm_tasks.parcels.set_tables import copy_parcels, delete_stale_rows, lock_set, record_import, update_set

__all__ = [
    "ImportReport",
    "ParcelSetInfo",
    "import_parcels",
    "list_parcel_sets",
    "load_parcels",
]

log = logging.getLogger(__name__)

_AOI_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # as the CHECK on cbm.aoi.name
_YEARS = range(2014, 2101)  # as the CHECK on cbm.parcel_set.year


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What one import did."""

    parcel_set_id: int
    aoi: str
    year: int
    srid: int
    n_read: int
    n_imported: int
    n_repaired: int
    n_rejected: int
    rejections: tuple[Rejection, ...]
    version: int = 1
    import_id: int = 0
    n_new: int = 0  # parcel ids not in the previous set
    n_changed: int = 0  # kept ids whose geometry changed
    n_removed: int = 0  # ids of the previous set absent now
    n_stale_rows: int = 0  # time-series rows deleted (removed and changed parcels)
    overlaps: OverlapSummary = OverlapSummary()  # parcels whose areas overlap (cbm.parcel_overlap)
    inner_buffer_m: int = 0  # the extraction reads the parcels shrunk by this (parcels.inner_buffer)
    n_unbuffered: int = 0  # parcels the inner buffer would empty: extracted whole
    columns: ParcelColumns | None = None  # the file's columns read as parcel id, crop code, crop name


def import_parcels(
    conn: psycopg.Connection,
    path: str | Path,
    *,
    aoi: str,
    year: int,
    id_column: str | None = None,
    crop_code_column: str | None = None,
    crop_name_column: str | None = None,
    layer: str | None = None,
    srid: int | None = None,
    strict: bool = False,
    reject_report: str | Path | None = None,
    inner_buffer_m: int | None = None,
) -> ImportReport:
    """Read a parcel register and make it the parcel set of *aoi* and *year*.

    Args:
        conn: PostGIS connection; the import runs in one transaction (a savepoint when the
            caller has one open).
        path: the register (see :func:`cbm_tasks.parcels.read.read_parcels` for the formats).
        aoi: AOI name (created when new), e.g. "nl_brp".
        year: campaign year, 2014..2100.
        id_column: see :func:`cbm_tasks.parcels.read.read_parcels`.
        crop_code_column: see ``read_parcels``.
        crop_name_column: see ``read_parcels``.
        layer: see ``read_parcels``.
        srid: see ``read_parcels``.
        strict: fail the whole import when any feature is rejected.
        reject_report: CSV file to write the rejections to (written also when strict fails).
        inner_buffer_m: extract from the parcels shrunk by this many metres (``parcels.inner_buffer``);
            None keeps the set's buffer (0 for a new set).

    Returns:
        The import report.

    Raises:
        ParcelImportError: the file cannot be imported (see ``read_parcels``), a rejection
            under *strict*, no parcel left, a bad AOI name or year, an SRID unknown to PostGIS,
            an inner buffer out of range or in a CRS not in metres or degrees.
    """
    _check_target(aoi, year)
    table = read_parcels(
        path,
        layer=layer,
        id_column=id_column,
        crop_code_column=crop_code_column,
        crop_name_column=crop_name_column,
        srid=srid,
    )
    if reject_report is not None:
        write_reject_report(reject_report, table.rejections)
    return load_parcels(conn, table, aoi=aoi, year=year, strict=strict, inner_buffer_m=inner_buffer_m)


def _check_target(aoi: str, year: int) -> None:
    if not _AOI_NAME.match(aoi):
        raise ParcelImportError(f"AOI name {aoi!r} is invalid: expected lower-case [a-z][a-z0-9_]*, at most 63 chars")
    if year not in _YEARS:
        raise ParcelImportError(f"year {year} is outside {_YEARS.start}..{_YEARS.stop - 1}")


def load_parcels(
    conn: psycopg.Connection, table: ParcelTable, *, aoi: str, year: int, strict: bool = False,
    inner_buffer_m: int | None = None,
) -> ImportReport:
    """Replace the parcel set of *aoi*/*year* with *table*, atomically.

    Args:
        conn: PostGIS connection (one transaction, a savepoint inside the caller's).
        table: the parcels, as read by :func:`cbm_tasks.parcels.read.read_parcels`.
        aoi: AOI name, created when new.
        year: campaign year.
        strict: refuse the import when *table* has any rejection.
        inner_buffer_m: see :func:`import_parcels`.

    Returns:
        The import report.

    Raises:
        ParcelImportError: see :func:`import_parcels`; also when PostGIS refuses a value.
        TransientError: the database connection was lost (re-running is safe).
    """
    t0 = time.perf_counter()
    _check_target(aoi, year)
    source = table.source_file
    if strict and table.rejections:
        shown = "; ".join(f"feature {r.source_fid} ({r.parcel_id}): {r.reason}" for r in table.rejections[:5])
        raise ParcelImportError(
            f"{source}: {len(table.rejections)} of {table.n_read} features rejected and strict is set: {shown}"
        )
    if table.n_parcels == 0:
        raise ParcelImportError(f"{source}: no importable parcel ({table.n_read} features read, all rejected)")
    digests = geometry_md5(table.geometries)
    try:
        done = _replace_set(conn, table, digests, aoi=aoi, year=year, strict=strict, inner_buffer_m=inner_buffer_m)
    except psycopg.OperationalError as err:
        raise TransientError(
            f"{source}: lost the database connection during the import; it was rolled back unless the loss "
            f"hit the commit itself, and re-running it is safe: {err}"
        ) from err
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as err:
        raise ParcelImportError(f"{source}: PostGIS refused the parcels (nothing was changed): {err}") from err
    set_id, plan = done.set_id, done.plan
    report = ImportReport(
        parcel_set_id=set_id,
        aoi=aoi,
        year=year,
        srid=table.srid,
        n_read=table.n_read,
        n_imported=table.n_parcels,
        n_repaired=table.n_repaired,
        n_rejected=len(table.rejections),
        rejections=table.rejections,
        version=done.version,
        import_id=done.import_id,
        n_new=plan.n_new,
        n_changed=plan.n_changed,
        n_removed=plan.n_removed,
        n_stale_rows=done.n_stale_rows,
        overlaps=done.overlaps,
        inner_buffer_m=done.inner_buffer_m,
        n_unbuffered=done.n_unbuffered,
        columns=table.columns,
    )
    overlaps = done.overlaps
    if overlaps.n_pairs:
        log.warning(
            "parcel set %d (%s %d) has %d overlapping parcel pairs (%d parcels, %.1f m2 shared, %d slivers); "
            "largest: %s",
            set_id, aoi, year, overlaps.n_pairs, overlaps.n_parcels, overlaps.area_m2, overlaps.n_slivers,
            ", ".join(f"{o.parcel_id_a}/{o.parcel_id_b} {o.area_m2:.3f} m2" for o in overlaps.largest[:5]),
        )
    log.info(
        "imported parcels aoi=%s year=%d parcel_set=%d version=%d srid=%d read=%d imported=%d repaired=%d "
        "rejected=%d new=%d changed=%d removed=%d stale_rows=%d inner_buffer_m=%d unbuffered=%d file=%s "
        "seconds=%.2f",
        aoi, year, set_id, done.version, table.srid, table.n_read, table.n_parcels, table.n_repaired,
        len(table.rejections), plan.n_new, plan.n_changed, plan.n_removed, done.n_stale_rows, done.inner_buffer_m,
        done.n_unbuffered, source,
        time.perf_counter() - t0,
    )  # fmt: skip
    return report


@dataclass(frozen=True, slots=True)
class _Replaced:
    """What the transaction of an import wrote."""

    set_id: int
    version: int
    import_id: int
    plan: KeyPlan
    n_stale_rows: int  # time-series and marker rows of retired or changed parcels removed
    overlaps: OverlapSummary
    inner_buffer_m: int
    n_unbuffered: int  # parcels the buffer would have emptied: extracted whole


def _replace_set(
    conn: psycopg.Connection, table: ParcelTable, digests: Sequence[str], *, aoi: str, year: int, strict: bool,
    inner_buffer_m: int | None,
) -> _Replaced:
    """Swap the set's parcels in one transaction."""
    source = table.source_file
    with conn.transaction(), conn.cursor() as cur:
        crs = cur.execute("SELECT proj4text, cbm.srid_is_geographic(srid) FROM spatial_ref_sys WHERE srid = %s",
                          (table.srid,)).fetchone()
        if crs is None:
            raise ParcelImportError(f"{source}: SRID {table.srid} is not in PostGIS spatial_ref_sys")
        locked = lock_set(cur, ensure_aoi(conn, aoi), year, table)
        set_id, version, created, was_buffer = locked.set_id, locked.version, locked.created, locked.inner_buffer_m
        buffer_m = was_buffer if inner_buffer_m is None else inner_buffer_m
        geographic = bool(crs[1])
        check_units(str(crs[0] or ""), table.srid, buffer_m, geographic=geographic, source=source)
        stored = cur.execute(
            "SELECT parcel_id, parcel_key, md5(ST_AsBinary(geom, 'NDR')) || ':' || ST_SRID(geom), geom_version "
            "FROM cbm.parcel WHERE parcel_set_id = %s",
            (set_id,),
        ).fetchall()
        # another buffer changes every parcel's extraction geometry: each digest carries the buffer
        old = [(pid, key, f"{digest}:b{was_buffer}") for pid, key, digest, _ in stored]
        old_since = {pid: int(since) for pid, _, _, since in stored}
        plan = plan_keys(old, table.parcel_ids, [f"{d}:{table.srid}:b{buffer_m}" for d in digests],
                         key_floor=locked.max_parcel_key)
        version = 1 if created else version + 1
        # the version each geometry dates from: images extracted before it lack exactly these parcels
        since = np.fromiter((version if fresh else old_since[pid] for pid, fresh in zip(table.parcel_ids, plan.fresh,
                                                                                       strict=True)),
                            np.int32, table.n_parcels)
        old_neighbours = neighbours_of(cur, set_id, plan.stale_keys)
        was_overlapping = overlapping_keys(cur, set_id)
        cur.execute("DELETE FROM cbm.parcel WHERE parcel_set_id = %s", (set_id,))
        copy_parcels(cur, set_id, table, plan.keys, since)
        n_unbuffered = shrink(cur, set_id, buffer_m, geographic=geographic)
        # statistics of the rows just written, for the self-join that finds overlaps: without them (a first
        # import, the table analysed while empty) PostgreSQL may join 100,000 parcels pair by pair (minutes)
        cur.execute("ANALYZE cbm.parcel")
        n_stale = delete_stale_rows(cur, set_id, plan.stale_keys)
        overlaps = find_overlaps(cur, set_id)
        if not created:
            switched = sorted(was_overlapping ^ overlapping_keys(cur, set_id))
            date_neighbours(cur, set_id, version, [*old_neighbours, *switched, *neighbours_of(cur, set_id, switched)])
        update_set(cur, set_id, version, table, inner_buffer_m=buffer_m)
        import_id = record_import(cur, set_id, table, strict=strict, inner_buffer_m=buffer_m)
    return _Replaced(set_id, version, import_id, plan, n_stale, overlaps, buffer_m, n_unbuffered)

