"""Why a parcel in the database has or lacks a mowing, harvest, bare soil or emergence, judged as its decision was.

:func:`explain_stored` reads the parcel's series and the parameters and sensors of its latest
marker run (``cbm.marker_run``; the defaults before any run) and judges with them every NDVI fall
as a cut (:func:`cbm_tasks.markers.mowing_explain.explain_mowing`), every crop cycle as a harvest
(:func:`cbm_tasks.markers.harvest_explain.explain_harvest`) or every observation below the soil
line as bare soil (:func:`cbm_tasks.markers.bare_soil_explain.explain_bare_soil`) or every rise
through the emergence threshold (:func:`cbm_tasks.markers.emergence_explain.explain_emergence`).
``cbm markers explain --aoi`` and the REST API (``/v1/.../parcels/{key}/mowing-falls``,
``.../harvest-cycles``, ``.../bare-soil``, ``.../emergence``) answer with it.
:func:`explain_stored_light` explains a stored traffic light the same way, with the rules it was
evaluated with (``cbm.scheme_rules``, hash checked): ``cbm markers explain --scheme``, the API's
``.../traffic-lights/{scheme}/explanation``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

import psycopg

from cbm_tasks.errors import BadInputError
from cbm_tasks.markers import db_read
from cbm_tasks.markers.bare_soil_explain import BareSoilExplanation
from cbm_tasks.markers.emergence_explain import EmergenceExplanation
from cbm_tasks.markers.explain import EXPLAINED_MARKERS, explain_marker
from cbm_tasks.markers.harvest_explain import HarvestExplanation
from cbm_tasks.markers.mowing_explain import MowingExplanation
from cbm_tasks.markers.params import MarkerParams, default_params
from cbm_tasks.report import decisions
from cbm_tasks.report.decisions import LightRecord, MarkerRunRecord
from cbm_tasks.report.recorded import recorded_params, recorded_rules
from cbm_tasks.traffic_light.explain import LightExplanation, explain_light
from cbm_tasks.traffic_light.rules import load_rules

if TYPE_CHECKING:
    from cbm_tasks.markers.explain import Explanation

__all__ = ["decision_params", "explain_stored", "explain_stored_light"]


def decision_params(run: MarkerRunRecord | None) -> tuple[MarkerParams, bool]:
    """Return the parameters (checked against their recorded hash) and S1 use of *run*; defaults and S1 without one.

    Raises:
        BadInputError: the stored parameters no longer have the recorded hash.
    """
    if run is None:
        return default_params(), True
    return recorded_params(run.params, expected_hash=run.params_hash), run.use_s1


@overload
def explain_stored(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, parcel_id: str, year: int,
                   marker: Literal["mowing"] = ...) -> tuple[MowingExplanation, MarkerRunRecord | None]: ...
@overload
def explain_stored(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, parcel_id: str, year: int,
                   marker: Literal["harvest"]) -> tuple[HarvestExplanation, MarkerRunRecord | None]: ...
@overload
def explain_stored(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, parcel_id: str, year: int,
                   marker: Literal["bare_soil"]) -> tuple[BareSoilExplanation, MarkerRunRecord | None]: ...
@overload
def explain_stored(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, parcel_id: str, year: int,
                   marker: Literal["emergence"]) -> tuple[EmergenceExplanation, MarkerRunRecord | None]: ...
def explain_stored(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, parcel_id: str, year: int,
                   marker: str = "mowing") -> tuple[Explanation, MarkerRunRecord | None]:
    """Judge one parcel's *year* season for *marker* as its latest marker run did; return the run too.

    Raises:
        BadInputError: an unknown marker, or a harvest explanation of parameters before version 4.
    """
    if marker not in EXPLAINED_MARKERS:
        raise BadInputError(f"marker {marker!r}: explanations exist for {', '.join(EXPLAINED_MARKERS)}")
    current = decisions.current_runs(conn, parcel_set_id=parcel_set_id, parcel_key=parcel_key)
    run = decisions.marker_run(conn, current[parcel_key][0]) if parcel_key in current else None
    params, use_s1 = decision_params(run)
    series = db_read.parcel_series(conn, parcel_set_id=parcel_set_id, parcel_key=parcel_key, name=parcel_id,
                                   overpass_seconds=params.get("data", "overpass_seconds"))
    return explain_marker(series, parcel_id, params, marker, use_s1=use_s1, year=year), run


def explain_stored_light(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, parcel_id: str, year: int,
                         scheme: str) -> tuple[LightExplanation, LightRecord | None]:
    """Explain the parcel's light of *scheme* with the parameters of its latest marker run and the light's rules.

    Returns the explanation and the stored light (None when the parcel has no light of *scheme*: the
    explanation then uses the shipped rules, as a new run would).

    Raises:
        BadInputError: *scheme* is not in those rules, or stored parameters or rules changed after the run.
        NotFoundError: the light's rules are not stored.
    """
    current = decisions.current_runs(conn, parcel_set_id=parcel_set_id, parcel_key=parcel_key)
    run = decisions.marker_run(conn, current[parcel_key][0]) if parcel_key in current else None
    stored = decisions.lights(conn, parcel_set_id=parcel_set_id, parcel_key=parcel_key, scheme=scheme)
    light = stored[0] if stored else None
    rules = recorded_rules(conn, light.rules_hash) if light is not None and light.rules_hash else load_rules()
    params, use_s1 = decision_params(run)
    series = db_read.parcel_series(conn, parcel_set_id=parcel_set_id, parcel_key=parcel_key, name=parcel_id,
                                   overpass_seconds=params.get("data", "overpass_seconds"))
    season = light.season if light is not None and light.season is not None else year
    return explain_light(series, parcel_id, scheme, rules, params, year=season, use_s1=use_s1), light
