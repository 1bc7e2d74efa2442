"""Write a CARD product as a north-up Cloud-Optimized GeoTIFF that describes itself.

One float32 band per polarisation (band description ``VV``/``VH``, the names extraction uses),
NaN as nodata, DEFLATE with the floating-point predictor, 512-pixel tiles and overviews, so
an AOI's parcels can be read from object storage with range requests. Dataset tags say what
the numbers are and where they come from: ``ACQUISITION_START`` (what extraction dates the
observation by), ``CARD_TYPE``, ``SOURCE_PRODUCTS``, ``MEASUREMENT`` and the backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy

from cbm_tasks.card.grid import OutputGrid

__all__ = ["write_card_cog"]


def write_card_cog(
    path: Path,
    bands: Mapping[str, np.ndarray],
    *,
    grid: OutputGrid,
    acquired_at: datetime,
    tags: Mapping[str, str],
) -> Path:
    """Write *bands* (name -> north-up array on *grid*) to a COG at *path*; return *path*.

    Args:
        path: the output file (its folder must exist).
        bands: band name -> float array of shape (grid.height, grid.width), NaN = no data.
        grid: the output grid.
        acquired_at: sensing start of the (reference) source, timezone-aware.
        tags: more dataset tags (CARD_TYPE, SOURCE_PRODUCTS, MEASUREMENT, BACKEND, ...).

    Raises:
        ValueError: no band, a band of the wrong shape, or a naive *acquired_at*.
    """
    if not bands:
        raise ValueError(f"{path}: no band to write")
    if acquired_at.tzinfo is None:
        raise ValueError(f"{path}: acquired_at must be timezone-aware, got {acquired_at}")
    for name, values in bands.items():
        if values.shape != (grid.height, grid.width):
            raise ValueError(f"{path}: band {name} has shape {values.shape}, grid is {(grid.height, grid.width)}")
    profile = {
        "driver": "GTiff", "dtype": "float32", "count": len(bands), "width": grid.width, "height": grid.height,
        "crs": grid.crs, "transform": grid.transform, "nodata": float("nan"),
    }  # fmt: skip
    with MemoryFile() as memory, memory.open(**profile) as staging:
        for index, (name, values) in enumerate(bands.items(), start=1):
            staging.write(values.astype(np.float32), index)
            staging.set_band_description(index, name)
        staging.update_tags(ACQUISITION_START=acquired_at.isoformat(), **dict(tags))
        rio_copy(staging, str(path), driver="COG", compress="DEFLATE", predictor=3, blocksize=512,
                 overview_resampling="average", bigtiff="IF_SAFER")
    with rasterio.open(path) as check:  # the COG driver writes through GDAL; fail here, not at extraction
        if check.count != len(bands):
            raise ValueError(f"{path}: wrote {check.count} bands, expected {len(bands)}")
    return path
