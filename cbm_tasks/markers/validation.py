"""Event-level validation of markers against ground truth (the MODCiX protocol).

Per parcel, predicted and true event dates are matched one to one within +-``tolerance_days``
(closest pairs first); matched pairs are true positives, unmatched predictions false positives
(every prediction on a parcel without true events included), unmatched truths false negatives.

How sure a score is: :func:`bootstrap_intervals` resamples the parcels (not the events: the events of one
parcel share its observations and its errors) and gives percentile intervals of precision, recall, F1 and
the share of surveyed negatives without a detection. On ten parcels (JRC's SALMS example) an F1 of 0.5 is
compatible with anything from ~0.3 to ~0.7; a validation set needs hundreds of parcel-seasons.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

__all__ = ["TOLERANCE_DAYS", "Match", "Predictions", "Score", "bootstrap_intervals", "bootstrap_lines", "false_events",
           "match_events", "matches", "missed_events", "score_lines", "sensors_text", "unmatched", "wilson"]

TOLERANCE_DAYS = 12  # MODCiX: a detected mowing within +-12 days of the true one is a hit


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (NaN, NaN) when *n* is 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Score:
    """Counts of one scoring: true / false positives, false negatives, date errors, negatives kept clean."""

    tp: int
    fp: int
    fn: int
    errors: tuple[int, ...]
    negatives: int = 0
    negatives_clean: int = 0

    @property
    def precision(self) -> float:
        """Tp / (tp + fp); NaN without predictions."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        """Tp / (tp + fn); NaN without true events."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def median_error(self) -> float:
        """Median absolute date error of the matched pairs (days)."""
        return float(statistics.median(self.errors)) if self.errors else float("nan")

    def row(self, name: str) -> str:
        """One Markdown table row: name, true, predicted, P, R, F1, median error, clean negatives."""
        clean = f"{self.negatives_clean}/{self.negatives} = {self.negatives_clean / self.negatives:.0%}" \
            if self.negatives else "-"
        def cell(value: float, digits: int) -> str:  # "-" where the figure is undefined (no true or no predicted event)
            return "-" if math.isnan(value) else f"{value:.{digits}f}"

        return (f"| {name} | {self.tp + self.fn} | {self.tp + self.fp} | {cell(self.precision, 2)} | "
                f"{cell(self.recall, 2)} | {cell(self.f1, 2)} | {cell(self.median_error, 1)} | {clean} |")


def match_events(predicted: Mapping[str, list[date]], truth: Mapping[str, list[date]],
                 parcels: Iterable[str], *, tolerance_days: int = TOLERANCE_DAYS,
                 negatives: set[str] | None = None) -> Score:
    """Score *predicted* against *truth* over *parcels* (module docstring).

    Args:
        predicted: parcel id -> predicted event dates.
        truth: parcel id -> true event dates.
        parcels: the parcels scored (others are ignored).
        tolerance_days: largest date difference of a hit.
        negatives: parcels known to have no event; the score counts those without any prediction.
    """
    parcels = list(parcels)
    return score_lines(matches(predicted, truth, parcels, tolerance_days=tolerance_days), predicted, parcels,
                       negatives=negatives)


def score_lines(lines: Iterable[Match], predicted: Mapping[str, list[date]], parcels: Iterable[str], *,
                negatives: set[str] | frozenset[str] | None = None) -> Score:
    """The :class:`Score` of the lines :func:`matches` gave for *parcels* (:func:`match_events` in two steps)."""
    outcomes: Counter[str] = Counter()
    errors: list[int] = []
    for line in lines:
        outcomes[line.outcome] += 1
        if line.error_days is not None:
            errors.append(abs(line.error_days))
    clean = sum(1 for parcel in parcels if negatives is not None and parcel in negatives and not predicted.get(parcel))
    return Score(outcomes["hit"], outcomes["false"], outcomes["missed"], tuple(errors), len(negatives or ()), clean)


def unmatched(predicted: Mapping[str, list[date]], truth: Mapping[str, list[date]], parcels: Iterable[str], *,
              tolerance_days: int = TOLERANCE_DAYS) -> tuple[dict[str, list[date]], dict[str, list[date]]]:
    """Return the false negatives and the false positives of :func:`match_events`: parcel -> dates."""
    lines = matches(predicted, truth, parcels, tolerance_days=tolerance_days)
    missed: dict[str, list[date]] = {}
    false: dict[str, list[date]] = {}
    for parcel, when in missed_events(lines):
        missed.setdefault(parcel, []).append(when)
    for parcel, when in false_events(lines):
        false.setdefault(parcel, []).append(when)
    return missed, false


def missed_events(lines: Iterable[Match]) -> list[tuple[str, date]]:
    """(parcel id, true date) of every missed true event among the lines :func:`matches` gave."""
    return [(line.parcel_id, line.true_date) for line in lines
            if line.true_date is not None and line.predicted_date is None]


def false_events(lines: Iterable[Match]) -> list[tuple[str, date]]:
    """(parcel id, detected date) of every false detection among the lines :func:`matches` gave."""
    return [(line.parcel_id, line.predicted_date) for line in lines
            if line.true_date is None and line.predicted_date is not None]


def _match(pred: list[date], true: list[date], tolerance_days: int) -> dict[tuple[int, int], int]:
    """One-to-one pairs (prediction, truth) within the tolerance, closest first -> their distance in days."""
    pairs = sorted((abs((p - t).days), i, j) for i, p in enumerate(pred) for j, t in enumerate(true))
    used_p: set[int] = set()
    used_t: set[int] = set()
    out: dict[tuple[int, int], int] = {}
    for distance, i, j in pairs:
        if distance > tolerance_days or i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        out[(i, j)] = distance
    return out


@dataclass(frozen=True, slots=True)
class Match:
    """One line of a scoring: a hit (both dates), a missed true event or a false detection."""

    parcel_id: str
    true_date: date | None
    predicted_date: date | None

    @property
    def outcome(self) -> str:
        """``hit``, ``missed`` or ``false``."""
        if self.true_date is None:
            return "false"
        return "missed" if self.predicted_date is None else "hit"

    @property
    def error_days(self) -> int | None:
        """Predicted minus true date of a hit, in days (negative: detected early)."""
        if self.true_date is None or self.predicted_date is None:
            return None
        return (self.predicted_date - self.true_date).days


def matches(predicted: Mapping[str, list[date]], truth: Mapping[str, list[date]], parcels: Iterable[str], *,
            tolerance_days: int = TOLERANCE_DAYS) -> list[Match]:
    """Every hit, miss and false detection of :func:`match_events`, by parcel and date."""
    out: list[Match] = []
    for parcel in parcels:
        pred, true = list(predicted.get(parcel, [])), list(truth.get(parcel, []))
        pairs = _match(pred, true, tolerance_days)
        hit_p, hit_t = {i for i, _ in pairs}, {j for _, j in pairs}
        lines = [Match(parcel, true[j], pred[i]) for i, j in pairs]
        lines += [Match(parcel, when, None) for j, when in enumerate(true) if j not in hit_t]
        lines += [Match(parcel, None, when) for i, when in enumerate(pred) if i not in hit_p]
        out.extend(sorted(lines, key=lambda m: (m.true_date or m.predicted_date or date.min)))
    return out


def bootstrap_intervals(predicted: Mapping[str, list[date]], truth: Mapping[str, list[date]], parcels: Iterable[str],
                        *, negatives: set[str] | frozenset[str] | None = None,
                        tolerance_days: int = TOLERANCE_DAYS, resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``precision``, ``recall``, ``f1`` and ``negatives_clean`` over resampled parcels.

    The parcels are drawn with replacement *resamples* times (seeded: the same call gives the same
    intervals); a figure undefined in a resample (no prediction, no negative) is left out of its
    interval, and a figure undefined in every resample has (NaN, NaN).
    """
    parcels = list(parcels)
    lines = matches(predicted, truth, dict.fromkeys(parcels), tolerance_days=tolerance_days)
    return bootstrap_lines(lines, predicted, parcels, negatives=negatives, resamples=resamples, level=level,
                           seed=seed)


def bootstrap_lines(lines: Iterable[Match], predicted: Mapping[str, list[date]], parcels: Iterable[str], *,
                    negatives: set[str] | frozenset[str] | None = None, resamples: int = 1000, level: float = 0.95,
                    seed: int = 0) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_intervals` of the lines :func:`matches` gave for *parcels* (each parcel once)."""
    parcels = list(parcels)
    negatives = negatives or set()
    per_parcel: dict[str, Counter[str]] = {}
    for line in lines:
        per_parcel.setdefault(line.parcel_id, Counter())[line.outcome] += 1
    counts = np.zeros((len(parcels), 5))  # tp, fp, fn, negative, negative without a detection
    for row, parcel in enumerate(parcels):
        tally, negative = per_parcel.get(parcel, Counter()), parcel in negatives
        counts[row] = (tally["hit"], tally["false"], tally["missed"], negative,
                       negative and not predicted.get(parcel))
    if not parcels:
        return {name: (math.nan, math.nan) for name in ("precision", "recall", "f1", "negatives_clean")}
    # drawn in chunks of at most ~1 M parcel draws: a country's checks (10^5 parcels) fit in memory, and the
    # stream of draws, so the intervals, are those of one draw of all resamples at once
    rng, n = np.random.default_rng(seed), len(parcels)
    sums = np.empty((resamples, counts.shape[1]))
    chunk = max(1, 1_000_000 // n)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        sums[start:start + size] = counts[rng.integers(0, n, (size, n))].sum(axis=1)
    tp, fp, fn, neg, clean = sums.T
    with np.errstate(divide="ignore", invalid="ignore"):
        figures = {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
                   "negatives_clean": clean / neg}
    tail = 50.0 * (1.0 - level)
    out: dict[str, tuple[float, float]] = {}
    for name, values in figures.items():
        values = values[np.isfinite(values)]
        out[name] = ((float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail)))
                     if len(values) else (math.nan, math.nan))
    return out


@dataclass(frozen=True, slots=True)
class Predictions:
    """The detected events of one marker, and what detected them.

    Attributes:
        marker: the marker.
        events: parcel id -> main dates of its events, sorted.
        confidence: (parcel id, main date) -> the event's confidence.
        computed: the parcels the marker was computed for (the series' parcels, or those with a marker run).
        source: what was scored, for the summary (``FILE``, or ``AOI YEAR in the database``).
        described: how the events were made (parameters, sensors; stored marker runs).
        provenance: the same as JSON-ready fields.
    """

    marker: str
    events: dict[str, list[date]]
    confidence: dict[tuple[str, date], float] = field(repr=False)
    computed: frozenset[str]
    source: str
    described: str
    provenance: dict[str, Any]


def sensors_text(use_s1: bool) -> str:
    """The sensors of a run, as the summary names them."""
    return "Sentinel-2, and Sentinel-1 where the series has it" if use_s1 else "Sentinel-2 only"
