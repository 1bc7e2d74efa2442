"""Why a parcel has, or lacks, a mowing: every NDVI fall of its series and the tests it passed or failed.

A red light ``NO_EVENT`` on a grassland scheme says that no cut was found; the inspector's next
question is which drops the series shows and why none of them counts (too small, gradual, red did
not rise as at a cut, outside the season, a stronger cut nearby ...). :func:`explain_mowing` answers
it with the mowing marker's own compiled tests (:mod:`cbm_tasks.markers.mowing`), so the
explanation cannot drift from the decision: a step is reported as ``mowing`` exactly when the
detector emitted it (checked by the tests on every parcel of the development sets).

It also lists the S2 observations that were not used, with the first validity test each failed
(:func:`cbm_tasks.markers.preprocess.rejection_reasons`), because a cut is often missed where clouds hid it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from cbm_tasks.markers import mowing
from cbm_tasks.markers.coherence import coherence_noise
from cbm_tasks.markers.mowing import _P, _judge_step, _packed, _s2_inputs, _score_step, detect_mowing
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import prepare, rejection_reasons
from cbm_tasks.markers.series import SeriesTable, day_to_date
from cbm_tasks.markers.writer import write_csv

__all__ = ["STEP_TESTS", "MowingExplanation", "ObservationVerdict", "StepVerdict", "explain_mowing",
           "failed_tests", "write_verdicts"]

# the tests of mowing._judge_step / _score_step, as the explanation names them
STEP_TESTS = {
    mowing.SMALL_STEP: "step below min_step",
    mowing.LONG_GAP: "observations further apart than max_step_days",
    mowing.SMALL_DROP: "drop below min_drop",
    mowing.SMALL_RELATIVE_DROP: "drop below min_relative_drop of the level before",
    mowing.NO_COVER_BEFORE: "level before below min_ndvi_before (no grass cover)",
    mowing.GRADUAL: "gradual: the step holds less than min_step_share of the drop",
    mowing.DECLINING_BEFORE: "declining before the step (max_pre_decline_share)",
    mowing.RED_NOT_RISING: "red did not rise as at a cut (min_red_ratio): shadow or grazing",
    mowing.NOT_DRYING: "moisture index did not fall (min_moisture_drop)",
    mowing.BARE_AFTER: "level after below min_ndvi_after (bare soil: ploughing or harvest)",
    mowing.OUT_OF_SEASON: "outside the mowing season",
    mowing.NO_RECOVERY: "no regrowth after the drop (require_recovery)",
    mowing.LOW_CONFIDENCE: "confidence below min_confidence",
}
_MIN_FALL = 0.02  # NDVI falls below this are noise of a parcel mean between clear dates, not listed


@dataclass(frozen=True, slots=True)
class ObservationVerdict:
    """One Sentinel-2 observation of the parcel: used by the markers, or why not."""

    date: str
    ndvi: float
    clear: float
    used: bool
    reason: str


@dataclass(frozen=True, slots=True)
class StepVerdict:
    """One fall of NDVI between two consecutive used observations, judged as a cut.

    ``before`` and ``after`` are the levels the drop is measured between (highest within the
    look-back, lowest within the settling days); ``red_ratio`` the red rise the red test judged and the
    confidence weighs: the red reflectance of the first low observation, or of the lowest within the
    settling days where that is higher, over the high observation's (NaN without red); ``ndmi_change``
    the moisture index change (NaN without B11); ``confidence`` NaN when a test failed before it was
    scored; ``verdict`` ``mowing``, ``not a cut``, ``weaker than the cut of YYYY-MM-DD`` or ``over
    max_events``; ``failed`` the tests not passed;
    ``confidence_parts`` its sum as the marker made it (``base 0.20 + drop 0.14 + dating 0.05 +
    regrowth 0.12 + red 0.08 + S1 0.00 (coherence +0.03 < 0.11)``: the weighted drop size, date precision
    (the gap between the two images), regrowth after the fall, the rise of red (the cut signature) and
    Sentinel-1 coherence support, with the rise of VV coherence and the rise it had to reach where
    coherence exists), empty when not scored.
    """

    start_date: str
    end_date: str
    main_date: str
    ndvi_high: float
    ndvi_low: float
    before: float
    after: float
    drop: float
    red_ratio: float
    ndmi_change: float
    confidence: float
    verdict: str
    failed: str
    confidence_parts: str = ""


@dataclass(frozen=True, slots=True)
class MowingExplanation:
    """The observations and NDVI falls of one parcel, with the parameters that judged them."""

    parcel_id: str
    params_hash: str
    observations: list[ObservationVerdict]
    steps: list[StepVerdict]

    def write(self, stream: TextIO) -> None:
        """Write both tables as aligned text, as ``cbm markers explain`` prints them."""
        unused = [o for o in self.observations if not o.used]
        stream.write(f"parcel {self.parcel_id}: {len(self.observations) - len(unused)} of {len(self.observations)} "
                     f"Sentinel-2 observations used; marker parameters {self.params_hash[:12]}\n")
        for obs in unused:
            stream.write(f"  {obs.date}  NDVI {obs.ndvi:5.2f}  clear {obs.clear:4.2f}  not used: {obs.reason}\n")
        stream.write(f"{len(self.steps)} falls of NDVI between used observations:\n")
        for s in self.steps:
            confidence = "" if np.isnan(s.confidence) else f" confidence {s.confidence:.2f}"
            if s.failed:
                failed = f" ({s.failed}{' = ' + s.confidence_parts if 'min_confidence' in s.failed else ''})"
            else:  # a cut, or one the spacing or the count removed: how sure, part by part
                failed = f" ({s.confidence_parts})" if s.confidence_parts else ""
            stream.write(f"  {s.start_date} -> {s.end_date}  NDVI {s.ndvi_high:.2f} -> {s.ndvi_low:.2f}  drop "
                         f"{s.drop:.2f} ({s.before:.2f} -> {s.after:.2f})  {_red_text(s.red_ratio)}{confidence}: "
                         f"{s.verdict}{failed}\n")

    def write_csv(self, path: Path) -> None:
        """Write the steps as CSV (one row per fall, the columns of :class:`StepVerdict`)."""
        write_verdicts(path, self.parcel_id, StepVerdict, self.steps)


def write_verdicts(path: Path, parcel_id: str, kind: type, verdicts: Sequence[Any]) -> None:
    """Write *verdicts* (dataclasses of type *kind*) of one parcel as CSV, whole or not at all.

    Columns: ``parcel_id`` and the fields of *kind*; floats with 4 decimals, empty where NaN.
    """
    write_csv(path, ["parcel_id", *(f.name for f in fields(kind))],
              ([parcel_id, *(_cell(value) for value in astuple(v))] for v in verdicts))


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4f}"
    return value


def _coherence_note(rise: float, need: float) -> str:
    """`` (coherence +0.08 >= 0.05)``: the S1 test of a scored step; empty without coherence on both sides."""
    if not np.isfinite(rise):
        return ""
    return f" (coherence {rise:+.2f} {'>=' if rise >= need else '<'} {need:.2f})"


def failed_tests(tests: Mapping[int, str], mask: int) -> str:
    """The names of the tests whose bits are set in *mask* (a kernel's failed-test bitmask), ``; ``-joined."""
    return "; ".join(text for bit, text in tests.items() if mask & bit)


def _in_year(day: float, year: int | None) -> bool:
    return year is None or day_to_date(day).startswith(f"{year:04d}-")


def _in_season(day: float, doy: float, year: int | None, params: MarkerParams) -> bool:
    start, end = params.get("mowing", "season_start_doy"), params.get("mowing", "season_end_doy")
    return _in_year(day, year) and start <= doy <= end


def explain_mowing(series: SeriesTable, parcel_id: str, params: MarkerParams, *, use_s1: bool = True,
                   year: int | None = None) -> MowingExplanation:
    """Judge every NDVI fall of *parcel_id* in *series* with the mowing marker's tests.

    Reported are the S2 observations of the mowing season and the falls dated in it (falls of less
    than 0.02, the noise of a parcel's mean NDVI between clear dates, are left out).

    Args:
        series: time series holding the parcel (a file or a database read).
        parcel_id: the parcel.
        params: marker parameters (the same that computed its events).
        use_s1: let Sentinel-1 coherence raise the confidence, as the run did.
        year: only observations and falls of this calendar year (None: all).

    Raises:
        NotFoundError: *parcel_id* is not in *series*.
    """
    prepared = prepare(series.one_parcel(parcel_id), params)
    s2, coh = prepared.s2, prepared.coherence
    codes, reasons = rejection_reasons(s2, params)
    observations = [ObservationVerdict(day_to_date(s2.day[r]), float(s2.ndvi[r]), float(s2.clear[r]), codes[r] == 0,
                                       reasons[r])
                    for r in range(len(s2.day)) if _in_season(s2.day[r], s2.doy[r], year, params)]
    events = detect_mowing(prepared, params, use_s1=use_s1)
    kept = {(float(start), float(end)) for start, end in zip(events.start, events.end, strict=True)}
    p = _packed(params)
    coh_hi = len(coh.day) if use_s1 else 0
    coh_noise = coherence_noise(coh.vv, coh.interval_days, coh.orbit, 0, coh_hi)
    red, doy = _s2_inputs(prepared)
    idx = np.flatnonzero(s2.valid).astype(np.int64)
    steps = []
    for k in range(1, len(idx)):
        high, low = idx[k - 1], idx[k]
        if s2.ndvi[high] - s2.ndvi[low] < min(_MIN_FALL, p[_P.min_step]):
            continue
        failed, before, after, b, main, red_ratio = _judge_step(k, len(idx), idx, s2.day, doy, s2.ndvi, red, s2.ndmi,
                                                                p)
        if failed & mowing.OUT_OF_SEASON or not _in_year(main, year):
            continue
        confidence, parts = np.nan, ""
        if not failed:
            failed, confidence, main, _, _, _, _, c_drop, c_bracket, c_rec, c_red, s1_part, rise, need = _score_step(
                k, b, len(idx), idx, s2.day, s2.ndvi, red_ratio, after, before - after, main, coh.day, coh.vv,
                coh.interval_days, 0, coh_hi, coh_noise, p)
            parts = (f"base {p[_P.base_confidence]:.2f} + drop {p[_P.weight_drop] * c_drop:.2f} + dating "
                     f"{p[_P.weight_bracket] * c_bracket:.2f} + regrowth {p[_P.weight_recovery] * c_rec:.2f} + "
                     f"red {p[_P.weight_red] * c_red:.2f} + S1 {s1_part:.2f}{_coherence_note(rise, need)}")
        if failed:
            verdict = "not a cut"
        elif (float(s2.day[high]), float(s2.day[low])) in kept:
            verdict = "mowing"
        else:  # passed every test, removed by the spacing or the per-season count of cuts
            nearby = [m for m in events.main if abs(m - main) < params.get("mowing", "min_spacing_days")]
            verdict = f"weaker than the cut of {day_to_date(nearby[0])}" if nearby else "over max_events"
        steps.append(StepVerdict(
            day_to_date(s2.day[high]), day_to_date(s2.day[low]), day_to_date(main), float(s2.ndvi[high]),
            float(s2.ndvi[low]), float(before), float(after), float(before - after),
            float(red_ratio), float(s2.ndmi[low] - s2.ndmi[high]), float(confidence),
            verdict, failed_tests(STEP_TESTS, failed), parts))
    return MowingExplanation(str(parcel_id), params.hash, observations, steps)


def _red_text(ratio: float) -> str:
    """The red reflectance's change across a fall, or that the file has no red band to tell."""
    return f"red x{ratio:.2f}" if math.isfinite(ratio) else "red -"
