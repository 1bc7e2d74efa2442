"""Traffic lights: one colour per parcel and aid scheme from the marker events and the scheme rules.

Per rule (see ``scheme_rules.yaml``), with the events in the rule's window (their main date in it,
or with ``in_window: any_day`` any day from their start to their end) and the clear Sentinel-2
observations in it:

An event counts when its confidence is >= min_confidence; ``min_events`` (present, default 1) and
``max_events`` (absent, default 0) set how many:

============ ============================================ ==========================================
require      evidence                                     colour, reason
============ ============================================ ==========================================
present      >= min_events events                         green, EVENT_FOUND
absent       > max_events events                          red, EVENT_IN_BANNED_PERIOD (max_events 0)
                                                          or TOO_MANY_EVENTS
either       fewer than min_clear_obs clear obs           yellow, NO_DATA
either       a gap longer than max_gap_days               yellow, GAP
either       weaker events that could change the count    yellow, LOW_CONFIDENCE
present      none of the above                            red, NO_EVENT (none) or TOO_FEW_EVENTS
absent       none of the above                            green, NO_EVENT (none) or EVENT_FOUND
============ ============================================ ==========================================

A confirming event wins over missing data (a mowing seen is a mowing done); a scheme takes the
worst colour of its rules (red > yellow > green) with that rule's reason and id.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np
from numba import njit

from cbm_tasks.markers.engine import MARKERS, MarkerResult
from cbm_tasks.markers.series import group_offsets
from cbm_tasks.traffic_light.rules import Rule, SchemeRules

__all__ = ["COLOURS", "REASONS", "TrafficLight", "describe", "evaluate_lights", "evaluate_rule"]

log = logging.getLogger(__name__)

COLOURS = ("green", "yellow", "red")
REASONS = ("EVENT_FOUND", "NO_EVENT", "EVENT_IN_BANNED_PERIOD", "NO_DATA", "GAP", "LOW_CONFIDENCE",
           "NO_SCHEME", "TOO_FEW_EVENTS", "TOO_MANY_EVENTS")
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


@njit(cache=True, nogil=True, inline="always")
def _in_window(start: float, main: float, end: float, any_day: bool, lo: float, hi: float) -> bool:
    """Whether an event lies in the window [lo, hi): its main day, or with *any_day* any day of start .. end."""
    if any_day:
        return start < hi and end >= lo
    return lo <= main < hi


@njit(cache=True, nogil=True)
def _window_kernel(clear_offsets: np.ndarray, clear_day: np.ndarray, event_offsets: np.ndarray,
                   event_marker: np.ndarray, event_start: np.ndarray, event_main: np.ndarray, event_end: np.ndarray,
                   event_conf: np.ndarray, event_seq: np.ndarray, marker: int, any_day: bool, min_conf: float,
                   owner: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per parcel-season i (of parcel ``owner[i]``), in its window [lo, hi): clear days, longest gap, events.

    Returns (clear observations, longest gap, events >= *min_conf*, all events, seq of the best event):
    the gap counts the window's edges; the best event is the rule marker's most confident one. An
    event is in the window by its main day, or with *any_day* by any day from its start to its end.
    """
    n = len(lo)
    n_clear = np.zeros(n, np.int32)
    gap = np.zeros(n, np.float64)
    n_strong = np.zeros(n, np.int32)
    n_any = np.zeros(n, np.int32)
    best_conf = np.full(n, -1.0)
    best_seq = np.zeros(n, np.int32)
    for i in range(n):
        if not np.isfinite(lo[i]):
            continue
        p = owner[i]
        previous = lo[i]
        for row in range(clear_offsets[p], clear_offsets[p + 1]):
            day = clear_day[row]
            if lo[i] <= day < hi[i]:
                gap[i] = max(gap[i], day - previous)
                previous = day
                n_clear[i] += 1
        gap[i] = max(gap[i], hi[i] - previous)
        for e in range(event_offsets[p], event_offsets[p + 1]):
            if event_marker[e] != marker or not _in_window(event_start[e], event_main[e], event_end[e], any_day,
                                                           lo[i], hi[i]):
                continue
            n_any[i] += 1
            if event_conf[e] >= min_conf:
                n_strong[i] += 1
            if event_conf[e] > best_conf[i]:
                best_conf[i] = event_conf[e]
                best_seq[i] = event_seq[e]
    return n_clear, gap, n_strong, n_any, best_seq


def _day_number(year: int, month_day: tuple[int, int]) -> float:
    month, day = month_day
    if (month, day) == (2, 29) and not calendar.isleap(year):
        day = 28  # a window edge on 29 February falls on the 28th in common years
    return float((date(year, month, day) - _EPOCH).days)


def _outcomes(rule: Rule, n_clear: np.ndarray, gap: np.ndarray, n_strong: np.ndarray,
              n_any: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour index (COLOURS) and reason index (REASONS) per parcel, as in the module's table."""
    green, yellow, red = (COLOURS.index(name) for name in ("green", "yellow", "red"))
    why = {name: REASONS.index(name) for name in REASONS}
    no_data = n_clear < rule.min_clear_obs
    long_gap = gap > rule.max_gap_days
    if rule.require == "present":
        decided = n_strong >= rule.min_events
        weak = n_any > n_strong  # events below min_confidence could make up the number
        decided_colour, decided_reason = green, why["EVENT_FOUND"]
        none_colour, none_reason = red, np.where(n_strong == 0, why["NO_EVENT"], why["TOO_FEW_EVENTS"])
    else:
        decided = n_strong > rule.max_events
        weak = n_any > rule.max_events  # events below min_confidence could break the limit
        decided_colour = red
        decided_reason = why["EVENT_IN_BANNED_PERIOD"] if rule.max_events == 0 else why["TOO_MANY_EVENTS"]
        # no event, or events within the limit
        none_colour, none_reason = green, np.where(n_strong == 0, why["NO_EVENT"], why["EVENT_FOUND"])
    colour = np.select([decided, no_data, long_gap, weak], [decided_colour, yellow, yellow, yellow], none_colour)
    reason = np.select([decided, no_data, long_gap, weak],
                       [decided_reason, why["NO_DATA"], why["GAP"], why["LOW_CONFIDENCE"]], none_reason)
    return colour, reason


def evaluate_rule(rule: Rule, year: int, *, clear_day: np.ndarray, event_main: np.ndarray,
                  event_confidence: np.ndarray, event_seq: np.ndarray, event_start: np.ndarray | None = None,
                  event_end: np.ndarray | None = None) -> _Outcome:
    """Evaluate one rule for one parcel (arrays of that parcel; events of the rule's marker only).

    *event_start* and *event_end* (default: the main days) matter for rules with ``in_window: any_day``.
    """
    main = np.asarray(event_main, np.float64)
    start = main if event_start is None else np.asarray(event_start, np.float64)
    end = main if event_end is None else np.asarray(event_end, np.float64)
    lo = np.array([_day_number(year, rule.window_start)])
    hi = np.array([_day_number(year, rule.window_end) + 1.0])  # the window covers its last day whole
    n_events = len(event_main)
    n_clear, gap, n_strong, n_any, seq = _window_kernel(
        np.array([0, len(clear_day)], np.int64), np.asarray(clear_day, np.float64), np.array([0, n_events], np.int64),
        np.zeros(n_events, np.int32), start, main, end, np.asarray(event_confidence, np.float64),
        np.asarray(event_seq, np.int32), 0, rule.in_window == "any_day", rule.min_confidence, np.zeros(1, np.int64),
        lo, hi)
    colour, reason = _outcomes(rule, n_clear, gap, n_strong, n_any)
    return _Outcome(COLOURS[int(colour[0])], REASONS[int(reason[0])], int(seq[0]), int(n_clear[0]), float(gap[0]))


def _seasons(result: MarkerResult, year: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Parcel-seasons to light: (parcel index, season year), sorted by parcel and year.

    With *year*: that season for every parcel. Without: every year in which the parcel has a clear
    observation (a file may hold several seasons); a parcel without any clear observation gets the
    year most clear observations of the input fall in, so that it is still lit (NO_DATA).
    """
    n_parcels = len(result.parcel_ids)
    if year is not None:
        return np.arange(n_parcels, dtype=np.int64), np.full(n_parcels, year, np.int64)
    days = np.floor(result.clear_day).astype(np.int64).astype("datetime64[D]")
    years = days.astype("datetime64[Y]").astype(np.int64) + 1970
    fallback = int(np.bincount(years - years.min()).argmax() + years.min()) if len(years) else 1970
    owner = np.repeat(np.arange(n_parcels, dtype=np.int64), np.diff(result.clear_offsets))
    lit = np.zeros(n_parcels, bool)
    lit[owner] = True
    dark = np.flatnonzero(~lit)
    pairs = np.unique(np.concatenate([np.stack([owner, years], axis=1),
                                      np.stack([dark, np.full(len(dark), fallback)], axis=1)]), axis=0)
    return pairs[:, 0].copy(), pairs[:, 1].copy()  # rows sorted by parcel, then year


def evaluate_lights(result: MarkerResult, rules: SchemeRules, *, crops: Mapping[str, str | None] | None = None,
                    aoi: str | None = None, year: int | None = None) -> Iterator[TrafficLight]:
    """Yield the traffic light of every parcel of *result* for each of its schemes.

    Args:
        result: marker events (:func:`cbm_tasks.markers.engine.run_markers`).
        rules: validated scheme rules.
        crops: parcel id -> crop code; a parcel missing here (or None for all) gets the
            rules' ``unknown_crop`` schemes.
        aoi: AOI whose crop mapping applies (``default`` when it has none).
        year: season year of the windows; None = per parcel, every year it has clear
            observations in (one light per parcel, season and scheme).

    Yields:
        Lights ordered by parcel id (as in *result*), season and scheme name. A parcel with no
        scheme gets no light.
    """
    t0 = time.perf_counter()
    n_parcels = len(result.parcel_ids)
    parcel_ids = [str(p) for p in result.parcel_ids]
    by_crop: dict[str | None, list[str]] = {}  # a country has ~10^6 parcels and ~10^2 crop codes
    schemes_of = []
    for pid in parcel_ids:
        crop = None if crops is None else crops.get(pid)
        if crop not in by_crop:
            by_crop[crop] = sorted(rules.schemes_for(crop, aoi=aoi))
        schemes_of.append(by_crop[crop])
    owner, years = _seasons(result, year)
    event_offsets = group_offsets(result.parcel, n_parcels)
    unique_years = np.unique(years)
    decided: dict[str, tuple[np.ndarray, ...]] = {}
    for name, scheme in rules.schemes.items():
        has = np.array([name in names for names in schemes_of], bool)[owner]
        if not has.any():
            continue
        worst: tuple[np.ndarray, ...] = ()
        for rule in scheme.rules:
            starts = {y: _day_number(int(y), rule.window_start) for y in unique_years}
            ends = {y: _day_number(int(y), rule.window_end) + 1.0 for y in unique_years}
            lo = np.where(has, np.array([starts[y] for y in years]), np.nan) if len(owner) else np.zeros(0)
            hi = np.where(has, np.array([ends[y] for y in years]), np.nan) if len(owner) else np.zeros(0)
            n_clear, gap, n_strong, n_any, seq = _window_kernel(
                result.clear_offsets, result.clear_day, event_offsets, result.marker.astype(np.int32), result.start,
                result.main, result.end, result.confidence, result.seq.astype(np.int32), MARKERS.index(rule.marker),
                rule.in_window == "any_day", rule.min_confidence, owner, lo, hi)
            colour, reason = _outcomes(rule, n_clear, gap, n_strong, n_any)
            rule_index = np.full(len(owner), scheme.rules.index(rule))
            if not worst:
                worst = (colour, reason, rule_index, seq, n_clear, gap)
            else:
                take = colour > worst[0]  # the first rule with the worst colour decides
                worst = tuple(np.where(take, new, old) for new, old in
                              zip((colour, reason, rule_index, seq, n_clear, gap), worst, strict=True))
        decided[name] = worst  # rules files are validated: every scheme has at least one rule
    counts = dict.fromkeys(COLOURS, 0)
    for i, p in enumerate(owner):
        for name in schemes_of[p]:
            colour, reason, rule_index, seq, n_clear, gap = (values[i] for values in decided[name])
            counts[COLOURS[int(colour)]] += 1
            yield TrafficLight(parcel_ids[p], name, COLOURS[int(colour)], REASONS[int(reason)],
                               rules.schemes[name].rules[int(rule_index)].rule_id, int(years[i]), int(seq),
                               int(n_clear), round(float(gap), 1))
    log.info("traffic lights parcels=%d green=%d yellow=%d red=%d rules=%s@v%d seconds=%.3f", n_parcels,
             counts["green"], counts["yellow"], counts["red"], rules.source, rules.version, time.perf_counter() - t0)


def describe(light: TrafficLight) -> str:
    """One sentence for an inspector: the colour, the reason and the rule."""
    return (f"parcel {light.parcel_id}, scheme {light.scheme} {light.year}: {light.colour} ({light.reason}, rule "
            f"{light.rule_id}; {light.n_clear_obs} clear observations, longest gap {light.longest_gap_days:g} d"
            + (f", event #{light.event_seq}" if light.event_seq else "") + ")")

