"""The local catalogue: STAC item files in a directory tree (format in ARCHITECTURE.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import shapely

from cbm_tasks.catalogue.local import LocalCatalogue
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.errors import CatalogueResponseError, ConfigError

FLANDERS = "POLYGON ((3.0 50.9, 3.2 50.9, 3.2 51.0, 3.0 51.0, 3.0 50.9))"
SCL_CLASSES = [{"value": value, "name": f"class_{value}"} for value in range(12)]


def s2_item(item_id: str, when: str, *, lon: float = 3.1, baseline: str = "05.10") -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[lon - 0.5, 50.5], [lon + 0.5, 50.5], [lon + 0.5, 51.5], [lon - 0.5, 51.5], [lon - 0.5, 50.5]]
            ],
        },
        "properties": {
            "datetime": when,
            "cbm:collection": "SENTINEL-2",
            "cbm:product_type": "S2MSI2A",
            "platform": "sentinel-2b",
            "sat:relative_orbit": 8,
            "sat:orbit_state": "descending",
            "grid:code": "MGRS-31UES",
            "processing:version": baseline,
            "proj:epsg": 32631,
        },
        "assets": {
            "B04": {
                "href": "B04.tif",
                "roles": ["data"],
                "raster:bands": [
                    {"nodata": 0, "scale": 0.0001, "offset": -0.1, "data_type": "uint16", "spatial_resolution": 10}
                ],
            },
            "SCL": {
                "href": "./SCL.tif",
                "roles": ["data"],
                "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
                "classification:classes": SCL_CLASSES,
            },
            "thumbnail": {"href": "thumb.png", "roles": ["thumbnail"]},
        },
        "links": [],
    }


def card_item() -> dict[str, Any]:
    item = s2_item("S1A_CARD-BS_20240503T173412_R088", "2024-05-03T17:34:12Z")
    item["properties"].update(
        {"cbm:collection": "SENTINEL-1", "cbm:product_type": "CARD-BS", "platform": "sentinel-1a",
         "sat:relative_orbit": 88, "sat:orbit_state": "ascending"}
    )  # fmt: skip
    del item["properties"]["grid:code"]
    item["assets"] = {
        "backscatter": {
            "href": "backscatter.tif",
            "roles": ["data"],
            "eo:bands": [{"name": "VV"}, {"name": "VH"}],
            "raster:bands": [
                {"nodata": -9999.0, "data_type": "float32", "spatial_resolution": 20},
                {"nodata": -9999.0, "data_type": "float32", "spatial_resolution": 20},
            ],
        }
    }
    return item


def write_item(root: Path, folder: str, item: dict[str, Any]) -> Path:
    path = root / folder / f"{item['id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(item))
    return path


def query(product_type: str = "S2MSI2A", collection: str = "SENTINEL-2", aoi: str = FLANDERS) -> SearchQuery:
    return SearchQuery(
        collection=collection,
        product_type=product_type,
        aoi_wkt=aoi,
        start=datetime(2024, 5, 1, tzinfo=UTC),
        end=datetime(2024, 6, 1, tzinfo=UTC),
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write_item(tmp_path, "s2/2024/05/late", s2_item("S2B_31UES_20240520", "2024-05-20T10:56:19Z"))
    write_item(tmp_path, "s2/2024/05/early", s2_item("S2B_31UES_20240501", "2024-05-01T00:00:00Z"))
    write_item(tmp_path, "s2/2024/06/at_end", s2_item("S2B_31UES_20240601", "2024-06-01T00:00:00Z"))
    write_item(tmp_path, "s2/2024/05/far", s2_item("S2B_33UVP_20240510", "2024-05-10T10:00:00Z", lon=15.0))
    write_item(tmp_path, "s1/card", card_item())
    (tmp_path / "collection.json").write_text(json.dumps({"type": "Collection", "id": "demo"}))
    return tmp_path


def test_matching_items_in_time_order_with_absolute_band_hrefs(tree: Path) -> None:
    products = list(LocalCatalogue(tree).search(query()))

    # 2024-06-01 is the (excluded) end; the item near 15 E does not touch the AOI.
    assert [product.uid for product in products] == ["S2B_31UES_20240501", "S2B_31UES_20240520"]
    product = products[1]
    folder = tree / "s2/2024/05/late"
    assert product.location == str(folder)
    assert product.catalogue == "local" and product.name == "S2B_31UES_20240520"
    assert product.acquired_at == datetime(2024, 5, 20, 10, 56, 19, tzinfo=UTC)
    assert (product.platform, product.relative_orbit, product.orbit_direction, product.tile) == (
        "S2B",
        8,
        "DESCENDING",
        "31UES",
    )
    assert product.processing_baseline == "05.10"
    assert shapely.from_wkt(product.footprint_wkt).bounds == (2.6, 50.5, 3.6, 51.5)
    assert product.attributes["epsg"] == 32631
    assert product.attributes["bands"] == [
        {"name": "B04", "href": str(folder / "B04.tif"), "band": 1, "nodata": 0, "scale": 0.0001, "offset": -0.1,
         "resolution_m": 10.0, "categorical": False, "n_classes": None},
        {"name": "SCL", "href": str(folder / "SCL.tif"), "band": 1, "nodata": 0, "scale": 1.0, "offset": 0.0,
         "resolution_m": 20.0, "categorical": True, "n_classes": 12},
    ]  # fmt: skip


def test_multiband_card_asset_lists_one_descriptor_per_band(tree: Path) -> None:
    products = list(LocalCatalogue(tree).search(query("CARD-BS", "SENTINEL-1")))
    assert [product.uid for product in products] == ["S1A_CARD-BS_20240503T173412_R088"]
    product = products[0]
    assert (product.platform, product.orbit_direction, product.relative_orbit, product.tile) == (
        "S1A",
        "ASCENDING",
        88,
        None,
    )
    href = str(tree / "s1/card/backscatter.tif")
    assert [(band["name"], band["href"], band["band"], band["nodata"]) for band in product.attributes["bands"]] == [
        ("VH", href, 2, -9999.0),
        ("VV", href, 1, -9999.0),
    ]


def test_max_items_and_aoi_filter(tree: Path) -> None:
    assert [p.uid for p in LocalCatalogue(tree).search(query(), max_items=1)] == ["S2B_31UES_20240501"]
    far_away = "POLYGON ((14.9 51.0, 15.1 51.0, 15.1 51.1, 14.9 51.1, 14.9 51.0))"
    assert [p.uid for p in LocalCatalogue(tree).search(query(aoi=far_away))] == ["S2B_33UVP_20240510"]


@pytest.mark.parametrize(
    ("field", "message"),
    [("datetime", "properties/datetime"), ("cbm:collection", "properties/cbm:collection")],
)
def test_item_missing_a_field_names_file_and_field(tmp_path: Path, field: str, message: str) -> None:
    item = s2_item("S2B_31UES_20240520", "2024-05-20T10:56:19Z")
    del item["properties"][field]
    path = write_item(tmp_path, "broken", item)
    with pytest.raises(CatalogueResponseError, match=f"{path}.*'{message}'"):
        list(LocalCatalogue(tmp_path).search(query()))


def test_naive_datetime_and_broken_json_are_rejected(tmp_path: Path) -> None:
    path = write_item(tmp_path, "naive", s2_item("naive", "2024-05-20T10:56:19"))
    with pytest.raises(CatalogueResponseError, match=f"{path}.*properties/datetime"):
        list(LocalCatalogue(tmp_path).search(query()))
    path.write_text('{"type": "Feature", "id": ')
    with pytest.raises(CatalogueResponseError, match=f"{path}: cannot read JSON"):
        list(LocalCatalogue(tmp_path).search(query()))


def test_data_asset_without_href_names_the_asset(tmp_path: Path) -> None:
    item = s2_item("S2B_31UES_20240520", "2024-05-20T10:56:19Z")
    del item["assets"]["B04"]["href"]
    path = write_item(tmp_path, "x", item)
    with pytest.raises(CatalogueResponseError, match=f"{path}: asset 'B04': missing field 'href'"):
        list(LocalCatalogue(tmp_path).search(query()))


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        LocalCatalogue(tmp_path / "missing")
