"""One parcel's explanation by marker name: what ``cbm markers explain --marker`` and the database path share.

Light to import (the command line builds its choices from :data:`EXPLAINED_MARKERS`): each
explanation module, and Numba with it, loads when an explanation is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cbm_tasks.errors import BadInputError

if TYPE_CHECKING:
    from cbm_tasks.markers.bare_soil_explain import BareSoilExplanation
    from cbm_tasks.markers.emergence_explain import EmergenceExplanation
    from cbm_tasks.markers.harvest_explain import HarvestExplanation
    from cbm_tasks.markers.mowing_explain import MowingExplanation
    from cbm_tasks.markers.params import MarkerParams
    from cbm_tasks.markers.series import SeriesTable

    Explanation = MowingExplanation | HarvestExplanation | BareSoilExplanation | EmergenceExplanation

__all__ = ["EXPLAINED_MARKERS", "explain_marker"]

EXPLAINED_MARKERS = ("mowing", "harvest", "bare_soil", "emergence")


def explain_marker(series: SeriesTable, parcel_id: str, params: MarkerParams, marker: str, *, use_s1: bool = True,
                   year: int | None = None) -> Explanation:
    """Explain *marker* for *parcel_id* of *series*: its falls, crop cycles, low observations or rises, judged.

    *use_s1* matters for the mowing marker only (Sentinel-1 raises a cut's confidence).

    Raises:
        BadInputError: a marker without an explanation, or a harvest explanation of parameters before version 4.
        NotFoundError: *parcel_id* is not in *series*.
    """
    if marker == "mowing":
        from cbm_tasks.markers.mowing_explain import explain_mowing

        return explain_mowing(series, parcel_id, params, use_s1=use_s1, year=year)
    if marker == "harvest":
        from cbm_tasks.markers.harvest_explain import explain_harvest

        return explain_harvest(series, parcel_id, params, year=year)
    if marker == "bare_soil":
        from cbm_tasks.markers.bare_soil_explain import explain_bare_soil

        return explain_bare_soil(series, parcel_id, params, year=year)
    if marker == "emergence":
        from cbm_tasks.markers.emergence_explain import explain_emergence

        return explain_emergence(series, parcel_id, params, year=year)
    raise BadInputError(f"marker {marker!r}: explanations exist for {', '.join(EXPLAINED_MARKERS)}")
