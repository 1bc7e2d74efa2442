"""SearchQuery validation, the OData filter it becomes, and the client factory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import shapely

from cbm_tasks.catalogue.clients import CatalogueConfig, open_catalogue
from cbm_tasks.catalogue.local import LocalCatalogue
from cbm_tasks.catalogue.odata import MAX_AOI_WKT_CHARS, CdseODataCatalogue, odata_filter, search_area_wkt
from cbm_tasks.catalogue.query import Catalogue, SearchQuery
from cbm_tasks.catalogue.stac import CdseStacCatalogue
from cbm_tasks.errors import ConfigError, GeometryError

AOI = "POLYGON ((3.0 50.9, 3.2 50.9, 3.2 51.0, 3.0 51.0, 3.0 50.9))"
MAY = datetime(2024, 5, 1, tzinfo=UTC)
JUNE = datetime(2024, 6, 1, tzinfo=UTC)


def test_odata_filter_is_the_documented_expression() -> None:
    query = SearchQuery(collection="SENTINEL-2", product_type="S2MSI2A", aoi_wkt=AOI, start=MAY, end=JUNE)
    assert odata_filter(query) == (
        "Collection/Name eq 'SENTINEL-2' and "
        "Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'productType' and "
        "att/OData.CSC.StringAttribute/Value eq 'S2MSI2A') and "
        "OData.CSC.Intersects(area=geography'SRID=4326;POLYGON ((3 50.9, 3.2 50.9, 3.2 51, 3 51, 3 50.9))') and "
        "ContentDate/Start ge 2024-05-01T00:00:00.000Z and ContentDate/Start lt 2024-06-01T00:00:00.000Z"
    )


def test_long_aoi_outlines_are_searched_by_their_convex_hull() -> None:
    circle = shapely.Point(4.35, 50.85).buffer(0.2, quad_segs=256)  # 1025 vertices
    query = SearchQuery(collection="SENTINEL-2", product_type="S2MSI2A", aoi_wkt=circle.wkt, start=MAY, end=JUNE)
    assert len(query.aoi_wkt) > MAX_AOI_WKT_CHARS
    sent = shapely.from_wkt(search_area_wkt(query))  # the hull of a circle is as long: its bounding rectangle
    assert sent.covers(shapely.from_wkt(query.aoi_wkt))
    assert len(sent.exterior.coords) == 5
    assert sent.area == pytest.approx(0.4 * 0.4, rel=1e-3)
    assert len(odata_filter(query)) < 600
    concave = shapely.Polygon([(3 + i / 2000, 51 + 0.01 * (i % 2)) for i in range(400)] + [(3.2, 50.9), (3.0, 50.9)])
    query = SearchQuery(collection="SENTINEL-2", product_type="S2MSI2A", aoi_wkt=concave.wkt, start=MAY, end=JUNE)
    assert shapely.from_wkt(search_area_wkt(query)).equals(concave.convex_hull)


def test_times_are_normalised_to_utc() -> None:
    cest = timezone(timedelta(hours=2))
    query = SearchQuery(
        collection="SENTINEL-1",
        product_type="IW_GRDH_1S",
        aoi_wkt=AOI,
        start=datetime(2024, 5, 1, 2, 0, tzinfo=cest),
        end=JUNE,
    )
    assert query.start == MAY and query.start.tzinfo == UTC


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"collection": "SENTINEL-3"}, ValueError, "collection"),
        ({"product_type": "s2msi2a"}, ValueError, "product_type"),
        ({"product_type": "IW_GRDH_1S"}, ValueError, "belongs to SENTINEL-1"),
        ({"start": datetime(2024, 5, 1)}, ValueError, "start must be timezone-aware"),
        ({"start": JUNE, "end": MAY}, ValueError, "start must be before end"),
        ({"aoi_wkt": "POLYGON ((0 0, 1 1, 1 0, 0 1, 0 0))"}, GeometryError, "not a valid geometry"),
        ({"aoi_wkt": "POLYGON EMPTY"}, GeometryError, "empty"),
        ({"aoi_wkt": "POINT (3 51)"}, GeometryError, "Polygon or MultiPolygon"),
        ({"aoi_wkt": "POLYGON ((500000 5600000, 500100 5600000, 500100 5600100, 500000 5600000))"}, GeometryError,
         "EPSG:4326"),
        ({"aoi_wkt": "not wkt"}, GeometryError, "not valid WKT"),
    ],
)  # fmt: skip
def test_invalid_queries_are_rejected_by_name(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    fields: dict[str, object] = {"collection": "SENTINEL-2", "product_type": "S2MSI2A", "aoi_wkt": AOI,
                                 "start": MAY, "end": JUNE}  # fmt: skip
    fields.update(kwargs)
    with pytest.raises(error, match=message):
        SearchQuery(**fields)  # type: ignore[arg-type]


def test_open_catalogue_builds_each_kind_without_sending(tmp_path: Path) -> None:
    session = requests.Session()
    odata = open_catalogue(CatalogueConfig(page_size=500), session=session)
    assert isinstance(odata, CdseODataCatalogue) and isinstance(odata, Catalogue)
    assert odata.base_url == "https://catalogue.dataspace.copernicus.eu/odata/v1/Products" and odata.page_size == 500
    stac = open_catalogue(CatalogueConfig(kind="cdse-stac", url="https://stac.example.org/v1"), session=session)
    assert isinstance(stac, CdseStacCatalogue) and stac.url == "https://stac.example.org/v1"
    local = open_catalogue(CatalogueConfig(kind="local", root=str(tmp_path)))
    assert isinstance(local, LocalCatalogue) and local.root == tmp_path.resolve()


def test_catalogue_config_rejects_bad_settings_and_hides_the_token() -> None:
    with pytest.raises(ConfigError, match="kind"):
        CatalogueConfig(kind="scihub")
    with pytest.raises(ConfigError, match="root"):
        CatalogueConfig(kind="local")
    with pytest.raises(ConfigError, match="page_size"):
        CatalogueConfig(page_size=5000)
    with pytest.raises(TypeError):
        CatalogueConfig(pagesize=10)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="url"):
        open_catalogue(CatalogueConfig(url="catalogue.dataspace.copernicus.eu"))
    assert "s3cr3t" not in repr(CatalogueConfig(bearer_token="s3cr3t"))
