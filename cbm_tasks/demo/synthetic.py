"""A seeded synthetic AOI for scale tests: thousands of parcels, a season of S2 and S1 images, ground truth.

Parcels are jittered quadrilaterals on a regular grid with 10 m margins between them (hedges,
tracks). Each parcel is mown grassland (1-3 mowings), maize or winter wheat (one harvest), or
bare soil. A vegetation fraction per parcel and date drives Sentinel-2 B04/B08 (NDVI from about
0.13 for bare soil to 0.87 for full cover) and Sentinel-1 VV/VH backscatter; clouds with their
shadows are drawn into the images and labelled in SCL (8, 9 and 3). The known mowing and
harvest dates go to a ground-truth CSV, so marker detection can be scored.

Everything derives from ``seed``: two builds with the same arguments give identical files.
Nothing here is real data; item ids start with ``SYNTH`` and items carry ``cbm:synthetic``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio import features
from shapely.geometry import MultiPolygon, Polygon

from cbm_tasks.demo.data import DemoLayout
from cbm_tasks.demo.writer import SCL_CLASSES, BandFile, write_parcels, write_product, write_text
from cbm_tasks.errors import ConfigError

__all__ = ["CROPS", "SyntheticParcel", "build_synthetic", "vegetation_fraction"]

log = logging.getLogger(__name__)

EPSG = 32631
ORIGIN = (510000.0, 5640000.0)  # top-left corner in tile 31UDS, well away from the real demo chip
SEASON = (date(2018, 3, 1), date(2018, 10, 31))
# crop key -> (WorldCereal crop-type code, name, share of parcels)
CROPS = {
    "grassland": (9120, "Permanent grass crops (mown)", 0.45),
    "maize": (1200, "Maize", 0.2),
    "winter_wheat": (1110, "Winter wheat", 0.2),
    "bare": (9900, "Bare soil (fallow)", 0.15),
}
_MARGIN_M = 10.0
_CLEAR_B04, _CLEAR_B08 = (0.10, 0.03), (0.13, 0.42)  # (bare soil, full cover) reflectance


@dataclass(frozen=True, slots=True)
class SyntheticParcel:
    """One synthetic parcel with its known events (day of year, event name)."""

    key: int
    parcel_id: str
    crop: str
    geometry: Polygon
    events: tuple[tuple[int, str], ...]


def vegetation_fraction(crop: str, events: tuple[tuple[int, str], ...], days: np.ndarray) -> np.ndarray:
    """Return the green vegetation fraction (0..1) of a parcel on each day of year in ``days``.

    Grassland grows over the season and drops to 30 % of its cover at each mowing, recovering in
    four weeks; maize emerges in May and is harvested; winter wheat is green from March, ripens
    in July and is harvested; bare soil stays bare.
    """
    days = days.astype(np.float64)
    if crop == "grassland":
        cover = 0.55 + 0.35 * np.clip(np.sin(np.pi * (days - 60) / 250), 0.0, 1.0)
        for day, _ in events:
            after = days >= day
            recovery = 0.3 + 0.7 * np.clip((days - day) / 28.0, 0.0, 1.0)
            cover = np.where(after, cover * recovery, cover)
        return cover
    if crop == "maize":
        harvest = events[0][0]
        growth = 0.05 + 0.9 / (1.0 + np.exp(-(days - 175) / 9.0))
        return np.where(days >= harvest, 0.05, growth)
    if crop == "winter_wheat":
        harvest = events[0][0]
        green = 0.5 + 0.45 * np.clip((days - 60) / 75.0, 0.0, 1.0)
        ripening = np.clip((days - 170) / 25.0, 0.0, 1.0)
        return np.where(days >= harvest, 0.05, green - 0.6 * ripening * green)
    return np.full(days.shape, 0.03)


def _parcels(n_parcels: int, cell_px: int, rng: np.random.Generator) -> tuple[list[SyntheticParcel], int, int]:
    n_cols = math.ceil(math.sqrt(n_parcels))
    n_rows = math.ceil(n_parcels / n_cols)
    jitter = rng.uniform(-0.25, 0.25, size=(n_rows + 1, n_cols + 1, 2)) * cell_px
    jitter[[0, -1], :, 1] = 0.0  # keep the outer edge straight
    jitter[:, [0, -1], 0] = 0.0
    rows, cols = np.mgrid[0 : n_rows + 1, 0 : n_cols + 1]
    vx = ORIGIN[0] + 10.0 * (cols * cell_px + jitter[..., 0])
    vy = ORIGIN[1] - 10.0 * (rows * cell_px + jitter[..., 1])
    names = list(CROPS)
    crops = rng.choice(len(names), size=n_parcels, p=[CROPS[name][2] for name in names])
    parcels = []
    for key in range(1, n_parcels + 1):
        row, col = divmod(key - 1, n_cols)
        corners = [(row, col), (row, col + 1), (row + 1, col + 1), (row + 1, col)]
        quad = Polygon([(vx[r, c], vy[r, c]) for r, c in corners]).buffer(-_MARGIN_M / 2, join_style="mitre")
        crop = names[int(crops[key - 1])]
        parcels.append(SyntheticParcel(key, f"syn-{key:05d}", crop, quad, _events(crop, rng)))
    return parcels, n_rows * cell_px, n_cols * cell_px


def _events(crop: str, rng: np.random.Generator) -> tuple[tuple[int, str], ...]:
    if crop == "grassland":
        day = int(rng.integers(130, 162))  # first cut 10 May .. 10 June
        mowings = [day]
        for _ in range(int(rng.integers(0, 3))):
            day += int(rng.integers(35, 56))
            if day <= 273:
                mowings.append(day)
        return tuple((day, "mowing") for day in mowings)
    if crop == "maize":
        return ((int(rng.integers(258, 289)), "harvest"),)  # 15 Sep .. 15 Oct
    if crop == "winter_wheat":
        return ((int(rng.integers(191, 218)), "harvest"),)  # 10 Jul .. 5 Aug
    return ()


def _clouds(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return masks (cloud core, cloud rim, shadow) of a few round clouds; a third of images are clear."""
    core = np.zeros(shape, dtype=bool)
    rim = np.zeros(shape, dtype=bool)
    if rng.random() < 1 / 3:
        return core, rim, np.zeros(shape, dtype=bool)
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius = rng.uniform(0.03, 0.15) * max(shape)
        distance = np.hypot(yy - cy, xx - cx)
        core |= distance < 0.8 * radius
        rim |= distance < radius
    rim &= ~core
    cloud = core | rim
    offset = max(2, int(0.02 * max(shape)))
    shadow = np.zeros(shape, dtype=bool)
    shadow[offset:, offset:] = cloud[:-offset, :-offset]
    return core, rim, shadow & ~cloud


def _s2_image(
    labels: np.ndarray, cover: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return B04, B08 (uint16 DN) at 10 m and SCL (uint8) at 20 m for one date."""
    fraction = np.clip(cover[labels] + rng.normal(0.0, 0.03, labels.shape), 0.0, 1.0)
    b04 = _CLEAR_B04[0] + (_CLEAR_B04[1] - _CLEAR_B04[0]) * fraction
    b08 = _CLEAR_B08[0] + (_CLEAR_B08[1] - _CLEAR_B08[0]) * fraction
    scl = np.where((b08 - b04) / (b08 + b04) > 0.35, 4, 5).astype(np.uint8)
    core, rim, shadow = _clouds(labels.shape, rng)
    cloud = core | rim
    b04 = np.where(cloud, 0.28 + 0.05 * core, np.where(shadow, 0.4 * b04, b04))
    b08 = np.where(cloud, 0.32 + 0.05 * core, np.where(shadow, 0.4 * b08, b08))
    scl[shadow] = 3
    scl[rim] = 8
    scl[core] = 9
    return _dn(b04), _dn(b08), np.ascontiguousarray(scl[::2, ::2])


def _dn(reflectance: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(reflectance * 10000.0), 1, 65535).astype(np.uint16)


def _s1_image(labels20: np.ndarray, cover: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return VV, VH linear backscatter (float32) at 20 m; speckle of a 5-look intensity."""
    fraction = cover[labels20]
    vv_db = -14.0 + 4.0 * fraction
    vh_db = -24.0 + 9.0 * fraction
    speckle = rng.gamma(5.0, 1.0 / 5.0, size=(2, *labels20.shape))
    vv = (np.power(10.0, vv_db / 10.0) * speckle[0]).astype(np.float32)
    vh = (np.power(10.0, vh_db / 10.0) * speckle[1]).astype(np.float32)
    return vv, vh


def _dates(n_images: int, first: date, hour: int, minute: int) -> list[datetime]:
    span = (SEASON[1] - first).days
    return [
        datetime(first.year, first.month, first.day, hour, minute, tzinfo=UTC)
        + timedelta(days=round(i * span / n_images))
        for i in range(n_images)
    ]


def _ground_truth(parcels: list[SyntheticParcel]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["parcel_id", "crop", "event", "date"])
    for parcel in parcels:
        for day, event in parcel.events or ((0, "none"),):
            when = (date(2018, 1, 1) + timedelta(days=day - 1)).isoformat() if day else ""
            writer.writerow([parcel.parcel_id, parcel.crop, event, when])
    return buffer.getvalue()


def build_synthetic(
    out_dir: Path, *, n_parcels: int = 3000, n_images: int = 40, seed: int = 42, cell_px: int = 16
) -> DemoLayout:
    """Build the seeded synthetic AOI ``synthetic``: catalogue, parcels and ground truth.

    Args:
        out_dir: folder to build in (``catalogue/``, ``parcels/`` and ``ground_truth.csv``).
        n_parcels: number of parcels; the image is about sqrt(n_parcels) * cell_px pixels wide.
        n_images: Sentinel-2 dates over 1 March .. 31 October 2018, and as many Sentinel-1 dates.
        seed: seed of every random choice; the same seed gives the same files.
        cell_px: grid cell size in 10 m pixels (16 = 160 m, parcels of about 2 ha). Must be even.

    Returns:
        The layout (aoi ``synthetic``, year 2018, with ``ground_truth_file``).

    Raises:
        ConfigError: a count is below 1 or ``cell_px`` is odd or below 6.
    """
    if n_parcels < 1 or n_images < 1 or cell_px < 6 or cell_px % 2:
        raise ConfigError(
            f"synthetic AOI: need n_parcels, n_images >= 1 and an even cell_px >= 6, got "
            f"n_parcels={n_parcels} n_images={n_images} cell_px={cell_px}"
        )
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    parcels, height, width = _parcels(n_parcels, cell_px, rng)
    transform10 = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    transform20 = Affine(20.0, 0.0, ORIGIN[0], 0.0, -20.0, ORIGIN[1])
    labels = features.rasterize(
        ((parcel.geometry, parcel.key) for parcel in parcels),
        out_shape=(height, width),
        transform=transform10,
        fill=0,
        dtype="int32",
    )
    labels20 = np.ascontiguousarray(labels[::2, ::2])
    s2_dates = _dates(n_images, SEASON[0], 10, 56)
    s1_dates = _dates(n_images, SEASON[0] + timedelta(days=2), 17, 32)
    root = out_dir / "catalogue"
    bounds = (ORIGIN[0], ORIGIN[1] - 10.0 * height, ORIGIN[0] + 10.0 * width, ORIGIN[1])
    s2_cover, s1_cover = _cover(parcels, s2_dates), _cover(parcels, s1_dates)
    common = {"grid:code": "MGRS-31UDS", "cbm:synthetic": True, "cbm:seed": seed}
    for index, when in enumerate(s2_dates):
        b04, b08, scl = _s2_image(labels, s2_cover[index], np.random.default_rng([seed, 2, index]))
        item_id = f"SYNTH_S2_{when:%Y%m%d}"
        bands = [
            BandFile("B04", b04, transform10, nodata=0, scale=0.0001),
            BandFile("B08", b08, transform10, nodata=0, scale=0.0001),
            BandFile("SCL", scl, transform20, nodata=0, classes=SCL_CLASSES),
        ]
        properties = {"cbm:collection": "SENTINEL-2", "cbm:product_type": "S2MSI2A", "constellation": "sentinel-2"}
        write_product(
            root / "sentinel-2-l2a" / item_id,
            item_id,
            bands=bands,
            acquired_at=when,
            epsg=EPSG,
            bounds=bounds,
            properties={**properties, **common},
            extensions=("projection", "raster", "classification", "grid"),
        )
    for index, when in enumerate(s1_dates):
        vv, vh = _s1_image(labels20, s1_cover[index], np.random.default_rng([seed, 1, index]))
        item_id = f"SYNTH_S1_CARD-BS_{when:%Y%m%dT%H%M%S}"
        bands = [
            BandFile("VV", vv, transform20, nodata=float("nan"), title="VV backscatter, linear power"),
            BandFile("VH", vh, transform20, nodata=float("nan"), title="VH backscatter, linear power"),
        ]
        properties = {
            "cbm:collection": "SENTINEL-1",
            "cbm:product_type": "CARD-BS",
            "constellation": "sentinel-1",
            "sat:orbit_state": "ascending",
        }
        write_product(
            root / "sentinel-1-card-bs" / item_id,
            item_id,
            bands=bands,
            acquired_at=when,
            epsg=EPSG,
            bounds=bounds,
            properties={**properties, **common},
            extensions=("projection", "raster", "sat", "grid"),
        )
    parcels_file = out_dir / "parcels" / "synthetic_parcels_2018.gpkg"
    write_parcels(
        parcels_file,
        layer="synthetic_parcels_2018",
        epsg=EPSG,
        geometries=[MultiPolygon([parcel.geometry]) for parcel in parcels],
        columns={
            "parcel_id": np.array([parcel.parcel_id for parcel in parcels], dtype=object),
            "crop_code": np.array([CROPS[parcel.crop][0] for parcel in parcels], dtype=np.int32),
            "crop_name": np.array([CROPS[parcel.crop][1] for parcel in parcels], dtype=object),
            "crop": np.array([parcel.crop for parcel in parcels], dtype=object),
            "area_m2": np.array([parcel.geometry.area for parcel in parcels], dtype=np.float64),
        },
    )
    truth_file = out_dir / "ground_truth.csv"
    write_text(truth_file, _ground_truth(parcels))
    log.info(
        "synthetic AOI built out=%s parcels=%d s2=%d s1=%d size_px=%dx%d seed=%d seconds=%.2f",
        out_dir,
        len(parcels),
        len(s2_dates),
        len(s1_dates),
        width,
        height,
        seed,
        time.perf_counter() - started,
    )
    return DemoLayout(
        catalogue_root=root,
        parcels_file=parcels_file,
        aoi="synthetic",
        year=2018,
        n_s2=len(s2_dates),
        n_s1=len(s1_dates),
        n_parcels=len(parcels),
        ground_truth_file=truth_file,
    )


def _cover(parcels: list[SyntheticParcel], dates: list[datetime]) -> np.ndarray:
    """Vegetation fraction (date, label); label 0 = the margins (hedges, grass strips)."""
    days = np.array([when.timetuple().tm_yday for when in dates])
    cover = np.full((len(dates), len(parcels) + 1), 0.6)
    for parcel in parcels:
        cover[:, parcel.key] = vegetation_fraction(parcel.crop, parcel.events, days)
    return cover
