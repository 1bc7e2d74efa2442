"""The deferrable on-demand operator and its trigger, against a local server replaying the documented shapes.

The operator submits once and defers (no worker slot while the order runs); the trigger polls
a slow order (queued, in progress, completed), reports failures with the service's message,
and gives up after its timeout; the resumed task registers the result or fails the job.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import airflow_testenv
import psycopg
import pytest

CFG = airflow_testenv.activate()  # before any airflow import
sys.path[:0] = [str(CFG.project / "dags"), str(CFG.project / "plugins")]

import shapely  # noqa: E402
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred  # noqa: E402
from card_data import ROME_GRD, metadata_only_safe, rome_product  # noqa: E402
from catalogue_replay import ReplayServer, Reply, json_reply, replay_server, sequence  # noqa: E402
from cbm_card_odp import OdpCardOperator, OdpOrderTrigger  # noqa: E402
from test_card_odp import ORDER, order, result_zip  # noqa: E402

from cbm_tasks.catalogue import registry  # noqa: E402
from cbm_tasks.pipeline.card import claim_jobs, plan_aoi  # noqa: E402

AREA = shapely.box(12.49, 41.99, 12.51, 42.01).wkt
STATUS = f"/odata/v1/ProductionOrders({ORDER})"
SUBMIT = "/odata/v1/ProductionOrder/OData.CSC.Order"


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with replay_server() as replay:
        yield replay


def events(trigger: OdpOrderTrigger) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def trigger(server: ReplayServer, *, timeout_s: float = 30.0) -> OdpOrderTrigger:
    return OdpOrderTrigger(ORDER, f"{server.base_url}/odata/v1", poll_interval_s=0.02, timeout_s=timeout_s)


def test_trigger_waits_for_a_slow_order(server: ReplayServer) -> None:
    server.route("GET", STATUS, sequence([json_reply(order("queued")), Reply(status=503),
                                          json_reply(order("in_progress")), json_reply(order("completed"))]))
    assert events(trigger(server)) == [{"status": "completed", "order_id": ORDER, "message": "completed"}]
    assert len(server.requests) >= 4  # a 503 only delays the answer
    classpath, kwargs = trigger(server).serialize()
    assert classpath == "cbm_card_odp.OdpOrderTrigger" and "token" not in json.dumps(kwargs)


def test_trigger_reports_failure_and_timeout(server: ReplayServer) -> None:
    server.route("GET", STATUS, lambda _: json_reply(order("failed", "No orbit file for the product")))
    (event,) = events(trigger(server))
    assert event["status"] == "failed" and "No orbit file for the product" in event["message"]
    server.route("GET", STATUS, lambda _: json_reply(order("queued")))
    (event,) = events(trigger(server, timeout_s=0.1))
    assert event == {"status": "timeout", "order_id": ORDER, "message": f"order {ORDER} not completed after 0 s"}


@pytest.fixture
def claimed(tmp_path: Path, db_url: str, server: ReplayServer, monkeypatch: pytest.MonkeyPatch) -> int:
    safe = metadata_only_safe(tmp_path, ROME_GRD)
    with psycopg.connect(db_url, autocommit=True) as conn:
        registry.register(conn, [rome_product(safe)], aoi="rome")
        plan_aoi(conn, aoi="rome", area_wkt=AREA, card_types=("CARD-BS",))
        (product_id,) = claim_jobs(conn, aoi="rome", worker="test")
    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", airflow_testenv.postgis_connection(db_url))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_STORE", airflow_testenv.store_connection(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_ODP", json.dumps({
        "conn_type": "http", "host": f"{server.base_url}/odata/v1", "password": "s3cret",
        "extra": {"poll_interval_s": 0.02}}))
    return product_id


def context() -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="cbm_s1_card", run_id="test", task_id="odp", map_index=0, try_number=1, max_tries=3)
    return {"ti": ti}


def status(db_url: str, product_id: int) -> tuple[str, str | None, str | None]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT s.status, s.last_error, p.attributes->>'odp_order' FROM cbm.product_status s "
                           "JOIN cbm.product p USING (product_id) WHERE product_id = %s", (product_id,)).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_operator_submits_once_defers_then_registers(server: ReplayServer, claimed: int, db_url: str) -> None:
    server.route("POST", SUBMIT, lambda _: json_reply(order("queued"), status=201))
    operator = OdpCardOperator(task_id="odp", job={"aoi": "rome", "product_id": claimed})
    for _ in range(2):  # a retried task waits for the order it placed
        with pytest.raises(TaskDeferred) as deferred:
            operator.execute(context())
        assert isinstance(deferred.value.trigger, OdpOrderTrigger) and deferred.value.trigger.order_id == ORDER
    assert [r.method for r in server.requests] == ["POST"]
    assert server.requests[0].headers["Authorization"] == "Bearer s3cret"
    assert status(db_url, claimed) == ("processing", None, ORDER)

    server.route("GET", f"/odata/v1/ProductionOrder({ORDER})/Product/$value", lambda _: Reply(body=result_zip()))
    outcome = operator.execute_complete(context(), {"status": "completed", "order_id": ORDER, "message": None})
    assert outcome["product_id"] == claimed and outcome["size_bytes"] > 0
    assert status(db_url, claimed)[0] == "ready"


def test_failed_order_fails_the_job_and_forgets_the_order(server: ReplayServer, claimed: int, db_url: str) -> None:
    server.route("POST", SUBMIT, lambda _: json_reply(order("queued")))
    operator = OdpCardOperator(task_id="odp", job={"aoi": "rome", "product_id": claimed})
    with pytest.raises(TaskDeferred):
        operator.execute(context())
    with pytest.raises(AirflowFailException, match="orbit file"):
        operator.execute_complete(context(), {"status": "failed", "order_id": ORDER,
                                              "message": f"on-demand order {ORDER} failed: orbit file"})
    state, error, placed = status(db_url, claimed)
    assert state == "failed" and error is not None and "orbit file" in error and placed is None


def test_refused_submission_fails_at_once(server: ReplayServer, claimed: int, db_url: str) -> None:
    server.route("POST", SUBMIT, lambda _: json_reply({"detail": "Input product not found"}, status=404))
    with pytest.raises(AirflowFailException, match="Input product not found"):
        OdpCardOperator(task_id="odp", job={"aoi": "rome", "product_id": claimed}).execute(context())
    assert status(db_url, claimed)[0] == "failed"
