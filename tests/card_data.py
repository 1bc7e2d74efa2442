"""Test products for CARD production built from the real Rome GRD (real annotation and calibration).

The shared Rome GRD has blanked (all-zero) pixels and only its VV files. :func:`rome_grd` copies
its metadata into ``tmp_path``, adds VH as a copy of VV's annotation/calibration/noise (the
manifest lists VH; the LUTs are VV's, which is what the expectations use), and writes
measurement TIFFs of the product's full size that are sparse: only a window around the test
area holds known digital numbers, the rest reads as 0 without being stored.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from conftest import shared_data
from rasterio.windows import Window
from scipy.interpolate import griddata

from cbm_tasks.card.jobs import CardJob, card_bs_jobs
from cbm_tasks.catalogue.product import Product

__all__ = ["ROME_GRD", "RomeGrd", "gcp_lookup", "rome_grd", "rome_job", "rome_product"]

ROME_GRD = "S1B_IW_GRDH_1SDV_20211223T051122_20211223T051147_030148_039993_5371"
_SIZE = (16705, 26102)  # lines, pixels of the GRD measurement


@dataclass(frozen=True, slots=True)
class RomeGrd:
    """A filled copy of the Rome GRD: its folder and the measurement window with known DNs."""

    safe: Path
    window: Window
    split_line: int  # lines < split_line hold dn_first, the others dn_second (per polarisation)


def gcp_lookup(safe: Path, lon: np.ndarray, lat: np.ndarray, variable: str) -> np.ndarray:
    """Interpolate a geolocation-grid variable (``line``, ``pixel``, ``incidenceAngle``) at lon/lat points."""
    gcp = xr.open_dataset(safe, engine="sentinel-1", group="IW/VV/gcp").load()
    glon, glat = gcp.longitude.values.ravel(), gcp.latitude.values.ravel()
    if variable in ("line", "pixel"):
        lines, pixels = np.meshgrid(gcp.line.values, gcp.pixel.values, indexing="ij")
        values = (lines if variable == "line" else pixels).ravel().astype(float)
    else:
        values = gcp[variable].values.ravel()
    return np.asarray(griddata((glon, glat), values, (lon, lat), method="linear"))


def rome_grd(
    tmp_path: Path, *, lon: float, lat: float, half_size_deg: float, dn_first: Mapping[str, int],
    dn_second: Mapping[str, int], polarisations: tuple[str, ...] = ("VV", "VH"),
) -> RomeGrd:
    """Copy the Rome GRD with DNs set around (lon, lat): dn_first before its middle line, dn_second after."""
    source = shared_data("s1_sarsen_rome", f"{ROME_GRD}.SAFE")
    safe = tmp_path / f"{ROME_GRD}.SAFE"
    shutil.copytree(source, safe, ignore=shutil.ignore_patterns("*.tiff"))
    for file in list(safe.rglob("*-vv-*.xml")):
        vh = file.with_name(file.name.replace("-vv-", "-vh-").replace("-001.xml", "-002.xml"))
        vh.write_bytes(file.read_bytes())
    corners_lon = np.array([lon - half_size_deg, lon + half_size_deg, lon - half_size_deg, lon + half_size_deg])
    corners_lat = np.array([lat - half_size_deg, lat - half_size_deg, lat + half_size_deg, lat + half_size_deg])
    lines = gcp_lookup(safe, corners_lon, corners_lat, "line")
    pixels = gcp_lookup(safe, corners_lon, corners_lat, "pixel")
    margin = 300
    row0, row1 = int(lines.min()) - margin, int(lines.max()) + margin
    col0, col1 = int(pixels.min()) - margin, int(pixels.max()) + margin
    window = Window(col0, row0, col1 - col0, row1 - row0)
    split_line = int(gcp_lookup(safe, np.array([lon]), np.array([lat]), "line")[0])
    for pol in polarisations:
        number = "001" if pol == "VV" else "002"
        name = f"s1b-iw-grd-{pol.lower()}-20211223t051122-20211223t051147-030148-039993-{number}.tiff"
        values = np.full((window.height, window.width), dn_second[pol], np.uint16)
        values[: split_line - row0] = dn_first[pol]
        profile = {"driver": "GTiff", "dtype": "uint16", "width": _SIZE[1], "height": _SIZE[0], "count": 1,
                   "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "sparse_ok": True}
        with warnings.catch_warnings():  # like ESA's, the TIFF has GCPs in the annotation only
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(safe / "measurement" / name, "w", **profile) as dst:
                dst.write(values, 1, window=window)
    return RomeGrd(safe=safe, window=window, split_line=split_line)


def rome_product(safe: Path, *, location: str | None = None) -> Product:
    """The catalogue record of the Rome GRD (footprint from its annotation, as a catalogue gives it)."""
    gcp = xr.open_dataset(safe, engine="sentinel-1", group="IW/VV/gcp")
    return Product(
        uid=f"uid-{ROME_GRD}", name=ROME_GRD, catalogue="cdse-odata", collection="SENTINEL-1",
        product_type="IW_GRDH_1S", acquired_at=datetime(2021, 12, 23, 5, 11, 22, 594441, tzinfo=UTC),
        location=location or str(safe), platform="S1B", relative_orbit=22, orbit_direction="DESCENDING",
        footprint_wkt=gcp.attrs["geospatial_bounds"], checksum="md5:0123456789abcdef0123456789abcdef",
    )  # fmt: skip


def rome_job(product: Product, area_wkt: str, *, aoi: str = "rome") -> CardJob:
    """The CARD-BS job of the Rome GRD over *area_wkt*, as :func:`card_bs_jobs` plans it."""
    (job,) = card_bs_jobs([product], {aoi: area_wkt})
    return job


def metadata_only_safe(tmp_path: Path, source_name: str, *, name: str | None = None) -> Path:
    """Copy a shared Rome SAFE's metadata and complete it with the files its manifest lists.

    A missing annotation, calibration or noise file (other polarisation, other sub-swaths) is a
    copy of the one present of its kind; measurements are placeholders.

    For backends that hand the SAFE to another program (gpt, a remote service): the SAFE check
    passes, the pixels are never read here.
    """
    source = shared_data("s1_sarsen_rome", f"{source_name}.SAFE")
    safe = tmp_path / f"{name or source_name}.SAFE"
    shutil.copytree(source, safe, ignore=shutil.ignore_patterns("*.tiff"))
    manifest = (safe / "manifest.safe").read_text()
    for href in re.findall(r'href="\./((?:annotation|measurement)/[^"]+)"', manifest):
        target = safe / href
        if target.exists():
            continue
        if target.suffix == ".tiff":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"II*\x00placeholder")
            continue
        kind = target.name.split("-")[0]  # calibration, noise, rfi, or the mission (s1a/s1b): product annotation
        present = next((f for f in target.parent.glob(f"{kind}-*.xml") if f.exists()), None)
        # the shared SLC has no noise file at all: a stand-in, never parsed here
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(present.read_bytes() if present is not None else f"<{kind}/>".encode())
    return safe
