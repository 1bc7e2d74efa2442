"""Read a WorldCereal training cube (the demo's: shared/data/worldcereal_31UDS) into plain arrays.

A cube is a folder of NetCDF files on one chip (640 m x 640 m in the shared one, EPSG:32631):
Sentinel-2 L2A at 10 m and 20 m (reflectance x 10000, ``_FillValue`` 0, SCL in the 20 m file),
Sentinel-1 GRD ascending and/or descending at 20 m (backscatter in dB x 10000 as int32,
``_FillValue`` 0) and ``OUTPUT_POLY-*``, the parcel register rasterised to crop-type (``CT``),
land-cover (``LC``) and irrigation (``IRR``) codes of the WorldCereal legend on the 10 m grid
(the Flemish register of 2018 in the shared one). :func:`find_cube` finds the files of any chip
by their names (``S2_L2A_10m_<location>_<epsg>_<start>_<end>.nc``, ...): a chip may lack a sensor
(WorldCereal's cubes of some locations have no 10 m Sentinel-2 file).

This module only reads and checks; :mod:`cbm_tasks.demo.data` writes the local catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine
from rasterio import features
from shapely.geometry import MultiPolygon, shape

from cbm_tasks.errors import CorruptProductError, GridMismatchError

__all__ = [
    "CT_NAMES",
    "CUBE_FILES",
    "CubeFiles",
    "CubeGrid",
    "LC_NAMES",
    "RasterParcel",
    "SensorCube",
    "crop_name",
    "find_cube",
    "open_sensor_cube",
    "polygonise_crop_types",
    "read_parcel_raster",
]

# File name of each part of the shared cube (chip 00002806639B424A); other chips: find_cube.
CUBE_FILES = {
    "S2_10m": "S2_L2A_10m_00002806639B424A_32631_2017-08-01_2018-11-30.nc",
    "S2_20m": "S2_L2A_20m_00002806639B424A_32631_2017-08-01_2018-11-30.nc",
    "S1_GRD_ASC": "S1_GRD-ASCENDING_20m_00002806639B424A_32631_2017-08-01_2018-11-30.nc",
    "POLY": "OUTPUT_POLY-110_10m_00002806639B424A_32631_2017-08-01_2018-11-30.nc",
}

# WorldCereal crop-type (CT) and land-cover (LC) legend: the codes that occur on the shared chip, and
# the groups of the legend's hierarchy (a code's name is its own, else its group's: crop_name)
CT_NAMES = {
    1200: "Maize",
    2130: "Cabbages",
    5100: "Potatoes",
    7900: "Other leguminous crops",
    9120: "Permanent grass crops",
}
_CT_GROUPS = {
    1000: "Cereals", 1100: "Wheat", 1110: "Winter wheat", 1120: "Spring wheat", 1500: "Barley",
    1300: "Rice", 1400: "Sorghum", 1510: "Winter barley", 1520: "Spring barley", 1600: "Rye", 1700: "Oats",
    1800: "Millets", 1910: "Winter cereal", 1920: "Spring cereal", 2000: "Vegetables and melons",
    3000: "Fruit and nuts", 4000: "Oilseed crops", 4350: "Rapeseed", 4380: "Sunflower", 5000: "Root/tuber crops",
    6000: "Beverage and spice crops", 7000: "Leguminous crops", 8000: "Sugar crops", 8100: "Sugar beet",
    9000: "Other crops", 9100: "Grasses and other fodder crops", 9110: "Temporary grass crops",
    9700: "Alfalfa", 9998: "Mixed cropping",
}
LC_NAMES = {11: "Annual cropland", 13: "Grassland", 60: "Built up / urban", 99: "No cropland"}


def crop_name(code: int) -> str:
    """The WorldCereal name of crop-type *code*: its own, else its group's (1234 -> 1230, 1200, 1000), else ''."""
    for candidate in (code, code // 10 * 10, code // 100 * 100, code // 1000 * 1000):
        name = CT_NAMES.get(candidate) or _CT_GROUPS.get(candidate)
        if name:
            return name
    return ""


@dataclass(frozen=True, slots=True)
class CubeFiles:
    """The files of one cube (:func:`find_cube`); a sensor the chip lacks is None (or no S1 file)."""

    folder: Path
    parcels: Path  # OUTPUT_POLY-*: the rasterised register
    s2_10m: Path | None
    s2_20m: Path | None
    s1: tuple[tuple[Path, str], ...]  # (file, orbit direction: ascending / descending)


def find_cube(folder: Path) -> CubeFiles:
    """Find the files of the WorldCereal cube in *folder* by their names.

    Raises:
        CorruptProductError: no such folder, no parcel raster (``OUTPUT_*.nc``), no sensor file,
            or two files of one kind (the message names them).
    """
    if not folder.is_dir():
        raise CorruptProductError(f"cube folder {folder} does not exist")

    def one(pattern: str) -> Path | None:
        found = sorted(folder.glob(pattern))
        if len(found) > 1:
            raise CorruptProductError(f"cube folder {folder}: {len(found)} files {pattern} "
                                      f"({', '.join(f.name for f in found)}); one cube per folder")
        return found[0] if found else None

    parcels = one("OUTPUT_*.nc")
    s2_10m, s2_20m = one("S2_L2A_10m_*.nc"), one("S2_L2A_20m_*.nc")
    s1 = tuple((path, direction) for direction in ("ascending", "descending")
               if (path := one(f"S1_GRD-{direction.upper()}_*.nc")) is not None)
    if parcels is None:
        raise CorruptProductError(f"cube folder {folder}: no parcel raster OUTPUT_*.nc (the register on the "
                                  "chip's grid)")
    if s2_10m is None and s2_20m is None and not s1:
        raise CorruptProductError(f"cube folder {folder}: no sensor file (S2_L2A_10m_*.nc, S2_L2A_20m_*.nc, "
                                  "S1_GRD-ASCENDING_*.nc, S1_GRD-DESCENDING_*.nc)")
    return CubeFiles(folder, parcels, s2_10m, s2_20m, s1)


@dataclass(frozen=True, slots=True)
class CubeGrid:
    """Pixel grid of one cube file: north-up, pixel-corner transform."""

    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Return (left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        return (left, top + self.transform.e * self.height, left + self.transform.a * self.width, top)


@dataclass(frozen=True, slots=True)
class SensorCube:
    """Time stack of one sensor file, as stored (no scaling applied).

    Attributes:
        path: the NetCDF file.
        grid: its pixel grid.
        times: acquisition times, timezone-aware UTC, one per stack layer.
        bands: band name -> array (time, y, x) in the stored dtype, y north-up.
        nodata: band name -> the ``_FillValue`` of that variable.
        per_time: per-acquisition scalars (sun/view angles) name -> array (time,).
        attrs: the file's global attributes (location_id, tile, source, ...).
    """

    path: Path
    grid: CubeGrid
    times: tuple[datetime, ...]
    bands: dict[str, np.ndarray]
    nodata: dict[str, float]
    per_time: dict[str, np.ndarray]
    attrs: dict[str, str]


@dataclass(frozen=True, slots=True)
class RasterParcel:
    """One 4-connected region of a single crop-type code, as a parcel."""

    parcel_id: str
    crop_code: int
    crop_name: str
    lc_code: int
    lc_name: str
    n_pixels: int
    geometry: MultiPolygon


def _grid(path: Path, dataset: xr.Dataset) -> CubeGrid:
    """Derive the pixel-corner grid from the pixel-centre coordinates; check it against the attrs."""
    x = dataset["x"].values
    y = dataset["y"].values
    res = float(dataset.attrs["resolution"])
    if len(x) < 2 or not np.allclose(np.diff(x), res) or not np.allclose(np.diff(y), -res):
        raise CorruptProductError(f"{path}: expected a regular north-up {res} m grid in x/y coordinates")
    transform = Affine(res, 0.0, float(x[0]) - res / 2, 0.0, -res, float(y[0]) + res / 2)
    grid = CubeGrid(epsg=int(dataset.attrs["epsg"]), transform=transform, width=len(x), height=len(y))
    bounds_attr = dataset.attrs["bounds"]
    if isinstance(bounds_attr, str):  # the sensor files store "(l, b, r, t)" as text
        bounds_attr = bounds_attr.strip("()[] ").split(",")
    expected = tuple(float(v) for v in np.asarray(bounds_attr, dtype=float).ravel())
    if not np.allclose(grid.bounds, expected):
        raise CorruptProductError(f"{path}: grid bounds {grid.bounds} do not match attribute bounds {expected}")
    return grid


def _open(path: Path) -> xr.Dataset:
    if not path.is_file():
        raise CorruptProductError(f"cube file missing: {path}")
    try:
        return xr.open_dataset(path, engine="netcdf4", mask_and_scale=False, decode_times=True)
    except (OSError, ValueError) as err:
        raise CorruptProductError(f"{path}: cannot open as NetCDF: {err}") from err


def open_sensor_cube(path: Path, *, bands: Sequence[str]) -> SensorCube:
    """Read the named bands of one sensor file with their timestamps and grid.

    Args:
        path: a ``S2_L2A_*`` or ``S1_GRD-*`` NetCDF file of the cube.
        bands: variables to read, e.g. ``("B04", "B08")``.

    Returns:
        The stack, values as stored (uint16 DN, uint8 SCL, int32 dB x 10000).

    Raises:
        CorruptProductError: the file is missing, unreadable, lacks a band, or its grid does not
            match its ``bounds`` attribute.
    """
    with _open(path) as dataset:
        missing = [band for band in bands if band not in dataset.data_vars]
        if missing:
            raise CorruptProductError(f"{path}: bands {missing} missing; has {sorted(map(str, dataset.data_vars))}")
        grid = _grid(path, dataset)
        stamps = dataset["timestamp"].values.astype("datetime64[s]").astype(datetime)
        times = tuple(stamp.replace(tzinfo=UTC) for stamp in stamps)
        arrays = {band: np.ascontiguousarray(dataset[band].values) for band in bands}
        nodata = {band: float(dataset[band].attrs.get("_FillValue", 0)) for band in bands}
        per_time = {
            str(name): dataset[name].values.astype(np.float64)
            for name in dataset.data_vars
            if dataset[name].dims == ("timestamp",)
        }
        attrs = {str(key): str(value) for key, value in dataset.attrs.items()}
    for band, array in arrays.items():
        if array.shape != (len(times), grid.height, grid.width):
            raise CorruptProductError(f"{path}: band {band} has shape {array.shape}, expected (time, y, x)")
    return SensorCube(path, grid, times, arrays, nodata, per_time, attrs)


def read_parcel_raster(path: Path) -> tuple[CubeGrid, np.ndarray, np.ndarray, dict[str, str]]:
    """Return (grid, CT, LC, attrs) of the ``OUTPUT_POLY-110`` file; 0 means no information.

    Raises:
        CorruptProductError: the file is missing, unreadable or has no CT/LC variable.
    """
    with _open(path) as dataset:
        if "CT" not in dataset or "LC" not in dataset:
            raise CorruptProductError(f"{path}: expected variables CT and LC")
        grid = _grid(path, dataset)
        crop_types = dataset["CT"].values.astype(np.int32)
        land_cover = dataset["LC"].values.astype(np.int32)
        attrs = {str(key): str(value) for key, value in dataset.attrs.items()}
    return grid, crop_types, land_cover, attrs


def polygonise_crop_types(
    crop_types: np.ndarray, land_cover: np.ndarray, *, transform: Affine, nodata: int = 0, min_pixels: int = 4
) -> list[RasterParcel]:
    """Turn each 4-connected region of one crop-type code into a parcel polygon.

    Neighbouring real parcels with the same crop merge into one region, and regions cut by the
    chip edge stay cut: the demo parcels are the register as the raster shows it.

    Args:
        crop_types: 2-D crop-type codes; ``nodata`` marks pixels outside any parcel.
        land_cover: 2-D land-cover codes on the same grid (the region's majority is kept).
        transform: pixel-corner transform of both arrays.
        nodata: the background code, excluded.
        min_pixels: regions with fewer pixels are dropped (slivers a 10 m grid cannot monitor).

    Returns:
        Parcels ordered by position (north to south, then west to east), ids ``demo-0001``...

    Raises:
        GridMismatchError: the two arrays are not 2-D arrays of the same shape.
    """
    if crop_types.shape != land_cover.shape or crop_types.ndim != 2:
        raise GridMismatchError(f"crop types {crop_types.shape} and land cover {land_cover.shape} differ")
    regions = []
    pixel_area = abs(transform.a * transform.e)
    for geojson, value in features.shapes(
        crop_types.astype(np.int32), mask=crop_types != nodata, connectivity=4, transform=transform
    ):
        polygon = shape(geojson)
        n_pixels = round(polygon.area / pixel_area)
        if n_pixels < min_pixels:
            continue
        rows, cols = _region_pixels(polygon, transform, crop_types.shape)
        lc_values, lc_counts = np.unique(land_cover[rows, cols], return_counts=True)
        lc_code = int(lc_values[np.argmax(lc_counts)])
        minx, _, _, maxy = polygon.bounds
        regions.append((-maxy, minx, int(value), lc_code, n_pixels, MultiPolygon([polygon])))
    regions.sort(key=lambda region: region[:3])
    return [
        RasterParcel(
            parcel_id=f"demo-{index:04d}",
            crop_code=code,
            crop_name=crop_name(code),
            lc_code=lc_code,
            lc_name=LC_NAMES.get(lc_code, ""),
            n_pixels=n_pixels,
            geometry=geometry,
        )
        for index, (_, _, code, lc_code, n_pixels, geometry) in enumerate(regions, start=1)
    ]


def _region_pixels(polygon: object, transform: Affine, shape_yx: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    mask = features.geometry_mask([polygon], out_shape=shape_yx, transform=transform, invert=True)
    rows, cols = np.nonzero(mask)
    return rows, cols
