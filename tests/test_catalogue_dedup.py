"""De-duplication and S1 repeat pairs, on recorded CDSE OpenSearch answers (real GRD/-COG duplicates)."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import shapely
from conftest import shared_data

from cbm_tasks.card.pairs import repeat_pairs
from cbm_tasks.catalogue.dedup import acquisition_key, deduplicate
from cbm_tasks.catalogue.poll import poll
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.query import SearchQuery


def opensearch_products(answer: str) -> list[Product]:
    """Parse a recorded CDSE OpenSearch (resto GeoJSON) answer into Products."""
    features = json.loads(shared_data("catalogue", "cdse_opensearch_s1", f"{answer}.json").read_text())["features"]
    return [_product(feature) for feature in features]


def _product(feature: dict[str, Any]) -> Product:
    props = feature["properties"]
    baseline = props.get("processingBaseline")
    return Product(
        uid=feature["id"],
        name=props["title"].removesuffix(".SAFE"),
        catalogue="opensearch",
        collection=props["collection"],
        product_type=props["productType"],
        acquired_at=datetime.fromisoformat(props["startDate"]),
        location="s3:/" + props["productIdentifier"] + "/",
        platform=props["platform"],
        relative_orbit=props["relativeOrbitNumber"],
        orbit_direction=props["orbitDirection"],
        processing_baseline=f"{baseline:05.2f}" if baseline else None,
        footprint_wkt=shapely.geometry.shape(feature["geometry"]).wkt,
        attributes={"publication_date": props["published"]},
    )


def test_grd_and_cog_duplicates_keep_the_cog_and_every_slc() -> None:
    products = opensearch_products("af8e6cd2")  # 2019, descending: 46 SLC, 46 GRD, 46 GRD-COG
    assert Counter(p.product_type for p in products) == {"IW_SLC__1S": 46, "IW_GRDH_1S": 46, "IW_GRDH_1S-COG": 46}

    kept = deduplicate(products)

    assert Counter(p.product_type for p in kept) == {"IW_SLC__1S": 46, "IW_GRDH_1S-COG": 46}
    by_name = {p.name: p for p in products}
    grd = by_name["S1A_IW_GRDH_1SDV_20190205T034702_20190205T034731_025789_02DE41_CD48"]
    cog = by_name["S1A_IW_GRDH_1SDV_20190205T034702_20190205T034731_025789_02DE41_C11B_COG"]
    assert acquisition_key(grd) == acquisition_key(cog)
    assert cog in kept and grd not in kept
    assert cog.location == (
        "s3://eodata/Sentinel-1/SAR/IW_GRDH_1S-COG/2019/02/05/"
        "S1A_IW_GRDH_1SDV_20190205T034702_20190205T034731_025789_02DE41_C11B_COG.SAFE/"
    )
    # Every plain GRD had its COG twin (same datatake, start and stop).
    grds = {acquisition_key(p) for p in products if p.product_type == "IW_GRDH_1S"}
    assert grds == {acquisition_key(p) for p in kept if p.product_type == "IW_GRDH_1S-COG"}


def test_grds_processed_twice_keep_one_and_the_result_does_not_depend_on_order() -> None:
    products = opensearch_products("e211bebd")  # 2019, ascending: 55 SLC, 55 GRD, 55 GRD-COG
    # The archive really lists 11 S1B datatakes twice: two GRDs of the same slice (other CRC,
    # published hours apart), each with its COG. One product per acquisition is kept.
    twice = "S1B_IW_GRDH_1SDV_20190427T152003_20190427T152028_015994_01E100"
    assert sorted(p.name[len(twice) :] for p in products if p.name.startswith(twice)) == [
        "_1414_COG", "_2881", "_3204_COG", "_63BB",
    ]  # fmt: skip
    kept = deduplicate(products)
    assert Counter(p.product_type for p in kept) == {"IW_SLC__1S": 55, "IW_GRDH_1S-COG": 44}
    # Of the two COGs the later published one wins (3204, 2023-06-14T04:30 vs 1414, 2023-06-13T23:40).
    assert [p.name[len(twice) :] for p in kept if p.name.startswith(twice)] == ["_3204_COG"]
    shuffled = list(products)
    random.Random(7).shuffle(shuffled)
    assert {p.uid for p in deduplicate(shuffled)} == {p.uid for p in kept}


def test_auxiliary_and_raw_products_pass_through() -> None:
    products = opensearch_products("3c893698")  # 2023, descending, with ETA auxiliary and RAW products
    assert Counter(p.product_type for p in deduplicate(products)) == {
        "IW_SLC__1S": 16,
        "IW_GRDH_1S-COG": 16,
        "IW_ETA__AX": 11,
        "IW_RAW__0S": 1,
    }


def test_same_uid_twice_is_collapsed() -> None:
    products = opensearch_products("3c893698")[:5]
    assert [p.uid for p in deduplicate(products + products)] == [p.uid for p in deduplicate(products)]


def _s2(name: str, uid: str) -> Product:
    return Product(
        uid=uid,
        name=name,
        catalogue="cdse-odata",
        collection="SENTINEL-2",
        product_type="S2MSI2A",
        acquired_at=datetime(2018, 4, 5, 10, 50, 31, tzinfo=UTC),
        location=f"s3://eodata/{name}.SAFE/",
    )


def test_sentinel2_newest_baseline_then_newest_generation_wins() -> None:
    original = _s2("S2A_MSIL2A_20180405T105031_N0206_R051_T31UDS_20180405T142238", "a")
    reprocessed = _s2("S2A_MSIL2A_20180405T105031_N0500_R051_T31UDS_20230602T101112", "b")
    regenerated = _s2("S2A_MSIL2A_20180405T105031_N0500_R051_T31UDS_20230719T090807", "c")
    other_tile = _s2("S2A_MSIL2A_20180405T105031_N0206_R051_T31UES_20180405T142238", "d")
    kept = deduplicate([regenerated, original, other_tile, reprocessed])
    assert [p.uid for p in kept] == ["c", "d"]


def _card(uid: str, sources: list[str], generated: str) -> Product:
    return Product(uid=uid, name=uid, catalogue="card", collection="SENTINEL-1", product_type="CARD-COH6",
                   acquired_at=datetime(2019, 5, 6, 3, 46, 39, tzinfo=UTC), location=f"/card/{uid}",
                   attributes={"source_products": sources, "generation_time": generated})  # fmt: skip


def test_card_products_are_keyed_by_their_sources() -> None:
    first = _card("coh-v1", ["S1A_X", "S1B_Y"], "2024-01-01T00:00:00Z")
    rerun = _card("coh-v2", ["S1B_Y", "S1A_X"], "2024-03-01T00:00:00Z")
    other = _card("coh-z", ["S1B_Y", "S1A_Z"], "2024-01-01T00:00:00Z")
    assert [p.uid for p in deduplicate([first, rerun, other])] == ["coh-v2", "coh-z"]


def test_six_day_pairs_need_both_satellites() -> None:
    slcs = [p for p in opensearch_products("af8e6cd2") if p.product_type == "IW_SLC__1S"]
    pairs = repeat_pairs(slcs, interval_days=6)

    # Track 167: S1A/S1B alternate every 6 days from 30 April to 28 August (20 gaps);
    # track 65: S1B only on 29 April and 27 August (3 gaps with the S1A passes around them).
    assert Counter(first.relative_orbit for first, _ in pairs) == {167: 20, 65: 3}
    for first, second in pairs:
        assert abs((second.acquired_at - first.acquired_at) - timedelta(days=6)) < timedelta(minutes=1)
        assert first.platform != second.platform
        assert (first.orbit_direction, second.orbit_direction) == ("DESCENDING", "DESCENDING")
    first, second = pairs[0]
    assert (first.name[:32], second.name[:32]) == (
        "S1A_IW_SLC__1SDV_20190423T035516",
        "S1B_IW_SLC__1SDV_20190429T035434",
    )
    twelve = repeat_pairs(slcs, interval_days=12)
    assert len(twelve) > len(pairs)  # S1A alone repeats every 12 days all year


def test_twelve_day_pairs_after_s1b() -> None:
    slcs = [p for p in opensearch_products("3c893698") if p.product_type == "IW_SLC__1S"]
    assert repeat_pairs(slcs, interval_days=6) == []  # 2023: S1A only
    pairs = repeat_pairs(slcs, interval_days=12)
    assert Counter(first.relative_orbit for first, _ in pairs) == {8: 7, 110: 7}
    assert all(first.platform == second.platform == "S1A" for first, second in pairs)


def test_pairs_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interval_days"):
        repeat_pairs([], interval_days=0)


class _ListCatalogue:
    name = "list"

    def __init__(self, products: list[Product]) -> None:
        self.products = products

    def search(self, query: SearchQuery, *, max_items: int | None = None) -> Any:
        return iter(self.products[:max_items])


def test_poll_searches_and_deduplicates_in_time_order() -> None:
    products = opensearch_products("af8e6cd2")
    grds = [p for p in products if p.product_type.startswith("IW_GRDH_1S")]
    query = SearchQuery(
        collection="SENTINEL-1",
        product_type="IW_GRDH_1S",
        aoi_wkt="POLYGON ((35.86 49.71, 36.04 49.71, 36.04 49.8, 35.86 49.8, 35.86 49.71))",
        start=datetime(2019, 1, 30, tzinfo=UTC),
        end=datetime(2019, 8, 31, tzinfo=UTC),
    )
    kept = poll(_ListCatalogue(list(reversed(grds))), query)
    assert len(kept) == 46
    assert [p.acquired_at for p in kept] == sorted(p.acquired_at for p in kept)
    assert all(p.name.endswith("_COG") for p in kept)
