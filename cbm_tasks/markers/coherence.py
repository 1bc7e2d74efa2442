"""Sentinel-1 coherence as support of a mowing (the ``mowing`` marker's S1 part; see ``mowing``).

Mown grass is short and stable between two passes, so the 6/12-day VV coherence rises after a cut (Tamm
2016; Sen4CAP L4B coherence test). Coherence of a small parcel averages few pixels and is noisy, so a
rise supports a cut only when it stands out of the parcel's own scatter (``coherence_noise_z``).

The kernels take one parcel's coherence pairs as rows ``lo:hi`` of flat arrays (``day`` the pair's
first acquisition, ``vv`` its coherence, ``interval`` 6 or 12 days, ``orbit`` the relative orbit or -1)
and are called from the mowing kernel and its explanation.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["coherence_cut_date", "coherence_noise", "coherence_rise", "rise_needed"]


@njit(cache=True, nogil=True)
def coherence_rise(day: np.ndarray, vv: np.ndarray, lo: int, hi: int, start: float, end: float,
                   window: float) -> tuple[float, int, int, int, int]:
    """Mean VV coherence of pairs after *end* minus pairs ending before *start*; NaN when one side is empty.

    Also returns the rows of the last pair before (tall grass) and the first pair after (short grass),
    -1 where a side is empty: the pairs an event names when the rise raised its confidence; and the
    number of pairs on each side (before, after), which set the rise's standard error.
    """
    before_sum, before_n, after_sum, after_n = 0.0, 0, 0.0, 0
    last_before, first_after = -1, -1
    for row in range(lo, hi):
        if not np.isfinite(vv[row]):
            continue
        if start - window - 12.0 <= day[row] <= start - 6.0:
            before_sum += vv[row]
            before_n += 1
            last_before = row
        elif end <= day[row] <= end + window:
            after_sum += vv[row]
            after_n += 1
            if first_after < 0:
                first_after = row
    if before_n == 0 or after_n == 0:
        return np.nan, last_before, first_after, before_n, after_n
    return after_sum / after_n - before_sum / before_n, last_before, first_after, before_n, after_n


@njit(cache=True, nogil=True)
def coherence_noise(vv: np.ndarray, interval: np.ndarray, orbit: np.ndarray, lo: int, hi: int) -> float:
    """Scatter (standard deviation) of one coherence pair of a parcel around its slowly changing level.

    Robust: 1.4826 x the median absolute difference between successive pairs of the same interval and
    relative orbit (6-day with 6-day, 12-day with 12-day; orbits differ in incidence angle and time of
    day, so their levels differ), divided by sqrt(2) because a difference holds the noise of two pairs.
    Slow seasonal change adds little to differences 6-12 days apart; cuts are a few of them. NaN with
    fewer than 4 differences (no estimate).
    """
    if hi - lo < 5:  # fewer than 4 differences, whatever they are: most parcels of an S2-only run have no pair
        return np.nan
    diffs = np.empty(hi - lo, np.float64)
    n = 0
    for row in range(lo, hi):
        if not np.isfinite(vv[row]):
            continue
        # the previous pair of this interval and orbit: at most a few rows back (two intervals, a few orbits)
        for prev in range(row - 1, max(lo, row - 8) - 1, -1):
            if np.isfinite(vv[prev]) and interval[prev] == interval[row] and orbit[prev] == orbit[row]:
                diffs[n] = abs(vv[row] - vv[prev])
                n += 1
                break
    if n < 4:
        return np.nan
    return float(1.4826 * np.median(diffs[:n]) / np.sqrt(2.0))


@njit(cache=True, nogil=True, inline="always")
def rise_needed(min_rise: float, noise: float, z: float, n_before: int, n_after: int) -> float:
    """The coherence rise that supports a cut: at least *min_rise* and *z* standard errors of itself.

    The rise is a difference of the means of *n_before* and *n_after* pairs, each of scatter *noise*
    (``coherence_noise``); NaN *noise* or *z* 0: *min_rise* only (parameters before version 7).
    """
    if np.isfinite(noise) and z > 0.0:
        return max(min_rise, z * noise * float(np.sqrt(1.0 / n_before + 1.0 / n_after)))
    return min_rise


@njit(cache=True, nogil=True)
def coherence_cut_date(day: np.ndarray, vv: np.ndarray, interval: np.ndarray, lo: int, hi: int, start: float,
                       end: float, min_rise: float, noise: float, z: float) -> tuple[float, int]:
    """Date of a cut inside a long S2 gap from coherence and the pair's row; (NaN, -1) when coherence cannot tell.

    Pairs before the gap give the tall-grass level; the first pair starting inside the gap whose
    coherence is at least *min_rise* above it (and *z* standard errors of one pair against that level,
    ``rise_needed``: one noisy pair does not date a cut) was taken on short grass, so the cut lies within
    the pair interval before it: its middle is returned, clamped to the gap.
    """
    base_sum, base_n = 0.0, 0
    for row in range(lo, hi):
        if np.isfinite(vv[row]) and start - 30.0 <= day[row] <= start - interval[row]:
            base_sum += vv[row]
            base_n += 1
    if base_n == 0:
        return np.nan, -1
    baseline = base_sum / base_n
    need = rise_needed(min_rise, noise, z, base_n, 1)
    for row in range(lo, hi):
        if np.isfinite(vv[row]) and start < day[row] <= end and vv[row] >= baseline + need:
            return float(min(max(day[row] - 0.5 * max(interval[row], 6.0), start), end)), row
    return np.nan, -1
