"""The database read's row order (markers.db_order) against a plain NumPy sort of the same rows."""

from __future__ import annotations

import numpy as np
import pytest

from cbm_tasks.markers.db_order import series_order

N_BANDS = 13


def _reference(parcel: np.ndarray, image: np.ndarray, band: np.ndarray, slot: np.ndarray, is_s2: np.ndarray,
               scl: dict[tuple[int, int], float]) -> tuple[list[int], list[float], list[tuple[int, int]]]:
    """Sort by (parcel, overpass group, band, image of the overpass); keep the first image of an overpass."""
    group, sub = slot[image] >> 8, slot[image] & 0xFF
    order = np.lexsort((sub, band, group, parcel))
    kept, shares, previous = [], [], None
    for row in order.tolist():
        if (parcel[row], group[row], band[row]) != previous:
            kept.append(row)
            shares.append(scl.get((int(parcel[row]), int(image[row])), np.nan) if is_s2[image[row]] else np.nan)
            previous = (parcel[row], group[row], band[row])
    lineage = sorted({(int(p), int(i)) for p, i in zip(parcel, image, strict=True)})
    return kept, shares, lineage


def _batch(rng: np.random.Generator, n_parcels: int, n_images: int) -> tuple[np.ndarray, ...]:
    """Rows as the read gets them: image by image, band by band, each image's parcels in any order."""
    # images in product-id order; some share an overpass (group), as overlapping tiles of one datatake
    group = np.sort(rng.integers(0, max(1, n_images - 3), n_images))
    slot = np.zeros(n_images, np.int64)
    for image in range(n_images):
        slot[image] = (int(group[image]) << 8) | int(np.sum(group[:image] == group[image]))
    shuffled = rng.permutation(n_images)  # the server answers images in any order
    slot = slot[shuffled]
    is_s2 = rng.random(n_images) < 0.6
    parcel, image, band = [], [], []
    for img in rng.permutation(n_images).tolist():
        bands = (2, 4, 6, 8) if is_s2[img] else (10, 11)
        seen = rng.permutation(n_parcels)[: rng.integers(0, n_parcels + 1)]  # a parcel may miss an image
        for code in bands:
            parcel.append(seen)
            image.append(np.full(len(seen), img))
            band.append(np.full(len(seen), code))
    return (np.concatenate(parcel).astype(np.int64), np.concatenate(image).astype(np.int64),
            np.concatenate(band).astype(np.int8), slot, is_s2)


@pytest.mark.parametrize("seed", range(6))
def test_rows_shares_and_lineage_equal_a_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_parcels, n_images = int(rng.integers(1, 40)), int(rng.integers(1, 25))
    parcel, image, band, slot, is_s2 = _batch(rng, n_parcels, n_images)
    pairs = {(int(p), int(i)) for p, i in zip(parcel, image, strict=True) if is_s2[i]}
    scl = {pair: float(rng.random()) for pair in sorted(pairs) if rng.random() < 0.8}
    scl_parcel = np.array([p for p, _ in scl], np.int64)
    scl_image = np.array([i for _, i in scl], np.int64)
    shuffle = rng.permutation(len(scl))
    rows, shares, lineage_parcel, lineage_image = series_order(
        parcel, image, band, n_parcels, slot, is_s2, N_BANDS, scl_parcel[shuffle], scl_image[shuffle],
        np.array(list(scl.values()))[shuffle])

    kept, expected_shares, lineage = _reference(parcel, image, band, slot, is_s2, scl)
    assert rows.tolist() == kept
    np.testing.assert_array_equal(shares, expected_shares)
    assert list(zip(lineage_parcel.tolist(), lineage_image.tolist(), strict=True)) == lineage


def test_rows_not_in_runs_and_an_empty_batch() -> None:
    # rows of one image and band need not be contiguous (runs of one row): same order
    rng = np.random.default_rng(11)
    parcel, image, band, slot, is_s2 = _batch(rng, 12, 8)
    mix = rng.permutation(len(parcel))
    empty = np.zeros(0, np.int64)
    rows, *_ = series_order(parcel[mix], image[mix], band[mix], 12, slot, is_s2, N_BANDS, empty, empty, np.zeros(0))
    kept, *_ = _reference(parcel[mix], image[mix], band[mix], slot, is_s2, {})
    assert rows.tolist() == kept
    rows, shares, lineage_parcel, lineage_image = series_order(empty, empty, np.zeros(0, np.int8), 3, slot, is_s2,
                                                               N_BANDS, empty, empty, np.zeros(0))
    assert len(rows) == len(shares) == len(lineage_parcel) == len(lineage_image) == 0
