"""Parcels with their traffic lights as GeoJSON features, paged by bbox (the OGC API's read side).

Each feature carries the parcel's attributes, ``traffic_light`` (the worst colour over its
aid schemes: red, then yellow, then green; null before any decision) and ``traffic_lights``
(``scheme: colour (reason)`` per scheme, ``; ``-separated), flat values that GIS clients show
as columns.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import shapely
from psycopg import sql

from cbm_tasks.api.queries import ParcelSet, reaches_set

__all__ = ["feature", "features_page"]

_SELECT = """
SELECT p.parcel_key, p.parcel_id, p.crop_code, p.crop_name, p.area_m2,
       ST_AsGeoJSON(ST_Transform(p.geom, %(out_srid)s::integer), %(digits)s), tl.worst, tl.lights
FROM cbm.parcel p
LEFT JOIN LATERAL (
    SELECT (array_agg(t.colour ORDER BY array_position(ARRAY['red', 'yellow', 'green'], t.colour)))[1] AS worst,
           string_agg(t.scheme || ': ' || t.colour || ' (' || t.reason || ')', '; ' ORDER BY t.scheme) AS lights
    FROM cbm.traffic_light t
    WHERE t.parcel_set_id = p.parcel_set_id AND t.parcel_key = p.parcel_key
) tl ON true
WHERE p.parcel_set_id = %(set)s AND {where}
ORDER BY p.parcel_key
LIMIT %(limit)s OFFSET %(offset)s
"""
_BBOX = sql.SQL("p.geom && ST_Transform(ST_MakeEnvelope(%(x0)s, %(y0)s, %(x1)s, %(y1)s, %(bsrid)s::integer), "
                "%(srid)s::integer)")


def _feature(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": row[0],
        "geometry": json.loads(row[5]),
        "properties": {"parcel_key": row[0], "parcel_id": row[1], "crop_code": row[2], "crop_name": row[3],
                       "area_m2": row[4], "traffic_light": row[6], "traffic_lights": row[7]},
    }


def _digits(out_srid: int) -> int:
    return 7 if out_srid == 4326 else 3  # ~1 cm either way


def features_page(conn: psycopg.Connection, ps: ParcelSet, *, bbox: tuple[float, float, float, float] | None,
                  bbox_srid: int, out_srid: int, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Return one page of features (geometry in *out_srid*) intersecting *bbox* and the number matched.

    Args:
        conn: a cbm_reader connection.
        ps: the parcel set (authorised by queries.parcel_set).
        bbox_srid: EPSG code of *bbox*.
        limit: features per page.
        offset: features skipped.
        bbox: (minx, miny, maxx, maxy) in *bbox_srid*, or None for the whole set.
        out_srid: 4326 (longitude, latitude order: OGC CRS84) or the set's own EPSG code.
    """
    params: dict[str, Any] = {"set": ps.parcel_set_id, "out_srid": out_srid, "digits": _digits(out_srid),
                              "limit": limit, "offset": offset, "srid": ps.srid, "bsrid": bbox_srid}
    where: sql.Composable = sql.SQL("true")
    if bbox is not None and bbox_srid == 4326 and not reaches_set(conn, ps, shapely.box(*bbox).wkt):
        return [], 0  # far from the set: nothing matches, and the transform could fail
    if bbox is not None:
        where = _BBOX
        params |= dict(zip(("x0", "y0", "x1", "y1"), bbox, strict=True))
    count = sql.SQL("SELECT count(*) FROM cbm.parcel p WHERE p.parcel_set_id = %(set)s AND {}").format(where)
    row = conn.execute(count, params).fetchone()
    matched = int(row[0]) if row else 0
    rows = conn.execute(sql.SQL(_SELECT).format(where=where), params).fetchall()
    return [_feature(r) for r in rows], matched


def feature(conn: psycopg.Connection, ps: ParcelSet, key: int, *, out_srid: int) -> dict[str, Any] | None:
    """Return the feature of parcel *key*, or None."""
    params = {"set": ps.parcel_set_id, "out_srid": out_srid, "digits": _digits(out_srid), "limit": 1, "offset": 0,
              "key": key}
    query = sql.SQL(_SELECT).format(where=sql.SQL("p.parcel_key = %(key)s"))
    row = conn.execute(query, params).fetchone()
    return None if row is None else _feature(row)
