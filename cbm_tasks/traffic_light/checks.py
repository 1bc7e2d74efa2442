"""Traffic lights of one aid scheme against on-the-spot checks: how often is a compliant farmer lit red?

The quality assessment of an area monitoring system compares its decisions with what inspectors found on a
sample of parcels. Inspectors record whether a parcel complied with the scheme (mown in the window, not
ploughed), rarely the date of an event, so this scores the **lights**, not the marker events
(:mod:`cbm_tasks.markers.scoring` does those): a confusion table of colour (green, yellow, red, no light) by
check outcome (compliant, not compliant), the share of compliant parcels lit red (a farmer wrongly accused),
of non-compliant ones lit green (a breach missed) and of yellow lights (a follow-up needed), each with a 95 %
Wilson interval.

Checks file: CSV (``.csv``/``.csv.gz``) with a parcel column (``parcel_id``, ``ID``, ...) and ``compliant``
(or ``compliance``, ``outcome``): ``yes``/``no``, ``true``/``false``, ``1``/``0``, ``compliant``/
``non-compliant``; optional ``scheme`` (rows of other schemes skipped) and ``season`` (or ``year``: the
light's season, for parcels lit in several). The lights are those ``cbm markers run`` writes (the scheme
evaluated on every checked parcel, whatever its crop) or those stored for a parcel set.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cbm_tasks.errors import BadInputError
from cbm_tasks.markers.engine import run_markers
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import SeriesTable
from cbm_tasks.markers.truth import PARCEL_COLUMNS, csv_rows, find_column, parcel_id_text
from cbm_tasks.markers.validation import wilson
from cbm_tasks.markers.writer import write_csv, write_json
from cbm_tasks.traffic_light.evaluate import evaluate_lights
from cbm_tasks.traffic_light.rules import SchemeRules

__all__ = ["CHECK_COLUMNS", "COLOURS", "Checks", "LightValidation", "file_lights", "read_checks", "score_lights"]

COLOURS = ("green", "yellow", "red", "none")  # "none": the checked parcel has no light of the scheme
CHECK_COLUMNS = ("parcel_id", "season", "compliant", "colour", "reason")
_YES = frozenset({"yes", "y", "true", "t", "1", "compliant", "ok"})
_NO = frozenset({"no", "n", "false", "f", "0", "non-compliant", "non_compliant", "noncompliant", "not compliant"})


@dataclass(frozen=True, slots=True)
class Checks:
    """On-the-spot check outcomes of one scheme: (parcel id, season or None) -> compliant."""

    source: str
    scheme: str
    outcomes: dict[tuple[str, int | None], bool]


def read_checks(path: Path, scheme: str) -> Checks:
    """Read the check outcomes of *scheme* (module docstring).

    Raises:
        BadInputError: no such file, a missing column, an outcome or season that does not read (naming file,
            line and column), a parcel-season checked twice with different outcomes, or no row of the scheme.
    """
    if not path.is_file():
        raise BadInputError(f"checks {path}: no such file")
    outcomes: dict[tuple[str, int | None], bool] = {}
    with csv_rows(path, "checks") as rows:
        header = list(rows.fieldnames or [])
        parcel_col = find_column(header, PARCEL_COLUMNS)
        outcome_col = find_column(header, ("compliant", "compliance", "outcome"))
        scheme_col, season_col = find_column(header, ("scheme",)), find_column(header, ("season", "year"))
        if parcel_col is None or outcome_col is None:
            raise BadInputError(f"checks {path}: needs a parcel column ({', '.join(PARCEL_COLUMNS)}) and a "
                                f"'compliant' column; header: {header}")
        for line, row in enumerate(rows, start=2):
            if scheme_col is not None and (row.get(scheme_col) or scheme).strip() != scheme:
                continue
            parcel = parcel_id_text(row.get(parcel_col) or "")
            text = (row.get(outcome_col) or "").strip().lower()
            if not parcel or text not in _YES | _NO:
                column, value = (parcel_col, "") if not parcel else (outcome_col, text)
                raise BadInputError(f"checks {path}: line {line}: column {column!r}: "
                                    + ("empty" if not parcel else f"{value!r} is not yes/no (compliant or not)"))
            season = _season(row.get(season_col) if season_col else None, f"checks {path}: line {line}")
            key, compliant = (parcel, season), text in _YES
            if outcomes.get(key, compliant) != compliant:
                raise BadInputError(f"checks {path}: line {line}: parcel {parcel!r}"
                                    + (f" season {season}" if season is not None else "")
                                    + " is checked compliant and not compliant")
            outcomes[key] = compliant
    if not outcomes:
        raise BadInputError(f"checks {path}: no rows of scheme {scheme!r}")
    return Checks(str(path), scheme, outcomes)


def _season(text: str | None, where: str) -> int | None:
    value = (text or "").strip()
    if not value:
        return None
    try:
        return int(float(value))
    except ValueError:
        raise BadInputError(f"{where}: season {value!r} is not a year") from None


@dataclass(frozen=True, slots=True)
class LightValidation:
    """The lights of one scheme next to the check outcomes.

    Attributes:
        checks: the outcomes scored against.
        lines: (parcel id, season, compliant, colour, reason) per checked parcel-season, colour ``none``
            where it has no light.
        source: whose lights (the file, or the parcel set in the database).
        described: how the lights were made (rules, parameters).
    """

    checks: Checks
    lines: list[tuple[str, int | None, bool, str, str]]
    source: str
    described: str

    def table(self) -> dict[bool, Counter[str]]:
        """Check outcome -> colour -> parcel-seasons."""
        out: dict[bool, Counter[str]] = {True: Counter(), False: Counter()}
        for _, _, compliant, colour, _ in self.lines:
            out[compliant][colour] += 1
        return out

    def figures(self) -> dict[str, object]:
        """Counts and shares (with 95 % Wilson intervals), JSON-ready."""
        table = self.table()
        ok, bad = table[True], table[False]
        lit_ok, lit_bad = sum(ok[c] for c in COLOURS[:3]), sum(bad[c] for c in COLOURS[:3])

        def share(k: int, n: int) -> dict[str, object]:
            low, high = wilson(k, n)
            return {"count": k, "of": n, "share": round(k / n, 4) if n else None,
                    "interval_95": [None if math.isnan(low) else round(low, 4),
                                    None if math.isnan(high) else round(high, 4)]}

        return {"scheme": self.checks.scheme, "checks": self.checks.source, "lights_of": self.source,
                "made_by": self.described, "checked": len(self.lines),
                "compliant": {c: ok[c] for c in COLOURS}, "not_compliant": {c: bad[c] for c in COLOURS},
                "compliant_lit_red": share(ok["red"], lit_ok), "not_compliant_lit_green": share(bad["green"], lit_bad),
                "yellow": share(ok["yellow"] + bad["yellow"], lit_ok + lit_bad)}

    def summary(self) -> str:
        """The confusion table and the three shares as text."""
        f, table = self.figures(), self.table()

        def line(name: str, part: object, what: str) -> str:
            assert isinstance(part, dict)
            if not part["of"]:
                return f"{name}: - (none lit)  {what}"
            low, high = part["interval_95"]
            return (f"{name}: {part['count']} of {part['of']} lit = {part['share']:.0%} "
                    f"(95 % interval {low:.0%}-{high:.0%})  {what}")

        out = [f"{self.checks.scheme} lights of {self.source} against checks {self.checks.source}",
               self.described, f"parcel-seasons checked: {f['checked']}",
               f"  {'':14s}" + "".join(f"{c if c != 'none' else 'no light':>10s}" for c in COLOURS)]
        for compliant, name in ((True, "compliant"), (False, "not compliant")):
            out.append(f"  {name:14s}" + "".join(f"{table[compliant][c]:>10d}" for c in COLOURS))
        out += [line("compliant lit red", f["compliant_lit_red"], "(a farmer wrongly accused)"),
                line("not compliant lit green", f["not_compliant_lit_green"], "(a breach missed)"),
                line("yellow", f["yellow"], "(a follow-up needed: photo or field visit)")]
        return "\n".join(out) + "\n"

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write ``out/lights.csv`` (CHECK_COLUMNS) and ``out/light_scores.json``, each whole or not at all."""
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "lights.csv", CHECK_COLUMNS,
                  ((p, "" if s is None else s, "yes" if c else "no", colour, reason)
                   for p, s, c, colour, reason in self.lines))
        scores = out / "light_scores.json"
        write_json(scores, self.figures())
        return out / "lights.csv", scores


def score_lights(lights: Mapping[tuple[str, int | None], tuple[str, str]], checks: Checks, *, source: str,
                 described: str) -> LightValidation:
    """Match each checked parcel-season to its light of the scheme.

    Args:
        lights: (parcel id, season) -> (colour, reason) of the scheme's lights.
        checks: the check outcomes; a check without a season takes the parcel's only lit season.
        source: whose lights, for the summary.
        described: how they were made (rules, parameters), for the summary.

    Raises:
        BadInputError: a check without a season on a parcel lit in several seasons.
    """
    seasons: dict[str, list[int | None]] = {}
    for parcel, season in lights:
        seasons.setdefault(parcel, []).append(season)
    lines = []
    for (parcel, season), compliant in sorted(checks.outcomes.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        key: tuple[str, int | None] | None = (parcel, season)
        if season is None:  # the parcel's only lit season
            lit = seasons.get(parcel, [])
            if len(lit) > 1:
                raise BadInputError(f"checks {checks.source}: parcel {parcel!r} is lit in seasons "
                                    f"{', '.join(str(s) for s in sorted(lit, key=lambda s: s or 0))}: give the "
                                    "check's season (a 'season' column)")
            key = (parcel, lit[0]) if lit else None
        colour, reason = lights.get(key, ("none", "")) if key is not None else ("none", "")
        lines.append((parcel, season if key is None else key[1], compliant, colour, reason))
    return LightValidation(checks, lines, source, described)


def file_lights(series: SeriesTable, rules: SchemeRules, params: MarkerParams, scheme: str, *,
                use_s1: bool = True) -> dict[tuple[str, int | None], tuple[str, str]]:
    """The lights of *scheme* on every parcel and season of *series*, as ``cbm markers run`` makes them.

    The scheme is evaluated on every parcel, whatever its crop: the checked parcels are the scheme's.

    Raises:
        BadInputError: *rules* have no scheme *scheme*.
    """
    if scheme not in rules.schemes:
        raise BadInputError(f"scheme rules {rules.source}: no scheme {scheme!r}; known: "
                            f"{', '.join(sorted(rules.schemes))}")
    only = replace(rules, crop_schemes={}, unknown_crop={"default": (scheme,)})
    result = run_markers(series, params, use_s1=use_s1)
    return {(light.parcel_id, light.year): (light.colour, light.reason) for light in evaluate_lights(result, only)}
