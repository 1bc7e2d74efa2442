"""Checks and normalisation of what an API client sends, before any query runs.

Every bound is a named constant here, so the OpenAPI schema, the error messages and the
tests agree. A failed check raises :class:`ApiInputError` (HTTP 400) naming the parameter,
the value received (shortened) and what is accepted.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date

import shapely
from pyproj import Geod
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from cbm_tasks.errors import BadInputError

__all__ = [
    "AOI_PATTERN",
    "DEFAULT_JRC_BAND_STYLE",
    "JRC_BANDS",
    "JRC_BAND_STYLES",
    "MAX_DATE_SPAN_DAYS",
    "MAX_DISTANCE_M",
    "MAX_PAGE",
    "MAX_PEERS",
    "MAX_POLYGON_KM2",
    "MAX_POLYGON_TEXT",
    "MAX_POLYGON_VERTICES",
    "SOURCES",
    "ApiInputError",
    "Source",
    "bands_for",
    "check_date_range",
    "jrc_band_labels",
    "parse_polygon",
    "source",
]

AOI_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"  # cbm.aoi.name
MAX_PAGE = 1000  # features or parcels per page
MAX_PEERS = 100
MAX_DISTANCE_M = 5000.0
MAX_POLYGON_TEXT = 100_000  # characters of WKT or GeoJSON
MAX_POLYGON_VERTICES = 2000
MAX_POLYGON_KM2 = 25.0  # 2,500 ha: a few hundred parcels, never a whole region
MAX_DATE_SPAN_DAYS = 3 * 366
_GEOD = Geod(ellps="WGS84")
_JRC_POINT_SEPARATOR = re.compile(r"(?<=\d)-")


class ApiInputError(BadInputError):
    """A request parameter is out of bounds or malformed (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Source:
    """A time-series source: which product types feed it and which bands it has."""

    name: str
    product_types: tuple[str, ...]
    bands: tuple[str, ...]
    categorical: bool = False


_S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SOURCES: dict[str, Source] = {
    "s2": Source("s2", ("S2MSI2A",), _S2_BANDS),
    "bs": Source("bs", ("CARD-BS",), ("VV", "VH")),
    "c6": Source("c6", ("CARD-COH6",), ("VV", "VH")),
    "c12": Source("c12", ("CARD-COH12",), ("VV", "VH")),
    "scl": Source("scl", ("S2MSI2A",), ("SCL",), categorical=True),
}
# JRC's band names (its S2 signature tables drop the leading zero; SC is the SCL band)
JRC_BANDS = {band: (band[0] + band[2:] if band[1] == "0" else band) for band in _S2_BANDS} | {
    "SCL": "SC", "VV": "VV", "VH": "VH"}
# JRC's API names Sentinel-1 bands by their table: VVb/VHb backscatter, VVc/VHc coherence (its server selects
# only these, and its client plots VV{tstype[0]}); the plain VV/VH is accepted too
_FROM_JRC = {jrc: ours for ours, jrc in JRC_BANDS.items()} | {f"{p}{t}": p for p in ("VV", "VH") for t in "bc"}
_S1_SUFFIX = {"bs": "b", "c6": "c", "c12": "c"}


def _our_band(name: str) -> str | None:
    """Our name of a band given by its name or one of JRC's (``B4``, ``SC``, ``VVb``), None if neither."""
    return name if name in JRC_BANDS else _FROM_JRC.get(name)


# the deployment's naming of Sentinel-2 bands in JRC answers, by the red band's name: B04 (JRC's servers: its
# calendar-view and time-series notebooks and its database client select B04; its chip queries take it) or B4
# (what the extractor of JRC's open-source repository writes; JRC's own client reads both)
DEFAULT_JRC_BAND_STYLE = "B04"
JRC_BAND_STYLES = (DEFAULT_JRC_BAND_STYLE, "B4")


def jrc_band_labels(style: str, src: Source, requested: str | None = None) -> dict[str, str]:
    """Return our band name -> the name a JRC time-series answer of *src* gives it.

    Sentinel-2 bands are named in the deployment's *style* (``JRC_BAND_STYLES``), the scene
    classification ``SC``, Sentinel-1 bands as JRC's tables (``VVb`` backscatter, ``VVc`` coherence).
    A band the client asked for by name (``band=B04``, ``band=VV``) is answered under that name,
    which is what a notebook that asked then filters on.
    """
    labels = {band: JRC_BANDS[band] if style == "B4" or band == "SCL" else band for band in JRC_BANDS}
    suffix = _S1_SUFFIX.get(src.name, "")
    labels |= {band: band + suffix for band in ("VV", "VH")}
    for item in (requested or "").split(","):
        name = item.strip()
        ours = _our_band(name)
        if ours is not None and ours != "SCL":
            labels[ours] = name
    return labels


def source(name: str) -> Source:
    """Return the source called *name* (s2, bs, c6, c12, scl).

    Raises:
        ApiInputError: unknown source.
    """
    try:
        return SOURCES[name.lower()]
    except KeyError:
        raise ApiInputError(f"source {name[:20]!r} is unknown; use one of {', '.join(SOURCES)}") from None


def bands_for(src: Source, requested: list[str] | None) -> tuple[str, ...] | None:
    """Return the band names of *src* the client asked for (JRC names accepted), or None for all.

    Raises:
        ApiInputError: a band is not one of *src*'s.
    """
    if not requested:
        return None
    out: list[str] = []
    for item in requested:
        for band in item.split(","):
            name = band.strip()
            name = _our_band(name) or name
            if name not in src.bands:
                raise ApiInputError(f"band {band[:20]!r} is not a band of source {src.name}; "
                                    f"bands: {', '.join(src.bands)} (JRC names "
                                    f"{', '.join(JRC_BANDS[b] for b in src.bands)} work too)")
            if name not in out:
                out.append(name)
    return tuple(out)


def check_date_range(start: date | None, end: date | None) -> None:
    """Check that start <= end and that the range spans at most MAX_DATE_SPAN_DAYS.

    Raises:
        ApiInputError: the range is inverted or too long.
    """
    if start is not None and end is not None:
        if start > end:
            raise ApiInputError(f"start {start} is after end {end}")
        if (end - start).days > MAX_DATE_SPAN_DAYS:
            raise ApiInputError(f"date range {start}..{end} spans more than {MAX_DATE_SPAN_DAYS} days")


def _jrc_polygon(text: str) -> str:
    """JRC's notation ``lon_lat-lon_lat-...`` as WKT (a '-' after a digit separates points)."""
    points = [p.replace("_", " ") for p in _JRC_POINT_SEPARATOR.split(text)]
    if points and points[0] != points[-1]:
        points.append(points[0])
    return f"POLYGON(({', '.join(points)}))"


def _vertex_count(geom: BaseGeometry) -> int:
    return int(shapely.get_num_coordinates(geom))


def parse_polygon(text: str, *, param: str = "polygon") -> BaseGeometry:
    """Parse a lon/lat polygon given as WKT, GeoJSON or JRC's ``lon_lat-lon_lat-...``.

    Returns:
        A valid Polygon or MultiPolygon in WGS84 longitude/latitude.

    Raises:
        ApiInputError: malformed, not a polygon, invalid, outside lon/lat bounds, more than
            MAX_POLYGON_VERTICES vertices or larger than MAX_POLYGON_KM2.
    """
    text = text.strip()
    if not text or len(text) > MAX_POLYGON_TEXT:
        raise ApiInputError(f"{param}: give 1..{MAX_POLYGON_TEXT} characters of WKT or GeoJSON, got {len(text)}")
    try:
        if text.startswith("{"):
            obj = json.loads(text)
            if isinstance(obj, dict) and obj.get("type") == "Feature":
                obj = obj.get("geometry")
            geom = shape(obj)
        elif text[:1].isalpha():
            geom = shapely.from_wkt(text)
        else:
            geom = shapely.from_wkt(_jrc_polygon(text))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, shapely.errors.ShapelyError) as err:
        raise ApiInputError(f"{param}: not WKT, GeoJSON or lon_lat-lon_lat-...: {str(err)[:200]}") from err
    if not isinstance(geom, Polygon | MultiPolygon) or geom.is_empty:
        raise ApiInputError(f"{param}: must be a Polygon or MultiPolygon, got {geom.geom_type}")
    if _vertex_count(geom) > MAX_POLYGON_VERTICES:
        raise ApiInputError(f"{param}: {_vertex_count(geom)} vertices, at most {MAX_POLYGON_VERTICES} allowed")
    minx, miny, maxx, maxy = geom.bounds
    if not all(math.isfinite(v) for v in geom.bounds) or minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise ApiInputError(f"{param}: coordinates must be longitude -180..180 and latitude -90..90")
    if not geom.is_valid:
        raise ApiInputError(f"{param}: invalid polygon ({shapely.is_valid_reason(geom)[:200]})")
    area_km2 = abs(_GEOD.geometry_area_perimeter(geom)[0]) / 1e6
    if area_km2 > MAX_POLYGON_KM2:
        raise ApiInputError(f"{param}: covers {area_km2:.1f} km2, at most {MAX_POLYGON_KM2:g} km2 allowed")
    return geom
