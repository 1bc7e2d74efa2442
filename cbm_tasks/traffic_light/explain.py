"""Why a parcel's light of one scheme has its colour: each rule's window, data, gap and events, judged.

A yellow light is the most common answer of Checks by Monitoring and the one an inspector acts on
(wait for images, or visit): ``GAP`` says a gap was too long, but not where it was nor what hid the
field then; ``LOW_CONFIDENCE`` says an event was too weak, but not which. :func:`explain_light`
evaluates each rule of the scheme for one parcel and season with the lights' own rule evaluation
(:func:`cbm_tasks.traffic_light.evaluate.evaluate_rule`), so its colour and reason are the light's,
and adds what the light does not store: the window's dates, the longest gap between clear images
with its first and last day and why the images inside it were not used (the validity tests of
:data:`cbm_tasks.markers.preprocess.REJECTIONS`), and every event of the rule's marker in the
window with its confidence, counted or too weak.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from cbm_tasks.errors import BadInputError
from cbm_tasks.markers.engine import MARKERS, MarkerResult, markers_from_prepared
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import REJECTIONS, prepare, rejection_codes
from cbm_tasks.markers.series import SeriesTable, day_to_date
from cbm_tasks.traffic_light.evaluate import COLOURS, _day_number, _in_window, _seasons, evaluate_rule
from cbm_tasks.traffic_light.rules import Rule, SchemeRules

__all__ = ["EventInWindow", "LightExplanation", "RuleExplanation", "explain_light", "light_seasons"]


@dataclass(frozen=True, slots=True)
class EventInWindow:
    """An event of the rule's marker in its window; ``counted`` when its confidence reaches the rule's."""

    start_date: str
    main_date: str
    end_date: str
    confidence: float
    counted: bool


@dataclass(frozen=True, slots=True)
class RuleExplanation:
    """One rule of the scheme for one parcel-season, and the colour and reason it gives.

    ``limit`` is the rule's ``min_events`` (present) or ``max_events`` (absent); ``in_window`` whether
    an event counts by its main date or by any of its days. ``gap_from`` ..
    ``gap_to`` is the longest gap between clear images in the window (``(window start)`` or
    ``(window end)`` where an edge bounds it), ``gap_images`` why the images inside it were not used
    (``5 clear share below min_clear_fraction ...; 1 cloud dip ...``, empty when none was taken).
    """

    rule_id: str
    marker: str
    require: str
    limit: int
    in_window: str
    window_from: str
    window_to: str
    min_confidence: float
    n_clear: int
    min_clear_obs: int
    gap_from: str
    gap_to: str
    longest_gap_days: float
    max_gap_days: float
    gap_images: str
    events: list[EventInWindow]
    colour: str
    reason: str

    def requirement(self) -> str:
        """The rule in words: ``mowing present (at least 1), confidence >= 0.50``."""
        bound = "at least" if self.require == "present" else "at most"
        return f"{self.marker} {self.require} ({bound} {self.limit}), confidence >= {self.min_confidence:.2f}"


@dataclass(frozen=True, slots=True)
class LightExplanation:
    """The light of one parcel, scheme and season, and the rules behind it (the first worst decides)."""

    parcel_id: str
    scheme: str
    year: int
    colour: str
    reason: str
    rule_id: str
    rules: list[RuleExplanation]

    def matches(self, colour: str, reason: str, rule_id: str | None) -> bool:
        """Whether a stored light (its colour, reason and deciding rule) is the one this evaluation gives."""
        return (colour, reason, rule_id) == (self.colour, self.reason, self.rule_id)

    def write(self, stream: TextIO) -> None:
        """Write the explanation as text lines, as ``cbm markers explain --scheme`` prints it."""
        stream.write(f"parcel {self.parcel_id}, scheme {self.scheme} {self.year}: {self.colour} ({self.reason}), "
                     f"decided by rule {self.rule_id}\n")
        for r in self.rules:
            stream.write(f"  rule {r.rule_id}: {r.requirement()} in {r.window_from} .. {r.window_to}: {r.colour} "
                         f"({r.reason})\n")
            stream.write(f"    clear images in the window: {r.n_clear} (needs {r.min_clear_obs})\n")
            images = f"; not used in it: {r.gap_images}" if r.gap_images else ""
            stream.write(f"    longest gap: {r.gap_from} .. {r.gap_to}, {r.longest_gap_days:g} d (at most "
                         f"{r.max_gap_days:g}){images}\n")
            for e in r.events:
                when = f"{e.start_date} .. {e.end_date}" if r.in_window == "any_day" else e.main_date
                stream.write(f"    {r.marker} {when} confidence {e.confidence:.2f}: "
                             f"{'counted' if e.counted else 'below the rule, too weak to count'}\n")
            if not r.events:
                stream.write(f"    no {r.marker} event in the window\n")


def _gap(clear: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The first longest gap between the clear days in [lo, hi), the window's edges included (as the lights)."""
    points = np.concatenate([[lo], clear[(clear >= lo) & (clear < hi)], [hi]])
    k = int(np.argmax(np.diff(points)))
    return float(points[k]), float(points[k + 1])


def light_seasons(series: SeriesTable, parcel_id: str, params: MarkerParams) -> list[int]:
    """The seasons a file's lights give *parcel_id* (every year with a clear image, as :func:`evaluate_lights`)."""
    result = markers_from_prepared(prepare(series.one_parcel(parcel_id), params), params, use_s1=False)
    return [int(year) for year in _seasons(result, None)[1]]


def explain_light(series: SeriesTable, parcel_id: str, scheme: str, rules: SchemeRules, params: MarkerParams, *,
                  year: int, use_s1: bool = True) -> LightExplanation:
    """Explain the light of *parcel_id* for *scheme* in season *year*, as the lights evaluate it.

    Args:
        series: time series holding the parcel (a file or a database read).
        parcel_id: the parcel.
        scheme: the aid scheme (whatever the parcel's crop maps to).
        rules: the scheme rules the light was evaluated with.
        params: the marker parameters of its events.
        year: the season.
        use_s1: let Sentinel-1 raise the mowing confidence, as the run did.

    Raises:
        NotFoundError: *parcel_id* is not in *series*.
        BadInputError: *scheme* is not in *rules*.
    """
    if scheme not in rules.schemes:
        raise BadInputError(f"scheme {scheme!r} is not in the rules {rules.source} (schemes: "
                            f"{', '.join(sorted(rules.schemes))})")
    prepared = prepare(series.one_parcel(parcel_id), params)
    result = markers_from_prepared(prepared, params, use_s1=use_s1)
    clear = result.clear_day[result.clear_offsets[0]:result.clear_offsets[1]]
    s2 = prepared.s2
    codes = rejection_codes(s2, params)
    explained = [_rule(rule, year, result, clear, s2.day, codes) for rule in rules.schemes[scheme].rules]
    worst = max(explained, key=lambda r: COLOURS.index(r.colour))  # the first rule with the worst colour
    return LightExplanation(str(parcel_id), scheme, year, worst.colour, worst.reason, worst.rule_id, explained)


def _rule(rule: Rule, year: int, result: MarkerResult, clear: np.ndarray, s2_day: np.ndarray,
          codes: np.ndarray) -> RuleExplanation:
    pick = result.marker == MARKERS.index(rule.marker)
    outcome = evaluate_rule(rule, year, clear_day=clear, event_main=result.main[pick],
                            event_confidence=result.confidence[pick], event_seq=result.seq[pick],
                            event_start=result.start[pick], event_end=result.end[pick])
    lo, hi = _day_number(year, rule.window_start), _day_number(year, rule.window_end) + 1.0
    gap_from, gap_to = _gap(clear, lo, hi)
    hidden = Counter(REJECTIONS.get(int(code), "") for day, code in zip(s2_day, codes, strict=True)
                     if gap_from < day < gap_to and code)
    any_day = rule.in_window == "any_day"
    events = [EventInWindow(day_to_date(start), day_to_date(main), day_to_date(end), float(conf),
                            bool(conf >= rule.min_confidence))
              for start, main, end, conf in zip(result.start[pick], result.main[pick], result.end[pick],
                                                result.confidence[pick], strict=True)
              if _in_window(start, main, end, any_day, lo, hi)]
    limit = rule.min_events if rule.require == "present" else rule.max_events
    return RuleExplanation(
        rule.rule_id, rule.marker, rule.require, limit, rule.in_window, day_to_date(lo), day_to_date(hi - 1.0),
        rule.min_confidence, outcome.n_clear, rule.min_clear_obs,
        day_to_date(gap_from) + (" (window start)" if gap_from == lo else ""),
        day_to_date(min(gap_to, hi - 1.0)) + (" (window end)" if gap_to == hi else ""), round(gap_to - gap_from, 1),
        rule.max_gap_days, "; ".join(f"{n} {why}" for why, n in hidden.most_common()), events, outcome.colour,
        outcome.reason)
