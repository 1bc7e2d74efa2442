"""The stored decisions of a parcel set: traffic lights, marker events and the runs behind them.

``stored_predictions`` and ``stored_lights`` give a set's events of one marker and lights of one scheme as
``cbm markers validate --aoi --year`` scores them.

Reads ``cbm.traffic_light``, ``cbm.marker_run``, ``cbm.marker_parcel`` and ``cbm.marker_event``
(``sql/007_markers.sql``, ``sql/011_marker_lineage.sql``). A parcel's current marker run is the
latest run that computed it (``cbm.marker_parcel``); its events and its per-parcel lineage
(images used and rejected) are that run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from cbm_tasks.markers.validation import Predictions, sensors_text

__all__ = ["LightRecord", "MarkerEventRecord", "MarkerRunRecord", "current_runs", "events", "lights", "marker_run",
           "parcel_names", "parcels_by_run", "scheme_markers", "stored_lights", "stored_predictions"]


@dataclass(frozen=True, slots=True)
class MarkerRunRecord:
    """One marker computation over (part of) a parcel set, with its parameters as recorded."""

    marker_run_id: int
    params: dict[str, Any]
    params_hash: str | None
    code_version: str | None
    use_s1: bool
    scope: str
    pipeline_run_id: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MarkerEventRecord:
    """A stored marker event of one parcel."""

    marker_run_id: int
    parcel_key: int
    marker: str
    seq: int
    start: date | None
    main: date | None
    end: date | None
    value: float | None
    confidence: float | None
    sources: str
    start_product: int | None = None  # the images the dates come from (sql/015_marker_event_products.sql)
    main_product: int | None = None
    end_product: int | None = None
    evidence: tuple[int, ...] = ()  # every image behind the event: start, main, end, then S1 pairs


@dataclass(frozen=True, slots=True)
class LightRecord:
    """A stored traffic light of one parcel and scheme."""

    parcel_key: int
    scheme: str
    colour: str
    reason: str
    rule_id: str | None
    rules_version: int | None
    rules_hash: str | None
    season: int | None
    event_seq: int
    n_clear_obs: int | None
    longest_gap_days: float | None
    marker_run_ids: tuple[int, ...]
    pipeline_run_id: int | None
    decided_at: datetime
    event_marker: str | None = None  # the deciding event is (marker_run_ids[0], key, event_marker, event_seq)


def marker_run(conn: psycopg.Connection, marker_run_id: int) -> MarkerRunRecord | None:
    """Return one marker run, or None."""
    row = conn.execute(
        "SELECT marker_run_id, params, params_hash, code_version, use_s1, scope, pipeline_run_id, created_at "
        "FROM cbm.marker_run WHERE marker_run_id = %s", (marker_run_id,),
    ).fetchone()
    if row is None:
        return None
    return MarkerRunRecord(int(row[0]), dict(row[1] or {}), row[2], row[3], bool(row[4]), str(row[5]), row[6], row[7])


def current_runs(conn: psycopg.Connection, *, parcel_set_id: int,
                 parcel_key: int | None = None) -> dict[int, tuple[int, int, int]]:
    """Return parcel key -> (current marker run, S2 observations used, rejected) of one or every parcel."""
    rows = conn.execute(
        "SELECT DISTINCT ON (m.parcel_key) m.parcel_key, m.marker_run_id, m.n_used, m.n_rejected "
        "FROM cbm.marker_parcel m JOIN cbm.marker_run r USING (marker_run_id) "
        "WHERE r.parcel_set_id = %s AND (%s::integer IS NULL OR m.parcel_key = %s::integer) "
        "ORDER BY m.parcel_key, m.marker_run_id DESC",
        (parcel_set_id, parcel_key, parcel_key),
    ).fetchall()
    return {int(key): (int(run), int(used), int(rejected)) for key, run, used, rejected in rows}


def parcels_by_run(current: dict[int, tuple[int, int, int]]) -> dict[int, list[int]]:
    """Marker run -> the keys (sorted) of the parcels it is current for, from :func:`current_runs`."""
    by_run: dict[int, list[int]] = {}
    for parcel_key, (run_id, _, _) in sorted(current.items()):
        by_run.setdefault(run_id, []).append(parcel_key)
    return by_run


def parcel_names(conn: psycopg.Connection, *, parcel_set_id: int, keys: list[int] | None = None) -> dict[int, str]:
    """Parcel key -> parcel id of a parcel set (of *keys* only, when given)."""
    return dict(conn.execute(
        "SELECT parcel_key, parcel_id FROM cbm.parcel WHERE parcel_set_id = %s "
        "AND (%s::integer[] IS NULL OR parcel_key = ANY(%s::integer[]))", (parcel_set_id, keys, keys)).fetchall())


def events(conn: psycopg.Connection, *, marker_run_id: int,
           parcel_keys: list[int] | None = None) -> list[MarkerEventRecord]:
    """Return the events of a marker run (of *parcel_keys* only, when given), by parcel, marker and seq."""
    rows = conn.execute(
        "SELECT marker_run_id, parcel_key, marker, seq, event_start, main_date, event_end, value, confidence, sources, "
        "start_product, main_product, end_product, evidence FROM cbm.marker_event "
        "WHERE marker_run_id = %s AND (%s::integer[] IS NULL OR parcel_key = ANY(%s::integer[])) "
        "ORDER BY parcel_key, marker, seq",
        (marker_run_id, parcel_keys, parcel_keys),
    ).fetchall()
    return [MarkerEventRecord(int(r[0]), int(r[1]), str(r[2]), int(r[3]), r[4], r[5], r[6],
                              None if r[7] is None else float(r[7]), None if r[8] is None else float(r[8]), str(r[9]),
                              r[10], r[11], r[12], tuple(int(i) for i in r[13] or ()))
            for r in rows]


def lights(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int | None = None,
           scheme: str | None = None) -> list[LightRecord]:
    """Return the traffic lights of one parcel (None: every parcel), optionally of one scheme."""
    rows = conn.execute(
        "SELECT parcel_key, scheme, colour, reason, rule_id, rules_version, rules_hash, season, event_seq, "
        "       n_clear_obs, longest_gap_days, marker_run_ids, pipeline_run_id, decided_at, event_marker "
        "FROM cbm.traffic_light WHERE parcel_set_id = %s "
        "AND (%s::integer IS NULL OR parcel_key = %s::integer) AND (%s::text IS NULL OR scheme = %s::text) "
        "ORDER BY parcel_key, scheme",
        (parcel_set_id, parcel_key, parcel_key, scheme, scheme),
    ).fetchall()
    return [LightRecord(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], r[5], r[6], r[7], int(r[8]), r[9],
                        None if r[10] is None else float(r[10]), tuple(int(i) for i in r[11] or ()), r[12], r[13],
                        r[14])
            for r in rows]


def scheme_markers(conn: psycopg.Connection, lights: list[LightRecord]) -> set[str]:
    """Return the markers the rules of these lights' schemes read (from the stored rules files)."""
    pairs = sorted({(light.rules_hash, light.scheme) for light in lights if light.rules_hash})
    rows = conn.execute(
        "SELECT DISTINCT rule ->> 'marker' FROM unnest(%s::text[], %s::text[]) AS l(rules_hash, scheme) "
        "JOIN cbm.scheme_rules r USING (rules_hash), "
        "jsonb_array_elements(r.content -> 'schemes' -> l.scheme -> 'rules') AS rule",
        ([h for h, _ in pairs], [name for _, name in pairs]),
    ).fetchall()
    return {str(row[0]) for row in rows if row[0] is not None}


def stored_predictions(conn: psycopg.Connection, *, parcel_set_id: int, marker: str, source: str) -> Predictions:
    """The events of *marker* stored for a parcel set, each parcel's from its current marker run.

    A parcel's current run is the latest that computed it (``cbm.marker_parcel``), as for its traffic lights
    and its audit report; parcels no run computed are not ``computed`` (``cbm markers validate --aoi --year``).
    """
    current = current_runs(conn, parcel_set_id=parcel_set_id)
    names = parcel_names(conn, parcel_set_id=parcel_set_id, keys=list(current))
    by_run = parcels_by_run(current)
    found: dict[str, list[date]] = {}
    confidence: dict[tuple[str, date], float] = {}
    runs = []
    for run_id in sorted(by_run):
        runs.append(marker_run(conn, run_id))
        for event in events(conn, marker_run_id=run_id, parcel_keys=by_run[run_id]):
            if event.marker == marker and event.main is not None and event.parcel_key in names:
                parcel = str(names[event.parcel_key])
                found.setdefault(parcel, []).append(event.main)
                confidence[(parcel, event.main)] = event.confidence if event.confidence is not None else math.nan
    hashes = sorted({run.params_hash[:12] for run in runs if run is not None and run.params_hash})
    sensors = sorted({sensors_text(run.use_s1) for run in runs if run is not None})
    described = (f"stored events of marker run{'s' if len(by_run) > 1 else ''} "
                 f"{', '.join(map(str, sorted(by_run))) or '- (none: run cbm markers run first)'}"
                 + (f", parameters hash {', '.join(hashes)}" if hashes else "")
                 + (f", {'; '.join(sensors)}" if sensors else ""))
    return Predictions(marker, {parcel: sorted(dates) for parcel, dates in found.items()}, confidence,
                       frozenset(str(name) for name in names.values()), source, described,
                       {"marker_runs": sorted(by_run),
                        "parameters_hashes": [run.params_hash for run in runs if run is not None]})


def stored_lights(conn: psycopg.Connection, *, parcel_set_id: int,
                  scheme: str) -> dict[tuple[str, int | None], tuple[str, str]]:
    """(parcel id, season) -> (colour, reason) of the stored lights of *scheme* in a parcel set."""
    names = parcel_names(conn, parcel_set_id=parcel_set_id)
    return {(str(names[light.parcel_key]), light.season): (light.colour, light.reason)
            for light in lights(conn, parcel_set_id=parcel_set_id, scheme=scheme) if light.parcel_key in names}
