"""Why a parcel has, or lacks, bare soil: every low observation of its series and how the marker judged it.

A red light on "permanent grassland: no ploughing" says that the series shows bare soil in the
scheme's window; the inspector asks which images showed it, how low NDVI was, whether the soil
index confirmed it, and how many images in a row (one bare image is weak evidence: a flood, a
cloud shadow the mask missed). :func:`explain_bare_soil` lists every Sentinel-2 observation below
the soil line ``bare_soil.max_ndvi``: used and bare (with the run it belongs to), used but not bare
(BSI says green or wet, not soil), or not used (with the validity test it failed; images the cloud
mask or the blue test takes for clouds are only counted: they show the cloud, not the field). The runs are
those of the marker's own compiled test (``crop_phases.bare_runs``), so a run is listed exactly
when the marker emitted a bare soil event (tested on real plots, as ``mowing_explain`` is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from cbm_tasks.markers.crop_events import bare_soil_index
from cbm_tasks.markers.crop_phases import bare_confidence, bare_runs, cover_before
from cbm_tasks.markers.mowing_explain import write_verdicts
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import BRIGHT_BLUE, CLOUDY, NO_VALUE, prepare, rejection_reasons
from cbm_tasks.markers.series import SeriesTable, day_to_date

__all__ = ["BareRun", "BareSoilExplanation", "LowObservation", "explain_bare_soil"]

# rejections that show a cloud, not the field: counted, not listed (a haze, implausible value or cloud dip is listed)
_CLOUDED = (NO_VALUE, CLOUDY, BRIGHT_BLUE)


@dataclass(frozen=True, slots=True)
class LowObservation:
    """One Sentinel-2 observation with NDVI below ``bare_soil.max_ndvi``, judged as bare soil.

    ``bsi`` is the bare soil index (NaN without B02 and B11); ``verdict`` is ``bare soil`` (``run``
    the number of its run), ``not bare soil`` or ``not used``, and ``reason`` says why not.
    """

    date: str
    ndvi: float
    bsi: float
    clear: float
    verdict: str
    run: int
    reason: str


@dataclass(frozen=True, slots=True)
class BareRun:
    """Consecutive used observations that are all bare soil: one bare soil event of the marker.

    ``confidence`` as the marker gives it: 0.6 for one observation, 0.85 for more, plus 0.15 when
    the soil index of its first observation could be tested, less ``bare_soil.no_cover_penalty`` when
    no green cover was seen before it (``confidence_parts`` spells it out). ``cover_date`` and
    ``cover_ndvi`` are the last observation with green cover before the run (empty and NaN: none
    within ``bare_soil.cover_lookback_days``): the cover a ploughing turned into soil.
    """

    run: int
    start_date: str
    end_date: str
    n_obs: int
    lowest_ndvi: float
    cover_date: str
    cover_ndvi: float
    confidence: float
    confidence_parts: str


@dataclass(frozen=True, slots=True)
class BareSoilExplanation:
    """The low observations and bare soil runs of one parcel, with the parameters that judged them.

    ``n_clouded`` counts the observations below the soil line rejected as clouds (clear share, no value,
    bright blue); they are not listed in ``observations``.
    """

    parcel_id: str
    params_hash: str
    max_ndvi: float
    min_bsi: float
    n_clouded: int
    observations: list[LowObservation]
    runs: list[BareRun]

    def write(self, stream: TextIO) -> None:
        """Write both tables as text lines, as ``cbm markers explain --marker bare_soil`` prints them."""
        stream.write(f"parcel {self.parcel_id}: {len(self.observations) + self.n_clouded} Sentinel-2 observations "
                     f"below the soil line NDVI {self.max_ndvi:.2f} ({self.n_clouded} clouded, not listed); "
                     f"marker parameters {self.params_hash[:12]}\n")
        for o in self.observations:
            bsi = "   -" if np.isnan(o.bsi) else f"{o.bsi:5.2f}"
            run = f" (run {o.run})" if o.run else ""
            reason = f": {o.reason}" if o.reason else ""
            stream.write(f"  {o.date}  NDVI {o.ndvi:5.2f}  BSI {bsi}  clear {o.clear:4.2f}  {o.verdict}{run}{reason}\n")
        stream.write(f"{len(self.runs)} runs of bare soil:\n")
        for r in self.runs:
            count = f"{r.n_obs} observation{'s' if r.n_obs > 1 else ''}"
            cover = f"after green cover {r.cover_ndvi:.2f} on {r.cover_date}" if r.cover_date else \
                "no green cover before it"
            stream.write(f"  run {r.run}: {r.start_date} .. {r.end_date}  {count}, lowest NDVI {r.lowest_ndvi:.2f}, "
                         f"{cover}, confidence {r.confidence:.2f} ({r.confidence_parts})\n")

    def write_csv(self, path: Path) -> None:
        """Write the low observations as CSV (one row per observation, the columns of :class:`LowObservation`)."""
        write_verdicts(path, self.parcel_id, LowObservation, self.observations)


def explain_bare_soil(series: SeriesTable, parcel_id: str, params: MarkerParams, *,
                      year: int | None = None) -> BareSoilExplanation:
    """Judge every observation of *parcel_id* below the soil line, and list its bare soil runs.

    Runs are found per calendar year among the used observations, as the marker does.

    Args:
        series: time series holding the parcel (a file or a database read).
        parcel_id: the parcel.
        params: marker parameters (section ``bare_soil``), the same that computed its events.
        year: only this calendar year (None: every year of the series).

    Raises:
        NotFoundError: *parcel_id* is not in *series*.
    """
    s2 = prepare(series.one_parcel(parcel_id), params).s2
    max_ndvi, min_bsi = params.get("bare_soil", "max_ndvi"), params.get("bare_soil", "min_bsi")
    cover_ndvi, cover_days, penalty = (params.get("bare_soil", key) for key in ("min_cover_ndvi", "cover_lookback_days",
                                                                                 "no_cover_penalty"))
    bsi = bare_soil_index(s2.bands)
    codes, reasons = rejection_reasons(s2, params)
    run_of: dict[int, int] = {}  # S2 row -> run number
    runs: list[BareRun] = []
    k0s, k1s = np.empty(len(s2.day), np.int64), np.empty(len(s2.day), np.int64)
    for this_year in sorted(set(s2.year.tolist())):
        if year is not None and this_year != year:
            continue
        idx = np.flatnonzero(s2.valid & (s2.year == this_year)).astype(np.int64)
        m = bare_runs(len(idx), idx, s2.ndvi, bsi, max_ndvi, min_bsi, k0s, k1s)
        for k0, k1 in zip(k0s[:m], k1s[:m], strict=True):
            rows = idx[k0:k1 + 1]
            tested = bool(np.isfinite(bsi[rows[0]]))
            cover = cover_before(rows[0], 0, s2.day, s2.ndvi, s2.valid, cover_ndvi, cover_days)
            confidence = bare_confidence(len(rows), tested, cover >= 0, penalty)
            parts = (f"{'one observation 0.60' if len(rows) == 1 else 'two or more observations 0.85'}"
                     f" + soil index {'0.15' if tested else '0.00 (no B02 and B11)'}")
            if cover < 0 and penalty:
                parts += f" - no green cover before it {penalty:.2f}"
            runs.append(BareRun(len(runs) + 1, day_to_date(s2.day[rows[0]]), day_to_date(s2.day[rows[-1]]),
                                len(rows), float(np.min(s2.ndvi[rows])),
                                day_to_date(s2.day[cover]) if cover >= 0 else "",
                                float(s2.ndvi[cover]) if cover >= 0 else float("nan"), float(confidence), parts))
            run_of.update(dict.fromkeys(rows.tolist(), len(runs)))
    observations = []
    n_clouded = 0
    for r in range(len(s2.day)):
        if (year is not None and s2.year[r] != year) or not s2.ndvi[r] < max_ndvi:
            continue
        if codes[r] in _CLOUDED:
            n_clouded += 1
            continue
        if r in run_of:
            verdict, reason = "bare soil", ""
        elif codes[r]:
            verdict, reason = "not used", reasons[r]
        else:  # used and below the soil line, yet in no run (bare_runs takes every used bare one): its BSI
            verdict, reason = "not bare soil", f"BSI below bare_soil.min_bsi {min_bsi:.2f}: green or wet, not soil"
        observations.append(LowObservation(day_to_date(s2.day[r]), float(s2.ndvi[r]), float(bsi[r]),
                                           float(s2.clear[r]), verdict, run_of.get(r, 0), reason))
    return BareSoilExplanation(str(parcel_id), params.hash, max_ndvi, min_bsi, n_clouded, observations, runs)
