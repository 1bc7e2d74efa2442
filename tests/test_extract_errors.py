"""Bad input to extract_product: a named error, and the database exactly as before."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
import rasterio.shutil
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, add_product, obs_rows, row_counts, write_tif

from cbm_tasks.errors import BandError, CorruptProductError, NotFoundError, ProductNotFoundError
from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.store import StoreConfig, open_store

STORE = open_store(StoreConfig())
TRANSFORM = Affine(10, 0, 500000, 0, -10, 5605120)
WHEN = datetime(2018, 6, 1, tzinfo=UTC)
NAME = "S2X_MSIL2A_20180601T103021"


@pytest.fixture
def parcels(conn: psycopg.Connection) -> None:
    add_parcel_set(conn, aoi="bad", year=2018, srid=32631,
                   parcels=[("a", shapely.box(500100, 5600100, 504000, 5604000))])


def _big_tif(path: Path) -> Path:
    rng = np.random.default_rng(3)
    return write_tif(path, rng.integers(1, 10000, size=(512, 512), dtype=np.uint16), transform=TRANSFORM,
                     nodata=0, descriptions=["B04"])


def test_truncated_geotiff(conn: psycopg.Connection, parcels: None, tmp_path: Path) -> None:
    tif = _big_tif(tmp_path / "B04.tif")
    product_id = add_product(conn, aoi="bad", name=NAME, location=str(tif), acquired_at=WHEN)
    extract_product(conn, STORE, product_id, aoi="bad")  # a good extraction first
    good_rows, before = obs_rows(conn, product_id), row_counts(conn)
    data = tif.read_bytes()
    tif.write_bytes(data[: len(data) // 2])  # the re-delivered file is cut in the middle
    with pytest.raises(CorruptProductError, match=rf"{NAME}.*{tif}"):
        extract_product(conn, STORE, product_id, aoi="bad")
    assert row_counts(conn) == before
    assert obs_rows(conn, product_id).keys() == good_rows.keys()


def test_truncated_cog_fails_on_read(conn: psycopg.Connection, parcels: None, tmp_path: Path) -> None:
    # a COG keeps its header first: the file opens, the pixel read fails
    cog = tmp_path / "B04_cog.tif"
    rasterio.shutil.copy(_big_tif(tmp_path / "B04.tif"), cog, driver="COG", BLOCKSIZE=128)
    data = cog.read_bytes()
    cog.write_bytes(data[: len(data) // 2])
    product_id = add_product(conn, aoi="bad", name=NAME, location=str(cog), acquired_at=WHEN)
    before = row_counts(conn)
    with pytest.raises(CorruptProductError, match=rf"{NAME}: band B04: file {cog}: cannot read it"):
        extract_product(conn, STORE, product_id, aoi="bad")
    assert row_counts(conn) == before


def test_missing_band_file(conn: psycopg.Connection, parcels: None, tmp_path: Path) -> None:
    b04 = _big_tif(tmp_path / "B04.tif")
    descriptors = [{"name": "B04", "href": str(b04), "nodata": 0},
                   {"name": "B08", "href": str(tmp_path / "B08.tif"), "nodata": 0}]
    product_id = add_product(conn, aoi="bad", name=NAME, location=str(tmp_path), acquired_at=WHEN,
                             bands=descriptors)
    before = row_counts(conn)
    with pytest.raises(BandError, match=rf"{NAME}: band B08: file {tmp_path / 'B08.tif'} does not exist"):
        extract_product(conn, STORE, product_id, aoi="bad")
    assert row_counts(conn) == before


def test_band_index_beyond_the_file(conn: psycopg.Connection, parcels: None, tmp_path: Path) -> None:
    b04 = _big_tif(tmp_path / "B04.tif")
    product_id = add_product(conn, aoi="bad", name=NAME, location=str(tmp_path), acquired_at=WHEN,
                             bands=[{"name": "VH", "href": str(b04), "band": 2}])
    before = row_counts(conn)
    with pytest.raises(BandError, match="band VH is band 2 of .*B04.tif, which has 1 band"):
        extract_product(conn, STORE, product_id, aoi="bad")
    assert row_counts(conn) == before


def test_missing_crs(conn: psycopg.Connection, parcels: None, tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "nocrs.tif", np.ones((8, 8), np.uint16), transform=TRANSFORM, crs=None)
    product_id = add_product(conn, aoi="bad", name=NAME, location=str(tif), acquired_at=WHEN)
    before = row_counts(conn)
    with pytest.raises(CorruptProductError, match=rf"{NAME}: .*nocrs.tif has no CRS"):
        extract_product(conn, STORE, product_id, aoi="bad")
    assert row_counts(conn) == before


def test_class_value_out_of_range(conn: psycopg.Connection, parcels: None, tmp_path: Path) -> None:
    scl = write_tif(tmp_path / "scl.tif", np.full((512, 512), 14, np.uint8), transform=TRANSFORM, nodata=0)
    product_id = add_product(conn, aoi="bad", name=NAME, location=str(tmp_path), acquired_at=WHEN,
                             bands=[{"name": "SCL", "href": str(scl), "nodata": 0, "categorical": True,
                                     "n_classes": 12}])
    before = row_counts(conn)
    with pytest.raises(BandError, match="band SCL: class value 14"):
        extract_product(conn, STORE, product_id, aoi="bad")
    assert row_counts(conn) == before


def test_unknown_product_and_parcel_set(conn: psycopg.Connection, parcels: None, tmp_path: Path) -> None:
    with pytest.raises(ProductNotFoundError, match="product 999"):
        extract_product(conn, STORE, 999, aoi="bad")
    product_id = add_product(conn, aoi="bad", name=NAME, location=str(_big_tif(tmp_path / "B04.tif")),
                             acquired_at=datetime(2019, 6, 1, tzinfo=UTC))
    before = row_counts(conn)
    with pytest.raises(NotFoundError, match="AOI 'bad' has no parcel set for 2019"):
        extract_product(conn, STORE, product_id, aoi="bad")  # the year defaults to the acquisition's
    assert row_counts(conn) == before
