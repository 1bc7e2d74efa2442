"""The sarsen CARD-BS backend on the real Rome GRD (real orbit, annotation and calibration LUTs).

The measurement is filled with known digital numbers around a 2 km test area: DN 300 (VV) /
100 (VH) on lines before the area's middle line, 600 / 200 after it. Calibrated beta0 must
equal DN^2 / betaNought^2 from the calibration LUT; on flat terrain gamma0 = beta0 tan(incidence).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from card_data import RomeGrd, gcp_lookup, rome_grd, rome_job, rome_product
from conftest import shared_data
from pyproj import Transformer

from cbm_tasks.card.backend import BackendConfig
from cbm_tasks.card.dem import DemConfig, heights_on_grid
from cbm_tasks.card.errors import DemCoverageError, IncompleteSafeError
from cbm_tasks.card.grid import OutputGrid, auto_utm_epsg, output_grid
from cbm_tasks.card.safe import inspect_safe
from cbm_tasks.card.sarsen_backend import SarsenBackend
from cbm_tasks.card.sarsen_bs import block_sizes, gamma0_rtc
from cbm_tasks.errors import ConfigError, CorruptProductError

LON, LAT = 12.50, 42.00
AREA = shapely.box(LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01).wkt  # ~1.7 x 2.2 km of parcels
DN_FIRST, DN_SECOND = {"VV": 300, "VH": 100}, {"VV": 600, "VH": 200}
GEOID = "/usr/share/proj/egm96_15.gtx"  # Debian proj-data (scripts/install.sh)


@pytest.fixture(scope="module")
def rome(tmp_path_factory: pytest.TempPathFactory) -> RomeGrd:
    return rome_grd(tmp_path_factory.mktemp("rome"), lon=LON, lat=LAT, half_size_deg=0.02,
                    dn_first=DN_FIRST, dn_second=DN_SECOND)


@pytest.fixture(scope="module")
def grid() -> OutputGrid:
    return output_grid(AREA, epsg=32633, resolution_m=10.0, margin_m=100.0)


def beta_nought_lut(safe: Path) -> np.ndarray:
    """All betaNought values of the VV calibration LUT, parsed from the XML itself."""
    (file,) = (safe / "annotation" / "calibration").glob("calibration-*-vv-*.xml")
    root = ET.parse(file).getroot()
    return np.concatenate([np.array(v.text.split(), float) for v in root.iter("betaNought") if v.text])


def pixel_lonlat(grid: OutputGrid) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    x = grid.left + (cols + 0.5) * grid.resolution_m
    y = grid.top - (rows + 0.5) * grid.resolution_m
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def expected_dn(rome: RomeGrd, grid: OutputGrid, pol: str) -> tuple[np.ndarray, np.ndarray]:
    """DN each output pixel falls on, and a mask of pixels clear of the DN step (interpolation)."""
    lon, lat = pixel_lonlat(grid)
    line = gcp_lookup(rome.safe, lon.ravel(), lat.ravel(), "line").reshape(lon.shape)
    dn = np.where(line < rome.split_line, DN_FIRST[pol], DN_SECOND[pol])
    return dn, np.abs(line - rome.split_line) > 3


def test_beta0_equals_the_calibration_lut_expectation(rome: RomeGrd, grid: OutputGrid) -> None:
    lut = beta_nought_lut(rome.safe)
    assert np.ptp(lut) == 0  # IPF 3.x GRDs: one betaNought for the whole image
    heights = heights_on_grid(DemConfig(str(shared_data("s1_sarsen_rome", "Rome-30m-DEM.tif")), GEOID), grid,
                              product="rome")
    out = gamma0_rtc(rome.safe, polarisations=("VV", "VH"), grid=grid, heights=heights, terrain_flattening=False)
    for pol in ("VV", "VH"):
        dn, clear = expected_dn(rome, grid, pol)
        assert np.isfinite(out[pol]).all()
        np.testing.assert_allclose(out[pol][clear], (dn**2 / lut[0] ** 2)[clear], rtol=1e-5)
    # north-up: a descending pass images the north first, so the earlier lines (DN 300) are on top
    assert out["VV"][0].mean() == pytest.approx(300**2 / lut[0] ** 2, rel=1e-5)
    assert out["VV"][-1].mean() == pytest.approx(600**2 / lut[0] ** 2, rel=1e-5)


def test_gamma0_on_flat_terrain_is_beta0_times_tan_incidence(rome: RomeGrd, grid: OutputGrid) -> None:
    lut = beta_nought_lut(rome.safe)[0]
    flat = np.full((grid.height, grid.width), 100.0)  # ellipsoidal heights, no terrain
    out = gamma0_rtc(rome.safe, polarisations=("VV",), grid=grid, heights=flat)
    dn, clear = expected_dn(rome, grid, "VV")
    lon, lat = pixel_lonlat(grid)
    incidence = gcp_lookup(rome.safe, lon.ravel(), lat.ravel(), "incidenceAngle").reshape(lon.shape)
    assert 30 < incidence.mean() < 46  # IW
    expected = dn**2 / lut**2 * np.tan(np.radians(incidence))
    # The flattening sums DEM areas in radar bins of 5x5 GRD pixels: pixel by pixel that
    # quantises the area by up to ~3 %; on average it is exact. Checked inside the AOI (the
    # margin around it holds the edge of the simulation).
    inside = clear & shapely.contains_xy(shapely.from_wkt(AREA), lon, lat)
    ratio = out["VV"][inside] / expected[inside]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.005)
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)
    assert np.percentile(np.abs(ratio - 1), 90) < 0.04


def test_backend_writes_a_north_up_cog_of_the_aoi(rome: RomeGrd, tmp_path: Path) -> None:
    product = rome_product(rome.safe)
    job = rome_job(product, AREA)
    cfg = BackendConfig(dem_path=str(shared_data("s1_sarsen_rome", "Rome-30m-DEM.tif")), geoid_path=GEOID,
                        margin_m=100.0)
    output = SarsenBackend(cfg).make(job, [(product, rome.safe)], tmp_path)

    assert output.bands == ("VV", "VH") and output.epsg == 32633 == auto_utm_epsg(product.footprint_wkt or "")
    with rasterio.open(output.path) as cog:
        assert cog.crs.to_epsg() == 32633
        assert cog.res == (10.0, 10.0) and cog.transform.e < 0  # north-up
        assert cog.descriptions == ("VV", "VH")
        assert all(np.isnan(v) for v in cog.nodatavals)
        tags = cog.tags()
        assert tags["ACQUISITION_START"] == "2021-12-23T05:11:22.594441+00:00"
        assert tags["SOURCE_PRODUCTS"] == product.name and tags["CARD_TYPE"] == "CARD-BS"
        assert cog.profile["blockxsize"] == 512 or cog.width < 512
        # the grid covers the AOI plus the margin, on whole 10 m
        left, bottom, right, top = cog.bounds
        assert all(value % 10 == 0 for value in (left, bottom, right, top))
        to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
        xs, ys = to_utm.transform(*shapely.from_wkt(AREA).exterior.xy)
        assert left <= min(xs) - 100 and right >= max(xs) + 100 and bottom <= min(ys) - 100 and top >= max(ys) + 100
        assert right - left < (max(xs) - min(xs)) + 230  # cropped: not the 250 km scene
        vv, vh = cog.read(1), cog.read(2)
    assert np.isfinite(vv).mean() > 0.99
    # same geometry and LUT for both: the ratio is the DN ratio squared, whatever the terrain
    np.testing.assert_allclose(vv[np.isfinite(vv)] / vh[np.isfinite(vv)], 9.0, rtol=1e-4)
    # north (earlier lines) DN 300, south DN 600: 4x the power, terrain flattening aside
    assert np.nanmedian(vv[-20:]) / np.nanmedian(vv[:20]) == pytest.approx(4.0, rel=0.15)
    assert output.lineage["backend"] == "sarsen" and output.lineage["geoid"] == GEOID
    assert output.lineage["inputs"][product.name]["manifest_md5"]


def test_incomplete_safe_is_named() -> None:
    # the shared product lists VH in its manifest but carries only the VV files
    safe = shared_data("s1_sarsen_rome", "S1B_IW_GRDH_1SDV_20211223T051122_20211223T051147_030148_039993_5371.SAFE")
    with pytest.raises(IncompleteSafeError, match=r"VH measurement: measurement/s1b-iw-grd-vh-.*\.tiff is missing"):
        inspect_safe(safe)
    assert inspect_safe(safe, polarisations=("VV",)).polarisations == ("VV",)


def test_missing_calibration_and_corrupt_manifest(rome: RomeGrd, tmp_path: Path) -> None:
    broken = tmp_path / rome.safe.name
    broken.mkdir()
    (broken / "manifest.safe").write_text("<xfdu:XFDU")
    with pytest.raises(CorruptProductError, match="manifest.safe"):
        inspect_safe(broken)
    (broken / "manifest.safe").write_bytes((rome.safe / "manifest.safe").read_bytes())
    for file in rome.safe.rglob("*"):
        if file.is_file() and "calibration-" not in file.name and file.name != "manifest.safe":
            target = broken / file.relative_to(rome.safe)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    with pytest.raises(IncompleteSafeError, match="VV calibration: annotation/calibration/calibration-s1b-iw-grd-vv"):
        inspect_safe(broken)


def test_dem_that_misses_the_grid_is_bad_input(rome: RomeGrd, tmp_path: Path) -> None:
    product = rome_product(rome.safe)
    east_of_dem = shapely.box(12.70, 41.99, 12.72, 42.01).wkt  # in the swath, outside the 0.1-degree DEM
    cfg = BackendConfig(dem_path=str(shared_data("s1_sarsen_rome", "Rome-30m-DEM.tif")), geoid_path=GEOID)
    with pytest.raises(DemCoverageError, match=f"does not cover the output grid of product {product.name}"):
        SarsenBackend(cfg).make(rome_job(product, east_of_dem), [(product, rome.safe)], tmp_path)
    no_geoid = BackendConfig(dem_path=cfg.dem_path)
    with pytest.raises(ConfigError, match="EGM96"):
        SarsenBackend(no_geoid).make(rome_job(product, AREA), [(product, rome.safe)], tmp_path)


def test_blocks_are_never_smaller_than_the_flattening_overlap() -> None:
    assert block_sizes(128, block=1024) == (128,)
    assert block_sizes(1100, block=1024) == (1100,)
    sizes = block_sizes(2100, block=1024)
    assert sum(sizes) == 2100 and min(sizes) >= 128 and len(sizes) == 2
    assert min(block_sizes(5000, block=256)) >= 128
    with pytest.raises(ValueError, match="n >= 128"):
        block_sizes(100, block=1024)
    small = output_grid(shapely.box(12.5, 42.0, 12.501, 42.001).wkt, epsg=32633, resolution_m=10.0, margin_m=0)
    assert (small.width, small.height) == (128, 128)
