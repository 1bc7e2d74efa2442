"""JRC's raw chips (rawChipByLocation, rawChipByParcelID) and their signed /dump links, on the API test world."""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import warnings

import numpy as np
import psycopg
import pytest
import rasterio
from affine import Affine
from api_world import P2_LAT, P2_LON, P2_X, P2_Y, S2_DATES, X0, Y0, World
from fastapi.testclient import TestClient
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.windows import Window, from_bounds

from cbm_tasks.api import links, raw_chips
from cbm_tasks.api.app import create_app
from cbm_tasks.api.context import ApiConfig
from cbm_tasks.api.validation import ApiInputError
from cbm_tasks.cli import main

LON, LAT = P2_LON, P2_LAT
SPRING = {"start_date": "2018-04-01", "end_date": "2018-05-31"}


def _by_location(api_client: TestClient, api_world: World, user: str = "ann", **params: object) -> dict[str, list[str]]:
    response = api_client.get("/query/rawChipByLocation", params={"lon": LON, "lat": LAT, **SPRING, **params},
                              auth=api_world.basic(user))
    assert response.status_code == 200, response.text
    answer: dict[str, list[str]] = response.json()
    return answer


def _source_window(api_world: World, name: str, suffix: str, band: int, bounds: tuple[float, ...]) -> np.ndarray:
    with rasterio.open(api_world.store_root / f"{name}_{suffix}.tif") as src:
        window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        return src.read(band, window=window, boundless=True, fill_value=0)


def test_raw_chips_list_the_images_and_download_without_credentials(api_client: TestClient, api_world: World) -> None:
    answer = _by_location(api_client, api_world, band="SCL")
    assert answer["dates"] == [f"{d:%Y%m%dT%H%M%S}" for d in S2_DATES[:2]]  # JRC's labels, in the date range
    names = [chip.rsplit("/", 1)[1] for chip in answer["chips"]]
    assert names == [f"S2_alpha_{d:%Y%m%d}.SCL.tif" for d in S2_DATES[:2]]  # what clients glob: *.SCL.tif
    assert all(chip.startswith("/dump/") for chip in answer["chips"])

    response = api_client.get(answer["chips"][0])  # no credentials, as JRC's notebooks fetch them
    assert response.status_code == 200 and response.headers["content-type"] == "image/tiff"
    with rasterio.open(io.BytesIO(response.content)) as chip:
        assert chip.crs.to_epsg() == 32631 and chip.res == (20.0, 20.0)
        assert (chip.width, chip.height) == (64, 64)  # 1280 m of a 20 m band, JRC's default chipsize
        assert chip.dtypes[0] == "uint8" and chip.nodata == 0 and chip.descriptions == ("SCL",)
        centre = chip.xy(32, 32)
        assert abs(centre[0] - (X0 + 160)) <= 20 and abs(centre[1] - (Y0 + 50)) <= 20
        pixels = chip.read(1)
        expected = _source_window(api_world, "S2_alpha_20180405", "SCL", 1, tuple(chip.bounds))
    np.testing.assert_array_equal(pixels, expected)  # the product's own pixels, on its own grid
    assert set(np.unique(pixels)) == {0, 4, 5}  # classes 4 and 5 in the raster, nodata (0) beyond its edge


def test_raw_chip_keeps_dns_and_writes_scale_and_offset(api_client: TestClient, api_world: World) -> None:
    answer = _by_location(api_client, api_world, band="B4", chipsize=300)  # JRC's short band name
    assert answer["chips"][1].endswith("/S2_alpha_20180510.B04.tif")
    with rasterio.open(io.BytesIO(api_client.get(answer["chips"][1]).content)) as chip:
        assert (chip.width, chip.height) == (30, 30) and chip.dtypes[0] == "uint16"
        assert chip.scales == (1e-4,) and chip.offsets == (0.0,) and chip.nodata == 0
        assert chip.tags()["PRODUCT"] == "S2_alpha_20180510"
        expected = _source_window(api_world, "S2_alpha_20180510", "10m", 3, tuple(chip.bounds))
        np.testing.assert_array_equal(chip.read(1), expected)


def test_raw_chips_by_parcel_id_cut_around_the_parcel(api_client: TestClient, api_world: World) -> None:
    response = api_client.get("/query/rawChipByParcelID", auth=api_world.basic("ann"),
                              params={"aoi": "alpha", "year": 2018, "pid": 2, "band": "B08", **SPRING})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer == {**answer, "dates": [f"{d:%Y%m%dT%H%M%S}" for d in S2_DATES[:2]]}
    with rasterio.open(io.BytesIO(api_client.get(answer["chips"][0]).content)) as chip:
        assert (chip.width, chip.height) == (128, 128)
        x, y = chip.xy(64, 64)
        assert abs(x - (X0 + 160)) <= 10 and abs(y - (Y0 + 50)) <= 10  # the parcel's centroid
    # a band the products do not have gives no chip; a date range with no image an empty list
    assert _by_location(api_client, api_world, band="B8A") == {"dates": [], "chips": []}
    assert _by_location(api_client, api_world, band="SCL", start_date="2019-01-01", end_date="2019-02-01") == {
        "dates": [], "chips": []}


def test_raw_chips_stay_inside_the_granted_aois(api_client: TestClient, api_world: World) -> None:
    params = {"lon": LON, "lat": LAT, "band": "SCL", **SPRING}
    assert api_client.get("/query/rawChipByLocation", params=params, auth=api_world.basic("bob")).status_code == 404
    assert api_client.get("/query/rawChipByLocation", params=params, auth=api_world.basic("eve")).status_code == 404
    assert api_client.get("/query/rawChipByLocation", params={**params, "lon": 10.0}, auth=api_world.basic("ann")
                          ).status_code == 404  # no granted parcel set there
    assert api_client.get("/query/rawChipByLocation", params=params).status_code == 401
    assert api_client.get("/query/rawChipByParcelID", params={"aoi": "alpha", "year": 2018, "pid": 2, "band": "SCL",
                                                              **SPRING}, auth=api_world.basic("bob")).status_code == 403


@pytest.mark.parametrize(("change", "status"), [
    ({"band": "B13"}, 422), ({"band": "B02;x"}, 422), ({"chipsize": 5121}, 422), ({"chipsize": 0}, 422),
    ({"plevel": "LEVEL3"}, 422), ({"start_date": "2018-06-01", "end_date": "2018-05-01"}, 400),
    ({"start_date": "2014-01-01", "end_date": "2018-05-01"}, 400), ({"lat": 91}, 422),
])
def test_raw_chip_parameters_are_checked(api_client: TestClient, api_world: World, change: dict[str, object],
                                        status: int) -> None:
    params = {"lon": LON, "lat": LAT, "band": "SCL", **SPRING, **change}
    assert api_client.get("/query/rawChipByLocation", params=params, auth=api_world.basic("ann")).status_code == status


def test_dump_links_cannot_be_altered_or_used_after_expiry(api_client: TestClient, api_world: World) -> None:
    chip = _by_location(api_client, api_world, band="SCL")["chips"][0]
    _, _, token, name = chip.split("/")
    body, mac = token.split(".")
    assert re.fullmatch(r"[0-9a-f]+\.[0-9a-f]{64}", token)  # hex: no capital a client's URL edit could change
    flipped = "0" if body[5] != "0" else "1"
    altered = [f"/dump/{body[:5]}{flipped}{body[6:]}.{mac}/{name}",  # the payload changed
               f"/dump/{body}.{mac[:-2]}AA/{name}",  # the MAC changed
               f"/dump/{body}/{name}", f"/dump/x.y.z/{name}", f"/dump/{body}.{mac}/other.SCL.tif",
               f"/dump/{body}.{'!' * 43}/{name}"]
    for url in altered:
        response = api_client.get(url)
        assert response.status_code == 404, url
        assert "no such chip" in response.json()["detail"] or "no chip" in response.json()["detail"]
    with psycopg.connect(api_world.db_url) as conn:
        conn.execute("SET ROLE cbm_reader")
        [old] = links.sign_links(conn, [{"p": 1}], ttl_s=60, now=1_000_000_000)  # expired in 2001
        assert links.open_link(conn, old, now=1_000_000_000)["p"] == 1
        assert api_client.get(f"/dump/{old}/{name}").status_code == 404


def test_a_chip_link_edited_to_another_band_of_its_product_serves_that_band(api_client: TestClient,
                                                                           api_world: World) -> None:
    """JRC's tests/test_post*.py edit the whole URL: ``replace('B08.tif', 'B04.tif')``, ``replace('VV', 'VH')``."""
    ann = api_world.basic("ann")
    body = {"lon": LON, "lat": LAT, "tiles": ["S2_alpha_20180405"], "bands": ["B08", "B04"], "chipsize": 200}
    batch = api_client.post("/query/rawChipsBatch", json=body, auth=ann).json()
    listed = dict(zip(batch["dates"], batch["chips"], strict=True))
    label = f"{S2_DATES[0]:%Y%m%dT%H%M%S}"
    nir = listed[f"{label}_B08"]
    red = api_client.get(nir.replace("B08.tif", "B04.tif"))  # no login, as JRC's scripts fetch them
    assert red.status_code == 200 and red.content == api_client.get(listed[f"{label}_B04"]).content
    assert api_client.get(nir.replace("B08.tif", "SCL.tif")).status_code == 200  # any band of the product
    for edit in ("B09.tif", "XYZ.tif", "B04.png"):  # a band the product lacks, no band, another kind
        assert api_client.get(nir.replace("B08.tif", edit)).status_code == 404, edit
    assert api_client.get(nir.replace("S2_alpha_20180405", "S2_alpha_20180510")).status_code == 404  # another product

    s1 = {"lon": LON, "lat": LAT, "dates": ["2018-04-01", "2018-04-30"], "chipsize": 640, "plevel": "CARD-BS"}
    answer = api_client.post("/query/rawS1ChipsBatch", json=s1, auth=ann).json()
    vv = next(c for c in answer["chips"] if c.endswith("_VV.tif"))
    vh = next(c for c in answer["chips"] if c.endswith("_VH.tif"))
    assert api_client.get(vv.replace("VV", "VH")).content == api_client.get(vh).content

    page = api_client.get("/query/chipsByLocation", auth=ann, params={"lon": LON, "lat": LAT, **SPRING}).text
    composite = "/dump/" + page.split('src="../dump/', 1)[1].split('"', 1)[0]
    assert api_client.get(composite).status_code == 200
    assert api_client.get(composite.replace("B08_B04_B03.png", "B04_B03_B02.png")).status_code == 404  # its own only


def test_link_mac_is_rfc2104_hmac_sha256_and_the_key_stays_in_the_database(api_world: World) -> None:
    with psycopg.connect(api_world.db_url) as conn:
        row = conn.execute("SELECT key FROM cbm.api_link_key").fetchone()
        assert row is not None and len(bytes(row[0])) == 32
        key = bytes(row[0])
        for message in (b"", b"cbm chip link v1\n{}", bytes(range(256)) * 3):
            mac = conn.execute("SELECT cbm.api_link_mac(%s)", (message,)).fetchone()
            assert mac is not None and bytes(mac[0]) == hmac.new(key, message, hashlib.sha256).digest()
        conn.execute("SET ROLE cbm_reader")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT key FROM cbm.api_link_key")


def test_batches_of_named_sentinel2_products_and_of_sentinel1_card(api_client: TestClient, api_world: World) -> None:
    # a tile by the product name the time series give as reference, or by its SAFE folder's name
    body = {"lon": LON, "lat": LAT, "tiles": ["S2_alpha_20180510", "S2_alpha_20180405.SAFE", "S2_elsewhere"],
            "bands": ["B08", "B4"], "chipsize": 200}
    answer = api_client.post("/query/rawChipsBatch", json=body, auth=api_world.basic("ann")).json()
    assert answer["dates"] == [f"{d:%Y%m%dT%H%M%S}_{b}" for d in S2_DATES[:2] for b in ("B04", "B08")]
    assert [c.rsplit("/", 1)[1] for c in answer["chips"]] == [
        f"S2_alpha_{d:%Y%m%d}.{b}.tif" for d in S2_DATES[:2] for b in ("B04", "B08")]
    extra = api_client.post("/query/rawChipsBatch", json={**body, "extra": 1}, auth=api_world.basic("ann"))
    assert extra.status_code == 422
    assert api_client.post("/query/rawChipsBatch", json=body, auth=api_world.basic("bob")).status_code == 404

    s1 = {"lon": LON, "lat": LAT, "dates": ["2018-04-01", "2018-05-31"], "chipsize": 1280, "plevel": "CARD-BS"}
    answer = api_client.post("/query/rawS1ChipsBatch", json=s1, auth=api_world.basic("ann")).json()
    assert answer["dates"] == ["20180407T173000_VH", "20180407T173000_VV", "20180513T173000_VH",
                               "20180513T173000_VV"]
    assert answer["chips"][1].endswith("/BS_alpha_20180407_VV.tif")  # JRC's Sentinel-1 names: _VV, _VH
    with rasterio.open(io.BytesIO(api_client.get(answer["chips"][3]).content)) as chip:
        assert (chip.width, chip.height) == (64, 64) and chip.dtypes[0] == "float32"
        values = chip.read(1)
    assert np.isnan(chip.nodata) and np.nanmin(values) == np.nanmax(values) == np.float32(0.06)
    assert np.isnan(values).any()  # beyond the raster's edge: NaN, not a false 0 backscatter
    assert api_client.post("/query/rawS1ChipsBatch", json={**s1, "plevel": "CARD-COH6"},
                           auth=api_world.basic("ann")).json() == {"dates": [], "chips": []}
    assert api_client.post("/query/rawS1ChipsBatch", json={**s1, "dates": ["2018-04-01"]},
                           auth=api_world.basic("ann")).status_code == 422


def test_an_api_without_an_object_store_lists_no_chips(api_world: World) -> None:
    with TestClient(create_app(ApiConfig(dsn=api_world.db_url))) as bare:
        response = bare.get("/query/rawChipByLocation", params={"lon": LON, "lat": LAT, "band": "SCL", **SPRING},
                            auth=api_world.basic("ann"))
    assert response.status_code == 404 and "no object store" in response.json()["detail"]


def test_chips_page_shows_composites_of_the_date_range(api_client: TestClient, api_world: World) -> None:
    response = api_client.get("/query/chipsByLocation", auth=api_world.basic("ann"),
                              params={"lon": LON, "lat": LAT, **SPRING, "lut": "0_3000_0_3000_0_3000"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    sources = re.findall(r'<img src="([^"]+)"', response.text)
    assert len(sources) == 2 and all(s.startswith("../dump/") and s.endswith(".B08_B04_B03.png") for s in sources)
    assert "2018-04-05 10:50" in response.text and "2018-05-10 10:50" in response.text
    png = api_client.get(sources[0].replace("..", "", 1))  # relative to /query/: the API's base
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(io.BytesIO(png.content)) as image:
            rgba = image.read()
    assert rgba.shape == (4, 128, 128)  # 1280 m of the 10 m B08 grid
    with rasterio.open(api_world.store_root / "S2_alpha_20180405_10m.tif") as src:  # B02 B03 B04 B08
        row, col = src.index(P2_X, P2_Y)
        dn = src.read(window=Window(col - 64, row - 64, 128, 128), boundless=True, fill_value=0)
    expected = np.clip(dn[[3, 2, 1]].astype(np.float64) / 3000 * 255, 0, 255).astype(np.uint8)
    inside = rgba[3] == 255
    assert inside.sum() > 3000 and not inside.all()  # transparent beyond the raster's edge
    np.testing.assert_array_equal(rgba[:3][:, inside], expected[:, inside])
    by_parcel = api_client.get("/query/chipsByParcelID", auth=api_world.basic("ann"),
                               params={"aoi": "alpha", "year": 2018, "pid": 2, **SPRING})
    assert len(re.findall(r"<img ", by_parcel.text)) == 2
    for lut in ("95_5", "5_101", "1_2_3_4", "0_1_2_1_0_9", "5;95"):
        bad = api_client.get("/query/chipsByLocation", params={"lon": LON, "lat": LAT, **SPRING, "lut": lut},
                             auth=api_world.basic("ann"))
        assert bad.status_code in (400, 422), lut
    assert api_client.get("/query/chipsByLocation", params={"lon": LON, "lat": LAT, **SPRING, "bands": "SCL_B04_B03"},
                          auth=api_world.basic("ann")).status_code == 422


def test_chip_file_names_have_one_dot_before_the_band() -> None:
    """JRC's cbm client takes the name up to the first dot as the date's stem and adds .B03.tif, .B04.tif."""
    name = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
    assert raw_chips.chip_file_name(name, "B04") == name.removesuffix(".SAFE") + ".B04.tif"
    assert raw_chips.chip_file_name("a.b/c d", "VV", "_") == "a_b_c_d_VV.tif"


def test_rotating_the_link_key_ends_every_link(api_client: TestClient, api_world: World,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    chip = _by_location(api_client, api_world, band="SCL")["chips"][0]
    assert api_client.get(chip).status_code == 200
    monkeypatch.setenv("CBM_DATABASE_URL", api_world.db_url)
    assert main(["api", "rotate-link-key"]) == 0
    assert "rotated" in capsys.readouterr().out
    assert api_client.get(chip).status_code == 404  # signed under the old key
    fresh = _by_location(api_client, api_world, band="SCL")["chips"][0]
    assert api_client.get(fresh).status_code == 200


def test_chip_windows_in_degrees_and_on_fine_rasters() -> None:
    """A product in EPSG:4326 gets a chip of the metres asked, not of that many degrees; a 0.5 m raster refuses
    a chip that would be more than MAX_CHIP_PX pixels a side."""
    lon, lat = 5.0, 52.0
    geographic = {"driver": "GTiff", "width": 2000, "height": 2000, "count": 1, "dtype": "uint8", "crs": "EPSG:4326",
                  "transform": Affine(0.0001, 0, lon - 0.1, 0, -0.0001, lat + 0.1)}
    with MemoryFile() as mem, mem.open(**geographic) as ds:
        window = raw_chips._window(ds, lon, lat, 1280)
    # 0.0001 degree: 6.85 m of longitude and 11.13 m of latitude at 52 N
    assert (window.width, window.height) == (187, 115)
    fine = {**geographic, "crs": "EPSG:32631", "transform": Affine(0.5, 0, 600_000, 0, -0.5, 5_770_000)}
    with MemoryFile() as mem, mem.open(**fine) as ds, pytest.raises(ApiInputError, match="smaller chipsize"):
        raw_chips._window(ds, lon, lat, 5120)
