"""cbm_audit: the run report of every markers run, written from the lineage records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from cbm_common import MARKERS, default_args, fail_on_bad_input

DEFAULT_ARGS = default_args(retries=3, retry_delay=timedelta(minutes=1), execution_timeout=timedelta(minutes=10))


@dag(
    dag_id="cbm_audit",
    schedule=[MARKERS],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cbm", "audit"],
    default_args=DEFAULT_ARGS,
    params={
        "run_id": Param(None, type=["null", "string"], minLength=1,
                        description="report this Airflow run id; empty = the runs that updated cbm_markers"),
    },
)
def cbm_audit() -> None:
    """Write the run report of each `cbm_markers` run (processed, retried, failed, rows, time taken).

    Started by the `cbm_markers` asset after every markers run, or by hand with a `run_id`. The
    reports (`<run id>.txt` and `.json`) go to the folder of Variable `cbm_reports_dir`
    (default `<AIRFLOW_HOME>/reports`), under `runs/`; `cbm audit run RUN_ID` prints the same.
    """

    @task
    def run_report() -> list[dict[str, Any]]:
        from cbm_conn import postgis_dsn, reports_dir
        from cbm_lineage import report_lineage, tables

        from cbm_tasks import db
        from cbm_tasks.pipeline.report import write_run_reports

        context = get_current_context()
        run_id = context["params"]["run_id"]
        if run_id:
            run_ids = [str(run_id)]
        else:
            events = context["triggering_asset_events"].get(MARKERS, [])
            run_ids = sorted({str(e.source_run_id) for e in events if e.source_run_id})
        out_dir = reports_dir() / "runs"
        report_lineage(inputs=tables("cbm.pipeline_run", "cbm.run_input", "cbm.run_output"),
                       outputs=[out_dir.resolve().as_uri()])
        # no lineage for that run id: a retry cannot help
        with fail_on_bad_input(), db.connect(postgis_dsn(), autocommit=True, application_name="cbm_audit") as conn:
            return write_run_reports(conn, run_ids, out_dir=out_dir)

    run_report()


cbm_audit()
