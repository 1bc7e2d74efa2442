"""Synthetic agricultural parcels for the benchmarks: seeded, irregular fields over a square tile.

Shrunk and wobbled Voronoi cells (0.1-20 ha, log-uniform), a quarter of them clustered (small
fields around villages, large ones in the open), 5 % with a hole (farm yard, pond), 3 % split into
a MultiPolygon (a ditch or track), some crossing the tile edge. Parcels never overlap. Used by
``extract_bench.py`` and ``pipeline_data.py``; nothing here is real data.
"""

from __future__ import annotations

import numpy as np
import shapely


def field_parcels(size: int, n_parcels: int, seed: int, *, x0: float, y0: float,
                  pixel_m: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Return (geoms, keys) of about *n_parcels* fields over a *size* x *size* tile of *pixel_m* pixels.

    Args:
        size: tile width and height in pixels.
        n_parcels: parcels wanted (a few fewer when cells are dropped as too small or outside).
        seed: seed of every random choice.
        x0, y0: upper-left corner of the tile (projected metres).
        pixel_m: pixel size in metres.

    Returns:
        shapely geometries (Polygon or MultiPolygon) and their keys 1..n (int32).
    """
    rng = np.random.default_rng(seed)
    extent = size * pixel_m
    margin = 0.02 * extent
    x_lo, y_lo, x_hi, y_hi = x0 - margin, y0 - extent - margin, x0 + extent + margin, y0 + margin
    n_seeds = int(n_parcels * ((extent + 2 * margin) / extent) ** 2)
    # a quarter of the seeds clustered: small parcels around villages, large ones in the open
    n_clustered = n_seeds // 4
    centres = rng.uniform((x_lo, y_lo), (x_hi, y_hi), (max(1, n_seeds // 400), 2))
    clustered = centres[rng.integers(0, len(centres), n_clustered)] + rng.normal(0, 0.02 * extent, (n_clustered, 2))
    seeds = np.vstack([rng.uniform((x_lo, y_lo), (x_hi, y_hi), (n_seeds - n_clustered, 2)), clustered])
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(seeds),
                                                       extend_to=shapely.box(x_lo, y_lo, x_hi, y_hi)))
    cells = shapely.intersection(cells, shapely.box(x_lo, y_lo, x_hi, y_hi))
    cells = cells[(shapely.get_type_id(cells) == shapely.GeometryType.POLYGON) & ~shapely.is_empty(cells)]
    area = shapely.area(cells)
    target = np.exp(rng.uniform(np.log(1_000.0), np.log(200_000.0), len(cells)))  # 0.1 .. 20 ha
    factor = np.minimum(0.92, np.sqrt(target / np.maximum(area, 1.0)))
    centroid = shapely.get_coordinates(shapely.centroid(cells))
    # shrink each (convex) cell towards its centroid: stays inside the cell, so parcels never overlap
    coords, ring = shapely.get_coordinates(shapely.get_exterior_ring(cells), return_index=True)
    coords = centroid[ring] + (coords - centroid[ring]) * factor[ring, None]
    shrunk = shapely.linearrings(coords, indices=ring)
    shrunk = shapely.segmentize(shrunk, np.maximum(10.0, 0.3 * np.sqrt(target)))
    # irregular outlines: move vertices along the ray from the centroid (star-shaped, so still simple)
    coords, ring = shapely.get_coordinates(shrunk, return_index=True)
    first = np.r_[True, ring[1:] != ring[:-1]]
    last = np.r_[ring[1:] != ring[:-1], True]
    wobble = rng.uniform(0.85, 1.0, len(coords))
    wobble[last] = wobble[first]  # closing vertex = first vertex
    coords = centroid[ring] + (coords - centroid[ring]) * wobble[:, None]
    parcels = shapely.polygons(shapely.linearrings(coords, indices=ring))
    radius = np.sqrt(shapely.area(parcels) / np.pi)
    holes = rng.random(len(parcels)) < 0.05  # farm yard, pond or tree group inside the field
    yards = shapely.buffer(shapely.points(centroid[holes]), 0.25 * radius[holes], quad_segs=4)
    parcels[holes] = shapely.difference(parcels[holes], yards)
    split = (rng.random(len(parcels)) < 0.03) & ~holes  # crossed by a ditch or track: MultiPolygon
    angle = rng.uniform(0, np.pi, split.sum())
    reach = 2 * radius[split, None] * np.c_[np.cos(angle), np.sin(angle)]
    lines = shapely.linestrings(np.stack([centroid[split] - reach, centroid[split] + reach], axis=1))
    parcels[split] = shapely.difference(parcels[split], shapely.buffer(lines, 3.0, cap_style="flat"))
    tile = shapely.box(x0, y0 - extent, x0 + extent, y0)
    parcels = parcels[shapely.intersects(parcels, tile) & ~shapely.is_empty(parcels)
                      & (shapely.area(parcels) >= 500.0)]
    parcels = parcels[rng.permutation(len(parcels))][:n_parcels]
    return parcels, np.arange(1, len(parcels) + 1, dtype=np.int32)
