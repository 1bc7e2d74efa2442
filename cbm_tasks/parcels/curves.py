"""Curved parcel geometries (ISO/OGC WKB curve types) made linear, as ``ogr2ogr -nlt CONVERT_TO_LINEAR`` does.

Registers kept in GML or GeoPackage may draw a parcel edge as a circular arc (a road bend, a
round silo plot): CurvePolygon, CompoundCurve and CircularString, MultiSurface of such parts.
GEOS (shapely) refuses these types, so they are decoded here and each arc replaced by a
polyline through points at most ``ARC_STEP_DEG`` degrees apart on the circle (GDAL's default
OGR_ARC_STEPSIZE is 4 degrees; 2 keeps the chord within 0.06 % of the radius: 6 cm on a
100 m bend, far below a 10 m pixel). Z and M values are dropped (parcels are 2-D). Curves that
are not areas (MultiCurve, a lone CircularString) are left to the caller to reject.
"""

from __future__ import annotations

import math
import struct

import shapely

__all__ = ["ARC_STEP_DEG", "CURVED_TYPES", "CurveError", "curved_type", "linearize"]

ARC_STEP_DEG = 2.0
CURVED_TYPES = {8: "CircularString", 9: "CompoundCurve", 10: "CurvePolygon", 11: "MultiCurve", 12: "MultiSurface"}
_LINESTRING, _POLYGON, _MULTIPOLYGON = 2, 3, 6
_CIRCULAR, _COMPOUND, _CURVEPOLYGON, _MULTISURFACE = 8, 9, 10, 12

Points = list[tuple[float, float]]


class CurveError(ValueError):
    """The WKB is truncated, malformed or of a type that is not an area."""


class _Reader:
    """Reads one WKB blob front to back; each geometry carries its own byte order (ISO and EWKB)."""

    def __init__(self, blob: bytes) -> None:
        self.blob, self.at = blob, 0

    def _unpack(self, fmt: str) -> tuple[float | int, ...]:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.blob):
            raise CurveError("truncated WKB")
        values = struct.unpack_from(fmt, self.blob, self.at)
        self.at += size
        return values

    def header(self) -> tuple[str, int, int]:
        """Byte order prefix, base type (1..12) and coordinate count per point."""
        order = self._unpack("B")[0]
        if order not in (0, 1):
            raise CurveError(f"bad byte order {order}")
        endian = "<" if order == 1 else ">"
        code = int(self._unpack(endian + "I")[0])
        dims = 2 + (code & 0x80000000 != 0) + (code & 0x40000000 != 0)  # EWKB Z and M flags
        if code & 0x20000000:  # EWKB SRID
            self._unpack(endian + "I")
        code &= 0x0FFFFFFF
        dims += {1: 1, 2: 1, 3: 2}.get(code // 1000, 0)  # ISO: +1000 Z, +2000 M, +3000 ZM
        return endian, code % 1000, dims

    def count(self, endian: str) -> int:
        n = int(self._unpack(endian + "I")[0])
        if n > len(self.blob):  # each element takes at least a byte: a count beyond that is garbage
            raise CurveError(f"count {n} exceeds the WKB's {len(self.blob)} bytes")
        return n

    def points(self, endian: str, dims: int) -> Points:
        n = self.count(endian)
        flat = self._unpack(f"{endian}{n * dims}d")
        return [(float(flat[i]), float(flat[i + 1])) for i in range(0, n * dims, dims)]


def _arc(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float]) -> Points:
    """Points from p0 through p1 to p2 on their circle (p0 excluded), at most ARC_STEP_DEG apart."""
    (x0, y0), (x1, y1), (x2, y2) = p0, p1, p2
    if p0 == p2:  # a full circle, p1 diametrically opposite (OGC's encoding); drawn counter-clockwise
        cx, cy, sweep = (x0 + x1) / 2, (y0 + y1) / 2, math.tau
    else:
        d = 2 * (x0 * (y1 - y2) + x1 * (y2 - y0) + x2 * (y0 - y1))
        scale = max(abs(x1 - x0), abs(y1 - y0), abs(x2 - x1), abs(y2 - y1))
        if abs(d) <= 1e-12 * scale * scale:  # collinear points: a straight edge
            return [p1, p2] if p1 not in (p0, p2) else [p2]
        s0, s1, s2 = x0 * x0 + y0 * y0, x1 * x1 + y1 * y1, x2 * x2 + y2 * y2
        cx = (s0 * (y1 - y2) + s1 * (y2 - y0) + s2 * (y0 - y1)) / d
        cy = (s0 * (x2 - x1) + s1 * (x0 - x2) + s2 * (x1 - x0)) / d
        a0, a2 = math.atan2(y0 - cy, x0 - cx), math.atan2(y2 - cy, x2 - cx)
        # d > 0: p0 -> p1 -> p2 turns counter-clockwise, the sweep is positive; the middle point picks the side
        sweep = (a2 - a0) % math.tau if d > 0 else -((a0 - a2) % math.tau)
    radius, a0 = math.hypot(x0 - cx, y0 - cy), math.atan2(y0 - cy, x0 - cx)
    steps = max(2, math.ceil(abs(math.degrees(sweep)) / ARC_STEP_DEG))
    return [*((cx + radius * math.cos(a0 + sweep * k / steps), cy + radius * math.sin(a0 + sweep * k / steps))
              for k in range(1, steps)), p2]


def _curve(reader: _Reader) -> Points:
    """A ring or edge of any curve type: LineString, CircularString or CompoundCurve."""
    endian, kind, dims = reader.header()
    if kind == _LINESTRING:
        return reader.points(endian, dims)
    if kind == _CIRCULAR:
        points = reader.points(endian, dims)
        if len(points) < 3 or len(points) % 2 == 0:
            raise CurveError(f"a CircularString needs an odd number >= 3 of points, got {len(points)}")
        out = [points[0]]
        for i in range(0, len(points) - 2, 2):
            out += _arc(points[i], points[i + 1], points[i + 2])
        return out
    if kind == _COMPOUND:
        out = []
        for _ in range(reader.count(endian)):
            part = _curve(reader)
            out += part[1:] if out and part and part[0] == out[-1] else part
        return out
    raise CurveError(f"a ring of type {CURVED_TYPES.get(kind, kind)} is not a curve")


def _surface(reader: _Reader) -> shapely.Polygon:
    endian, kind, dims = reader.header()
    if kind == _POLYGON:
        rings = [reader.points(endian, dims) for _ in range(reader.count(endian))]
    elif kind == _CURVEPOLYGON:
        rings = [_curve(reader) for _ in range(reader.count(endian))]
    else:
        raise CurveError(f"a part of type {CURVED_TYPES.get(kind, kind)} is not a surface")
    rings = [ring for ring in rings if ring]
    return shapely.Polygon(rings[0], rings[1:]) if rings else shapely.Polygon()


def curved_type(blob: bytes | None) -> str | None:
    """The curve type name of a curved WKB (GeoPackage, GML), None for any other or a malformed header."""
    if blob is None:
        return None
    try:
        _, kind, _ = _Reader(blob).header()
    except CurveError:
        return None
    return CURVED_TYPES.get(kind)


def linearize(blob: bytes) -> shapely.Geometry:
    """Decode a CurvePolygon or MultiSurface WKB (ISO or EWKB, any byte order) to a 2-D (Multi)Polygon.

    Raises:
        CurveError: truncated or malformed, or a curve that is not an area (MultiCurve, CircularString,
            CompoundCurve alone).
    """
    reader = _Reader(blob)
    start = reader.at
    endian, kind, _ = reader.header()
    if kind == _CURVEPOLYGON:
        reader.at = start
        return _surface(reader)
    if kind in (_MULTISURFACE, _MULTIPOLYGON):
        return shapely.MultiPolygon([p for p in (_surface(reader) for _ in range(reader.count(endian)))
                                     if not p.is_empty])
    raise CurveError(f"not a polygon ({CURVED_TYPES.get(kind, kind)})")
