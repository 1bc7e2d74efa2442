"""The CDSE OData client over real HTTP, against recorded CDSE and CREODIAS answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests
import shapely
from catalogue_replay import Recorded, ReplayServer, Reply, file_reply, json_reply, replay_server, sequence
from conftest import shared_data

from cbm_tasks.catalogue.http import RetryPolicy, make_session
from cbm_tasks.catalogue.odata import CdseODataCatalogue, odata_filter
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.errors import CatalogueResponseError, TransientError

CDSE = "https://catalogue.dataspace.copernicus.eu"
PATH = "/odata/v1/Products"
BIG_AOI = "POLYGON ((-180 -90, 180 -90, 180 90, -180 90, -180 -90))"


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with replay_server() as running:
        yield running


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with make_session() as http:
        yield http


def s1_pages(server: ReplayServer) -> None:
    """Serve the five recorded CDSE pages by $skip, next links pointing back to this server."""
    folder = shared_data("catalogue", "cdse_odata_s1")

    def respond(request: Recorded) -> Reply:
        page = int(request.param("$skip") or 0) // 10 + 1
        return file_reply(folder / f"odata_page_{page}.json", rewrite={CDSE: server.base_url})

    server.route("GET", PATH, respond)


def query_s1_2014(product_type: str | None = None) -> SearchQuery:
    return SearchQuery(
        collection="SENTINEL-1",
        product_type=product_type,
        aoi_wkt=BIG_AOI,
        start=datetime(2014, 4, 5, tzinfo=UTC),
        end=datetime(2014, 4, 14, tzinfo=UTC),
    )


def client(server: ReplayServer, session: requests.Session, **options: object) -> CdseODataCatalogue:
    settings: dict[str, object] = {"page_size": 10, **options}
    return CdseODataCatalogue(session, base_url=server.base_url + PATH, **settings)  # type: ignore[arg-type]


def test_five_recorded_pages_are_followed_through_next_links(server: ReplayServer, session: requests.Session) -> None:
    s1_pages(server)
    query = query_s1_2014()
    products = list(client(server, session).search(query))

    assert len(products) == 47  # 4 x 10 + 7
    assert len(server.requests) == 5
    first = server.requests[0]
    assert first.param("$filter") == odata_filter(query)
    assert (first.param("$top"), first.param("$expand"), first.param("$orderby")) == (
        "10",
        "Attributes",
        "ContentDate/Start asc",
    )
    assert [request.param("$skip") for request in server.requests] == [None, "10", "20", "30", "40"]

    head = products[0]
    assert head.uid == "67360f3a-f36b-11ef-9d3f-0050561a7772"
    assert head.name == "S1A_AUX_INS_V20140406T010000_G20140409T142540"
    assert head.product_type == "AUX_INS"
    assert head.platform == "S1A"
    assert head.acquired_at == datetime(2014, 4, 6, 1, 0, tzinfo=UTC)
    assert (
        head.location
        == "s3://eodata/Sentinel-1/AUX/AUX_INS/2014/04/06/S1A_AUX_INS_V20140406T010000_G20140409T142540.SAFE.zip"
    )
    assert head.checksum == "md5:23383d85c5231487ce13d1c10aeb8e7b"
    assert head.size_bytes == 728976
    assert head.footprint_wkt is None  # auxiliary files have no footprint
    assert head.catalogue == "cdse-odata" and head.collection == "SENTINEL-1"
    assert products[3].name == "S1__AUX_SCS_V20140406T133000_G20240620T081444" and products[3].platform is None
    assert products[-1].name == "S1A_OPER_AUX_POEORB_OPOD_20210301T152129_V20140413T225944_20140415T005944.EOF"
    assert products[-1].acquired_at == datetime(2014, 4, 13, 22, 59, 44, tzinfo=UTC)
    assert len({product.uid for product in products}) == 47
    assert [product.acquired_at for product in products] == sorted(product.acquired_at for product in products)


def test_max_items_stops_paging_early(server: ReplayServer, session: requests.Session) -> None:
    s1_pages(server)
    products = list(client(server, session).search(query_s1_2014(), max_items=12))
    assert len(products) == 12
    assert len(server.requests) == 2


def test_constructor_sends_nothing_and_validates(server: ReplayServer, session: requests.Session) -> None:
    client(server, session)
    assert server.requests == []
    with pytest.raises(ValueError, match="page_size"):
        CdseODataCatalogue(session, page_size=1001)
    with pytest.raises(ValueError, match="base_url"):
        CdseODataCatalogue(session, base_url="ftp://example.org/odata")


def test_sentinel2_products_map_footprint_tile_and_s3_path(server: ReplayServer, session: requests.Session) -> None:
    recorded = shared_data("catalogue", "cdse_odata_search.json")

    def respond(request: Recorded) -> Reply:
        if request.param("$skip"):  # the recorded answer's next page was not recorded: end here
            return json_reply({"value": []})
        return file_reply(recorded, rewrite={CDSE: server.base_url})

    server.route("GET", PATH, respond)
    query = SearchQuery(
        collection="SENTINEL-2",
        product_type="S2MSI1C",
        aoi_wkt="POLYGON ((137.7729 13.1342, 153.7491 13.1342, 153.7491 23.886, 137.7729 23.886, 137.7729 13.1342))",
        start=datetime(2020, 8, 8, tzinfo=UTC),
        end=datetime(2020, 8, 16, tzinfo=UTC),
    )
    products = list(client(server, session, page_size=2).search(query))

    assert [product.name for product in products] == [
        "S2A_MSIL1C_20200808T010311_N0500_R045_T54PXA_20230413T212505",
        "S2A_MSIL1C_20200808T010311_N0500_R045_T55PBR_20230413T212505",
    ]
    assert server.requests[1].param("$skip") == "2"  # the recorded next link was followed
    assert "productType' and att/OData.CSC.StringAttribute/Value eq 'S2MSI1C'" in str(
        server.requests[0].param("$filter")
    )
    first = products[0]
    assert first.uid == "05edf2bb-d103-49f1-a677-9e474138d84f"
    assert first.location == (
        "s3://eodata/Sentinel-2/MSI/L1C_N0500/2020/08/08/S2A_MSIL1C_20200808T010311_N0500_R045_T54PXA_20230413T212505.SAFE/"
    )
    assert (first.tile, first.relative_orbit, first.platform, first.processing_baseline) == (
        "54PXA",
        45,
        "S2A",
        "05.00",
    )
    assert first.orbit_direction is None
    assert first.checksum == "md5:923ac4992d90b57d41e7ace4d9d90757"
    assert first.size_bytes == 224105657
    assert first.acquired_at == datetime(2020, 8, 8, 1, 3, 11, 24000, tzinfo=UTC)
    footprint = shapely.from_wkt(first.footprint_wkt)
    assert footprint.geom_type == "Polygon"
    assert footprint.exterior.coords[0] == pytest.approx((142.352793016856, 13.4758743606673))
    assert len(footprint.exterior.coords) == 21
    assert first.attributes["odata"]["cloudCover"] == pytest.approx(95.136736479015)


def test_creodias_grd_products_map_orbit_and_direction(server: ReplayServer, session: requests.Session) -> None:
    recorded = shared_data("catalogue", "creodias_odata_s1grd.json")

    def respond(request: Recorded) -> Reply:
        if request.param("$skip"):
            return json_reply({"value": []})
        return file_reply(recorded, rewrite={"https://datahub.creodias.eu": server.base_url})

    server.route("GET", PATH, respond)
    query = SearchQuery(
        collection="SENTINEL-1",
        product_type="IW_GRDH_1S",
        aoi_wkt="POLYGON ((-110 25, -100 25, -100 45, -110 45, -110 25))",
        start=datetime(2014, 10, 1, tzinfo=UTC),
        end=datetime(2014, 10, 5, tzinfo=UTC),
    )
    products = list(client(server, session).search(query))

    assert len(products) == 10
    assert len(server.requests) == 2
    assert {(p.platform, p.relative_orbit, p.orbit_direction, p.product_type) for p in products} == {
        ("S1A", 153, "ASCENDING", "IW_GRDH_1S")
    }
    assert products[0].name == "S1A_IW_GRDH_1SSV_20141004T005844_20141004T005913_002673_002FAB_4FCD"
    assert products[-1].name == "S1A_IW_GRDH_1SSV_20141004T010233_20141004T010258_002673_002FAB_19F2"
    assert products[0].location == (
        "s3://eodata/Sentinel-1/SAR/GRD/2014/10/04/S1A_IW_GRDH_1SSV_20141004T005844_20141004T005913_002673_002FAB_4FCD.SAFE/"
    )
    assert products[0].checksum is None  # CREODIAS lists no checksum
    assert products[0].size_bytes is None  # and ContentLength 0
    assert shapely.from_wkt(products[0].footprint_wkt).equals(
        shapely.from_wkt(
            "POLYGON ((-105.359001 28.981216, -102.76075 29.394079, -102.414383 27.64957, "
            "-104.969788 27.233603, -105.359001 28.981216))"
        )
    )
    assert products[0].attributes["odata"]["polarisationChannels"] == "VV"


def test_products_of_another_type_are_skipped(server: ReplayServer, session: requests.Session) -> None:
    s1_pages(server)  # the recorded pages hold AUX files only
    assert list(client(server, session).search(query_s1_2014("IW_GRDH_1S"))) == []
    assert len(server.requests) == 5


# ---- crafted error answers ------------------------------------------------------------------


def one_product(**overrides: object) -> dict[str, object]:
    product: dict[str, object] = {
        "Id": "id-1",
        "Name": "S2B_MSIL2A_20240501T103619_N0510_R008_T31UDS_20240501T131045.SAFE",
        "S3Path": "/eodata/Sentinel-2/MSI/L2A/2024/05/01/"
        "S2B_MSIL2A_20240501T103619_N0510_R008_T31UDS_20240501T131045.SAFE",
        "ContentDate": {"Start": "2024-05-01T10:36:19.024Z", "End": "2024-05-01T10:36:19.024Z"},
        "Checksum": [{"Algorithm": "BLAKE3", "Value": "ab"}],
        "Attributes": [{"Name": "productType", "Value": "S2MSI2A"}],
    }
    product.update(overrides)
    return product


def query_s2() -> SearchQuery:
    return SearchQuery(
        collection="SENTINEL-2",
        product_type="S2MSI2A",
        aoi_wkt="POLYGON ((3 51, 3.1 51, 3.1 51.1, 3 51.1, 3 51))",
        start=datetime(2024, 5, 1, tzinfo=UTC),
        end=datetime(2024, 6, 1, tzinfo=UTC),
    )


def test_429_retry_after_is_honoured_then_success(server: ReplayServer, session: requests.Session) -> None:
    waits: list[float] = []
    server.route(
        "GET",
        PATH,
        sequence(
            [
                json_reply({"detail": "Too many requests"}, status=429, headers={"Retry-After": "7"}),
                json_reply({"value": [one_product()]}),
            ]
        ),
    )
    products = list(client(server, session, sleep=waits.append).search(query_s2()))
    assert waits == [7.0]
    assert len(server.requests) == 2
    assert products[0].name == "S2B_MSIL2A_20240501T103619_N0510_R008_T31UDS_20240501T131045"
    assert products[0].checksum == "blake3:ab"  # no MD5 listed: the other algorithm is kept
    assert products[0].processing_baseline == "05.10"  # from the name


def test_503_until_the_cap_raises_transient_naming_url_and_status(
    server: ReplayServer, session: requests.Session
) -> None:
    waits: list[float] = []
    server.route("GET", PATH, sequence([Reply(503, b"busy")]))
    retry = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=3.0)
    catalogue = client(server, session, sleep=waits.append, retry=retry, rng=lambda: 1.0)
    with pytest.raises(TransientError, match=r"127\.0\.0\.1.*4 attempt.*HTTP 503"):
        list(catalogue.search(query_s2()))
    assert len(server.requests) == 4
    assert waits == [1.0, 2.0, 3.0]  # doubling, capped at max_delay_s (rng=1: full ceiling)


def test_400_raises_response_error_with_url_and_message(server: ReplayServer, session: requests.Session) -> None:
    server.route("GET", PATH, sequence([json_reply({"detail": {"message": "Invalid field: Colection"}}, status=400)]))
    with pytest.raises(
        CatalogueResponseError, match=r"127\.0\.0\.1:\d+/odata/v1/Products.*HTTP 400.*Invalid field: Colection"
    ):
        list(client(server, session).search(query_s2()))
    assert len(server.requests) == 1  # never retried


def test_malformed_json_raises_response_error(server: ReplayServer, session: requests.Session) -> None:
    server.route("GET", PATH, sequence([Reply(200, b"<html>maintenance</html>")]))
    with pytest.raises(CatalogueResponseError, match="not JSON"):
        list(client(server, session).search(query_s2()))


def test_page_without_value_raises_naming_the_field(server: ReplayServer, session: requests.Session) -> None:
    server.route("GET", PATH, sequence([json_reply({"@odata.context": "$metadata#Products"})]))
    with pytest.raises(CatalogueResponseError, match=r"127\.0\.0\.1.*'value'"):
        list(client(server, session).search(query_s2()))


@pytest.mark.parametrize(
    ("field", "message"), [("Name", "'Name'"), ("ContentDate", "'ContentDate/Start'"), ("S3Path", "'S3Path'")]
)
def test_product_missing_a_field_raises_naming_it(
    server: ReplayServer, session: requests.Session, field: str, message: str
) -> None:
    product = one_product()
    del product[field]
    server.route("GET", PATH, sequence([json_reply({"value": [product]})]))
    with pytest.raises(CatalogueResponseError, match=message):
        list(client(server, session).search(query_s2()))


def test_next_link_loop_is_detected(server: ReplayServer, session: requests.Session) -> None:
    loop = f"{server.base_url}{PATH}?$skip=1"
    server.route("GET", PATH, sequence([json_reply({"value": [one_product()], "@odata.nextLink": loop})]))
    with pytest.raises(CatalogueResponseError, match="loops back"):
        list(client(server, session).search(query_s2()))
    assert len(server.requests) == 2


def test_connection_refused_is_transient(session: requests.Session) -> None:
    with replay_server() as gone:
        url = gone.base_url + PATH
    waits: list[float] = []
    catalogue = CdseODataCatalogue(session, base_url=url, retry=RetryPolicy(max_attempts=2), sleep=waits.append)
    with pytest.raises(TransientError, match="ConnectionError"):
        list(catalogue.search(query_s2()))
    assert len(waits) == 1
