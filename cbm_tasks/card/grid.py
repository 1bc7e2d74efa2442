"""The output grid of a CARD product: the product's UTM zone, whole metres, the AOI's extent.

CARD-BS is delivered at 10 m and coherence at 20 m on the UTM zone of the source product
(its footprint's centre), so every product of one track over an AOI shares one grid, and
parcels are cut from it without resampling twice. Only the AOI's part of the scene is made:
the job's footprint (product within the AOI) plus a margin, snapped outward to whole pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import shapely
from affine import Affine
from pyproj import CRS, Transformer

__all__ = ["MIN_PIXELS", "OutputGrid", "auto_utm_epsg", "output_grid"]

# sarsen's radiometric terrain flattening works on blocks with a 128-pixel overlap: a side
# shorter than that cannot be processed, so a grid never has one
MIN_PIXELS = 128


@dataclass(frozen=True, slots=True)
class OutputGrid:
    """A north-up grid: ``epsg``, pixel size ``resolution_m``, upper-left corner, ``width`` x ``height``."""

    epsg: int
    resolution_m: float
    left: float
    top: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.resolution_m <= 0 or self.width < 1 or self.height < 1:
            raise ValueError(f"grid needs a positive resolution and size, got {self.resolution_m} m, "
                             f"{self.width} x {self.height}")

    @property
    def crs(self) -> str:
        """The CRS as ``EPSG:<code>``."""
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> Affine:
        """The affine transform of the north-up grid (pixel corners)."""
        return Affine(self.resolution_m, 0.0, self.left, 0.0, -self.resolution_m, self.top)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        return (self.left, self.top - self.height * self.resolution_m,
                self.left + self.width * self.resolution_m, self.top)

    @property
    def n_pixels(self) -> int:
        """Number of pixels."""
        return self.width * self.height


def auto_utm_epsg(footprint_wkt: str) -> int:
    """Return the WGS 84 / UTM zone (EPSG 326xx north, 327xx south) of a footprint's centre.

    Raises:
        ValueError: the footprint is empty or not in longitude/latitude range.
    """
    centre = shapely.from_wkt(footprint_wkt).centroid
    if centre.is_empty or not (-180 <= centre.x <= 180 and -90 <= centre.y <= 90):
        raise ValueError(f"footprint must be a non-empty EPSG:4326 geometry, got centre {centre.wkt}")
    zone = min(int((centre.x + 180) // 6) + 1, 60)
    return (32600 if centre.y >= 0 else 32700) + zone


def output_grid(area_wkt: str, *, epsg: int, resolution_m: float, margin_m: float = 200.0) -> OutputGrid:
    """Return the grid covering *area_wkt* (EPSG:4326) plus *margin_m*, snapped outward to whole pixels.

    Sides shorter than :data:`MIN_PIXELS` are widened about the centre.

    Args:
        area_wkt: what must be covered, e.g. the job's footprint (product within the AOI).
        epsg: the grid's projected CRS (:func:`auto_utm_epsg` of the source product).
        resolution_m: pixel size, 10 for CARD-BS, 20 for coherence.
        margin_m: added on every side (parcels on the edge, DEM slopes at the border).

    Raises:
        ValueError: an empty area, a non-positive resolution or a negative margin.
    """
    if resolution_m <= 0 or margin_m < 0:
        raise ValueError(f"resolution_m must be > 0 and margin_m >= 0, got {resolution_m}, {margin_m}")
    area = shapely.from_wkt(area_wkt)
    if area.is_empty:
        raise ValueError("area to cover is empty")
    to_grid = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(epsg), always_xy=True)
    # densify the outline so that the curved edges of a long footprint are inside the box
    outline = shapely.segmentize(area.envelope.exterior, max_segment_length=0.01)
    xs, ys = to_grid.transform(*outline.xy)
    left = math.floor((min(xs) - margin_m) / resolution_m) * resolution_m
    right = math.ceil((max(xs) + margin_m) / resolution_m) * resolution_m
    bottom = math.floor((min(ys) - margin_m) / resolution_m) * resolution_m
    top = math.ceil((max(ys) + margin_m) / resolution_m) * resolution_m
    width, height = round((right - left) / resolution_m), round((top - bottom) / resolution_m)
    if width < MIN_PIXELS:
        left -= (MIN_PIXELS - width) // 2 * resolution_m
        width = MIN_PIXELS
    if height < MIN_PIXELS:
        top += (MIN_PIXELS - height) // 2 * resolution_m
        height = MIN_PIXELS
    return OutputGrid(epsg=epsg, resolution_m=float(resolution_m), left=float(left), top=float(top),
                      width=width, height=height)
