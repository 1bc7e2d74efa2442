"""Batches of claimed images: how they are planned (pure), and that each image stays its own unit in a batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cbm_tasks.pipeline.batches import (
    DEFAULT_PIXELS_PER_M2,
    ClaimedImage,
    ExtractBatch,
    estimate_megapixels,
    plan_batches,
    sized_image,
)

T0 = datetime(2018, 4, 1, tzinfo=UTC)
CHIP_M2 = 640.0 * 640.0  # the demo's chips
TILE_M2 = 109_800.0 * 109_800.0  # one Sentinel-2 MGRS tile


def _image(product_id: int, megapixels: float | None, *, aoi: str = "a", grid: str = "S2MSI2A/31UDS",
           day: int = 0) -> ClaimedImage:
    return ClaimedImage(aoi=aoi, product_id=product_id, acquired_at=T0 + timedelta(days=day), grid=grid,
                        megapixels=megapixels)


def test_megapixels_follow_area_and_band_resolutions() -> None:
    s2 = [10.0] * 4 + [20.0] * 7  # the bands read from an L2A product
    assert estimate_megapixels(CHIP_M2, s2) == pytest.approx(0.023552)  # 4 x 64^2 + 7 x 32^2 pixels
    assert estimate_megapixels(TILE_M2, s2) == pytest.approx(693.2, rel=1e-3)
    assert estimate_megapixels(TILE_M2) == pytest.approx(TILE_M2 * DEFAULT_PIXELS_PER_M2 / 1e6)
    assert estimate_megapixels(CHIP_M2, [10.0, 10.0]) == pytest.approx(2 * 4096 / 1e6)
    with pytest.raises(ValueError, match="resolutions must be > 0 m"):
        estimate_megapixels(CHIP_M2, [10.0, 0.0])
    with pytest.raises(ValueError, match="area_m2 must be >= 0"):
        estimate_megapixels(-1.0)


def test_sized_image_reads_the_band_descriptors_and_names_the_grid() -> None:
    bands = [{"name": "VV", "resolution_m": 10.0}, {"name": "VH"}]  # VH without resolution: as the finest
    image = sized_image("a", 7, T0, product_type="CARD-BS", tile=None, relative_orbit=37, area_m2=CHIP_M2,
                        bands=bands)
    assert (image.grid, image.megapixels) == ("CARD-BS/R037", pytest.approx(2 * 4096 / 1e6))
    unknown = sized_image("a", 8, T0, product_type="S2MSI2A", tile="31UDS", relative_orbit=51, area_m2=None,
                          bands=None)
    assert (unknown.grid, unknown.megapixels) == ("S2MSI2A/31UDS", None)


def test_chips_share_tasks_in_equal_shares_and_full_tiles_run_alone() -> None:
    chips = [_image(i, 0.0235, day=i) for i in range(1, 301)]
    tiles = [_image(1001, 693.2, grid="S2MSI2A/31UCS"), _image(1002, 693.2, grid="S2MSI2A/31UCS", day=5)]
    other_aoi = [_image(i, 0.0235, aoi="b", day=i) for i in range(2001, 2006)]
    batches = plan_batches([*tiles, *chips, *other_aoi], claimed_by="cbm_extract/run1", target_megapixels=512,
                           image_overhead_megapixels=6)
    by_aoi = {aoi: [b for b in batches if b.aoi == aoi] for aoi in ("a", "b")}
    assert [b.product_ids for b in by_aoi["a"][:2]] == [(1001,), (1002,)]  # large images first, each alone
    # 300 chips of ~6.02 Mpx of work: ceil(1807 / 512) = 4 batches of 75, none left over
    assert [len(b.product_ids) for b in by_aoi["a"][2:]] == [75, 75, 75, 75]
    assert by_aoi["a"][2].product_ids == tuple(range(1, 76))  # in time order
    assert [b.product_ids for b in by_aoi["b"]] == [tuple(range(2001, 2006))]  # AOIs never share a batch
    every = [pid for b in batches for pid in b.product_ids]
    assert sorted(every) == sorted(i.product_id for i in [*chips, *tiles, *other_aoi])  # each image once
    assert all(b.claimed_by == "cbm_extract/run1" for b in batches)
    assert by_aoi["a"][2].megapixels == pytest.approx(75 * 6.0235)
    assert by_aoi["a"][0].label == "a: S2MSI2A/31UCS 2018-04-01 #1001"
    assert by_aoi["a"][2].label == "a: 75 images, S2MSI2A/31UDS, 2018-04-02 #1 .. 2018-06-15 #75"


def test_target_zero_maps_one_task_per_image_and_unknown_sizes_run_alone() -> None:
    images = [_image(1, 0.02), _image(2, 0.02, day=1), _image(3, None, day=2)]
    assert [b.product_ids for b in plan_batches(images, claimed_by="w", target_megapixels=0)] == [(1,), (2,), (3,)]
    planned = plan_batches(images, claimed_by="w")
    assert [b.product_ids for b in planned] == [(3,), (1, 2)]
    with pytest.raises(ValueError, match="product 2 is listed twice for AOI 'a'"):
        plan_batches([*images, _image(2, 0.02)], claimed_by="w")
    with pytest.raises(ValueError, match="target_megapixels must be >= 0 and finite, got inf"):
        plan_batches(images, claimed_by="w", target_megapixels=float("inf"))
    with pytest.raises(ValueError, match="product 4: megapixels must be >= 0"):
        _image(4, -1.0)


def test_batch_xcom_form_round_trips_and_rejects_unknown_keys() -> None:
    batch = ExtractBatch(aoi="a", product_ids=(3, 1, 2), claimed_by="cbm_extract/r", megapixels=18.07, label="x")
    assert ExtractBatch.from_dict(batch.as_dict()) == batch
    with pytest.raises(ValueError, match="expected keys"):
        ExtractBatch.from_dict({**batch.as_dict(), "product_id": 4})
    with pytest.raises(ValueError, match="product ids repeat"):
        ExtractBatch(aoi="a", product_ids=(1, 1), claimed_by="w", megapixels=1.0)
