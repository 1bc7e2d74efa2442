"""The CDSE on-demand production backend against a local HTTP server replaying the documented shapes.

Request and answer shapes follow the service's documentation (OData ``ProductionOrder/OData.CSC.Order``,
``ProductionOrders(<Id>)``, ``ProductionOrder(<Id>)/Product/$value``), including failures and a
slow order that stays queued, then in progress, before it completes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import rasterio
import shapely
from affine import Affine
from card_data import ROME_GRD, metadata_only_safe, rome_product
from catalogue_replay import ReplayServer, Reply, json_reply, replay_server, sequence

from cbm_tasks import lineage
from cbm_tasks.card.errors import OrderRejectedError
from cbm_tasks.card.jobs import CardJob, card_bs_jobs
from cbm_tasks.card.odp import OdpConfig, OdpResultBackend, order_status, submit_order
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.http import RetryPolicy, make_session
from cbm_tasks.errors import ConfigError, TransientError
from cbm_tasks.pipeline.card import claim_jobs, plan_aoi, process
from cbm_tasks.store import LocalStore, StoreConfig

AREA = shapely.box(12.49, 41.99, 12.51, 42.01).wkt
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, timeout_s=5)
ORDER = "9999999"


def order(status: str, message: str | None = None) -> dict[str, object]:
    """An order as the service documents it."""
    return {"@odata.context": "$metadata#OData.CSC.Order", "value": {
        "Id": ORDER, "Status": status, "StatusMessage": message or status, "SubmissionDate": "2023-04-05T10:03:25.474Z",
        "Name": f"{ROME_GRD}.SAFE", "EstimatedDate": "2023-04-05T10:33:16.161Z",
        "InputProductReference": {"Reference": f"{ROME_GRD}.SAFE", "ContentDate": None}, "WorkflowOptions": [],
        "WorkflowName": "card_bs", "WorkflowId": None, "Priority": 1}}  # fmt: skip


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with replay_server() as replay:
        yield replay


def cfg(server: ReplayServer) -> OdpConfig:
    return OdpConfig(url=f"{server.base_url}/odata/v1", poll_interval_s=0.05)


def job(tmp_path: Path) -> CardJob:
    return card_bs_jobs([rome_product(tmp_path / f"{ROME_GRD}.SAFE")], {"rome": AREA})[0]


@pytest.fixture
def rome_job(tmp_path: Path) -> CardJob:
    metadata_only_safe(tmp_path, ROME_GRD)
    return job(tmp_path)


def result_zip(polarisations: tuple[str, ...] = ("VV", "VH")) -> bytes:
    """A result archive: one float32 GeoTIFF per polarisation on a 20 m UTM grid, 0 = no data."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, polarisation in enumerate(polarisations, start=1):
            memory = rasterio.io.MemoryFile()
            with memory.open(driver="GTiff", width=64, height=48, count=1, dtype="float32", crs="EPSG:32633",
                             transform=Affine(20.0, 0, 290000.0, 0, -20.0, 4655000.0), nodata=0.0) as dst:
                values = np.full((48, 64), 0.05 * index, np.float32)
                values[0, 0] = 0.0
                dst.write(values, 1)
            archive.writestr(f"S1B_CARD_BS/{ROME_GRD}_{polarisation}.tif", memory.read())
    return buffer.getvalue()


def test_submit_sends_the_documented_order(server: ReplayServer, rome_job: CardJob) -> None:
    server.route("POST", "/odata/v1/ProductionOrder/OData.CSC.Order", lambda _: json_reply(order("queued"), status=201))
    submitted = submit_order(make_session(bearer_token="t0ken"), cfg(server), rome_job, policy=FAST)
    assert (submitted.order_id, submitted.status) == (ORDER, "queued")
    (request,) = server.requests
    assert request.json() == {"WorkflowName": "card_bs", "InputProductReference": {"Reference": f"{ROME_GRD}.SAFE"},
                              "Priority": 1, "Name": rome_job.key}
    assert request.headers["Authorization"] == "Bearer t0ken"


@pytest.mark.parametrize(("reply", "error", "match"), [
    (json_reply({"detail": "Input product not found in the catalogue"}, status=400), OrderRejectedError,
     "HTTP 400.*Input product not found"),
    (json_reply({"detail": [{"loc": ["body", "WorkflowName"], "msg": "unknown workflow"}]}, status=422),
     OrderRejectedError, "unknown workflow"),
    (json_reply({"detail": "Not authenticated"}, status=401), ConfigError, "refused the credentials"),
    (Reply(status=503, body=b"busy"), TransientError, "gave up after 3 attempt"),
])
def test_refused_orders(server: ReplayServer, rome_job: CardJob, reply: Reply, error: type[Exception],
                        match: str) -> None:
    server.route("POST", "/odata/v1/ProductionOrder/OData.CSC.Order", lambda _: reply)
    with pytest.raises(error, match=match):
        submit_order(make_session(), cfg(server), rome_job, policy=FAST)


def test_busy_service_is_retried_then_accepts(server: ReplayServer, rome_job: CardJob) -> None:
    server.route("POST", "/odata/v1/ProductionOrder/OData.CSC.Order",
                 sequence([Reply(status=429, headers={"Retry-After": "0"}), json_reply(order("queued"))]))
    assert submit_order(make_session(), cfg(server), rome_job, policy=FAST).status == "queued"
    assert len(server.requests) == 2


def test_coherence_6_days_is_not_offered(server: ReplayServer, rome_job: CardJob) -> None:
    from dataclasses import replace

    with pytest.raises(ConfigError, match="not CARD-COH6"):
        submit_order(make_session(), cfg(server), replace(rome_job, card_type="CARD-COH6"), policy=FAST)
    assert server.requests == []


def test_slow_order_then_failure_message(server: ReplayServer) -> None:
    path = f"/odata/v1/ProductionOrders({ORDER})"
    server.route("GET", path, sequence([json_reply(order("queued")), json_reply(order("in_progress")),
                                        json_reply(order("in_progress")), json_reply(order("completed"))]))
    seen = [order_status(make_session(), cfg(server), ORDER).status for _ in range(4)]
    assert seen == ["queued", "in_progress", "in_progress", "completed"]
    server.route("GET", path, lambda _: json_reply(order("failed", "Processing failed: orbit file not available")))
    with pytest.raises(OrderRejectedError, match=f"order {ORDER} failed: Processing failed: orbit file not available"):
        order_status(make_session(), cfg(server), ORDER)
    server.route("GET", path, lambda _: json_reply({"value": {"Id": ORDER, "Status": "lost"}}))
    with pytest.raises(Exception, match="not a production order"):
        order_status(make_session(), cfg(server), ORDER)


def test_completed_order_becomes_a_ready_card_product(server: ReplayServer, tmp_path: Path,
                                                     conn: psycopg.Connection) -> None:
    safe = metadata_only_safe(tmp_path, ROME_GRD)
    registry.register(conn, [rome_product(safe, location="s3://eodata/never/copied/")], aoi="rome")
    plan_aoi(conn, aoi="rome", area_wkt=AREA)
    (product_id,) = claim_jobs(conn, aoi="rome", worker="t")
    server.route("GET", f"/odata/v1/ProductionOrder({ORDER})/Product/$value",
                 lambda _: Reply(body=result_zip(), headers={"Content-Type": "application/zip"}))
    store = LocalStore(StoreConfig(root=str(tmp_path / "store"), scratch_dir=str(tmp_path / "scratch")))
    backend = OdpResultBackend(make_session(), cfg(server), ORDER)

    outcome = process(conn, store, backend, product_id, aoi="rome", run=lineage.RunContext(step="card"),
                      last_try=False)

    with rasterio.open(tmp_path / "store" / outcome.location) as cog:
        assert cog.descriptions == ("VV", "VH") and cog.res == (20.0, 20.0)
        assert np.isnan(cog.read(1)[0, 0]) and cog.read(2)[1, 1] == pytest.approx(0.1)
        assert cog.tags()["BACKEND"] == f"CDSE on-demand production, order {ORDER}"
    row = conn.execute("SELECT status FROM cbm.product_status WHERE product_id = %s", (product_id,)).fetchone()
    assert row == ("ready",)


def test_missing_or_broken_result_is_rejected(server: ReplayServer, tmp_path: Path, rome_job: CardJob) -> None:
    backend = OdpResultBackend(make_session(), cfg(server), ORDER)
    with pytest.raises(OrderRejectedError, match="HTTP 404: no result"):
        backend.make(rome_job, [], tmp_path)
    server.route("GET", f"/odata/v1/ProductionOrder({ORDER})/Product/$value", lambda _: Reply(body=b"PK\x03\x04bad"))
    with pytest.raises(OrderRejectedError, match="not a readable zip"):
        backend.make(rome_job, [], tmp_path)
