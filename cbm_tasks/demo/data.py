"""The built-in demo: a local catalogue (STAC items + COGs) and a parcel file from a real WorldCereal cube.

Layout written by :func:`build_demo` (the local catalogue format of ARCHITECTURE.md), for the shared
cube of tile 31UDS (another chip's cube, ``--cube-dir``, gives its own tile, year and dates)::

    OUT/catalogue/sentinel-2-l2a/S2_31UDS_20180405/{S2_31UDS_20180405.json, B02.tif, ..., SCL.tif}
    OUT/catalogue/sentinel-1-card-bs/S1_CARD-BS_31UDS_20180405T173236/{<id>.json, VV.tif, VH.tif}
    OUT/parcels/demo_parcels_2018.gpkg

Files are written atomically and only when their content changes (:mod:`cbm_tasks.demo.writer`);
an item is written after its band files, so a reader never sees an item whose assets are missing.
"""

import logging
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from cbm_tasks.demo.cube import (
    CubeFiles,
    SensorCube,
    find_cube,
    open_sensor_cube,
    polygonise_crop_types,
    read_parcel_raster,
)
from cbm_tasks.demo.writer import SCL_CLASSES, BandFile, write_parcels, write_product
from cbm_tasks.errors import ConfigError, CorruptProductError
from cbm_tasks.ops import settings

__all__ = ["DemoLayout", "build_demo", "db_to_linear", "default_cube_dir", "demo_folder"]

log = logging.getLogger(__name__)

S2_10M = ("B02", "B03", "B04", "B08")
S2_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
S1_POLS = ("VV", "VH")


@dataclass(frozen=True, slots=True)
class DemoLayout:
    """Where a built demo lives, and what it holds.

    Attributes:
        catalogue_root: root of the local catalogue (``cbm_tasks.catalogue.local`` reads it).
        parcels_file: the parcel GeoPackage (EPSG:32631) for ``cbm parcels import``.
        aoi: AOI name to register the products and parcels under.
        year: parcel year.
        n_s2: Sentinel-2 L2A products in the catalogue.
        n_s1: Sentinel-1 CARD-BS products in the catalogue.
        n_parcels: parcels in ``parcels_file``.
        ground_truth_file: CSV of known events (synthetic AOI only).
        window: first and last day of the images (ISO dates; the catalogue is polled over them).
    """

    catalogue_root: Path
    parcels_file: Path
    aoi: str = "demo"
    year: int = 2018
    n_s2: int = 0
    n_s1: int = 0
    n_parcels: int = 0
    ground_truth_file: Path | None = None
    window: tuple[str, str] = ("2017-08-01", "2018-11-30")


@dataclass(frozen=True, slots=True)
class _Chip:
    """What names a cube's products: its location, MGRS tile and the files."""

    location: str
    tile: str
    files: CubeFiles


def demo_folder(out: Path, cube_dir: Path | None) -> Path:
    """Where the demo of *cube_dir* is built below *out*: ``demo/`` (shared cube) or ``demo-<cube folder>/``.

    Two chips' catalogues never mix in one folder.
    """
    return out / "demo" if cube_dir is None else out / f"demo-{cube_dir.resolve().name}"


def default_cube_dir() -> Path:
    """Return ``<project>/../shared/data/worldcereal_31UDS``, where the real cube lives."""
    return settings.project_dir().parent / "shared" / "data" / "worldcereal_31UDS"


def _source(chip: _Chip, cube: SensorCube, index: int, *, note: str) -> dict[str, Any]:
    return {
        "dataset": f"WorldCereal training cube, location {chip.location} (tile {chip.tile})",
        "origin": "WorldCereal/worldcereal-classification, tests/worldcerealtests/testresources/worldcerealtraining "
                  f"(MIT; the shared chip at commit 5db1e24), location {chip.location}",
        "file": cube.path.name,
        "time_index": index,
        "upstream_source": cube.attrs.get("source", ""),
        "note": note,
    }


def _s2_properties(chip: _Chip, s2: SensorCube, s2_20: SensorCube | None, index: int) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "cbm:collection": "SENTINEL-2",
        "cbm:product_type": "S2MSI2A",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "grid:code": f"MGRS-{chip.tile}",
        "processing:level": "L2A",
    }
    if s2_20 is not None:  # the 20 m file holds SCL and the angles
        scl = s2_20.bands["SCL"][index]
        valid = scl != 0
        cloudy = np.isin(scl, (8, 9, 10)) & valid
        angles = {name: float(values[index]) for name, values in s2_20.per_time.items()}
        properties |= {
            # Chip-level share of SCL cloud classes, not the granule's cloud cover.
            "eo:cloud_cover": round(100.0 * cloudy.sum() / max(int(valid.sum()), 1), 2),
            "view:sun_azimuth": round(angles["sunAzimuthAngles"], 4),
            "view:sun_elevation": round(90.0 - angles["sunZenithAngles"], 4),
            "view:azimuth": round(angles["viewAzimuthMean"], 4),
            "view:incidence_angle": round(angles["viewZenithMean"], 4),
        }
    properties["cbm:source"] = _source(
        chip, s2, index,
        note="DN = 10000 x surface reflectance; WorldCereal's cubes hold no BOA offset (scale 0.0001, offset 0)")
    return properties


def _s2_items(chip: _Chip, s2_10: SensorCube | None, s2_20: SensorCube | None, root: Path,
              indices: range) -> tuple[int, int]:
    first = s2_10 if s2_10 is not None else s2_20
    if first is None:
        return 0, 0
    written = 0
    for index in indices:
        acquired_at = first.times[index]
        item_id = f"S2_{chip.tile}_{acquired_at:%Y%m%d}"
        bands = [
            BandFile(
                band,
                cube.bands[band][index],
                cube.grid.transform,
                nodata=cube.nodata[band],
                scale=1.0 if band == "SCL" else 0.0001,
                classes=SCL_CLASSES if band == "SCL" else None,
            )
            for cube, names in ((s2_10, S2_10M), (s2_20, (*S2_20M, "SCL"))) if cube is not None
            for band in names
        ]
        written += write_product(
            root / "sentinel-2-l2a" / item_id,
            item_id,
            bands=bands,
            acquired_at=acquired_at,
            epsg=first.grid.epsg,
            bounds=first.grid.bounds,
            properties=_s2_properties(chip, first, s2_20, index),
            extensions=("projection", "raster", "classification", "eo", "view", "grid", "processing"),
        )
        log.debug("demo S2 product=%s", item_id)
    return len(indices), written


def _s1_items(chip: _Chip, s1: SensorCube, direction: str, root: Path, indices: range) -> tuple[int, int]:
    written = 0
    for index in indices:
        acquired_at = s1.times[index]
        item_id = f"S1_CARD-BS_{chip.tile}_{acquired_at:%Y%m%dT%H%M%S}"
        bands = [
            BandFile(
                pol,
                db_to_linear(s1.bands[pol][index], nodata=s1.nodata[pol]),
                s1.grid.transform,
                nodata=float("nan"),
                title=f"{pol} backscatter, linear power",
            )
            for pol in S1_POLS
        ]
        properties = {
            "cbm:collection": "SENTINEL-1",
            "cbm:product_type": "CARD-BS",
            "constellation": "sentinel-1",
            "instruments": ["c-sar"],
            "sar:instrument_mode": "IW",
            "sar:frequency_band": "C",
            "sar:polarizations": list(S1_POLS),
            "sar:product_type": "GRD",
            "sat:orbit_state": direction,
            "grid:code": f"MGRS-{chip.tile}",
            "cbm:source": _source(
                chip,
                s1,
                index,
                note="cube stores backscatter as dB x 10000 (int32, 0 = no data); "
                "written as linear power 10 ** (value / 100000), no data as NaN",
            ),
        }
        written += write_product(
            root / "sentinel-1-card-bs" / item_id,
            item_id,
            bands=bands,
            acquired_at=acquired_at,
            epsg=s1.grid.epsg,
            bounds=s1.grid.bounds,
            properties=properties,
            extensions=("projection", "raster", "sat", "sar", "grid"),
        )
        log.debug("demo S1 product=%s", item_id)
    return len(indices), written


def db_to_linear(stored: np.ndarray, *, nodata: float) -> np.ndarray:
    """Return linear backscatter (float32) from dB x 10000 integers; ``nodata`` becomes NaN."""
    linear: np.ndarray = np.power(10.0, stored.astype(np.float64) / 100000.0).astype(np.float32)
    linear[stored == nodata] = np.nan
    return linear


def _parcels(files: CubeFiles, out_dir: Path) -> tuple[Path, int, int, _Chip, tuple[str, str]]:
    """Write the parcels; return (file, parcels, year, chip, the cube's first and last day)."""
    grid, crop_types, land_cover, attrs = read_parcel_raster(files.parcels)
    start, end = attrs.get("start_date", ""), attrs.get("end_date", "")
    try:
        window = (date.fromisoformat(start).isoformat(), date.fromisoformat(end).isoformat())
    except ValueError as err:
        raise CorruptProductError(f"{files.parcels}: attributes start_date/end_date must be ISO dates, got "
                                  f"{start!r}/{end!r}") from err
    # the cube runs from the season before the register's year to its end (2017-08-01 .. 2018-11-30 for
    # the register of 2018): the parcel set's year is the last date's
    year = int(window[1][:4])
    location = attrs.get("location_id") or files.parcels.stem
    chip = _Chip(location, attrs.get("tile") or location, files)
    parcels = polygonise_crop_types(crop_types, land_cover, transform=grid.transform)
    path = out_dir / "parcels" / f"demo_parcels_{year}.gpkg"
    columns = {
        "parcel_id": np.array([p.parcel_id for p in parcels], dtype=object),
        "crop_code": np.array([p.crop_code for p in parcels], dtype=np.int32),
        "crop_name": np.array([p.crop_name for p in parcels], dtype=object),
        "lc_code": np.array([p.lc_code for p in parcels], dtype=np.int32),
        "lc_name": np.array([p.lc_name for p in parcels], dtype=object),
        "area_m2": np.array([p.geometry.area for p in parcels], dtype=np.float64),
    }
    write_parcels(
        path, layer=f"demo_parcels_{year}", geometries=[p.geometry for p in parcels], columns=columns, epsg=grid.epsg
    )
    return path, len(parcels), year, chip, window


def build_demo(out_dir: Path, *, cube_dir: Path | None = None, max_products: int | None = None) -> DemoLayout:
    """Build the demo AOI from a real WorldCereal cube: local catalogue and parcel file.

    One S2 L2A product per date of the S2 cubes (118 in the shared cube: B02-B12 and SCL as COGs;
    the bands of the 10 m or the 20 m file only where the chip has only that one) and one Sentinel-1
    CARD-BS product per date of each GRD cube (159: VV, VH linear power), plus the parcels
    polygonised from the crop-type raster, of the year the cube ends in (2018). Idempotent:
    unchanged files are kept.

    Args:
        out_dir: folder to build in (``catalogue/`` and ``parcels/`` are created below it).
        cube_dir: folder of the cube NetCDF files (:func:`cbm_tasks.demo.cube.find_cube`); default
            :func:`default_cube_dir`.
        max_products: only the first N dates of each sensor (quick runs, tests); None = all.

    Returns:
        The layout of what was built.

    Raises:
        CorruptProductError: a cube file is missing or unreadable, or the folder holds no cube.
        ConfigError: ``max_products`` is below 1.
    """
    if max_products is not None and max_products < 1:
        raise ConfigError(f"max_products must be at least 1 or None, got {max_products}")
    started = time.perf_counter()
    files = find_cube(cube_dir or default_cube_dir())
    root = out_dir / "catalogue"
    parcels_file, n_parcels, year, chip, window = _parcels(files, out_dir)
    s2_10 = None if files.s2_10m is None else open_sensor_cube(files.s2_10m, bands=S2_10M)
    s2_20 = None if files.s2_20m is None else open_sensor_cube(files.s2_20m, bands=(*S2_20M, "SCL"))
    if s2_10 is not None and s2_20 is not None and s2_10.times != s2_20.times:
        raise CorruptProductError(f"{files.folder}: the 10 m and 20 m Sentinel-2 cubes have different dates")
    s2 = s2_10 if s2_10 is not None else s2_20
    n_s2_dates = 0 if s2 is None else len(s2.times)
    n_s2, s2_written = _s2_items(chip, s2_10, s2_20, root, range(n_s2_dates)[:max_products])
    n_s1 = s1_written = 0
    for path, direction in files.s1:
        s1 = open_sensor_cube(path, bands=S1_POLS)
        n, written = _s1_items(chip, s1, direction, root, range(len(s1.times))[:max_products])
        n_s1, s1_written = n_s1 + n, s1_written + written
    log.info(
        "demo built out=%s cube=%s tile=%s year=%d s2=%d s1=%d parcels=%d files_written=%d seconds=%.2f",
        out_dir,
        chip.location,
        chip.tile,
        year,
        n_s2,
        n_s1,
        n_parcels,
        s2_written + s1_written,
        time.perf_counter() - started,
    )
    return DemoLayout(catalogue_root=root, parcels_file=parcels_file, year=year, n_s2=n_s2, n_s1=n_s1,
                      n_parcels=n_parcels, window=window)
