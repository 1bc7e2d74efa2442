"""What the audit report of one parcel shows, gathered from the database (no rendering here).

:func:`gather` reads the parcel, its traffic lights and marker events as stored, the products
whose statistics it has with their lineage, and recomputes the marker figure from the stored
time series with the recorded parameters (the same computation ``cbm audit verify`` checks), and
with them every NDVI fall of the season judged as a cut and every crop cycle as a harvest (why a
mowing or a harvest was or was not found); given the object store, the images behind the events.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from matplotlib.backends.backend_agg import FigureCanvasAgg

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import NotFoundError
from cbm_tasks.lineage import code_version
from cbm_tasks.markers import db_read
from cbm_tasks.markers.bare_soil_explain import BareSoilExplanation, explain_bare_soil
from cbm_tasks.markers.emergence_explain import CrossingVerdict, explain_emergence
from cbm_tasks.markers.engine import markers_from_prepared
from cbm_tasks.markers.harvest_explain import CycleVerdict, explain_harvest
from cbm_tasks.markers.mowing_explain import StepVerdict, explain_mowing
from cbm_tasks.markers.params import MarkerParams, default_params
from cbm_tasks.markers.plot import parcel_figure
from cbm_tasks.markers.preprocess import prepare
from cbm_tasks.markers.series import SeriesTable
from cbm_tasks.report import decisions
from cbm_tasks.report.decisions import LightRecord, MarkerEventRecord, MarkerRunRecord
from cbm_tasks.report.evidence import EventEvidence, event_evidence
from cbm_tasks.report.lineage_read import ProductLineage, RunRecord, products_for_parcel, run_record
from cbm_tasks.report.recorded import recorded_params, recorded_rules
from cbm_tasks.store import Store
from cbm_tasks.traffic_light.explain import LightExplanation, explain_light
from cbm_tasks.traffic_light.rules import SchemeRules

__all__ = ["ParcelAudit", "ParcelInfo", "Stamp", "gather", "pick_parcel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ParcelInfo:
    """The parcel as declared, with its outline as an SVG path in its set's CRS (y flipped)."""

    parcel_id: str
    parcel_key: int
    crop_code: str | None
    crop_name: str | None
    area_m2: float
    lon: float
    lat: float
    outline_path: str
    view_box: str
    srid: int
    # its set's inner buffer, and the shrunk outline the statistics come from (None: the whole parcel)
    inner_buffer_m: int = 0
    inner_path: str | None = None
    inner_area_m2: float | None = None


@dataclass(frozen=True, slots=True)
class Stamp:
    """What reproduces the decisions: parameters, code and parcel-set version."""

    params_hash: str
    params_version: str
    marker_code_version: str
    report_code_version: str
    parcel_set_version: int
    rules_version: str
    generated_at: datetime


@dataclass(frozen=True, slots=True)
class ParcelAudit:
    """Everything the report of one parcel shows."""

    aoi: str
    year: int
    parcel: ParcelInfo
    lights: list[LightRecord]
    events: list[MarkerEventRecord]
    products: list[ProductLineage]
    marker_runs: list[RunRecord]
    stamp: Stamp
    plot_png: bytes | None
    n_obs_used: int
    n_obs_rejected: int
    notes: list[str] = field(default_factory=list)
    mowing_falls: list[StepVerdict] = field(default_factory=list)  # NDVI falls judged as cuts (mowing_explain)
    harvest_cycles: list[CycleVerdict] = field(default_factory=list)  # crop cycles judged as harvests
    bare_soil: BareSoilExplanation | None = None  # observations below the soil line judged as bare soil
    emergence_rises: list[CrossingVerdict] = field(default_factory=list)  # rises judged as emergences
    light_explanations: list[LightExplanation] = field(default_factory=list)  # each stored light, rule by rule
    evidence: list[EventEvidence] = field(default_factory=list)  # the images behind the events (with a store)


@dataclass(frozen=True, slots=True)
class _SeriesViews:
    """The figure (PNG) and the explanations of the markers the parcel's schemes read."""

    png: bytes | None = None
    falls: list[StepVerdict] = field(default_factory=list)
    cycles: list[CycleVerdict] = field(default_factory=list)
    bare_soil: BareSoilExplanation | None = None
    rises: list[CrossingVerdict] = field(default_factory=list)


def _parcel(conn: psycopg.Connection, parcel_set_id: int, parcel_id: str, *, aoi: str, year: int) -> ParcelInfo:
    row = conn.execute(
        "SELECT p.parcel_key, p.crop_code, p.crop_name, p.area_m2, "
        "       ST_X(ST_Transform(ST_PointOnSurface(p.geom), 4326)), "
        "       ST_Y(ST_Transform(ST_PointOnSurface(p.geom), 4326)), "
        "       ST_AsSVG(p.geom, 0, 2), ST_XMin(p.geom), ST_YMax(p.geom), ST_XMax(p.geom) - ST_XMin(p.geom), "
        "       ST_YMax(p.geom) - ST_YMin(p.geom), ST_SRID(p.geom), s.inner_buffer_m, ST_AsSVG(p.geom_inner, 0, 2), "
        "       CASE WHEN cbm.srid_is_geographic(s.srid) THEN ST_Area(p.geom_inner::geography) "
        "            ELSE ST_Area(p.geom_inner) END "
        "FROM cbm.parcel p JOIN cbm.parcel_set s USING (parcel_set_id) "
        "WHERE p.parcel_set_id = %s AND p.parcel_id = %s",
        (parcel_set_id, parcel_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"parcel {parcel_id!r} is not in the {year} parcel set of AOI {aoi!r}")
    key, crop_code, crop_name, area, lon, lat, path, xmin, ymax, width, height, srid, buffer_m, inner, inner_area = row
    pad = max(width, height) * 0.08 or 1.0
    view_box = f"{xmin - pad:.2f} {-ymax - pad:.2f} {width + 2 * pad:.2f} {height + 2 * pad:.2f}"
    return ParcelInfo(parcel_id, int(key), crop_code, crop_name, float(area), float(lon), float(lat), str(path),
                      view_box, int(srid), int(buffer_m), inner, None if inner_area is None else float(inner_area))


def _series_views(series: SeriesTable, parcel: ParcelInfo, params: MarkerParams, use_s1: bool,
                  markers: set[str] | None, year: int) -> _SeriesViews:
    """The figure and the explanations of the markers the schemes read (all of them when *markers* is None).

    NDVI falls judged as cuts, crop cycles as harvests, observations below the soil line as bare soil,
    rises through the emergence threshold as emergences.
    """
    if series.n_rows == 0:
        return _SeriesViews()
    prepared = prepare(series, params)
    result = markers_from_prepared(prepared, params, use_s1=use_s1)
    figure = parcel_figure(prepared, result, 0, markers=markers)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)  # a Figure made without pyplot has no canvas to draw on
    figure.savefig(buffer, format="png", dpi=80)
    falls: list[StepVerdict] = []
    if markers is None or "mowing" in markers:
        falls = explain_mowing(series, parcel.parcel_id, params, use_s1=use_s1, year=year).steps
    cycles: list[CycleVerdict] = []
    if (markers is None or "harvest" in markers) and params.get("harvest", "crop_cycles") > 0:
        cycles = explain_harvest(series, parcel.parcel_id, params, year=year).cycles
    bare = None
    if markers is None or "bare_soil" in markers:
        bare = explain_bare_soil(series, parcel.parcel_id, params, year=year)
    rises: list[CrossingVerdict] = []
    if markers is None or "emergence" in markers:
        rises = explain_emergence(series, parcel.parcel_id, params, year=year).crossings
    return _SeriesViews(buffer.getvalue(), falls, cycles, bare, rises)


def _light_views(conn: psycopg.Connection, series: SeriesTable, parcel: ParcelInfo, params: MarkerParams,
                 use_s1: bool, lights: list[LightRecord], year: int) -> list[LightExplanation]:
    """Each stored light re-evaluated rule by rule with its own stored rules (where and why its gap, which events)."""
    if not lights or series.n_rows == 0:
        return []
    rules: dict[str, SchemeRules] = {}
    out = []
    for light in lights:
        if not light.rules_hash:
            continue
        if light.rules_hash not in rules:
            rules[light.rules_hash] = recorded_rules(conn, light.rules_hash)
        if light.scheme in rules[light.rules_hash].schemes:
            out.append(explain_light(series, parcel.parcel_id, light.scheme, rules[light.rules_hash], params,
                                     year=light.season or year, use_s1=use_s1))
    return out


def gather(conn: psycopg.Connection, *, aoi: str, year: int, parcel_id: str, scheme: str | None = None,
           store: Store | None = None) -> ParcelAudit:
    """Read everything the audit report of one parcel shows.

    Args:
        conn: CbM database.
        aoi: AOI of the parcel set.
        year: its year.
        parcel_id: the parcel, as the agency declares it.
        scheme: only this aid scheme's light; None = all schemes of the parcel.
        store: the object store of the images: with it the report shows the images behind the events
            (:mod:`cbm_tasks.report.evidence`); None = without them.

    Raises:
        NotFoundError: no parcel set for (aoi, year), or no such parcel in it.
    """
    t0 = time.perf_counter()
    notes: list[str] = []
    with conn.transaction():
        parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
        set_id = parcel_set.parcel_set_id
        parcel = _parcel(conn, set_id, parcel_id, aoi=aoi, year=year)
        lights = decisions.lights(conn, parcel_set_id=set_id, parcel_key=parcel.parcel_key, scheme=scheme)
        current = decisions.current_runs(conn, parcel_set_id=set_id, parcel_key=parcel.parcel_key)
        run: MarkerRunRecord | None = None
        events: list[MarkerEventRecord] = []
        n_used = n_rejected = 0
        if parcel.parcel_key in current:
            run_id, n_used, n_rejected = current[parcel.parcel_key]
            run = decisions.marker_run(conn, run_id)
            events = decisions.events(conn, marker_run_id=run_id, parcel_keys=[parcel.parcel_key])
    products = products_for_parcel(conn, parcel_set_id=set_id, parcel_key=parcel.parcel_key)
    run_ids = sorted({light.pipeline_run_id for light in lights if light.pipeline_run_id is not None}
                     | ({run.pipeline_run_id} if run is not None and run.pipeline_run_id is not None else set()))
    runs = [found for run_id in run_ids if (found := run_record(conn, int(run_id))) is not None]
    if run is None:
        notes.append("No marker run has computed this parcel yet: the figure shows markers computed now with the "
                      "default parameters; there are no stored events or lights.")
        params, use_s1 = default_params(), True
    else:
        params, use_s1 = recorded_params(run.params), run.use_s1
        if run.params_hash and params.hash != run.params_hash:
            notes.append(f"The stored parameters of marker run {run.marker_run_id} now hash to {params.hash[:12]}, "
                         f"not the recorded {run.params_hash[:12]}: they were changed after the run, and the "
                         "figure and the judged falls below use the changed values (cbm audit verify lists the "
                         "difference).")
    if scheme is not None and not lights:
        notes.append(f"No traffic light of scheme {scheme!r} is stored for this parcel.")
    # the figure draws the events of the markers the parcel's schemes read (all without lights)
    series = db_read.parcel_series(conn, parcel_set_id=set_id, parcel_key=parcel.parcel_key, name=parcel.parcel_id,
                                   overpass_seconds=params.get("data", "overpass_seconds"))
    views = _series_views(series, parcel, params, use_s1, decisions.scheme_markers(conn, lights) if lights else None,
                          year)
    light_explanations = _light_views(conn, series, parcel, params, use_s1, lights, year)
    evidence = [] if store is None else event_evidence(
        conn, store, parcel_set_id=set_id, parcel_key=parcel.parcel_key, srid=parcel.srid, events=events,
        lights=lights, explanations=light_explanations, falls=views.falls, products=products)
    stamp = Stamp(
        params_hash=params.hash, params_version=str(params.version),
        marker_code_version=(run.code_version or "-") if run is not None else "-",
        report_code_version=code_version(), parcel_set_version=parcel_set.version,
        rules_version=", ".join(sorted({f"v{light.rules_version} ({(light.rules_hash or '')[:12]})"
                                        for light in lights})) or "-",
        generated_at=datetime.now(UTC).replace(microsecond=0),
    )
    audit = ParcelAudit(aoi, year, parcel, lights, events, products, runs, stamp, views.png, n_used, n_rejected,
                        notes, views.falls, views.cycles, views.bare_soil, views.rises, light_explanations, evidence)
    log.info("gathered parcel audit aoi=%s year=%d parcel=%s lights=%d events=%d products=%d seconds=%.2f", aoi, year,
             parcel_id, len(lights), len(events), len(products), time.perf_counter() - t0)
    return audit


def pick_parcel(conn: psycopg.Connection, *, aoi: str, year: int) -> str:
    """Return a parcel worth showing: one with a red or yellow light, else a light, else the most observations.

    Raises:
        NotFoundError: no parcel set for (aoi, year), or it has no observation at all.
    """
    with conn.transaction():
        parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
        row = conn.execute(
            "SELECT p.parcel_id FROM cbm.parcel p "
            "LEFT JOIN cbm.traffic_light t ON t.parcel_set_id = p.parcel_set_id AND t.parcel_key = p.parcel_key "
            "JOIN cbm.parcel_obs o ON o.parcel_set_id = p.parcel_set_id AND o.parcel_key = p.parcel_key "
            "WHERE p.parcel_set_id = %s GROUP BY p.parcel_id "
            "ORDER BY bool_or(t.colour IN ('red', 'yellow')) DESC NULLS LAST, count(t.colour) DESC, "
            "count(o.product_id) DESC, p.parcel_id LIMIT 1",
            (parcel_set.parcel_set_id,),
        ).fetchone()
    if row is None:
        raise NotFoundError(f"the {year} parcel set of AOI {aoi!r} has no observation to report on")
    return str(row[0])
