"""The built-in demo: local catalogue and parcels from the real 31UDS cube, and the synthetic AOI."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyogrio
import pytest
import rasterio
import xarray as xr
from affine import Affine
from conftest import shared_data
from pyogrio import raw as ogr_raw
from rasterio import features
from shapely import from_wkb

from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.local import LocalCatalogue, product_from_local_item
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.cli import main
from cbm_tasks.demo.cube import CUBE_FILES
from cbm_tasks.demo.data import DemoLayout, build_demo
from cbm_tasks.demo.synthetic import build_synthetic
from cbm_tasks.errors import ConfigError, CorruptProductError
from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.parcels.sets import import_parcels
from cbm_tasks.store import StoreConfig, open_store

T10 = Affine(10.0, 0.0, 501360.0, 0.0, -10.0, 5629680.0)
T20 = Affine(20.0, 0.0, 501360.0, 0.0, -20.0, 5629680.0)
STORE = open_store(StoreConfig())


def _cube(name: str) -> xr.Dataset:
    return xr.open_dataset(shared_data("worldcereal_31UDS", CUBE_FILES[name]), engine="netcdf4", mask_and_scale=False)


def _s2_item_dir(layout: DemoLayout, when: np.datetime64) -> Path:
    return layout.catalogue_root / "sentinel-2-l2a" / f"S2_31UDS_{str(when)[:10].replace('-', '')}"


def _checksums(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def full_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoLayout:
    return build_demo(tmp_path_factory.mktemp("demo_full"), cube_dir=shared_data("worldcereal_31UDS"))


def test_s2_cogs_hold_the_cube_values_on_the_cube_grid(tmp_path: Path) -> None:
    layout = build_demo(tmp_path, max_products=3)
    assert (layout.n_s2, layout.n_s1, layout.aoi, layout.year) == (3, 3, "demo", 2018)
    s2_10, s2_20 = _cube("S2_10m"), _cube("S2_20m")
    for index in range(3):
        folder = _s2_item_dir(layout, s2_10.timestamp.values[index])
        for band, cube, transform, size in (
            ("B04", s2_10, T10, 64),
            ("B08", s2_10, T10, 64),
            ("B11", s2_20, T20, 32),
            ("SCL", s2_20, T20, 32),
        ):
            with rasterio.open(folder / f"{band}.tif") as dataset:
                assert dataset.crs.to_epsg() == 32631
                assert dataset.transform == transform
                assert (dataset.height, dataset.width) == (size, size)
                assert dataset.nodata == 0
                assert dataset.dtypes[0] == ("uint8" if band == "SCL" else "uint16")
                assert dataset.scales[0] == (1.0 if band == "SCL" else 0.0001)
                np.testing.assert_array_equal(dataset.read(1), cube[band].values[index])
    # the cube's first row is its northernmost: y decreases down the array
    assert s2_10.y.values[0] == pytest.approx(5629675.0)


def test_card_bs_is_linear_backscatter_of_the_db_cube(tmp_path: Path) -> None:
    layout = build_demo(tmp_path, max_products=2)
    s1 = _cube("S1_GRD_ASC")
    for index in range(2):
        when = datetime.fromisoformat(str(s1.timestamp.values[index])[:19])
        folder = layout.catalogue_root / "sentinel-1-card-bs" / f"S1_CARD-BS_31UDS_{when:%Y%m%dT%H%M%S}"
        for pol in ("VV", "VH"):
            with rasterio.open(folder / f"{pol}.tif") as dataset:
                assert dataset.transform == T20 and dataset.crs.to_epsg() == 32631
                assert dataset.dtypes[0] == "float32" and np.isnan(dataset.nodata)
                linear = dataset.read(1)
            decibel = s1[pol].values[index] / 10000.0
            np.testing.assert_allclose(linear, 10.0 ** (decibel / 10.0), rtol=2e-7)


def test_full_demo_items_follow_the_local_catalogue_format(full_demo: DemoLayout) -> None:
    assert (full_demo.n_s2, full_demo.n_s1, full_demo.n_parcels) == (118, 159, 18)
    items = sorted(full_demo.catalogue_root.rglob("*.json"))
    assert len(items) == 118 + 159
    products = [product_from_local_item(json.loads(path.read_text()), path=path) for path in items]
    s2 = sorted((p for p in products if p.product_type == "S2MSI2A"), key=lambda p: p.acquired_at)
    s1 = sorted((p for p in products if p.product_type == "CARD-BS"), key=lambda p: p.acquired_at)
    assert (len(s2), len(s1)) == (118, 159)
    assert s2[0].acquired_at == datetime(2017, 8, 4, 10, 53, 28, tzinfo=UTC)
    assert s2[-1].acquired_at.date() == date(2018, 11, 27)
    assert {p.tile for p in products} == {"31UDS"}
    assert {p.orbit_direction for p in s1} == {"ASCENDING"}
    scene = s2[60]
    bands = {band["name"]: band for band in scene.attributes["bands"]}
    assert sorted(bands) == sorted(["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL"])
    assert bands["B04"] | {"href": None} == {
        "name": "B04",
        "href": None,
        "band": 1,
        "nodata": 0,
        "scale": 0.0001,
        "offset": 0.0,
        "resolution_m": 10.0,
        "categorical": False,
        "n_classes": None,
    }
    assert (bands["SCL"]["categorical"], bands["SCL"]["n_classes"], bands["SCL"]["nodata"]) == (True, 12, 0)
    assert bands["B11"]["resolution_m"] == 20.0
    assert Path(bands["B04"]["href"]) == Path(scene.location) / "B04.tif" and Path(bands["B04"]["href"]).is_file()
    card = {band["name"]: band for band in s1[0].attributes["bands"]}
    assert sorted(card) == ["VH", "VV"]
    assert card["VV"]["nodata"] is None and card["VV"]["scale"] == 1.0 and card["VV"]["resolution_m"] == 20.0
    item = json.loads(Path(scene.attributes["item_file"]).read_text())
    assert item["stac_version"] == "1.0.0" and item["properties"]["proj:epsg"] == 32631
    assert item["properties"]["cbm:collection"] == "SENTINEL-2" and item["properties"]["grid:code"] == "MGRS-31UDS"
    assert 0.0 <= item["properties"]["eo:cloud_cover"] <= 100.0
    lon, lat = np.array(item["geometry"]["coordinates"][0]).T
    assert 3.0 < lon.min() < lon.max() < 3.05 and 50.8 < lat.min() < lat.max() < 50.82


def test_local_catalogue_search_finds_the_demo_products(full_demo: DemoLayout) -> None:
    aoi = "POLYGON((3.01 50.80, 3.04 50.80, 3.04 50.83, 3.01 50.83, 3.01 50.80))"
    query = SearchQuery(
        collection="SENTINEL-2",
        product_type="S2MSI2A",
        aoi_wkt=aoi,
        start=datetime(2018, 1, 1, tzinfo=UTC),
        end=datetime(2019, 1, 1, tzinfo=UTC),
    )
    found = list(LocalCatalogue(full_demo.catalogue_root).search(query))
    s2_10 = _cube("S2_10m")
    expected = int((s2_10.timestamp.values >= np.datetime64("2018-01-01")).sum())
    assert len(found) == expected and expected > 50


def test_parcels_rasterise_back_to_the_crop_type_raster(full_demo: DemoLayout) -> None:
    info = pyogrio.read_info(full_demo.parcels_file)
    assert info["crs"] == "EPSG:32631" and info["geometry_type"] == "MultiPolygon" and info["features"] == 18
    assert list(info["fields"]) == ["parcel_id", "crop_code", "crop_name", "lc_code", "lc_name", "area_m2"]
    _, _, wkb, (parcel_ids, crop_codes, crop_names, _, _, areas) = ogr_raw.read(full_demo.parcels_file)
    assert list(parcel_ids) == [f"demo-{i:04d}" for i in range(1, 19)]
    geometries = [from_wkb(blob) for blob in wkb]
    assert all(geometry.is_valid for geometry in geometries)
    np.testing.assert_allclose(areas, [geometry.area for geometry in geometries])
    assert dict(zip(crop_codes.tolist(), crop_names.tolist(), strict=True))[1200] == "Maize"
    crop_types = _cube("POLY")["CT"].values.astype(np.int32)
    burnt = features.rasterize(
        zip(geometries, crop_codes.tolist(), strict=True), out_shape=(64, 64), transform=T10, fill=0, dtype="int32"
    )
    covered = burnt != 0
    np.testing.assert_array_equal(burnt[covered], crop_types[covered])
    assert not covered[crop_types == 0].any()
    # only the one 2-pixel sliver (< 4 pixels) is left out
    assert int(((crop_types != 0) & ~covered).sum()) == 2


def test_rebuild_leaves_every_file_untouched(tmp_path: Path) -> None:
    build_demo(tmp_path, max_products=2)
    before = _checksums(tmp_path)
    assert len(before) == 2 * (11 + 1) + 2 * (2 + 1) + 1
    layout = build_demo(tmp_path, max_products=2)
    assert _checksums(tmp_path) == before
    assert not list(tmp_path.rglob(".*.tmp*"))
    assert layout.parcels_file.is_file()


def test_missing_cube_and_bad_option_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptProductError, match="nowhere"):
        build_demo(tmp_path, cube_dir=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="max_products"):
        build_demo(tmp_path, max_products=0)
    with pytest.raises(ConfigError, match="cell_px=7"):
        build_synthetic(tmp_path, cell_px=7)


def test_synthetic_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = build_synthetic(tmp_path / "a", n_parcels=40, n_images=4, seed=7)
    build_synthetic(tmp_path / "b", n_parcels=40, n_images=4, seed=7)
    build_synthetic(tmp_path / "c", n_parcels=40, n_images=4, seed=8)
    assert (first.aoi, first.n_parcels, first.n_s2, first.n_s1) == ("synthetic", 40, 4, 4)

    def contents(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.suffix != ".gpkg" and p.is_file()
        }

    same, other = contents(tmp_path / "a"), contents(tmp_path / "b")
    assert same == other and len(same) == 4 * 4 + 4 * 3 + 1
    assert contents(tmp_path / "c") != same
    parcels_a = ogr_raw.read(tmp_path / "a" / "parcels" / "synthetic_parcels_2018.gpkg")
    parcels_b = ogr_raw.read(tmp_path / "b" / "parcels" / "synthetic_parcels_2018.gpkg")
    assert list(parcels_a[2]) == list(parcels_b[2])
    for column_a, column_b in zip(parcels_a[3], parcels_b[3], strict=True):
        np.testing.assert_array_equal(column_a, column_b)


def test_synthetic_ground_truth_shows_in_the_images(tmp_path: Path) -> None:
    layout = build_synthetic(tmp_path, n_parcels=120, n_images=40, seed=3)
    assert layout.ground_truth_file is not None
    with layout.ground_truth_file.open() as handle:
        truth = list(csv.DictReader(handle))
    _, _, wkb, fields = ogr_raw.read(layout.parcels_file)
    keys = {parcel_id: key for key, parcel_id in enumerate(fields[0], start=1)}
    assert {row["parcel_id"] for row in truth} == set(keys)
    with rasterio.open(next(layout.catalogue_root.rglob("B04.tif"))) as dataset:
        transform, shape = dataset.transform, dataset.shape
    labels = features.rasterize(
        zip((from_wkb(b) for b in wkb), keys.values(), strict=True),
        out_shape=shape,
        transform=transform,
        fill=0,
        dtype="int32",
    )
    ndvi_by_date: dict[date, np.ndarray] = {}
    for folder in sorted((layout.catalogue_root / "sentinel-2-l2a").iterdir()):
        when = datetime.strptime(folder.name[-8:], "%Y%m%d").date()
        b04, b08 = (rasterio.open(folder / f"{band}.tif").read(1).astype(float) for band in ("B04", "B08"))
        scl = np.repeat(np.repeat(rasterio.open(folder / "SCL.tif").read(1), 2, axis=0), 2, axis=1)
        clear = np.isin(scl, (4, 5)) & (labels > 0)
        sums = np.bincount(labels[clear], weights=((b08 - b04) / (b08 + b04))[clear], minlength=len(keys) + 1)
        counts = np.bincount(labels[clear], minlength=len(keys) + 1)
        mean = np.full(len(keys) + 1, np.nan)
        mean[counts > 20] = sums[counts > 20] / counts[counts > 20]  # mostly clear parcels only
        ndvi_by_date[when] = mean
    dates = sorted(ndvi_by_date)
    checked = 0
    for row in truth:
        if row["event"] == "none":
            continue
        event_day, key = date.fromisoformat(row["date"]), keys[row["parcel_id"]]
        before = [ndvi_by_date[d][key] for d in dates if d < event_day and not np.isnan(ndvi_by_date[d][key])]
        after = [ndvi_by_date[d][key] for d in dates if d >= event_day and not np.isnan(ndvi_by_date[d][key])]
        if not before or not after:
            continue
        assert before[-1] - after[0] > 0.1, row
        checked += 1
    assert checked > 60


def test_cli_builds_demo_and_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "demo",
            "build",
            "--out",
            str(tmp_path),
            "--max-products",
            "1",
            "--synthetic",
            "--synthetic-parcels",
            "9",
            "--synthetic-images",
            "2",
            "--seed",
            "1",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert f"cbm parcels import {tmp_path / 'demo' / 'parcels' / 'demo_parcels_2018.gpkg'} --aoi demo" in printed
    assert "aoi synthetic" in printed and "9 parcels" in printed
    assert (tmp_path / "synthetic" / "ground_truth.csv").is_file()


def test_parcel_files_import_as_parcel_sets(full_demo: DemoLayout, tmp_path: Path, conn: psycopg.Connection) -> None:
    report = import_parcels(conn, full_demo.parcels_file, aoi=full_demo.aoi, year=full_demo.year, strict=True)
    assert (report.n_imported, report.n_rejected, report.srid) == (18, 0, 32631)
    synthetic = build_synthetic(tmp_path, n_parcels=30, n_images=1, seed=5)
    report = import_parcels(conn, synthetic.parcels_file, aoi=synthetic.aoi, year=synthetic.year, strict=True)
    assert (report.n_imported, report.n_rejected, report.srid) == (30, 0, 32631)
    crops = dict(
        conn.execute(
            "SELECT parcel_id, crop_code FROM cbm.parcel p JOIN cbm.parcel_set s USING (parcel_set_id)"
            " JOIN cbm.aoi a USING (aoi_id) WHERE a.name = 'demo'"
        ).fetchall()
    )
    assert len(crops) == 18 and set(crops.values()) == {"1200", "2130", "5100", "7900", "9120"}


def test_demo_products_extract_for_every_parcel(tmp_path: Path, conn: psycopg.Connection) -> None:
    layout = build_demo(tmp_path, max_products=2)
    import_parcels(conn, layout.parcels_file, aoi=layout.aoi, year=layout.year, strict=True)
    catalogue = LocalCatalogue(layout.catalogue_root)
    results = {}
    for collection, product_type in (("SENTINEL-2", "S2MSI2A"), ("SENTINEL-1", "CARD-BS")):
        query = SearchQuery(
            collection=collection,
            product_type=product_type,
            aoi_wkt="POLYGON((2.9 50.7, 3.2 50.7, 3.2 51.0, 2.9 51.0, 2.9 50.7))",
            start=datetime(2017, 1, 1, tzinfo=UTC),
            end=datetime(2019, 1, 1, tzinfo=UTC),
        )
        product_ids = registry.register(conn, catalogue.search(query), aoi=layout.aoi)
        conn.commit()
        assert len(product_ids) == 2
        results[product_type] = [
            extract_product(conn, STORE, product_id, aoi=layout.aoi, year=layout.year) for product_id in product_ids
        ]
    assert {(r.n_parcels, r.n_bands) for r in results["S2MSI2A"]} == {(18, 11)}
    assert {(r.n_parcels, r.n_bands) for r in results["CARD-BS"]} == {(18, 2)}
