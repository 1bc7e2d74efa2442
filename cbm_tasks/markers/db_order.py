"""Put the rows of a batch read from the database in the order of the markers' series, in linear time.

:mod:`cbm_tasks.markers.db_read` receives a batch's band values image by image (one ``COPY`` row of
arrays per image); :class:`~cbm_tasks.markers.series.SeriesTable` wants them by parcel, then by image
(time, source, orbit), band and, last, the images of one overpass. That is a transpose of some
10^7 rows for 50,000 parcels, which NumPy did with a 64-bit key per row, a comparison sort, a search
per row for its SCL share and a second sort for the lineage: most of the read's client time.

:func:`series_order` does it in O(rows). The order inside a parcel depends only on the (image, band) of
a row, and the rows come in runs of one image and band (one ``COPY`` row of arrays per image): the runs
are put in that order, then a stable counting sort by parcel gives the series order. The SCL share of an
image, the overpass duplicates and the lineage pairs are found in the same pass per parcel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["series_order"]


@njit(cache=True, nogil=True)
def _rank_order(pair: np.ndarray, slot: np.ndarray, n_bands: int) -> np.ndarray:
    """The rows stably sorted by the series order of their (image, band) *pair* (image * n_bands + band).

    That order is (overpass group, band, image of the overpass), from *slot* (per image ``group << 8 |
    sub``, ``db_read._product_slots``). The rows come image by image and band by band (one ``COPY`` row
    of arrays per image), so they are runs of one pair: the runs are put in order, not the rows.
    """
    n = len(pair)
    n_runs = 0
    run_start = np.empty(n + 1, np.int64)
    for row in range(n):
        if row == 0 or pair[row] != pair[row - 1]:
            run_start[n_runs] = row
            n_runs += 1
    run_start[n_runs] = n
    key = np.empty(n_runs, np.int64)
    for run in range(n_runs):
        image, band = pair[run_start[run]] // n_bands, pair[run_start[run]] % n_bands
        key[run] = ((slot[image] >> 8) << 16) | (band << 8) | (slot[image] & 0xFF)
    out = np.empty(n, np.int64)
    at = 0
    for run in np.argsort(key, kind="mergesort"):
        for row in range(run_start[run], run_start[run + 1]):
            out[at] = row
            at += 1
    return out


@njit(cache=True, nogil=True)
def _counting_order(keys: np.ndarray, n_keys: int, within: np.ndarray) -> np.ndarray:
    """The rows *within* stably sorted by ``keys[row]`` (each in 0 .. n_keys - 1)."""
    start = np.zeros(n_keys + 1, np.int64)
    for row in within:
        start[keys[row] + 1] += 1
    for k in range(n_keys):
        start[k + 1] += start[k]
    out = np.empty(len(within), np.int64)
    for row in within:
        out[start[keys[row]]] = row
        start[keys[row]] += 1
    return out


@njit(cache=True, nogil=True)
def series_order(parcel: np.ndarray, image: np.ndarray, band: np.ndarray, n_parcels: int, slot: np.ndarray,
                 is_s2: np.ndarray, n_bands: int, scl_parcel: np.ndarray, scl_image: np.ndarray,
                 scl_share: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order the rows of a batch as the series, drop overpass duplicates, join SCL shares, list the lineage.

    Args:
        parcel: int64 (n,), each row's parcel (0 .. n_parcels - 1).
        image: int64 (n,), each row's image, as an index into *slot* (images in product-id order).
        band: int8 (n,), each row's band code (< n_bands).
        n_parcels: parcels of the batch.
        slot: int64 (n_images,), per image ``group << 8 | sub``: images of one overpass share the group.
        is_s2: bool (n_images,), the image is Sentinel-2 (only those have an SCL share).
        n_bands: number of band codes.
        scl_parcel: int64 (m,), the parcel of each SCL share.
        scl_image: int64 (m,), its image (index into *slot*).
        scl_share: float64 (m,), the share of unusable SCL pixels of that parcel in that image.

    Every index must be in range (the kernel does not check: ``db_read`` does before the call).

    Returns:
        (rows kept, in series order: by parcel, overpass, band, and the first image of an overpass;
        their SCL share, NaN where none; the lineage: parcel and image of every (parcel, image) read,
        duplicates included, by parcel and image).
    """
    n = len(parcel)
    pair = image * n_bands + band
    order = _counting_order(parcel, n_parcels, _rank_order(pair, slot, n_bands))
    scl_order = _counting_order(scl_parcel, n_parcels, np.arange(len(scl_parcel)))

    kept = np.empty(n, np.int64)
    scl = np.empty(n, np.float64)
    lineage_parcel = np.empty(n, np.int64)
    lineage_image = np.empty(n, np.int64)
    share_of = np.full(len(slot), np.nan)  # the current parcel's SCL share per image
    seen = np.zeros(len(slot), np.bool_)
    n_kept = n_lineage = 0
    at = scl_at = 0
    for p in range(n_parcels):
        first_scl = scl_at
        while scl_at < len(scl_order) and scl_parcel[scl_order[scl_at]] == p:
            share_of[scl_image[scl_order[scl_at]]] = scl_share[scl_order[scl_at]]
            scl_at += 1
        first = at
        previous = -1  # (group, band) of the previous row of this parcel
        while at < n and parcel[order[at]] == p:
            row = order[at]
            img = image[row]
            same = (slot[img] >> 8) << 8 | band[row]
            if same != previous:  # the overpass's other images repeat the observation: the first one counts
                kept[n_kept] = row
                scl[n_kept] = share_of[img] if is_s2[img] else np.nan
                n_kept += 1
                previous = same
            at += 1
        # lineage: every image read for the parcel, once, in image (product id) order
        start = n_lineage
        for k in range(first, at):
            img = image[order[k]]
            if not seen[img]:
                seen[img] = True
                lineage_image[n_lineage] = img
                n_lineage += 1
        lineage_image[start:n_lineage] = np.sort(lineage_image[start:n_lineage])
        lineage_parcel[start:n_lineage] = p
        for k in range(start, n_lineage):
            seen[lineage_image[k]] = False
        for k in range(first_scl, scl_at):
            share_of[scl_image[scl_order[k]]] = np.nan
    return kept[:n_kept], scl[:n_kept], lineage_parcel[:n_lineage], lineage_image[:n_lineage]
