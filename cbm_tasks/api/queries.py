"""Read side of the REST API: parcels, peers, time series, markers and traffic lights.

Every function takes an open connection (the API's are ``cbm_reader`` connections) and a
:class:`ParcelSet` resolved by :func:`parcel_set`, which is where authorisation happens: a
principal that is not granted the AOI gets :class:`AccessDeniedError` whether or not the AOI
exists, so the answer does not reveal other agencies' AOIs. Values go in as parameters only.

Parcels are addressed by ``parcel_key`` (the compact integer key of the set, stable across
re-imports; JRC's ``ogc_fid``/``pid``) or by the declared ``parcel_id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.api.auth import Principal
from cbm_tasks.api.validation import Source
from cbm_tasks.errors import CbmError, NotFoundError
from cbm_tasks.timeseries.write import STATS_PER_BAND

__all__ = [
    "PARCEL_COLUMNS",
    "STAT_NAMES",
    "AccessDeniedError",
    "BandRow",
    "ParcelSet",
    "aoi_parcel_sets",
    "class_counts",
    "check_parcel",
    "parcel_by_key",
    "parcel_by_pid",
    "parcel_set",
    "parcels_at",
    "parcels_by_id",
    "parcels_in_polygon",
    "peers",
    "product_names",
    "reaches_set",
    "require_grant",
    "set_overview",
    "time_series",
]

STAT_NAMES = ("count", "mean", "std", "min", "max", "p25", "p50", "p75")  # order in parcel_obs.stats
PARCEL_COLUMNS = ("parcel_key", "parcel_id", "crop_code", "crop_name", "area_m2", "srid", "clon", "clat")


class AccessDeniedError(CbmError):
    """The principal is not granted the AOI (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class ParcelSet:
    """The parcel set of an AOI and year, as the API addresses it."""

    aoi: str
    year: int
    parcel_set_id: int
    srid: int
    n_parcels: int


@dataclass(frozen=True, slots=True)
class BandRow:
    """One band of one image over one parcel (physical units; NaN where count is 0)."""

    obs_time: datetime
    product_id: int
    source: str
    band: str
    stats: tuple[float, ...]  # STAT_NAMES order


def parcel_set(conn: psycopg.Connection, principal: Principal, aoi: str, year: int) -> ParcelSet:
    """Return the parcel set of (*aoi*, *year*) when *principal* may read *aoi*.

    Raises:
        AccessDeniedError: *aoi* is not granted to the principal (existing or not).
        NotFoundError: the AOI has no parcel set for *year*.
    """
    require_grant(principal, aoi)
    ref = find_parcel_set(conn, aoi=aoi, year=year)
    return ParcelSet(aoi, year, ref.parcel_set_id, ref.srid, ref.n_parcels)


def require_grant(principal: Principal, aoi: str) -> None:
    """Raise AccessDeniedError unless *principal* may read *aoi* (whether it exists or not)."""
    if aoi not in principal.aois:
        raise AccessDeniedError(f"user {principal.name} is not granted AOI {aoi!r}")


def aoi_parcel_sets(conn: psycopg.Connection, principal: Principal) -> list[dict[str, Any]]:
    """Return the parcel sets (AOI, year, parcels, CRS, lon/lat extent, inner buffer) of the granted AOIs.

    ``inner_buffer_m``: the statistics come from the parcels shrunk by it (``parcels.inner_buffer``).
    """
    rows = conn.execute(
        "SELECT a.name, s.year, s.n_parcels, s.srid, ST_XMin(s.extent), ST_YMin(s.extent), ST_XMax(s.extent), "
        "ST_YMax(s.extent), s.inner_buffer_m FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) "
        "WHERE a.name = ANY(%s) ORDER BY a.name, s.year",
        (sorted(principal.aois),),
    ).fetchall()
    return [{"aoi": r[0], "year": r[1], "n_parcels": r[2], "srid": r[3],
             "bbox": None if r[4] is None else [r[4], r[5], r[6], r[7]], "inner_buffer_m": r[8]} for r in rows]


def aoi_descriptions(conn: psycopg.Connection, names: list[str]) -> dict[str, str | None]:
    """Return the description of each AOI of *names* (callers pass granted AOIs only)."""
    rows = conn.execute("SELECT name, description FROM cbm.aoi WHERE name = ANY(%s)", (names,)).fetchall()
    return {str(name): description for name, description in rows}


def _geometry_sql(geometry: str | None) -> sql.Composable:
    if geometry == "wgs84":
        return sql.SQL("ST_AsGeoJSON(ST_Transform(p.geom, 4326), 7)")
    if geometry == "native":
        return sql.SQL("ST_AsGeoJSON(p.geom, 3)")
    return sql.SQL("NULL::text")


def _parcel_query(where: sql.Composable, geometry: str | None, *, order: str = "p.parcel_key") -> sql.Composed:
    return sql.SQL(
        "SELECT p.parcel_key, p.parcel_id, p.crop_code, p.crop_name, p.area_m2, ST_SRID(p.geom), "
        "ST_X(c.pt), ST_Y(c.pt), {geom} "
        "FROM cbm.parcel p CROSS JOIN LATERAL (SELECT ST_Transform(ST_Centroid(p.geom), 4326) AS pt) c "
        "WHERE p.parcel_set_id = %(set)s AND {where} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
    ).format(geom=_geometry_sql(geometry), where=where, order=sql.SQL(order))


def _parcels(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        record = dict(zip(PARCEL_COLUMNS, row[:8], strict=True))
        if row[8] is not None:
            record["geometry"] = json.loads(row[8])
        out.append(record)
    return out


def reaches_set(conn: psycopg.Connection, ps: ParcelSet, wkt: str) -> bool:
    """Return whether a WGS84 geometry (WKT) comes within ~1 km of the set's lon/lat extent.

    Only then is it transformed to the set's CRS: far outside, the transform can fail (a point
    outside a UTM zone's domain is a PostGIS error, not an empty answer), and no parcel matches.
    """
    row = conn.execute("SELECT coalesce(ST_Intersects(ST_Expand(extent, 0.01), ST_GeomFromText(%s, 4326)), false) "
                       "FROM cbm.parcel_set WHERE parcel_set_id = %s", (wkt, ps.parcel_set_id)).fetchone()
    return bool(row and row[0])


def _select_parcels(conn: psycopg.Connection, ps: ParcelSet, where: sql.Composable, params: dict[str, Any], *,
                    geometry: str | None, limit: int, offset: int = 0,
                    order: str = "p.parcel_key") -> list[dict[str, Any]]:
    """One page (*limit*, *offset*, by *order*) of the set's parcels matching *where*, as PARCEL_COLUMNS records."""
    rows = conn.execute(_parcel_query(where, geometry, order=order),
                        {**params, "set": ps.parcel_set_id, "limit": limit, "offset": offset}).fetchall()
    return _parcels(rows)


def parcel_by_key(conn: psycopg.Connection, ps: ParcelSet, key: int, *,
                  geometry: str | None = None) -> dict[str, Any]:
    """Return parcel *key* of the set (optionally with its geometry: ``wgs84`` or ``native``).

    Raises:
        NotFoundError: no such parcel.
    """
    found = _select_parcels(conn, ps, sql.SQL("p.parcel_key = %(key)s"), {"key": key}, geometry=geometry, limit=1)
    if not found:
        raise NotFoundError(f"parcel {key} is not in the {ps.year} parcel set of AOI {ps.aoi!r}")
    return found[0]


def parcel_by_pid(conn: psycopg.Connection, ps: ParcelSet, pid: str, *,
                  geometry: str | None = None) -> dict[str, Any]:
    """Return the parcel JRC's ``pid`` names: the parcel of that key (``ogc_fid``), else of that declared id.

    JRC's deployments configured either as the parcel id its queries take (``767110201/3`` in JRC's
    Czech notebook). A number that is both one parcel's key and another's declared id is the key.

    Raises:
        NotFoundError: no parcel has that key or declared id.
    """
    key = int(pid) if re.fullmatch(r"[0-9]{1,10}", pid) and int(pid) <= 2_147_483_647 else None
    found = _select_parcels(conn, ps, sql.SQL("(p.parcel_key = %(key)s OR p.parcel_id = %(pid)s)"),
                            {"key": key, "pid": pid}, geometry=geometry, limit=1,
                            order="p.parcel_key = %(key)s DESC NULLS LAST")
    if not found:
        raise NotFoundError(f"parcel {pid[:100]!r} is not in the {ps.year} parcel set of AOI {ps.aoi!r} "
                            "(neither a parcel key nor a declared parcel id)")
    return found[0]


def parcels_by_id(conn: psycopg.Connection, ps: ParcelSet, parcel_id: str, *,
                  geometry: str | None = None) -> list[dict[str, Any]]:
    """Return the parcel whose declared id is *parcel_id* (a list of 0 or 1)."""
    return _select_parcels(conn, ps, sql.SQL("p.parcel_id = %(pid)s"), {"pid": parcel_id}, geometry=geometry,
                           limit=1)


def parcels_at(conn: psycopg.Connection, ps: ParcelSet, lon: float, lat: float, *,
               geometry: str | None = None) -> list[dict[str, Any]]:
    """Return the parcels that contain the WGS84 point (*lon*, *lat*) (overlapping parcels: several)."""
    if not reaches_set(conn, ps, Point(lon, lat).wkt):
        return []
    where = sql.SQL("ST_Intersects(p.geom, ST_Transform(ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326), "
                    "%(srid)s::integer))")
    return _select_parcels(conn, ps, where, {"lon": lon, "lat": lat, "srid": ps.srid}, geometry=geometry,
                           limit=100)


def parcels_in_polygon(conn: psycopg.Connection, ps: ParcelSet, polygon: BaseGeometry, *, limit: int,
                       offset: int = 0, geometry: str | None = None) -> list[dict[str, Any]]:
    """Return the parcels that intersect a WGS84 *polygon* (validated by validation.parse_polygon), paged."""
    if not reaches_set(conn, ps, polygon.wkt):
        return []
    where = sql.SQL("ST_Intersects(p.geom, ST_Transform(ST_GeomFromText(%(wkt)s, 4326), %(srid)s::integer))")
    return _select_parcels(conn, ps, where, {"wkt": polygon.wkt, "srid": ps.srid}, geometry=geometry,
                           limit=limit, offset=offset)


def peers(conn: psycopg.Connection, ps: ParcelSet, key: int, *, distance_m: float,
          limit: int) -> list[dict[str, Any]]:
    """Return up to *limit* parcels with the same crop code as parcel *key* within *distance_m*, nearest first.

    Distances are between the outlines (0 for neighbours), in metres: planar in a projected
    CRS, on the spheroid for a lon/lat set.

    Raises:
        NotFoundError: no parcel *key*.
    """
    parcel_by_key(conn, ps, key)
    lonlat = conn.execute("SELECT cbm.srid_is_geographic(%s)", (ps.srid,)).fetchone()
    geographic = bool(lonlat and lonlat[0])  # distances of a lon/lat set in metres need geography
    dist = "ST_Distance(p.geom::geography, me.geom::geography)" if geographic else "ST_Distance(p.geom, me.geom)"
    within = ("ST_DWithin(p.geom::geography, me.geom::geography, %(d)s)" if geographic
              else "ST_DWithin(p.geom, me.geom, %(d)s)")
    query = sql.SQL(
        "WITH me AS (SELECT geom, crop_code FROM cbm.parcel WHERE parcel_set_id = %(set)s AND parcel_key = %(key)s) "
        "SELECT p.parcel_key, p.parcel_id, p.crop_code, {dist} AS distance_m FROM cbm.parcel p, me "
        "WHERE p.parcel_set_id = %(set)s AND p.parcel_key <> %(key)s "
        "AND p.crop_code IS NOT DISTINCT FROM me.crop_code AND {within} "
        "ORDER BY distance_m, p.parcel_key LIMIT %(limit)s"
    ).format(dist=sql.SQL(dist), within=sql.SQL(within))
    rows = conn.execute(query, {"set": ps.parcel_set_id, "key": key, "d": distance_m, "limit": limit}).fetchall()
    return [{"parcel_key": r[0], "parcel_id": r[1], "crop_code": r[2], "distance_m": r[3]} for r in rows]


def check_parcel(conn: psycopg.Connection, ps: ParcelSet, key: int) -> None:
    """Raise NotFoundError when parcel *key* is not in the set."""
    declared_id(conn, ps, key)


def declared_id(conn: psycopg.Connection, ps: ParcelSet, key: int) -> str:
    """Return the parcel id the agency declared for parcel *key*.

    Raises:
        NotFoundError: no parcel *key* in the set.
    """
    row = conn.execute("SELECT parcel_id FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_key = %s",
                       (ps.parcel_set_id, key)).fetchone()
    if row is None:
        raise NotFoundError(f"parcel {key} is not in the {ps.year} parcel set of AOI {ps.aoi!r}")
    return str(row[0])


# the rows of one parcel in a per-image table (cbm.parcel_obs, cbm.parcel_class_counts, alias o) with the
# image's extraction (e) and product (p), for a source's product types in a window of acquisition dates
_PARCEL_IMAGE_ROWS = (
    "SELECT {columns} FROM {table} o "
    "JOIN cbm.extraction e ON e.parcel_set_id = o.parcel_set_id AND e.product_id = o.product_id "
    "JOIN cbm.product p ON p.product_id = o.product_id "
    "WHERE o.parcel_set_id = %(set)s AND o.parcel_key = %(key)s AND p.product_type = ANY(%(types)s) "
    "AND (%(start)s::date IS NULL OR p.acquired_at >= %(start)s::date) "
    "AND (%(end)s::date IS NULL OR p.acquired_at < %(end)s::date) "
    "ORDER BY {order}"
)


def _parcel_image_rows(conn: psycopg.Connection, ps: ParcelSet, key: int, src: Source, start: date | None,
                       end: date | None, *, table: str, columns: str, order: str,
                       binary: bool = False) -> list[tuple[Any, ...]]:
    """Rows of parcel *key* in *table*, per image of *src* acquired from *start* to *end* (UTC days, inclusive).

    Raises:
        NotFoundError: no parcel *key*.
    """
    check_parcel(conn, ps, key)
    query = sql.SQL(_PARCEL_IMAGE_ROWS).format(columns=sql.SQL(columns), table=sql.Identifier("cbm", table),
                                               order=sql.SQL(order))
    params = {"set": ps.parcel_set_id, "key": key, "types": list(src.product_types),
              "start": start, "end": None if end is None else end + timedelta(days=1)}
    return conn.execute(query, params, binary=binary).fetchall()


def time_series(conn: psycopg.Connection, ps: ParcelSet, key: int, src: Source, *,
                bands: Sequence[str] | None = None, start: date | None = None,
                end: date | None = None) -> list[BandRow]:
    """Return the band statistics of parcel *key* from *src*'s products, by time, product and band order.

    Args:
        conn: a cbm_reader connection.
        ps: the parcel set (authorised by parcel_set).
        key: the parcel key.
        src: the source (product types).
        bands: band names to keep (None = every band extracted).
        start: first acquisition date (UTC), inclusive; None = open.
        end: last acquisition date (UTC), inclusive; None = open.

    Raises:
        NotFoundError: no parcel *key*.
    """
    rows = _parcel_image_rows(
        conn, ps, key, src, start, end, table="parcel_obs",
        columns="p.acquired_at, o.product_id, p.product_type, e.bands, o.stats", order="p.acquired_at, o.product_id",
        binary=True,  # real[] arrive as floats, not as text to parse: about half the client time
    )
    wanted = None if bands is None else set(bands)
    out: list[BandRow] = []
    for obs_time, product_id, product_type, band_names, stats in rows:
        for i, band in enumerate(band_names):
            if wanted is None or band in wanted:
                block = stats[i * STATS_PER_BAND:(i + 1) * STATS_PER_BAND]
                out.append(BandRow(obs_time, product_id, product_type, band, tuple(block)))
    return out


def class_counts(conn: psycopg.Connection, ps: ParcelSet, key: int, src: Source, *,
                 start: date | None = None, end: date | None = None) -> list[tuple[datetime, int, str, list[int]]]:
    """Return (obs_time, product_id, band, counts per class value) of parcel *key*'s categorical bands.

    Raises:
        NotFoundError: no parcel *key*.
    """
    rows = _parcel_image_rows(
        conn, ps, key, src, start, end, table="parcel_class_counts",
        columns="p.acquired_at, o.product_id, e.class_bands[o.class_band], o.counts",
        order="p.acquired_at, o.product_id, o.class_band",
    )
    return [(r[0], int(r[1]), str(r[2]), list(r[3])) for r in rows]


def set_overview(conn: psycopg.Connection, ps: ParcelSet, *, n_examples: int = 5) -> tuple[list[str], list[int]]:
    """Return the product types extracted for parcel set *ps* and its first *n_examples* parcel keys."""
    types = conn.execute("SELECT DISTINCT p.product_type FROM cbm.extraction e JOIN cbm.product p USING (product_id) "
                         "WHERE e.parcel_set_id = %s ORDER BY 1", (ps.parcel_set_id,)).fetchall()
    keys = conn.execute("SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s ORDER BY parcel_key LIMIT %s",
                        (ps.parcel_set_id, n_examples)).fetchall()
    return [str(t[0]) for t in types], [int(k[0]) for k in keys]


def product_names(conn: psycopg.Connection, product_ids: Sequence[int]) -> dict[int, str]:
    """Return the product name (e.g. ``S2A_MSIL2A_20180405T105031_...``) of each product id."""
    rows = conn.execute("SELECT product_id, name FROM cbm.product WHERE product_id = ANY(%s)",
                        (list(product_ids),)).fetchall()
    return {int(r[0]): str(r[1]) for r in rows}
