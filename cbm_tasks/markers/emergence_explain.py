"""Why a parcel has, or lacks, an emergence: every rise of NDVI through the emergence threshold, judged.

A scheme that asks for a sown crop (or a catch crop after the harvest, a soil-cover rule) reads the
emergence marker; the inspector asks which rises the series shows and why none counts: no bare
soil before it (the field was green already), outside the emergence period, or not the year's
first (parameters without ``emergence.every_cycle``). :func:`explain_emergence` answers with the
marker's own compiled crossing test (``crop_phases.crossings``), so a crossing is an
``emergence`` exactly when the marker emitted one (tested on real plots, as ``mowing_explain`` is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from cbm_tasks.markers import crop_phases
from cbm_tasks.markers.crop_phases import emergence_confidence, emergence_day
from cbm_tasks.markers.mowing_explain import failed_tests, write_verdicts
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import prepare
from cbm_tasks.markers.series import SeriesTable, day_to_date

__all__ = ["CROSSING_TESTS", "CrossingVerdict", "EmergenceExplanation", "explain_emergence"]

CROSSING_TESTS = {
    crop_phases.NO_BARE_BEFORE: "no bare soil (NDVI below bare_soil.max_ndvi) before it since the last emergence",
    crop_phases.OUT_OF_EMERGENCE_PERIOD: "outside the emergence period (emergence.first_doy .. last_doy)",
    crop_phases.AFTER_FIRST: "after the year's first emergence (emergence.every_cycle off)",
}


@dataclass(frozen=True, slots=True)
class CrossingVerdict:
    """One rise of NDVI through ``emergence.ndvi_threshold`` between two used observations, judged.

    ``main_date`` is the interpolated day of the crossing; ``confidence`` falls with the gap between
    the two images (NaN when not an emergence); ``verdict`` is ``emergence`` or ``not an emergence``
    with the ``failed`` tests.
    """

    start_date: str
    ndvi_before: float
    end_date: str
    ndvi_after: float
    main_date: str
    confidence: float
    verdict: str
    failed: str


@dataclass(frozen=True, slots=True)
class EmergenceExplanation:
    """The NDVI rises through the emergence threshold of one parcel, with the parameters that judged them."""

    parcel_id: str
    params_hash: str
    threshold: float
    crossings: list[CrossingVerdict]

    def write(self, stream: TextIO) -> None:
        """Write the crossings as text lines, as ``cbm markers explain --marker emergence`` prints them."""
        stream.write(f"parcel {self.parcel_id}: {len(self.crossings)} rises of NDVI through {self.threshold:.2f}; "
                     f"marker parameters {self.params_hash[:12]}\n")
        for c in self.crossings:
            confidence = "" if np.isnan(c.confidence) else f" confidence {c.confidence:.2f}"
            failed = f" ({c.failed})" if c.failed else ""
            stream.write(f"  {c.start_date} -> {c.end_date}  NDVI {c.ndvi_before:.2f} -> {c.ndvi_after:.2f}  crossed "
                         f"{c.main_date}{confidence}: {c.verdict}{failed}\n")

    def write_csv(self, path: Path) -> None:
        """Write the crossings as CSV (one row per crossing, the columns of :class:`CrossingVerdict`)."""
        write_verdicts(path, self.parcel_id, CrossingVerdict, self.crossings)


def explain_emergence(series: SeriesTable, parcel_id: str, params: MarkerParams, *,
                      year: int | None = None) -> EmergenceExplanation:
    """Judge every upward crossing of the emergence threshold of *parcel_id* (per calendar year, as the marker).

    Args:
        series: time series holding the parcel (a file or a database read).
        parcel_id: the parcel.
        params: marker parameters (sections ``emergence`` and ``bare_soil``), the same that computed its events.
        year: only this calendar year (None: every year of the series).

    Raises:
        NotFoundError: *parcel_id* is not in *series*.
    """
    s2 = prepare(series.one_parcel(parcel_id), params).s2
    threshold = params.get("emergence", "ndvi_threshold")
    bare_max = params.get("bare_soil", "max_ndvi")
    first, last = params.get("emergence", "first_doy"), params.get("emergence", "last_doy")
    every_cycle = params.get("emergence", "every_cycle") > 0
    doy = s2.doy.astype(np.float64)
    cross_k, cross_failed = np.empty(len(s2.day), np.int64), np.empty(len(s2.day), np.int64)
    crossings = []
    for this_year in sorted(set(s2.year[s2.valid].tolist())):
        if year is not None and this_year != year:
            continue
        idx = np.flatnonzero(s2.valid & (s2.year == this_year)).astype(np.int64)
        m = crop_phases.crossings(len(idx), idx, doy, s2.ndvi, bare_max, threshold, first, last, every_cycle, cross_k,
                       cross_failed)
        for k, failed in zip(cross_k[:m], cross_failed[:m], strict=True):
            r0, r = idx[k - 1], idx[k]
            crossings.append(CrossingVerdict(
                day_to_date(s2.day[r0]), float(s2.ndvi[r0]), day_to_date(s2.day[r]), float(s2.ndvi[r]),
                day_to_date(emergence_day(s2.day[r0], s2.day[r], s2.ndvi[r0], s2.ndvi[r], threshold)),
                float("nan") if failed else float(emergence_confidence(s2.day[r] - s2.day[r0])),
                "not an emergence" if failed else "emergence",
                failed_tests(CROSSING_TESTS, int(failed))))
    return EmergenceExplanation(str(parcel_id), params.hash, threshold, crossings)
