"""SQL of the API's decisions: a parcel's marker events and traffic lights, and a set's light counts.

The parcel and time-series queries are :mod:`.queries`'; these read what ``cbm_markers`` wrote
(``cbm.marker_run``, ``cbm.marker_event``, ``cbm.marker_parcel``, ``cbm.traffic_light``).
"""

from __future__ import annotations

from typing import Any

import psycopg

from cbm_tasks.api.queries import ParcelSet, check_parcel

__all__ = ["parcel_markers", "parcel_traffic_lights", "traffic_light_summary"]


def parcel_markers(conn: psycopg.Connection, ps: ParcelSet, key: int) -> list[dict[str, Any]]:
    """Return the events of parcel *key* from its current marker run, by marker and date.

    The current run is the parcel's latest in ``cbm.marker_parcel`` (incremental runs cover some
    parcels only; older runs are kept while a light points at them), else the latest with events.
    Each event names its images: ``start_product`` / ``main_product`` / ``end_product`` (the images
    its dates come from) and ``evidence`` (all of them, then the S1 pairs; ``sql/015_marker_event_products.sql``).

    Raises:
        NotFoundError: no parcel *key*.
    """
    check_parcel(conn, ps, key)
    rows = conn.execute(
        "SELECT m.marker, m.marker_run_id, r.created_at, m.seq, m.event_start, m.main_date, m.event_end, m.value, "
        "m.confidence, m.sources, m.start_product, m.main_product, m.end_product, m.evidence, m.detail "
        "FROM cbm.marker_event m JOIN cbm.marker_run r USING (marker_run_id) "
        "WHERE r.parcel_set_id = %(set)s AND m.parcel_key = %(key)s AND m.marker_run_id = coalesce("
        "(SELECT max(p.marker_run_id) FROM cbm.marker_parcel p JOIN cbm.marker_run r2 USING (marker_run_id) "
        "WHERE r2.parcel_set_id = %(set)s AND p.parcel_key = %(key)s), "
        "(SELECT max(e.marker_run_id) FROM cbm.marker_event e JOIN cbm.marker_run r3 USING (marker_run_id) "
        "WHERE r3.parcel_set_id = %(set)s AND e.parcel_key = %(key)s)) "
        "ORDER BY m.marker, m.event_start NULLS LAST, m.seq",
        {"set": ps.parcel_set_id, "key": key},
    ).fetchall()
    names = ("marker", "marker_run_id", "run_at", "seq", "event_start", "main_date", "event_end", "value",
             "confidence", "sources", "start_product", "main_product", "end_product", "evidence", "detail")
    return [dict(zip(names, row, strict=True)) for row in rows]


def parcel_traffic_lights(conn: psycopg.Connection, ps: ParcelSet, key: int) -> list[dict[str, Any]]:
    """Return the traffic light of parcel *key* per aid scheme, with the event that decided it (or None).

    Raises:
        NotFoundError: no parcel *key*.
    """
    check_parcel(conn, ps, key)
    rows = conn.execute(
        "SELECT t.scheme, t.colour, t.reason, t.rule_id, t.marker_run_ids, t.decided_at, "
        "       e.marker, e.seq, e.main_date, e.confidence, e.evidence "
        "FROM cbm.traffic_light t "
        "LEFT JOIN cbm.marker_event e ON e.marker_run_id = t.marker_run_ids[1] AND e.parcel_key = t.parcel_key "
        "     AND e.marker = t.event_marker AND e.seq = t.event_seq "
        "WHERE t.parcel_set_id = %s AND t.parcel_key = %s ORDER BY t.scheme",
        (ps.parcel_set_id, key),
    ).fetchall()
    names = ("scheme", "colour", "reason", "rule_id", "marker_run_ids", "decided_at")
    # the event that decided the light and the images that prove it (sql/019_light_deciding_event.sql)
    event_names = ("marker", "seq", "main_date", "confidence", "images")
    return [dict(zip(names, row[:6], strict=True))
            | {"deciding_event": None if row[6] is None else dict(zip(event_names, row[6:], strict=True))}
            for row in rows]


def traffic_light_summary(conn: psycopg.Connection, ps: ParcelSet) -> list[dict[str, Any]]:
    """Return the number of parcels per scheme, colour and reason in the set."""
    rows = conn.execute(
        "SELECT scheme, colour, reason, count(*) FROM cbm.traffic_light WHERE parcel_set_id = %s "
        "GROUP BY 1, 2, 3 ORDER BY 1, array_position(ARRAY['red', 'yellow', 'green'], colour), 3",
        (ps.parcel_set_id,),
    ).fetchall()
    return [{"scheme": r[0], "colour": r[1], "reason": r[2], "n_parcels": int(r[3])} for r in rows]
