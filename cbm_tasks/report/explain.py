"""Why a parcel in the database has or lacks a mowing, judged as its stored decision was made.

:func:`explain_stored` reads the parcel's series and the parameters and sensors of its latest
marker run (``cbm.marker_run``; the defaults before any run) and judges every NDVI fall with them
(:func:`cbm_tasks.markers.mowing_explain.explain_mowing`). ``cbm markers explain --aoi`` and the
REST API (``/v1/.../parcels/{key}/mowing-falls``) answer with it.
"""

from __future__ import annotations

import psycopg

from cbm_tasks.markers import db_read
from cbm_tasks.markers.mowing_explain import MowingExplanation, explain_mowing
from cbm_tasks.markers.params import MarkerParams, default_params
from cbm_tasks.report import decisions
from cbm_tasks.report.decisions import MarkerRunRecord
from cbm_tasks.report.recorded import recorded_params

__all__ = ["decision_params", "explain_stored"]


def decision_params(run: MarkerRunRecord | None) -> tuple[MarkerParams, bool]:
    """Return the parameters (checked against their recorded hash) and S1 use of *run*; defaults and S1 without one.

    Raises:
        BadInputError: the stored parameters no longer have the recorded hash.
    """
    if run is None:
        return default_params(), True
    return recorded_params(run.params, expected_hash=run.params_hash), run.use_s1


def explain_stored(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int, parcel_id: str,
                   year: int) -> tuple[MowingExplanation, MarkerRunRecord | None]:
    """Judge the NDVI falls of one parcel's *year* season as its latest marker run did; return the run too."""
    current = decisions.current_runs(conn, parcel_set_id=parcel_set_id, parcel_key=parcel_key)
    run = decisions.marker_run(conn, current[parcel_key][0]) if parcel_key in current else None
    series = db_read.parcel_series(conn, parcel_set_id=parcel_set_id, parcel_key=parcel_key, name=parcel_id)
    params, use_s1 = decision_params(run)
    return explain_mowing(series, parcel_id, params, use_s1=use_s1, year=year), run
