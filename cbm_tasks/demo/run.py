"""``cbm demo run``: the whole pipeline on the built-in demo AOI, through the real Airflow deployment.

Steps: start the local PostGIS and migrate it; build the demo data (idempotent); import the demo
parcels (AOI ``demo``, 2018 for the shared cube) unless already imported from the same file; start
Airflow; point the ``demo`` AOI at the local catalogue (Variable ``cbm_catalogue``); unpause and trigger
``cbm_catalogue`` over the cube's dates (2017-08..2018-11) through the REST API; wait for it and for the
``cbm_extract`` runs its asset event starts; then run ``cbm_markers`` over the demo parcel set
(markers and traffic lights; it also follows ``cbm_parcel_stats`` by itself) and wait for it;
report from the database (lights per scheme, colour and reason) and from Airflow.

Running it again duplicates nothing: products are registered once, images already extracted
are not claimed again, and an extraction replaces its rows. Airflow keeps running afterwards so
the maintainer can look at the runs in the UI; ``cbm airflow stop`` stops it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from cbm_tasks import db
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.registry import ProductStatus
from cbm_tasks.demo import api_access
from cbm_tasks.demo import data as demo_data
from cbm_tasks.errors import NotFoundError, ServiceError
from cbm_tasks.ops import airflow_ctl, cluster, settings
from cbm_tasks.ops.airflow_api import AirflowApi
from cbm_tasks.parcels import sets as parcel
from cbm_tasks.pipeline import extract as pipeline
from cbm_tasks.pipeline import markers as markers_pipeline

__all__ = ["DemoSummary", "run_demo"]

log = logging.getLogger(__name__)

_DAGS = ("cbm_catalogue", "cbm_extract", "cbm_markers", "cbm_audit")  # cbm_audit: run reports of cbm_markers


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What the demo did, from the database and from Airflow."""

    aoi: str
    catalogue_root: Path
    summary: pipeline.AoiSummary
    catalogue_run: tuple[str, str]  # run id, state
    extract_runs: tuple[tuple[str, str], ...]
    markers_run: tuple[str, str]
    lights: dict[str, dict[str, dict[str, int]]]  # scheme -> colour -> reason -> parcels
    url: str
    username: str
    password: str = field(repr=False)
    password_file: Path = Path()
    seconds: float = 0.0
    api: tuple[str, ...] = ()  # the REST API's URL, demo user and curl examples
    audit_report: Path | None = None
    why_lights: tuple[str, ...] = ()  # commands that explain a red light per scheme, and a yellow light rule by rule
    year: int = 0  # the parcel set's year (0: not known)

    @property
    def ok(self) -> bool:
        """True when every run succeeded."""
        return all(state == "success" for _, state in (self.catalogue_run, *self.extract_runs, self.markers_run))

    def lines(self) -> list[str]:
        """Return the summary as text lines for the terminal."""
        products = self.summary.products
        extract_runs = ", ".join(f"{run_id} {state}" for run_id, state in self.extract_runs) or "none needed"
        per_status = ", ".join(f"{status} {n}" for status, n in sorted(products.items()))
        return [
            f"demo AOI {self.aoi}: finished in {self.seconds:.0f} s",
            f"  catalogue        {self.catalogue_root}",
            f"  products found   {sum(products.values())} ({per_status})",
            f"  images extracted {self.summary.images_extracted} for {self.summary.parcels} parcels",
            f"  rows written     {self.summary.parcel_obs_rows} in cbm.parcel_obs "
            f"({self.summary.stats_rows} parcel x band statistics)",
            f"  cbm_catalogue    {self.catalogue_run[0]} {self.catalogue_run[1]}",
            f"  cbm_extract      {extract_runs}",
            f"  cbm_markers      {self.markers_run[0]} {self.markers_run[1]}",
            "traffic lights     (parcels per scheme: colour, reasons; cbm markers export for QGIS)",
            *[f"  {scheme:21s} {self._colours(colours)}" for scheme, colours in self.lights.items()],
            *(["  none             (no parcel has a scheme)"] if not self.lights else []),
            f"audit report       {self.audit_report or 'none (nothing extracted)'}"
            + ("  (lights, events and the images behind them)" if self.audit_report else ""),
            *[f"{'why this light' if i == 0 else '':19s}{line}" for i, line in enumerate(self.why_lights)],
            *([f"score on checks    cbm markers validate --aoi {self.aoi} --year {self.year} --truth checks.csv  "
               "(dated field checks, parcel_id,date: precision, recall, F1 of the mowings)",
               f"{'':19s}cbm markers validate --aoi {self.aoi} --year {self.year} --scheme grassland_mowing "
               "--truth otsc.csv  (check outcomes, parcel_id,compliant: compliant lit red, breaches lit green)"]
              if self.year else []),
            f"Airflow UI         {self.url}/",
            f"  login            {self.username} / {self.password}  (stored in {self.password_file})",
            *self.api,
            "Airflow keeps running; stop it with: cbm airflow stop",
        ]

    @staticmethod
    def _colours(colours: dict[str, dict[str, int]]) -> str:
        return "; ".join(f"{colour} {sum(reasons.values())} ({', '.join(f'{r} {n}' for r, n in reasons.items())})"
                         for colour, reasons in sorted(colours.items(), key=lambda item: _COLOUR_ORDER[item[0]]))


_COLOUR_ORDER = {"green": 0, "yellow": 1, "red": 2}


def _why_lights(conn: psycopg.Connection, layout: demo_data.DemoLayout) -> tuple[str, ...]:
    """Commands that explain the demo's lights: the first red one of each scheme, and a yellow (else red) one.

    The red ones by the marker their rules read, the yellow one rule by rule (``--scheme``).
    """
    from cbm_tasks.traffic_light.rules import load_rules

    schemes = load_rules().schemes  # the demo runs the shipped rules
    rows = conn.execute(
        "SELECT DISTINCT ON (t.scheme) t.scheme, p.parcel_id FROM cbm.traffic_light t "
        "JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id AND p.parcel_key = t.parcel_key "
        "JOIN cbm.parcel_set s ON s.parcel_set_id = t.parcel_set_id JOIN cbm.aoi a USING (aoi_id) "
        "WHERE a.name = %s AND s.year = %s AND t.colour = 'red' ORDER BY t.scheme, p.parcel_id",
        (layout.aoi, layout.year)).fetchall()
    lines = []
    for scheme, parcel_id in rows:
        markers = {rule.marker for rule in schemes[scheme].rules} if scheme in schemes else set()
        for marker, flag, what in (("harvest", " --marker harvest", "every crop cycle judged as a harvest"),
                                   ("bare_soil", " --marker bare_soil", "every low observation judged as bare soil"),
                                   ("emergence", " --marker emergence", "every rise judged as an emergence"),
                                   ("mowing", "", "every NDVI fall judged as a cut")):
            if marker in markers:
                lines.append(f"cbm markers explain --aoi {layout.aoi} --year {layout.year} --parcel {parcel_id}{flag}"
                             f"  ({scheme}: {what})")
                break
    # and the most common light an inspector acts on, a yellow one (else a red one), rule by rule
    row = conn.execute(
        "SELECT t.scheme, p.parcel_id, t.colour FROM cbm.traffic_light t "
        "JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id AND p.parcel_key = t.parcel_key "
        "JOIN cbm.parcel_set s ON s.parcel_set_id = t.parcel_set_id JOIN cbm.aoi a USING (aoi_id) "
        "WHERE a.name = %s AND s.year = %s AND t.colour <> 'green' "
        "ORDER BY t.colour = 'yellow' DESC, t.scheme, p.parcel_id LIMIT 1", (layout.aoi, layout.year)).fetchone()
    if row is not None:
        scheme, parcel_id, colour = row
        lines.append(f"cbm markers explain --aoi {layout.aoi} --year {layout.year} --parcel {parcel_id} --scheme "
                     f"{scheme}  ({scheme}: why {colour}, rule by rule: window, clear images, gap, events)")
    return tuple(lines)


def _audit_report(conn: psycopg.Connection, layout: demo_data.DemoLayout, out_dir: Path) -> Path | None:
    """Write the audit report (HTML and PDF) of one demo parcel; return the PDF's path."""
    from cbm_tasks.report.parcel_audit import gather, pick_parcel  # matplotlib, weasyprint: only here
    from cbm_tasks.report.render import write_parcel_report
    from cbm_tasks.store import open_store

    try:
        parcel_id = pick_parcel(conn, aoi=layout.aoi, year=layout.year)
    except NotFoundError:
        return None
    store = open_store(settings.store_config())  # the images behind the events, where the tasks read them
    files = write_parcel_report(gather(conn, aoi=layout.aoi, year=layout.year, parcel_id=parcel_id, store=store),
                                out_dir)
    return files.pdf or files.html


def _prepare_database() -> str:
    # the local cluster also holds Airflow's metadata database, even when CBM_DATABASE_URL is set
    cfg = settings.local_cluster()
    cluster.start(cfg)
    cluster.ensure_database(cfg, settings.database_name())
    url = settings.database_url()
    with db.connect(url) as conn:
        db.migrate(conn)
    return url


def _import_parcels(url: str, layout: demo_data.DemoLayout) -> None:
    with db.connect(url, autocommit=True) as conn:
        for known in parcel.list_parcel_sets(conn, aoi=layout.aoi):
            same_file = Path(known.source_file).name == layout.parcels_file.name
            newer = datetime.fromtimestamp(layout.parcels_file.stat().st_mtime, UTC) > known.imported_at
            if known.year == layout.year and same_file and not newer:
                log.info("parcels aoi=%s year=%d already imported (parcel_set=%d, %d parcels)", layout.aoi,
                         layout.year, known.parcel_set_id, known.n_parcels)
                return
        parcel.import_parcels(conn, layout.parcels_file, aoi=layout.aoi, year=layout.year)


def _set_catalogue(api: AirflowApi, aoi: str, root: Path) -> None:
    """Point *aoi* at the local catalogue in Variable ``cbm_catalogue``, keeping the other AOIs' entries."""
    try:
        current = json.loads(api.request("GET", "variables/cbm_catalogue")["value"])
        exists = True
    except NotFoundError:
        current, exists = {}, False
    current[aoi] = {"kind": "local", "root": str(root)}
    body = {"key": "cbm_catalogue", "value": json.dumps(current, sort_keys=True),
            "description": "catalogue settings per AOI (see dags/cbm_conn.py)"}
    if exists:
        api.request("PATCH", "variables/cbm_catalogue", body=body)
    else:
        api.request("POST", "variables", body=body)


def _wait_for_extraction(
    api: AirflowApi, *, since: str, deadline: float, url: str, aoi: str
) -> list[tuple[str, str]]:
    """Wait for the asset-triggered cbm_extract runs created since *since*; return (run id, state) of each.

    Logs the images per status every 30 s, so that whoever runs the demo sees it move.
    """
    quiet_since: float | None = None
    next_report = time.monotonic() + 30
    while True:
        runs = api.runs("cbm_extract", run_after_gte=since, run_type="asset_triggered")
        finished = [run for run in runs if run["state"] in ("success", "failed")]
        if time.monotonic() >= next_report:
            next_report += 30
            with db.connect(url, autocommit=True) as conn:
                counts = registry.status_counts(conn, aoi=aoi)
            log.info("waiting for cbm_extract runs=%d finished=%d images: %s", len(runs), len(finished),
                     " ".join(f"{status}={n}" for status, n in sorted(counts.items())))
        if runs and len(finished) == len(runs):
            with db.connect(url, autocommit=True) as conn:
                counts = registry.status_counts(conn, aoi=aoi)
            if not counts.get(ProductStatus.READY) and not counts.get(ProductStatus.EXTRACTING):
                return [(str(run["dag_run_id"]), str(run["state"])) for run in runs]  # nothing left to start a run
            # a run may start another (work left over): call it done when none appears for a while
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 15:
                return [(str(run["dag_run_id"]), str(run["state"])) for run in runs]
        else:
            quiet_since = None
        if time.monotonic() > deadline:
            states = {run["dag_run_id"]: run["state"] for run in runs}
            raise ServiceError(f"cbm_extract did not finish in time: runs {states or 'none started'}; "
                               "see the UI or `cbm airflow status` for the logs")
        time.sleep(3)


def run_demo(
    *,
    out_dir: Path | None = None,
    port: int | None = None,
    max_products: int | None = None,
    timeout_s: float = 3600,
    airflow: airflow_ctl.AirflowConfig | None = None,
    cube_dir: Path | None = None,
) -> DemoSummary:
    """Run the pipeline on the demo AOI through Airflow and return what it did.

    Args:
        out_dir: where the demo data is built; default ``<project>/var/demo`` (``demo/`` below it).
        port: Airflow UI port (default 8080 or CBM_AIRFLOW_PORT).
        max_products: build only the first N dates per sensor (quick runs); None = all.
        timeout_s: how long to wait for the DAG runs.
        airflow: the deployment to use; default :func:`cbm_tasks.ops.airflow_ctl.default_config`.
        cube_dir: the WorldCereal cube to build the demo from; default the shared 31UDS chip.

    Raises:
        ServiceError: Airflow did not start, a DAG did not parse, or the runs did not finish
            within *timeout_s* (the message says which, with the task states).
    """
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    cfg = airflow or airflow_ctl.default_config(port=port)
    url = _prepare_database()
    out = out_dir or settings.project_dir() / "var" / "demo"
    layout = demo_data.build_demo(demo_data.demo_folder(out, cube_dir), cube_dir=cube_dir, max_products=max_products)
    _import_parcels(url, layout)
    airflow_ctl.start(cfg)
    api = AirflowApi(cfg.url, username=airflow_ctl.ADMIN_USER, password=airflow_ctl.admin_password(cfg))
    _set_catalogue(api, layout.aoi, layout.catalogue_root)
    api.wait_for_dags(_DAGS)
    for dag_id in _DAGS:
        api.set_paused(dag_id, paused=False)
    start, end = layout.window  # the cube's dates (2017-08-01 .. 2018-11-30 for the shared one)
    run_id = api.trigger("cbm_catalogue", conf={"aoi": layout.aoi, "start": start, "end": end})
    # the run polls the demo AOI only: other AOIs of the cluster (and their catalogues) are not waited on
    log.info("waiting for cbm_catalogue run_id=%s: poll of aoi=%s in %s..%s (progress every 30 s)", run_id,
             layout.aoi, start, end)
    catalogue_run = api.wait_for_run("cbm_catalogue", run_id, timeout_s=max(deadline - time.monotonic(), 1))
    if catalogue_run["state"] != "success":
        raise ServiceError(f"cbm_catalogue run {run_id} failed: tasks {api.task_states('cbm_catalogue', run_id)}; "
                           f"logs in the UI at {cfg.url}/dags/cbm_catalogue")
    extract_runs: list[tuple[str, str]] = []
    if api.task_states("cbm_catalogue", run_id).get("announce") == ["success"]:
        waited_from = time.perf_counter()
        extract_runs = _wait_for_extraction(api, since=str(catalogue_run["start_date"]), deadline=deadline,
                                            url=url, aoi=layout.aoi)
        log.info("extracted aoi=%s cbm_extract_runs=%d seconds=%.1f (from the end of cbm_catalogue)", layout.aoi,
                 len(extract_runs), time.perf_counter() - waited_from)
    # the asset events of the extraction start cbm_markers too; this run, after all of them, is the
    # one waited for (incremental: it computes what the asset-started runs have not)
    markers_id = api.trigger("cbm_markers", conf={"aoi": layout.aoi, "year": layout.year})
    markers_run = api.wait_for_run("cbm_markers", markers_id, timeout_s=max(deadline - time.monotonic(), 1))
    if markers_run["state"] != "success":
        raise ServiceError(f"cbm_markers run {markers_id} failed: tasks {api.task_states('cbm_markers', markers_id)}; "
                           f"logs in the UI at {cfg.url}/dags/cbm_markers")
    with db.connect(url, autocommit=True) as conn:
        summary = pipeline.aoi_summary(conn, layout.aoi)
        lights = markers_pipeline.lights_summary(conn, aoi=layout.aoi, year=layout.year)
        reports = (out_dir or settings.project_dir() / "var" / "demo") / "reports"
        report = _audit_report(conn, layout, reports)
        why_lights = _why_lights(conn, layout)
    with db.connect(url) as conn:
        api_text = api_access.api_lines(conn, airflow_url=cfg.url, aoi=layout.aoi, year=layout.year,
                                        secret_file=cfg.home / "api_demo_secret")
    result = DemoSummary(
        aoi=layout.aoi, catalogue_root=layout.catalogue_root, summary=summary,
        catalogue_run=(run_id, str(catalogue_run["state"])), extract_runs=tuple(extract_runs),
        markers_run=(markers_id, str(markers_run["state"])), lights=lights, url=cfg.url,
        username=airflow_ctl.ADMIN_USER, password=airflow_ctl.admin_password(cfg), password_file=cfg.passwords_file,
        seconds=time.perf_counter() - t0, api=tuple(api_text), audit_report=report, why_lights=why_lights,
        year=layout.year,
    )
    log.info("demo aoi=%s images_extracted=%d rows=%d runs_ok=%s seconds=%.1f", layout.aoi,
             summary.images_extracted, summary.parcel_obs_rows, result.ok, result.seconds)
    return result
