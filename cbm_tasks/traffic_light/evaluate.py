"""Traffic lights: one colour per parcel and aid scheme from the marker events and the scheme rules.

Per rule (see ``scheme_rules.yaml``), with the events whose main date falls in the rule's window
and the clear Sentinel-2 observations in it:

============ ======================================= ==========================================
require      evidence                                colour, reason
============ ======================================= ==========================================
present      event with confidence >= min_confidence green, EVENT_FOUND
absent       event with confidence >= min_confidence red, EVENT_IN_BANNED_PERIOD
either       fewer than min_clear_obs clear obs      yellow, NO_DATA
either       a gap longer than max_gap_days          yellow, GAP
either       only events below min_confidence        yellow, LOW_CONFIDENCE
present      none of the above                       red, NO_EVENT
absent       none of the above                       green, NO_EVENT
============ ======================================= ==========================================

A confirming event wins over missing data (a mowing seen is a mowing done); a scheme takes the
worst colour of its rules (red > yellow > green) with that rule's reason and id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np

from cbm_tasks.markers.engine import MARKERS, MarkerResult
from cbm_tasks.markers.series import group_offsets
from cbm_tasks.traffic_light.rules import Rule, SchemeRules

__all__ = ["COLOURS", "REASONS", "TrafficLight", "describe", "evaluate_lights", "evaluate_rule"]

log = logging.getLogger(__name__)

COLOURS = ("green", "yellow", "red")
REASONS = ("EVENT_FOUND", "NO_EVENT", "EVENT_IN_BANNED_PERIOD", "NO_DATA", "GAP", "LOW_CONFIDENCE",
           "NO_SCHEME")
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class TrafficLight:
    """The light of one parcel and scheme, with what decided it.

    Attributes:
        parcel_id, scheme, colour, reason: as written to traffic_lights.csv.
        rule_id: the rule that set the colour (the scheme's worst).
        year: the season evaluated.
        event_seq: ``seq`` of the deciding event of the rule's marker, 0 when none.
        n_clear_obs: clear S2 observations in the rule's window.
        longest_gap_days: longest gap between clear observations in the window (edges included).
    """

    parcel_id: str
    scheme: str
    colour: str
    reason: str
    rule_id: str
    year: int
    event_seq: int
    n_clear_obs: int
    longest_gap_days: float


@dataclass(frozen=True, slots=True)
class _Outcome:
    colour: str
    reason: str
    event_seq: int
    n_clear: int
    gap: float


def _days(when: date) -> float:
    return float((when - _EPOCH).days)


def evaluate_rule(rule: Rule, year: int, *, clear_day: np.ndarray, event_main: np.ndarray,
                  event_confidence: np.ndarray, event_seq: np.ndarray) -> _Outcome:
    """Evaluate one rule for one parcel (arrays of that parcel; events of the rule's marker only)."""
    first, last = rule.window(year)
    lo, hi = _days(first), _days(last) + 1.0  # the window covers its last day whole
    inside = clear_day[(clear_day >= lo) & (clear_day < hi)]
    edges = np.concatenate(([lo], inside, [hi]))
    gap = float(np.max(np.diff(edges)))
    in_window = (event_main >= lo) & (event_main < hi)
    best_seq, best_conf = 0, -1.0
    for conf, seq in zip(event_confidence[in_window], event_seq[in_window], strict=True):
        if conf > best_conf:
            best_conf, best_seq = float(conf), int(seq)
    found = best_conf >= rule.min_confidence
    if found:
        colour, reason = ("green", "EVENT_FOUND") if rule.require == "present" else ("red", "EVENT_IN_BANNED_PERIOD")
    elif len(inside) < rule.min_clear_obs:
        colour, reason = "yellow", "NO_DATA"
    elif gap > rule.max_gap_days:
        colour, reason = "yellow", "GAP"
    elif best_seq:
        colour, reason = "yellow", "LOW_CONFIDENCE"
    else:
        colour, reason = ("red", "NO_EVENT") if rule.require == "present" else ("green", "NO_EVENT")
    return _Outcome(colour, reason, best_seq, len(inside), gap)


def _parcel_year(clear_day: np.ndarray, fallback: int) -> int:
    if len(clear_day) == 0:
        return fallback
    years = (clear_day.astype("int64").astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970)
    values, counts = np.unique(years, return_counts=True)
    return int(values[np.argmax(counts)])


def evaluate_lights(result: MarkerResult, rules: SchemeRules, *, crops: Mapping[str, str | None] | None = None,
                    aoi: str | None = None, year: int | None = None) -> Iterator[TrafficLight]:
    """Yield the traffic light of every parcel of *result* for each of its schemes.

    Args:
        result: marker events (:func:`cbm_tasks.markers.engine.run_markers`).
        rules: validated scheme rules.
        crops: parcel id -> crop code; a parcel missing here (or None for all) gets the
            rules' ``unknown_crop`` schemes.
        aoi: AOI whose crop mapping applies (``default`` when it has none).
        year: season year of the windows; None = per parcel, the year of most of its clear
            observations.

    Yields:
        Lights ordered by parcel id (as in *result*) and scheme name. A parcel with no scheme
        gets no light.
    """
    t0 = time.perf_counter()
    n_parcels = len(result.parcel_ids)
    event_offsets = group_offsets(result.parcel, n_parcels)
    fallback = year if year is not None else _parcel_year(result.clear_day, 1970)
    counts = dict.fromkeys(COLOURS, 0)
    for p in range(n_parcels):
        parcel_id = str(result.parcel_ids[p])
        crop = None if crops is None else crops.get(parcel_id)
        schemes = sorted(rules.schemes_for(crop, aoi=aoi))
        if not schemes:
            continue
        clear = result.clear_day[result.clear_offsets[p]:result.clear_offsets[p + 1]]
        season = year if year is not None else _parcel_year(clear, fallback)
        ev = slice(event_offsets[p], event_offsets[p + 1])
        marker, main, conf, seq = result.marker[ev], result.main[ev], result.confidence[ev], result.seq[ev]
        for name in schemes:
            worst: tuple[int, Rule, _Outcome] | None = None
            for rule in rules.schemes[name].rules:
                pick = marker == MARKERS.index(rule.marker)
                outcome = evaluate_rule(rule, season, clear_day=clear, event_main=main[pick],
                                        event_confidence=conf[pick], event_seq=seq[pick])
                rank = COLOURS.index(outcome.colour)
                if worst is None or rank > worst[0]:
                    worst = (rank, rule, outcome)
            assert worst is not None  # a scheme has at least one rule (validated)
            _, rule, outcome = worst
            counts[outcome.colour] += 1
            yield TrafficLight(parcel_id, name, outcome.colour, outcome.reason, rule.rule_id, season,
                               outcome.event_seq, outcome.n_clear, round(outcome.gap, 1))
    log.info("traffic lights parcels=%d green=%d yellow=%d red=%d rules=%s@v%d seconds=%.3f", n_parcels,
             counts["green"], counts["yellow"], counts["red"], rules.source, rules.version, time.perf_counter() - t0)


def describe(light: TrafficLight) -> str:
    """One sentence for an inspector: the colour, the reason and the rule."""
    return (f"parcel {light.parcel_id}, scheme {light.scheme} {light.year}: {light.colour} ({light.reason}, rule "
            f"{light.rule_id}; {light.n_clear_obs} clear observations, longest gap {light.longest_gap_days:g} d"
            + (f", event #{light.event_seq}" if light.event_seq else "") + ")")

