"""cbm_s1_card: Sentinel-1 CARD products (CARD-BS, CARD-COH6/12) from new raw S1 products, one mapped task per job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cbm_card_odp import OdpCardOperator
from cbm_common import (
    ALL_AOIS,
    AOI_PARAM_PATTERN,
    CARD_POOL,
    READY_PRODUCTS,
    S1_PRODUCTS,
    default_args,
    fail_on_bad_input,
)

DEFAULT_ARGS = default_args(retries=2, retry_delay=timedelta(minutes=2), max_retry_delay=timedelta(minutes=30),
                            # a whole SNAP coherence of three sub-swaths on a busy worker
                            execution_timeout=timedelta(hours=3))


@dag(
    dag_id="cbm_s1_card",
    schedule=[S1_PRODUCTS],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cbm", "sentinel-1", "card"],
    default_args=DEFAULT_ARGS,
    params={
        "aoi": Param(ALL_AOIS, type="string", pattern=AOI_PARAM_PATTERN,
                     description="AOI to process; * = the AOIs of the triggering catalogue polls, or every AOI"),
        "max_jobs": Param(None, type=["null", "integer"], minimum=1, maximum=1000,
                          description="make at most this many CARD products in this run"),
    },
)
def cbm_s1_card() -> None:
    """Turn the new raw Sentinel-1 products of each AOI into CARD products ready for extraction.

    Started by `cbm_s1_products` (a catalogue poll registered raw S1 products) or by hand.
    `plan` plans one job per CARD product (CARD-BS per GRD; CARD-COH6/12 per SLC pair, see
    `cbm_tasks.card.jobs`), registers each as a `new` CARD product and claims them. The backend of
    the deployment (variable `cbm_card`) makes each in its own mapped task in pool `cbm_card`:
    `make` for `sarsen` and `snap`; `order` for `cdse-odp`, which waits for the service in the
    triggerer, holding no worker slot. A made product is in the object store before it turns
    `ready`; bad input marks it `failed` with the reason, other errors are retried with backoff.
    `cbm_ready_products` is updated when products became ready, which starts `cbm_extract`.
    """

    @task
    def plan() -> list[dict[str, Any]]:
        from cbm_conn import card_config, postgis_dsn

        from cbm_tasks import aoi as aoi_lookup
        from cbm_tasks import db
        from cbm_tasks.pipeline import card as pipeline

        context = get_current_context()
        params = context["params"]
        aois = [str(params["aoi"])]
        if aois == [ALL_AOIS]:
            events = context["triggering_asset_events"].get(S1_PRODUCTS, [])
            aois = sorted({aoi for event in events for aoi in (event.extra or {}).get("aois", [])}) or aois
        cfg = card_config()
        # unknown AOI, bad configuration: a retry cannot help
        with fail_on_bad_input(), db.connect(postgis_dsn(), autocommit=True, application_name="cbm_s1_card") as conn:
            if aois == [ALL_AOIS]:
                aois = aoi_lookup.list_aois(conn)
            worker = f"{context['dag'].dag_id}/{context['run_id']}"
            claimed = pipeline.plan_and_claim(conn, aois=aois, worker=worker, card_types=cfg.card_types,
                                              limit=params["max_jobs"] or 1000)
        remote = cfg.backend == "cdse-odp"
        return [{"aoi": aoi, "product_id": product_id, "remote": remote} for aoi, product_id in claimed]

    @task
    def jobs_for(jobs: list[dict[str, Any]], *, remote: bool) -> list[dict[str, Any]]:
        # the backend's kind decides which of the two mapped tasks makes a job
        return [{"aoi": job["aoi"], "product_id": job["product_id"]} for job in jobs if job["remote"] == remote]

    @task(pool=CARD_POOL, map_index_template="{{ cbm_job }}")
    def make(job: dict[str, Any]) -> dict[str, Any]:
        from cbm_conn import card_config, postgis_dsn, store_config

        from cbm_tasks import db, lineage
        from cbm_tasks.card.choose import open_backend
        from cbm_tasks.pipeline import card as pipeline
        from cbm_tasks.store import open_store

        context = get_current_context()
        context["cbm_job"] = f"{job['aoi']}/{job['product_id']}"  # type: ignore[typeddict-unknown-key]
        ti = context["ti"]
        run = lineage.RunContext(step="card", dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                 map_index=ti.map_index, try_number=ti.try_number)
        # incomplete SAFE, DEM gap, ...: marked failed, a retry cannot help
        with fail_on_bad_input(f"product {job['product_id']}"), \
                db.connect(postgis_dsn(), autocommit=True, application_name="cbm_s1_card") as conn:
            outcome = pipeline.process(conn, open_store(store_config()), open_backend(card_config()),
                                       int(job["product_id"]), aoi=str(job["aoi"]), run=run,
                                       last_try=ti.try_number > ti.max_tries)
        return outcome.as_dict()

    @task(trigger_rule="all_done", outlets=[READY_PRODUCTS])
    def publish(planned: list[dict[str, Any]], made: list[dict[str, Any]],
                ordered: list[dict[str, Any]]) -> dict[str, Any]:
        done = [*made, *ordered]  # a failed job has no outcome (the lazy sequences need list())
        n_jobs = len(planned)
        totals = {"aois": sorted({o["aoi"] for o in done}), "jobs": n_jobs, "ready": len(done),
                  "failed": n_jobs - len(done), "bytes": sum(int(o["size_bytes"]) for o in done)}
        if not done:
            # a skipped task emits no asset event: cbm_extract is not started for nothing
            raise AirflowSkipException(f"no CARD product became ready: {totals}")
        get_current_context()["outlet_events"][READY_PRODUCTS].extra = totals
        return totals

    @task(trigger_rule="all_done")
    def check(planned: list[dict[str, Any]], made: list[dict[str, Any]], ordered: list[dict[str, Any]]) -> None:
        # publish runs whatever happened to the jobs; this leaf fails the run when one failed
        failed = len(planned) - len(list(made)) - len(list(ordered))
        if failed:
            raise AirflowFailException(f"{failed} CARD jobs failed (see their logs and cbm.product_status)")

    jobs = plan()
    made = make.expand(job=jobs_for(jobs, remote=False))
    ordered = OdpCardOperator.partial(task_id="order", pool=CARD_POOL).expand(job=jobs_for(jobs, remote=True))
    publish(jobs, made, ordered.output)
    check(jobs, made, ordered.output)


cbm_s1_card()
