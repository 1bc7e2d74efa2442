"""Marker parameters: the shipped defaults (``marker_params.yaml``), user overrides, and their hash.

A parameter file is YAML with ``version`` and sections of numbers (see the shipped file, where
every default is documented with its source). A user file may give only the values it changes;
the rest come from the defaults. Unknown sections or keys, non-numeric values and values outside
their physical range (:func:`check_ranges`: a day of year above 366, a fraction above 1, an NDVI
outside -1..1, a negative number of days, NaN or infinity, a season that ends before it starts) are
errors, so a misspelt or mis-scaled threshold never silently changes what the markers find.

``MarkerParams.hash`` is the sha256 of the canonical JSON (sorted keys, no spaces) of the
complete mapping: two runs with the same hash used the same thresholds (lineage).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cbm_tasks.errors import ConfigError

__all__ = ["NEUTRAL", "MarkerParams", "ParamsFileError", "check_ranges", "default_params", "load_params", "with_value"]

_DEFAULT_FILE = "marker_params.yaml"


# Keys added after version 1, with the value that switches their rule off. Parameters recorded by an
# older run (cbm.marker_run.params) lack them; recomputing that run (audit report, `cbm audit verify`)
# must give what it gave, so a missing key means "the rule did not exist yet".
NEUTRAL: dict[tuple[str, str], float] = {
    # version 2
    ("validity", "max_haze_index"): 1e9,
    ("validity", "haze_red_weight"): 0.5,
    ("cloud_dip", "max_run"): 1.0,
    ("cloud_dip", "min_haze_rise"): 1e9,
    ("mowing", "min_red_ratio"): 0.0,
    ("mowing", "red_ratio_max_gap_days"): 1e9,
    # version 3
    ("mowing", "min_moisture_drop"): 0.0,
    ("mowing", "date_window_days"): 999.0,
    # version 4
    ("harvest", "crop_cycles"): 0.0,
    ("mowing", "max_events_per_season"): 0.0,
    ("mowing", "max_step_days"): 1e9,
    ("emergence", "every_cycle"): 0.0,
    # version 6
    ("bare_soil", "min_cover_ndvi"): 0.0,
    ("bare_soil", "cover_lookback_days"): 0.0,
    ("bare_soil", "no_cover_penalty"): 0.0,
    # version 7
    ("mowing", "coherence_noise_z"): 0.0,
    # version 8
    ("data", "overpass_seconds"): 0.0,
    # version 9
    ("validity", "min_soil_red_ratio"): 1e9,
    # version 10
    ("cloud_dip", "min_cut_low_days"): 0.0,
    # version 11
    ("validity", "max_red_spread"): 1e9,
    ("validity", "red_spread_factor"): 0.0,
    # version 12
    ("mowing", "weight_red"): 0.0,
    ("mowing", "full_red_ratio"): 3.0,
    # version 13
    ("data", "file_ndvi"): 0.0,
}


class ParamsFileError(ConfigError):
    """A marker parameter file is unreadable or has unknown or invalid entries."""


@dataclass(frozen=True, slots=True)
class MarkerParams:
    """Complete marker parameters.

    Attributes:
        version: the parameter file's version (an int the file states).
        sections: section -> key -> value (floats; ints where the file gives ints).
        source: where they came from (file path or ``defaults``), for messages and lineage.
    """

    version: int
    sections: Mapping[str, Mapping[str, float]]
    source: str

    def get(self, section: str, key: str) -> float:
        """Return one value as float; a key newer than these parameters gives its neutral value (NEUTRAL)."""
        values = self.sections.get(section, {})
        if key in values:
            return float(values[key])
        if (section, key) in NEUTRAL:
            return NEUTRAL[(section, key)]
        raise KeyError(f"marker parameters {self.source} (version {self.version}) have no {section}.{key}")

    def as_dict(self) -> dict[str, Any]:
        """Return the plain mapping that is hashed: ``{"version": v, section: {key: value}}``."""
        return {"version": self.version, **{name: dict(values) for name, values in self.sections.items()}}

    @property
    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`as_dict`."""
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# Range of each kind of parameter (keys mean the same in every section: min_drop is an NDVI drop in
# mowing and harvest alike). A key in none of these sets is a non-negative threshold.
_FLAGS = frozenset({"require_recovery", "max_events_per_season", "crop_cycles", "every_cycle"})
_FRACTIONS = frozenset({"min_clear_fraction", "max_blue_reflectance", "min_step_share", "max_pre_decline_share",
                        "min_relative_drop", "weight_drop", "weight_bracket", "weight_recovery", "base_confidence",
                        "s1_bonus", "weight_red", "min_confidence", "no_cover_penalty"})
_INDICES = frozenset({"min_bsi", "ndvi_threshold"})  # normalised differences, -1..1, like every *ndvi* key
_AT_LEAST_ONE = frozenset({"max_events", "max_run"})
# (section, first, last, word): the first must not exceed the last (periods, and the two ends of a scale: a
# red rise of full_red_ratio below the gate's min_red_ratio would switch the red part of a cut's confidence off)
_ORDERED = (("mowing", "season_start_doy", "season_end_doy", "is after"),
            ("harvest", "first_doy", "last_doy", "is after"), ("emergence", "first_doy", "last_doy", "is after"),
            ("mowing", "min_drop", "strong_drop", "is above"), ("data", "good_gap_days", "max_gap_days", "is above"),
            ("mowing", "min_red_ratio", "full_red_ratio", "is above"))


def _range_error(key: str, value: float) -> str | None:
    """What is wrong with *value* for parameter *key*, or None."""
    if not math.isfinite(value):
        return "must be finite (switch a test off with a large number, as the file's comments say)"
    if key in _FLAGS and value not in (0, 1):
        return "must be 0 or 1"
    if key.endswith("_doy") and not 1 <= value <= 366:
        return "must be a day of year, 1-366"
    if key in _FRACTIONS and not 0 <= value <= 1:
        return "must be a fraction, 0-1"
    index = "ndvi" in key or key in _INDICES
    if index and not -1 <= value <= 1:
        return "must be an index value, -1 to 1"
    if key in _AT_LEAST_ONE and value < 1:
        return "must be at least 1"
    if not index and value < 0:
        return "must not be negative" + (" (days)" if key.endswith("_days") else "")
    return None


def check_ranges(sections: Mapping[str, Mapping[str, float]], source: str) -> None:
    """Raise :class:`ParamsFileError` naming *source* and the first value outside its physical range."""
    for section, values in sections.items():
        for key, value in values.items():
            problem = _range_error(key, float(value))
            if problem:
                raise ParamsFileError(f"marker parameters {source}: {section}.{key} {problem}, got {value!r}")
    for section, first, last, word in _ORDERED:
        values = sections.get(section, {})
        if first in values and last in values and values[first] > values[last]:
            raise ParamsFileError(f"marker parameters {source}: {section}.{first} ({values[first]!r}) {word} "
                                  f"{section}.{last} ({values[last]!r})")


# YAML 1.1 (PyYAML) reads 1e9 and 1.0e9 as strings: its floats need a dot and a signed exponent (1.0e+9)
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _exponent_number(value: object) -> object:
    """*value*, or the float a string in exponent notation spells (``1e9``: how the comments write "off")."""
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()) else value


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsFileError(f"marker parameters {source}: not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise ParamsFileError(f"marker parameters {source}: expected a mapping of sections, got "
                              f"{type(loaded).__name__}")
    return loaded


def default_params() -> MarkerParams:
    """Return the shipped defaults."""
    text = resources.files("cbm_tasks.markers").joinpath(_DEFAULT_FILE).read_text()
    loaded = _parse(text, "defaults")
    sections = {name: dict(values) for name, values in loaded.items() if name != "version"}
    return MarkerParams(int(loaded["version"]), sections, "defaults")


def load_params(path: str | Path | None = None) -> MarkerParams:
    """Return the defaults overridden by the values of *path* (all defaults when None).

    Raises:
        ParamsFileError: unreadable file, unknown section or key, a value that is not a number or is
            outside its range (:func:`check_ranges`).
    """
    defaults = default_params()
    if path is None:
        return defaults
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ParamsFileError(f"marker parameters {path}: cannot read: {err}") from err
    loaded = _parse(text, str(path))
    sections = {name: dict(values) for name, values in defaults.sections.items()}
    version = loaded.pop("version", defaults.version)
    if not isinstance(version, int):
        raise ParamsFileError(f"marker parameters {path}: version must be an integer, got {version!r}")
    for name, values in loaded.items():
        if name not in sections:
            raise ParamsFileError(f"marker parameters {path}: unknown section {name!r}; known: "
                                  f"{', '.join(sorted(sections))}")
        if not isinstance(values, dict):
            raise ParamsFileError(f"marker parameters {path}: section {name!r} must be a mapping")
        for key, value in values.items():
            if key not in sections[name]:
                raise ParamsFileError(f"marker parameters {path}: unknown key {name}.{key}; known: "
                                      f"{', '.join(sorted(sections[name]))}")
            value = _exponent_number(value)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParamsFileError(f"marker parameters {path}: {name}.{key} must be a number, got {value!r}")
            sections[name][key] = value
    check_ranges(sections, str(path))
    return MarkerParams(version, sections, str(path))


def with_value(params: MarkerParams, name: str, value: float) -> MarkerParams:
    """Return *params* with one value changed; *name* is ``section.key`` (``mowing.min_confidence``).

    Raises:
        ParamsFileError: no such section or key, or the value is outside its range (:func:`check_ranges`).
    """
    section, _, key = name.partition(".")
    if section not in params.sections or key not in params.sections[section]:
        known = ", ".join(f"{s}.{k}" for s, values in params.sections.items() for k in values)
        raise ParamsFileError(f"marker parameters: no parameter {name!r}; known: {known}")
    sections = {s: dict(values) for s, values in params.sections.items()}
    keeps_int = isinstance(params.sections[section][key], int) and float(value).is_integer()
    sections[section][key] = int(value) if keeps_int else float(value)  # the same hash as a file stating it
    source = f"{params.source} with {name}={value:g}"
    check_ranges(sections, source)
    return MarkerParams(params.version, sections, source)
