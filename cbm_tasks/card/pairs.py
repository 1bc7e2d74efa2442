"""Sentinel-1 repeat-pass pairs: which two SLCs make a 6-day or 12-day coherence product.

Two acquisitions form a pair when they were taken from the same relative orbit in the same
direction (the same viewing geometry), ``interval_days`` apart (6 days with S1A + S1B until
December 2021, 12 days with one satellite), and cover the same ground. Slice start times of
repeat passes differ from the exact interval by a few seconds for one satellite but by up to
~45 s between S1A and S1B (recorded CDSE answers: 25 s on track 167, 42 s on track 65, 2019),
which is up to a slice length (~27 s). So the time gap only has to match within minutes,
and the partner is the slice whose footprint overlaps most. S1A and S1B slices of one track
overlap by only ~48% (track 167 in the recorded answers: the slicing is offset by half a
slice), adjacent slices of one pass by a few per cent, hence ``min_overlap`` = 0.3.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

import shapely

from cbm_tasks.catalogue.product import Product

__all__ = ["repeat_pairs"]

log = logging.getLogger(__name__)


def repeat_pairs(
    products: Iterable[Product], *, interval_days: int, tolerance_s: float = 300.0, min_overlap: float = 0.3
) -> list[tuple[Product, Product]]:
    """Return (earlier, later) pairs of products ``interval_days`` apart on the same track.

    Args:
        products: Sentinel-1 products (normally de-duplicated SLCs of one AOI).
        interval_days: repeat interval, 6 or 12 for CARD-COH6 / CARD-COH12.
        tolerance_s: largest allowed difference between the time gap and ``interval_days``.
        min_overlap: smallest intersection area / smaller footprint area (ignored when a
            footprint is missing).

    Returns:
        Pairs sorted by the earlier product's sensing time; each product is the earlier member
        of at most one pair (its best-overlapping, closest-in-time partner).

    Raises:
        ValueError: ``interval_days`` < 1, negative ``tolerance_s`` or ``min_overlap`` outside 0..1.
    """
    if interval_days < 1:
        raise ValueError(f"interval_days must be >= 1, got {interval_days}")
    if tolerance_s < 0 or not 0 <= min_overlap <= 1:
        raise ValueError(f"tolerance_s must be >= 0 and min_overlap within 0..1, got {tolerance_s}, {min_overlap}")
    interval = timedelta(days=interval_days)
    tracks: dict[tuple[str, int, str], list[Product]] = defaultdict(list)
    for product in products:
        if product.relative_orbit is not None and product.orbit_direction is not None:
            tracks[(product.product_type, product.relative_orbit, product.orbit_direction)].append(product)
    pairs: list[tuple[Product, Product]] = []
    for track in tracks.values():
        track.sort(key=lambda product: product.acquired_at)
        for index, earlier in enumerate(track):
            best: tuple[float, float, Product] | None = None
            for later in track[index + 1 :]:
                gap = later.acquired_at - earlier.acquired_at
                if gap > interval + timedelta(seconds=tolerance_s):
                    break
                gap_error = abs((gap - interval).total_seconds())
                if gap_error > tolerance_s:
                    continue
                overlap = _overlap(earlier, later)
                if overlap < min_overlap:
                    continue
                candidate = (-overlap, gap_error, later)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
            if best is not None:
                pairs.append((earlier, best[2]))
    pairs.sort(key=lambda pair: (pair[0].acquired_at, pair[0].uid))
    log.info("paired interval_days=%d tracks=%d pairs=%d", interval_days, len(tracks), len(pairs))
    return pairs


def _overlap(first: Product, second: Product) -> float:
    if first.footprint_wkt is None or second.footprint_wkt is None:
        return 1.0
    a, b = shapely.from_wkt(first.footprint_wkt), shapely.from_wkt(second.footprint_wkt)
    smaller = min(a.area, b.area)
    return float(a.intersection(b).area / smaller) if smaller > 0 else 0.0
