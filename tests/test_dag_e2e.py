"""cbm_catalogue then cbm_extract under dag.test(), on a small real demo catalogue and a real PostGIS.

Airflow's metadata database is a private PostgreSQL database of this session (see
airflow_testenv); the CbM database is this test's fresh one, handed to the DAGs through
AIRFLOW_CONN_CBM_POSTGIS exactly as `cbm airflow start` does.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import airflow_testenv
import psycopg
import pytest
from catalogue_replay import json_reply, replay_server, sequence

CFG = airflow_testenv.activate()  # before any airflow import

from airflow.dag_processing.dagbag import DagBag  # noqa: E402

from cbm_tasks.catalogue.local import LocalCatalogue  # noqa: E402
from cbm_tasks.demo import data as demo_data  # noqa: E402
from cbm_tasks.parcels import sets as parcel  # noqa: E402
from cbm_tasks.pipeline import lease  # noqa: E402
from cbm_tasks.pipeline.poll import poll_aoi  # noqa: E402
from cbm_tasks.timeseries import write as obs  # noqa: E402

N_PER_SENSOR = 2  # 2 Sentinel-2 L2A + 2 Sentinel-1 CARD-BS products from the real 31UDS cube


@pytest.fixture(scope="module")
def airflow_db() -> str:
    return airflow_testenv.metadata_db()


@pytest.fixture
def demo(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> demo_data.DemoLayout:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=N_PER_SENSOR)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", airflow_testenv.postgis_connection(db_url))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_STORE", airflow_testenv.store_connection(tmp_path))
    monkeypatch.setenv("AIRFLOW_VAR_CBM_CATALOGUE",
                       json.dumps({"demo": {"kind": "local", "root": str(layout.catalogue_root)}}))
    return layout


def _dags() -> DagBag:
    bag = DagBag(dag_folder=str(CFG.project / "dags"))
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        for task in dag.tasks:
            # retry at once: the real delays (a minute, doubling) would only slow the tests down
            task.retry_delay = timedelta(0)
    return bag


def _statuses(db_url: str) -> dict[str, str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT p.name, s.status FROM cbm.product_status s JOIN cbm.product p USING (product_id)")
        return dict(rows.fetchall())


def _obs_rows(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT p.name, count(*) FROM cbm.parcel_obs o JOIN cbm.product p USING (product_id) GROUP BY p.name"
        )
        return dict(rows.fetchall())


def test_catalogue_then_extract(airflow_db: str, demo: demo_data.DemoLayout, db_url: str) -> None:
    dags = _dags()
    window = {"aoi": "demo", "start": "2017-08-01", "end": "2018-11-30"}
    run = dags.dags["cbm_catalogue"].test(run_conf=window)
    assert run.state == "success"
    statuses = _statuses(db_url)
    assert len(statuses) == 2 * N_PER_SENSOR
    assert set(statuses.values()) == {"ready"}
    announce = run.get_task_instance("announce")
    assert announce.state == "success"  # new ready products: the asset event for cbm_extract is emitted

    run = dags.dags["cbm_extract"].test(run_conf={"aoi": "demo"})
    assert run.state == "success"
    assert set(_statuses(db_url).values()) == {"extracted"}
    rows = _obs_rows(db_url)
    assert set(rows) == set(statuses)
    assert all(0 < n <= demo.n_parcels for n in rows.values())
    with psycopg.connect(db_url) as conn:
        lineage = conn.execute(
            "SELECT r.dag_id, r.task_id, r.map_index, r.try_number, r.status, e.n_rows "
            "FROM cbm.extraction e JOIN cbm.pipeline_run r USING (pipeline_run_id) ORDER BY r.map_index"
        ).fetchall()
        first_s2 = conn.execute(
            "SELECT product_id FROM cbm.product WHERE product_type = 'S2MSI2A' ORDER BY acquired_at LIMIT 1"
        ).fetchone()[0]
    # the small images share one batch (one mapped task); each has its own lineage run of that task try
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in lineage] == [
        ("cbm_extract", "extract", 0, 1, "success")] * (2 * N_PER_SENSOR)
    assert all(r[5] > 0 for r in lineage)
    (batch,) = [ti for ti in run.get_task_instances() if ti.task_id == "extract"]
    assert batch.rendered_map_index.startswith(f"demo: {2 * N_PER_SENSOR} images, 2 grids, 2017-08-")

    # nothing new: the poll registers nothing and emits no asset event
    run = dags.dags["cbm_catalogue"].test(run_conf=window)
    assert run.state == "success"
    assert run.get_task_instance("announce").state == "skipped"
    assert len(_statuses(db_url)) == 2 * N_PER_SENSOR

    # forcing one image again replaces its rows: nothing is duplicated
    run = dags.dags["cbm_extract"].test(run_conf={"aoi": "demo", "product_id": first_s2})
    assert run.state == "success"
    assert run.get_task_instance("summary").xcom_pull(task_ids="summary")["extracted"] == 1
    assert _obs_rows(db_url) == rows
    with psycopg.connect(db_url) as conn:
        runs = conn.execute(
            "SELECT count(*) FROM cbm.pipeline_run WHERE params->>'product_id' = %s", (str(first_s2),)
        ).fetchone()[0]
        n_extractions = conn.execute("SELECT count(*) FROM cbm.extraction").fetchone()[0]
    assert runs == 2 and n_extractions == 2 * N_PER_SENSOR


def test_dropped_connection_is_retried_without_duplicates(
    airflow_db: str, demo: demo_data.DemoLayout, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        poll_aoi(conn, LocalCatalogue(demo.catalogue_root), aoi="demo", product_types=["S2MSI2A"],
                          start=datetime(2017, 8, 1, tzinfo=UTC), end=datetime(2018, 12, 1, tzinfo=UTC))
    real_write = obs.replace_image_stats
    calls: list[int] = []

    def write_after_a_dropped_connection(conn: psycopg.Connection, *args: object, **kwargs: object) -> int:
        calls.append(1)
        if len(calls) == 1:  # the server drops the task's connection just before the first image is written
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return real_write(conn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(obs, "replace_image_stats", write_after_a_dropped_connection)
    dag = _dags().dags["cbm_extract"]
    # the retry is what is tested, not its minute of waiting: for the task's retry delay, and for the lease
    # the dropped try could not give back to run out (cbm_tasks.pipeline.lease)
    for task in dag.tasks:
        monkeypatch.setattr(task, "retry_delay", timedelta(seconds=1))
    monkeypatch.setattr(lease, "LeaseTerms", functools.partial(
        lease.LeaseTerms, lease=timedelta(seconds=6), renew_every=timedelta(seconds=2), wait=timedelta(seconds=10)))
    run = dag.test(run_conf={"aoi": "demo"})

    assert run.state == "success"
    assert len(calls) == N_PER_SENSOR + 1
    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT status, attempts, claimed_by FROM cbm.product_status ORDER BY product_id")
        assert status.fetchall() == [("extracted", 1, None)] * N_PER_SENSOR
        tries = conn.execute(
            "SELECT (params->>'product_id')::int, try_number, status, error FROM cbm.pipeline_run "
            "ORDER BY 1, try_number"
        ).fetchall()
        # both images share a batch; the dropped connection hit the first. Its try could not record its
        # own end (no connection): the next try closed it as abandoned. The rest of the batch was not
        # tried on the dead connection: the retry extracted it, once
        (failed_product,) = {t[0] for t in tries if t[2] != "success"}
        retried = [t for t in tries if t[0] == failed_product]
        assert [(t[1], t[2]) for t in retried] == [(1, "abandoned"), (2, "success")]
        assert retried[0][3].startswith("abandoned:")
        others = [t for t in tries if t[0] != failed_product]
        assert [(t[1], t[2]) for t in others] == [(2, "success")] * (N_PER_SENSOR - 1)
        # one extraction and one set of rows per image, whatever the number of tries
        per_image = conn.execute(
            "SELECT e.product_id, e.n_parcels, "
            "       (SELECT count(*) FROM cbm.parcel_obs o WHERE o.product_id = e.product_id) "
            "FROM cbm.extraction e ORDER BY 1"
        ).fetchall()
    assert len(per_image) == N_PER_SENSOR
    assert all(n_parcels == n_obs > 0 for _, n_parcels, n_obs in per_image)


def test_an_aoi_whose_catalogue_is_down_holds_no_other_aoi_back(
    airflow_db: str, demo: demo_data.DemoLayout, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, demo.parcels_file, aoi="down", year=2018)
    window = {"start": "2017-08-01", "end": "2018-11-30"}
    with replay_server() as server:
        server.route("GET", "/odata/v1/Products", sequence([json_reply({"detail": "maintenance"}, status=500)]))
        monkeypatch.setenv("AIRFLOW_VAR_CBM_CATALOGUE", json.dumps({
            "demo": {"kind": "local", "root": str(demo.catalogue_root)},
            "down": {"kind": "cdse-odata", "url": f"{server.base_url}/odata/v1/Products", "max_attempts": 2,
                     "max_total_s": 5},
        }))
        dag = _dags().dags["cbm_catalogue"]
        # the scheduled form: every AOI. The dead catalogue is tried, recorded in back-off, and the run moves on
        run = dag.test(run_conf={"aoi": "*", **window})
        assert len(server.requests) == 2  # its two attempts, and no Airflow retry
        polls = {ti.map_index: ti for ti in run.get_task_instances() if ti.task_id == "poll"}
        assert [ti.state for ti in polls.values()] == ["success", "success"]
        assert all(ti.try_number == 1 for ti in polls.values())
        announce = run.get_task_instance("announce")
        assert announce.state == "success"
        assert announce.xcom_pull(task_ids="announce")["aois"] == ["demo"]  # the healthy AOI is announced
        check = run.get_task_instance("check")
        assert check.state == "failed" and run.state == "failed"  # and the run says one AOI was not polled
        assert set(_statuses(db_url).values()) == {"ready"} and len(_statuses(db_url)) == 2 * N_PER_SENSOR
        # a manual run for the healthy AOI does not touch the dead catalogue
        n_requests = len(server.requests)
        run = dag.test(run_conf={"aoi": "demo", **window})
        assert run.state == "success" and len(server.requests) == n_requests


def _asset_events(dag_id: str, run_id: str) -> list[dict[str, object]]:
    """The asset events a DAG run emitted (Airflow's metadata database)."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
        ).all()
        return [dict(event.extra or {}) for event in events]


def _corrupt_bands(db_url: str, product_ids: list[int]) -> None:
    """Overwrite every band file of the products with bytes that are no raster."""
    with psycopg.connect(db_url) as conn:
        for (attributes,) in conn.execute("SELECT attributes FROM cbm.product WHERE product_id = ANY(%s)",
                                          (product_ids,)):
            for band in attributes["bands"]:
                Path(band["href"]).write_bytes(b"not a GeoTIFF")


def _poll_s2(db_url: str, demo: demo_data.DemoLayout) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        poll_aoi(conn, LocalCatalogue(demo.catalogue_root), aoi="demo", product_types=["S2MSI2A"],
                 start=datetime(2017, 8, 1, tzinfo=UTC), end=datetime(2018, 12, 1, tzinfo=UTC))
        return [r[0] for r in conn.execute("SELECT product_id FROM cbm.product ORDER BY acquired_at")]


def test_bad_input_fails_the_image_at_once_and_the_run(airflow_db: str, demo: demo_data.DemoLayout,
                                                       db_url: str) -> None:
    good, bad = _poll_s2(db_url, demo)
    _corrupt_bands(db_url, [bad])
    run = _dags().dags["cbm_extract"].test(run_conf={"aoi": "demo"})
    extract = {ti.map_index: ti for ti in run.get_task_instances() if ti.task_id == "extract"}
    states = sorted((ti.state, ti.try_number) for ti in extract.values())
    assert states == [("failed", 1)]  # the batch of both: the good image extracted, then one try, no retry
    assert run.get_task_instance("check").state == "failed" and run.state == "failed"
    assert run.get_task_instance("publish").state == "success"  # the good image's rows are announced
    events = _asset_events("cbm_extract", run.run_id)
    assert len(events) == 1 and events[0]["extracted"] == 1 and events[0]["failed"] == 1
    with psycopg.connect(db_url) as conn:
        status = {r[0]: r[1:] for r in conn.execute("SELECT product_id, status, attempts, last_error "
                                                    "FROM cbm.product_status")}
    assert status[good] == ("extracted", 1, None)
    assert status[bad][:2] == ("failed", 1)  # failed after one attempt, not after 3
    assert status[bad][2].startswith("CorruptProductError: product S2_31UDS_") and "B02.tif" in status[bad][2]


def test_publish_emits_no_event_when_no_rows_were_written(airflow_db: str, demo: demo_data.DemoLayout,
                                                          db_url: str) -> None:
    _corrupt_bands(db_url, _poll_s2(db_url, demo))
    run = _dags().dags["cbm_extract"].test(run_conf={"aoi": "demo"})
    assert run.state == "failed"
    assert run.get_task_instance("publish").state == "skipped"
    assert _asset_events("cbm_extract", run.run_id) == []
