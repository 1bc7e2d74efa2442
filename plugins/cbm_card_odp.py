"""CARD products from the CDSE on-demand production service, without holding a worker slot.

:class:`OdpCardOperator` claims nothing itself: it takes one claimed CARD job (``aoi``,
``product_id``), submits its order once (``cbm_tasks.pipeline.card.submit_order_once``) and
defers to :class:`OdpOrderTrigger`, which polls the order's status in the triggerer (one
asyncio loop serves thousands of waiting orders). When the order is ``completed`` the task
resumes on a worker, fetches the result and registers it like any backend
(``cbm_tasks.pipeline.card.process``); a failed or cancelled order marks the job ``failed`` with
the service's message; an order that outlives ``OdpConfig.timeout_s`` is forgotten and the
job goes back to ``new`` for a later run.

Configuration: the trigger runs in the triggerer, where ``dags/`` (and ``cbm_conn``) is not on
the path, so it reads the token of connection ``cbm_odp`` itself (password = bearer token);
nothing secret is in its serialized arguments (they are stored in the metadata database).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

__all__ = ["ODP_CONN_ID", "OdpCardOperator", "OdpOrderTrigger"]

ODP_CONN_ID = "cbm_odp"


def _token(conn_id: str) -> str | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id).password or None
    except AirflowNotFoundException:
        return None


class OdpOrderTrigger(BaseTrigger):
    """Poll one on-demand order until it is completed, failed, or older than ``timeout_s``.

    Events: ``{"status": "completed" | "failed" | "timeout", "order_id": ..., "message": ...}``.
    """

    def __init__(self, order_id: str, url: str, *, poll_interval_s: float, timeout_s: float,
                 started_at: float | None = None, conn_id: str = ODP_CONN_ID) -> None:
        super().__init__()
        self.order_id, self.url, self.conn_id = order_id, url, conn_id
        self.poll_interval_s, self.timeout_s = poll_interval_s, timeout_s
        self.started_at = time.time() if started_at is None else started_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and arguments (no secret: the token is read at run time)."""
        return ("cbm_card_odp.OdpOrderTrigger", {
            "order_id": self.order_id, "url": self.url, "poll_interval_s": self.poll_interval_s,
            "timeout_s": self.timeout_s, "started_at": self.started_at, "conn_id": self.conn_id,
        })  # fmt: skip

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Ask for the status every ``poll_interval_s``; transient errors only delay the answer."""
        from cbm_tasks.card.errors import OrderRejectedError
        from cbm_tasks.card.odp import DONE, OdpConfig, order_status
        from cbm_tasks.catalogue.http import make_session
        from cbm_tasks.errors import CbmError, TransientError

        cfg = OdpConfig(url=self.url, poll_interval_s=self.poll_interval_s, timeout_s=self.timeout_s)
        token = await asyncio.to_thread(_token, self.conn_id)
        session = make_session(bearer_token=token)
        try:
            while True:
                try:
                    order = await asyncio.to_thread(order_status, session, cfg, self.order_id)
                except OrderRejectedError as err:
                    yield TriggerEvent({"status": "failed", "order_id": self.order_id, "message": str(err)})
                    return
                except (TransientError, CbmError) as err:
                    self.log.warning("order %s: status unknown for now: %s", self.order_id, err)
                else:
                    if order.status == DONE:
                        yield TriggerEvent({"status": "completed", "order_id": self.order_id, "message": order.message})
                        return
                    self.log.info("order %s: %s (estimated %s)", self.order_id, order.status, order.estimated)
                if time.time() - self.started_at > self.timeout_s:
                    yield TriggerEvent({"status": "timeout", "order_id": self.order_id,
                                        "message": f"order {self.order_id} not completed after {self.timeout_s:.0f} s"})
                    return
                await asyncio.sleep(self.poll_interval_s)
        finally:
            session.close()


def _run_context(context: Any) -> Any:
    from cbm_tasks import lineage

    ti = context["ti"]
    return lineage.RunContext(step="card", dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                              map_index=ti.map_index, try_number=ti.try_number)


class OdpCardOperator(BaseOperator):
    """Make one claimed CARD job with the on-demand service: submit, defer, register.

    Args:
        job: ``{"aoi": ..., "product_id": ...}`` as the DAG's claim task returns it.
    """

    template_fields = ("job",)

    def __init__(self, *, job: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job

    def execute(self, context: Any) -> Any:
        """Submit the job's order (once) and wait for it in the triggerer."""
        from cbm_conn import odp_config, postgis_dsn

        from cbm_tasks import db
        from cbm_tasks.catalogue.http import make_session
        from cbm_tasks.errors import BadInputError
        from cbm_tasks.pipeline.card import submit_order_once

        cfg, token = odp_config()
        try:
            with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_s1_card") as conn, \
                    make_session(bearer_token=token) as session:
                order_id = submit_order_once(conn, session, cfg, int(self.job["product_id"]), aoi=str(self.job["aoi"]))
        except BadInputError as err:
            raise AirflowFailException(f"product {self.job['product_id']}: {err}") from err
        self.defer(trigger=OdpOrderTrigger(order_id, cfg.url, poll_interval_s=cfg.poll_interval_s,
                                           timeout_s=cfg.timeout_s),
                   method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Fetch and register the result of a completed order; fail the job otherwise."""
        from cbm_conn import odp_config, postgis_dsn, store_config

        from cbm_tasks import db
        from cbm_tasks.card.odp import OdpResultBackend
        from cbm_tasks.catalogue.http import make_session
        from cbm_tasks.errors import BadInputError
        from cbm_tasks.pipeline.card import order_failed, process
        from cbm_tasks.store import open_store

        product_id, aoi = int(self.job["product_id"]), str(self.job["aoi"])
        ti = context["ti"]
        with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_s1_card") as conn:
            if event["status"] != "completed":
                # failed: the service's verdict on this input; timeout: try again in a later run
                order_failed(conn, product_id, aoi=aoi, error=f"OrderRejectedError: {event['message']}",
                             permanent=event["status"] == "failed")
                raise AirflowFailException(f"product {product_id}: {event['message']}")
            cfg, token = odp_config()
            with make_session(bearer_token=token) as session:
                try:
                    outcome = process(conn, open_store(store_config()), OdpResultBackend(session, cfg,
                                                                                         event["order_id"]),
                                      product_id, aoi=aoi, run=_run_context(context),
                                      last_try=ti.try_number > ti.max_tries)
                except BadInputError as err:
                    raise AirflowFailException(f"product {product_id}: {err}") from err
        return outcome.as_dict()
