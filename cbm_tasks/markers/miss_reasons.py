"""Why a true mowing was not found, and what a false one was: a validation's lines read in the marker's own tests.

A recall says how many checked cuts were missed, not whether clouds or the marker missed them. For
every missed date :func:`miss_reason` looks at the parcel's explanation (:func:`explain_mowing`, the
mowing kernel's own step tests) and names the first of these that holds:

* ``no markers computed``: the parcel has no observation (or is not in the parcel set);
* ``outside the mowing season`` (``season_start_doy`` .. ``season_end_doy``);
* ``no image of the parcel in YEAR``: the date lies in a year the series does not cover (a typo in
  the ground truth, such as 2025 for 2023, or a series cut short);
* ``no clear image within N days after``: clouds hid the cut;
* ``no NDVI fall``: clear images around the date, but NDVI does not fall near it (the cut does not
  show, or the recorded date is off by more than the tolerance);
* ``a larger fall nearby won``: a fall that passed every test lost to a larger one within
  ``min_spacing_days`` (often a haze drop the mask missed);
* ``its fall is a mowing dated more than N days away`` (a long gap between clear images, or a
  recorded date that is off), or ``matched to another true date``;
* otherwise the tests the largest fall near the date failed (e.g. ``red did not rise as at a cut
  (min_red_ratio)``): the parameter to look at, with ``cbm markers validate --vary``.

"Near" is within the scoring tolerance of the date: the span of a fall (its last high and first low
image) reaches into it.

A false detection is shown by its fall (:func:`detection_fall`: the two images, NDVI, drop and red
ratio), what an inspector looks at to tell a cut the checks did not record from grazing or haze.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, timedelta

from cbm_tasks.markers.mowing_explain import MowingExplanation, StepVerdict
from cbm_tasks.markers.params import MarkerParams

__all__ = ["NOT_COMPUTED", "detection_fall", "detection_step", "explain_lines", "miss_reason"]

NOT_COMPUTED = "no markers computed (no observation, or not in the parcel set)"


def _near(steps: list[StepVerdict], when: date, tolerance_days: int) -> list[StepVerdict]:
    """Falls whose span (last high .. first low image) comes within the tolerance of *when*."""
    lo = (when - timedelta(days=tolerance_days)).isoformat()
    hi = (when + timedelta(days=tolerance_days)).isoformat()
    return [s for s in steps if s.start_date <= hi and s.end_date >= lo]


def miss_reason(explanation: MowingExplanation | None, when: date, params: MarkerParams, *,
                tolerance_days: int) -> str:
    """Why the true mowing of *when* was not found (module docstring); *explanation* None: no markers computed.

    *params* are those that judged the parcel (its season bounds).
    """
    if explanation is None:
        return NOT_COMPUTED
    doy = when.timetuple().tm_yday
    if not params.get("mowing", "season_start_doy") <= doy <= params.get("mowing", "season_end_doy"):
        return "outside the mowing season"
    seen = [o.date for o in explanation.observations]
    if seen and not any(d.startswith(f"{when.year:04d}-") for d in seen):
        return (f"no image of the parcel in {when.year} (its images {min(seen)} .. {max(seen)}): "
                "is the recorded date right?")
    falls = _near(explanation.steps, when, tolerance_days)
    if not falls:
        after = (when + timedelta(days=tolerance_days)).isoformat()
        clear_after = [o for o in explanation.observations if o.used and when.isoformat() <= o.date <= after]
        return "no NDVI fall" if clear_after else f"no clear image within {tolerance_days} days after"
    largest = max(falls, key=lambda s: s.drop)
    if largest.verdict.startswith("weaker than"):
        return "a larger fall nearby won"
    if largest.verdict == "mowing":
        off = abs((date.fromisoformat(largest.main_date) - when).days)
        return (f"its fall is a mowing dated more than {tolerance_days} days away" if off > tolerance_days else
                "its fall is a mowing matched to another true date")
    return largest.failed or largest.verdict


def detection_step(explanation: MowingExplanation, when: date) -> StepVerdict | None:
    """The fall the marker emitted as the mowing dated *when* (None: no such mowing)."""
    return next((s for s in explanation.steps if s.verdict == "mowing" and s.main_date == when.isoformat()), None)


def detection_fall(explanation: MowingExplanation, when: date) -> str:
    """The fall behind the detected mowing dated *when*: its images, NDVI, drop and red ratio ("" if none)."""
    cut = detection_step(explanation, when)
    if cut is None:
        return ""
    return (f"fall {cut.start_date} -> {cut.end_date}: NDVI {cut.ndvi_high:.2f} -> {cut.ndvi_low:.2f}, drop "
            f"{cut.drop:.2f}, red x{cut.red_ratio:.2f}")


def explain_lines(missed: Iterable[tuple[str, date]], false: Iterable[tuple[str, date]],
                  explain: Callable[[str], tuple[MowingExplanation, MarkerParams] | None], *,
                  tolerance_days: int) -> tuple[dict[tuple[str, date], str], dict[tuple[str, date], str]]:
    """(parcel id, true date) -> why it was missed, and (parcel id, detected date) -> the fall of a false detection.

    *explain(parcel id)* gives the parcel's explanation with the parameters that judged it (None when
    no markers were computed for it); it is asked once per parcel.
    """
    explained: dict[str, tuple[MowingExplanation, MarkerParams] | None] = {}

    def of(parcel: str) -> tuple[MowingExplanation, MarkerParams] | None:
        if parcel not in explained:
            explained[parcel] = explain(parcel)
        return explained[parcel]

    reasons = {}
    for parcel, when in missed:
        found = of(parcel)
        reasons[(parcel, when)] = (NOT_COMPUTED if found is None else
                                   miss_reason(found[0], when, found[1], tolerance_days=tolerance_days))
    falls = {}
    for parcel, when in false:
        found = of(parcel)
        falls[(parcel, when)] = "" if found is None else detection_fall(found[0], when)
    return reasons, falls
