"""The interface every CARD backend implements, and how a deployment picks one.

A backend turns one job and local copies of its source products into one file in a scratch
folder (:meth:`CardBackend.make`); :func:`cbm_tasks.pipeline.card.process` does the rest the same
way for all (object store, catalogue row, status, lineage, scratch clean-up). Backends:

========== ================================ ====================================================
name       makes                            needs
========== ================================ ====================================================
``sarsen`` CARD-BS (gamma0 RTC)             pip ``sarsen``; a DEM (+ geoid grid); ~1 KB RAM/pixel
``snap``   CARD-BS, CARD-COH6, CARD-COH12   ESA SNAP ``gpt`` (worker image), 8-16 GB RAM
``cdse-odp`` CARD-BS (no flattening), COH12 a CDSE account; runs remotely (a deferrable task)
========== ================================ ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cbm_tasks.card.dem import DemConfig
from cbm_tasks.card.jobs import CardJob
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import ConfigError

__all__ = ["BACKENDS", "BackendConfig", "CardBackend", "CardOutput"]

BACKENDS = ("sarsen", "snap", "cdse-odp")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Settings of the CARD backend of a deployment (built once in ``dags/cbm_conn.py``).

    Attributes:
        backend: one of :data:`BACKENDS`.
        dem_path: DEM for terrain correction and flattening (sarsen; SNAP takes it too, else
            SNAP downloads SRTM/Copernicus tiles itself).
        geoid_path: geoid grid to add to geoid-based DEM heights (e.g. ``/usr/share/proj/egm96_15.gtx``).
        margin_m: added around the AOI's parcels when cropping.
        bs_resolution_m, coh_resolution_m: output pixel sizes (10 and 20 m).
        grouping_area_factor, block_pixels, threads: sarsen's radar bin size for terrain
            flattening (GRD pixels, see :func:`cbm_tasks.card.sarsen_bs.gamma0_rtc`), dask block
            side and threads.
        gpt_path, gpt_memory, gpt_tile_cache_mb, gpt_threads, gpt_timeout_s, graph_dir: SNAP.
        coherence_window: SNAP coherence window (range, azimuth) in SLC pixels.
    """

    backend: str = "sarsen"
    dem_path: str | None = None
    geoid_path: str | None = None
    margin_m: float = 200.0
    bs_resolution_m: float = 10.0
    coh_resolution_m: float = 20.0
    grouping_area_factor: float = 5.0
    block_pixels: int = 1024
    threads: int = 2
    gpt_path: str = "gpt"
    gpt_memory: str = "8G"
    gpt_tile_cache_mb: int = 4096
    gpt_threads: int = 4
    gpt_timeout_s: float = 7200.0
    graph_dir: str | None = None
    coherence_window: tuple[int, int] = (20, 5)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"CARD backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.margin_m < 0 or self.bs_resolution_m <= 0 or self.coh_resolution_m <= 0:
            raise ConfigError(f"margin_m must be >= 0 and resolutions > 0, got {self.margin_m}, "
                              f"{self.bs_resolution_m}, {self.coh_resolution_m}")

    @property
    def card_types(self) -> tuple[str, ...]:
        """The CARD types this backend makes (jobs of other types are not planned)."""
        return {"sarsen": ("CARD-BS",), "snap": ("CARD-BS", "CARD-COH6", "CARD-COH12"),
                "cdse-odp": ("CARD-BS", "CARD-COH12")}[self.backend]

    def dem(self) -> DemConfig:
        """Return the DEM settings.

        Raises:
            ConfigError: no DEM is configured.
        """
        if not self.dem_path:
            raise ConfigError(f"CARD backend {self.backend}: no DEM configured (dem_path)")
        return DemConfig(path=self.dem_path, geoid_path=self.geoid_path)


@dataclass(frozen=True, slots=True)
class CardOutput:
    """What a backend made: one file in scratch and how it was made (for lineage and the catalogue).

    Attributes:
        path: the product file (a COG) in the scratch folder.
        bands: band names in file order, e.g. ``("VV", "VH")``.
        epsg, resolution_m: the output grid.
        footprint_wkt: where the product has values (EPSG:4326).
        lineage: backend, its version, graph, parameters, DEM: recorded per task try.
    """

    path: Path
    bands: tuple[str, ...]
    epsg: int
    resolution_m: float
    footprint_wkt: str
    lineage: dict[str, Any]


class CardBackend(Protocol):
    """Makes one CARD product from local copies of its sources."""

    name: str
    local_sources: bool  # True: process() copies the source SAFEs to the worker first

    def supports(self, card_type: str) -> bool:
        """Return whether this backend makes *card_type*."""

    def make(self, job: CardJob, sources: list[tuple[Product, Path]], scratch: Path) -> CardOutput:
        """Make the product of *job* in *scratch* from ``(catalogue record, local SAFE folder)`` pairs.

        Raises:
            BadInputError: the inputs cannot make the product (incomplete SAFE, DEM coverage, ...).
            CbmError: the backend failed in a way a retry may fix.
        """
