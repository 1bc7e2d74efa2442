"""The marker parameters a stored marker run recorded, as the markers package's :class:`MarkerParams`.

``cbm.marker_run.params`` holds the parameters the run used: either the plain mapping of
:meth:`MarkerParams.as_dict` (``{"version": v, section: {key: value}}``) or that mapping under
``marker_params``, next to run options such as ``use_s1``. An empty record means the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cbm_tasks.errors import BadInputError
from cbm_tasks.markers.params import MarkerParams, default_params

__all__ = ["recorded_params", "recorded_use_s1"]


def recorded_params(record: Mapping[str, Any]) -> MarkerParams:
    """Return the parameters of a marker run's ``params`` record (the defaults when it holds none).

    Raises:
        BadInputError: the record names a section or key the markers do not know, or a version
            that is not an integer (it was written by other code than this one).
    """
    raw = record.get("marker_params", record)
    sections = {name: values for name, values in raw.items() if isinstance(values, Mapping)}
    if not sections:
        return default_params()
    defaults = default_params()
    unknown = sorted(set(sections) - set(defaults.sections))
    if unknown:
        raise BadInputError(f"marker run parameters: unknown sections {unknown}; known: {sorted(defaults.sections)}")
    version = raw.get("version", defaults.version)
    if not isinstance(version, int):
        raise BadInputError(f"marker run parameters: version must be an integer, got {version!r}")
    merged = {name: {**values, **sections.get(name, {})} for name, values in defaults.sections.items()}
    return MarkerParams(version, merged, "marker_run")


def recorded_use_s1(record: Mapping[str, Any]) -> bool:
    """Return whether the run let Sentinel-1 raise the mowing confidence (default True)."""
    return bool(record.get("use_s1", True))
