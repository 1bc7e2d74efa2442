"""Reproducibility check: recompute markers and lights from the stored time series and compare.

For every parcel of a set (or one parcel) the current marker run is found; its parameters and
the rules of its lights are rebuilt from what was recorded (and their hashes checked); the time
series is read as the run read it and the markers and lights computed again with this code. Every
difference from the stored rows is listed: a missing or extra event, a changed date, value or
confidence, changed images behind an event (events stored before migration 015 name none and are
not compared on them), a changed light, or a changed count of observations used and rejected. Zero
differences means the stored decision follows from the stored data, parameters and code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import numpy as np
import psycopg

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import NotFoundError
from cbm_tasks.lineage import code_version
from cbm_tasks.markers import db_read
from cbm_tasks.markers.engine import MARKERS, MarkerResult, dated_products, evidence_lists, run_markers, sources_text
from cbm_tasks.report import decisions
from cbm_tasks.report.recorded import recorded_params, recorded_rules
from cbm_tasks.traffic_light.evaluate import evaluate_lights

__all__ = ["Difference", "VerifyResult", "verify_parcel_set"]

log = logging.getLogger(__name__)

_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Difference:
    """One stored value that the recomputation does not reproduce."""

    parcel_id: str
    what: str  # event mowing#1, light GRASSLAND, observations
    field: str
    stored: str
    recomputed: str

    def line(self) -> str:
        """One line for the report."""
        return f"parcel {self.parcel_id}: {self.what} {self.field}: stored {self.stored}, recomputed {self.recomputed}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What was checked and every difference found."""

    aoi: str
    year: int
    parcels_checked: int
    events_checked: int
    lights_checked: int
    marker_runs: tuple[int, ...]
    code_versions: tuple[str, ...]
    current_code_version: str
    differences: tuple[Difference, ...]
    seconds: float

    @property
    def parcels_differing(self) -> list[str]:
        """The parcels with at least one difference, sorted."""
        return sorted({d.parcel_id for d in self.differences})


def _day(days: float) -> date:
    return date.fromordinal(_EPOCH.toordinal() + int(np.floor(days)))


def _images_text(start: int | None, main: int | None, end: int | None, evidence: list[int]) -> str:
    return f"start {start} main {main} end {end} evidence {evidence}"


def _event_values(result: MarkerResult, i: int) -> dict[str, str]:
    # as the writer stores them: dates by day, value and confidence as float32, images as ids (None: none)
    start, main, end = (None if v < 0 else int(v) for v in dated_products(result.products[i:i + 1])[0].tolist())
    return {"start": str(_day(result.start[i])), "main": str(_day(result.main[i])), "end": str(_day(result.end[i])),
            "value": repr(float(np.float32(result.value[i]))),
            "confidence": repr(float(np.float32(np.clip(result.confidence[i], 0.0, 1.0)))),
            "sources": sources_text(int(result.sources[i])),
            "images": _images_text(start, main, end, evidence_lists(result.products[i:i + 1])[0])}


def _stored_values(event: decisions.MarkerEventRecord) -> dict[str, str]:
    values = {"start": str(event.start), "main": str(event.main), "end": str(event.end),
              "value": repr(float(np.float32(event.value))) if event.value is not None else "None",
              "confidence": repr(float(np.float32(event.confidence))) if event.confidence is not None else "None",
              "sources": event.sources}
    if event.evidence:  # written since migration 015 (older events name no image)
        values["images"] = _images_text(event.start_product, event.main_product, event.end_product,
                                        list(event.evidence))
    return values


def _compare(parcel_id: str, what: str, stored: dict[str, str] | None,
             recomputed: dict[str, str] | None) -> Iterable[Difference]:
    if stored is None or recomputed is None:
        yield Difference(parcel_id, what, "presence", "absent" if stored is None else "present",
                         "absent" if recomputed is None else "present")
        return
    for name, value in stored.items():
        if recomputed.get(name) != value:
            yield Difference(parcel_id, what, name, value, str(recomputed.get(name)))


def _check_run(conn: psycopg.Connection, *, aoi: str, year: int, parcel_set_id: int, marker_run_id: int,
               keys: list[int], observations: dict[int, tuple[int, int, int]],
               names: dict[int, str]) -> tuple[list[Difference], int, int, str]:
    run = decisions.marker_run(conn, marker_run_id)
    if run is None:
        raise NotFoundError(f"marker run {marker_run_id} disappeared during the check")
    params = recorded_params(run.params, expected_hash=run.params_hash)
    products = db_read.read_products(conn, parcel_set_id)
    db_series = db_read.read_parcel_series(conn, parcel_set_id=parcel_set_id, products=products,
                                           parcel_keys=np.array(keys, np.int32),
                                           overpass_seconds=params.get("data", "overpass_seconds"))
    result = run_markers(db_series.series, params, use_s1=run.use_s1)
    row_keys = [int(k) for k in db_series.parcel_keys]
    differences: list[Difference] = []
    for p, key in enumerate(row_keys):  # observations used and rejected, per parcel
        _, n_used, n_rejected = observations[key]
        differences.extend(_compare(names[key], "observations", {"used": str(n_used), "rejected": str(n_rejected)},
                                    {"used": str(int(result.n_used[p])), "rejected": str(int(result.n_rejected[p]))}))
    stored_events = {(e.parcel_key, e.marker, e.seq): _stored_values(e)
                     for e in decisions.events(conn, marker_run_id=marker_run_id, parcel_keys=keys)}
    recomputed_events = {(row_keys[int(result.parcel[i])], MARKERS[int(result.marker[i])], int(result.seq[i])):
                         _event_values(result, i) for i in range(result.n_events)}
    for key3 in sorted(set(stored_events) | set(recomputed_events)):
        differences.extend(_compare(names[key3[0]], f"event {key3[1]}#{key3[2]}", stored_events.get(key3),
                                    recomputed_events.get(key3)))
    stored_lights = [light for light in decisions.lights(conn, parcel_set_id=parcel_set_id)
                     if light.parcel_key in set(keys) and marker_run_id in light.marker_run_ids]
    n_lights = 0
    for rules_hash in sorted({light.rules_hash for light in stored_lights if light.rules_hash}):
        rules = recorded_rules(conn, rules_hash)
        crops: dict[str, str | None] = dict(conn.execute(
            "SELECT parcel_key::text, crop_code FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_key = ANY(%s)",
            (parcel_set_id, keys)).fetchall())
        stored = {(light.parcel_key, light.scheme): light for light in stored_lights if light.rules_hash == rules_hash}
        recomputed = {(int(light.parcel_id), light.scheme): light
                      for light in evaluate_lights(result, rules, crops=crops, aoi=aoi, year=year)
                      if (int(light.parcel_id), light.scheme) in stored}
        n_lights += len(stored)
        for (key, scheme), light in sorted(stored.items()):
            again = recomputed.get((key, scheme))
            differences.extend(_compare(
                names[key], f"light {scheme}",
                {"colour": light.colour, "reason": light.reason, "rule": str(light.rule_id),
                 "event": str(light.event_seq), "clear_obs": str(light.n_clear_obs)},
                None if again is None else {"colour": again.colour, "reason": again.reason, "rule": again.rule_id,
                                            "event": str(again.event_seq), "clear_obs": str(again.n_clear_obs)}))
    return differences, len(stored_events), n_lights, run.code_version or "-"


def verify_parcel_set(conn: psycopg.Connection, *, aoi: str, year: int, parcel_id: str | None = None) -> VerifyResult:
    """Recompute the stored markers and lights of a parcel set (or one parcel) and list every difference.

    Args:
        conn: CbM database.
        aoi: AOI of the parcel set.
        year: its year.
        parcel_id: only this parcel; None = every parcel with a marker run.

    Raises:
        NotFoundError: no such parcel set or parcel, or the parcel was never computed.
        BadInputError: recorded parameters or rules no longer match their hashes.
    """
    t0 = time.perf_counter()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for every read
        parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
        set_id = parcel_set.parcel_set_id
        key = None
        if parcel_id is not None:
            row = conn.execute("SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_id = %s",
                               (set_id, parcel_id)).fetchone()
            if row is None:
                raise NotFoundError(f"parcel {parcel_id!r} is not in the {year} parcel set of AOI {aoi!r}")
            key = int(row[0])
        current = decisions.current_runs(conn, parcel_set_id=set_id, parcel_key=key)
        if parcel_id is not None and not current:
            raise NotFoundError(f"parcel {parcel_id!r} ({aoi} {year}) has no marker run to verify")
        names = decisions.parcel_names(conn, parcel_set_id=set_id, keys=list(current))
        by_run = decisions.parcels_by_run(current)
        differences: list[Difference] = []
        n_events = n_lights = 0
        versions: set[str] = set()
        for run_id, keys in sorted(by_run.items()):
            found, events_checked, lights_checked, version = _check_run(
                conn, aoi=aoi, year=year, parcel_set_id=set_id, marker_run_id=run_id, keys=keys,
                observations=current, names=names)
            differences.extend(found)
            n_events += events_checked
            n_lights += lights_checked
            versions.add(version)
    result = VerifyResult(aoi, year, len(current), n_events, n_lights, tuple(sorted(by_run)),
                          tuple(sorted(versions)), code_version(), tuple(differences),
                          round(time.perf_counter() - t0, 3))
    log.info("verified aoi=%s year=%d parcels=%d events=%d lights=%d differences=%d parcels_differing=%d seconds=%.2f",
             aoi, year, result.parcels_checked, n_events, n_lights, len(differences),
             len(result.parcels_differing), result.seconds)
    return result
