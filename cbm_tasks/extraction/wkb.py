"""(Multi)Polygons to flat vertex, ring and polygon arrays, parsed from WKB by Numba kernels.

The first step of ``rasterize.rasterize_parcels``: WKB is GEOS's fastest bulk export (one C
call), and parsing it here is 3x faster than shapely's get_parts/get_rings/get_coordinates,
which create a Python object per ring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numba import njit

__all__ = ["PolygonRings", "polygon_rings", "warmup_signatures"]

_WKB_MULTIPOLYGON = 6


@dataclass(frozen=True, slots=True)
class PolygonRings:
    """The vertices of polygonal geometries, flat, with offsets per ring and per polygon.

    Attributes:
        xs, ys: float64 vertex coordinates, ring after ring (each ring closed, as in WKB).
        ring_start: int64, the first vertex of each ring, and the vertex count at the end.
        part_ring_start: int64, the first ring of each polygon (a MultiPolygon has several),
            and the ring count at the end.
        part_geom: int64, the index of the input geometry of each polygon.
    """

    xs: np.ndarray
    ys: np.ndarray
    ring_start: np.ndarray
    part_ring_start: np.ndarray
    part_geom: np.ndarray

    @property
    def n_rings(self) -> int:
        """The number of rings, exteriors and holes."""
        return len(self.ring_start) - 1

    def geometry_of_vertex(self, vertex: int) -> int:
        """Return the index of the input geometry *vertex* belongs to (to name it in messages)."""
        ring = int(np.searchsorted(self.ring_start, vertex, side="right")) - 1
        return int(self.part_geom[np.searchsorted(self.part_ring_start, ring, side="right") - 1])


def polygon_rings(geoms: np.ndarray) -> PolygonRings:
    """Return the vertices, rings and polygons of *geoms* as flat arrays.

    Args:
        geoms: 1-D object array of shapely Polygons and MultiPolygons (checked by the caller).

    Returns:
        PolygonRings, 2-D coordinates (a Z is dropped); coordinates are not checked for finiteness.
    """
    wkb = shapely.to_wkb(geoms, output_dimension=2, byte_order=1)
    buffer = np.frombuffer(b"".join(wkb.tolist()), np.uint8)
    geom_start = np.zeros(len(geoms) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, wkb), np.int64, len(wkb)), out=geom_start[1:])
    n_parts, n_rings, n_vertices = _wkb_sizes_kernel(buffer, geom_start)
    xs, ys = np.empty(n_vertices, np.float64), np.empty(n_vertices, np.float64)
    ring_start = np.empty(n_rings + 1, np.int64)
    part_ring_start = np.empty(n_parts + 1, np.int64)
    part_geom = np.empty(n_parts, np.int64)
    _wkb_parse_kernel(buffer, geom_start, xs, ys, ring_start, part_ring_start, part_geom)
    return PolygonRings(xs=xs, ys=ys, ring_start=ring_start, part_ring_start=part_ring_start, part_geom=part_geom)


@njit(cache=True, nogil=True)
def _read_u32(buffer: np.ndarray, pos: int) -> int:
    """Little-endian uint32 (shapely.to_wkb(byte_order=1))."""
    return (int(buffer[pos]) | (int(buffer[pos + 1]) << 8) | (int(buffer[pos + 2]) << 16)
            | (int(buffer[pos + 3]) << 24))


@njit(cache=True, nogil=True)
def _wkb_sizes_kernel(buffer: np.ndarray, geom_start: np.ndarray) -> tuple[int, int, int]:
    """Count polygons, rings and vertices of little-endian 2-D (Multi)Polygon WKB records."""
    n_parts = 0
    n_rings = 0
    n_vertices = 0
    for g in range(len(geom_start) - 1):
        pos = geom_start[g]
        n_polygons = 1
        if _read_u32(buffer, pos + 1) == _WKB_MULTIPOLYGON:
            n_polygons = _read_u32(buffer, pos + 5)
            pos += 9
        for _ in range(n_polygons):
            rings = _read_u32(buffer, pos + 5)
            pos += 9
            n_parts += 1
            n_rings += rings
            for _ in range(rings):
                points = _read_u32(buffer, pos)
                n_vertices += points
                pos += 4 + 16 * points
    return n_parts, n_rings, n_vertices


@njit(cache=True, nogil=True)
def _wkb_parse_kernel(
    buffer: np.ndarray,
    geom_start: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    ring_start: np.ndarray,
    part_ring_start: np.ndarray,
    part_geom: np.ndarray,
) -> None:
    """Fill vertex coordinates, ring and polygon offsets (sized by _wkb_sizes_kernel)."""
    part = 0
    ring = 0
    vertex = 0
    ring_start[0] = 0
    part_ring_start[0] = 0
    for g in range(len(geom_start) - 1):
        pos = geom_start[g]
        n_polygons = 1
        if _read_u32(buffer, pos + 1) == _WKB_MULTIPOLYGON:
            n_polygons = _read_u32(buffer, pos + 5)
            pos += 9
        for _ in range(n_polygons):
            rings = _read_u32(buffer, pos + 5)
            pos += 9
            for _ in range(rings):
                points = _read_u32(buffer, pos)
                pos += 4
                xy = buffer[pos:pos + 16 * points].view(np.float64)
                for k in range(points):
                    xs[vertex] = xy[2 * k]
                    ys[vertex] = xy[2 * k + 1]
                    vertex += 1
                pos += 16 * points
                ring += 1
                ring_start[ring] = vertex
            part_geom[part] = g
            part += 1
            part_ring_start[part] = ring


def warmup_signatures() -> list[tuple[str, Any, tuple[Any, ...]]]:
    """Return ``(name, kernel, example arguments)`` for each kernel call of :func:`polygon_rings`.

    WKB bytes are read-only (``np.frombuffer``), everything else writable, as in the wrapper.
    Nothing is run (``cbm_tasks.extraction.preload`` explains why).
    """
    buffer = np.frombuffer(b"\x00" * 8, np.uint8)
    offsets = np.zeros(2, np.int64)
    coords = np.zeros(4, np.float64)
    return [
        ("wkb._wkb_sizes_kernel", _wkb_sizes_kernel, (buffer, offsets)),
        ("wkb._wkb_parse_kernel", _wkb_parse_kernel, (buffer, offsets, coords, coords, offsets, offsets, offsets)),
    ]
