"""Parcel geometries: validation, repair and area (pure functions, no I/O).

Every parcel is stored as a 2-D MultiPolygon. A geometry that is not polygonal (point,
line, collection), empty, missing or undecodable is rejected. Circular arcs (CurvePolygon,
MultiSurface: GML and GeoPackage registers) are made linear (``curves``) and count as repaired.
An invalid polygon (self-intersection, ring crossing a hole, overlapping parts) is repaired with
GEOS ``make_valid`` and kept only when the polygonal part of the repair still has the area the
agency drew: a repair that moves the area by more than ``max_area_change`` (1 % by default)
changed the shape, not just its encoding, and is rejected. A bow-tie ring, whose signed area cancels to
zero, is therefore rejected, while a duplicated or touching vertex is repaired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyproj
import shapely

from cbm_tasks.parcels.curves import CurveError, curved_type, linearize

__all__ = ["MAX_AREA_CHANGE", "CleanedGeometries", "clean_geometries", "geometry_md5", "parcel_areas_m2"]

MAX_AREA_CHANGE = 0.01  # relative area change accepted from a repair

_POLYGON, _MULTIPOLYGON = 3, 6
_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LinearRing",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


@dataclass(frozen=True, slots=True)
class CleanedGeometries:
    """Result of :func:`clean_geometries`, aligned with its input.

    Attributes:
        geometries: object array of 2-D MultiPolygons; None where rejected.
        repaired: bool array, True where an invalid geometry was repaired, or a curved one made linear, and kept.
        reasons: why each rejected geometry was rejected; None where kept.
    """

    geometries: np.ndarray
    repaired: np.ndarray
    reasons: tuple[str | None, ...]


def clean_geometries(wkb: Sequence[bytes | None], *, max_area_change: float = MAX_AREA_CHANGE) -> CleanedGeometries:
    """Decode, validate and repair parcel geometries; return 2-D MultiPolygons.

    Args:
        wkb: WKB of each feature (ISO or extended, any dimension), None for a null geometry.
        max_area_change: largest relative area change a repair may cause, e.g. 0.01.

    Returns:
        The kept geometries, which of them were repaired, and the rejection reasons.

    Raises:
        ValueError: max_area_change is negative.
    """
    if max_area_change < 0:
        raise ValueError(f"max_area_change must be >= 0, got {max_area_change}")
    raw = np.empty(len(wkb), dtype=object)
    raw[:] = list(wkb)
    reasons: list[str | None] = [None] * len(raw)
    repaired = np.zeros(len(raw), dtype=bool)
    try:
        decoded = shapely.from_wkb(raw, on_invalid="ignore")
    except NotImplementedError:  # GEOS refuses curved types outright: made linear here (curves.py)
        linear = raw.copy()
        for index, blob in enumerate(raw):
            name = curved_type(blob)
            if name is None:
                continue
            try:
                linear[index] = shapely.to_wkb(linearize(blob))
                repaired[index] = True  # the arcs the agency drew are now polylines
            except CurveError as err:
                reasons[index] = f"curved geometry ({name}): {err}"
                linear[index] = None
        decoded = shapely.from_wkb(linear, on_invalid="ignore")
    geoms = shapely.force_2d(decoded)
    type_ids = shapely.get_type_id(geoms)
    for i in np.flatnonzero(type_ids < 0):
        if reasons[i] is None:
            reasons[i] = "no geometry" if raw[i] is None else "undecodable geometry (bad WKB)"
    for i in np.flatnonzero((type_ids >= 0) & (type_ids != _POLYGON) & (type_ids != _MULTIPOLYGON)):
        reasons[i] = f"not a polygon ({_TYPE_NAMES.get(int(type_ids[i]), 'unknown type')})"
    polygonal = (type_ids == _POLYGON) | (type_ids == _MULTIPOLYGON)
    empty = polygonal & shapely.is_empty(geoms)
    for i in np.flatnonzero(empty):
        reasons[i] = "empty geometry"
    candidates = polygonal & ~empty
    for i in np.flatnonzero(candidates & ~shapely.is_valid(geoms)):
        fixed, reason = _repair(geoms[i], max_area_change=max_area_change)
        if fixed is None:
            reasons[i] = reason
        else:
            geoms[i] = fixed
            repaired[i] = True
    kept = np.array([reason is None for reason in reasons], dtype=bool)
    out = np.full(len(raw), None, dtype=object)
    if kept.any():
        parts, index = shapely.get_parts(geoms[kept], return_index=True)
        out[np.flatnonzero(kept)] = shapely.multipolygons(parts, indices=index)
    return CleanedGeometries(geometries=out, repaired=repaired & kept, reasons=tuple(reasons))


def _repair(geom: Any, *, max_area_change: float) -> tuple[Any, str]:
    """Return (repaired polygonal geometry, '') or (None, reason)."""
    why = shapely.is_valid_reason(geom)
    drawn_area = abs(float(shapely.area(geom)))  # shoelace area of the rings as drawn
    fixed = shapely.make_valid(geom)
    if shapely.get_type_id(fixed) not in (_POLYGON, _MULTIPOLYGON):
        # make_valid returns a collection when parts collapse to lines or points: keep the areas
        parts = shapely.get_parts(fixed)
        polygons = parts[np.isin(shapely.get_type_id(parts), (_POLYGON, _MULTIPOLYGON))]
        fixed = shapely.multipolygons(shapely.get_parts(polygons)) if len(polygons) else None
    if fixed is None or shapely.is_empty(fixed):
        return None, f"invalid geometry ({why}) without any area after repair"
    new_area = float(shapely.area(fixed))
    if drawn_area == 0.0:
        return None, f"invalid geometry ({why}) with zero drawn area; repair would give {new_area:.6g}"
    change = abs(new_area - drawn_area) / drawn_area
    if change > max_area_change:
        return None, (
            f"invalid geometry ({why}); repair changes the area by {change:.1%} (limit {max_area_change:.1%})"
        )
    return fixed, ""


def parcel_areas_m2(geometries: np.ndarray, crs: pyproj.CRS) -> np.ndarray:
    """Return the area of each geometry in square metres.

    Planar in the CRS for projected CRSs (scaled by the axis unit, so US feet work too);
    geodesic on the CRS's ellipsoid (pyproj.Geod) for geographic CRSs, whose x is longitude.

    Args:
        geometries: object array of (Multi)Polygons in *crs*, no None.
        crs: the CRS of the coordinates.

    Raises:
        ValueError: the CRS is neither projected nor geographic (e.g. geocentric).
    """
    if crs.is_geographic:
        geod = crs.get_geod()
        if geod is None:
            raise ValueError(f"CRS {crs.name!r} has no ellipsoid")
        # counter-clockwise exteriors and clockwise holes: the signed sums are then exact
        oriented = shapely.orient_polygons(geometries, exterior_cw=False)
        return np.array([geod.geometry_area_perimeter(g)[0] for g in oriented], dtype=np.float64)
    if not crs.is_projected:
        raise ValueError(f"CRS {crs.name!r} is neither projected nor geographic; cannot compute areas")
    metres_per_unit = crs.axis_info[0].unit_conversion_factor
    return np.asarray(shapely.area(geometries), dtype=np.float64) * metres_per_unit**2


def geometry_md5(geometries: np.ndarray) -> list[str]:
    """Return the md5 of the little-endian 2-D WKB of each geometry.

    Equals ``md5(ST_AsBinary(geom, 'NDR'))`` in PostGIS, so a re-import can tell which
    stored parcels changed shape without sending the old geometries back and forth.
    """
    digests: list[str] = []
    for start in range(0, len(geometries), 10_000):  # chunks: the WKB of a country is gigabytes
        blobs = shapely.to_wkb(geometries[start : start + 10_000], byte_order=1, output_dimension=2, flavor="iso")
        digests.extend(hashlib.md5(blob, usedforsecurity=False).hexdigest() for blob in blobs)
    return digests
