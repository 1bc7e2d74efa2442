"""extract_product edge cases on a synthetic 10 x 10 image with known pixel values."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyproj
import pytest
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, add_product, obs_rows, row_counts, write_tif

from cbm_tasks.errors import CorruptProductError
from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.lineage import RunContext
from cbm_tasks.pipeline.files import extract_file
from cbm_tasks.store import StoreConfig, open_store

STORE = open_store(StoreConfig())
X0, Y0 = 500000, 5600100
TRANSFORM = Affine(10, 0, X0, 0, -10, Y0)
WHEN = datetime(2018, 6, 1, 10, 30, tzinfo=UTC)
SCALE, OFFSET = 0.5, -3.0


def _box(col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    """A box in pixel coordinates (columns, rows from the top-left corner) as map coordinates."""
    return shapely.box(X0 + 10 * col0, Y0 - 10 * row1, X0 + 10 * col1, Y0 - 10 * row0)


DN = np.arange(1, 101, dtype=np.uint16).reshape(10, 10) * 3
DN[8:, :2] = 0  # nodata corner

PARCELS = [
    ("tiny", _box(1.2, 1.2, 1.8, 1.8)),  # smaller than a pixel, holds the centre of pixel (1, 1)
    ("tiny-no-centre", _box(2.1, 2.1, 2.4, 2.4)),  # smaller than a pixel, no centre: no row
    ("partly-outside", _box(-3, 3, 3, 7)),  # columns 0..2 inside, rows 3..6
    ("hole", _box(4, 4, 9, 9).difference(_box(6, 6, 7, 7))),  # 25 pixels minus the hole
    ("multi", shapely.MultiPolygon([_box(0, 0, 2, 1), _box(8, 0, 9, 2)])),  # 2 + 2 pixels
    ("all-nodata", _box(0, 8, 2, 10)),  # only nodata pixels: no row
    ("far-away", shapely.box(700000, 5700000, 700100, 5700100)),  # not on the image: not selected
]
PIXELS = {  # parcel_id -> (rows, cols) of its pixels
    "tiny": ([1], [1]),
    "partly-outside": tuple(np.meshgrid(range(3, 7), range(0, 3), indexing="ij")),
    "hole": tuple(np.array([(r, c) for r in range(4, 9) for c in range(4, 9) if (r, c) != (6, 6)]).T),
    "multi": ([0, 0, 0, 1], [0, 1, 8, 8]),
}


def _expected(parcel_id: str) -> np.ndarray:
    rows, cols = PIXELS[parcel_id]
    dn = DN[np.asarray(rows), np.asarray(cols)].astype(np.float64).ravel()
    p25, p50, p75 = np.percentile(dn, [25, 50, 75])
    return np.array([dn.size, dn.mean() * SCALE + OFFSET, dn.std() * SCALE, dn.min() * SCALE + OFFSET,
                     dn.max() * SCALE + OFFSET, p25 * SCALE + OFFSET, p50 * SCALE + OFFSET,
                     p75 * SCALE + OFFSET], np.float32)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    # a lone GeoTIFF without band descriptors: name, nodata, scale and offset come from the file
    return write_tif(tmp_path / "S2X_20180601_B04.tif", DN, transform=TRANSFORM, nodata=0, descriptions=["B04"],
                     scales=[SCALE], offsets=[OFFSET])


def test_edge_cases(conn: psycopg.Connection, image: Path) -> None:
    add_parcel_set(conn, aoi="edges", year=2018, srid=32631, parcels=PARCELS)
    product_id = add_product(conn, aoi="edges", name="S2X_20180601", location=str(image), acquired_at=WHEN)
    result = extract_product(conn, STORE, product_id, aoi="edges")
    got = obs_rows(conn, product_id)
    keys = {parcel_id: key for key, (parcel_id, _) in enumerate(PARCELS, start=1)}
    assert sorted(got) == sorted(keys[p] for p in PIXELS)
    for parcel_id in PIXELS:
        np.testing.assert_allclose(got[keys[parcel_id]], _expected(parcel_id), rtol=1e-6, err_msg=parcel_id)
    assert got[keys["tiny"]][0] == 1 and got[keys["hole"]][0] == 24
    assert (result.n_parcels, result.n_rows, result.n_bands) == (4, 4, 1)
    params = conn.execute("SELECT params FROM cbm.extraction").fetchone()
    assert params is not None
    assert params[0]["bands"]["B04"]["offset"] == OFFSET and params[0]["parcels_selected"] == 6


def test_footprint_limits_the_parcels(conn: psycopg.Connection, image: Path) -> None:
    add_parcel_set(conn, aoi="edges", year=2018, srid=32631, parcels=PARCELS)
    to_4326 = pyproj.Transformer.from_crs(32631, 4326, always_xy=True).transform
    left_half = shapely.transform(_box(-5, -5, 3.5, 15).segmentize(5), to_4326, interleaved=False)
    product_id = add_product(conn, aoi="edges", name="S2X_20180601", location=str(image), acquired_at=WHEN,
                             footprint_wkt=left_half.wkt)
    extract_product(conn, STORE, product_id, aoi="edges")
    keys = [key for key, (parcel_id, _) in enumerate(PARCELS, start=1) if parcel_id in ("tiny", "partly-outside",
                                                                                      "multi")]
    assert sorted(obs_rows(conn, product_id)) == keys  # "hole" lies outside the valid footprint


def test_image_without_parcels(conn: psycopg.Connection, image: Path) -> None:
    add_parcel_set(conn, aoi="elsewhere", year=2018, srid=32631, parcels=[PARCELS[-1]])
    product_id = add_product(conn, aoi="elsewhere", name="S2X_20180601", location=str(image), acquired_at=WHEN)
    before = row_counts(conn)
    result = extract_product(conn, STORE, product_id, aoi="elsewhere")
    assert (result.n_parcels, result.n_rows) == (0, 0)
    assert row_counts(conn) == before


def test_labels_are_reused_for_the_same_grid(conn: psycopg.Connection, image: Path, tmp_path: Path) -> None:
    add_parcel_set(conn, aoi="edges", year=2018, srid=32631, parcels=PARCELS)
    second = write_tif(tmp_path / "second.tif", DN[:, ::-1].copy(), transform=TRANSFORM, nodata=0,
                       descriptions=["B04"], scales=[SCALE], offsets=[OFFSET])
    first_id = add_product(conn, aoi="edges", name="S2X_20180601", location=str(image), acquired_at=WHEN)
    second_id = add_product(conn, aoi="edges", name="S2X_20180606", location=str(second), acquired_at=WHEN)
    cache = LabelCache()
    extract_product(conn, STORE, first_id, aoi="edges", label_cache=cache)
    extract_product(conn, STORE, second_id, aoi="edges", label_cache=cache)
    assert len(cache) == 1
    keys = {parcel_id: key for key, (parcel_id, _) in enumerate(PARCELS, start=1)}
    assert obs_rows(conn, second_id)[keys["tiny"]][3] == DN[1, 8] * SCALE + OFFSET


def test_run_context_records_lineage(conn: psycopg.Connection, image: Path) -> None:
    add_parcel_set(conn, aoi="edges", year=2018, srid=32631, parcels=PARCELS)
    product_id = add_product(conn, aoi="edges", name="S2X_20180601", location=str(image), acquired_at=WHEN)
    run = RunContext(step="extract", dag_id="cbm_extract", run_id="manual__1", task_id="extract", map_index=0,
                     try_number=1)
    extract_product(conn, STORE, product_id, aoi="edges", run=run)
    row = conn.execute("SELECT r.status, r.step, r.params ->> 'product_id', e.pipeline_run_id = r.pipeline_run_id "
                       "FROM cbm.pipeline_run r, cbm.extraction e").fetchone()
    assert row == ("success", "extract", str(product_id), True)
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(CorruptProductError):
        extract_product(conn, STORE, product_id, aoi="edges", run=run)
    failed = conn.execute("SELECT status, error FROM cbm.pipeline_run ORDER BY pipeline_run_id DESC").fetchone()
    assert failed is not None and failed[0] == "failed" and failed[1].startswith("CorruptProductError: product S2X")


def test_file_extracted_for_a_catalogued_product(conn: psycopg.Connection, image: Path, tmp_path: Path) -> None:
    add_parcel_set(conn, aoi="edges", year=2018, srid=32631, parcels=PARCELS)
    remote = [{"name": "B04", "href": "s3://eodata/elsewhere/B04.tif", "nodata": 0}]
    product_id = add_product(conn, aoi="edges", name="S2X_20180601", location="s3://eodata/elsewhere",
                             acquired_at=WHEN, bands=remote)
    result = extract_file(conn, STORE, image, aoi="edges", year=2018, product_id=product_id)
    assert result.product_id == product_id and result.n_parcels == 4
    assert row_counts(conn)["cbm.product"] == 1  # the local copy is not registered as a product of its own
    keys = {parcel_id: key for key, (parcel_id, _) in enumerate(PARCELS, start=1)}
    np.testing.assert_allclose(obs_rows(conn, product_id)[keys["hole"]], _expected("hole"), rtol=1e-6)


def test_local_copy_decodes_as_its_catalogue_record(conn: psycopg.Connection, tmp_path: Path) -> None:
    # a COG whose scale, offset and nodata are in the STAC item only (Earth Search), downloaded and
    # extracted under its catalogue product: it decodes as the record says, not as raw numbers
    add_parcel_set(conn, aoi="edges", year=2018, srid=32631, parcels=PARCELS)
    copy = write_tif(tmp_path / "B04.tif", DN, transform=TRANSFORM)  # no nodata, scale, offset or description
    remote = [{"name": "B04", "href": "s3://eodata/elsewhere/B04.tif", "nodata": 0, "scale": SCALE, "offset": OFFSET}]
    product_id = add_product(conn, aoi="edges", name="S2X_20180601", location="s3://eodata/elsewhere",
                             acquired_at=WHEN, bands=remote)
    extract_file(conn, STORE, copy, aoi="edges", year=2018, product_id=product_id)
    keys = {parcel_id: key for key, (parcel_id, _) in enumerate(PARCELS, start=1)}
    got = obs_rows(conn, product_id)
    assert keys["all-nodata"] not in got  # nodata 0 from the record
    np.testing.assert_allclose(got[keys["hole"]], _expected("hole"), rtol=1e-6)
