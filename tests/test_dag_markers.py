"""cbm_markers under dag.test() on a real PostGIS: lights written with lineage, a re-run with nothing new skips.

The CbM database is this test's fresh one, handed to the DAG through AIRFLOW_CONN_CBM_POSTGIS
as `cbm airflow start` does; the parcel set is seeded synthetic series (cbm_tasks.demo.series_seed).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import airflow_testenv
import psycopg
import pytest

CFG = airflow_testenv.activate()  # before any airflow import

from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk import Asset  # noqa: E402

from cbm_tasks.demo.series_seed import seed_parcel_set  # noqa: E402

N_PARCELS = 30


@pytest.fixture(scope="module")
def airflow_db() -> str:
    return airflow_testenv.metadata_db()


@pytest.fixture
def seeded(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        seed_parcel_set(conn, tmp_path, aoi="mk", year=2018, n_parcels=N_PARCELS, seed=3)
    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", airflow_testenv.postgis_connection(db_url))
    return db_url


def _dag() -> DagBag:
    bag = DagBag(dag_folder=str(CFG.project / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["cbm_markers"]
    for task in dag.tasks:
        task.retry_delay = timedelta(0)
    return dag


def test_markers_dag_writes_lights_once(airflow_db: str, seeded: str) -> None:
    dag = _dag()
    run = dag.test(run_conf={"aoi": "mk"})
    assert run.state == "success"
    assert run.get_task_instance("publish").state == "success"  # cbm_markers asset event for the report
    with psycopg.connect(seeded) as conn:
        lights = conn.execute("SELECT count(*), count(DISTINCT parcel_key) FROM cbm.traffic_light").fetchone()
        lineage = conn.execute(
            "SELECT r.dag_id, r.task_id, r.map_index, r.try_number, r.status, m.n_parcels "
            "FROM cbm.marker_run m JOIN cbm.pipeline_run r USING (pipeline_run_id)").fetchall()
    assert lights[0] >= lights[1] > N_PARCELS // 2
    assert lineage == [("cbm_markers", "compute", 0, 1, "success", N_PARCELS)]

    # nothing new: the parcel set is looked at, nothing is written, no asset event
    run = dag.test(run_conf={"aoi": "mk"})
    assert run.state == "success"
    assert run.get_task_instance("publish").state == "skipped"
    with psycopg.connect(seeded) as conn:
        assert conn.execute("SELECT count(*) FROM cbm.marker_run").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM cbm.traffic_light").fetchone()[0] == lights[0]
        assert conn.execute("SELECT count(*), min(status) FROM cbm.pipeline_run").fetchone() == (2, "success")


def test_markers_dag_unknown_aoi_fails_at_once(airflow_db: str, seeded: str) -> None:
    run = _dag().test(run_conf={"aoi": "nowhere"})
    assert run.state == "failed"
    assert run.get_task_instance("parcel_sets").try_number == 1  # bad input is not retried


def test_markers_dag_is_scheduled_on_parcel_stats_and_daily() -> None:
    dag = _dag()
    assert dag.timetable.timetable.expression == "30 3 * * *"  # and once a day
    assert list(dag.timetable.asset_condition.objects) == [Asset("cbm_parcel_stats")]
    assert dag.get_task("publish").outlets == [Asset("cbm_markers")]
    assert dag.default_args["retries"] == 3 and dag.default_args["execution_timeout"] == timedelta(minutes=30)
