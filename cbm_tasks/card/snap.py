"""The ``snap`` backend: CARD-BS and CARD-COH6/12 with ESA SNAP ``gpt`` and the graphs in ``snap/``.

CARD-BS runs ``card_bs.xml`` once. Coherence runs ``card_coh_swath.xml`` (or
``card_coh_swath_assembled.xml`` when the later date needs two slices) once per IW sub-swath
the AOI touches, then ``card_coh_tc.xml`` (one swath) or ``card_coh_merge2/3.xml``. gpt writes
GeoTIFF; the result is checked (exit code 0 is not enough: the file must open with the expected
bands) and rewritten as a described COG (:mod:`cbm_tasks.card.cog`). Production runs this
backend in the SNAP worker image (``docker/snap-worker/``), where ``gpt`` is installed.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET  # noqa: S405 - ESA annotation of products we chose to process
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.errors import RasterioError

from cbm_tasks.card.backend import BackendConfig, CardOutput
from cbm_tasks.card.cog import write_card_cog
from cbm_tasks.card.gpt import GptSettings, SnapGraph, read_graph, run_gpt
from cbm_tasks.card.grid import OutputGrid
from cbm_tasks.card.jobs import CardJob
from cbm_tasks.card.safe import inspect_safe
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import BadInputError, CorruptProductError, SnapError
from cbm_tasks.paths import REPO_ROOT

__all__ = ["GRAPH_DIR", "SnapBackend", "swath_footprints"]

log = logging.getLogger(__name__)

GRAPH_DIR = REPO_ROOT / "snap"
_ORBIT = "Sentinel Precise (Auto Download)"
_AUTO_UTM = "AUTO:42001"
_DEGREES_PER_M = 1 / 111_000  # margin around the AOI, in degrees of latitude (generous in longitude)


def swath_footprints(safe: Path) -> dict[str, str]:
    """Return ``IW1``..``IW3`` -> footprint WKT (EPSG:4326) from an SLC's annotation geolocation grids.

    Raises:
        CorruptProductError: an annotation file cannot be read.
    """
    footprints: dict[str, str] = {}
    for annotation in sorted((safe / "annotation").glob("s1?-iw?-slc-*.xml")):
        swath = annotation.name.split("-")[1].upper()
        if swath in footprints:
            continue
        try:
            root = ET.parse(annotation).getroot()  # noqa: S314 - see the import
        except (OSError, ET.ParseError) as err:
            raise CorruptProductError(f"SLC {safe.name}: cannot read {annotation.name}: {err}") from err
        points = [(float(p.findtext("longitude") or "nan"), float(p.findtext("latitude") or "nan"))
                  for p in root.iter("geolocationGridPoint")]
        footprints[swath] = shapely.MultiPoint(points).convex_hull.wkt
    return footprints


class SnapBackend:
    """CARD products with ESA SNAP ``gpt`` (see the module docstring)."""

    name = "snap"
    local_sources = True

    def __init__(self, cfg: BackendConfig) -> None:
        self.cfg = cfg
        self.settings = GptSettings(gpt_path=cfg.gpt_path, memory=cfg.gpt_memory, tile_cache_mb=cfg.gpt_tile_cache_mb,
                                    threads=cfg.gpt_threads, timeout_s=cfg.gpt_timeout_s)
        self.graph_dir = Path(cfg.graph_dir) if cfg.graph_dir else GRAPH_DIR

    def supports(self, card_type: str) -> bool:
        """Return True for CARD-BS, CARD-COH6 and CARD-COH12."""
        return card_type in ("CARD-BS", "CARD-COH6", "CARD-COH12")

    def graph(self, name: str) -> SnapGraph:
        """Return the checked graph ``<graph_dir>/<name>.xml``."""
        return read_graph(self.graph_dir / f"{name}.xml")

    def _dem_parameters(self) -> dict[str, str]:
        if self.cfg.dem_path:
            return {"demName": "External DEM", "externalDEMFile": self.cfg.dem_path,
                    "externalDEMApplyEGM": "true" if self.cfg.geoid_path else "false"}
        # SNAP fetches Copernicus DEM tiles itself and applies their EGM2008 geoid
        return {"demName": "Copernicus 30m Global DEM", "externalDEMFile": "", "externalDEMApplyEGM": "false"}

    def _region(self, job: CardJob) -> str:
        margin = self.cfg.margin_m * _DEGREES_PER_M
        region: str = shapely.from_wkt(job.footprint_wkt).envelope.buffer(margin, join_style="mitre").wkt
        return region

    def make(self, job: CardJob, sources: list[tuple[Product, Path]], scratch: Path) -> CardOutput:
        """Make the product of *job* in *scratch* with gpt.

        Raises:
            BadInputError: sources that do not fit the job; an incomplete SAFE; no sub-swath over the AOI.
            SnapNotInstalledError: no gpt.
            SnapError: gpt failed, timed out, or wrote no or a partial product.
        """
        safes = [inspect_safe(path) for _, path in sources]
        expected = ("GRD",) if job.card_type == "CARD-BS" else ("SLC",) * len(job.sources)
        if tuple(safe.product_type for safe in safes) != expected or len(sources) not in (1, 2, 3):
            raise BadInputError(f"job {job.key}: {job.card_type} needs {expected}, got "
                                f"{[safe.product_type for safe in safes]}")
        polarisations = ",".join(safes[0].polarisations)
        common = {"polarisations": polarisations, "mapProjection": _AUTO_UTM, **self._dem_parameters()}
        runs: list[dict[str, Any]] = []
        if job.card_type == "CARD-BS":
            resolution = self.cfg.bs_resolution_m
            snap_out = scratch / "card_bs.tif"
            parameters = {**common, "input": str(sources[0][1] / "manifest.safe"), "output": str(snap_out),
                          "geoRegion": self._region(job), "pixelSpacing": str(resolution), "orbitType": _ORBIT}
            runs.append(self._run("card_bs", parameters, product=sources[0][0].name))
        else:
            resolution = self.cfg.coh_resolution_m
            snap_out = scratch / "card_coh.tif"
            runs += self._coherence(job, sources, scratch, common, snap_out, resolution)
        bands, grid = _read_snap_output(snap_out, n_bands=len(safes[0].polarisations), job=job)
        names = tuple(safes[0].polarisations)
        path = write_card_cog(
            scratch / f"{job.card_type}_{sources[0][0].name}.tif", dict(zip(names, bands, strict=True)), grid=grid,
            acquired_at=job.acquired_at,
            tags={"CARD_TYPE": job.card_type, "SOURCE_PRODUCTS": ",".join(job.source_names),
                  "MEASUREMENT": "gamma0, linear power" if job.card_type == "CARD-BS" else "coherence, 0..1",
                  "BACKEND": "ESA SNAP gpt", "AOI": job.aoi},
        )
        lineage = {"backend": self.name, "gpt": self.settings.gpt_path, "memory": self.settings.memory,
                   "tile_cache_mb": self.settings.tile_cache_mb, "runs": runs, "dem": common["externalDEMFile"]
                   or common["demName"],
                   "inputs": {safe.name: {"checksum": product.checksum, "manifest_md5": safe.manifest_md5}
                              for safe, (product, _) in zip(safes, sources, strict=True)}}
        return CardOutput(path=path, bands=names, epsg=grid.epsg, resolution_m=resolution,
                          footprint_wkt=job.footprint_wkt, lineage=lineage)

    def _run(self, graph_name: str, parameters: dict[str, str], *, product: str) -> dict[str, Any]:
        graph = self.graph(graph_name)
        seconds = run_gpt(self.settings, graph, parameters, product=product)
        return {"graph": graph_name, "graph_id": graph.graph_id, "parameters": parameters, "seconds": round(seconds, 1)}

    def _coherence(self, job: CardJob, sources: list[tuple[Product, Path]], scratch: Path, common: dict[str, str],
                   snap_out: Path, resolution: float) -> list[dict[str, Any]]:
        area = shapely.from_wkt(job.footprint_wkt)
        swaths = [swath for swath, wkt in swath_footprints(sources[0][1]).items()
                  if shapely.from_wkt(wkt).intersects(area)]
        if not swaths:
            raise BadInputError(f"job {job.key}: no IW sub-swath of {sources[0][0].name} covers the AOI")
        graph_name = "card_coh_swath" if len(sources) == 2 else "card_coh_swath_assembled"
        inputs = {"input": sources[0][1], "input2": sources[1][1], **({"input3": sources[2][1]} if len(sources) == 3
                                                                      else {})}
        runs, debursted = [], []
        for swath in swaths:
            out = scratch / f"coh_{swath}.dim"
            parameters = {**common, **{k: str(v / "manifest.safe") for k, v in inputs.items()}, "output": str(out),
                          "subswath": swath, "geoRegion": self._region(job), "orbitType": _ORBIT,
                          "cohWinRg": str(self.cfg.coherence_window[0]), "cohWinAz": str(self.cfg.coherence_window[1])}
            parameters.pop("mapProjection")
            runs.append(self._run(graph_name, parameters, product=f"{sources[0][0].name} {swath}"))
            debursted.append(out)
        final = {"card_coh_tc": 1, "card_coh_merge2": 2, "card_coh_merge": 3}
        name = next(graph for graph, n in final.items() if n == len(debursted))
        keys = ("input", "input2", "input3")[: len(debursted)]
        parameters = {**common, **{key: str(path) for key, path in zip(keys, debursted, strict=True)},
                      "output": str(snap_out), "pixelSpacing": str(resolution)}
        if name == "card_coh_tc":
            parameters.pop("polarisations")
        runs.append(self._run(name, parameters, product=sources[0][0].name))
        return runs


def _read_snap_output(path: Path, *, n_bands: int, job: CardJob) -> tuple[list[np.ndarray], OutputGrid]:
    """Read gpt's GeoTIFF: all bands and its (north-up, metric) grid; anything else is a failed run."""
    if not path.is_file():
        raise SnapError(f"job {job.key}: gpt exited 0 but wrote no {path.name}")
    try:
        with rasterio.open(path) as src:
            if src.count != n_bands or src.crs is None or src.crs.to_epsg() is None:
                raise SnapError(f"job {job.key}: gpt wrote {path.name} with {src.count} bands and CRS {src.crs}, "
                                f"expected {n_bands} bands on an EPSG grid")
            transform = src.transform
            if transform.b != 0 or transform.d != 0 or transform.e >= 0 or transform.a != -transform.e:
                raise SnapError(f"job {job.key}: gpt output {path.name} is not on a north-up square grid: {transform}")
            bands = [src.read(index).astype(np.float32) for index in range(1, n_bands + 1)]
            nodata = src.nodata
            grid = OutputGrid(epsg=int(src.crs.to_epsg()), resolution_m=float(transform.a), left=transform.c,
                              top=transform.f, width=src.width, height=src.height)
    except RasterioError as err:
        raise SnapError(f"job {job.key}: gpt output {path.name} is unreadable (partial write?): {err}") from err
    if nodata is not None and not np.isnan(nodata):
        for band in bands:
            band[band == nodata] = np.nan
    return bands, grid
