"""Write marker runs, events, per-parcel lineage and traffic lights to PostGIS (``sql/011_marker_lineage.sql``).

Each event names its images (``start_product``, ``main_product``, ``end_product``, ``evidence``;
``sql/015_marker_event_products.sql``).

Everything of one run is written by the caller's single transaction: the run row, then per batch
of parcels binary ``COPY`` of events (``cbm.marker_event``), of the images each parcel's markers
used and rejected (``cbm.marker_parcel``) and of the lights (``cbm.traffic_light``, after the
parcels' previous lights of the evaluated schemes are deleted). :func:`collect_garbage` then
drops what the new run replaced, except rows a remaining light still points to, so that every
light stays explainable.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from cbm_tasks.errors import MigrationError
from cbm_tasks.markers.db_read import DbSeries
from cbm_tasks.markers.engine import MARKERS, MarkerResult
from cbm_tasks.markers.event_copy import COPY_COLUMNS, events_copy_payload
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.traffic_light.evaluate import TrafficLight
from cbm_tasks.traffic_light.rules import SchemeRules

__all__ = ["BatchCounts", "collect_garbage", "delete_lights", "finish_marker_run", "record_rules",
           "start_marker_run", "write_batch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """Rows written for one batch of parcels."""

    events: int
    parcels: int
    lights: int


def record_rules(cur: psycopg.Cursor[Any], rules: SchemeRules, document: Mapping[str, Any]) -> None:
    """Store the rules file as applied (``cbm.scheme_rules``, keyed by its hash; kept once)."""
    cur.execute(
        "INSERT INTO cbm.scheme_rules (rules_hash, version, source, content) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (rules_hash) DO NOTHING",
        (rules.hash, rules.version, rules.source, json.dumps(document, sort_keys=True, default=str)),
    )


def start_marker_run(cur: psycopg.Cursor[Any], *, parcel_set_id: int, params: MarkerParams, code_version: str,
                     use_s1: bool, scope: str, pipeline_run_id: int | None) -> int:
    """Insert the run row (``marker = 'all'``); return its id. ``read_at`` is this transaction's time."""
    row = cur.execute(
        "INSERT INTO cbm.marker_run (parcel_set_id, marker, markers, params, params_version, params_hash, "
        "code_version, use_s1, scope, read_at, pipeline_run_id) "
        "VALUES (%s, 'all', %s, %s, %s, %s, %s, %s, %s, now(), %s) RETURNING marker_run_id",
        (parcel_set_id, list(MARKERS), json.dumps(params.as_dict(), sort_keys=True), params.version, params.hash,
         code_version, use_s1, scope, pipeline_run_id),
    ).fetchone()
    if row is None:  # INSERT ... RETURNING gives a row unless the schema was changed by hand
        raise MigrationError("cbm.marker_run returned no id; is the schema migrated (cbm db migrate)?")
    return int(row[0])


def finish_marker_run(cur: psycopg.Cursor[Any], marker_run_id: int, *, n_parcels: int,
                      product_ids: Sequence[int]) -> None:
    """Record the run's parcel count and every image it read."""
    cur.execute("UPDATE cbm.marker_run SET n_parcels = %s, product_ids = %s WHERE marker_run_id = %s",
                (n_parcels, list(product_ids), marker_run_id))


def delete_lights(cur: psycopg.Cursor[Any], parcel_set_id: int, parcel_keys: np.ndarray,
                  schemes: Sequence[str] | None) -> int:
    """Delete the lights of *parcel_keys* (of *schemes*, or all schemes when None); return the count."""
    keys = parcel_keys.astype(np.int64).tolist()
    if schemes is None:
        cur.execute("DELETE FROM cbm.traffic_light WHERE parcel_set_id = %s AND parcel_key = ANY(%s::integer[])",
                    (parcel_set_id, keys))
    else:
        cur.execute("DELETE FROM cbm.traffic_light WHERE parcel_set_id = %s AND parcel_key = ANY(%s::integer[]) "
                    "AND scheme = ANY(%s::text[])", (parcel_set_id, keys, list(schemes)))
    return cur.rowcount


def _copy_events(cur: psycopg.Cursor[Any], marker_run_id: int, keys: np.ndarray, result: MarkerResult) -> int:
    """COPY (binary) the events with the images that prove them, encoded by NumPy (:mod:`.event_copy`)."""
    query = sql.SQL("COPY cbm.marker_event ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(", ").join(sql.Identifier(column) for column in COPY_COLUMNS))
    with cur.copy(query) as copy:
        copy.write(events_copy_payload(marker_run_id, keys, result))
    return result.n_events


def _lineage(db_series: DbSeries, result: MarkerResult) -> tuple[np.ndarray, np.ndarray]:
    """Return (used, owner offsets) masks over db_series.obs_*: S2 used = clear days of the result."""
    seconds = np.round(db_series.obs_day * 86_400.0).astype(np.int64)
    obs_key = (db_series.obs_parcel.astype(np.int64) << 32) | seconds
    clear_owner = np.repeat(np.arange(len(result.parcel_ids), dtype=np.int64), np.diff(result.clear_offsets))
    clear_key = (clear_owner << 32) | np.round(result.clear_day * 86_400.0).astype(np.int64)
    clear_key.sort()  # already in (parcel, day) order from the core; sorting sorted keys is cheap
    position = np.clip(np.searchsorted(clear_key, obs_key), 0, max(len(clear_key) - 1, 0))
    used = ~db_series.obs_is_s2 | ((clear_key[position] == obs_key) if len(clear_key) else False)
    offsets = np.searchsorted(db_series.obs_parcel, np.arange(len(db_series.parcel_keys) + 1))
    return used, offsets


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_PGCOPY_TRAILER = struct.pack(">h", -1)
_INT4_OID = 23
_ROW_HEAD = struct.Struct(">hiiiiiiii")  # 6 fields; marker_run_id, parcel_key, n_used, n_rejected (len + value)
_ARRAY_HEAD = struct.Struct(">iiiiii")  # field length, ndim 1, no nulls, int4, dimension, lower bound 1
_EMPTY_ARRAY = struct.pack(">iiii", 12, 0, 0, _INT4_OID)  # field length, ndim 0, no nulls, int4


def _int4_array(elements: bytes, n: int) -> bytes:
    if n == 0:
        return _EMPTY_ARRAY
    return _ARRAY_HEAD.pack(20 + 8 * n, 1, 0, _INT4_OID, n, 1) + elements


def _copy_parcels(cur: psycopg.Cursor[Any], marker_run_id: int, db_series: DbSeries, result: MarkerResult) -> int:
    """COPY (binary) one row per parcel: the images its markers used and rejected, as int4[].

    The array elements of all parcels are encoded by NumPy in one go; per parcel only its head is
    packed, which keeps a country's lineage rows from costing a Python list per array.
    """
    used, _ = _lineage(db_series, result)
    # used before rejected within each parcel, product-id order inside each (obs are by parcel, product)
    order = np.lexsort((db_series.obs_product, ~used, db_series.obs_parcel))
    products, is_used, owner = db_series.obs_product[order], used[order], db_series.obs_parcel[order]
    elements = np.empty((len(products), 2), ">i4")
    elements[:, 0], elements[:, 1] = 4, products
    blob = elements.tobytes()
    n_keys = len(db_series.parcel_keys)
    starts = np.searchsorted(owner, np.arange(n_keys + 1))
    n_used_obs = np.bincount(owner[is_used], minlength=n_keys)
    pieces = [_PGCOPY_HEADER]
    for key, lo, hi, n_in, n_used, n_rejected in zip(
            db_series.parcel_keys.tolist(), starts[:-1].tolist(), starts[1:].tolist(), n_used_obs.tolist(),
            result.n_used.tolist(), result.n_rejected.tolist(), strict=True):
        middle = lo + n_in
        pieces.append(_ROW_HEAD.pack(6, 4, marker_run_id, 4, key, 4, n_used, 4, n_rejected))
        pieces.append(_int4_array(blob[8 * lo:8 * middle], n_in))
        pieces.append(_int4_array(blob[8 * middle:8 * hi], hi - middle))
    pieces.append(_PGCOPY_TRAILER)
    with cur.copy("COPY cbm.marker_parcel (marker_run_id, parcel_key, n_used, n_rejected, obs_used, obs_rejected) "
                  "FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(b"".join(pieces))
    return n_keys


_LIGHT_COLUMNS = ("parcel_set_id, parcel_key, scheme, colour, reason, marker_run_ids, pipeline_run_id, rule_id, "
                  "rules_version, rules_hash, season, event_seq, n_clear_obs, longest_gap_days, event_marker")
_NULL = struct.pack(">i", -1)
_LIGHT_HEAD = struct.Struct(">hihii")  # 15 fields; parcel_set_id (int2), parcel_key (int4)
_LIGHT_TAIL = struct.Struct(">ihihiiif")  # season (int2), event_seq (int2), n_clear_obs (int4), gap (float4)


class _Texts(dict[str | None, bytes]):
    """A text field of the binary COPY format (length, UTF-8) per value, encoded once; None is NULL."""

    def __missing__(self, text: str | None) -> bytes:
        utf8 = None if text is None else text.encode()
        encoded = _NULL if utf8 is None else struct.pack(">i", len(utf8)) + utf8
        self[text] = encoded
        return encoded


def _copy_lights(cur: psycopg.Cursor[Any], *, parcel_set_id: int, marker_run_id: int, pipeline_run_id: int | None,
                 rules: SchemeRules, lights: Iterable[TrafficLight]) -> int:
    """COPY (binary) the lights, encoded here: a batch's few distinct texts once, per light only its numbers.

    (psycopg's generic row writer spent ~40 us a light on type dispatch and its one-element array.)
    """
    # the deciding event is (run, parcel, the rule's marker, event_seq): sql/019_light_deciding_event.sql
    rule_marker = {(scheme.name, rule.rule_id): rule.marker
                   for scheme in rules.schemes.values() for rule in scheme.rules}
    texts = _Texts()
    # marker_run_ids int4[] of one element, then pipeline_run_id int8 (NULL outside a pipeline run)
    run_ids = _int4_array(struct.pack(">ii", 4, marker_run_id), 1)
    pipeline = _NULL if pipeline_run_id is None else struct.pack(">iq", 8, pipeline_run_id)
    rules_fields = struct.pack(">ii", 4, rules.version) + texts[rules.hash]
    pieces, n = [_PGCOPY_HEADER], 0
    for light in lights:
        marker = rule_marker.get((light.scheme, light.rule_id)) if light.event_seq else None
        pieces += (_LIGHT_HEAD.pack(15, 2, parcel_set_id, 4, int(light.parcel_id)), texts[light.scheme],
                   texts[light.colour], texts[light.reason], run_ids, pipeline, texts[light.rule_id], rules_fields,
                   _LIGHT_TAIL.pack(2, light.year, 2, light.event_seq, 4, light.n_clear_obs, 4,
                                    light.longest_gap_days), texts[marker])
        n += 1
    pieces.append(_PGCOPY_TRAILER)
    with cur.copy(f"COPY cbm.traffic_light ({_LIGHT_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(b"".join(pieces))
    return n


def write_batch(cur: psycopg.Cursor[Any], *, parcel_set_id: int, marker_run_id: int, pipeline_run_id: int | None,
                db_series: DbSeries, result: MarkerResult, rules: SchemeRules,
                lights: Iterable[TrafficLight]) -> BatchCounts:
    """COPY one batch's events, per-parcel lineage and lights (the caller deleted the old lights)."""
    events = _copy_events(cur, marker_run_id, db_series.parcel_keys, result)
    parcels = _copy_parcels(cur, marker_run_id, db_series, result)
    n_lights = _copy_lights(cur, parcel_set_id=parcel_set_id, marker_run_id=marker_run_id,
                            pipeline_run_id=pipeline_run_id, rules=rules, lights=lights)
    return BatchCounts(events, parcels, n_lights)


def collect_garbage(cur: psycopg.Cursor[Any], *, parcel_set_id: int, marker_run_id: int,
                    parcel_keys: np.ndarray) -> int:
    """Delete what run *marker_run_id* replaced; return the number of marker runs removed.

    Events and lineage of *parcel_keys* in older runs of the set go, unless a light still refers to
    that run (a light of a scheme this run did not evaluate); older runs left without any parcel go.
    """
    params = {"keys": parcel_keys.astype(np.int64).tolist(), "set": parcel_set_id, "run": marker_run_id}
    cur.execute(
        "DELETE FROM cbm.marker_event x USING cbm.marker_run r, unnest(%(keys)s::integer[]) AS k(parcel_key) "
        "WHERE x.marker_run_id = r.marker_run_id AND r.parcel_set_id = %(set)s AND r.marker_run_id <> %(run)s "
        "AND x.parcel_key = k.parcel_key AND NOT EXISTS (SELECT 1 FROM cbm.traffic_light t "
        "WHERE t.parcel_set_id = %(set)s AND t.parcel_key = x.parcel_key AND x.marker_run_id = ANY(t.marker_run_ids))",
        params)
    cur.execute(
        "DELETE FROM cbm.marker_parcel x USING cbm.marker_run r, unnest(%(keys)s::integer[]) AS k(parcel_key) "
        "WHERE x.marker_run_id = r.marker_run_id AND r.parcel_set_id = %(set)s AND r.marker_run_id <> %(run)s "
        "AND x.parcel_key = k.parcel_key AND NOT EXISTS (SELECT 1 FROM cbm.traffic_light t "
        "WHERE t.parcel_set_id = %(set)s AND t.parcel_key = x.parcel_key AND x.marker_run_id = ANY(t.marker_run_ids))",
        params)
    cur.execute(
        "DELETE FROM cbm.marker_run r WHERE r.parcel_set_id = %(set)s AND r.marker_run_id <> %(run)s "
        "AND NOT EXISTS (SELECT 1 FROM cbm.marker_parcel m WHERE m.marker_run_id = r.marker_run_id) "
        "AND NOT EXISTS (SELECT 1 FROM cbm.traffic_light t WHERE t.parcel_set_id = %(set)s "
        "AND r.marker_run_id = ANY(t.marker_run_ids))",
        params)
    return cur.rowcount
