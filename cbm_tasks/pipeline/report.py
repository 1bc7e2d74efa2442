"""The unit of work of the ``cbm_audit`` DAG: the run report of a finished Airflow run.

After each ``cbm_markers`` run (its ``cbm_markers`` asset event starts ``cbm_audit``), the report
of the markers run, and of the extraction runs it used, is written from the lineage records: what
was processed, retried and failed, the rows written and the time taken.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg

from cbm_tasks.report.run_report import run_report, write_run_report

__all__ = ["write_run_reports"]

log = logging.getLogger(__name__)


def write_run_reports(conn: psycopg.Connection, run_ids: list[str], *, out_dir: Path) -> list[dict[str, Any]]:
    """Write the report of each Airflow run id into *out_dir*; return one small summary per run (an XCom).

    Raises:
        NotFoundError: a run left no lineage record.
    """
    summaries = []
    for run_id in run_ids:
        report = run_report(conn, run_id)
        path = write_run_report(report, out_dir)
        summaries.append({"run_id": run_id, "report": str(path), "processed": report.processed,
                          "failed": report.failed, "retried": report.retried, "rows_written": report.rows_written,
                          "seconds": report.seconds})
        log.info("run report run_id=%s processed=%d failed=%d retried=%d rows=%d path=%s", run_id, report.processed,
                 report.failed, report.retried, report.rows_written, path)
    return summaries
