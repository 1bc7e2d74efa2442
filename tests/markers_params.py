"""Marker parameters as a run of an older version recorded them (test helper).

A recorded run lacks the keys added after its version (``markers.params.NEUTRAL`` then switches their rules
off) and may hold other values; recomputing it must give what it gave (ARCHITECTURE.md, a marker parameter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cbm_tasks.markers.params import MarkerParams, default_params


def recorded_params(version: int, without: Iterable[tuple[str, str]] = (),
                    values: Mapping[tuple[str, str], float] | None = None, source: str | None = None) -> MarkerParams:
    """The shipped parameters without the (section, key)s *without*, with *values* set, as of *version*.

    *source* names them in messages (default ``version N``).
    """
    sections = {name: dict(keys) for name, keys in default_params().sections.items()}
    for section, key in without:
        del sections[section][key]
    for (section, key), value in (values or {}).items():
        sections[section][key] = value
    return MarkerParams(version, sections, source or f"version {version}")
