"""cbm_audit under dag.test(): the run report of a markers run, written from the lineage records."""

from __future__ import annotations

import json
from pathlib import Path

import airflow_testenv
import psycopg
import pytest

CFG = airflow_testenv.activate()  # before any airflow import

from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from audit_seed import seed  # noqa: E402


@pytest.fixture(scope="module")
def airflow_db() -> str:
    return airflow_testenv.metadata_db()


def test_audit_dag_writes_the_run_report(airflow_db: str, db_url: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        seed(conn, tmp_path, n_parcels=4)
        events, lights = (conn.execute(f"SELECT count(*) FROM cbm.{t}").fetchone()[0]  # noqa: S608
                          for t in ("marker_event", "traffic_light"))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", airflow_testenv.postgis_connection(db_url))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_STORE", airflow_testenv.store_connection(tmp_path))
    monkeypatch.setenv("AIRFLOW_VAR_CBM_REPORTS_DIR", str(tmp_path / "reports"))
    bag = DagBag(dag_folder=str(CFG.project / "dags"))
    assert bag.import_errors == {}
    run = bag.dags["cbm_audit"].test(run_conf={"run_id": "manual__audit"})
    assert run.state == "success"
    text = (tmp_path / "reports" / "runs" / "manual__audit.txt").read_text()
    assert text.startswith("run manual__audit (cbm_markers): 1 task instances, 1 succeeded, 0 failed, 0 retried")
    assert f"cbm.marker_event {events}, cbm.traffic_light {lights}" in text
    summary = json.loads((tmp_path / "reports" / "runs" / "manual__audit.json").read_text())
    assert summary["rows_written"] == events + lights and summary["tasks"][0]["task_id"] == "markers"

    run = bag.dags["cbm_audit"].test(run_conf={"run_id": "manual__never"})
    assert run.state == "failed"  # no lineage for that run: fails at once, names it in the log
