"""Scheme rules: load and validate the versioned rules YAML (``scheme_rules.yaml`` is the default).

Validation happens completely before anything is evaluated or written: an unknown marker, a
malformed or impossible date window, a duplicated rule id, an unknown scheme in the crop mapping
or a missing field raises :class:`RulesFileError` naming the file and the rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cbm_tasks.errors import ConfigError
from cbm_tasks.markers.engine import MARKERS

__all__ = ["IN_WINDOW", "REQUIREMENTS", "Rule", "RulesFileError", "Scheme", "SchemeRules", "load_rules"]

REQUIREMENTS = ("present", "absent")
# When an event counts as in a rule's window: its main date falls in it (the default, and what rules
# files before version 4 meant), or any day of it does (a state over a period: vegetation, bare soil)
IN_WINDOW = ("main_date", "any_day")
_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")
_RULE_KEYS = {"id", "marker", "require", "window", "min_confidence", "min_clear_obs", "max_gap_days", "min_events",
              "max_events", "in_window"}
_EVIDENCE_MARKERS = tuple(name for name in MARKERS if name != "data_sufficiency")


class RulesFileError(ConfigError):
    """A scheme rules file is unreadable or invalid."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a scheme: a marker that must be present in (or absent from) a date window.

    ``min_events`` (present): how many events at least (e.g. two mowings); ``max_events`` (absent):
    how many are allowed (0: none, e.g. no ploughing; 2: at most two cuts of extensive grassland).
    ``in_window``: an event counts when its main date falls in the window (``main_date``) or any
    day from its start to its end does (``any_day``).
    """

    rule_id: str
    marker: str
    require: str
    window_start: tuple[int, int]
    window_end: tuple[int, int]
    min_confidence: float
    min_clear_obs: int
    max_gap_days: float
    min_events: int = 1
    max_events: int = 0
    in_window: str = "main_date"

    def window(self, year: int) -> tuple[date, date]:
        """Return the window's first and last day in *year*."""
        return date(year, *self.window_start), date(year, *self.window_end)


@dataclass(frozen=True, slots=True)
class Scheme:
    """An aid scheme: its rules, all of which must be met for green."""

    name: str
    description: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class SchemeRules:
    """A validated rules file.

    Attributes:
        version: the file's version.
        schemes: name -> scheme.
        crop_schemes: AOI (or ``default``) -> crop code -> scheme names.
        unknown_crop: AOI (or ``default``) -> scheme names for parcels without a crop code.
        source: the file (or ``defaults``).
        hash: sha256 of the canonical JSON of the file's content.
    """

    version: int
    schemes: Mapping[str, Scheme]
    crop_schemes: Mapping[str, Mapping[str, tuple[str, ...]]]
    unknown_crop: Mapping[str, tuple[str, ...]]
    source: str
    hash: str

    def schemes_for(self, crop_code: str | None, *, aoi: str | None = None) -> tuple[str, ...]:
        """Return the schemes of a parcel with *crop_code* (None: unknown) in *aoi*.

        A crop key ending in ``*`` is a prefix (``"33*"``: every code that starts with 33, as
        hierarchical codes such as EuroCrops' HCAT group their crops; ``"*"`` any code): the code's
        own key wins, then the longest prefix.
        """
        key = aoi if aoi is not None and aoi in self.crop_schemes else "default"
        if crop_code is None or crop_code == "":
            return self.unknown_crop.get(key, ())
        crops = self.crop_schemes.get(key, {})
        code = str(crop_code)
        if code in crops:
            return crops[code]
        prefixes = [k for k in crops if k.endswith("*") and code.startswith(k[:-1])]
        return crops[max(prefixes, key=len)] if prefixes else ()


def _month_day(value: Any, where: str) -> tuple[int, int]:
    match = _MONTH_DAY.match(str(value))
    if match is None:
        raise RulesFileError(f"{where}: window date must be MM-DD, got {value!r}")
    month, day = int(match.group(1)), int(match.group(2))
    try:
        date(2024, month, day)  # a leap year, so that 02-29 is accepted
    except ValueError as err:
        raise RulesFileError(f"{where}: window date {value!r} is not a calendar day: {err}") from err
    return month, day


def _number(rule: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = rule.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesFileError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise RulesFileError(f"{where}: a rule must be a mapping, got {raw!r}")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RulesFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted(_RULE_KEYS))}")
    for key in ("id", "marker", "require", "window"):
        if key not in raw:
            raise RulesFileError(f"{where}: missing field {key!r}")
    where = f"{where} (id {raw['id']})"
    if raw["marker"] not in _EVIDENCE_MARKERS:
        raise RulesFileError(f"{where}: unknown marker {raw['marker']!r}; known: {', '.join(_EVIDENCE_MARKERS)}")
    if raw["require"] not in REQUIREMENTS:
        raise RulesFileError(f"{where}: require must be one of {', '.join(REQUIREMENTS)}, got {raw['require']!r}")
    window = raw["window"]
    if not isinstance(window, dict) or set(window) != {"start", "end"}:
        raise RulesFileError(f"{where}: window must be {{start: MM-DD, end: MM-DD}}, got {window!r}")
    start, end = _month_day(window["start"], where), _month_day(window["end"], where)
    if end < start:
        raise RulesFileError(f"{where}: window ends ({window['end']}) before it starts ({window['start']})")
    confidence = _number(raw, "min_confidence", where, 0.5)
    if not 0.0 <= confidence <= 1.0:
        raise RulesFileError(f"{where}: min_confidence must be in [0, 1], got {confidence}")
    clear_obs = _number(raw, "min_clear_obs", where, 3)
    gap = _number(raw, "max_gap_days", where, 45)
    if clear_obs < 0 or gap <= 0:
        raise RulesFileError(f"{where}: min_clear_obs must be >= 0 and max_gap_days > 0")
    present = raw["require"] == "present"
    for key in ("min_events", "max_events"):
        if key in raw and (key == "min_events") != present:
            raise RulesFileError(f"{where}: {key} applies to require: {'present' if key == 'min_events' else 'absent'}")
    min_events, max_events = _number(raw, "min_events", where, 1), _number(raw, "max_events", where, 0)
    if min_events != int(min_events) or min_events < 1 or max_events != int(max_events) or max_events < 0:
        raise RulesFileError(f"{where}: min_events must be an integer >= 1 and max_events an integer >= 0")
    in_window = raw.get("in_window", "main_date")
    if in_window not in IN_WINDOW:
        raise RulesFileError(f"{where}: in_window must be one of {', '.join(IN_WINDOW)}, got {in_window!r}")
    return Rule(str(raw["id"]), raw["marker"], raw["require"], start, end, confidence, int(clear_obs), gap,
                int(min_events), int(max_events), in_window)


def _parse(loaded: Any, source: str) -> SchemeRules:
    if not isinstance(loaded, dict):
        raise RulesFileError(f"rules file {source}: expected a mapping with version, schemes, crop_schemes")
    version = loaded.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RulesFileError(f"rules file {source}: version must be an integer, got {version!r}")
    raw_schemes = loaded.get("schemes")
    if not isinstance(raw_schemes, dict) or not raw_schemes:
        raise RulesFileError(f"rules file {source}: 'schemes' must be a non-empty mapping")
    schemes: dict[str, Scheme] = {}
    seen_ids: set[str] = set()
    for name, body in raw_schemes.items():
        where = f"rules file {source}, scheme {name}"
        if not isinstance(body, dict) or not isinstance(body.get("rules"), list) or not body["rules"]:
            raise RulesFileError(f"{where}: needs a non-empty list 'rules'")
        rules = tuple(_rule(raw, f"{where}, rule {index + 1}") for index, raw in enumerate(body["rules"]))
        for rule in rules:
            if rule.rule_id in seen_ids:
                raise RulesFileError(f"{where}: rule id {rule.rule_id!r} is used twice")
            seen_ids.add(rule.rule_id)
        schemes[str(name)] = Scheme(str(name), str(body.get("description", "")).strip(), rules)
    crop_schemes: dict[str, dict[str, tuple[str, ...]]] = {}
    unknown_crop: dict[str, tuple[str, ...]] = {}
    for aoi, mapping in (loaded.get("crop_schemes") or {}).items():
        where = f"rules file {source}, crop_schemes.{aoi}"
        if not isinstance(mapping, dict):
            raise RulesFileError(f"{where}: must be a mapping with crops and unknown_crop")
        names_by_crop = {str(code): tuple(names) for code, names in (mapping.get("crops") or {}).items()}
        for code in names_by_crop:
            if "*" in code[:-1]:
                raise RulesFileError(f"{where}: crop {code!r}: '*' may only end a code (a prefix: \"33*\")")
        unknown = tuple(mapping.get("unknown_crop") or ())
        for names in (*names_by_crop.values(), unknown):
            for scheme in names:
                if scheme not in schemes:
                    raise RulesFileError(f"{where}: unknown scheme {scheme!r}; defined: {', '.join(schemes)}")
        crop_schemes[str(aoi)] = names_by_crop
        unknown_crop[str(aoi)] = unknown
    digest = hashlib.sha256(json.dumps(loaded, sort_keys=True, separators=(",", ":"), default=str).encode())
    return SchemeRules(version, schemes, crop_schemes, unknown_crop, source, digest.hexdigest())


def load_rules(path: str | Path | None = None) -> SchemeRules:
    """Load and validate a rules file (the shipped ``scheme_rules.yaml`` when None).

    Raises:
        RulesFileError: the file cannot be read or any rule is invalid (message names file and rule).
    """
    if path is None:
        text, source = resources.files("cbm_tasks.traffic_light").joinpath("scheme_rules.yaml").read_text(), \
            "defaults"
    else:
        path = Path(path)
        try:
            text, source = path.read_text(), str(path)
        except OSError as err:
            raise RulesFileError(f"rules file {path}: cannot read: {err}") from err
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RulesFileError(f"rules file {source}: not valid YAML: {err}") from err
    return _parse(loaded, source)
