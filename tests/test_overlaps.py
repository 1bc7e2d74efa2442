"""Overlapping parcels: each gets every pixel whose centre it holds, and the import reports the overlaps."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
import rasterio.features
import shapely
from affine import Affine
from integrity_support import write_register
from test_extract_support import add_product, obs_rows, write_tif

from cbm_tasks import cli
from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.extraction.label_cache import GridKey, LabelCache
from cbm_tasks.extraction.layers import overlap_layers
from cbm_tasks.parcels.sets import import_parcels
from cbm_tasks.store import StoreConfig, open_store

X0, Y0 = 500000.0, 5600000.0
T10 = Affine(10, 0, X0, 0, -10, Y0)
SHAPE = (30, 40)


def _box(col: float, row: float, width: float, height: float) -> shapely.Geometry:
    return shapely.box(X0 + 10 * col, Y0 - 10 * (row + height), X0 + 10 * (col + width), Y0 - 10 * row)


PARCELS = [
    ("big", _box(0, 0, 10, 10)),  # 100 pixels
    ("nested", _box(3, 3, 4, 4)),  # 16 pixels, all inside "big"
    ("twin_a", _box(12, 0, 5, 6)),  # the same polygon declared twice
    ("twin_b", _box(12, 0, 5, 6)),
    ("left", _box(20, 0, 6, 4)),  # overlaps "right" over 2 x 4 pixels
    ("right", _box(24, 0, 6, 4)),
    ("edge_a", _box(0, 20, 5, 5)),  # only touches edge_b: not an overlap
    ("edge_b", _box(5, 20, 5, 5)),
    ("alone", _box(32, 10, 5, 5)),
]


@pytest.fixture
def imported(conn: psycopg.Connection, tmp_path: Path) -> psycopg.Connection:
    report = import_parcels(conn, write_register(tmp_path / "overlaps.gpkg", PARCELS), aoi="overlap", year=2023,
                            crop_name_column="-")
    conn.commit()
    overlaps = report.overlaps
    assert (overlaps.n_pairs, overlaps.n_parcels) == (3, 6)
    assert overlaps.area_m2 == pytest.approx(1600 + 3000 + 800)
    assert [(o.parcel_id_a, o.parcel_id_b, o.area_m2) for o in overlaps.largest] == [
        ("twin_a", "twin_b", pytest.approx(3000)), ("big", "nested", pytest.approx(1600)),
        ("left", "right", pytest.approx(800))]
    return conn


def _extract(conn: psycopg.Connection, tmp_path: Path, values: np.ndarray, cache: LabelCache) -> dict[str, np.ndarray]:
    tif = write_tif(tmp_path / "B04.tif", values, transform=T10, nodata=0)
    product_id = add_product(conn, aoi="overlap", name="S2_overlap", location=str(tmp_path),
                             acquired_at=datetime(2023, 6, 1, tzinfo=UTC),
                             bands=[{"name": "B04", "href": str(tif), "band": 1, "nodata": 0, "scale": 1,
                                     "offset": 0}])
    extract_product(conn, open_store(StoreConfig()), product_id, aoi="overlap", label_cache=cache)
    keys = dict(conn.execute("SELECT parcel_key, parcel_id FROM cbm.parcel").fetchall())
    conn.commit()
    return {keys[k]: stats for k, stats in obs_rows(conn, product_id).items()}


def test_overlapping_parcels_keep_all_their_pixels(imported: psycopg.Connection, tmp_path: Path) -> None:
    values = np.random.default_rng(6).integers(1, 5000, size=SHAPE, dtype=np.uint16)
    values[2, 24] = 0  # a nodata pixel inside the overlap of left and right
    rows = _extract(imported, tmp_path, values, LabelCache())
    assert sorted(rows) == sorted(pid for pid, _ in PARCELS)  # nobody lost all pixels to a twin or a host
    for pid, geom in PARCELS:
        # the reference: GDAL's pixel-centre rule for this parcel alone, NumPy statistics
        mask = rasterio.features.geometry_mask([geom], out_shape=SHAPE, transform=T10, invert=True)
        v = values[mask & (values != 0)].astype(np.float64)
        expected = np.array([v.size, v.mean(), v.std(), v.min(), v.max(), *np.percentile(v, [25, 50, 75])],
                            np.float32)
        np.testing.assert_allclose(rows[pid], expected, rtol=1e-6, err_msg=pid)
    assert [rows[pid][0] for pid in ("big", "nested", "twin_a", "twin_b", "left", "right")] == [
        100, 16, 30, 30, 23, 23]


def test_overlap_layers_through_the_label_cache(imported: psycopg.Connection, tmp_path: Path) -> None:
    values = np.random.default_rng(7).integers(1, 5000, size=SHAPE, dtype=np.uint16)
    cache = LabelCache(directory=tmp_path / "labels")
    cold = _extract(imported, tmp_path, values, cache)
    assert len(list((tmp_path / "labels").glob("labels_*.npy"))) == 1
    warm = _extract(imported, tmp_path, values, cache)  # the label raster comes from the cache
    assert cold.keys() == warm.keys()
    for pid in cold:
        np.testing.assert_array_equal(cold[pid], warm[pid])
    assert warm["nested"][0] == 16 and warm["big"][0] == 100


def test_label_cache_key_includes_the_overlaps() -> None:
    fields = {"crs_wkt": "EPSG:32631", "transform": (10, 0, X0, 0, -10, Y0), "shape": SHAPE, "parcel_set_id": 1,
              "parcel_set_version": 1}
    assert GridKey(**fields).digest() != GridKey(**fields, overlaps="a1b2").digest()  # type: ignore[arg-type]


def test_import_prints_the_overlaps(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    register = write_register(tmp_path / "overlaps.gpkg", PARCELS)
    assert cli.main(["parcels", "import", str(register), "--aoi", "overlap", "--year", "2023",
                     "--crop-name-column", "-"]) == 0
    out = capsys.readouterr().out
    assert "warning: 3 overlapping parcel pairs (6 parcels, 5400.0 m2 shared, 0 of the pairs slivers" in out
    assert "twin_a overlaps twin_b: 3000.000 m2" in out and "left overlaps right: 800.000 m2" in out
    with psycopg.connect(db_url) as conn:
        pairs = conn.execute("SELECT count(*) FROM cbm.parcel_overlap").fetchone()
    assert pairs == (3,)


def test_overlap_layers_give_each_parcel_its_gdal_pixels() -> None:
    # 60 random boxes piled up on a small grid: many pairs, and pixels under 4 or more parcels
    rng = np.random.default_rng(11)
    corners = rng.uniform(0, 30, size=(60, 2))
    sizes = rng.uniform(2, 12, size=(60, 2))
    geoms = [_box(c, r, w, h) for (c, r), (w, h) in zip(corners, sizes, strict=True)]
    keys = np.arange(1, 61, dtype=np.int32)
    pairs = np.array([(i + 1, j + 1) for i in range(60) for j in range(i + 1, 60)
                      if geoms[i].intersection(geoms[j]).area > 0], np.int32)
    index, owners = overlap_layers([shapely.to_wkb(g) for g in geoms], keys, pairs, transform=T10, shape=SHAPE)
    assert len(pairs) > 60
    for key, geom in zip(keys, geoms, strict=True):
        mask = rasterio.features.geometry_mask([geom], out_shape=SHAPE, transform=T10, invert=True)
        np.testing.assert_array_equal(np.sort(index[owners == key]), np.flatnonzero(mask), err_msg=str(key))
