"""What the bare soil and emergence explanations name as events, and what the markers detected, per parcel."""

from __future__ import annotations

from cbm_tasks.markers import load_params, run_markers
from cbm_tasks.markers.bare_soil_explain import explain_bare_soil
from cbm_tasks.markers.emergence_explain import explain_emergence
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import SeriesTable

PARAMS = load_params()


def bare_runs_explained(series: SeriesTable, params: MarkerParams = PARAMS) -> dict[str, list[tuple[str, str, float]]]:
    out: dict[str, list[tuple[str, str, float]]] = {}
    for parcel_id in series.parcel_ids:
        explanation = explain_bare_soil(series, str(parcel_id), params)
        for run in explanation.runs:
            out.setdefault(str(parcel_id), []).append((run.start_date, run.end_date, round(run.confidence, 9)))
            # the run's observations are listed as bare soil, first to last
            dates = [o.date for o in explanation.observations if o.run == run.run]
            assert (dates[0], dates[-1], len(dates)) == (run.start_date, run.end_date, run.n_obs)
        assert all((o.verdict == "bare soil") == (o.run > 0) and o.ndvi < explanation.max_ndvi
                   for o in explanation.observations)
    return out


def bare_runs_detected(series: SeriesTable, params: MarkerParams = PARAMS) -> dict[str, list[tuple[str, str, float]]]:
    out: dict[str, list[tuple[str, str, float]]] = {}
    for row in run_markers(series, params, use_s1=False).rows():
        if row.marker == "bare_soil":
            out.setdefault(row.parcel_id, []).append((row.start_date, row.end_date, round(row.confidence, 9)))
    return out


def emergences_explained(series: SeriesTable, params: MarkerParams = PARAMS) -> dict[str, list[tuple[str, ...]]]:
    out: dict[str, list[tuple[str, ...]]] = {}
    for parcel_id in series.parcel_ids:
        for c in explain_emergence(series, str(parcel_id), params).crossings:
            assert (c.verdict == "emergence") == (c.failed == "") and c.ndvi_before < c.ndvi_after
            if c.verdict == "emergence":
                out.setdefault(str(parcel_id), []).append((c.start_date, c.main_date, c.end_date,
                                                           f"{c.confidence:.3f}"))
    return out


def emergences_detected(series: SeriesTable, params: MarkerParams = PARAMS) -> dict[str, list[tuple[str, ...]]]:
    out: dict[str, list[tuple[str, ...]]] = {}
    for row in run_markers(series, params, use_s1=False).rows():
        if row.marker == "emergence":
            out.setdefault(row.parcel_id, []).append((row.start_date, row.main_date, row.end_date,
                                                      f"{row.confidence:.3f}"))
    return out
