"""The STAC client (pystac-client over our session) against recorded Earth Search answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests
import shapely
from catalogue_replay import Recorded, ReplayServer, Reply, file_reply, json_reply, replay_server, sequence
from conftest import shared_data

from cbm_tasks.catalogue.http import RetryPolicy, make_session
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.catalogue.stac import CdseStacCatalogue, product_from_stac
from cbm_tasks.catalogue.stac_assets import normalise_platform
from cbm_tasks.errors import CatalogueResponseError, TransientError

EARTH_SEARCH = "https://earth-search.aws.element84.com"


def landing_page(base_url: str) -> dict[str, object]:
    """A minimal STAC API landing page (not recorded; the search answers are)."""
    return {
        "type": "Catalog",
        "id": "replay",
        "description": "replayed STAC API",
        "stac_version": "1.0.0",
        "conformsTo": [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/ogcapi-features",
        ],
        "links": [
            {"rel": "self", "href": f"{base_url}/v1", "type": "application/json"},
            {"rel": "root", "href": f"{base_url}/v1", "type": "application/json"},
            {"rel": "search", "href": f"{base_url}/v1/search", "type": "application/geo+json", "method": "POST"},
        ],
    }


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with replay_server() as running:
        running.route("GET", "/v1", lambda _: json_reply(landing_page(running.base_url)))
        yield running


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with make_session() as http:
        yield http


def query_l2a() -> SearchQuery:
    return SearchQuery(
        collection="SENTINEL-2",
        product_type="S2MSI2A",
        aoi_wkt="POLYGON ((-105.11 40.16, -105.09 40.16, -105.09 40.17, -105.11 40.17, -105.11 40.16))",
        start=datetime(2023, 10, 8, tzinfo=UTC),
        end=datetime(2023, 10, 9, tzinfo=UTC),
    )


def serve_two_page_search(server: ReplayServer) -> None:
    folder = shared_data("catalogue", "stac_earth_search")

    def respond(request: Recorded) -> Reply:
        page = "response_2.json" if "next" in request.json() else "response_1.json"
        return file_reply(folder / page, rewrite={EARTH_SEARCH: server.base_url})

    server.route("POST", "/v1/search", respond)


def test_two_page_post_search_yields_the_sentinel2_item(server: ReplayServer, session: requests.Session) -> None:
    serve_two_page_search(server)
    catalogue = CdseStacCatalogue(session, url=server.base_url + "/v1", page_size=10)
    assert server.requests == []  # opening is deferred to the first search

    products = list(catalogue.search(query_l2a()))

    posts = [request for request in server.requests if request.method == "POST"]
    assert len(posts) == 2
    first_body = posts[0].json()
    assert first_body["collections"] == ["sentinel-2-l2a"]
    assert first_body["limit"] == 10
    assert first_body["datetime"] == "2023-10-08T00:00:00Z/2023-10-09T00:00:00Z"
    assert shapely.geometry.shape(first_body["intersects"]).equals(query_l2a().aoi)
    assert posts[1].json()["next"] == "2023-10-08T17:37:26.656958Z,LC08_L2SP_033032_20231008_02_T1,landsat-c2-l2"

    assert len(products) == 1  # the Landsat item of the same answer is not a Sentinel-2 L2A product
    product = products[0]
    assert product.uid == "S2A_13TDE_20231008_0_L2A"
    assert product.name == "S2A_MSIL2A_20231008T175231_N0509_R141_T13TDE_20231008T233154"
    assert product.catalogue == "cdse-stac" and product.product_type == "S2MSI2A"
    assert product.acquired_at == datetime(2023, 10, 8, 18, 2, 55, 276000, tzinfo=UTC)
    assert (product.platform, product.tile, product.relative_orbit, product.processing_baseline) == (
        "S2A",
        "13TDE",
        141,
        "05.09",
    )
    assert product.location == "s3://sentinel-cogs/sentinel-s2-l2a-cogs/13/T/DE/2023/10/S2A_13TDE_20231008_0_L2A/"
    assert shapely.from_wkt(product.footprint_wkt).bounds == pytest.approx(
        (-106.18316062292897, 39.65576169772817, -104.88456877606482, 40.650789813976196)
    )
    assert product.attributes["cloud_cover"] == pytest.approx(0.000299)

    bands = {band["name"]: band for band in product.attributes["bands"]}
    assert sorted(bands) == [
        "AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12", "B8A", "SCL", "WVP",
    ]  # fmt: skip
    assert bands["B04"] == {
        "name": "B04",
        "href": "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/13/T/DE/2023/10/"
        "S2A_13TDE_20231008_0_L2A/B04.tif",  # the COG, not the JPEG2000 copy
        "band": 1,
        "nodata": 0,
        "scale": 0.0001,
        "offset": -0.1,
        "resolution_m": 10.0,
        "categorical": False,
        "n_classes": None,
    }
    assert (bands["SCL"]["categorical"], bands["SCL"]["n_classes"], bands["SCL"]["nodata"]) == (True, 12, 0)
    assert (bands["SCL"]["scale"], bands["SCL"]["offset"], bands["SCL"]["resolution_m"]) == (1.0, 0.0, 20.0)
    assert bands["B8A"]["href"].endswith("/B8A.tif") and bands["B8A"]["resolution_m"] == 20.0
    assert bands["WVP"]["scale"] == 0.001


def test_get_next_link_is_followed(server: ReplayServer, session: requests.Session) -> None:
    folder = shared_data("catalogue", "stac_earth_search")
    server.route(
        "POST",
        "/v1/search",
        lambda _: file_reply(folder / "earth_search_l1c_page1.json", rewrite={EARTH_SEARCH: server.base_url}),
    )
    empty = {"type": "FeatureCollection", "features": [], "links": []}
    server.route("GET", "/v1/collections/sentinel-2-l1c/items", lambda _: json_reply(empty))
    query = SearchQuery(
        collection="SENTINEL-2",
        product_type="S2MSI1C",
        aoi_wkt="POLYGON ((-21 63, -19 63, -19 64, -21 64, -21 63))",
        start=datetime(2024, 2, 6, tzinfo=UTC),
        end=datetime(2024, 2, 7, tzinfo=UTC),
    )
    products = list(CdseStacCatalogue(session, url=server.base_url + "/v1", page_size=1).search(query))

    followed = [request for request in server.requests if request.path.endswith("/items")]
    assert len(followed) == 1
    assert followed[0].param("next") == "2024-02-06T13:14:11.918000Z,S2B_27VWK_20240206_0_L1C,sentinel-2-l1c"
    assert [product.name for product in products] == ["S2B_MSIL1C_20240206T131259_N0510_R081_T27VWK_20240206T133903"]
    product = products[0]
    assert (product.platform, product.tile, product.relative_orbit) == ("S2B", "27VWK", 81)
    bands = {band["name"]: band for band in product.attributes["bands"]}
    assert bands["B04"]["href"] == "s3://sentinel-s2-l1c/tiles/27/V/WK/2024/2/6/0/B04.jp2"
    assert "B10" in bands  # cirrus, L1C only


def test_search_503_is_transient_after_the_cap(server: ReplayServer, session: requests.Session) -> None:
    server.route("POST", "/v1/search", sequence([Reply(503, b"Service Unavailable")]))
    waits: list[float] = []
    catalogue = CdseStacCatalogue(
        session, url=server.base_url + "/v1", retry=RetryPolicy(max_attempts=3), sleep=waits.append
    )
    with pytest.raises(TransientError, match=r"POST http://127\.0\.0\.1:\d+/v1/search.*HTTP 503"):
        list(catalogue.search(query_l2a()))
    assert len(waits) == 2


def test_search_400_names_the_message(server: ReplayServer, session: requests.Session) -> None:
    server.route(
        "POST",
        "/v1/search",
        sequence([json_reply({"code": "BadRequest", "description": "Invalid datetime"}, status=400)]),
    )
    with pytest.raises(CatalogueResponseError, match=r"/v1/search: HTTP 400.*Invalid datetime"):
        list(CdseStacCatalogue(session, url=server.base_url + "/v1").search(query_l2a()))


def test_item_without_datetime_names_the_field(server: ReplayServer, session: requests.Session) -> None:
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "broken", "geometry": None, "properties": {},
            "assets": {}, "links": [], "collection": "sentinel-2-l2a"}  # fmt: skip
    server.route("POST", "/v1/search", sequence([json_reply({"type": "FeatureCollection", "features": [item]})]))
    with pytest.raises(CatalogueResponseError, match=r"item broken: missing field 'properties/datetime'"):
        list(CdseStacCatalogue(session, url=server.base_url + "/v1").search(query_l2a()))


def test_unknown_product_type_and_bad_settings_are_rejected(session: requests.Session) -> None:
    with pytest.raises(ValueError, match="page_size"):
        CdseStacCatalogue(session, page_size=0)
    query = SearchQuery(
        collection="SENTINEL-1",
        product_type="CARD-BS",
        aoi_wkt="POLYGON ((3 51, 3.1 51, 3.1 51.1, 3 51.1, 3 51))",
        start=datetime(2024, 5, 1, tzinfo=UTC),
        end=datetime(2024, 6, 1, tzinfo=UTC),
    )
    with pytest.raises(ValueError, match="CARD-BS"):
        next(CdseStacCatalogue(session).search(query))


def test_stac_1_1_item_with_per_resolution_assets() -> None:
    """A crafted item shaped like CDSE STAC v1 (STAC 1.1 ``bands``, one asset per band and resolution)."""
    safe = "s3://eodata/Sentinel-2/MSI/L2A/2024/05/01/S2B_MSIL2A_20240501T103619_N0510_R008_T31UDS_20240501T131045.SAFE"
    granule = f"{safe}/GRANULE/L2A_T31UDS_A037323_20240501T104021/IMG_DATA"

    def band_asset(name: str, resolution: int, **extra: object) -> dict[str, object]:
        return {
            "href": f"{granule}/R{resolution}m/T31UDS_20240501T103619_{name}_{resolution}m.jp2",
            "roles": ["data", "reflectance"],
            "bands": [{"name": name}],
            "gsd": resolution,
            "nodata": 0,
            **extra,
        }

    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "S2B_MSIL2A_20240501T103619_N0510_R008_T31UDS_20240501T131045",
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [[[3, 51], [4, 51], [4, 52], [3, 52], [3, 51]]]},
        "properties": {
            "datetime": "2024-05-01T10:36:19.024000Z",
            "product:type": "S2MSI2A",
            "processing:version": "05.10",
            "platform": "sentinel-2b",
            "sat:relative_orbit": 8,
            "sat:orbit_state": "descending",
            "grid:code": "MGRS-31UDS",
        },
        "assets": {
            "B02_10m": band_asset("B02", 10, **{"raster:scale": 0.0001, "raster:offset": -0.1}),
            "B02_20m": band_asset("B02", 20, **{"raster:scale": 0.0001, "raster:offset": -0.1}),
            "SCL_20m": band_asset("SCL", 20),
            "SCL_60m": band_asset("SCL", 60),
            "safe_manifest": {"href": f"{safe}/manifest.safe", "roles": ["metadata"]},
        },
        "links": [],
    }
    product = product_from_stac(item, url="https://stac.example/v1", collection="SENTINEL-2")
    assert product.location == safe + "/"
    assert (product.platform, product.relative_orbit, product.orbit_direction, product.tile) == (
        "S2B",
        8,
        "DESCENDING",
        "31UDS",
    )
    assert (product.product_type, product.processing_baseline) == ("S2MSI2A", "05.10")
    bands = {band["name"]: band for band in product.attributes["bands"]}
    assert sorted(bands) == ["B02", "SCL"]
    assert bands["B02"]["href"].endswith("/R10m/T31UDS_20240501T103619_B02_10m.jp2")
    assert (bands["B02"]["scale"], bands["B02"]["offset"], bands["B02"]["nodata"]) == (0.0001, -0.1, 0)
    assert bands["SCL"]["href"].endswith("_SCL_20m.jp2") and bands["SCL"]["n_classes"] == 12


def test_platform_names_are_normalised() -> None:
    assert [normalise_platform(v) for v in ("sentinel-2a", "Sentinel-1B", "S2C", "landsat-8", None)] == [
        "S2A",
        "S1B",
        "S2C",
        "landsat-8",
        None,
    ]
