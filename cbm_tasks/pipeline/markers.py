"""The unit of work of the ``cbm_markers`` DAG and of ``cbm markers run --aoi``: markers and lights of a parcel set.

:func:`run_parcel_set` reads the time series of the parcels that need it, computes every marker
(:mod:`cbm_tasks.markers`) and the traffic light of every parcel and scheme
(:mod:`cbm_tasks.traffic_light`), and writes them with their lineage, all in one transaction:

- **incremental** (default): only parcels never computed, with observations of images extracted
  after (or not seen by) their last marker run, or whose last run used other parameters, S1 use or
  rules (an upgrade of the defaults reaches every parcel); nothing to do writes nothing;
- **full**: every parcel of the set;
- **idempotent**: a parcel's previous lights (of the evaluated schemes) and its replaced events are
  deleted in the same transaction, so a re-run leaves exactly one result per parcel and scheme;
- **lineage**: one ``cbm.pipeline_run`` per call (per Airflow task try), one ``cbm.marker_run``
  with the parameter hash and code version, the images each parcel used and rejected, and for
  every light the rule id, rules version and hash.

Runs of one parcel set are serialised by a row lock on its ``cbm.parcel_set`` row (which also
holds off a parcel import meanwhile); reads are bounded to the images listed at the start, and
``read_at`` (the transaction's start) tells which images are new for the next incremental run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml

from cbm_tasks import lineage
from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import ConfigError
from cbm_tasks.markers import db_read, db_write
from cbm_tasks.markers.engine import run_markers
from cbm_tasks.markers.params import MarkerParams, load_params
from cbm_tasks.traffic_light.evaluate import evaluate_lights
from cbm_tasks.traffic_light.rules import RulesFileError, SchemeRules, load_rules

__all__ = ["MarkersOutcome", "lights_summary", "parcels_to_compute", "rules_document", "run_parcel_set"]

log = logging.getLogger(__name__)

BATCH_PARCELS = 50_000  # parcels read, computed and written at a time (bounds memory: ~0.5 GB a batch)

_TO_COMPUTE = """
WITH latest AS (   -- each parcel's current marker run
    SELECT DISTINCT ON (m.parcel_key) m.parcel_key, m.marker_run_id, r.params_hash, r.use_s1
    FROM cbm.marker_parcel m JOIN cbm.marker_run r USING (marker_run_id)
    WHERE r.parcel_set_id = %(set)s
    ORDER BY m.parcel_key, m.marker_run_id DESC
), fresh AS (      -- per run: images it did not see, or extracted again after it read
    SELECT r.marker_run_id, e.product_id
    FROM cbm.marker_run r JOIN cbm.extraction e ON e.parcel_set_id = r.parcel_set_id
    WHERE r.parcel_set_id = %(set)s AND (e.extracted_at > r.read_at OR NOT e.product_id = ANY(r.product_ids))
)
SELECT p.parcel_key FROM cbm.parcel p LEFT JOIN latest l USING (parcel_key)
WHERE p.parcel_set_id = %(set)s
  AND (l.parcel_key IS NULL OR l.params_hash IS DISTINCT FROM %(params)s OR l.use_s1 IS DISTINCT FROM %(use_s1)s)
UNION
SELECT t.parcel_key FROM cbm.traffic_light t
WHERE t.parcel_set_id = %(set)s AND t.rules_hash IS DISTINCT FROM %(rules)s
  AND (%(scheme)s::text IS NULL OR t.scheme = %(scheme)s::text)
UNION
SELECT o.parcel_key FROM fresh f
JOIN cbm.parcel_obs o ON o.parcel_set_id = %(set)s AND o.product_id = f.product_id
JOIN latest l ON l.parcel_key = o.parcel_key AND l.marker_run_id = f.marker_run_id
ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class MarkersOutcome:
    """What one markers run did (a small JSON-able value: an XCom)."""

    aoi: str
    year: int
    scope: str  # full | incremental
    marker_run_id: int | None  # None: nothing to compute
    parcels: int
    events: int
    lights: int
    colours: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the outcome as a dict."""
        return asdict(self)


def rules_document(path: Path | None) -> dict[str, Any]:
    """Return the rules file's content as the mapping stored in ``cbm.scheme_rules`` (what its hash covers)."""
    try:
        text = (resources.files("cbm_tasks.traffic_light").joinpath("scheme_rules.yaml").read_text()
                if path is None else path.read_text())
        loaded = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as err:
        raise RulesFileError(f"rules file {path}: cannot read: {err}") from err
    if not isinstance(loaded, dict):
        raise RulesFileError(f"rules file {path}: expected a mapping")
    return loaded


def parcels_to_compute(conn: psycopg.Connection, parcel_set_id: int, *, full: bool, params_hash: str = "",
                       rules_hash: str = "", use_s1: bool = True, scheme: str | None = None) -> np.ndarray:
    """Return the sorted parcel keys a run must compute (all of them when *full*).

    Incremental: parcels never computed, with observations the last run did not see, whose last run
    had other parameters (*params_hash*) or S1 use, or with a light of other rules (*rules_hash*; of
    *scheme* only when given). After an upgrade of the defaults the next run brings every parcel to them.
    """
    if full:
        rows = conn.execute("SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s ORDER BY 1",
                            (parcel_set_id,)).fetchall()
    else:
        rows = conn.execute(_TO_COMPUTE, {"set": parcel_set_id, "params": params_hash, "rules": rules_hash,
                                          "use_s1": use_s1, "scheme": scheme}).fetchall()
    return np.array([row[0] for row in rows], dtype=np.int32)


def _crops(conn: psycopg.Connection, parcel_set_id: int, keys: np.ndarray) -> dict[str, str | None]:
    rows = conn.execute(
        "SELECT parcel_key, crop_code FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_key = ANY(%s::integer[])",
        (parcel_set_id, keys.astype(np.int64).tolist())).fetchall()
    return {str(key): crop for key, crop in rows}


def _check_scheme(rules: SchemeRules, scheme: str | None) -> None:
    if scheme is not None and scheme not in rules.schemes:
        raise ConfigError(f"scheme {scheme!r} is not in the rules file {rules.source}; "
                          f"known: {', '.join(sorted(rules.schemes))}")


def run_parcel_set(conn: psycopg.Connection, run: lineage.RunContext, *, aoi: str, year: int,
                   scheme: str | None = None, full: bool = False, rules_path: Path | None = None,
                   params_path: Path | None = None, use_s1: bool = True,
                   batch_parcels: int = BATCH_PARCELS) -> MarkersOutcome:
    """Compute and store the markers and traffic lights of *aoi*'s parcel set of *year*.

    Args:
        conn: an autocommit connection to the CbM database.
        run: where this runs (Airflow task try or command line), for ``cbm.pipeline_run``.
        aoi: the AOI of the parcel set.
        year: its year.
        scheme: evaluate and replace only this scheme's lights (markers are computed in full).
        full: every parcel; otherwise only parcels with new observations (or never computed).
        rules_path: scheme rules YAML (None: the shipped rules).
        params_path: marker parameters YAML overriding the defaults (None: the defaults).
        use_s1: let Sentinel-1 raise mowing confidence; False = the Sentinel-2-only variant.
        batch_parcels: parcels per read / compute / write batch.

    Returns:
        The counts of the run.

    Raises:
        NotFoundError: no parcel set for (aoi, year).
        ConfigError: invalid rules or parameters, or an unknown scheme (before anything is written).
    """
    t0 = time.perf_counter()
    rules = load_rules(rules_path)
    document = rules_document(rules_path)
    params = load_params(params_path)
    _check_scheme(rules, scheme)
    if batch_parcels < 1:
        raise ValueError(f"batch_parcels must be >= 1, got {batch_parcels}")
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    scope = "full" if full else "incremental"
    pipeline_run_id = lineage.start_run(conn, run, {"aoi": aoi, "year": year, "scheme": scheme, "scope": scope,
                                                    "params_hash": params.hash, "rules_hash": rules.hash,
                                                    "use_s1": use_s1})
    try:
        outcome = _compute_and_write(conn, aoi=aoi, year=year, parcel_set_id=parcel_set.parcel_set_id, scope=scope,
                                     scheme=scheme, rules=rules, document=document, params=params,
                                     use_s1=use_s1, batch_parcels=batch_parcels, pipeline_run_id=pipeline_run_id,
                                     t0=t0)
    except BaseException as err:  # also an execution timeout: the run row must not stay 'running'
        lineage.finish_failed(conn, pipeline_run_id, err)  # a lost connection does not hide the original error
        raise
    lineage.record_io(conn, pipeline_run_id, inputs=[
        lineage.RunInput("table", "cbm.parcel_obs", detail={"parcel_set_id": parcel_set.parcel_set_id}),
        lineage.RunInput("params", params.source, checksum=f"sha256:{params.hash}", version=str(params.version)),
        lineage.RunInput("params", rules.source, checksum=f"sha256:{rules.hash}", version=str(rules.version)),
    ], outputs=[
        lineage.RunOutput("table", "cbm.marker_event", n_rows=outcome.events,
                          detail={"marker_run_id": outcome.marker_run_id}),
        lineage.RunOutput("table", "cbm.traffic_light", n_rows=outcome.lights),
    ])
    lineage.finish_run(conn, pipeline_run_id, status="success")
    log.info("markers run aoi=%s year=%d scope=%s marker_run=%s parcels=%d events=%d lights=%d colours=%s "
             "seconds=%.2f", aoi, year, scope, outcome.marker_run_id, outcome.parcels, outcome.events,
             outcome.lights, outcome.colours, outcome.seconds)
    return outcome


def _compute_and_write(conn: psycopg.Connection, *, aoi: str, year: int, parcel_set_id: int, scope: str,
                       scheme: str | None, rules: SchemeRules, document: dict[str, Any], params: MarkerParams,
                       use_s1: bool, batch_parcels: int, pipeline_run_id: int, t0: float) -> MarkersOutcome:
    """Read, compute and write the parcels to compute in one transaction (see the module's docstring)."""
    colours = {"green": 0, "yellow": 0, "red": 0}
    n_events = n_lights = 0
    with conn.transaction(), conn.cursor() as cur:
        # one markers run per parcel set at a time, and no parcel import meanwhile: a row lock only the
        # pipeline roles can take (NO KEY UPDATE lets extraction keep inserting rows that refer to the set).
        # READ COMMITTED, so a run that waited sees what the one before it wrote; the reads are bounded to
        # the images listed at the start, which the run records: an image extracted later is new next time.
        cur.execute("SELECT 1 FROM cbm.parcel_set WHERE parcel_set_id = %s FOR NO KEY UPDATE", (parcel_set_id,))
        keys = parcels_to_compute(conn, parcel_set_id, full=scope == "full", params_hash=params.hash,
                                  rules_hash=rules.hash, use_s1=use_s1, scheme=scheme)
        if len(keys) == 0:
            return MarkersOutcome(aoi, year, scope, None, 0, 0, 0, colours, round(time.perf_counter() - t0, 3))
        products = db_read.read_products(conn, parcel_set_id)
        db_write.record_rules(cur, rules, document)
        run_id = db_write.start_marker_run(cur, parcel_set_id=parcel_set_id, params=params,
                                           code_version=lineage.code_version(), use_s1=use_s1, scope=scope,
                                           pipeline_run_id=pipeline_run_id)
        for start in range(0, len(keys), batch_parcels):
            batch = keys[start:start + batch_parcels]
            db_series = db_read.read_parcel_series(conn, parcel_set_id=parcel_set_id, products=products,
                                                   parcel_keys=batch, whole_range=scope == "full",
                                                   overpass_seconds=params.get("data", "overpass_seconds"))
            result = run_markers(db_series.series, params, use_s1=use_s1)
            crops = _crops(conn, parcel_set_id, batch)
            lights = [light for light in evaluate_lights(result, rules, crops=crops, aoi=aoi, year=year)
                      if scheme is None or light.scheme == scheme]
            db_write.delete_lights(cur, parcel_set_id, batch, None if scheme is None else [scheme])
            counts = db_write.write_batch(cur, parcel_set_id=parcel_set_id, marker_run_id=run_id,
                                          pipeline_run_id=pipeline_run_id, db_series=db_series, result=result,
                                          rules=rules, lights=lights)
            n_events += counts.events
            n_lights += counts.lights
            for light in lights:
                colours[light.colour] += 1
        removed = db_write.collect_garbage(cur, parcel_set_id=parcel_set_id, marker_run_id=run_id, parcel_keys=keys)
        db_write.finish_marker_run(cur, run_id, n_parcels=len(keys), product_ids=[p.product_id for p in products])
        log.debug("markers run %d replaced %d older runs", run_id, removed)
    return MarkersOutcome(aoi, year, scope, run_id, len(keys), n_events, n_lights, colours,
                          round(time.perf_counter() - t0, 3))


def lights_summary(conn: psycopg.Connection, *, aoi: str, year: int) -> dict[str, dict[str, dict[str, int]]]:
    """Return scheme -> colour -> reason -> number of parcels, for *aoi*'s parcel set of *year*."""
    parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
    rows = conn.execute(
        "SELECT scheme, colour, reason, count(*) FROM cbm.traffic_light WHERE parcel_set_id = %s "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", (parcel_set.parcel_set_id,)).fetchall()
    summary: dict[str, dict[str, dict[str, int]]] = {}
    for scheme, colour, reason, count in rows:
        summary.setdefault(scheme, {}).setdefault(colour, {})[reason] = int(count)
    return summary
