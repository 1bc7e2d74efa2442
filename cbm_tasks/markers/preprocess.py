"""Pre-processing: one row per observation and sensor, validity, indices, dB, cloud dips.

:func:`prepare` turns a :class:`SeriesTable` into :class:`PreparedSeries`: Sentinel-2 with one
row per (parcel, date) holding the bands, NDVI, the clear share and the validity flag;
Sentinel-1 backscatter in dB per (parcel, orbit, date); coherence per (parcel, date). Each view is
sorted by parcel and time and has its own ``offsets``.

Validity of an S2 observation (all must hold):

* clear share >= ``validity.min_clear_fraction``: the file's ``clear_fraction`` when given, else
  1 - the share of unusable SCL classes (no data, saturated, cloud shadow, cloud medium / high,
  cirrus, snow); an observation with neither is taken as clear;
* B04 and B08 (or, without B08, B8A) present and above 0 (a band mean <= 0 is a no-data fill such as
  -9999 and is taken as missing), or else the file's own NDVI (band ``NDVI``, in [-1, 1]); NDVI >=
  ``validity.min_plausible_ndvi``. NDVI is the file's own where it gives one (``data.file_ndvi``: the mean
  of the parcel's pixel NDVI), else that of the band means;
  where B02 exists, B02 <= ``validity.max_blue_reflectance`` and the haze index (:func:`haze_index`,
  HOT) <= ``validity.max_haze_index`` (haze the mask missed), both tested only where the visible
  spectrum is flat (B04 < ``validity.min_soil_red_ratio`` x B02: cloud, haze, snow; redder is soil);
* where the input gives the red band's spread over the parcel (``std`` of B04), it is at most
  ``validity.max_red_spread`` or ``validity.red_spread_factor`` x the parcel's median spread, whichever
  is higher (a cloud or its edge over part of the parcel, which the mask missed);
* not a cloud dip (:func:`cloud_dips`): a run of one or two low NDVI values whose next valid
  neighbour is back near the level before it, either faster than grass can regrow or with the blue
  excess of haze. A real mowing does not recover within days and has no blue excess, so it is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numba import njit

from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import BAND_CODE, BANDS, MAX_REFLECTANCE, SOURCE_CODE, SeriesTable, group_offsets

__all__ = ["REJECTIONS", "PreparedSeries", "S1Series", "S2Series", "cloud_dips", "haze_index", "moisture_index",
           "prepare", "rejection_codes", "rejection_reasons"]

_S2_BANDS = ("B02", "B04", "B08", "B11")

log = logging.getLogger(__name__)

# Why an S2 observation is not used (0: used), the first test it fails in this order
NO_VALUE, CLOUDY, BRIGHT_BLUE, HAZE, IMPLAUSIBLE, CLOUD_DIP, PART_CLOUD = range(1, 8)
REJECTIONS = {
    NO_VALUE: "no red or NIR value (missing, a no-data fill <= 0, or above 2: not reflectance)",
    CLOUDY: "clear share below min_clear_fraction (cloud, shadow, snow)",
    BRIGHT_BLUE: "blue above max_blue_reflectance (cloud or haze the mask missed)",
    HAZE: "haze index above max_haze_index (haze the mask missed)",
    IMPLAUSIBLE: "NDVI below min_plausible_ndvi (water, cloud or shadow)",
    CLOUD_DIP: "cloud dip: back faster than grass regrows (or within min_cut_low_days), or hazy",
    PART_CLOUD: "red spread over the parcel above max_red_spread and its usual spread (part cloud the mask missed)",
}


@dataclass(frozen=True, slots=True)
class S2Series:
    """Sentinel-2 observations, one row per (parcel, date), sorted by parcel and time.

    Attributes:
        offsets: int64 (n_parcels + 1,).
        day: float64 (n,), days since 1970-01-01.
        doy: int32 (n,), day of year (1..366).
        year: int32 (n,).
        bands: float64 (n, 4), reflectance of B02, B04, B08, B11 (NaN when absent).
        ndvi: float64 (n,).
        ndmi: float64 (n,), moisture index (:func:`moisture_index`), NaN without B11.
        clear: float64 (n,), clear share used (NaN when unknown).
        red_spread: float64 (n,), standard deviation of B04 over the parcel's pixels (NaN when unknown).
        valid: bool (n,), usable for markers.
        cloud_dip: bool (n,), rejected as a dip the cloud mask missed.
        product: int64 (n,), the image of the observation (its first band row's), -1 when unknown.
    """

    offsets: np.ndarray
    day: np.ndarray
    doy: np.ndarray
    year: np.ndarray
    bands: np.ndarray
    ndvi: np.ndarray
    ndmi: np.ndarray
    clear: np.ndarray
    red_spread: np.ndarray
    valid: np.ndarray
    cloud_dip: np.ndarray
    product: np.ndarray


@dataclass(frozen=True, slots=True)
class S1Series:
    """Sentinel-1 observations of one kind (backscatter or coherence), one row per (parcel, orbit, date).

    Attributes:
        offsets: int64 (n_parcels + 1,).
        day: float64 (n,); coherence is dated at the start of its interval.
        orbit: int32 (n,), relative orbit or -1.
        vv, vh: float64 (n,); backscatter in dB, coherence 0-1.
        interval_days: float64 (n,), 6 or 12 for coherence, 0 for backscatter.
        product: int64 (n,), the image of the observation, -1 when unknown.
    """

    offsets: np.ndarray
    day: np.ndarray
    orbit: np.ndarray
    vv: np.ndarray
    vh: np.ndarray
    interval_days: np.ndarray
    product: np.ndarray


@dataclass(frozen=True, slots=True)
class PreparedSeries:
    """All sensors of a set of parcels, ready for the marker kernels."""

    parcel_ids: np.ndarray
    s2: S2Series
    backscatter: S1Series
    coherence: S1Series

    @property
    def n_parcels(self) -> int:
        """Number of parcels."""
        return len(self.parcel_ids)


def _pivot(series: SeriesTable, mask: np.ndarray, bands: tuple[str, ...],
           spread_band: str | None = None) -> tuple[np.ndarray, ...]:
    """Rows of *mask* -> one row per observation, in (parcel, time) order as the table is sorted.

    Returns (parcel, orbit, day, the means of *bands*, first row of each observation in *rows*, rows,
    the spread (std) of *spread_band*, empty without one). The table's order (parcel, time, source,
    orbit, band) keeps the rows of one observation together.
    """
    rows = np.flatnonzero(mask)
    parcel, orbit, day = series.parcel[rows], series.orbit[rows], series.obs_day[rows]
    new = np.ones(len(rows), bool)
    if len(rows) > 1:
        new[1:] = (parcel[1:] != parcel[:-1]) | (orbit[1:] != orbit[:-1]) | (day[1:] != day[:-1])
    obs = np.cumsum(new) - 1
    n_obs = int(obs[-1]) + 1 if len(rows) else 0
    values = np.full((n_obs, len(bands)), np.nan)
    band_column = np.full(len(BANDS), -1)
    for column, name in enumerate(bands):
        band_column[BAND_CODE[name]] = column
    columns = band_column[series.band[rows]]
    keep = columns >= 0
    values[obs[keep], columns[keep]] = series.mean[rows][keep]
    spread = np.full(n_obs if spread_band else 0, np.nan)
    if spread_band:
        of_band = series.band[rows] == BAND_CODE[spread_band]
        spread[obs[of_band]] = series.std[rows][of_band]
    first = np.flatnonzero(new)
    return parcel[first], orbit[first], day[first], values, first, rows, spread


def _day_of_year(day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dates = (np.floor(day).astype("int64")).astype("datetime64[D]")
    years = dates.astype("datetime64[Y]")
    doy = (dates - years.astype("datetime64[D]")).astype(np.int64) + 1
    return doy.astype(np.int32), (years.astype(np.int64) + 1970).astype(np.int32)


@njit(cache=True, nogil=True)
def _cloud_dip_kernel(offsets: np.ndarray, day: np.ndarray, ndvi: np.ndarray, haze: np.ndarray, valid: np.ndarray,
                      max_regrowth_per_day: float, recovery_margin: float, max_span_days: float, max_run: int,
                      min_haze_rise: float, min_cut_low_days: float) -> np.ndarray:
    """Flag runs of 1..*max_run* low valid observations that the mask missed (see :func:`cloud_dips`)."""
    dip = np.zeros(len(day), np.bool_)
    idx = np.empty(len(day), np.int64)
    for p in range(len(offsets) - 1):
        n = 0
        for row in range(offsets[p], offsets[p + 1]):
            if valid[row]:
                idx[n] = row
                n += 1
        if n < 3:
            continue
        previous = idx[0]
        i = 1
        while i < n:
            flagged = 0
            for length in range(1, max_run + 1):
                if i + length >= n:
                    break
                after = idx[i + length]
                if day[after] - day[previous] > max_span_days:
                    break
                low = ndvi[previous] - recovery_margin
                lowest = idx[i]
                haze_min = np.inf
                all_low = True
                for j in range(i, i + length):
                    row = idx[j]
                    if not ndvi[row] < low:
                        all_low = False
                        break
                    if ndvi[row] < ndvi[lowest]:
                        lowest = row
                    haze_min = min(haze_min, haze[row])  # NaN (no blue band) never wins
                if not all_low:
                    break
                if ndvi[after] < low:
                    continue  # still low: maybe a longer run, or a real drop
                back = day[after] - day[lowest]
                fast = back <= min_cut_low_days or (ndvi[after] - ndvi[lowest]) / max(back, 1.0) > max_regrowth_per_day
                hazy = haze_min - max(haze[previous], haze[after]) >= min_haze_rise  # False when any is NaN
                if fast or hazy:
                    flagged = length
                break
            if flagged:
                for j in range(i, i + flagged):
                    dip[idx[j]] = True
                i += flagged  # the run is dropped: its neighbours become consecutive
            else:
                previous = idx[i]
                i += 1
    return dip


def haze_index(blue: np.ndarray, red: np.ndarray, *, red_weight: float) -> np.ndarray:
    """Return the haze-optimised transform ``blue - red_weight * red`` (NaN where blue is missing).

    Clear land lies on a line in the blue-red plane (red >= blue: soil, dry grass and green leaves
    alike); haze and thin cloud scatter blue most and move observations off it (Zhang, Guindon and
    Cihlar 2002, HOT). A cut raises red more than blue, so the index falls or stays at a cut.
    """
    return blue - red_weight * red


def moisture_index(nir: np.ndarray, swir: np.ndarray) -> np.ndarray:
    """Return NDMI ``(B08 - B11) / (B08 + B11)`` (Gao 1996; NaN where either band is missing).

    Leaf water absorbs in the short-wave infrared: a green canopy has a high NDMI, cut grass drying
    in the sun, stubble and litter a low one. A cloud shadow darkens NIR and SWIR alike (the ratio
    barely moves), which is why a fall of NDMI tells a cut from a shadow or a grazed sward.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((nir - swir) / (nir + swir), np.float64)


def cloud_dips(offsets: np.ndarray, day: np.ndarray, ndvi: np.ndarray, valid: np.ndarray, *,
               params: MarkerParams, haze: np.ndarray | None = None) -> np.ndarray:
    """Return a bool mask of the valid observations that are cloud dips the mask missed.

    A run of one or two (``cloud_dip.max_run``) consecutive valid observations is a dip when all of
    them lie more than ``recovery_margin`` below the observation before the run, the observation
    after it is back within ``recovery_margin`` of that level, the three span at most
    ``max_span_days``, and either the recovery is faster than grass regrows
    (``max_regrowth_per_day``) or comes within ``min_cut_low_days`` of the run's lowest observation,
    or the run carries a haze signature (its haze index, :func:`haze_index`, at least
    ``min_haze_rise`` above both neighbours). A real cut stays low for weeks, so it is never a dip; a
    cloud right after a cut is not either (the level before it is low).

    Raises:
        ValueError: the arrays differ in length or offsets do not end at their length.
    """
    haze = np.full(len(day), np.nan) if haze is None else haze
    if not (len(day) == len(ndvi) == len(valid) == len(haze)) or int(offsets[-1]) != len(day):
        raise ValueError(f"cloud_dips: day {len(day)}, ndvi {len(ndvi)}, valid {len(valid)}, haze {len(haze)} rows "
                         f"and offsets ending at {int(offsets[-1])} must agree")
    return _cloud_dip_kernel(offsets.astype(np.int64), day.astype(np.float64), ndvi.astype(np.float64),
                             haze.astype(np.float64), valid.astype(np.bool_),
                             params.get("cloud_dip", "max_regrowth_per_day"),
                             params.get("cloud_dip", "recovery_margin"), params.get("cloud_dip", "max_span_days"),
                             int(params.get("cloud_dip", "max_run")), params.get("cloud_dip", "min_haze_rise"),
                             params.get("cloud_dip", "min_cut_low_days"))


def _validity_codes(bands: np.ndarray, ndvi: np.ndarray, clear: np.ndarray, red_spread: np.ndarray,
                    offsets: np.ndarray, params: MarkerParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (validity code per observation, the haze index the test used, the parcel's usual red spread).

    The code is 0 (valid) or the first validity test the observation fails (``REJECTIONS``, cloud dips
    apart); *bands* holds B02, B04, B08, B11. The usual spread is the median red std of the parcel's
    observations every other test passed (0 where it has none), which the spread test compares with.
    """
    blue = bands[:, 0]
    haze = haze_index(blue, bands[:, 1], red_weight=params.get("validity", "haze_red_weight"))
    code = np.zeros(len(ndvi), np.int8)
    with np.errstate(invalid="ignore"):
        # cloud, haze and snow are white or bluish; bright soil and straw are redder (marker_params.yaml)
        white = ~(bands[:, 1] >= params.get("validity", "min_soil_red_ratio") * blue)
        tests = ((IMPLAUSIBLE, ndvi < params.get("validity", "min_plausible_ndvi")),
                 (HAZE, (haze > params.get("validity", "max_haze_index")) & white),
                 (BRIGHT_BLUE, (blue > params.get("validity", "max_blue_reflectance")) & white),
                 (CLOUDY, clear < params.get("validity", "min_clear_fraction")),
                 (NO_VALUE, ~np.isfinite(ndvi)))
    for reason, failed in tests:  # the last assignment wins: the list runs from the last test to the first
        code[failed] = reason
    # the spread is judged against the parcel's usual one, of the observations every other test passed
    usual = _parcel_medians(offsets, red_spread, code == 0)
    limit = np.maximum(params.get("validity", "max_red_spread"), params.get("validity", "red_spread_factor") * usual)
    with np.errstate(invalid="ignore"):
        code[(code == 0) & (red_spread > limit)] = PART_CLOUD
    return code, haze, usual


@njit(cache=True, nogil=True)
def _parcel_medians_kernel(offsets: np.ndarray, values: np.ndarray, use: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values))
    for p in range(len(offsets) - 1):
        lo, hi = offsets[p], offsets[p + 1]
        chosen = values[lo:hi][use[lo:hi] & np.isfinite(values[lo:hi])]
        if len(chosen):
            out[lo:hi] = np.median(chosen)
    return out


def _parcel_medians(offsets: np.ndarray, values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Per row, the median of its parcel's finite *values* in rows of *use* (0 where the parcel has none)."""
    return _parcel_medians_kernel(offsets.astype(np.int64), values.astype(np.float64), use.astype(np.bool_))


def _rejections(s2: S2Series, params: MarkerParams) -> tuple[np.ndarray, np.ndarray]:
    code, _, usual = _validity_codes(s2.bands, s2.ndvi, s2.clear, s2.red_spread, s2.offsets, params)
    code[(code == 0) & s2.cloud_dip] = CLOUD_DIP
    return code, usual


def rejection_codes(s2: S2Series, params: MarkerParams) -> np.ndarray:
    """Return per S2 observation why it is not used (a ``REJECTIONS`` key), 0 where it is used."""
    return _rejections(s2, params)[0]


def rejection_reasons(s2: S2Series, params: MarkerParams) -> tuple[np.ndarray, list[str]]:
    """Return :func:`rejection_codes` and per observation its text ('' where used), with the spread test's figures.

    An image rejected as part cloud names its red spread and the parcel's usual one, as the test compared them.
    """
    codes, usual = _rejections(s2, params)
    return codes, [f"{REJECTIONS[PART_CLOUD]}: red std {s2.red_spread[r]:.3f}, the parcel's usual {usual[r]:.3f}"
                   if code == PART_CLOUD else REJECTIONS.get(int(code), "") for r, code in enumerate(codes)]


def _s2(series: SeriesTable, params: MarkerParams) -> S2Series:
    mask = series.source == SOURCE_CODE["s2"]
    parcel, _, day, pivoted, first, rows, red_spread = _pivot(series, mask, (*_S2_BANDS, "NDVI", "B8A"), "B04")
    values, given_ndvi = np.ascontiguousarray(pivoted[:, :4]), pivoted[:, 4]
    # the narrow NIR band (20 m) where a file has no B08: exports at 20 m carry B8A only
    values[:, 2] = np.where(np.isnan(values[:, 2]), pivoted[:, 5], values[:, 2])
    # reflectance <= 0 is a no-data fill, not a measurement: -9999 or -32768 in exports, 0 (DN 0 of
    # older processing baselines) or -0.1 (DN 0 after BOA_ADD_OFFSET). Read as values, a fill makes
    # NDVI ~0 and the fall to it a ploughing; as missing, the observation is not used (NO_VALUE).
    with np.errstate(invalid="ignore"):
        fill = values <= 0.0
        # a mean above MAX_REFLECTANCE is no reflectance: an image extracted as digital numbers (x 10000)
        # without its scale. Read as values, its blue would reject it as cloud and its NDVI lack the
        # offset; the whole observation is missing (NO_VALUE), and the log names the images.
        raw = (values > MAX_REFLECTANCE).any(axis=1)
    if fill.any():
        log.warning("Sentinel-2 band means <= 0 taken as no data: %d of %d band values (%d observations)",
                    int(fill.sum()), int(np.isfinite(values).sum()), int(fill.any(axis=1).sum()))
        values[fill] = np.nan
    if raw.any():
        images = [str(i) for i in np.unique(series.product_id[rows[first]][raw]) if i >= 0]
        named = f" (images {', '.join(images[:10])}{' ...' if len(images) > 10 else ''})" if images else ""
        log.warning("Sentinel-2 band means above %g are not reflectance (digital numbers extracted without a "
                    "scale?): %d observations taken as missing%s; extract them again with --scale 0.0001 and the "
                    "offset of their processing baseline", MAX_REFLECTANCE, int(raw.sum()), named)
        values[raw] = np.nan
    clear_given = series.clear_fraction[rows][first]
    scl_bad = series.scl_bad_share[rows][first]
    # the reader gave every row of an observation the clear_fraction stated on any of its rows
    clear = np.where(np.isnan(clear_given), 1.0 - scl_bad, clear_given)
    red, nir = values[:, 1], values[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (nir - red) / (nir + red)
    # a file's own NDVI (the mean of the parcel's pixel NDVI, as JRC and Sen4CAP extract it) is used where given
    # (data.file_ndvi; before version 13 only where red or NIR is missing: exports of the index alone, where the
    # red and moisture tests of a cut, and the haze test, have nothing to judge and pass)
    with np.errstate(invalid="ignore"):
        scaled = np.abs(given_ndvi) > 1.0
    if scaled.any():
        log.warning("NDVI values outside [-1, 1] are no NDVI (scaled by an export?): %d observations' NDVI not used",
                    int(scaled.sum()))
        given_ndvi = np.where(scaled, np.nan, given_ndvi)
    take_given = np.isfinite(given_ndvi) & ((params.get("data", "file_ndvi") > 0.0) | ~np.isfinite(ndvi))
    ndvi = np.where(take_given, given_ndvi, ndvi)
    offsets = group_offsets(parcel, series.n_parcels)
    code, haze, _ = _validity_codes(values, ndvi, clear, red_spread, offsets, params)
    valid = code == 0
    dip = cloud_dips(offsets, day, ndvi, valid, params=params, haze=haze)
    doy, year = _day_of_year(day)
    return S2Series(offsets, day, doy, year, values, ndvi, moisture_index(nir, values[:, 3]), clear, red_spread,
                    valid & ~dip, dip, series.product_id[rows[first]])


def _s1(series: SeriesTable, sources: tuple[str, ...], *, to_db: bool) -> S1Series:
    codes = [SOURCE_CODE[name] for name in sources]
    mask = np.isin(series.source, codes)
    parcel, orbit, day, values, first, rows, _ = _pivot(series, mask, ("VV", "VH"))
    interval = np.where(series.source[rows][first] == SOURCE_CODE["c12"], 12.0,
                        np.where(series.source[rows][first] == SOURCE_CODE["c6"], 6.0, 0.0))
    if to_db:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(values > 0, 10.0 * np.log10(values), np.nan)
    return S1Series(group_offsets(parcel, series.n_parcels), day, orbit, values[:, 0].copy(), values[:, 1].copy(),
                    interval, series.product_id[rows[first]])


def prepare(series: SeriesTable, params: MarkerParams) -> PreparedSeries:
    """Split *series* by sensor, compute NDVI, validity and cloud dips, S1 backscatter in dB.

    Args:
        series: the observations (from :func:`cbm_tasks.markers.reader.read_series` or the database).
        params: marker parameters (sections ``validity`` and ``cloud_dip``).

    Returns:
        The per-sensor views sharing ``series.parcel_ids``.
    """
    return PreparedSeries(series.parcel_ids, _s2(series, params), _s1(series, ("bs",), to_db=True),
                          _s1(series, ("c6", "c12"), to_db=False))
