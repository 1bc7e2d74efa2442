"""The stored decisions of one parcel: its traffic lights and the marker events behind them.

Reads ``cbm.traffic_light``, ``cbm.marker_run`` and ``cbm.marker_event`` (``sql/007_markers.sql``).
Rows are read whole (``to_jsonb``), so columns later migrations add (a rule id, a main date, the
rules' version) are picked up where they exist, and looked for in ``detail`` otherwise. The
current marker run of a parcel set and marker is its latest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

__all__ = ["LightRecord", "MarkerEventRecord", "MarkerRunRecord", "current_marker_runs", "events_for_parcel",
           "lights_for_parcel", "pick"]


@dataclass(frozen=True, slots=True)
class MarkerRunRecord:
    """One marker computation over a parcel set."""

    marker_run_id: int
    marker: str
    params: dict[str, Any]
    pipeline_run_id: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MarkerEventRecord:
    """A stored marker event of one parcel."""

    marker_run_id: int
    marker: str
    parcel_key: int
    seq: int
    start: date | None
    main: date | None
    end: date | None
    value: float | None
    confidence: float | None
    sources: str
    evidence: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LightRecord:
    """A stored traffic light of one parcel and scheme."""

    parcel_key: int
    scheme: str
    colour: str
    reason: str
    rule_id: str
    rules_version: str
    marker_run_ids: tuple[int, ...]
    pipeline_run_id: int | None
    decided_at: str


def pick(row: dict[str, Any], *names: str) -> Any:
    """Return the first of *names* present (not null) in *row* or in its ``detail`` object, else None."""
    found = row.get("detail")
    detail: dict[str, Any] = found if isinstance(found, dict) else {}
    for name in names:
        if row.get(name) is not None:
            return row[name]
        if detail.get(name) is not None:
            return detail[name]
    return None


def _day(value: Any) -> date | None:
    return None if value in (None, "") else date.fromisoformat(str(value)[:10])


def current_marker_runs(conn: psycopg.Connection, *, parcel_set_id: int) -> list[MarkerRunRecord]:
    """Return the latest marker run of each marker of the parcel set (by marker name)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (marker) marker_run_id, marker, params, pipeline_run_id, created_at "
        "FROM cbm.marker_run WHERE parcel_set_id = %s ORDER BY marker, marker_run_id DESC",
        (parcel_set_id,),
    ).fetchall()
    return [MarkerRunRecord(int(r[0]), str(r[1]), dict(r[2] or {}), r[3], r[4]) for r in rows]


def events_for_parcel(conn: psycopg.Connection, *, parcel_set_id: int,
                      parcel_key: int | None = None) -> list[MarkerEventRecord]:
    """Return the events of the current marker runs for one parcel (None: every parcel), in date order."""
    runs = {run.marker_run_id: run for run in current_marker_runs(conn, parcel_set_id=parcel_set_id)}
    if not runs:
        return []
    rows = conn.execute(
        "SELECT to_jsonb(ev) FROM cbm.marker_event ev WHERE ev.marker_run_id = ANY(%s) "
        "AND (%s::integer IS NULL OR ev.parcel_key = %s::integer) "
        "ORDER BY ev.parcel_key, ev.marker_run_id, ev.seq",
        (list(runs), parcel_key, parcel_key),
    ).fetchall()
    events = []
    for (row,) in rows:
        run = runs[int(row["marker_run_id"])]
        marker = pick(row, "marker") or run.marker
        events.append(MarkerEventRecord(
            marker_run_id=run.marker_run_id, marker=str(marker), parcel_key=int(row["parcel_key"]),
            seq=int(row["seq"]), start=_day(pick(row, "event_start", "start_date")),
            main=_day(pick(row, "event_main", "main_date", "event_date")), end=_day(pick(row, "event_end", "end_date")),
            value=None if row.get("value") is None else float(row["value"]),
            confidence=None if row.get("confidence") is None else float(row["confidence"]),
            sources=str(pick(row, "sources") or ""), evidence=tuple(int(p) for p in row.get("evidence") or ()),
        ))
    events.sort(key=lambda e: (e.parcel_key, e.main or e.start or date.min, e.marker, e.seq))
    return events


def lights_for_parcel(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int | None = None,
                      scheme: str | None = None) -> list[LightRecord]:
    """Return the traffic lights of one parcel (None: every parcel), optionally of one scheme."""
    rows = conn.execute(
        "SELECT to_jsonb(t) FROM cbm.traffic_light t WHERE t.parcel_set_id = %s "
        "AND (%s::integer IS NULL OR t.parcel_key = %s::integer) AND (%s::text IS NULL OR t.scheme = %s::text) "
        "ORDER BY t.parcel_key, t.scheme",
        (parcel_set_id, parcel_key, parcel_key, scheme, scheme),
    ).fetchall()
    return [LightRecord(
        parcel_key=int(row["parcel_key"]), scheme=str(row["scheme"]), colour=str(row["colour"]),
        reason=str(row["reason"]), rule_id=str(pick(row, "rule_id", "rule") or ""),
        rules_version=str(pick(row, "rules_version", "rules_hash") or ""),
        marker_run_ids=tuple(int(i) for i in row.get("marker_run_ids") or ()),
        pipeline_run_id=row.get("pipeline_run_id"), decided_at=str(row.get("decided_at") or ""),
    ) for (row,) in rows]
