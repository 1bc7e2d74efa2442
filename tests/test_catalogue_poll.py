"""End to end: poll a replayed catalogue over HTTP and register the products in a real PostGIS."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import shapely
from catalogue_replay import Recorded, ReplayServer, Reply, file_reply, json_reply, replay_server
from conftest import shared_data

from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.clients import CatalogueConfig, open_catalogue
from cbm_tasks.catalogue.http import make_session
from cbm_tasks.catalogue.poll import poll
from cbm_tasks.catalogue.query import SearchQuery


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with replay_server() as running:
        yield running


def test_polled_grd_products_register_once_with_their_footprints(
    server: ReplayServer, conn: psycopg.Connection
) -> None:
    recorded = shared_data("catalogue", "creodias_odata_s1grd.json")

    def respond(request: Recorded) -> Reply:
        if request.param("$skip"):
            return json_reply({"value": []})
        return file_reply(recorded, rewrite={"https://datahub.creodias.eu": server.base_url})

    server.route("GET", "/odata/v1/Products", respond)
    query = SearchQuery(
        collection="SENTINEL-1",
        product_type="IW_GRDH_1S",
        aoi_wkt="POLYGON ((-110 25, -100 25, -100 45, -110 45, -110 25))",
        start=datetime(2014, 10, 1, tzinfo=UTC),
        end=datetime(2014, 10, 5, tzinfo=UTC),
    )
    cfg = CatalogueConfig(kind="cdse-odata", url=server.base_url + "/odata/v1/Products", page_size=10)
    with make_session() as session:
        products = poll(open_catalogue(cfg, session=session), query)

    assert len(products) == 10  # ten slices of one datatake: no duplicates
    new_ids = registry.register(conn, products, aoi="chihuahua")
    assert len(new_ids) == 10
    assert registry.register(conn, products, aoi="chihuahua") == []
    stored = registry.get_product(conn, new_ids[0])
    assert stored.name == "S1A_IW_GRDH_1SSV_20141004T005844_20141004T005913_002673_002FAB_4FCD"
    assert (stored.relative_orbit, stored.orbit_direction, stored.platform) == (153, "ASCENDING", "S1A")
    assert shapely.from_wkt(stored.footprint_wkt).equals(shapely.from_wkt(products[0].footprint_wkt))
    statuses = conn.execute("SELECT DISTINCT status FROM cbm.product_status").fetchall()
    assert statuses == [("new",)]  # raw GRD waits for CARD processing


def test_stac_band_descriptors_survive_registration(server: ReplayServer, conn: psycopg.Connection) -> None:
    folder = shared_data("catalogue", "stac_earth_search")
    earth_search = "https://earth-search.aws.element84.com"
    server.route(
        "GET",
        "/v1",
        lambda _: json_reply(
            {
                "type": "Catalog",
                "id": "replay",
                "description": "replay",
                "stac_version": "1.0.0",
                "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
                "links": [
                    {
                        "rel": "search",
                        "href": f"{server.base_url}/v1/search",
                        "method": "POST",
                        "type": "application/geo+json",
                    }
                ],
            }
        ),  # fmt: skip
    )
    server.route(
        "POST",
        "/v1/search",
        lambda request: file_reply(
            folder / ("response_2.json" if "next" in request.json() else "response_1.json"),
            rewrite={earth_search: server.base_url},
        ),
    )
    query = SearchQuery(
        collection="SENTINEL-2",
        product_type="S2MSI2A",
        aoi_wkt="POLYGON ((-105.11 40.16, -105.09 40.16, -105.09 40.17, -105.11 40.17, -105.11 40.16))",
        start=datetime(2023, 10, 8, tzinfo=UTC),
        end=datetime(2023, 10, 9, tzinfo=UTC),
    )
    with make_session() as session:
        products = poll(
            open_catalogue(CatalogueConfig(kind="cdse-stac", url=server.base_url + "/v1"), session=session), query
        )
    [product_id] = registry.register(conn, products, aoi="boulder")
    stored = registry.get_product(conn, product_id)
    assert stored.attributes["bands"] == products[0].attributes["bands"]
    assert stored.acquired_at == products[0].acquired_at
    assert conn.execute("SELECT status FROM cbm.product_status").fetchall() == [("ready",)]
