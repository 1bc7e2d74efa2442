"""Score a marker's events (from a time-series file, or stored in the database) against ground truth.

``cbm markers validate --timeseries FILE`` runs the markers exactly as ``cbm markers run`` does (the same
engine, parameters and sensors: the events it scores are the events ``run`` writes; :func:`file_predictions`),
``--aoi A --year Y`` takes the events stored in the database, each parcel's from its current marker run
(``report.decisions.stored_predictions``: the events its traffic lights were decided on), and :func:`score`
compares one marker's main dates with dated ground truth (:mod:`cbm_tasks.markers.truth`: field checks, surveys,
camera-verified plots) with the MODCiX protocol of :mod:`cbm_tasks.markers.validation`, with bootstrap
intervals over the parcels. Before an agency trusts the shipped defaults (or its own parameter file) on its
grasslands, it scores them here on a few hundred checked parcel-seasons of its own.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from cbm_tasks.markers.engine import run_markers
from cbm_tasks.markers.miss_reasons import explain_lines
from cbm_tasks.markers.mowing_explain import MowingExplanation
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import SeriesTable
from cbm_tasks.markers.truth import GroundTruth
from cbm_tasks.markers.validation import (
    TOLERANCE_DAYS,
    Match,
    Predictions,
    Score,
    bootstrap_lines,
    false_events,
    matches,
    missed_events,
    score_lines,
    sensors_text,
    wilson,
)
from cbm_tasks.markers.writer import write_csv, write_json

__all__ = ["MATCH_COLUMNS", "VARY_COLUMNS", "MarkerValidation", "file_predictions", "score", "variation_rows",
           "with_miss_reasons"]

MATCH_COLUMNS = ("parcel_id", "outcome", "true_date", "predicted_date", "error_days", "confidence", "reason")
VARY_COLUMNS = ("value", "parameters_hash", "detected", "hits", "missed", "false", "precision", "recall", "f1",
                "f1_low", "f1_high", "negatives_clean_share", "median_error_days")


def file_predictions(series: SeriesTable, params: MarkerParams, marker: str, *, source: str,
                     use_s1: bool = True) -> Predictions:
    """Run every marker on *series* as ``cbm markers run`` does and keep *marker*'s events."""
    events: dict[str, list[date]] = {}
    confidence: dict[tuple[str, date], float] = {}
    for row in run_markers(series, params, use_s1=use_s1).rows():
        if row.marker == marker:
            when = date.fromisoformat(row.main_date)
            events.setdefault(row.parcel_id, []).append(when)
            confidence[(row.parcel_id, when)] = row.confidence
    return Predictions(marker, events, confidence, frozenset(series.parcel_ids.tolist()), source,
                       f"parameters version {params.version} hash {params.hash[:12]}, {sensors_text(use_s1)}",
                       {"parameters_version": params.version, "parameters_hash": params.hash, "sentinel_1": use_s1})


@dataclass(frozen=True, slots=True)
class MarkerValidation:
    """A marker's events scored against ground truth.

    Attributes:
        truth: the ground truth scored against.
        predictions: the events scored.
        score: counts of the scoring (:class:`~cbm_tasks.markers.validation.Score`).
        intervals: figure -> (low, high) bootstrap interval (:func:`~cbm_tasks.markers.validation.bootstrap_intervals`).
        lines: every hit, miss and false detection.
        unobserved: scored parcels the marker was not computed for (their true events are misses).
        tolerance_days: largest date difference of a hit.
        miss_reasons: (parcel id, true date) -> why it was missed (mowing, :func:`with_miss_reasons`; else empty).
        false_falls: (parcel id, detected date) -> the fall behind a false detection (likewise).
    """

    truth: GroundTruth
    predictions: Predictions
    score: Score
    intervals: dict[str, tuple[float, float]]
    lines: list[Match]
    unobserved: tuple[str, ...]
    tolerance_days: int
    miss_reasons: dict[tuple[str, date], str] = field(default_factory=dict)
    false_falls: dict[tuple[str, date], str] = field(default_factory=dict)

    def summary(self) -> str:
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
        out = [f"{marker} marker of {self.predictions.source} against ground truth {self.truth.source}",
               f"{self.predictions.described}; a hit is within +-{self.tolerance_days} days "
               "(MODCiX: matched one to one per parcel)",
               f"parcels scored: {len(self.truth.parcels)}"
               + (f" ({len(self.unobserved)} without markers computed (no observation, or not in the parcel set): "
                  "their true events count as missed)" if self.unobserved else ""),
               *self._id_hint(),
               f"true events {s.tp + s.fn}, detected {s.tp + s.fp}: hits {s.tp}, missed {s.fn}, false {s.fp}"
               + (f" ({self.false_on_negatives()} on parcels checked without {marker}; the others on parcels with "
                  "other dates: a cut the checks did not record, or a false one)" if s.negatives and s.fp else ""),
               f"precision {figure('precision', s.precision)}",
               f"recall    {figure('recall', s.recall)}",
               f"F1        {figure('f1', s.f1 if s.tp + s.fp + s.fn else math.nan)}",
               f"date error of the hits: median {s.median_error:.1f} days{signed} (positive: detected late)"
               if errors else "date error of the hits: - (no hit)"]
        if s.negatives:
            out.append(f"checked without {marker}: {s.negatives} parcel{'s' if s.negatives > 1 else ''}, "
                       f"{s.negatives_clean} of them without a detection = "
                       f"{figure('negatives_clean', s.negatives_clean / s.negatives, percent=True)}")
        if self.miss_reasons:
            out.append("missed, by cause (cbm markers explain --parcel ID shows the falls; matches.csv names each):")
            out.extend(f"  {n:4d}  {reason}" for reason, n in self.missed_by_cause().items())
        bins = self.by_confidence()
        if bins:
            out.append("detections by confidence: how many were hits (95 % Wilson interval)")
            for low, detected, hits in bins:
                share_low, share_high = wilson(hits, detected)
                out.append(f"  {low:.1f}-{low + 0.1:.1f}  {hits:4d} of {detected:4d} = {hits / detected:4.0%} "
                           f"({share_low:.0%}-{share_high:.0%})")
        out.append("intervals: 1000 bootstrap resamples of the parcels (seed 0)")
        return "\n".join(out) + "\n"

    def false_on_negatives(self) -> int:
        """False detections on parcels checked and found without the event (the sure ones)."""
        return sum(parcel in self.truth.negatives for parcel, _ in self.false())

    def missed(self) -> list[tuple[str, date]]:
        """(parcel id, true date) of every missed true event."""
        return missed_events(self.lines)

    def false(self) -> list[tuple[str, date]]:
        """(parcel id, detected date) of every false detection."""
        return false_events(self.lines)

    def missed_by_cause(self) -> dict[str, int]:
        """Cause -> missed events, most common first (empty without :attr:`miss_reasons`)."""
        return dict(Counter(self.miss_reasons.values()).most_common())

    def by_confidence(self) -> list[tuple[float, int, int]]:
        """(lower edge, detections, hits) of each tenth of confidence holding a detection on a scored parcel.

        What a confidence means on these checks: the share of hits per tenth tells where to put the
        ``min_confidence`` of a scheme rule (below it a found event lights yellow, LOW_CONFIDENCE).
        """
        counts: dict[int, list[int]] = {}
        for line in self.lines:
            if line.predicted_date is None:
                continue
            confidence = self.predictions.confidence[(line.parcel_id, line.predicted_date)]
            if math.isnan(confidence):  # a stored event without a confidence
                continue
            tenth = min(math.floor(round(confidence * 10, 6)), 9)  # 1.0 goes with 0.9-1.0
            counts.setdefault(tenth, [0, 0])[0] += 1
            counts[tenth][1] += line.outcome == "hit"
        return [(tenth / 10, detected, hits) for tenth, (detected, hits) in sorted(counts.items())]

    def _id_hint(self) -> list[str]:
        """A warning when no parcel of the truth was computed although others were: the ids differ."""
        if len(self.unobserved) < len(self.truth.parcels) or not self.predictions.computed:
            return []
        ours = ", ".join(repr(p) for p in sorted(self.predictions.computed)[:3])
        theirs = ", ".join(repr(p) for p in self.truth.parcels[:3])
        return [f"WARNING: no parcel of the ground truth has markers: ids there look like {theirs}, "
                f"in {self.predictions.source} like {ours}"]

    def figures(self) -> dict[str, object]:
        """The scores as a JSON-ready mapping (undefined figures None)."""
        s = self.score

        def number(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 4)

        return {
            "marker": self.truth.marker, "truth": self.truth.source, "events_of": self.predictions.source,
            **self.predictions.provenance, "tolerance_days": self.tolerance_days, "parcels": len(self.truth.parcels),
            "parcels_without_observations": len(self.unobserved), "true_events": s.tp + s.fn,
            "detected": s.tp + s.fp, "hits": s.tp, "missed": s.fn, "false": s.fp,
            "precision": number(s.precision), "recall": number(s.recall),
            "f1": number(s.f1) if s.tp + s.fp + s.fn else None, "median_error_days": number(s.median_error),
            "false_on_negatives": self.false_on_negatives(), "negatives": s.negatives,
            "negatives_clean": s.negatives_clean,
            "intervals_95": {name: [number(low), number(high)] for name, (low, high) in self.intervals.items()},
            "by_confidence": [{"confidence_from": low, "confidence_to": round(low + 0.1, 1), "detected": detected,
                               "hits": hits, "hit_share": number(hits / detected),
                               "hit_share_95": [number(v) for v in wilson(hits, detected)]}
                              for low, detected, hits in self.by_confidence()],
            **({"missed_by_cause": self.missed_by_cause()} if self.miss_reasons else {}),
        }

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write ``out/matches.csv`` and ``out/scores.json``, each whole or not at all; return their paths.

        matches.csv has MATCH_COLUMNS, one line per hit, miss (with its cause, where known) and false detection
        (with its fall); scores.json :meth:`figures`.
        """
        out.mkdir(parents=True, exist_ok=True)
        confidence = self.predictions.confidence
        rows = ((m.parcel_id, m.outcome, m.true_date.isoformat() if m.true_date else "",
                 m.predicted_date.isoformat() if m.predicted_date else "",
                 "" if m.error_days is None else m.error_days,
                 "" if m.predicted_date is None else f"{confidence[(m.parcel_id, m.predicted_date)]:.3f}",
                 self.miss_reasons.get((m.parcel_id, m.true_date), "") if m.true_date is not None else
                 self.false_falls.get((m.parcel_id, m.predicted_date), "") if m.predicted_date is not None else "")
                for m in self.lines)
        write_csv(out / "matches.csv", MATCH_COLUMNS, rows)
        scores = out / "scores.json"
        write_json(scores, self.figures())
        return out / "matches.csv", scores


def score(predictions: Predictions, truth: GroundTruth, *, tolerance_days: int = TOLERANCE_DAYS) -> MarkerValidation:
    """Score *predictions* against *truth* (of the same marker) over the truth's parcels.

    Raises:
        ValueError: the two are of different markers.
    """
    if predictions.marker != truth.marker:
        raise ValueError(f"events of {predictions.marker!r} scored against ground truth of {truth.marker!r}")
    # one matching serves the score, its intervals and matches.csv (truth.parcels holds each parcel once)
    lines = matches(predictions.events, truth.events, truth.parcels, tolerance_days=tolerance_days)
    return MarkerValidation(
        truth, predictions, score_lines(lines, predictions.events, truth.parcels, negatives=truth.negatives),
        bootstrap_lines(lines, predictions.events, truth.parcels, negatives=truth.negatives), lines,
        tuple(parcel for parcel in truth.parcels if parcel not in predictions.computed), tolerance_days)


def with_miss_reasons(result: MarkerValidation,
                      explain: Callable[[str], tuple[MowingExplanation, MarkerParams] | None]) -> MarkerValidation:
    """*result* with the cause of each miss and the fall behind each false detection.

    Of the mowing marker: :mod:`cbm_tasks.markers.miss_reasons` reads both in the marker's own tests.

    *explain(parcel id)*: the parcel's mowing explanation and the parameters that judged it, None for a parcel
    without markers computed.

    Raises:
        ValueError: *result* scores another marker.
    """
    if result.truth.marker != "mowing":
        raise ValueError(f"causes of misses are known for the mowing marker, not {result.truth.marker!r}")
    computed = result.predictions.computed
    reasons, falls = explain_lines(result.missed(), result.false(),
                                   lambda parcel: explain(parcel) if parcel in computed else None,
                                   tolerance_days=result.tolerance_days)
    return replace(result, miss_reasons=reasons, false_falls=falls)


def variation_rows(results: list[tuple[float, MarkerValidation]]) -> list[tuple[object, ...]]:
    """One row of VARY_COLUMNS per value of a varied parameter (``cbm markers validate --vary``)."""
    rows: list[tuple[object, ...]] = []
    for value, result in results:
        f = result.figures()
        negatives = result.score.negatives
        rows.append((f"{value:g}", str(f["parameters_hash"])[:12], f["detected"], f["hits"], f["missed"], f["false"],
                     f["precision"], f["recall"], f["f1"], *(round(v, 4) for v in result.intervals["f1"]),
                     round(result.score.negatives_clean / negatives, 4) if negatives else None,
                     f["median_error_days"]))
    return rows
