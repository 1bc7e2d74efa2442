"""cbm_markers: markers and traffic lights of every parcel set with new observations."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cbm_common import ALL_AOIS, AOI_PARAM_PATTERN, MARKERS, PARCEL_STATS, default_args, fail_on_bad_input

DEFAULT_ARGS = default_args(retries=3, retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=20),
                            execution_timeout=timedelta(minutes=30))  # 1 M parcels take ~10 min


@dag(
    dag_id="cbm_markers",
    # new statistics start it; the daily run catches parcel sets whose rules or parcels changed
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("30 3 * * *", timezone="UTC"), assets=[PARCEL_STATS]),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cbm", "markers"],
    default_args=DEFAULT_ARGS,
    params={
        "aoi": Param(ALL_AOIS, type="string", pattern=AOI_PARAM_PATTERN,
                     description="AOI to compute; * = every AOI with a parcel set"),
        "year": Param(None, type=["null", "integer"], minimum=2014, maximum=2100,
                      description="parcel-set year; empty = every year of the AOI"),
        "scheme": Param(None, type=["null", "string"], description="evaluate only this scheme's lights"),
        "full": Param(False, type="boolean", description="every parcel, not only those with new observations"),
    },
)
def cbm_markers() -> None:
    """Markers (mowing, harvest, bare soil, ...) and the traffic light of every parcel and aid scheme.

    Started by the `cbm_parcel_stats` asset (an extraction wrote statistics) and once a day. Each
    parcel set (AOI x year) is one mapped task: it reads the time series of the parcels with
    observations newer than their last marker run (all with `full`), computes the markers and
    lights, and replaces the parcels' earlier results in one transaction, with the lineage of every
    light (rule, parameters, code version, images used and rejected). A re-run is safe. The
    `cbm_markers` asset is updated when lights were written.
    """

    @task
    def parcel_sets() -> list[dict[str, Any]]:
        from cbm_conn import postgis_dsn

        from cbm_tasks import aoi as aoi_lookup
        from cbm_tasks import db

        params = get_current_context()["params"]
        with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_markers") as conn:
            aois = aoi_lookup.list_aois(conn) if params["aoi"] == ALL_AOIS else [str(params["aoi"])]
            sets = [{"aoi": aoi, "year": year} for aoi in aois for year in aoi_lookup.parcel_set_years(conn, aoi)
                    if params["year"] is None or year == params["year"]]
        if params["aoi"] != ALL_AOIS and not sets:
            raise AirflowFailException(f"AOI {params['aoi']!r} has no parcel set"
                                       + (f" for {params['year']}" if params["year"] else ""))
        return sets

    @task(map_index_template="{{ cbm_parcel_set }}", max_active_tis_per_dag=1)
    def compute(parcel_set: dict[str, Any]) -> dict[str, Any]:
        from cbm_conn import postgis_dsn
        from cbm_lineage import report_lineage, tables

        from cbm_tasks import db, lineage
        from cbm_tasks.pipeline import markers as pipeline

        context = get_current_context()
        context["cbm_parcel_set"] = f"{parcel_set['aoi']}/{parcel_set['year']}"  # type: ignore[typeddict-unknown-key]
        params, ti = context["params"], context["ti"]
        run = lineage.RunContext(step="markers", dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                 map_index=ti.map_index, try_number=ti.try_number)
        # invalid rules or parameters, unknown scheme: a retry cannot help
        with fail_on_bad_input(f"{parcel_set['aoi']}/{parcel_set['year']}"), \
                db.connect(postgis_dsn(), autocommit=True, application_name="cbm_markers") as conn:
            outcome = pipeline.run_parcel_set(conn, run, aoi=str(parcel_set["aoi"]), year=int(parcel_set["year"]),
                                              scheme=params["scheme"], full=bool(params["full"]))
        # OpenLineage: the time series read, the markers and lights written
        report_lineage(inputs=tables("cbm.parcel_obs", "cbm.parcel_class_counts", "cbm.parcel"),
                       outputs=tables("cbm.marker_run", "cbm.marker_event", "cbm.marker_parcel",
                                      "cbm.traffic_light") if outcome.marker_run_id is not None else [])
        return outcome.as_dict()

    @task(outlets=[MARKERS])
    def publish(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        done = [o for o in outcomes if o["marker_run_id"] is not None]
        totals = {"parcel_sets": [f"{o['aoi']}/{o['year']}" for o in done],
                  "parcels": sum(int(o["parcels"]) for o in done), "lights": sum(int(o["lights"]) for o in done)}
        if not done:
            # a skipped task emits no asset event: reports are not rebuilt for nothing
            raise AirflowSkipException("no parcel had new observations")
        get_current_context()["outlet_events"][MARKERS].extra = totals
        return totals

    publish(compute.expand(parcel_set=parcel_sets()))


cbm_markers()
