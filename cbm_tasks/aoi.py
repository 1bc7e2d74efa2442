"""Areas of interest and their parcel sets: the one place that looks them up by name.

An AOI (``cbm.aoi``) is a named area a paying agency monitors; each has at most one parcel
set (``cbm.parcel_set``) per year. Every module that needs an AOI's id, its years, its
parcel set or its search area asks here, so the SQL that finds an AOI by name exists once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg

from cbm_tasks.errors import IdLimitError, NotFoundError

__all__ = [
    "ParcelSetInfo",
    "ParcelSetRef",
    "aoi_footprint_wkt",
    "aoi_id",
    "ensure_aoi",
    "id_limit_error",
    "find_parcel_set",
    "list_aois",
    "list_parcel_sets",
    "parcel_set_years",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ParcelSetRef:
    """The parcel set of an AOI and year.

    ``database`` names the database that holds the set (cluster system identifier / database
    oid): parcel set ids are unique only within one database, and label rasters cached on disk
    are shared by every deployment and test database of a machine (``extraction.label_cache``).
    """

    parcel_set_id: int
    version: int
    srid: int
    n_parcels: int
    database: str = ""


def id_limit_error(err: psycopg.errors.SequenceGeneratorLimitExceeded, *, table: str, what: str) -> IdLimitError:
    """Return the error that says the ids of *table* are used up, naming the limit and what to do."""
    return IdLimitError(
        f"cannot create {what}: every id of {table} is used ({str(err).strip()}); ids are smallint, "
        "at most 32767. Delete unused rows, or have an administrator widen the column in a migration"
    )


def ensure_aoi(conn: psycopg.Connection, name: str, *, description: str | None = None) -> int:
    """Return the id of AOI *name*, creating it when absent.

    Looks the AOI up first: ``INSERT ... ON CONFLICT DO NOTHING`` draws an id from the
    (smallint) sequence even when the row exists, and is only run for a new AOI.

    Raises:
        IdLimitError: the AOI is new and all AOI ids are used.
    """
    row = conn.execute("SELECT aoi_id FROM cbm.aoi WHERE name = %s", (name,)).fetchone()
    if row is not None:
        return int(row[0])
    try:
        row = conn.execute(
            "INSERT INTO cbm.aoi (name, description) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING "
            "RETURNING aoi_id",
            (name, description),
        ).fetchone()
    except psycopg.errors.SequenceGeneratorLimitExceeded as err:
        raise id_limit_error(err, table="cbm.aoi", what=f"AOI {name!r}") from err
    if row is not None:
        log.info("created aoi=%s aoi_id=%d", name, row[0])
        return int(row[0])
    return aoi_id(conn, name)  # created by a concurrent transaction meanwhile


def aoi_id(conn: psycopg.Connection, name: str) -> int:
    """Return the id of AOI *name*.

    Raises:
        NotFoundError: no such AOI (the message lists the known ones).
    """
    row = conn.execute("SELECT aoi_id FROM cbm.aoi WHERE name = %s", (name,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM cbm.aoi ORDER BY name").fetchall()]
        raise NotFoundError(f"AOI {name!r} does not exist; known AOIs: {', '.join(known) or 'none'}")
    return int(row[0])


def list_aois(conn: psycopg.Connection) -> list[str]:
    """Return the AOIs that have at least one parcel set (the ones worth polling), by name."""
    rows = conn.execute(
        "SELECT DISTINCT a.name FROM cbm.aoi a JOIN cbm.parcel_set s USING (aoi_id) ORDER BY a.name"
    ).fetchall()
    return [str(row[0]) for row in rows]


def parcel_set_years(conn: psycopg.Connection, aoi: str) -> list[int]:
    """Return the years for which *aoi* has a parcel set, ascending (empty for an unknown AOI)."""
    rows = conn.execute(
        "SELECT s.year FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %s ORDER BY 1", (aoi,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def find_parcel_set(conn: psycopg.Connection, *, aoi: str, year: int) -> ParcelSetRef:
    """Return the parcel set of *aoi* for *year*.

    Raises:
        NotFoundError: the AOI has no parcel set for that year (the message lists its years).
    """
    row = conn.execute(
        "SELECT s.parcel_set_id, s.version, s.srid, s.n_parcels, "
        "(SELECT system_identifier FROM pg_control_system())::text || '/' "
        "|| (SELECT oid FROM pg_database WHERE datname = current_database())::text "
        "FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %s AND s.year = %s",
        (aoi, year),
    ).fetchone()
    if row is None:
        years = parcel_set_years(conn, aoi)
        raise NotFoundError(
            f"AOI {aoi!r} has no parcel set for {year}; years with parcels: {', '.join(map(str, years)) or 'none'}"
        )
    return ParcelSetRef(int(row[0]), int(row[1]), int(row[2]), int(row[3]), str(row[4]))


def aoi_footprint_wkt(conn: psycopg.Connection, aoi: str) -> str:
    """Return the area to search the catalogue over: the union of the AOI's parcel-set extents (EPSG:4326).

    Raises:
        NotFoundError: the AOI has no parcel set (import parcels first).
    """
    row = conn.execute(
        "SELECT ST_AsText(ST_Union(s.extent)) FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) "
        "WHERE a.name = %s AND s.extent IS NOT NULL",
        (aoi,),
    ).fetchone()
    if row is None or row[0] is None:
        raise NotFoundError(f"AOI {aoi!r} has no parcel set with an extent; import parcels first "
                            "(cbm parcels import FILE --aoi NAME --year YEAR)")
    return str(row[0])


@dataclass(frozen=True, slots=True)
class ParcelSetInfo:
    """One parcel set as listed by :func:`list_parcel_sets`."""

    parcel_set_id: int
    aoi: str
    year: int
    srid: int
    version: int
    n_parcels: int
    source_file: str
    source_layer: str | None
    imported_at: datetime
    inner_buffer_m: int = 0  # the extraction reads the parcels shrunk by this (parcels.inner_buffer)


def list_parcel_sets(conn: psycopg.Connection, *, aoi: str | None = None) -> list[ParcelSetInfo]:
    """Return the parcel sets, by AOI name and year; only those of *aoi* when given."""
    rows = conn.execute(
        "SELECT s.parcel_set_id, a.name, s.year, s.srid, s.version, s.n_parcels, s.source_file, s.source_layer, "
        "s.imported_at, s.inner_buffer_m FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) "
        "WHERE %(aoi)s::text IS NULL OR a.name = %(aoi)s ORDER BY a.name, s.year",
        {"aoi": aoi},
    ).fetchall()
    return [ParcelSetInfo(*row) for row in rows]
