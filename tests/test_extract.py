"""extract_product on real Sentinel-2 pixels and real parcels, against a plain NumPy reference.

WorldCereal chip 31UDS: three 2018 dates of the S2 10 m cube (B04, B08) and the 20 m SCL are
written as GeoTIFFs with the cube's georeferencing; the crop-type raster of the Flemish
parcel register (OUTPUT_POLY-110, same 10 m grid) is polygonised into parcels. Every
parcel's statistics are compared with NumPy over exactly the pixels of that parcel.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyproj
import pytest
import rasterio.features
import shapely
import xarray as xr
from affine import Affine
from conftest import shared_data
from test_extract_support import add_parcel_set, add_product, obs_rows, row_counts, write_tif

from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.store import StoreConfig, open_store

STORE = open_store(StoreConfig())
T10 = Affine(10, 0, 501360, 0, -10, 5629680)  # bounds 501360-502000 E, 5629040-5629680 N (NetCDF attrs)
T20 = Affine(20, 0, 501360, 0, -20, 5629680)
DATES = (48, 72, 84)  # 2018-04-19, 2018-07-05, 2018-08-17
SCALE = 1e-4


def _open(prefix: str) -> xr.Dataset:
    folder = shared_data("worldcereal_31UDS")
    (path,) = folder.glob(f"{prefix}_*.nc")
    return xr.open_dataset(path, engine="netcdf4", mask_and_scale=False)


@pytest.fixture(scope="module")
def cube() -> dict[str, Any]:
    s10, s20, poly = _open("S2_L2A_10m"), _open("S2_L2A_20m"), _open("OUTPUT_POLY-110_10m")
    assert s10.attrs["bounds"] == "(501360, 5629040, 502000, 5629680)" and int(s10.attrs["epsg"]) == 32631
    assert float(s10.x[0]) == 501365 and float(s10.y[0]) == 5629675  # pixel centres: T10 is exact
    assert float(s20.x[0]) == 501370 and float(s20.y[0]) == 5629670
    b04 = s10["B04"].values[list(DATES)]
    b04[2, :, :20] = 0  # an orbit edge in B04 only: nodata is excluded per band
    return {
        "times": [datetime.fromisoformat(str(s10.timestamp.values[i])[:19]).replace(tzinfo=UTC) for i in DATES],
        "B04": b04, "B08": s10["B08"].values[list(DATES)], "SCL": s20["SCL"].values[list(DATES)],
        "CT": poly["CT"].values,
    }


def _polygonise(ct: np.ndarray) -> tuple[list[tuple[str, shapely.Geometry]], list[np.ndarray]]:
    """Parcels = 4-connected components of equal crop type; with each, its exact 10 m pixel mask."""
    parcels, masks = [], []
    for i, (geojson, value) in enumerate(rasterio.features.shapes(ct, mask=ct > 0, transform=T10)):
        geom = shapely.geometry.shape(geojson)
        mask = rasterio.features.geometry_mask([geom], out_shape=ct.shape, transform=T10, invert=True)
        parcels.append((f"ct{int(value)}-{i}", geom))
        masks.append(mask & (ct == value))
    return parcels, masks


def _register_dates(conn: psycopg.Connection, tmp_path: Path, cube: dict[str, Any]) -> list[int]:
    ids = []
    for d, when in enumerate(cube["times"]):
        hrefs = {
            band: str(write_tif(tmp_path / f"{when:%Y%m%d}_{band}.tif", cube[band][d], nodata=0,
                                transform=T20 if band == "SCL" else T10))
            for band in ("B04", "B08", "SCL")
        }
        descriptors = [
            {"name": "B04", "href": hrefs["B04"], "band": 1, "nodata": 0, "scale": SCALE, "offset": 0.0,
             "resolution_m": 10, "categorical": False, "n_classes": None},
            {"name": "SCL", "href": hrefs["SCL"], "band": 1, "nodata": 0, "scale": 1, "offset": 0,
             "resolution_m": 20, "categorical": True, "n_classes": 12},
            {"name": "B08", "href": hrefs["B08"], "band": 1, "nodata": 0, "scale": SCALE, "offset": 0.0,
             "resolution_m": 10, "categorical": False, "n_classes": None},
        ]
        ids.append(add_product(conn, aoi="flanders", name=f"S2_31UDS_{when:%Y%m%dT%H%M%S}", location=str(tmp_path),
                               acquired_at=when, bands=descriptors))
    return ids


def _reference(dn: np.ndarray) -> np.ndarray:
    """The 8 statistics of one band over one parcel's valid pixels, as stored (float32)."""
    v = dn.astype(np.float64)
    if v.size == 0:
        return np.array([0] + [np.nan] * 7, np.float32)
    p25, p50, p75 = np.percentile(v, [25, 50, 75])
    return np.array([v.size, v.mean() * SCALE, v.std() * SCALE, v.min() * SCALE, v.max() * SCALE,
                     p25 * SCALE, p50 * SCALE, p75 * SCALE], np.float32)


def test_real_parcels_match_numpy(conn: psycopg.Connection, tmp_path: Path, cube: dict[str, Any],
                                  caplog: pytest.LogCaptureFixture) -> None:
    parcels, masks = _polygonise(cube["CT"])
    assert len(parcels) >= 15 and any(len(g.interiors) for _, g in parcels if g.geom_type == "Polygon")
    set_id = add_parcel_set(conn, aoi="flanders", year=2018, srid=32631, parcels=parcels)
    product_ids = _register_dates(conn, tmp_path, cube)
    cache = LabelCache()
    with caplog.at_level(logging.INFO, logger="cbm_tasks.extraction"):
        results = [extract_product(conn, STORE, pid, aoi="flanders", label_cache=cache) for pid in product_ids]
    assert all(r.parcel_set_id == set_id and r.n_bands == 3 and r.n_parcels == len(parcels) for r in results)
    assert sum("band=B08" in m for m in caplog.messages) == 3 and sum("rows=" in m for m in caplog.messages) == 12

    # SCL counts on the 20 m grid, whose pixel centres are corners of the 10 m grid and so often lie
    # exactly on a parcel edge: the reference is GDAL's pixel-centre rule (rasterio.features.rasterize)
    labels20 = rasterio.features.rasterize(((g, k) for k, (_, g) in enumerate(parcels, start=1)),
                                           out_shape=(32, 32), transform=T20, dtype="int32")
    for d, (pid, result) in enumerate(zip(product_ids, results, strict=True)):
        got = obs_rows(conn, pid)
        assert sorted(got) == list(range(1, len(parcels) + 1))
        for key, mask in enumerate(masks, start=1):
            b04, b08 = cube["B04"][d][mask], cube["B08"][d][mask]
            for band, dn, block in (("B04", b04[b04 != 0], got[key][:8]), ("B08", b08, got[key][8:])):
                expected = _reference(dn)
                context = f"date {d} parcel {key} band {band}"
                np.testing.assert_array_equal(block[[0, 3, 4, 5, 6, 7]], expected[[0, 3, 4, 5, 6, 7]], context)
                np.testing.assert_allclose(block[1:3], expected[1:3], rtol=1e-6, err_msg=context)
        counts = dict(conn.execute("SELECT parcel_key, counts FROM cbm.parcel_class_counts WHERE product_id = %s",
                                   (pid,)).fetchall())
        scl = cube["SCL"][d]
        for key in range(1, len(parcels) + 1):
            expected_counts = np.bincount(scl[(labels20 == key) & (scl != 0)], minlength=12)
            if expected_counts.sum():
                assert counts.pop(key) == expected_counts.tolist()
        assert counts == {}  # parcels without a 20 m pixel centre have no class-count row
        assert result.n_rows == len(parcels) * 2 + len(set(labels20[labels20 > 0].tolist()))
    extraction = conn.execute("SELECT bands, class_bands, params -> 'bands' -> 'B04' ->> 'scale' "
                              "FROM cbm.extraction WHERE product_id = %s", (product_ids[0],)).fetchone()
    assert extraction == (["B04", "B08"], ["SCL"], "0.0001")


def test_rerun_replaces_rows(conn: psycopg.Connection, tmp_path: Path, cube: dict[str, Any]) -> None:
    parcels, _ = _polygonise(cube["CT"])
    add_parcel_set(conn, aoi="flanders", year=2018, srid=32631, parcels=parcels)
    product_id = _register_dates(conn, tmp_path, cube)[0]
    first = extract_product(conn, STORE, product_id, aoi="flanders")
    rows, counts = obs_rows(conn, product_id), row_counts(conn)
    # spoil the stored rows, so that only a real replacement (not "nothing done") restores them
    conn.execute("UPDATE cbm.parcel_obs SET stats = array_fill(-1::real, ARRAY[cardinality(stats)]) "
                 "WHERE product_id = %s", (product_id,))
    conn.execute("DELETE FROM cbm.parcel_obs WHERE product_id = %s AND parcel_key = %s", (product_id, min(rows)))
    conn.commit()
    assert obs_rows(conn, product_id).keys() == rows.keys() - {min(rows)}
    second = extract_product(conn, STORE, product_id, aoi="flanders", year=2018)
    assert (second.n_parcels, second.n_rows) == (first.n_parcels, first.n_rows)
    assert row_counts(conn) == counts
    again = obs_rows(conn, product_id)
    assert again.keys() == rows.keys()
    for key, stats in rows.items():
        np.testing.assert_array_equal(again[key], stats)


def test_parcels_in_another_crs_are_transformed_in_postgis(conn: psycopg.Connection, tmp_path: Path,
                                                          cube: dict[str, Any]) -> None:
    # parcels with edges 2-3 m off the pixel centres, so that reprojection rounding cannot move a pixel
    utm = [("a", shapely.box(501402, 5629402, 501548, 5629548)),
           ("b", shapely.Polygon([(501703, 5629103), (501897, 5629103), (501703, 5629297)]))]
    to_4326 = pyproj.Transformer.from_crs(32631, 4326, always_xy=True).transform
    in_4326 = [(i, shapely.transform(g, to_4326, interleaved=False)) for i, g in utm]
    add_parcel_set(conn, aoi="flanders", year=2018, srid=4326, parcels=in_4326)
    product_id = _register_dates(conn, tmp_path, cube)[1]
    extract_product(conn, STORE, product_id, aoi="flanders")
    got = obs_rows(conn, product_id)
    for key, (_, geom) in enumerate(utm, start=1):
        mask = rasterio.features.geometry_mask([geom], out_shape=(64, 64), transform=T10, invert=True)
        np.testing.assert_array_equal(got[key][:8][[0, 3, 4]], _reference(cube["B04"][1][mask])[[0, 3, 4]])
        assert got[key][8] == mask.sum()
