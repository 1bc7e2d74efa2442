"""cbm_extract: per-parcel statistics of every ready image, one mapped task per image."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cbm_common import (
    ALL_AOIS,
    AOI_PARAM_PATTERN,
    EXTRACT_POOL,
    PARCEL_STATS,
    READY_PRODUCTS,
    default_args,
    fail_on_bad_input,
)

DEFAULT_ARGS = default_args(retries=3, retry_delay=timedelta(minutes=1), max_retry_delay=timedelta(minutes=20),
                            execution_timeout=timedelta(minutes=30))


@dag(
    dag_id="cbm_extract",
    schedule=[READY_PRODUCTS],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cbm", "extract"],
    default_args=DEFAULT_ARGS,
    params={
        "aoi": Param(ALL_AOIS, type="string", pattern=AOI_PARAM_PATTERN,
                     description="AOI to extract; * = the AOIs of the triggering catalogue polls, or every AOI"),
        "product_id": Param(None, type=["null", "integer"], minimum=1,
                            description="force the re-extraction of this image (cbm.product id); needs one aoi"),
        "max_products": Param(None, type=["null", "integer"], minimum=1, maximum=1000,
                              description="extract at most this many images in this run"),
    },
)
def cbm_extract() -> None:
    """Reduce every `ready` image of an AOI to per-parcel band statistics in `cbm.parcel_obs`.

    Started by the `cbm_ready_products` asset (a catalogue poll found images) or by hand, e.g.
    with `product_id` to redo one image. Images are claimed with `FOR UPDATE SKIP LOCKED`, so
    overlapping runs never take the same image; each is extracted in its own mapped task in
    pool `cbm_extract` and replaces its earlier rows in one transaction. Bad input marks the
    image `failed` at once; other errors are retried, and the image goes back to `ready` when
    the last try fails. `cbm_parcel_stats` is updated when rows were written. Images extracted
    before a re-import of their parcel set are claimed again, and only the new and changed
    parcels are extracted (the season is complete again).
    """

    @task
    def claim() -> list[dict[str, Any]]:
        from cbm_conn import postgis_dsn
        from cbm_lineage import report_lineage, tables

        from cbm_tasks import aoi as aoi_lookup
        from cbm_tasks import db
        from cbm_tasks.pipeline import extract as pipeline

        context = get_current_context()
        params = context["params"]
        aois = [str(params["aoi"])]
        if aois == [ALL_AOIS]:
            events = context["triggering_asset_events"].get(READY_PRODUCTS, [])
            aois = sorted({aoi for event in events for aoi in (event.extra or {}).get("aois", [])})
        with fail_on_bad_input():  # unknown AOI or product: a retry cannot help
            with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_extract") as conn:
                if not aois or aois == [ALL_AOIS]:
                    aois = aoi_lookup.list_aois(conn)
                claimed = pipeline.claim_ready(
                    conn, aois=aois, worker=f"{context['dag'].dag_id}/{context['run_id']}",
                    limit=params["max_products"], force_product_id=params["product_id"],
                )
        work_state = tables("cbm.product_status")  # OpenLineage: the claims read and written
        report_lineage(inputs=[*tables("cbm.product"), *work_state], outputs=work_state)
        return [{"aoi": aoi, "product_id": product_id} for aoi, product_id in claimed]

    @task(pool=EXTRACT_POOL, map_index_template="{{ cbm_image }}")
    def extract(image: dict[str, Any]) -> dict[str, Any]:
        from cbm_conn import label_cache, postgis_dsn, store_config
        from cbm_lineage import report_lineage, tables

        from cbm_tasks import db, lineage
        from cbm_tasks.pipeline import extract as pipeline
        from cbm_tasks.report.datasets import product_uris
        from cbm_tasks.store import open_store

        context = get_current_context()
        context["cbm_image"] = f"{image['aoi']}/{image['product_id']}"  # type: ignore[typeddict-unknown-key]
        ti = context["ti"]
        run = lineage.RunContext(step="extract", dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                 map_index=ti.map_index, try_number=ti.try_number)
        store = store_config()
        # corrupt raster, missing band: marked failed, a retry cannot help
        with fail_on_bad_input(f"product {image['product_id']}"):
            with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_extract") as conn:
                # OpenLineage: the image and parcels read, the time-series tables written
                report_lineage(inputs=[*product_uris(conn, [int(image["product_id"])], store_root=store.root),
                                       *tables("cbm.parcel")])
                outcome = pipeline.extract_claimed(conn, open_store(store), int(image["product_id"]),
                                                   aoi=str(image["aoi"]), run=run,
                                                   last_try=ti.try_number > ti.max_tries,
                                                   label_cache=label_cache())
        if outcome.n_rows:
            report_lineage(outputs=tables("cbm.parcel_obs", "cbm.parcel_class_counts", "cbm.extraction"))
        return outcome.as_dict()

    @task(trigger_rule="all_done")
    def summary(claimed: list[dict[str, Any]], outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        from cbm_tasks.catalogue.registry import ProductStatus

        done = list(outcomes)  # a failed image has no outcome
        extracted = [o for o in done if o["status"] == ProductStatus.EXTRACTED]
        return {
            "aois": sorted({o["aoi"] for o in extracted}),
            "claimed": len(claimed),
            "extracted": len(extracted),
            "skipped": sum(1 for o in done if o["status"] == ProductStatus.SKIPPED),
            "failed": len(claimed) - len(done),
            "rows": sum(int(o["n_rows"]) for o in done),
            "seconds": round(sum(float(o["seconds"]) for o in done), 2),
        }

    @task(outlets=[PARCEL_STATS])
    def publish(totals: dict[str, Any]) -> None:
        if not totals["extracted"]:
            # a skipped task emits no asset event: the markers are not recomputed for nothing
            raise AirflowSkipException("no image extracted in this run")
        get_current_context()["outlet_events"][PARCEL_STATS].extra = totals

    @task
    def check(totals: dict[str, Any]) -> None:
        # summary runs whatever happened to the images; this leaf fails the run when one failed
        if totals["failed"]:
            raise AirflowFailException(f"{totals['failed']} of {totals['claimed']} images failed (see their logs)")

    images = claim()
    totals = summary(images, extract.expand(image=images))
    publish(totals)
    check(totals)


cbm_extract()
