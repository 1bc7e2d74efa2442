"""Score a marker's events on a time-series file against the agency's own ground truth.

``cbm markers validate`` runs the markers exactly as ``cbm markers run`` does (the same engine, parameters
and sensors: the events it scores are the events ``run`` writes) and scores one marker's main dates against
dated ground truth (:mod:`cbm_tasks.markers.truth`: field checks, surveys, camera-verified plots) with the
MODCiX protocol of :mod:`cbm_tasks.markers.validation`, with bootstrap intervals over the parcels. Before an
agency trusts the shipped defaults (or its own parameter file) on its grasslands, it scores them here on a
few hundred checked parcel-seasons of its own.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from cbm_tasks.markers.engine import run_markers
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import SeriesTable
from cbm_tasks.markers.truth import GroundTruth
from cbm_tasks.markers.validation import TOLERANCE_DAYS, Match, Score, bootstrap_intervals, match_events, matches
from cbm_tasks.markers.writer import write_csv

__all__ = ["MATCH_COLUMNS", "MarkerValidation", "validate_marker"]

MATCH_COLUMNS = ("parcel_id", "outcome", "true_date", "predicted_date", "error_days", "confidence")


@dataclass(frozen=True, slots=True)
class MarkerValidation:
    """A marker's events scored against ground truth.

    Attributes:
        truth: the ground truth scored against.
        score: counts of the scoring (:class:`~cbm_tasks.markers.validation.Score`).
        intervals: figure -> (low, high) bootstrap interval (:func:`bootstrap_intervals`).
        lines: every hit, miss and false detection.
        confidence: (parcel id, main date) -> confidence of each detected event.
        unobserved: scored parcels the time series has no row of (their true events are misses).
        params: the marker parameters of the run.
        use_s1: whether Sentinel-1 was used.
        tolerance_days: largest date difference of a hit.
    """

    truth: GroundTruth
    score: Score
    intervals: dict[str, tuple[float, float]]
    lines: list[Match]
    confidence: dict[tuple[str, date], float] = field(repr=False)
    unobserved: tuple[str, ...]
    params: MarkerParams
    use_s1: bool
    tolerance_days: int

    def summary(self, series_name: str) -> str:
        """The scores as text: counts, precision / recall / F1 with intervals, date error, negatives kept clean."""
        s, marker = self.score, self.truth.marker

        def figure(name: str, value: float, percent: bool = False) -> str:
            low, high = self.intervals[name]
            if math.isnan(value):
                return "-"
            if percent:
                return f"{value:.0%} (95 % interval {low:.0%}-{high:.0%})"
            return f"{value:.2f} (95 % interval {low:.2f}-{high:.2f})"

        errors = [line.error_days for line in self.lines if line.error_days is not None]
        signed = f", mean signed {statistics.fmean(errors):+.1f}" if errors else ""
        out = [f"{marker} marker of {series_name} against ground truth {self.truth.source}",
               f"parameters version {self.params.version} hash {self.params.hash[:12]}, "
               f"{'Sentinel-2, and Sentinel-1 where the series has it' if self.use_s1 else 'Sentinel-2 only'}"
               + f"; a hit is within +-{self.tolerance_days} days (MODCiX: matched one to one per parcel)",
               f"parcels scored: {len(self.truth.parcels)}"
               + (f" ({len(self.unobserved)} without any observation in the series: their true events count as missed)"
                  if self.unobserved else ""),
               f"true events {s.tp + s.fn}, detected {s.tp + s.fp}: hits {s.tp}, missed {s.fn}, false {s.fp}",
               f"precision {figure('precision', s.precision)}",
               f"recall    {figure('recall', s.recall)}",
               f"F1        {figure('f1', s.f1 if s.tp + s.fp + s.fn else math.nan)}",
               f"date error of the hits: median {s.median_error:.1f} days{signed} (positive: detected late)"
               if errors else "date error of the hits: - (no hit)"]
        if s.negatives:
            out.append(f"checked without {marker}: {s.negatives} parcel{'s' if s.negatives > 1 else ''}, "
                       f"{s.negatives_clean} of them without a detection = "
                       f"{figure('negatives_clean', s.negatives_clean / s.negatives, percent=True)}")
        out.append("intervals: 1000 bootstrap resamples of the parcels (seed 0)")
        return "\n".join(out) + "\n"

    def figures(self) -> dict[str, object]:
        """The scores as a JSON-ready mapping (undefined figures None)."""
        s = self.score

        def number(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 4)

        return {
            "marker": self.truth.marker, "truth": self.truth.source, "parameters_version": self.params.version,
            "parameters_hash": self.params.hash, "sentinel_1": self.use_s1,
            "tolerance_days": self.tolerance_days, "parcels": len(self.truth.parcels),
            "parcels_without_observations": len(self.unobserved), "true_events": s.tp + s.fn,
            "detected": s.tp + s.fp, "hits": s.tp, "missed": s.fn, "false": s.fp,
            "precision": number(s.precision), "recall": number(s.recall),
            "f1": number(s.f1) if s.tp + s.fp + s.fn else None, "median_error_days": number(s.median_error),
            "negatives": s.negatives, "negatives_clean": s.negatives_clean,
            "intervals_95": {name: [number(low), number(high)] for name, (low, high) in self.intervals.items()},
        }

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write ``out/matches.csv`` and ``out/scores.json``, each whole or not at all; return their paths.

        matches.csv has MATCH_COLUMNS, one line per hit, miss and false detection; scores.json :meth:`figures`.
        """
        out.mkdir(parents=True, exist_ok=True)
        rows = ((m.parcel_id, m.outcome, m.true_date.isoformat() if m.true_date else "",
                 m.predicted_date.isoformat() if m.predicted_date else "",
                 "" if m.error_days is None else m.error_days,
                 "" if m.predicted_date is None else f"{self.confidence[(m.parcel_id, m.predicted_date)]:.3f}")
                for m in self.lines)
        write_csv(out / "matches.csv", MATCH_COLUMNS, rows)
        scores = out / "scores.json"
        partial = scores.with_name(".scores.json.partial")
        partial.write_text(json.dumps(self.figures(), indent=2) + "\n")
        partial.replace(scores)
        return out / "matches.csv", scores


def validate_marker(series: SeriesTable, truth: GroundTruth, params: MarkerParams, *, use_s1: bool = True,
                    tolerance_days: int = TOLERANCE_DAYS) -> MarkerValidation:
    """Run the markers on *series* and score ``truth.marker``'s events against *truth*.

    Args:
        series: the time series (every parcel of it is computed; the truth's parcels are scored).
        truth: ground truth of one marker (:func:`cbm_tasks.markers.truth.read_truth`).
        params: marker parameters.
        use_s1: use Sentinel-1 where the series has it (False: the Sentinel-2-only variant).
        tolerance_days: largest date difference of a hit.
    """
    predicted: dict[str, list[date]] = {}
    confidence: dict[tuple[str, date], float] = {}
    for row in run_markers(series, params, use_s1=use_s1).rows():
        when = date.fromisoformat(row.main_date)
        if row.marker == truth.marker:
            predicted.setdefault(row.parcel_id, []).append(when)
            confidence[(row.parcel_id, when)] = row.confidence
    events = truth.events
    observed = set(series.parcel_ids.tolist())
    return MarkerValidation(
        truth, match_events(predicted, events, truth.parcels, tolerance_days=tolerance_days,
                            negatives=set(truth.negatives)),
        bootstrap_intervals(predicted, events, truth.parcels, negatives=truth.negatives,
                            tolerance_days=tolerance_days),
        matches(predicted, events, truth.parcels, tolerance_days=tolerance_days), confidence,
        tuple(parcel for parcel in truth.parcels if parcel not in observed), params, use_s1, tolerance_days)
