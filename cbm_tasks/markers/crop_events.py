"""Markers of arable and general land state: vegetation presence, bare soil, harvest, emergence, data.

All work on the valid Sentinel-2 NDVI of each parcel and calendar year (sections ``vegetation``,
``bare_soil``, ``harvest``, ``emergence``, ``data`` of the parameters):

* ``vegetation``: the season's peak NDVI >= ``vegetation.min_peak_ndvi``; start / end = first / last
  observation at or above it, main = the peak, value = peak NDVI.
* ``bare_soil``: each run of consecutive observations with NDVI < ``bare_soil.max_ndvi`` and, where
  B02 and B11 exist, bare soil index BSI >= ``bare_soil.min_bsi``; value = the run's lowest NDVI.
  Confidence grows with the run's length (one observation 0.6, two or more 0.85) and BSI support
  (+0.15); it falls by ``bare_soil.no_cover_penalty`` when no valid observation within
  ``bare_soil.cover_lookback_days`` before the run shows green cover (NDVI >= ``bare_soil.min_cover_ndvi``):
  a ploughing turns cover into soil, while a meadow's brown litter after snow melt is low from its
  first clear image on (version 6).
* ``harvest``: the end of a crop cycle (Sinergise's greening-and-harvest marker). A cycle runs from a
  low observation (NDVI < ``harvest.max_ndvi_after``: soil, stubble) through greening to its peak; the
  first low after a peak >= ``harvest.min_peak_ndvi`` with a drop >= ``harvest.min_drop`` ends it and
  is a harvest when it falls in the harvest period. The date lies between the low and the observation
  before it; value = the drop. Each cycle of a year can end in a harvest (double cropping). The peak
  is the cycle's and not the calendar year's: a winter cover crop or grass ley that is green until
  spring, destroyed and followed by maize, would otherwise put the "harvest" at the spring low.
  (``harvest.crop_cycles: 0``, the parameters before version 4: one harvest, after the year's peak.)
* ``emergence``: after a bare observation, the first upward crossing of ``emergence.ndvi_threshold``
  (date interpolated linearly); value = NDVI after the crossing. With ``emergence.every_cycle`` one
  per bare period: a catch crop or second crop sown after a harvest emerges too (before version 4
  only the year's first emergence was reported).
* ``data_sufficiency``: one per parcel and year over the mowing season: value = clear
  observations, start / end = first / last of them, main = middle of the longest gap,
  confidence = 1 for a longest gap <= ``data.good_gap_days`` falling to 0 at ``data.max_gap_days``.

Each event names the S2 observations its dates come from (``EventArrays.obs``): vegetation the first
observation above the threshold, the peak and the last; bare soil the first and last of its run;
harvest and emergence the observations before and after the change; data sufficiency the first and
last clear observation of the season.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cbm_tasks.markers.crop_phases import (
    bare_confidence,
    bare_runs,
    cover_before,
    crossings,
    cycle_ends,
    emergence_confidence,
    emergence_day,
)
from cbm_tasks.markers.mowing import EventArrays, empty_obs
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import S2Series

__all__ = ["CROP_MARKERS", "bare_soil_index", "detect_crop_events"]

CROP_MARKERS = ("vegetation", "bare_soil", "harvest", "emergence", "data_sufficiency")


@njit(cache=True, nogil=True)
def _harvest(out_parcel: np.ndarray, out_marker: np.ndarray, out: np.ndarray, out_obs: np.ndarray, n_out: int,
             parcel: int, day: np.ndarray, before: int, after: int, drop: float) -> int:
    """Append a harvest between S2 rows *before* and *after*; confidence falls with the gap between them."""
    t0, t1 = day[before], day[after]
    out_parcel[n_out] = parcel
    out_marker[n_out] = 2
    out[n_out, 0] = t0
    out[n_out, 1] = 0.5 * (t0 + t1)
    out[n_out, 2] = t1
    out[n_out, 3] = min(max(1.0 - (t1 - t0 - 10.0) / 40.0, 0.3), 1.0)
    out[n_out, 4] = drop
    out_obs[n_out, 0], out_obs[n_out, 1], out_obs[n_out, 2] = before, -1, after
    return n_out + 1


@njit(cache=True, nogil=True)
def _crop_events_kernel(offsets: np.ndarray, day: np.ndarray, doy: np.ndarray, year: np.ndarray,
                        ndvi: np.ndarray, bsi: np.ndarray, valid: np.ndarray,
                        p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Events of the markers in CROP_MARKERS.

    Returns (parcel, marker index, rows[start, main, end, conf, value], obs[start, main, end] as S2 rows, -1 none).
    """
    (veg_peak, bare_max, bare_bsi, harv_peak, harv_after, harv_drop, emerg, season_start, season_end,
     good_gap, max_gap, harv_first, harv_last, emerg_first, emerg_last) = (
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14])
    cycles = p[15] > 0
    every_cycle = p[16] > 0
    cover_ndvi, cover_days, no_cover_penalty = p[17], p[18], p[19]
    cap = 5 * len(day) + 8  # per parcel-year at most one event per valid observation plus four
    out_parcel = np.empty(cap, np.int32)
    out_marker = np.empty(cap, np.int8)
    out = np.empty((cap, 5), np.float64)
    out_obs = np.empty((cap, 3), np.int64)
    n_out = 0
    idx = np.empty(len(day), np.int64)
    end_k = np.empty(len(day), np.int64)  # the ends of the crop cycles of one parcel-year (cycle_ends)
    end_peak = np.empty(len(day), np.int64)
    end_failed = np.empty(len(day), np.int64)
    run_k0 = np.empty(len(day), np.int64)  # the bare soil runs of one parcel-year (bare_runs)
    run_k1 = np.empty(len(day), np.int64)
    cross_k = np.empty(len(day), np.int64)  # its upward crossings of the emergence threshold (crossings)
    cross_failed = np.empty(len(day), np.int64)
    for parcel in range(len(offsets) - 1):
        lo = offsets[parcel]
        hi = offsets[parcel + 1]
        parcel_lo = lo
        while lo < hi:
            this_year = year[lo]
            seg_end = lo
            while seg_end < hi and year[seg_end] == this_year:
                seg_end += 1
            n = 0
            for row in range(lo, seg_end):
                if valid[row]:
                    idx[n] = row
                    n += 1
            lo = seg_end
            # data sufficiency over the season
            n_season, first, last, prev, gap, gap_mid = 0, -1.0, -1.0, -1.0, 0.0, -1.0
            first_row, last_row = -1, -1
            for k in range(n):
                r = idx[k]
                if season_start <= doy[r] <= season_end:
                    if prev < 0:
                        first = day[r]
                        first_row = r
                    elif day[r] - prev > gap:
                        gap = day[r] - prev
                        gap_mid = 0.5 * (day[r] + prev)
                    prev = day[r]
                    last = day[r]
                    last_row = r
                    n_season += 1
            year_start = day[lo - 1] - doy[lo - 1]  # day number of 31 Dec of the previous year (+ fraction)
            start_day = np.floor(year_start) + season_start
            end_day = np.floor(year_start) + season_end
            if n_season == 0:  # no clear observation in the season: evidence of missing data
                out_parcel[n_out] = parcel
                out_marker[n_out] = 4
                out[n_out, 0] = start_day
                out[n_out, 1] = 0.5 * (start_day + end_day)
                out[n_out, 2] = end_day
                out[n_out, 3] = 0.0
                out[n_out, 4] = 0.0
                out_obs[n_out, 0], out_obs[n_out, 1], out_obs[n_out, 2] = -1, -1, -1
                n_out += 1
            else:
                if first - start_day > gap:  # a season that starts or ends without observations
                    gap = first - start_day
                    gap_mid = 0.5 * (first + start_day)
                if end_day - last > gap:
                    gap = end_day - last
                    gap_mid = 0.5 * (end_day + last)
                out_parcel[n_out] = parcel
                out_marker[n_out] = 4
                out[n_out, 0] = first
                out[n_out, 1] = gap_mid
                out[n_out, 2] = last
                out[n_out, 3] = min(max((max_gap - gap) / max(max_gap - good_gap, 1e-6), 0.0), 1.0)
                out[n_out, 4] = n_season
                out_obs[n_out, 0], out_obs[n_out, 1], out_obs[n_out, 2] = first_row, -1, last_row
                n_out += 1
            if n == 0:
                continue
            # vegetation: peak in the season
            peak_k = -1
            for k in range(n):
                r = idx[k]
                if season_start <= doy[r] <= season_end and (peak_k < 0 or ndvi[r] > ndvi[idx[peak_k]]):
                    peak_k = k
            if peak_k >= 0 and ndvi[idx[peak_k]] >= veg_peak:
                k0, k1, n_above = peak_k, peak_k, 0
                for k in range(n):
                    if ndvi[idx[k]] >= veg_peak and season_start <= doy[idx[k]] <= season_end:
                        k0 = min(k0, k)
                        k1 = max(k1, k)
                        n_above += 1
                out_parcel[n_out] = parcel
                out_marker[n_out] = 0
                out[n_out, 0] = day[idx[k0]]
                out[n_out, 1] = day[idx[peak_k]]
                out[n_out, 2] = day[idx[k1]]
                out[n_out, 3] = min(0.5 + 0.25 * (n_above - 1) + (ndvi[idx[peak_k]] - veg_peak), 1.0)
                out[n_out, 4] = ndvi[idx[peak_k]]
                out_obs[n_out, 0], out_obs[n_out, 1], out_obs[n_out, 2] = idx[k0], idx[peak_k], idx[k1]
                n_out += 1
            # bare soil runs
            for j in range(bare_runs(n, idx, ndvi, bsi, bare_max, bare_bsi, run_k0, run_k1)):
                k0, k = run_k0[j], run_k1[j]
                low = ndvi[idx[k0]]
                for kk in range(k0 + 1, k + 1):
                    low = min(low, ndvi[idx[kk]])
                out_parcel[n_out] = parcel
                out_marker[n_out] = 1
                out[n_out, 0] = day[idx[k0]]
                out[n_out, 1] = day[idx[k0]]
                out[n_out, 2] = day[idx[k]]
                covered = cover_before(idx[k0], parcel_lo, day, ndvi, valid, cover_ndvi, cover_days) >= 0
                out[n_out, 3] = bare_confidence(k - k0 + 1, np.isfinite(bsi[idx[k0]]), covered, no_cover_penalty)
                out[n_out, 4] = low
                out_obs[n_out, 0], out_obs[n_out, 1], out_obs[n_out, 2] = idx[k0], idx[k0], idx[k]
                n_out += 1
            # harvest
            if cycles:
                m, _ = cycle_ends(n, idx, doy, ndvi, harv_peak, harv_after, harv_drop, harv_first, harv_last,
                                   end_k, end_peak, end_failed)
                for j in range(m):
                    if end_failed[j] == 0:
                        r = idx[end_k[j]]
                        n_out = _harvest(out_parcel, out_marker, out, out_obs, n_out, parcel, day,
                                         idx[end_k[j] - 1], r, ndvi[idx[end_peak[j]]] - ndvi[r])
            else:
                # parameters before version 4: after the peak of the calendar year, the first low
                top = 0
                for k in range(n):
                    if ndvi[idx[k]] > ndvi[idx[top]]:
                        top = k
                if ndvi[idx[top]] >= harv_peak:
                    for k in range(top + 1, n):
                        r = idx[k]
                        if not harv_first <= doy[r] <= harv_last:
                            continue
                        if ndvi[r] < harv_after and ndvi[idx[top]] - ndvi[r] >= harv_drop:
                            n_out = _harvest(out_parcel, out_marker, out, out_obs, n_out, parcel, day,
                                             idx[k - 1], r, ndvi[idx[top]] - ndvi[r])
                            break
            # emergence: the first upward crossing after a bare observation (every_cycle: after each bare period)
            for j in range(crossings(n, idx, doy, ndvi, bare_max, emerg, emerg_first, emerg_last, every_cycle,
                                      cross_k, cross_failed)):
                if cross_failed[j] == 0:
                    r0, r = idx[cross_k[j] - 1], idx[cross_k[j]]
                    out_parcel[n_out] = parcel
                    out_marker[n_out] = 3
                    out[n_out, 0] = day[r0]
                    out[n_out, 1] = emergence_day(day[r0], day[r], ndvi[r0], ndvi[r], emerg)
                    out[n_out, 2] = day[r]
                    out[n_out, 3] = emergence_confidence(day[r] - day[r0])
                    out[n_out, 4] = ndvi[r]
                    out_obs[n_out, 0], out_obs[n_out, 1], out_obs[n_out, 2] = r0, -1, r
                    n_out += 1
    return out_parcel[:n_out], out_marker[:n_out], out[:n_out], out_obs[:n_out]


_PARAM_ORDER = (("vegetation", "min_peak_ndvi"), ("bare_soil", "max_ndvi"), ("bare_soil", "min_bsi"),
                ("harvest", "min_peak_ndvi"), ("harvest", "max_ndvi_after"), ("harvest", "min_drop"),
                ("emergence", "ndvi_threshold"), ("mowing", "season_start_doy"), ("mowing", "season_end_doy"),
                ("data", "good_gap_days"), ("data", "max_gap_days"), ("harvest", "first_doy"),
                ("harvest", "last_doy"), ("emergence", "first_doy"), ("emergence", "last_doy"),
                ("harvest", "crop_cycles"), ("emergence", "every_cycle"), ("bare_soil", "min_cover_ndvi"),
                ("bare_soil", "cover_lookback_days"), ("bare_soil", "no_cover_penalty"))


def bare_soil_index(bands: np.ndarray) -> np.ndarray:
    """BSI = ((B11 + B04) - (B08 + B02)) / ((B11 + B04) + (B08 + B02)) from columns B02, B04, B08, B11."""
    blue, red, nir, swir = bands[:, 0], bands[:, 1], bands[:, 2], bands[:, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        bsi: np.ndarray = ((swir + red) - (nir + blue)) / ((swir + red) + (nir + blue))
    return bsi


def detect_crop_events(s2: S2Series, params: MarkerParams) -> dict[str, EventArrays]:
    """Return the events of every marker in CROP_MARKERS for every parcel of *s2*.

    Args:
        s2: the prepared Sentinel-2 series.
        params: marker parameters.

    Returns:
        marker name -> events sorted by parcel and date; ``sources`` is S2 (1) for all.
    """
    packed = np.array([params.get(section, key) for section, key in _PARAM_ORDER], np.float64)
    parcel, marker, rows, s2_obs = _crop_events_kernel(s2.offsets, s2.day, s2.doy.astype(np.float64), s2.year,
                                                       s2.ndvi, bare_soil_index(s2.bands), s2.valid, packed)
    obs = empty_obs(len(parcel))
    obs[:, :3] = s2_obs  # S2 only: no coherence pair
    out = {}
    for code, name in enumerate(CROP_MARKERS):
        pick = np.flatnonzero(marker == code)
        pick = pick[np.lexsort((rows[pick, 1], parcel[pick]))]
        out[name] = EventArrays(parcel[pick], rows[pick, 0], rows[pick, 1], rows[pick, 2], rows[pick, 3],
                                rows[pick, 4], np.ones(len(pick), np.int32), obs[pick])
    return out
