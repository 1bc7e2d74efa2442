"""Event-level validation of markers against ground truth (the MODCiX protocol).

Per parcel, predicted and true event dates are matched one to one within +-``tolerance_days``
(closest pairs first); matched pairs are true positives, unmatched predictions false positives
(every prediction on a parcel without true events included), unmatched truths false negatives.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

__all__ = ["TOLERANCE_DAYS", "Score", "match_events", "unmatched"]

TOLERANCE_DAYS = 12  # MODCiX: a detected mowing within +-12 days of the true one is a hit


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
    tp = fp = fn = 0
    errors: list[int] = []
    clean = 0
    for parcel in parcels:
        pred, true = list(predicted.get(parcel, [])), list(truth.get(parcel, []))
        distances = _match(pred, true, tolerance_days)
        errors.extend(distances.values())
        tp += len(distances)
        fp += len(pred) - len(distances)
        fn += len(true) - len(distances)
        if negatives is not None and parcel in negatives and not pred:
            clean += 1
    return Score(tp, fp, fn, tuple(errors), len(negatives or ()), clean)


def unmatched(predicted: Mapping[str, list[date]], truth: Mapping[str, list[date]], parcels: Iterable[str], *,
              tolerance_days: int = TOLERANCE_DAYS) -> tuple[dict[str, list[date]], dict[str, list[date]]]:
    """Return the false negatives and the false positives of :func:`match_events`: parcel -> dates."""
    missed: dict[str, list[date]] = {}
    false: dict[str, list[date]] = {}
    for parcel in parcels:
        pred, true = list(predicted.get(parcel, [])), list(truth.get(parcel, []))
        pairs = _match(pred, true, tolerance_days)
        hit_p, hit_t = {i for i, _ in pairs}, {j for _, j in pairs}
        if len(hit_t) < len(true):
            missed[parcel] = [when for j, when in enumerate(true) if j not in hit_t]
        if len(hit_p) < len(pred):
            false[parcel] = [when for i, when in enumerate(pred) if i not in hit_p]
    return missed, false


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
