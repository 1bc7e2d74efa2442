"""A real Sentinel-2 L2A SAFE (T29UNU, baseline 04.00, BOA_ADD_OFFSET -1000) through ``extract_file``."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
import rasterio
import rasterio.features
import shapely
from conftest import shared_data
from test_extract_support import add_parcel_set, obs_rows

from cbm_tasks.errors import BadInputError
from cbm_tasks.pipeline.files import extract_file
from cbm_tasks.store import StoreConfig, open_store

SAFE = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
STORE = open_store(StoreConfig())
# EPSG:32629; edges a few metres off the 20 m / 60 m pixel centres so that membership is unambiguous
PARCELS = [
    ("field-a", shapely.box(520013, 5850017, 520611, 5850389)),
    ("field-b", shapely.Polygon([(530003, 5860007), (530903, 5860007), (530003, 5860607)])),
    ("field-c", shapely.MultiPolygon([shapely.box(515003, 5840003, 515303, 5840243),
                                      shapely.box(515603, 5840003, 515783, 5840363)])),
    ("outside-data", shapely.box(600013, 5800017, 600511, 5800389)),  # east of the swath: not in the footprint
]


def _read(pattern: str) -> tuple[np.ndarray, rasterio.Affine]:
    (path,) = shared_data("s2_l2a_safe", SAFE).glob(pattern)
    with rasterio.open(path) as dataset:
        return dataset.read(1), dataset.transform


def test_safe_extraction_applies_the_boa_offset(conn: psycopg.Connection) -> None:
    safe = shared_data("s2_l2a_safe", SAFE)
    add_parcel_set(conn, aoi="ireland", year=2022, srid=32629, parcels=PARCELS)
    result = extract_file(conn, STORE, safe, aoi="ireland", year=2022)
    product = conn.execute("SELECT product_id, name, product_type, acquired_at, processing_baseline, "
                           "ST_Area(footprint) > 0 FROM cbm.product").fetchone()
    assert product == (result.product_id, SAFE.removesuffix(".SAFE"), "S2MSI2A",
                       datetime(2022, 10, 5, 11, 54, 11, 24000, tzinfo=UTC), "04.00", True)
    bands, class_bands, params = conn.execute("SELECT bands, class_bands, params FROM cbm.extraction").fetchone()
    assert bands == ["B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"] and class_bands == ["SCL"]
    assert params["bands"]["B04"]["offset"] == -0.1 and params["parcels_selected"] == 3
    got = obs_rows(conn, result.product_id)
    assert sorted(got) == [1, 2, 3]  # the parcel east of the data area is not selected

    b04, t60 = _read("GRANULE/*/IMG_DATA/R60m/*_B04_60m.jp2")
    scl, t20 = _read("GRANULE/*/IMG_DATA/R20m/*_SCL_20m.jp2")
    class_counts = dict(conn.execute("SELECT parcel_key, counts FROM cbm.parcel_class_counts").fetchall())
    for key, (parcel_id, geom) in enumerate(PARCELS[:3], start=1):
        mask = rasterio.features.geometry_mask([geom], out_shape=b04.shape, transform=t60, invert=True)
        dn = b04[mask & (b04 != 0)].astype(np.float64)
        assert dn.size > 3
        physical = (dn - 1000) / 10000  # BOA_ADD_OFFSET applied before the quantification
        p25, p50, p75 = np.percentile(physical, [25, 50, 75])
        expected = np.array([dn.size, physical.mean(), physical.std(), physical.min(), physical.max(),
                             p25, p50, p75], np.float32)
        b04_block = got[key][2 * 8:3 * 8]
        np.testing.assert_allclose(b04_block, expected, rtol=1e-6, err_msg=parcel_id)
        mask20 = rasterio.features.geometry_mask([geom], out_shape=scl.shape, transform=t20, invert=True)
        classes = scl[mask20 & (scl != 0)]
        assert class_counts[key] == np.bincount(classes, minlength=12).tolist()


def test_a_safe_folder_takes_no_scale_from_the_user(conn: psycopg.Connection) -> None:
    safe = shared_data("s2_l2a_safe", SAFE)
    add_parcel_set(conn, aoi="ireland", year=2022, srid=32629, parcels=PARCELS)
    with pytest.raises(BadInputError, match=r"a SAFE folder names its bands and states their scale and offset"):
        extract_file(conn, STORE, safe, aoi="ireland", year=2022, scale=1e-4, offset=-0.1)
    assert conn.execute("SELECT count(*) FROM cbm.product").fetchone() == (0,)
