"""extract_product on COGs in an S3-protocol store (moto server): windowed ranged reads, error translation."""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyproj
import pytest
import rasterio
import rasterio.features
import rasterio.shutil
import rasterio.transform
import rasterio.windows
import shapely
import shapely.geometry
from affine import Affine
from conftest import shared_data
from rasterio.errors import NotGeoreferencedWarning
from s3_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, moto_server
from test_extract_support import add_parcel_set, add_product, obs_rows, row_counts, write_tif

from cbm_tasks.api import chips, raw_chips
from cbm_tasks.errors import BandError, TransientError
from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.store import Store, StoreConfig, open_store

TRANSFORM = Affine(10, 0, 500000, 0, -10, 5610240)  # 1024 x 1024 pixels of 10 m
WHEN = datetime(2018, 6, 1, tzinfo=UTC)
# two parcels in the top-left 512 x 512 block quarter: a windowed read touches few COG tiles
PARCELS = [("a", shapely.box(500103, 5610003, 500597, 5610197)),
           ("b", shapely.Polygon([(501003, 5609003), (501997, 5609003), (501003, 5609797)]))]
SAFE = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
SAFE_PARCELS = [("field-a", shapely.box(520013, 5850017, 520611, 5850389)),
                ("field-b", shapely.Polygon([(530003, 5860007), (530903, 5860007), (530003, 5860607)]))]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def bucket(s3: MotoServer) -> str:
    name = f"cbm-extract-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


def _store(endpoint_url: str, bucket: str, tmp_path: Path) -> Store:
    return open_store(StoreConfig(kind="s3", bucket=bucket, endpoint_url=endpoint_url, access_key=ACCESS_KEY,
                                  secret_key=SECRET_KEY, region=REGION, scratch_dir=str(tmp_path / "scratch")))


def _cog(tmp_path: Path) -> tuple[Path, np.ndarray]:
    values = np.random.default_rng(7).integers(1, 10000, size=(1024, 1024), dtype=np.uint16)
    plain = write_tif(tmp_path / "plain.tif", values, transform=TRANSFORM, nodata=0)
    cog = tmp_path / "B04.tif"
    rasterio.shutil.copy(plain, cog, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE", OVERVIEWS="NONE")
    return cog, values


def _cog_product(conn: psycopg.Connection, s3: MotoServer, bucket: str,
                 tmp_path: Path) -> tuple[Store, np.ndarray, int]:
    """A B04 COG uploaded to the bucket, the two parcels of AOI s3 and the product registered for them."""
    store = _store(s3.endpoint_url, bucket, tmp_path)
    cog, values = _cog(tmp_path)
    store.upload(cog, f"s3://{bucket}/S2/B04.tif")
    add_parcel_set(conn, aoi="s3", year=2018, srid=32631, parcels=PARCELS)
    descriptors = [{"name": "B04", "href": f"s3://{bucket}/S2/B04.tif", "nodata": 0, "scale": 1e-4}]
    product_id = add_product(conn, aoi="s3", name="S2_ON_S3", location=f"s3://{bucket}/S2/", acquired_at=WHEN,
                             bands=descriptors)
    return store, values, product_id


def test_cog_on_s3_is_read_by_window(conn: psycopg.Connection, s3: MotoServer, bucket: str,
                                     tmp_path: Path) -> None:
    store, values, product_id = _cog_product(conn, s3, bucket, tmp_path)
    n_logged = len(s3.requests())
    result = extract_product(conn, store, product_id, aoi="s3")
    assert result.n_parcels == 2
    got = obs_rows(conn, product_id)
    for key, (_, geom) in enumerate(PARCELS, start=1):
        mask = rasterio.features.geometry_mask([geom], out_shape=values.shape, transform=TRANSFORM, invert=True)
        dn = values[mask].astype(np.float64)
        assert got[key][0] == dn.size
        np.testing.assert_allclose(got[key][1:5], np.array([dn.mean(), dn.std(), dn.min(), dn.max()]) * 1e-4,
                                   rtol=1e-6)
    reads = [line for line in s3.requests()[n_logged:] if "/S2/B04.tif HTTP/1.1\" 206" in line]
    assert reads, "the COG should be read with ranged GETs (HTTP 206)"
    # the parcels lie in 8 of the 16 tiles; a whole-file read would fetch all of them at once
    assert all("200" not in line.split("HTTP/1.1")[1][:6] for line in s3.requests()[n_logged:]
               if "/S2/B04.tif" in line and "GET" in line)


def test_missing_key_is_a_band_error(conn: psycopg.Connection, s3: MotoServer, bucket: str,
                                     tmp_path: Path) -> None:
    store = _store(s3.endpoint_url, bucket, tmp_path)
    add_parcel_set(conn, aoi="s3", year=2018, srid=32631, parcels=PARCELS)
    href = f"s3://{bucket}/S2/B08.tif"
    product_id = add_product(conn, aoi="s3", name="S2_ON_S3", location=f"s3://{bucket}/S2/", acquired_at=WHEN,
                             bands=[{"name": "B08", "href": href, "nodata": 0}])
    before = row_counts(conn)
    with pytest.raises(BandError, match=f"S2_ON_S3: band B08: file {href} does not exist"):
        extract_product(conn, store, product_id, aoi="s3")
    assert row_counts(conn) == before


def test_unreachable_store_is_transient(conn: psycopg.Connection, tmp_path: Path) -> None:
    store = _store("http://127.0.0.1:9", "nowhere", tmp_path)  # nothing listens on port 9
    add_parcel_set(conn, aoi="s3", year=2018, srid=32631, parcels=PARCELS)
    product_id = add_product(conn, aoi="s3", name="S2_ON_S3", location="s3://nowhere/S2/", acquired_at=WHEN,
                             bands=[{"name": "B04", "href": "s3://nowhere/S2/B04.tif", "nodata": 0}])
    before = row_counts(conn)
    with pytest.raises(TransientError, match="s3://nowhere/S2/B04.tif"):
        extract_product(conn, store, product_id, aoi="s3")
    assert row_counts(conn) == before


def test_safe_folder_on_s3_without_band_descriptors(conn: psycopg.Connection, s3: MotoServer, bucket: str,
                                                    tmp_path: Path) -> None:
    """A SAFE as a CDSE OData record gives it (location only): listed and read through the store."""
    store = _store(s3.endpoint_url, bucket, tmp_path)
    safe = shared_data("s2_l2a_safe", SAFE)
    wanted = ["MTD_MSIL2A.xml", *(p.relative_to(safe).as_posix() for p in safe.glob("GRANULE/*/IMG_DATA/R*m/*.jp2")
                                  if p.name.endswith(("_B04_60m.jp2", "_SCL_20m.jp2", "_SCL_60m.jp2")))]
    for relative in wanted:
        store.upload(safe / relative, f"s3://{bucket}/eodata/{SAFE}/{relative}")
    add_parcel_set(conn, aoi="ireland", year=2022, srid=32629, parcels=SAFE_PARCELS)
    remote_id = add_product(conn, aoi="ireland", name="remote", location=f"s3://{bucket}/eodata/{SAFE}/",
                            acquired_at=WHEN)
    local_id = add_product(conn, aoi="ireland", name="local", location=str(safe), acquired_at=WHEN)
    remote = extract_product(conn, store, remote_id, aoi="ireland", year=2022)
    extract_product(conn, store, local_id, aoi="ireland", year=2022)
    bands = dict(conn.execute("SELECT product_id, bands FROM cbm.extraction").fetchall())
    assert bands[remote_id] == ["B04"] and remote.n_parcels == len(SAFE_PARCELS)
    b04 = bands[local_id].index("B04")
    local_rows, remote_rows = obs_rows(conn, local_id), obs_rows(conn, remote_id)
    assert local_rows.keys() == remote_rows.keys()
    for key, stats in remote_rows.items():
        np.testing.assert_array_equal(stats, local_rows[key][8 * b04:8 * b04 + 8])
        assert stats[0] > 0 and -0.1 <= stats[3]  # offset applied: physical = (DN - 1000) / 10000
    counts = conn.execute("SELECT product_id, parcel_key, counts FROM cbm.parcel_class_counts "
                          "ORDER BY parcel_key").fetchall()
    assert [c[1:] for c in counts if c[0] == remote_id] == [c[1:] for c in counts if c[0] == local_id]


def test_cli_extracts_an_image_on_s3_with_the_store_from_the_environment(
    conn: psycopg.Connection, db_url: str, s3: MotoServer, bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cbm_tasks import cli

    values = np.random.default_rng(11).integers(1, 10000, size=(2, 1024, 1024), dtype=np.uint16)
    image = write_tif(tmp_path / "coh.tif", values, transform=TRANSFORM, nodata=0, descriptions=["VV", "VH"],
                      tags={"TIFFTAG_DATETIME": "2018:06:01 17:32:00"})
    _store(s3.endpoint_url, bucket, tmp_path).upload(image, f"s3://{bucket}/card/coh.tif")
    add_parcel_set(conn, aoi="s3cli", year=2018, srid=32631, parcels=PARCELS)
    for name, value in {"KIND": "s3", "BUCKET": bucket, "ENDPOINT_URL": s3.endpoint_url, "REGION": REGION,
                        "ACCESS_KEY": ACCESS_KEY, "SECRET_KEY": SECRET_KEY,
                        "SCRATCH_DIR": str(tmp_path / "scratch")}.items():
        monkeypatch.setenv(f"CBM_STORE_{name}", value)
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    uri = f"s3://{bucket}/card/coh.tif"
    assert cli.main(["extract", uri, "--aoi", "s3cli", "--year", "2018", "--product-type", "CARD-COH6"]) == 0
    product_id, product_type = conn.execute(
        "SELECT product_id, product_type FROM cbm.product WHERE uid = %s", (uri,)).fetchone()
    assert product_type == "CARD-COH6"
    bands = conn.execute("SELECT bands FROM cbm.extraction WHERE product_id = %s", (product_id,)).fetchone()[0]
    assert bands == ["VV", "VH"]
    got = obs_rows(conn, product_id)
    mask = rasterio.features.geometry_mask([PARCELS[0][1]], out_shape=(1024, 1024), transform=TRANSFORM, invert=True)
    assert got[1][0] == mask.sum() and got[1][1] == pytest.approx(values[0][mask].mean(), rel=1e-6)


def test_raw_chip_of_a_cog_on_s3_keeps_its_pixels(conn: psycopg.Connection, s3: MotoServer, bucket: str,
                                                  tmp_path: Path) -> None:
    """JRC's raw chips (cbm_tasks.api.raw_chips) read the product where it lies: here a COG in S3."""
    store, values, product_id = _cog_product(conn, s3, bucket, tmp_path)
    extract_product(conn, store, product_id, aoi="s3")
    lon, lat = pyproj.Transformer.from_crs(32631, 4326, always_xy=True).transform(501_500, 5_609_400)
    [chip] = raw_chips.find_raw_chips(conn, {"s3"}, lon, lat, product_types=["S2MSI2A"], start=WHEN.date(),
                                      end=WHEN.date())
    assert chip.product_id == product_id and not chip.may_have("B08")
    with rasterio.open(io.BytesIO(raw_chips.render_raw_chip(conn, store, chip, "B04", lon, lat, 640))) as tif:
        row, col = rasterio.transform.rowcol(TRANSFORM, tif.bounds.left + 1, tif.bounds.top - 1)
        np.testing.assert_array_equal(tif.read(1), values[row:row + 64, col:col + 64])
        assert tif.scales == (1e-4,) and tif.nodata == 0


def test_audit_pictures_of_a_cog_on_s3(conn: psycopg.Connection, s3: MotoServer, bucket: str,
                                       tmp_path: Path) -> None:
    """The audit report's pictures (cbm_tasks.api.chips.render_comparable) cut the product where it lies: S3."""
    store, values, product_id = _cog_product(conn, s3, bucket, tmp_path)
    extract_product(conn, store, product_id, aoi="s3")
    (set_id,) = conn.execute("SELECT parcel_set_id FROM cbm.extraction WHERE product_id = %s", (product_id,)).fetchone()
    product = chips.extracted_product(conn, set_id, product_id, f"parcel set {set_id}")
    geometry = shapely.geometry.mapping(PARCELS[1][1])  # parcel b, inside the image
    source = chips.ChipSource(product_id, product, geometry, 32631)
    assert chips.display_bands(product, store) == ("B04",)  # one band: grey
    pictures = chips.render_comparable([source, source], store, ["B04"], size=192)
    assert pictures[0] == pictures[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture: no georeferencing
        with rasterio.open(io.BytesIO(pictures[0])) as png:
            rgba = png.read()
    # parcel b (994 x 794 m) with 50 m around it, ~109 x 89 pixels of 10 m, enlarged to 192 pixels wide
    window = rasterio.windows.from_bounds(501003 - 50, 5609003 - 50, 501997 + 50, 5609797 + 50, TRANSFORM)
    window = window.round_offsets().round_lengths()
    assert rgba.shape[2] == 192 and abs(rgba.shape[1] / 192 - window.height / window.width) < 0.02
    outline = (rgba[0] == 255) & (rgba[1] == 255) & (rgba[2] == 0)
    assert outline.any() and (rgba[3] == 255).all()
    # grey: the three channels equal off the outline, and they follow the pixels read from S3
    assert (rgba[0][~outline] == rgba[2][~outline]).all()
    pixels = values[window.row_off:window.row_off + window.height, window.col_off:window.col_off + window.width]
    rows = ((np.arange(window.height) + 0.5) * rgba.shape[1] / window.height).astype(int)
    cols = ((np.arange(window.width) + 0.5) * rgba.shape[2] / window.width).astype(int)
    picture = rgba[2][np.ix_(rows, cols)].astype(float)
    inside = ~outline[np.ix_(rows, cols)]
    assert np.corrcoef(pixels[inside].astype(float), picture[inside])[0, 1] > 0.95
