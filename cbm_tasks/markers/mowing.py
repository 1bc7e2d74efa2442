"""Mowing marker: abrupt NDVI drops of grassland, several per season, Sentinel-2 alone or with S1.

Method (S2, per parcel, valid observations only; ``mowing`` section of the parameters):

1. Every run of consecutive NDVI decreases from a local maximum ``a`` to the next local minimum
   ``b`` is a candidate; its date lies in the step with the largest single decrease (between the
   last high and the first low observation: ``start_date`` .. ``end_date``; ``main_date`` in the
   middle, or ``date_window_days / 2`` before the low observation when the gap is longer than
   ``date_window_days``: a cut early in a long gap would have regrown and shown a smaller drop).
2. A candidate is kept when the drop ``ndvi[a] - ndvi[b]`` >= ``min_drop`` (Sen4CAP L4B: 0.12-0.15),
   the relative drop >= ``min_relative_drop``, ``ndvi[a]`` >= ``min_ndvi_before`` (grass cover), its
   main date is within the season (``season_start_doy`` .. ``season_end_doy``), and it has the shape
   of a cut rather than of grazing or a shadow: the step holds >= ``min_step_share`` of the drop, NDVI
   fell by at most ``max_pre_decline_share`` of it before the step, and red reflectance rose by the
   factor ``min_red_ratio`` across a step of <= ``red_ratio_max_gap_days`` (did not fall across a longer one),
   and where B11 exists the moisture index NDMI fell by ``min_moisture_drop`` (cut grass dries).
3. Candidates closer than ``min_spacing_days`` keep the larger drop; at most ``max_events``.
4. Confidence in [0, 1]: ``base_confidence`` + ``weight_drop`` x (drop size between ``min_drop`` and
   ``strong_drop``) + ``weight_bracket`` x (1 for a bracket of <= 6 days down to 0 at
   ``max_bracket_days``) + ``weight_recovery`` x (1 when NDVI rises again by ``min_recovery``
   within ``recovery_window_days`` - Sinergise's drop-and-recovery test; 0.5 when no later
   observation can tell) + ``weight_red`` x (the red rise from ``min_red_ratio`` to ``full_red_ratio``:
   the cut signature as evidence, across long gaps too) + ``s1_bonus`` when Sentinel-1 coherence
   rises after the cut (short, stable grass: Tamm 2016, Sen4CAP L4B coherence test) by
   ``min_coherence_rise`` and by ``coherence_noise_z`` standard errors of the rise, from the parcel's
   own coherence scatter (the coherence of a small parcel is noisy: a rise within its noise is no support).

The kernel returns flat arrays (one row per event) and, per event, the rows of the observations
that prove it (``EventArrays.obs``): the last high and the first low S2 observation, the coherence
pair that dated the cut inside a long gap, and the first pair after the cut when coherence raised
the confidence. :func:`detect_mowing` validates its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numba import njit

from cbm_tasks.markers.coherence import (
    coherence_cut_date,
    coherence_noise,
    coherence_rise,
    rise_needed,
)
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import PreparedSeries

__all__ = ["OBS_END", "OBS_MAIN", "OBS_S1_BASELINE", "OBS_S1_DATE", "OBS_S1_SUPPORT", "OBS_START", "SOURCE_BITS",
           "EventArrays", "detect_mowing", "empty_obs"]

SOURCE_BITS = {"s2": 1, "bs": 2, "coh": 4}  # bitmask of the sensors an event used
OBS_START, OBS_MAIN, OBS_END, OBS_S1_DATE, OBS_S1_SUPPORT, OBS_S1_BASELINE = range(6)  # EventArrays.obs columns
N_OBS = 6


@dataclass(frozen=True, slots=True)
class EventArrays:
    """Events of one marker for many parcels, as parallel arrays sorted by parcel and date.

    Attributes:
        parcel: int32 (n,), index into the series' ``parcel_ids``.
        start, main, end: float64 (n,), days since 1970-01-01.
        confidence: float64 (n,) in [0, 1].
        value: float64 (n,), the signal measure of the marker (e.g. the NDVI drop).
        sources: int32 (n,), bitmask of ``SOURCE_BITS``.
        obs: int64 (n, 6), the observations that prove the event, -1 where none: rows of the
            prepared S2 series (columns ``OBS_START``, ``OBS_MAIN``, ``OBS_END``: the observations
            dated start_date, main_date, end_date) and of the coherence series (``OBS_S1_DATE``:
            the pair that dated main_date; ``OBS_S1_SUPPORT`` and ``OBS_S1_BASELINE``: the first pair
            after the cut and the last pair before it, between which coherence rose and raised the
            confidence).
    """

    parcel: np.ndarray
    start: np.ndarray
    main: np.ndarray
    end: np.ndarray
    confidence: np.ndarray
    value: np.ndarray
    sources: np.ndarray
    obs: np.ndarray


def empty_obs(n: int) -> np.ndarray:
    """Return an ``EventArrays.obs`` block of *n* events that name no observation (all -1)."""
    return np.full((n, N_OBS), -1, np.int64)


class _P(IntEnum):
    """Position of each ``mowing`` parameter in the array the kernels take (``_PARAM_ORDER``)."""

    season_start_doy = 0
    season_end_doy = 1
    min_drop = 2
    strong_drop = 3
    min_relative_drop = 4
    min_ndvi_before = 5
    min_spacing_days = 6
    max_events = 7
    max_bracket_days = 8
    min_recovery = 9
    recovery_window_days = 10
    coherence_window_days = 11
    min_coherence_rise = 12
    weight_drop = 13
    weight_bracket = 14
    weight_recovery = 15
    base_confidence = 16
    s1_bonus = 17
    min_step = 18
    lookback_days = 19
    settle_days = 20
    require_recovery = 21
    min_step_share = 22
    min_confidence = 23
    min_ndvi_after = 24
    coherence_refine_gap_days = 25
    max_pre_decline_share = 26
    min_red_ratio = 27
    red_ratio_max_gap_days = 28
    min_moisture_drop = 29
    date_window_days = 30
    max_events_per_season = 31
    max_step_days = 32
    coherence_noise_z = 33
    weight_red = 34
    full_red_ratio = 35


_PARAM_ORDER = tuple(member.name for member in _P)

# The tests a step between two valid observations must pass to be a cut, as bits of the mask that
# _judge_step and _score_step return (described in cbm_tasks.markers.mowing_explain).
(SMALL_STEP, LONG_GAP, SMALL_DROP, SMALL_RELATIVE_DROP, NO_COVER_BEFORE, GRADUAL, DECLINING_BEFORE, RED_NOT_RISING,
 NOT_DRYING, BARE_AFTER, OUT_OF_SEASON, NO_RECOVERY, LOW_CONFIDENCE) = (1 << bit for bit in range(13))


@njit(cache=True, nogil=True, inline="always")
def _judge_step(k: int, n: int, idx: np.ndarray, day: np.ndarray, doy: np.ndarray, ndvi: np.ndarray,
                red: np.ndarray, ndmi: np.ndarray, p: np.ndarray) -> tuple[int, float, float, int, float, float]:
    """Tests of the step from valid observation ``idx[k - 1]`` to ``idx[k]`` as a cut.

    Returns (mask of the failed tests, 0 for a candidate; level before; level after; position in
    *idx* of the lowest observation after; main date; the red ratio of the fall the red test judged,
    which :func:`_score_step` also weighs: NaN without red).
    """
    high, low = ndvi[idx[k - 1]], ndvi[idx[k]]
    step = high - low
    t0, t1 = day[idx[k - 1]], day[idx[k]]
    failed = 0
    if step < p[_P.min_step]:
        failed |= SMALL_STEP
    if t1 - t0 > p[_P.max_step_days]:
        failed |= LONG_GAP
    # the level before: the highest of the last observations within the look-back
    before = high
    j = k - 2
    while j >= 0 and day[idx[j]] >= t0 - p[_P.lookback_days]:
        before = max(before, ndvi[idx[j]])
        j -= 1
    # the level after: the lowest within the settling days (cut grass dries, hay is removed)
    after = low
    b = k
    j = k + 1
    while j < n and day[idx[j]] <= t1 + p[_P.settle_days]:
        if ndvi[idx[j]] < after:
            after = ndvi[idx[j]]
            b = j
        j += 1
    drop = before - after
    # a cut early in a long gap would have regrown before t1 and shown a smaller drop: the date
    # lies within the regrowth time before the first low observation (see date_window_days)
    main = max(0.5 * (t0 + t1), t1 - 0.5 * p[_P.date_window_days])
    main_doy = doy[idx[k]] - (t1 - main)
    # cut signature: red reflectance rises at a cut (chlorophyll gone, stubble and cut grass
    # exposed); grazing lowers NDVI mostly through NIR, cloud shadow darkens red. Beyond
    # red_gap days regrowth may have greened the stubble again: then red must only not fall.
    short = t1 - t0 <= p[_P.red_ratio_max_gap_days]
    red_low = max(red[idx[k]], red[idx[b]])
    red_need = (p[_P.min_red_ratio] if short else 1.0) * red[idx[k - 1]]
    # moisture signature (where SWIR exists): cut grass dries and exposes litter, so NDMI falls
    moisture_low = min(ndmi[idx[k]], ndmi[idx[b]])
    moisture_need = p[_P.min_moisture_drop] if short else 0.0
    if drop < p[_P.min_drop]:
        failed |= SMALL_DROP
    if drop < p[_P.min_relative_drop] * before:
        failed |= SMALL_RELATIVE_DROP
    if before < p[_P.min_ndvi_before]:
        failed |= NO_COVER_BEFORE
    if step < p[_P.min_step_share] * drop:
        failed |= GRADUAL
    if before - high > p[_P.max_pre_decline_share] * drop:
        failed |= DECLINING_BEFORE
    if red_low < red_need:  # NaN: passes
        failed |= RED_NOT_RISING
    if p[_P.min_moisture_drop] > 0.0 and ndmi[idx[k - 1]] - moisture_low < moisture_need:  # NaN: passes
        failed |= NOT_DRYING
    if after < p[_P.min_ndvi_after]:
        failed |= BARE_AFTER
    if not p[_P.season_start_doy] <= main_doy <= p[_P.season_end_doy]:
        failed |= OUT_OF_SEASON
    return failed, before, after, b, main, red_low / red[idx[k - 1]]


# _score_step's answer: failed tests, confidence, main day, sources, three coherence rows, the confidence's
# five parts, the coherence rise and the rise it had to reach
_StepScore = tuple[int, float, float, int, int, int, int, float, float, float, float, float, float, float]


@njit(cache=True, nogil=True, inline="always")
def _score_step(k: int, b: int, n: int, idx: np.ndarray, day: np.ndarray, ndvi: np.ndarray, red_ratio: float,
                after: float, drop: float, main: float, coh_day: np.ndarray, coh_vv: np.ndarray,
                coh_interval: np.ndarray, coh_lo: int, coh_hi: int, coh_noise: float,
                p: np.ndarray) -> _StepScore:
    """Confidence of a candidate cut (see the module's method, point 4) and its S1 support.

    Returns (failed tests NO_RECOVERY / LOW_CONFIDENCE, confidence, main date (refined by coherence
    inside a long gap), sources bitmask, coherence rows: dating pair, first pair after, last pair before,
    the confidence's parts before their weights: drop, dating (bracket), regrowth, red rise, and the S1 bonus
    given; and the coherence rise with the rise it had to reach (NaN without coherence on both sides).

    The rise must reach ``min_coherence_rise`` and ``coherence_noise_z`` standard errors of itself, from the
    parcel's own pair scatter *coh_noise* (``coherence_noise``; NaN: only the absolute floor).
    """
    t0, t1 = day[idx[k - 1]], day[idx[k]]
    c_drop = min(max((drop - p[_P.min_drop]) / max(p[_P.strong_drop] - p[_P.min_drop], 1e-6), 0.0), 1.0)
    c_bracket = min(max((p[_P.max_bracket_days] - (t1 - t0)) / max(p[_P.max_bracket_days] - 6.0, 1e-6), 0.0), 1.0)
    # the cut signature in red as evidence, not only as _judge_step's gate: the rise beyond the gate's
    # factor, up to full_red_ratio (why: marker_params.yaml, weight_red; NaN red, NDVI-only input: none)
    c_red = 0.0
    red_floor = max(p[_P.min_red_ratio], 1.0)
    if np.isfinite(red_ratio) and p[_P.full_red_ratio] > red_floor:
        c_red = min(max((red_ratio - red_floor) / (p[_P.full_red_ratio] - red_floor), 0.0), 1.0)
    c_rec = 0.5
    low_day = day[idx[b]]
    for j in range(b + 1, n):
        if day[idx[j]] > low_day + p[_P.recovery_window_days]:
            break
        c_rec = 0.0
        if ndvi[idx[j]] - after >= p[_P.min_recovery]:
            c_rec = 1.0
            break
    failed = 0
    if c_rec == 0.0 and p[_P.require_recovery] > 0.0:
        failed |= NO_RECOVERY  # a drop that stays down is senescence, drought, ploughing or harvest
    confidence = (p[_P.base_confidence] + p[_P.weight_drop] * c_drop + p[_P.weight_bracket] * c_bracket
                  + p[_P.weight_recovery] * c_rec + p[_P.weight_red] * c_red)
    sources = 1
    s1_date_row, s1_support_row, s1_baseline_row = -1, -1, -1
    rise, last_before, first_after, n_before, n_after = coherence_rise(
        coh_day, coh_vv, coh_lo, coh_hi, t0, t1, p[_P.coherence_window_days])
    need = np.nan
    if np.isfinite(rise):
        sources = 5
        need = rise_needed(p[_P.min_coherence_rise], coh_noise, p[_P.coherence_noise_z], n_before, n_after)
        if rise >= need:
            confidence += p[_P.s1_bonus]
            s1_support_row, s1_baseline_row = first_after, last_before
    if t1 - t0 > p[_P.coherence_refine_gap_days]:
        refined, refined_row = coherence_cut_date(coh_day, coh_vv, coh_interval, coh_lo, coh_hi, t0, t1,
                                                  p[_P.min_coherence_rise], coh_noise, p[_P.coherence_noise_z])
        if np.isfinite(refined):
            main = refined
            sources = 5
            s1_date_row = refined_row
    if confidence < p[_P.min_confidence]:
        failed |= LOW_CONFIDENCE
    s1_part = p[_P.s1_bonus] if s1_support_row >= 0 else 0.0
    return (failed, min(confidence, 1.0), main, sources, s1_date_row, s1_support_row, s1_baseline_row, c_drop,
            c_bracket, c_rec, c_red, s1_part, rise, need)


@njit(cache=True, nogil=True)
def _mowing_kernel(offsets: np.ndarray, day: np.ndarray, doy: np.ndarray, ndvi: np.ndarray, red: np.ndarray,
                   ndmi: np.ndarray, valid: np.ndarray, coh_offsets: np.ndarray, coh_day: np.ndarray,
                   coh_vv: np.ndarray, coh_interval: np.ndarray, coh_orbit: np.ndarray,
                   p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mowing events of every parcel: (parcel, rows, obs as in ``EventArrays.obs``).

    *p* packs the parameters in the order of ``_PARAM_ORDER``.
    """
    min_spacing, max_events = p[_P.min_spacing_days], p[_P.max_events]
    cap = len(day) + 1  # at most one event per step between observations
    out_parcel = np.empty(cap, np.int32)
    out = np.empty((cap, 6), np.float64)  # start, main, end, confidence, value, sources
    out_obs = np.empty((cap, N_OBS), np.int64)
    n_out = 0
    idx = np.empty(len(day), np.int64)
    cand = np.empty((len(day), 6), np.float64)
    cand_obs = np.empty((len(day), N_OBS), np.int64)
    strength = np.empty(len(day), np.float64)
    season = np.empty(len(day), np.float64)  # the candidate's calendar year, as the day number of its 1 January
    for parcel in range(len(offsets) - 1):
        n = 0
        for row in range(offsets[parcel], offsets[parcel + 1]):
            if valid[row]:
                idx[n] = row
                n += 1
        n_cand = 0
        coh_noise = coherence_noise(coh_vv, coh_interval, coh_orbit, coh_offsets[parcel], coh_offsets[parcel + 1])
        for k in range(1, n):
            step = ndvi[idx[k - 1]] - ndvi[idx[k]]
            t0, t1 = day[idx[k - 1]], day[idx[k]]
            if step < p[_P.min_step] or t1 - t0 > p[_P.max_step_days]:
                continue  # the cheap tests first: most steps are not drops
            failed, before, after, b, main, red_ratio = _judge_step(k, n, idx, day, doy, ndvi, red, ndmi, p)
            if failed:
                continue
            drop = before - after
            (failed, confidence, main, sources, s1_date_row, s1_support_row, s1_baseline_row,
             _, _, _, _, _, _, _) = _score_step(
                k, b, n, idx, day, ndvi, red_ratio, after, drop, main, coh_day, coh_vv, coh_interval,
                coh_offsets[parcel], coh_offsets[parcel + 1], coh_noise, p)
            if failed:
                continue
            cand[n_cand, 0] = t0
            cand[n_cand, 1] = main
            cand[n_cand, 2] = t1
            cand[n_cand, 3] = confidence
            cand[n_cand, 4] = drop
            cand[n_cand, 5] = sources
            cand_obs[n_cand, OBS_START] = idx[k - 1]
            cand_obs[n_cand, OBS_MAIN] = -1
            cand_obs[n_cand, OBS_END] = idx[k]
            cand_obs[n_cand, OBS_S1_DATE] = s1_date_row
            cand_obs[n_cand, OBS_S1_SUPPORT] = s1_support_row
            cand_obs[n_cand, OBS_S1_BASELINE] = s1_baseline_row
            strength[n_cand] = drop + step  # among the steps of one cut, the steepest holds the date
            season[n_cand] = np.floor(t1 - doy[idx[k]]) + 1.0 if p[_P.max_events_per_season] > 0.0 else 0.0
            n_cand += 1
        if n_cand == 0:
            continue
        # strongest drops first; a weaker one closer than min_spacing to a kept one is dropped, and at
        # most max_events are kept per season (per_season; before version 4: over the whole series)
        order = np.argsort(-strength[:n_cand], kind="mergesort")
        kept = np.zeros(n_cand, np.bool_)
        for j in order:
            ok = True
            n_kept = 0
            for m in range(n_cand):
                if kept[m]:
                    if abs(cand[m, 1] - cand[j, 1]) < min_spacing:
                        ok = False
                        break
                    if season[m] == season[j]:
                        n_kept += 1
            if ok and n_kept < max_events:
                kept[j] = True
        for j in range(n_cand):  # candidates are in date order already
            if kept[j]:
                out_parcel[n_out] = parcel
                out[n_out, :] = cand[j, :]
                out_obs[n_out, :] = cand_obs[j, :]
                n_out += 1
    return out_parcel[:n_out], out[:n_out], out_obs[:n_out]


def _packed(params: MarkerParams) -> np.ndarray:
    """The ``mowing`` parameters as the array the kernel and its step tests take (order of ``_P``)."""
    return np.array([params.get("mowing", name) for name in _PARAM_ORDER], np.float64)


def _s2_inputs(prepared: PreparedSeries) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's red reflectance (contiguous) and day-of-year (float) arrays of the S2 series."""
    return np.ascontiguousarray(prepared.s2.bands[:, 1]), prepared.s2.doy.astype(np.float64)


def detect_mowing(prepared: PreparedSeries, params: MarkerParams, *, use_s1: bool = True) -> EventArrays:
    """Return the mowing events of every parcel of *prepared*.

    Args:
        prepared: output of :func:`cbm_tasks.markers.preprocess.prepare`.
        params: marker parameters (section ``mowing``).
        use_s1: use Sentinel-1 coherence for the confidence when present (False: S2 only).

    Returns:
        Events sorted by parcel and date; ``value`` is the NDVI drop; ``obs`` the last high and first
        low S2 observation and the coherence pairs that dated the cut or raised its confidence.
    """
    s2, coh = prepared.s2, prepared.coherence
    coh_offsets = coh.offsets if use_s1 else np.zeros(prepared.n_parcels + 1, np.int64)
    red, doy = _s2_inputs(prepared)
    parcel, rows, obs = _mowing_kernel(s2.offsets, s2.day, doy, s2.ndvi, red, s2.ndmi, s2.valid,
                                       coh_offsets, coh.day, coh.vv, coh.interval_days, coh.orbit,
                                       _packed(params))
    return EventArrays(parcel, rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy(), rows[:, 3].copy(),
                       rows[:, 4].copy(), rows[:, 5].astype(np.int32), obs)
