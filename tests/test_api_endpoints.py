"""Every /v1 endpoint against a real PostGIS holding a small world with known values (tests/api_world.py)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import rasterio
from api_world import S2_BANDS, S2_DATES, World, s2_stats
from fastapi.testclient import TestClient
from rasterio.errors import NotGeoreferencedWarning

from cbm_tasks.api.app import create_app
from cbm_tasks.api.context import ApiConfig
from cbm_tasks.errors import ConfigError
from cbm_tasks.markers import load_params


@pytest.fixture(scope="module")
def world(api_world: World) -> World:
    return api_world


@pytest.fixture(scope="module")
def client(api_client: TestClient) -> TestClient:
    return api_client


def _read_png(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(io.BytesIO(data)) as image:
            return image.read()


def test_health_and_version_need_no_credentials(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "database": True}
    assert client.get("/version").json()["name"] == "cbm-api"


def test_aois_lists_only_granted_parcel_sets(client: TestClient, world: World) -> None:
    body = client.get("/v1/aois", auth=world.basic("ann")).json()
    sets = [(s["aoi"], s["year"], s["n_parcels"], s["srid"], s["inner_buffer_m"]) for s in body["parcel_sets"]]
    assert sets == [("alpha", 2018, 6, 32631, 0)]  # statistics from the whole parcels
    west, south, east, north = body["parcel_sets"][0]["bbox"]
    assert 2.999 < west < east < 3.01 and 51.0 < south < north < 51.01


def test_parcel_by_key_with_geometry(client: TestClient, world: World) -> None:
    parcel = client.get("/v1/aois/alpha/2018/parcels/4?geometry=native", auth=world.basic("ann")).json()
    assert parcel["parcel_id"] == "A-4" and parcel["crop_code"] == "1100" and parcel["crop_name"] == "maize"
    assert parcel["area_m2"] == pytest.approx(10_000) and parcel["srid"] == 32631
    ring = parcel["geometry"]["coordinates"][0][0]
    assert min(x for x, _ in ring) == pytest.approx(500_330) and min(y for _, y in ring) == pytest.approx(5_650_000)
    wgs84 = client.get("/v1/aois/alpha/2018/parcels/4?geometry=wgs84", auth=world.basic("ann")).json()
    lon, lat = wgs84["geometry"]["coordinates"][0][0][0]
    assert 2.999 < lon < 3.01 and 51.0 < lat < 51.01
    assert parcel["clon"] == pytest.approx(sum(x for x, _ in wgs84["geometry"]["coordinates"][0][0][:4]) / 4, abs=1e-5)


def test_find_parcel_by_declared_id_location_and_polygon(client: TestClient, world: World) -> None:
    auth = world.basic("bob")
    found = client.get("/v1/aois/beta/2018/parcels", params={"parcel_id": "B/2"}, auth=auth).json()["parcels"]
    assert [p["parcel_key"] for p in found] == [2]
    ann = world.basic("ann")
    centre = client.get("/v1/aois/alpha/2018/parcels/3", auth=ann).json()
    at = client.get("/v1/aois/alpha/2018/parcels", params={"lon": centre["clon"], "lat": centre["clat"]},
                    auth=ann).json()["parcels"]
    assert [p["parcel_key"] for p in at] == [3]
    c1 = client.get("/v1/aois/alpha/2018/parcels/1", auth=ann).json()
    c2 = client.get("/v1/aois/alpha/2018/parcels/2", auth=ann).json()
    wkt = (f"POLYGON(({c1['clon']} {c1['clat']}, {c2['clon']} {c1['clat']}, {c2['clon']} {c2['clat'] + 1e-4}, "
           f"{c1['clon']} {c1['clat'] + 1e-4}, {c1['clon']} {c1['clat']}))")
    inside = client.get("/v1/aois/alpha/2018/parcels", params={"polygon": wkt}, auth=ann).json()["parcels"]
    assert [p["parcel_key"] for p in inside] == [1, 2]
    paged = client.get("/v1/aois/alpha/2018/parcels", params={"polygon": wkt, "limit": 1, "offset": 1},
                       auth=ann).json()["parcels"]
    assert [p["parcel_key"] for p in paged] == [2]
    empty = client.get("/v1/aois/alpha/2018/parcels", params={"lon": 10.0, "lat": 45.0}, auth=ann).json()
    assert empty["parcels"] == []


def test_peers_have_the_same_crop_nearest_first(client: TestClient, world: World) -> None:
    body = client.get("/v1/aois/alpha/2018/parcels/3/peers", params={"distance_m": 1000},
                      auth=world.basic("ann")).json()
    found = [(p["parcel_key"], p["distance_m"]) for p in body["peers"]]
    assert found == [(2, pytest.approx(10)), (1, pytest.approx(120)), (6, pytest.approx(230))]
    near = client.get("/v1/aois/alpha/2018/parcels/3/peers", params={"distance_m": 50, "limit": 5},
                      auth=world.basic("ann")).json()
    assert [p["parcel_key"] for p in near["peers"]] == [2]


def test_time_series_s2_values_bands_and_dates(client: TestClient, world: World) -> None:
    ann = world.basic("ann")
    body = client.get("/v1/aois/alpha/2018/parcels/2/timeseries", params={"band": "B04"}, auth=ann).json()
    assert body["columns"] == ["obs_time", "product_id", "band", "count", "mean", "std", "min", "max", "p25", "p50",
                               "p75"]
    rows = body["rows"]
    assert [r[1] for r in rows] == world.s2_products and {r[2] for r in rows} == {"B04"}
    expected = s2_stats(2, 1, 2)
    assert rows[1][3:] == pytest.approx([expected[0], expected[1], expected[2], expected[3], expected[4], expected[5],
                                         expected[6], expected[7]], rel=1e-6)
    assert rows[0][0].startswith(S2_DATES[0].strftime("%Y-%m-%dT%H:%M:%S"))
    ranged = client.get("/v1/aois/alpha/2018/parcels/2/timeseries",
                        params={"start": "2018-05-01", "end": "2018-05-31", "band": "B4,B8"}, auth=ann).json()
    assert [(r[1], r[2]) for r in ranged["rows"]] == [(world.s2_products[1], "B04"), (world.s2_products[1], "B08")]
    bs = client.get("/v1/aois/alpha/2018/parcels/2/timeseries", params={"source": "bs"}, auth=ann).json()
    assert [(r[1], r[2]) for r in bs["rows"]] == [(p, b) for p in world.bs_products for b in ("VV", "VH")]
    assert bs["rows"][2][4] == pytest.approx(0.06)


def test_time_series_csv_and_scl_class_counts(client: TestClient, world: World) -> None:
    ann = world.basic("ann")
    response = client.get("/v1/aois/alpha/2018/parcels/2/timeseries", params={"band": "B08", "format": "csv"},
                          auth=ann)
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert lines[0] == "obs_time,product_id,band,count,mean,std,min,max,p25,p50,p75" and len(lines) == 4
    scl = client.get("/v1/aois/alpha/2018/parcels/2/timeseries", params={"source": "scl"}, auth=ann).json()
    assert scl["columns"] == ["obs_time", "product_id", "band", "class", "count"]
    first = world.s2_products[0]
    assert [(r[1], r[3], r[4]) for r in scl["rows"][:2]] == [(first, 4, 30), (first, 5, 10)]


def test_markers_lights_and_summary(client: TestClient, world: World) -> None:
    ann = world.basic("ann")
    markers = client.get("/v1/aois/alpha/2018/parcels/1/markers", auth=ann).json()["markers"]
    assert [(m["marker"], m["seq"], m["event_start"], m["confidence"]) for m in markers] == [
        ("mowing", 1, "2018-05-01", pytest.approx(0.9)), ("mowing", 2, "2018-06-01", pytest.approx(0.7))]
    assert markers[0]["evidence"] == world.s2_products[:2]
    assert (markers[0]["start_product"], markers[0]["main_product"], markers[0]["end_product"]) == (
        world.s2_products[0], None, world.s2_products[1])  # the images its start and end dates come from
    lights = client.get("/v1/aois/alpha/2018/parcels/1/traffic-lights", auth=ann).json()["traffic_lights"]
    assert [(t["scheme"], t["colour"], t["reason"]) for t in lights] == [
        ("BISS", "yellow", "too few cloud-free images"), ("ECO-MOW", "green", "mowing detected")]
    # the green light names the mowing that decided it and the images that prove it; the yellow one none
    assert [(t["rule_id"], t["deciding_event"]) for t in lights] == [(None, None), ("MOW-1", {
        "marker": "mowing", "seq": 1, "main_date": None, "confidence": pytest.approx(0.9),
        "images": world.s2_products[:2]})]
    assert client.get("/v1/aois/alpha/2018/parcels/5/traffic-lights", auth=ann).json()["traffic_lights"] == []
    summary = client.get("/v1/aois/alpha/2018/traffic-lights", auth=ann).json()
    assert summary["n_parcels"] == 6
    assert [(s["scheme"], s["colour"], s["n_parcels"]) for s in summary["summary"]] == [
        ("BISS", "yellow", 1), ("ECO-MOW", "red", 1), ("ECO-MOW", "green", 2)]


def test_jrc_markers_answer_the_events_in_jrc_marker_table_columns(client: TestClient, world: World) -> None:
    ann = world.basic("ann")
    answer = client.get("/query/markers?aoi=alpha&year=2018&pid=1", auth=ann).json()
    assert list(answer) == ["foi_id", "marker", "marker_type", "date_start", "date_main", "date_end", "duration_days",
                            "value_1", "value_2", "value_3", "pid", "practice"]
    table = pd.read_json(io.StringIO(json.dumps(answer)))  # as a notebook reads it
    assert table[["foi_id", "marker", "date_start", "date_end", "duration_days", "value_3", "pid"]].values.tolist() == [
        ["A-1", "mowing", "2018-05-01", "2018-05-10", 9, 1, 1], ["A-1", "mowing", "2018-06-01", "2018-06-15", 14, 2, 1]]
    assert table["value_1"].tolist() == pytest.approx([0.3, 0.2])  # the marker's value: the NDVI drop
    assert table["value_2"].tolist() == pytest.approx([0.9, 0.7])  # its confidence
    assert answer["date_main"] == [None, None] and set(answer["practice"]) == {"grassland"}
    # the same events as /v1, and parcels=<aoi><year> as the other JRC queries
    assert client.get("/query/markers?parcels=alpha2018&pid=1", auth=ann).json() == answer
    assert len(client.get("/v1/aois/alpha/2018/parcels/1/markers", auth=ann).json()["markers"]) == 2
    # a parcel without events: the columns with empty lists; an unknown parcel: 404
    assert client.get("/query/markers?aoi=alpha&year=2018&pid=5", auth=ann).json() == {
        name: [] for name in answer}
    assert client.get("/query/markers?aoi=alpha&year=2018&pid=99", auth=ann).status_code == 404
    assert client.get("/query/markers?aoi=alpha&year=2018&pid=1&ptype=", auth=ann).json() == answer  # JRC's empty
    for route in ("markers", "parcelByID", "parcelPeers", "parcelTimeSeries", "rawChipByParcelID",
                  "backgroundByParcelID"):  # another parcel table of the AOI and year: refused, not answered from ours
        refused = client.get(f"/query/{route}?aoi=alpha&year=2018&pid=1&ptype=m&start_date=2018-04-01"
                             "&end_date=2018-04-30&band=SCL", auth=ann)
        assert refused.status_code == 400 and "leave ptype empty" in refused.json()["detail"], route


def test_jrc_time_series_carry_the_scl_histogram_the_sc_band_and_the_product_name(client: TestClient,
                                                                                   world: World) -> None:
    ann = world.basic("ann")
    q = "/query/parcelTimeSeries?aoi=alpha&year=2018&pid=1"
    s2 = client.get(f"{q}&tstype=s2&ref=True", auth=ann).json()
    assert list(s2)[-2:] == ["hist", "reference"]  # after JRC's ten columns: scl=True is the default
    # per image its four bands, then SC (the scene classification statistics, as tstype=scl gives them)
    assert s2["band"] == ["B02", "B03", "B04", "B08", "SC"] * 3  # as JRC's servers (B4: a setting, below)
    scl = client.get(f"{q}&tstype=scl", auth=ann).json()
    # JRC's tstype=scl answer is obsid (its image id) and hist: both there, beside the SC statistics
    assert scl["obsid"] == world.s2_products and scl["hist"][0] == {"4": 30, "5": 10}
    assert "hist" in client.get(f"{q}&tstype=scl&scl=False", auth=ann).json()
    sc = [i for i, b in enumerate(s2["band"]) if b == "SC"]
    for name in ("date_part", "count", "mean", "p50", "max"):
        assert [s2[name][i] for i in sc] == scl[name], name
    # each row names its image's SCL pixel counts per class and the product: the same for all its bands
    assert s2["hist"][:5] == [{"4": 30, "5": 10}] * 5 and s2["hist"][5] == {"4": 31, "5": 10}
    assert s2["reference"] == [n for n in ("S2_alpha_20180405", "S2_alpha_20180510", "S2_alpha_20180615")
                               for _ in range(5)]
    # without the histogram; one band; the SC band alone; Sentinel-1 has no histogram
    assert "hist" not in client.get(f"{q}&tstype=s2&scl=False", auth=ann).json()
    assert client.get(f"{q}&tstype=s2&band=B4", auth=ann).json()["band"] == ["B4"] * 3
    assert client.get(f"{q}&tstype=s2&band=SC", auth=ann).json()["mean"] == scl["mean"]
    assert list(client.get(f"{q}&tstype=bs", auth=ann).json())[-1] == "max"
    # a band asked for by another of its JRC names is answered under that name (what the notebook then filters
    # on): B4 as JRC's open-source extractor writes it, VV without the table's suffix
    assert client.get(f"{q}&tstype=s2&band=B04", auth=ann).json()["band"] == ["B04"] * 3
    assert client.get(f"{q}&tstype=bs&band=VVb", auth=ann).json()["band"] == ["VVb"] * 2
    assert client.get(f"{q}&tstype=bs&band=VV", auth=ann).json()["band"] == ["VV"] * 2
    # Sentinel-1 as JRC's server names it (its client plots VVb / VVc): b backscatter, c coherence
    assert client.get(f"{q}&tstype=bs", auth=ann).json()["band"] == ["VVb", "VHb"] * 2
    # CSV: the histogram as JSON text
    lines = client.get(f"{q}&tstype=s2&tsformat=csv", auth=ann).text.splitlines()
    assert lines[0].endswith(",max,hist") and lines[1].endswith(',"{""4"":30,""5"":10}"')


def test_a_deployment_names_bands_as_jrc_s_open_source_extractor(world: World) -> None:
    """``jrc_band_names="B4"``: B2 ... B8 as the extractor of JRC's repository writes them; SC and VVb stay."""
    ann = world.basic("ann")
    q = "/query/parcelTimeSeries?aoi=alpha&year=2018&pid=1"
    with TestClient(create_app(ApiConfig(dsn=world.db_url, jrc_band_names="B4"))) as short:
        frame = pd.read_json(io.StringIO(short.get(f"{q}&tstype=s2", auth=ann).text))
        assert short.get("/query/info", auth=ann).json()["helpers"]["band_names"] == "B4"
        assert short.get(f"{q}&tstype=s2&band=B04", auth=ann).json()["band"] == ["B04"] * 3  # asked by that name
        assert short.get(f"{q}&tstype=bs", auth=ann).json()["band"] == ["VVb", "VHb"] * 2
    assert list(frame["band"]) == ["B2", "B3", "B4", "B8", "SC"] * 3
    red, nir = (frame[frame["band"] == name].set_index("date_part")["mean"] for name in ("B4", "B8"))
    expected = [s2_stats(1, d, S2_BANDS.index("B08"))[1] for d in range(len(S2_DATES))]
    assert list(nir) == pytest.approx(expected) and ((nir - red) / (nir + red)).between(-1, 1).all()
    with pytest.raises(ConfigError, match="B04, B4"):
        ApiConfig(dsn=world.db_url, jrc_band_names="b4")
    assert ApiConfig(dsn=world.db_url).jrc_band_names == "B04"


def test_jrc_queries_take_the_declared_parcel_id_as_pid(client: TestClient, world: World) -> None:
    """JRC's deployments took their configured parcel id as ``pid`` (the Czech notebook: ``pid=767110201/3``)."""
    ann = world.basic("ann")
    q = "/query/{}?aoi=alpha&year=2018&pid={}"
    by_id = client.get(q.format("parcelByID", "A-2"), auth=ann).json()
    assert by_id == client.get(q.format("parcelByID", "2"), auth=ann).json() and by_id["pid"] == [2]
    for route in ("parcelTimeSeries", "parcelPeers", "markers"):
        assert client.get(q.format(route, "A-1"), auth=ann).json() == client.get(q.format(route, "1"), auth=ann).json()
    chips = client.get(q.format("rawChipByParcelID", "A-1") + "&start_date=2018-04-01&end_date=2018-04-30&band=SCL",
                       auth=ann).json()
    assert chips["dates"]
    missing = client.get(q.format("parcelByID", "767110201/3"), auth=ann)
    assert missing.status_code == 404 and "neither a parcel key nor a declared parcel id" in missing.json()["detail"]
    assert client.get(q.format("parcelByID", "A-1%00"), auth=ann).status_code == 422  # no control characters


def test_jrc_info_lists_the_granted_aois_with_working_examples(client: TestClient, world: World) -> None:
    root = world.basic("root")
    info = client.get("/query/info", auth=root).json()
    assert set(info["aois"]) == {"alpha", "beta"} and info["server"]["version"]
    alpha = info["aois"]["alpha"]
    assert alpha["years"] == [2018] and alpha["time_series"] == ["s2", "bs"]
    assert alpha["id_examples_2018"] == [1, 2, 3, 4, 5] and info["aois"]["beta"]["time_series"] == ["s2"]
    # every example request is a URL of this server that answers
    for name, url in alpha["request_examples"].items():
        assert url.startswith("http://testserver/query/"), name
        assert client.get(url.removeprefix("http://testserver"), auth=root).status_code == 200, name
    assert info["helpers"]["information_page"] == "http://testserver/query/info"
    assert {"rawChipByParcelID", "chipsByParcelID"} <= set(alpha["request_examples"])  # this server has a store
    assert info["helpers"]["backgrounds"] == []  # none configured
    weather = client.get("/query/weatherTimeSeries?aoi=alpha&year=2018&pid=1", auth=root)
    assert weather.status_code == 404 and weather.json() == {} and "no weather data" in weather.headers["x-detail"]
    # a user sees only the AOIs granted; one AOI asked for: only it, or 403 when not granted
    assert set(client.get("/query/info", auth=world.basic("ann")).json()["aois"]) == {"alpha"}
    assert client.get("/query/info", auth=world.basic("eve")).json()["aois"] == {}
    assert set(client.get("/query/info?aoi=beta", auth=root).json()["aois"]) == {"beta"}
    assert client.get("/query/info?aoi=beta", auth=world.basic("ann")).status_code == 403
    assert client.get("/query/info").status_code == 401
    # JRC's /query/options: the granted AOIs and their years as strings, the latest first
    assert client.get("/query/options", auth=root).json() == {
        "aois": {"alpha": {"desc": "alpha", "year": ["2018"]}, "beta": {"desc": "beta", "year": ["2018"]}}}
    assert client.get("/query/options", auth=world.basic("ann")).json() == {
        "aois": {"alpha": {"desc": "alpha", "year": ["2018"]}}}
    assert client.get("/query/options", auth=world.basic("eve")).json() == {"aois": {}}
    assert client.get("/query/options").status_code == 401


def test_chip_png_and_geotiff_cut_around_the_parcel(client: TestClient, world: World) -> None:
    ann = world.basic("ann")
    png = client.get("/v1/aois/alpha/2018/parcels/2/chip", params={"product_id": world.s2_products[0]}, auth=ann)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    rgba = _read_png(png.content)
    # 100 m parcel + 2 x 50 m margin at 10 m = 20 x 20 pixels; the outline is yellow
    assert rgba.shape == (4, 20, 20)
    assert ((rgba[0] == 255) & (rgba[1] == 255) & (rgba[2] == 0)).sum() >= 36
    tif = client.get("/v1/aois/alpha/2018/parcels/2/chip",
                     params={"product_id": world.s2_products[0], "band": "B08", "format": "tif", "buffer_m": 0},
                     auth=ann)
    with rasterio.open(io.BytesIO(tif.content)) as image:
        assert image.crs.to_epsg() == 32631 and image.shape == (10, 10)
        assert image.bounds.left == pytest.approx(500_110) and image.bounds.bottom == pytest.approx(5_650_000)
        values = image.read(1)
    with rasterio.open(world.store_root / f"S2_alpha_{S2_DATES[0]:%Y%m%d}_10m.tif") as source:
        dn = source.read(4, window=((20, 30), (31, 41)))
    np.testing.assert_allclose(values, dn * 1e-4, rtol=1e-6)
    vv = client.get("/v1/aois/alpha/2018/parcels/2/chip", params={"product_id": world.bs_products[0], "size": 16},
                    auth=ann)
    assert vv.status_code == 200


def test_chip_strip_over_a_date_range(client: TestClient, world: World) -> None:
    response = client.get("/v1/aois/alpha/2018/parcels/2/chips",
                          params={"start": "2018-04-01", "end": "2018-05-31", "size": 32}, auth=world.basic("ann"))
    assert response.status_code == 200
    assert [int(item.split("@")[0]) for item in response.headers["x-chip-products"].split(",")] == world.s2_products[:2]
    strip = _read_png(response.content)
    assert strip.shape == (4, 20, 20 * 2 + 2)


def test_errors_are_json_with_the_right_status(client: TestClient, world: World) -> None:
    ann = world.basic("ann")
    cases = [
        ("/v1/aois/alpha/2018/parcels/99", 404),
        ("/v1/aois/alpha/2019/parcels/1", 404),
        ("/v1/aois/alpha/2018/parcels/1/timeseries?band=B99", 400),
        ("/v1/aois/alpha/2018/parcels/1/timeseries?start=2018-06-01&end=2018-01-01", 400),
        ("/v1/aois/alpha/2018/parcels/1/peers?distance_m=99999", 422),
        ("/v1/aois/alpha/2018/parcels/1/peers?limit=1000", 422),
        ("/v1/aois/alpha/2018/parcels?lon=3&lat=51&polygon=POINT(1 2)", 400),
        ("/v1/aois/alpha/2018/parcels?polygon=POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))", 400),
        ("/v1/aois/alpha/2018/parcels?polygon=POINT(3 51)", 400),
        ("/v1/aois/alpha/2018/parcels?polygon=POLYGON((3 51, 3.001 51.001, 3.001 51, 3 51.001, 3 51))", 400),
        ("/v1/aois/alpha/2018/parcels/2/chip?product_id=" + str(world.beta_products[0]), 404),
        ("/v1/aois/ALPHA/2018/parcels/1", 422),
        ("/v1/aois/alpha/1900/parcels/1", 422),
    ]
    for url, status in cases:
        response = client.get(url, auth=ann)
        assert response.status_code == status, (url, response.text)
        body = response.json()
        assert body["error"] and body["detail"], url
        assert "Traceback" not in response.text
    assert client.get("/v1/aois", auth=("ann", "wrong")).status_code == 401
    assert client.get("/v1/aois").headers["www-authenticate"].startswith("Basic")


def test_bearer_token_works_like_basic(client: TestClient, world: World) -> None:
    response = client.get("/v1/aois/alpha/2018/parcels/1", headers=world.bearer("ann"))
    assert response.status_code == 200 and response.json()["parcel_id"] == "A-1"
    assert client.get("/v1/aois", headers={"Authorization": "Bearer ann.nope"}).status_code == 401
    assert client.get("/v1/aois", headers={"Authorization": "Bearer nodot"}).status_code == 401


def test_places_far_from_the_set_find_nothing_instead_of_failing(client: TestClient, world: World) -> None:
    # lon -170 is outside the domain of the set's UTM zone 31: transforming it is a PostGIS error
    ann = world.basic("ann")
    near = client.get("/v1/aois/alpha/2018/parcels?lon=-170&lat=10", auth=ann)
    assert near.status_code == 200 and near.json()["parcels"] == []
    square = "POLYGON((-170 10, -169.99 10, -169.99 10.01, -170 10.01, -170 10))"
    inside = client.get("/v1/aois/alpha/2018/parcels", params={"polygon": square}, auth=ann)
    assert inside.status_code == 200 and inside.json()["parcels"] == []
    assert client.get("/query/parcelByLocation?parcels=alpha2018&lon=-170&lat=10", auth=ann).status_code == 200
    items = client.get("/ogc/collections/alpha_2018/items?bbox=-170,10,-169,11", auth=ann)
    assert items.status_code == 200 and items.json()["features"] == [] and items.json()["numberMatched"] == 0
    # the parcels of the set are still found by location
    assert client.get("/query/parcelByLocation?parcels=alpha2018&lon=3&lat=51", auth=ann).status_code == 200


def test_mowing_falls_explain_the_decision(client: TestClient, world: World) -> None:
    ann = world.basic("ann")
    body = client.get("/v1/aois/alpha/2018/parcels/1/mowing-falls", auth=ann).json()
    assert (body["parcel_key"], body["parcel_id"]) == (1, "A-1")
    # no marker run has recorded this parcel (cbm.marker_parcel): judged with the default parameters
    assert body["marker_run_id"] is None and body["params_hash"] == load_params().hash and body["use_s1"]
    # the season's images not used, each with the test it failed; every fall between the others judged
    not_used = body["observations_not_used"]
    assert not_used and all(o["reason"] for o in not_used)
    assert {o["date"] for o in not_used} <= {"2018-04-05", "2018-05-10", "2018-06-15"}
    assert all(set(f) >= {"start_date", "end_date", "drop", "verdict", "failed", "confidence_parts"}
               for f in body["falls"])
    assert all(f["verdict"] == "mowing" or f["failed"] or f["verdict"].startswith("weaker") for f in body["falls"])
    for what in ("mowing-falls", "harvest-cycles", "bare-soil", "emergence"):
        assert client.get(f"/v1/aois/alpha/2018/parcels/99/{what}", auth=ann).status_code == 404
        assert client.get(f"/v1/aois/alpha/2018/parcels/1/{what}", auth=world.basic("bob")).status_code == 403
    # the maize parcel's crop cycles: each with its verdict and the tests it failed
    cycles = client.get("/v1/aois/alpha/2018/parcels/4/harvest-cycles", auth=ann).json()
    assert (cycles["parcel_id"], cycles["marker_run_id"]) == ("A-4", None)
    assert all(c["verdict"] in ("harvest", "not a harvest", "not ended") and (c["verdict"] == "harvest") == (
        c["failed"] == "") for c in cycles["cycles"])
    # its observations below the soil line: each judged, the runs of bare soil with their confidence
    bare = client.get("/v1/aois/alpha/2018/parcels/4/bare-soil", auth=ann).json()
    assert (bare["parcel_id"], bare["max_ndvi"], bare["params_hash"]) == ("A-4", 0.25, load_params().hash)
    assert isinstance(bare["n_clouded"], int) and bare["n_clouded"] >= 0
    assert all(o["verdict"] in ("bare soil", "not bare soil", "not used") and o["ndvi"] < 0.25
               and (o["run"] > 0) == (o["verdict"] == "bare soil") for o in bare["observations"])
    assert bare["runs"] and [r["run"] for r in bare["runs"]] == list(range(1, len(bare["runs"]) + 1))
    assert {o["run"] for o in bare["observations"]} - {0} == {r["run"] for r in bare["runs"]}
    # why its light of arable_harvest (no light stored here: the shipped rules judge it) has its colour
    why = client.get("/v1/aois/alpha/2018/parcels/4/traffic-lights/arable_harvest/explanation", auth=ann).json()
    assert (why["parcel_id"], why["scheme"], why["stored"]) == ("A-4", "arable_harvest", None)
    rules = why["explanation"]["rules"]
    assert [r["rule_id"] for r in rules] == ["AR-VEG-1", "AR-HARVEST-1"]
    assert why["explanation"]["colour"] in ("green", "yellow", "red") and all(
        {"window_from", "gap_from", "gap_to", "gap_images", "events", "colour", "reason"} <= set(r) for r in rules)
    assert client.get("/v1/aois/alpha/2018/parcels/4/traffic-lights/no_such/explanation", auth=ann).status_code == 400
    assert client.get("/v1/aois/alpha/2018/parcels/4/traffic-lights/arable_harvest/explanation",
                      auth=world.basic("bob")).status_code == 403
    # and its rises of NDVI through the emergence threshold, each judged (three images: none here; the audit and
    # CLI tests compare the rises with the stored events)
    rises = client.get("/v1/aois/alpha/2018/parcels/4/emergence", auth=ann).json()
    assert (rises["parcel_id"], rises["ndvi_threshold"], rises["crossings"]) == ("A-4", 0.35, [])
