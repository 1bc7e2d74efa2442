"""OpenLineage events of the DAGs name real datasets: the products read and the tables written.

The catalogue and extraction DAGs run under dag.test() with the configuration `cbm airflow start`
writes (the OpenLineage provider's file transport); the test reads the JSON-lines file back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import airflow_testenv
import psycopg
import pytest

CFG = airflow_testenv.activate()  # before any airflow import

from airflow.dag_processing.dagbag import DagBag  # noqa: E402

from cbm_tasks.demo import data as demo_data  # noqa: E402
from cbm_tasks.parcels import sets as parcel  # noqa: E402


@pytest.fixture(scope="module")
def airflow_db() -> str:
    return airflow_testenv.metadata_db()


def _events(task_id: str, event_type: str = "COMPLETE") -> list[dict[str, Any]]:
    lines = CFG.openlineage_file.read_text().splitlines() if CFG.openlineage_file.exists() else []
    events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if e["eventType"] == event_type and e["job"]["name"].endswith(f".{task_id}")]


def test_extract_events_name_products_and_tables(airflow_db: str, tmp_path: Path, db_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", airflow_testenv.postgis_connection(db_url))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_STORE", airflow_testenv.store_connection(tmp_path))
    monkeypatch.setenv("AIRFLOW_VAR_CBM_CATALOGUE",
                       json.dumps({"demo": {"kind": "local", "root": str(layout.catalogue_root)}}))
    CFG.openlineage_file.unlink(missing_ok=True)
    # dag.test() runs every task in this one process, where Airflow's hook-lineage collector is
    # shared by all tasks (a worker runs each task in a process of its own): start from a new one,
    # and expect later events to repeat the datasets of earlier tasks
    from airflow.sdk.lineage import get_hook_lineage_collector

    get_hook_lineage_collector.cache_clear()
    bag = DagBag(dag_folder=str(CFG.project / "dags"))
    assert bag.import_errors == {}
    window = {"aoi": "demo", "start": "2017-08-01", "end": "2018-11-30"}
    assert bag.dags["cbm_catalogue"].test(run_conf=window).state == "success"
    assert bag.dags["cbm_extract"].test(run_conf={"aoi": "demo"}).state == "success"
    assert bag.dags["cbm_markers"].test(run_conf={"aoi": "demo", "year": 2018}).state == "success"

    database = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url) as conn:
        locations = {Path(str(loc)).resolve().as_uri().removeprefix("file://")
                     for (loc,) in conn.execute("SELECT location FROM cbm.product")}
    assert len(locations) == 2  # one S2 and one CARD-BS image

    polls = _events("poll")
    assert len(polls) == 1
    assert {d["name"] for d in polls[0]["inputs"]} == {str(layout.catalogue_root.resolve())}  # the first to report
    assert {d["name"] for d in polls[0]["outputs"]} == {f"{database}.cbm.product", f"{database}.cbm.product_status"}

    # each product is named, and the extraction batch (both images: one mapped task) names the tables it wrote
    extracts = _events("extract")
    assert len(extracts) == 1
    read = {d["name"] for e in extracts for d in e["inputs"] if d["namespace"] == "file"}
    assert locations <= read
    for event in extracts:
        assert {f"{database}.cbm.parcel_obs", f"{database}.cbm.parcel_class_counts", f"{database}.cbm.extraction"} \
            <= {d["name"] for d in event["outputs"]}
        assert all(d["namespace"].startswith("postgres://") for d in event["outputs"])
        assert event["run"]["facets"]["airflow"]["taskInstance"]["map_index"] == 0
    assert all(e["inputs"] and e["outputs"] for e in _events("claim"))
    computes = _events("compute")
    assert len(computes) == 1
    assert {f"{database}.cbm.parcel_obs", f"{database}.cbm.parcel"} <= {d["name"] for d in computes[0]["inputs"]}
    assert {f"{database}.cbm.marker_event", f"{database}.cbm.traffic_light"} <= {
        d["name"] for d in computes[0]["outputs"]}
