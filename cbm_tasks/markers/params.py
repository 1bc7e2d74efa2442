"""Marker parameters: the shipped defaults (``marker_params.yaml``), user overrides, and their hash.

A parameter file is YAML with ``version`` and sections of numbers (see the shipped file, where
every default is documented with its source). A user file may give only the values it changes;
the rest come from the defaults. Unknown sections or keys and non-numeric values are errors, so
a misspelt threshold never silently falls back to its default.

``MarkerParams.hash`` is the sha256 of the canonical JSON (sorted keys, no spaces) of the
complete mapping: two runs with the same hash used the same thresholds (lineage).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cbm_tasks.errors import ConfigError

__all__ = ["NEUTRAL", "MarkerParams", "ParamsFileError", "default_params", "load_params"]

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
        ParamsFileError: unreadable file, unknown section or key, or a value that is not a number.
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
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParamsFileError(f"marker parameters {path}: {name}.{key} must be a number, got {value!r}")
            sections[name][key] = value
    return MarkerParams(version, sections, str(path))
