"""The ``sarsen`` backend: CARD-BS (gamma0 RTC, VV and VH) of an IW GRD over an AOI, in Python.

For one job: check the SAFE, lay the output grid (the product's UTM zone, 10 m, the job's
footprint plus a margin), warp the DEM onto it with ellipsoidal heights, run sarsen, and
write a COG into the scratch folder. Only the AOI's part of the scene is computed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbm_tasks.card.backend import BackendConfig, CardOutput
from cbm_tasks.card.cog import write_card_cog
from cbm_tasks.card.dem import heights_on_grid
from cbm_tasks.card.grid import auto_utm_epsg, output_grid
from cbm_tasks.card.jobs import CardJob
from cbm_tasks.card.safe import inspect_safe
from cbm_tasks.card.sarsen_bs import gamma0_rtc, sarsen_version
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import BadInputError

__all__ = ["SarsenBackend"]

log = logging.getLogger(__name__)


class SarsenBackend:
    """CARD-BS with sarsen (see :mod:`cbm_tasks.card.sarsen_bs` for the method)."""

    name = "sarsen"
    local_sources = True

    def __init__(self, cfg: BackendConfig) -> None:
        self.cfg = cfg

    def supports(self, card_type: str) -> bool:
        """Return True for CARD-BS only: sarsen has no interferometric processing."""
        return card_type == "CARD-BS"

    def make(self, job: CardJob, sources: list[tuple[Product, Path]], scratch: Path) -> CardOutput:
        """Make the CARD-BS COG of *job* in *scratch*.

        Raises:
            BadInputError: more or fewer than one source; a job of another type.
            CorruptProductError, IncompleteSafeError: the SAFE cannot be read or misses files.
            DemCoverageError, ConfigError: the DEM does not cover the grid or is not configured.
        """
        if job.card_type != "CARD-BS" or len(sources) != 1:
            raise BadInputError(f"job {job.key}: the sarsen backend makes CARD-BS from one GRD, "
                                f"got {job.card_type} with {len(sources)} sources")
        started = time.perf_counter()
        product, safe = sources[0]
        contents = inspect_safe(safe)
        if contents.product_type != "GRD":
            raise BadInputError(f"job {job.key}: product {product.name} is an {contents.product_type}, not a GRD")
        epsg = auto_utm_epsg(product.footprint_wkt or job.footprint_wkt)
        grid = output_grid(job.footprint_wkt, epsg=epsg, resolution_m=self.cfg.bs_resolution_m,
                           margin_m=self.cfg.margin_m)
        dem = self.cfg.dem()
        heights = heights_on_grid(dem, grid, product=product.name)
        bands = gamma0_rtc(safe, polarisations=contents.polarisations, grid=grid, heights=heights,
                           grouping_area_factor=(self.cfg.grouping_area_factor,) * 2,
                           block_pixels=self.cfg.block_pixels, threads=self.cfg.threads)
        if not any(np.isfinite(values).any() for values in bands.values()):
            raise BadInputError(f"job {job.key}: product {product.name} has no valid pixel on the AOI's grid "
                                f"{grid.crs} {grid.bounds} (footprint outside the swath?)")
        lineage: dict[str, Any] = {
            "backend": self.name,
            "sarsen": sarsen_version(),
            "radiometry": "gamma0 terrain-flattened (sarsen gamma_bilinear), linear power",
            "interpolation": "linear",
            "grouping_area_factor": self.cfg.grouping_area_factor,
            "grid": {"epsg": grid.epsg, "resolution_m": grid.resolution_m, "bounds": grid.bounds},
            "dem": dem.path,
            "geoid": dem.geoid_path,
            "inputs": {product.name: {"checksum": product.checksum, "manifest_md5": contents.manifest_md5}},
        }
        path = write_card_cog(
            scratch / f"{product.name}_CARD-BS.tif", bands, grid=grid, acquired_at=product.acquired_at,
            tags={"CARD_TYPE": "CARD-BS", "SOURCE_PRODUCTS": product.name, "MEASUREMENT": "gamma0, linear power",
                  "BACKEND": f"sarsen {lineage['sarsen']}", "DEM": dem.path, "AOI": job.aoi},
        )
        log.info("made card=%s backend=sarsen pixels=%d bands=%s seconds=%.2f", job.key, grid.n_pixels,
                 ",".join(bands), time.perf_counter() - started)
        return CardOutput(path=path, bands=tuple(bands), epsg=grid.epsg, resolution_m=grid.resolution_m,
                          footprint_wkt=job.footprint_wkt, lineage=lineage)
