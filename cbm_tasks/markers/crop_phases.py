"""The phases of a crop year in one parcel's NDVI, shared by the crop-events kernel and the explanations.

Crop cycles and their ends (harvest), runs of bare observations (bare soil), upward crossings of the
emergence threshold (emergence), with the confidence of each. ``crop_events._crop_events_kernel``
inlines them for all parcels at once; ``harvest_explain``, ``bare_soil_explain`` and
``emergence_explain`` call them from Python for one parcel, so an explanation cannot drift from the
decision (ARCHITECTURE.md, "An explanation of a decision"). A test's failures come back as bits
of a mask, which the explanations name.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["AFTER_FIRST", "LOW_PEAK", "NO_BARE_BEFORE", "OUT_OF_EMERGENCE_PERIOD", "OUT_OF_PERIOD", "SMALL_DROP",
           "bare_confidence", "bare_runs", "cover_before", "crossings", "cycle_ends", "emergence_confidence",
           "emergence_day", "is_bare"]


# Why the end of a crop cycle is not a harvest, as bits of the mask cycle_ends gives each end
# (described in cbm_tasks.markers.harvest_explain)
LOW_PEAK, SMALL_DROP, OUT_OF_PERIOD = 1, 2, 4


@njit(cache=True, nogil=True, inline="always")
def cycle_ends(n: int, idx: np.ndarray, doy: np.ndarray, ndvi: np.ndarray, min_peak: float, max_after: float,
                min_drop: float, first_doy: float, last_doy: float, end_k: np.ndarray, end_peak: np.ndarray,
                end_failed: np.ndarray) -> tuple[int, int]:
    """The ends of the crop cycles of one parcel-year's valid observations ``idx[:n]``.

    A cycle runs from a low observation (NDVI < *max_after*: soil, stubble) to its peak, the highest
    NDVI since; the next low ends it and starts the next cycle. For each end ``j`` (of the returned
    count): ``end_k[j]`` the low (position in *idx*), ``end_peak[j]`` the cycle's peak, ``end_failed[j]``
    the tests it fails as a harvest (0: a harvest). Also returns the peak of the cycle still open.
    """
    m = 0
    pk = 0
    for k in range(1, n):
        r = idx[k]
        if ndvi[r] >= ndvi[idx[pk]]:
            pk = k
        elif ndvi[r] < max_after:
            failed = 0
            if ndvi[idx[pk]] < min_peak:
                failed |= LOW_PEAK
            if ndvi[idx[pk]] - ndvi[r] < min_drop:
                failed |= SMALL_DROP
            if not first_doy <= doy[r] <= last_doy:
                failed |= OUT_OF_PERIOD
            end_k[m], end_peak[m], end_failed[m] = k, pk, failed
            m += 1
            pk = k  # a low (soil, stubble) starts the next cycle
    return m, pk


@njit(cache=True, nogil=True, inline="always")
def is_bare(ndvi: float, bsi: float, max_ndvi: float, min_bsi: float) -> bool:
    """Bare soil: NDVI below the soil line, and BSI not below *min_bsi* where it can be computed (B02, B11)."""
    return ndvi < max_ndvi and not (np.isfinite(bsi) and bsi < min_bsi)


@njit(cache=True, nogil=True, inline="always")
def bare_runs(n: int, idx: np.ndarray, ndvi: np.ndarray, bsi: np.ndarray, max_ndvi: float, min_bsi: float,
               run_k0: np.ndarray, run_k1: np.ndarray) -> int:
    """The runs of consecutive bare observations among one parcel-year's valid observations ``idx[:n]``.

    Run ``j`` (of the returned count) spans positions ``run_k0[j] .. run_k1[j]`` of *idx*.
    """
    m = 0
    k = 0
    while k < n:
        if is_bare(ndvi[idx[k]], bsi[idx[k]], max_ndvi, min_bsi):
            run_k0[m] = k
            while k + 1 < n and is_bare(ndvi[idx[k + 1]], bsi[idx[k + 1]], max_ndvi, min_bsi):
                k += 1
            run_k1[m] = k
            m += 1
        k += 1
    return m


@njit(cache=True, nogil=True, inline="always")
def cover_before(row: int, first_row: int, day: np.ndarray, ndvi: np.ndarray, valid: np.ndarray, min_ndvi: float,
                  lookback_days: float) -> int:
    """The latest valid row with NDVI >= *min_ndvi* within *lookback_days* before *row*; -1 when none.

    Green cover before a bare run; it looks back across calendar years, not before *first_row*
    (the parcel's first row).
    """
    for r in range(row - 1, first_row - 1, -1):
        if day[row] - day[r] > lookback_days:
            break
        if valid[r] and ndvi[r] >= min_ndvi:
            return r
    return -1


@njit(cache=True, nogil=True, inline="always")
def bare_confidence(n_obs: int, bsi_tested: bool, covered: bool, no_cover_penalty: float) -> float:
    """A bare run's confidence: 0.6 for one observation, 0.85 for more, +0.15 with a BSI; less a penalty without cover.

    The soil index counts when the run's first observation had one; *no_cover_penalty* applies when
    no green cover was seen before the run (:func:`cover_before`).
    """
    return (0.6 if n_obs == 1 else 0.85) + (0.15 if bsi_tested else 0.0) - (0.0 if covered else no_cover_penalty)


# Why an upward crossing of emergence.ndvi_threshold is not an emergence, as bits of the mask crossings
# gives each crossing (described in cbm_tasks.markers.emergence_explain)
NO_BARE_BEFORE, OUT_OF_EMERGENCE_PERIOD, AFTER_FIRST = 1, 2, 4


@njit(cache=True, nogil=True, inline="always")
def crossings(n: int, idx: np.ndarray, doy: np.ndarray, ndvi: np.ndarray, bare_max: float, threshold: float,
               first_doy: float, last_doy: float, every_cycle: bool, cross_k: np.ndarray,
               cross_failed: np.ndarray) -> int:
    """The upward crossings of *threshold* among one parcel-year's valid observations ``idx[:n]``.

    Crossing ``j`` (of the returned count) is between positions ``cross_k[j] - 1`` and ``cross_k[j]``;
    ``cross_failed[j]`` holds the tests it fails as an emergence (0: an emergence): no bare observation
    (NDVI < *bare_max*) since the last emergence, outside the emergence period, or after the year's
    first emergence when not *every_cycle*.
    """
    m = 0
    seen_bare = False
    done = False
    for k in range(n):
        r = idx[k]
        if ndvi[r] < bare_max:
            seen_bare = True
        elif k > 0 and ndvi[r] >= threshold and ndvi[idx[k - 1]] < threshold:
            failed = 0
            if not seen_bare:
                failed |= NO_BARE_BEFORE
            if not first_doy <= doy[r] <= last_doy:
                failed |= OUT_OF_EMERGENCE_PERIOD
            if done:
                failed |= AFTER_FIRST
            cross_k[m], cross_failed[m] = k, failed
            m += 1
            if failed == 0:
                seen_bare = False
                done = not every_cycle
    return m


@njit(cache=True, nogil=True, inline="always")
def emergence_day(day0: float, day1: float, ndvi0: float, ndvi1: float, threshold: float) -> float:
    """The day NDVI crossed *threshold*, interpolated linearly between the observations around it."""
    return day0 + (threshold - ndvi0) / max(ndvi1 - ndvi0, 1e-6) * (day1 - day0)


@njit(cache=True, nogil=True, inline="always")
def emergence_confidence(gap_days: float) -> float:
    """1 for a crossing between images at most 10 days apart, falling by 0.25 per 10 days more, at least 0.3."""
    return min(max(1.0 - (gap_days - 10.0) / 40.0, 0.3), 1.0)
