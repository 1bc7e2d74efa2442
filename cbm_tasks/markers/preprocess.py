"""Pre-processing: one row per observation and sensor, validity, indices, dB, cloud dips.

:func:`prepare` turns a :class:`SeriesTable` into :class:`PreparedSeries`: Sentinel-2 with one
row per (parcel, date) holding the bands, NDVI, the clear share and the validity flag;
Sentinel-1 backscatter in dB per (parcel, orbit, date); coherence per (parcel, date). Each view is
sorted by parcel and time and has its own ``offsets``.

Validity of an S2 observation (all must hold):

* clear share >= ``validity.min_clear_fraction``: the file's ``clear_fraction`` when given, else
  1 - the share of unusable SCL classes (no data, saturated, cloud shadow, cloud medium / high,
  cirrus, snow); an observation with neither is taken as clear;
* B04 and B08 present, NDVI >= ``validity.min_plausible_ndvi``, B02 <= ``validity.max_blue_reflectance``
  where B02 exists (haze the mask missed);
* not a cloud dip (:func:`_cloud_dip_kernel`): a single low NDVI whose next valid neighbour is back
  near the level before it faster than grass can regrow. A real mowing does not recover within
  days, so it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import BAND_CODE, BANDS, SOURCE_CODE, SeriesTable, group_offsets

__all__ = ["PreparedSeries", "S1Series", "S2Series", "cloud_dips", "prepare"]

_S2_BANDS = ("B02", "B04", "B08", "B11")


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
        clear: float64 (n,), clear share used (NaN when unknown).
        valid: bool (n,), usable for markers.
        cloud_dip: bool (n,), rejected as a dip the cloud mask missed.
    """

    offsets: np.ndarray
    day: np.ndarray
    doy: np.ndarray
    year: np.ndarray
    bands: np.ndarray
    ndvi: np.ndarray
    clear: np.ndarray
    valid: np.ndarray
    cloud_dip: np.ndarray


@dataclass(frozen=True, slots=True)
class S1Series:
    """Sentinel-1 observations of one kind (backscatter or coherence), one row per (parcel, orbit, date).

    Attributes:
        offsets: int64 (n_parcels + 1,).
        day: float64 (n,); coherence is dated at the start of its interval.
        orbit: int32 (n,), relative orbit or -1.
        vv, vh: float64 (n,); backscatter in dB, coherence 0-1.
        interval_days: float64 (n,), 6 or 12 for coherence, 0 for backscatter.
    """

    offsets: np.ndarray
    day: np.ndarray
    orbit: np.ndarray
    vv: np.ndarray
    vh: np.ndarray
    interval_days: np.ndarray


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


def _pivot(series: SeriesTable, mask: np.ndarray, bands: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Rows of *mask* -> one row per observation, in (parcel, time) order as the table is sorted.

    The table's order (parcel, time, source, orbit, band) keeps the rows of one observation together.
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
    first = np.flatnonzero(new)
    return parcel[first], orbit[first], day[first], values, first, rows


def _day_of_year(day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dates = (np.floor(day).astype("int64")).astype("datetime64[D]")
    years = dates.astype("datetime64[Y]")
    doy = (dates - years.astype("datetime64[D]")).astype(np.int64) + 1
    return doy.astype(np.int32), (years.astype(np.int64) + 1970).astype(np.int32)


@njit(cache=True, nogil=True)
def _cloud_dip_kernel(offsets: np.ndarray, day: np.ndarray, ndvi: np.ndarray, valid: np.ndarray,
                      max_regrowth_per_day: float, recovery_margin: float, max_span_days: float) -> np.ndarray:
    """Flag single-observation NDVI dips that recover faster than regrowth allows (valid rows only)."""
    dip = np.zeros(len(day), np.bool_)
    for p in range(len(offsets) - 1):
        previous = -1
        current = -1
        for row in range(offsets[p], offsets[p + 1]):
            if not valid[row]:
                continue
            if previous >= 0 and current >= 0:
                span = day[row] - day[previous]
                depth = ndvi[previous] - ndvi[current]
                rise = ndvi[row] - ndvi[current]
                rise_days = max(day[row] - day[current], 1.0)
                if (span <= max_span_days and depth > recovery_margin
                        and ndvi[row] >= ndvi[previous] - recovery_margin
                        and rise / rise_days > max_regrowth_per_day):
                    dip[current] = True
                    current = row  # the dip is dropped: its neighbours become consecutive
                    continue
            previous = current
            current = row
    return dip


def cloud_dips(offsets: np.ndarray, day: np.ndarray, ndvi: np.ndarray, valid: np.ndarray, *,
               params: MarkerParams) -> np.ndarray:
    """Return a bool mask of the valid observations that are cloud dips (see :func:`_cloud_dip_kernel`).

    Raises:
        ValueError: the arrays differ in length or offsets do not end at their length.
    """
    if not (len(day) == len(ndvi) == len(valid)) or int(offsets[-1]) != len(day):
        raise ValueError(f"cloud_dips: day {len(day)}, ndvi {len(ndvi)}, valid {len(valid)} rows and offsets "
                         f"ending at {int(offsets[-1])} must agree")
    return _cloud_dip_kernel(offsets.astype(np.int64), day.astype(np.float64), ndvi.astype(np.float64),
                             valid.astype(np.bool_), params.get("cloud_dip", "max_regrowth_per_day"),
                             params.get("cloud_dip", "recovery_margin"), params.get("cloud_dip", "max_span_days"))


def _s2(series: SeriesTable, params: MarkerParams) -> S2Series:
    mask = series.source == SOURCE_CODE["s2"]
    parcel, _, day, values, first, rows = _pivot(series, mask, _S2_BANDS)
    clear_given = series.clear_fraction[rows][first]
    scl_bad = series.scl_bad_share[rows][first]
    # a clear_fraction stated on any band row of the observation holds for all of its bands
    clear = np.where(np.isnan(clear_given), 1.0 - scl_bad, clear_given)
    blue, red, nir = values[:, 0], values[:, 1], values[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (nir - red) / (nir + red)
        valid = (np.isfinite(ndvi) & (ndvi >= params.get("validity", "min_plausible_ndvi"))
                 & ~(clear < params.get("validity", "min_clear_fraction"))
                 & ~(blue > params.get("validity", "max_blue_reflectance")))
    offsets = group_offsets(parcel, series.n_parcels)
    dip = cloud_dips(offsets, day, ndvi, valid, params=params)
    doy, year = _day_of_year(day)
    return S2Series(offsets, day, doy, year, values, ndvi, clear, valid & ~dip, dip)


def _s1(series: SeriesTable, sources: tuple[str, ...], *, to_db: bool) -> S1Series:
    codes = [SOURCE_CODE[name] for name in sources]
    mask = np.isin(series.source, codes)
    parcel, orbit, day, values, first, rows = _pivot(series, mask, ("VV", "VH"))
    interval = np.where(series.source[rows][first] == SOURCE_CODE["c12"], 12.0,
                        np.where(series.source[rows][first] == SOURCE_CODE["c6"], 6.0, 0.0))
    if to_db:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(values > 0, 10.0 * np.log10(values), np.nan)
    return S1Series(group_offsets(parcel, series.n_parcels), day, orbit, values[:, 0].copy(), values[:, 1].copy(),
                    interval)


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
