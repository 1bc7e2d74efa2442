"""Seeded synthetic time series written straight into PostGIS, for marker tests and the markers benchmark.

No rasters: a parcel set of square parcels is imported through ``cbm parcels import``'s code,
the images are registered as catalogue products (``SYNTHDB_*``), and each image's per-parcel
statistics go in through the extraction's own writer (binary COPY), exactly as extraction
would leave them. Sentinel-2 (B02, B04, B08, B11 and SCL class counts) every ``s2_every_days``
with a share of cloudy observations, Sentinel-1 CARD-BS (VV, VH) every ``s1_every_days``.
Vegetation follows :func:`cbm_tasks.demo.synthetic.vegetation_fraction` (grassland mown 1-3
times, maize, winter wheat, bare soil), so markers find the mowings and harvests of the truth.

Everything derives from ``seed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from shapely import box
from shapely.geometry import MultiPolygon

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.registry import register
from cbm_tasks.demo.synthetic import CROPS, vegetation_fraction
from cbm_tasks.demo.writer import write_parcels
from cbm_tasks.parcels.sets import import_parcels
from cbm_tasks.timeseries.write import ClassCountRows, ImageStats, replace_image_stats

__all__ = ["SeededSet", "add_s2_image", "seed_parcel_set"]

log = logging.getLogger(__name__)

EPSG = 32631
_ORIGIN = (600000.0, 5600000.0)
_CELL_M = 60.0
_S2_BANDS = ("B02", "B04", "B08", "B11")
_S1_BANDS = ("VV", "VH")


@dataclass(frozen=True, slots=True)
class SeededSet:
    """What :func:`seed_parcel_set` wrote."""

    aoi: str
    year: int
    parcel_set_id: int
    n_parcels: int
    product_ids: tuple[int, ...]
    truth: dict[str, tuple[tuple[int, str], ...]]  # parcel id -> (day of year, event)
    crops: dict[str, str]  # parcel id -> crop (CROPS key)


def _events(crop: str, rng: np.random.Generator) -> tuple[tuple[int, str], ...]:
    if crop == "grassland":
        day = int(rng.integers(135, 165))
        mowings = [day]
        for _ in range(int(rng.integers(0, 3))):
            day += int(rng.integers(40, 56))
            if day <= 250:
                mowings.append(day)
        return tuple((d, "mowing") for d in mowings)
    if crop == "maize":
        return ((int(rng.integers(258, 280)), "harvest"),)
    if crop == "winter_wheat":
        return ((int(rng.integers(195, 215)), "harvest"),)
    return ()


def _image_days(year: int, every: int, hour: int) -> list[datetime]:
    first, last = datetime(year, 3, 1, hour, 30, tzinfo=UTC), datetime(year, 10, 31, tzinfo=UTC)
    days, when = [], first
    while when <= last:
        days.append(when)
        when += timedelta(days=every)
    return days


def _s2_stats(cover: np.ndarray, cloudy: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return stats (n, 32) for B02, B04, B08, B11 and SCL counts (n, 12) for one image."""
    n = len(cover)
    nir = 0.18 + 0.22 * cover + rng.normal(0.0, 0.005, n)
    ndvi = np.clip(0.12 + 0.78 * cover + rng.normal(0.0, 0.015, n), -0.2, 0.95)
    red = nir * (1.0 - ndvi) / (1.0 + ndvi)
    blue = 0.03 + 0.5 * red
    swir = 0.25 - 0.1 * cover
    means = np.stack([blue, red, nir, swir], axis=1)
    means[cloudy] = [0.35, 0.36, 0.40, 0.30]
    stats = np.zeros((n, 8 * len(_S2_BANDS)), np.float32)
    for b in range(len(_S2_BANDS)):
        stats[:, 8 * b] = 100.0
        stats[:, 8 * b + 1:8 * b + 8] = means[:, b:b + 1]
        stats[:, 8 * b + 2] = 0.01
    counts = np.zeros((n, 12), np.int32)
    counts[:, 4] = 100  # vegetation
    counts[cloudy, 4] = 5
    counts[cloudy, 9] = 95  # cloud high probability
    return stats, counts


def _s1_stats(cover: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(cover)
    vv = 10 ** ((-14.0 + 4.0 * cover + rng.normal(0.0, 0.4, n)) / 10.0)
    vh = 10 ** ((-22.0 + 6.0 * cover + rng.normal(0.0, 0.4, n)) / 10.0)
    stats = np.zeros((n, 16), np.float32)
    for b, values in enumerate((vv, vh)):
        stats[:, 8 * b] = 25.0
        stats[:, 8 * b + 1:8 * b + 8] = values[:, None]
    return stats


def _product(aoi: str, kind: str, when: datetime, orbit: int | None) -> Product:
    product_type = "S2MSI2A" if kind == "s2" else "CARD-BS"
    return Product(uid=f"SYNTHDB_{aoi}_{kind}_{when:%Y%m%dT%H%M%S}",
                   name=f"SYNTHDB_{product_type}_{when:%Y%m%dT%H%M%S}",
                   catalogue="file", collection="SENTINEL-2" if kind == "s2" else "SENTINEL-1",
                   product_type=product_type, acquired_at=when, location=f"synthetic://{aoi}/{kind}/{when:%Y%m%d}",
                   relative_orbit=orbit, attributes={"cbm:synthetic": True})


def add_s2_image(conn: psycopg.Connection, *, aoi: str, year: int, when: datetime, parcel_keys: np.ndarray,
                 ndvi_cover: float = 0.8, cloudy: bool = False) -> int:
    """Register one more Sentinel-2 image observing *parcel_keys* (for incremental-run tests); return its id."""
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    register(conn, [_product(aoi, "s2", when, None)], aoi=aoi)
    row = conn.execute("SELECT product_id FROM cbm.product WHERE uid = %s",
                       (f"SYNTHDB_{aoi}_s2_{when:%Y%m%dT%H%M%S}",)).fetchone()
    if row is None:  # register() inserted it in its own committed transaction
        raise LookupError(f"product of {when} was not registered")
    keys = np.asarray(parcel_keys, np.int32)
    stats, counts = _s2_stats(np.full(len(keys), ndvi_cover), np.full(len(keys), cloudy), np.random.default_rng(0))
    image = ImageStats(_S2_BANDS, keys, stats, (ClassCountRows("SCL", keys, counts),))
    replace_image_stats(conn, parcel_set.parcel_set_id, int(row[0]), image, parcel_set_version=parcel_set.version,
                        params={}, seconds=0.0)
    return int(row[0])


def seed_parcel_set(conn: psycopg.Connection, out_dir: Path, *, aoi: str = "synthdb", year: int = 2018,
                    n_parcels: int = 1000, seed: int = 42, s2_every_days: int = 5, s1_every_days: int = 6,
                    cloud_share: float = 0.3) -> SeededSet:
    """Import *n_parcels* square parcels as (*aoi*, *year*) and write a season of S2 and S1 statistics.

    Args:
        conn: autocommit connection to a migrated CbM database.
        out_dir: folder for the parcel GeoPackage.
        aoi: AOI of the parcel set to create.
        year: its year.
        n_parcels: parcels (grid of 60 m cells).
        seed: everything derives from it.
        s2_every_days: Sentinel-2 revisit in days, 1 March to 31 October.
        s1_every_days: Sentinel-1 revisit in days (two alternating relative orbits).
        cloud_share: share of cloudy Sentinel-2 parcel observations (labelled in SCL).

    Returns:
        The set, its products and the ground truth.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    names = list(CROPS)
    shares = np.array([CROPS[name][2] for name in names], np.float64)
    crop_index = rng.choice(len(names), size=n_parcels, p=shares / shares.sum())
    n_cols = int(np.ceil(np.sqrt(n_parcels)))
    geometries = [MultiPolygon([box(_ORIGIN[0] + (i % n_cols) * _CELL_M, _ORIGIN[1] - (i // n_cols + 1) * _CELL_M,
                                    _ORIGIN[0] + (i % n_cols) * _CELL_M + _CELL_M - 10.0,
                                    _ORIGIN[1] - (i // n_cols) * _CELL_M - 10.0)]) for i in range(n_parcels)]
    parcel_ids = np.array([f"P{i + 1:07d}" for i in range(n_parcels)], dtype=object)
    crops = {parcel_ids[i]: names[crop_index[i]] for i in range(n_parcels)}
    path = out_dir / f"{aoi}_{year}_{n_parcels}_{seed}.gpkg"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parcels(path, layer="parcels", epsg=EPSG, geometries=geometries, columns={
        "parcel_id": parcel_ids,
        "crop_code": np.array([str(CROPS[crops[p]][0]) for p in parcel_ids], dtype=object),
        "crop_name": np.array([CROPS[crops[p]][1] for p in parcel_ids], dtype=object)})
    import_parcels(conn, path, aoi=aoi, year=year, id_column="parcel_id", crop_code_column="crop_code",
                   crop_name_column="crop_name")
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    rows = conn.execute("SELECT parcel_id, parcel_key FROM cbm.parcel WHERE parcel_set_id = %s",
                        (parcel_set.parcel_set_id,)).fetchall()
    key_of: dict[str, int] = {str(k): int(v) for k, v in rows}
    keys = np.array([key_of[p] for p in parcel_ids], np.int32)
    truth = {p: _events(crops[p], rng) for p in parcel_ids}
    s2_days = _image_days(year, s2_every_days, 10)
    s1_days = _image_days(year, s1_every_days, 17)
    products = [_product(aoi, "s2", when, None) for when in s2_days]
    products += [_product(aoi, "bs", when, 37 if k % 2 == 0 else 110) for k, when in enumerate(s1_days)]
    register(conn, products, aoi=aoi)
    id_rows = conn.execute("SELECT uid, product_id FROM cbm.product WHERE uid = ANY(%s)",
                           ([p.uid for p in products],)).fetchall()
    product_id: dict[str, int] = {str(k): int(v) for k, v in id_rows}
    doy = {when: when.timetuple().tm_yday for when in s2_days + s1_days}
    all_days = np.array(sorted(set(doy.values())))
    cover = np.stack([vegetation_fraction(crops[p], truth[p], all_days) for p in parcel_ids], axis=1)
    column = {day: i for i, day in enumerate(all_days.tolist())}
    for kind, days in (("s2", s2_days), ("bs", s1_days)):
        for when in days:
            parcel_cover = cover[column[doy[when]]]
            if kind == "s2":
                stats, counts = _s2_stats(parcel_cover, rng.random(n_parcels) < cloud_share, rng)
                image = ImageStats(_S2_BANDS, keys, stats, (ClassCountRows("SCL", keys, counts),))
            else:
                image = ImageStats(_S1_BANDS, keys, _s1_stats(parcel_cover, rng))
            replace_image_stats(conn, parcel_set.parcel_set_id, product_id[_product(aoi, kind, when, None).uid], image,
                                parcel_set_version=parcel_set.version, params={"synthetic": True}, seconds=0.0)
    log.info("seeded aoi=%s year=%d parcels=%d s2_images=%d s1_images=%d seconds=%.1f", aoi, year, n_parcels,
             len(s2_days), len(s1_days), time.perf_counter() - t0)
    return SeededSet(aoi, year, parcel_set.parcel_set_id, n_parcels, tuple(sorted(product_id.values())), truth, crops)

