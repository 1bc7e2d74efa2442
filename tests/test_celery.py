"""The demo AOI's extraction under the CeleryExecutor with two workers, one of them killed mid-task.

The real deployment of ``cbm airflow start --executor celery --workers 2``: a project-local
redis-server on a free port of 127.0.0.1, the Airflow components and two ``airflow celery worker``
processes, on a private metadata database (airflow_testenv) and this test's CbM database. While
both workers hold an image (their write waits on a row lock the test holds on the parcel set),
one worker is SIGKILLed with every process it started: its task's heartbeat stops, Airflow fails
the try after ``task_instance_heartbeat_timeout`` (20 s here), the retry starts after the
deployment's ``[cbm] retry_delay_seconds`` (5 s here; the DAG's own is a minute), waits for the
claim lease of the image to run out (``[cbm] claim_lease_seconds``, 20 s here; 60 s by default)
and extracts it on the other worker. Every image ends ``extracted`` once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import airflow_testenv
import psycopg
import pytest
from airflow_testenv import free_port

from cbm_tasks.catalogue.local import LocalCatalogue
from cbm_tasks.demo import data as demo_data
from cbm_tasks.errors import ServiceError
from cbm_tasks.ops import airflow_ctl, healthcheck, redis_broker
from cbm_tasks.ops.airflow_api import AirflowApi
from cbm_tasks.parcels import sets as parcel
from cbm_tasks.pipeline.poll import poll_aoi

log = logging.getLogger(__name__)

N_PER_SENSOR = 1  # 1 Sentinel-2 L2A + 1 Sentinel-1 CARD-BS demo image: one for each worker


@pytest.fixture
def celery_airflow(db_url: str, tmp_path: Path) -> Iterator[airflow_ctl.AirflowConfig]:
    airflow_testenv.metadata_db()
    cfg = dataclasses.replace(airflow_testenv.config(), data_url=db_url, store_root=tmp_path, executor="celery",
                              celery_workers=2, worker_concurrency=1, redis_port=free_port(),
                              task_heartbeat_timeout_s=20, parallelism=4, max_active_tasks_per_dag=4,
                              extract_pool_slots=2, retry_delay_s=5, claim_lease_s=20)
    try:
        airflow_ctl.start(cfg, migrate=False, timeout_s=300)
        yield cfg
    finally:
        with contextlib.suppress(ServiceError):  # this test's run, if it failed early: not the next test's
            airflow_testenv.quiesce(AirflowApi(cfg.url, username=airflow_ctl.ADMIN_USER,
                                               password=airflow_ctl.admin_password(cfg)))
        sessions = [s.pid for s in airflow_ctl.status(cfg) if s.pid is not None]
        airflow_ctl.stop(cfg)
        left = [pid for sid in sessions for pid in airflow_testenv.session_members(sid)]
        assert left == [], f"processes left behind after stop: {left}"


def _leases(db_url: str) -> dict[int, str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT product_id, leased_by FROM cbm.product_status "
                            "WHERE status = 'extracting' AND leased_by IS NOT NULL AND lease_until > now()")
        return {int(product_id): str(holder) for product_id, holder in rows.fetchall()}


def _holder_pid(holder: str) -> int:
    match = re.match(r"[^:]+:(\d+) ", holder)  # "<host>:<pid> <dag>/<run>/<task>[<map>]#<try>"
    assert match is not None, holder
    return int(match.group(1))


def test_extraction_on_two_celery_workers_survives_a_killed_worker(
    celery_airflow: airflow_ctl.AirflowConfig, db_url: str, tmp_path: Path,
) -> None:
    cfg = celery_airflow
    assert cfg.components == ("redis", "api-server", "scheduler", "dag-processor", "triggerer",
                              "celery-worker-1", "celery-worker-2")
    layout = demo_data.build_demo(tmp_path / "demo", max_products=N_PER_SENSOR)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
        poll_aoi(conn, LocalCatalogue(layout.catalogue_root), aoi="demo",
                 start=datetime(2017, 8, 1, tzinfo=UTC), end=datetime(2018, 12, 1, tzinfo=UTC))
        products = [r[0] for r in conn.execute("SELECT product_id FROM cbm.product_status WHERE status = 'ready'")]
    assert len(products) == 2 * N_PER_SENSOR
    workers = {s.component: s.pid for s in airflow_ctl.status(cfg) if s.component.startswith("celery-worker")}
    assert all(pid is not None for pid in workers.values())

    api = AirflowApi(cfg.url, username=airflow_ctl.ADMIN_USER, password=airflow_ctl.admin_password(cfg))
    api.wait_for_dags(["cbm_extract"], timeout_s=240)
    # runs and asset events earlier tests left (same metadata database) would start or hold back
    # runs of their own when the DAG is unpaused: this test's run is the only one
    airflow_testenv.quiesce(api)
    api.set_paused("cbm_extract", paused=False)
    with psycopg.connect(db_url) as blocker:
        # the extractions' writes wait for this lock (FOR SHARE on their parcel set): both workers'
        # tasks are caught mid-extraction, holding their image's lease
        blocker.execute("SELECT 1 FROM cbm.parcel_set FOR UPDATE")
        # one task per image (no batches of small images): one image on each worker
        run_id = api.trigger("cbm_extract", conf={"aoi": "demo", "batch_megapixels": 0})
        deadline = time.monotonic() + 300
        while len(leases := _leases(db_url)) < 2:
            assert time.monotonic() < deadline, f"no two leased images; {api.task_states('cbm_extract', run_id)}"
            time.sleep(0.5)
        holders = {product_id: os.getsid(_holder_pid(holder)) for product_id, holder in leases.items()}
        # one image on each worker: both run tasks at once
        assert sorted(holders.values()) == sorted(workers.values())
        victim_product, victim_session = sorted(holders.items())[0]
        victim = next(name for name, pid in workers.items() if pid == victim_session)
        # the worker, its pool, the task supervisor and the task
        for pid in airflow_testenv.session_members(victim_session):
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        blocker.rollback()  # the surviving worker's extraction goes on

    run = api.wait_for_run("cbm_extract", run_id, timeout_s=600)
    assert run["state"] == "success", api.task_states("cbm_extract", run_id)
    recovery_s = time.monotonic() - killed_at
    log.info("killed worker=%s product=%s: run finished %.0f s later", victim, victim_product, recovery_s)
    assert {s.component: s.running for s in airflow_ctl.status(cfg)}[victim] is False

    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT status, count(*), count(claimed_by), count(leased_by), count(lease_until) "
                              "FROM cbm.product_status GROUP BY status").fetchall()
        extractions = dict(conn.execute("SELECT product_id, count(*) FROM cbm.extraction GROUP BY 1").fetchall())
        duplicates = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM cbm.parcel_obs GROUP BY product_id, parcel_set_id, parcel_key "
            "HAVING count(*) > 1) d").fetchone()
        tries = conn.execute(
            "SELECT try_number, status FROM cbm.pipeline_run WHERE step = 'extract' AND run_id = %s "
            "AND (params->>'product_id')::int = %s ORDER BY try_number", (run_id, victim_product)).fetchall()
        successes = dict(conn.execute(
            "SELECT (params->>'product_id')::int, count(*) FROM cbm.pipeline_run WHERE step = 'extract' "
            "AND run_id = %s AND status = 'success' GROUP BY 1", (run_id,)).fetchall())
    # every image extracted, exactly once, none left claimed or leased
    assert status == [("extracted", 2 * N_PER_SENSOR, 0, 0, 0)]
    assert extractions == dict.fromkeys(products, 1)
    assert duplicates == (0,)
    assert successes == dict.fromkeys(products, 1)
    # the killed try never finished; its retry did, on the surviving worker, within minutes (not 2 hours)
    assert tries[-1] == (2, "success") and all(state != "success" for _, state in tries[:-1])
    survivor = next(name for name in workers if name != victim)
    survivor_log = cfg.log_file(survivor).read_text(errors="replace")
    assert re.search(r"task_id='extract'.*try_number=2", survivor_log), "the retry did not run on the other worker"
    assert recovery_s < 300, f"the killed worker's image took {recovery_s:.0f} s to be extracted"

    # the containers' health check of a worker (a ping over the broker): the survivor answers, the killed one not
    broker = redis_broker.broker_url(cfg.redis_port, airflow_ctl.broker_password(cfg))
    node = {name: airflow_ctl.celery_node_name(name, socket.gethostname()) for name in workers}
    assert healthcheck.celery_worker(node[survivor], broker_url=broker) == f"Celery worker {node[survivor]} answers"
    with pytest.raises(SystemExit, match=f"Celery worker {node[victim]} did not answer a ping within 3 s"):
        healthcheck.celery_worker(node[victim], broker_url=broker, timeout_s=3)
