"""The inner buffer of a parcel set: the parcels shrunk by M metres for the extraction (``sql/022``).

Why: a pixel at a parcel's edge mixes the parcel with its neighbour, and Sentinel-2's
co-registration between dates (5-10 m) moves that mixture from image to image, so that a small
grassland seen with a bare neighbour in one image looks cut. Agencies extract from the parcel
shrunk by 5-10 m (JRC's FOI check example uses -10 m). The import keeps each parcel's shrunk
geometry in ``cbm.parcel.geom_inner`` (``cbm.inner_geometry`` in PostGIS: on the spheroid for a
lon/lat CRS, in the CRS's metres otherwise); the extraction reads it where it exists
(``extraction.grid``). A parcel the buffer would empty keeps its whole geometry (geom_inner NULL):
a light from edge pixels beats none, and the import counts those parcels. The declared geometry
(``geom``) stays what the API, the reports and QGIS show.

A set keeps its buffer across imports unless one names another; changing it changes every
parcel's extraction geometry, so the import treats every parcel as changed (its time series are
extracted again).
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from cbm_tasks.errors import ParcelImportError

__all__ = ["MAX_INNER_BUFFER_M", "check_units", "shrink"]

MAX_INNER_BUFFER_M = 100  # as the CHECK on cbm.parcel_set.inner_buffer_m: beyond it most parcels would vanish


def check_units(proj4text: str, srid: int, metres: int, *, geographic: bool, source: str) -> None:
    """Refuse a buffer the set's CRS cannot measure in metres (a CRS in feet, say), or out of range.

    Args:
        proj4text: the CRS's PROJ definition (``spatial_ref_sys``, looked up once by the import).
        srid: its EPSG code, for the message.
        metres: the buffer.
        geographic: the CRS is lon/lat (``cbm.srid_is_geographic``: buffered on the spheroid).
        source: the register, for the message.

    Raises:
        ParcelImportError: *metres* outside 0..MAX_INNER_BUFFER_M, or a projected CRS whose unit is not the metre.
    """
    if not 0 <= metres <= MAX_INNER_BUFFER_M:
        raise ParcelImportError(f"{source}: inner buffer {metres} m is outside 0..{MAX_INNER_BUFFER_M} m")
    if metres and not geographic and "+units=m " not in f"{proj4text} ":
        raise ParcelImportError(
            f"{source}: an inner buffer of {metres} m needs a CRS in metres or degrees; EPSG:{srid} is in "
            f"other units ({proj4text.strip() or 'no PROJ definition'}): reproject the register first"
        )


def shrink(cur: psycopg.Cursor[TupleRow], set_id: int, metres: int, *, geographic: bool) -> int:
    """Fill ``geom_inner`` of the set's parcels for *metres*; return how many keep their whole geometry.

    With 0 nothing is filled and 0 returned (the extraction reads ``geom``).
    """
    if metres == 0:
        return 0
    # one pass over the set's rows, no join: the rows were just copied in and have no statistics yet
    cur.execute("UPDATE cbm.parcel SET geom_inner = cbm.inner_geometry(geom, %s, %s) WHERE parcel_set_id = %s",
                (metres, geographic, set_id))
    return cur.execute("UPDATE cbm.parcel SET geom_inner = NULL WHERE parcel_set_id = %s AND ST_IsEmpty(geom_inner)",
                       (set_id,)).rowcount
