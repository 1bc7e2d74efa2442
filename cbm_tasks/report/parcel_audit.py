"""What the audit report of one parcel shows, gathered from the database (no rendering here).

:func:`gather` reads the parcel, its traffic lights and marker events as stored, the products
whose statistics it has with their lineage, and recomputes the marker figure from the stored
time series with the recorded parameters (the same computation ``cbm audit verify`` checks).
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
from cbm_tasks.markers.engine import markers_from_prepared
from cbm_tasks.markers.plot import parcel_figure
from cbm_tasks.markers.preprocess import prepare
from cbm_tasks.report.decisions import (
    LightRecord,
    MarkerEventRecord,
    current_marker_runs,
    events_for_parcel,
    lights_for_parcel,
)
from cbm_tasks.report.lineage_read import ProductLineage, RunRecord, products_for_parcel, run_record
from cbm_tasks.report.recorded import recorded_params, recorded_use_s1
from cbm_tasks.report.series import load_series

__all__ = ["ParcelAudit", "ParcelInfo", "Stamp", "gather"]

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


def _parcel(conn: psycopg.Connection, parcel_set_id: int, parcel_id: str, *, aoi: str, year: int) -> ParcelInfo:
    row = conn.execute(
        "SELECT p.parcel_key, p.crop_code, p.crop_name, p.area_m2, "
        "       ST_X(ST_Transform(ST_PointOnSurface(p.geom), 4326)), ST_Y(ST_Transform(ST_PointOnSurface(p.geom), 4326)), "
        "       ST_AsSVG(p.geom, 0, 2), ST_XMin(p.geom), ST_YMax(p.geom), ST_XMax(p.geom) - ST_XMin(p.geom), "
        "       ST_YMax(p.geom) - ST_YMin(p.geom), ST_SRID(p.geom) "
        "FROM cbm.parcel p WHERE p.parcel_set_id = %s AND p.parcel_id = %s",
        (parcel_set_id, parcel_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"parcel {parcel_id!r} is not in the {year} parcel set of AOI {aoi!r}")
    key, crop_code, crop_name, area, lon, lat, path, xmin, ymax, width, height, srid = row
    pad = max(width, height) * 0.08 or 1.0
    view_box = f"{xmin - pad:.2f} {-ymax - pad:.2f} {width + 2 * pad:.2f} {height + 2 * pad:.2f}"
    return ParcelInfo(parcel_id, int(key), crop_code, crop_name, float(area), float(lon), float(lat), str(path),
                      view_box, int(srid))


def _figure_png(conn: psycopg.Connection, parcel_set_id: int, parcel_key: int,
                runs: dict[str, dict[str, object]]) -> tuple[bytes | None, int, int]:
    series = load_series(conn, parcel_set_id=parcel_set_id, parcel_keys=[parcel_key])
    if series.n_parcels == 0:
        return None, 0, 0
    record = next(iter(runs.values()), {})
    params = recorded_params(record)
    prepared = prepare(series, params)
    result = markers_from_prepared(prepared, params, use_s1=recorded_use_s1(record))
    figure = parcel_figure(prepared, result, 0)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)  # a Figure made without pyplot has no canvas to draw on
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue(), int(result.n_used[0]), int(result.n_rejected[0])


def gather(conn: psycopg.Connection, *, aoi: str, year: int, parcel_id: str, scheme: str | None = None) -> ParcelAudit:
    """Read everything the audit report of one parcel shows.

    Args:
        conn: CbM database.
        aoi, year: the parcel set.
        parcel_id: the parcel, as the agency declares it.
        scheme: only this aid scheme's light; None = all schemes of the parcel.

    Raises:
        NotFoundError: no parcel set for (aoi, year), or no such parcel in it.
    """
    t0 = time.perf_counter()
    with conn.transaction():
        parcel_set = find_parcel_set(conn, aoi=aoi, year=year)
        parcel = _parcel(conn, parcel_set.parcel_set_id, parcel_id, aoi=aoi, year=year)
        lights = lights_for_parcel(conn, parcel_set_id=parcel_set.parcel_set_id, parcel_key=parcel.parcel_key,
                                   scheme=scheme)
        events = events_for_parcel(conn, parcel_set_id=parcel_set.parcel_set_id, parcel_key=parcel.parcel_key)
        marker_runs = current_marker_runs(conn, parcel_set_id=parcel_set.parcel_set_id)
    products = products_for_parcel(conn, parcel_set_id=parcel_set.parcel_set_id, parcel_key=parcel.parcel_key)
    run_ids = sorted({r.pipeline_run_id for r in marker_runs if r.pipeline_run_id is not None}
                     | {light.pipeline_run_id for light in lights if light.pipeline_run_id is not None})
    runs = [found for run_id in run_ids if (found := run_record(conn, int(run_id))) is not None]
    params_by_marker = {run.marker: run.params for run in marker_runs}
    png, n_used, n_rejected = _figure_png(conn, parcel_set.parcel_set_id, parcel.parcel_key, params_by_marker)
    first = next(iter(params_by_marker.values()), {})
    params = recorded_params(first)
    notes = []
    if not marker_runs:
        notes.append("No marker run is stored for this parcel set yet: the figure shows markers computed now "
                     "with the default parameters.")
    if scheme is not None and not lights:
        notes.append(f"No traffic light of scheme {scheme!r} is stored for this parcel.")
    stamp = Stamp(
        params_hash=params.hash, params_version=str(params.version),
        marker_code_version=", ".join(sorted({r.code_version for r in runs})) or "-",
        report_code_version=code_version(), parcel_set_version=parcel_set.version,
        rules_version=", ".join(sorted({light.rules_version for light in lights if light.rules_version})) or "-",
        generated_at=datetime.now(UTC).replace(microsecond=0),
    )
    audit = ParcelAudit(aoi, year, parcel, lights, events, products, runs, stamp, png, n_used, n_rejected, notes)
    log.info("gathered parcel audit aoi=%s year=%d parcel=%s lights=%d events=%d products=%d seconds=%.2f", aoi, year,
             parcel_id, len(lights), len(events), len(products), time.perf_counter() - t0)
    return audit
