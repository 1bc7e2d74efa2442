"""Terrain heights on a CARD output grid, above the WGS 84 ellipsoid.

SAR geometry needs ellipsoidal heights, while most DEMs give heights above a geoid (SRTM and
the Rome test DEM: EGM96; Copernicus DEM: EGM2008). The geoid undulation is read from a geoid
grid file (Debian's ``proj-data`` ships ``/usr/share/proj/egm96_15.gtx``), warped onto the
same grid and added. It is given explicitly (``DemConfig.geoid_path``) instead of being left to
PROJ's search path: the pip wheels of rasterio and pyproj carry their own PROJ data without
the geoid grids, and a silently skipped geoid shifts terrain by up to ~100 m, which moves
backscatter by tens of metres and changes the terrain-flattening area.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import rasterio
from pyproj import CRS
from rasterio.errors import RasterioError
from rasterio.warp import Resampling, reproject

from cbm_tasks.card.errors import DemCoverageError
from cbm_tasks.card.grid import OutputGrid
from cbm_tasks.errors import ConfigError, CorruptProductError

__all__ = ["DemConfig", "heights_on_grid"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemConfig:
    """Where the DEM is and what its heights are measured from.

    Attributes:
        path: anything GDAL opens (GeoTIFF, VRT of tiles, ``/vsis3/...``).
        geoid_path: geoid undulation grid (``.gtx``/GeoTIFF, EPSG:4326) to add when the heights
            are above a geoid; None when they are ellipsoidal already.
    """

    path: str
    geoid_path: str | None = None


def _crs_parts(crs: rasterio.crs.CRS | None, *, path: str, what: str) -> tuple[str, str | None]:
    """(horizontal CRS as WKT, name of the vertical datum when the CRS is compound, else None)."""
    if crs is None:
        raise CorruptProductError(f"{what} {path}: has no CRS")
    parsed = CRS.from_wkt(crs.to_wkt())
    if not parsed.is_compound:
        return parsed.to_wkt(), None
    horizontal = next(sub for sub in parsed.sub_crs_list if not sub.is_vertical)
    vertical = next((sub.name for sub in parsed.sub_crs_list if sub.is_vertical), None)
    return horizontal.to_wkt(), vertical


def _warp(path: str, grid: OutputGrid, *, what: str) -> tuple[np.ndarray, str | None]:
    """Warp band 1 of *path* bilinearly onto *grid* (NaN where it has no value)."""
    values = np.full((grid.height, grid.width), np.nan, np.float32)
    try:
        with rasterio.open(path) as src:
            # only the horizontal part: vertical shifts are applied explicitly (module docstring)
            horizontal, datum = _crs_parts(src.crs, path=path, what=what)
            reproject(rasterio.band(src, 1), values, src_crs=horizontal, src_nodata=src.nodata,
                      dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan,
                      resampling=Resampling.bilinear)
    except (RasterioError, OSError) as err:
        raise CorruptProductError(f"{what} {path}: cannot read it: {err}") from err
    return values, datum


def heights_on_grid(cfg: DemConfig, grid: OutputGrid, *, product: str) -> np.ndarray:
    """Return ellipsoidal heights (float64, metres) for every pixel of *grid*, north-up.

    Args:
        cfg: the DEM and its geoid.
        grid: the output grid.
        product: the product the heights are for, named in errors.

    Raises:
        ConfigError: the DEM's CRS says its heights are above a geoid, but no geoid grid is set.
        CorruptProductError: the DEM or geoid file cannot be read.
        DemCoverageError: the DEM (or geoid grid) has no value for part of the grid.
    """
    heights, datum = _warp(cfg.path, grid, what="DEM")
    if datum is not None and cfg.geoid_path is None:
        raise ConfigError(f"DEM {cfg.path}: heights are above {datum!r}, but no geoid grid is configured "
                          "(geoid_path, e.g. /usr/share/proj/egm96_15.gtx from Debian's proj-data)")
    missing = int(np.count_nonzero(~np.isfinite(heights)))
    if missing:
        raise DemCoverageError(
            f"DEM {cfg.path} does not cover the output grid of product {product}: {missing} of {grid.n_pixels} "
            f"pixels ({missing / grid.n_pixels:.1%}) have no height; grid {grid.crs} bounds {grid.bounds}"
        )
    if cfg.geoid_path is not None:
        undulation, _ = _warp(cfg.geoid_path, grid, what="geoid grid")
        if not np.isfinite(undulation).all():
            raise DemCoverageError(f"geoid grid {cfg.geoid_path} does not cover the output grid of product {product}")
        heights = heights + undulation
    log.debug("dem product=%s pixels=%d min_m=%.1f max_m=%.1f geoid=%s", product, grid.n_pixels,
              float(heights.min()), float(heights.max()), cfg.geoid_path)
    return heights.astype(np.float64)
