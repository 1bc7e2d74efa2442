"""cbm_extract: per-parcel statistics of every ready image, one mapped task per batch of images."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from cbm_common import (
    ALL_AOIS,
    AOI_PARAM_PATTERN,
    EXTRACT_BATCH_MEGAPIXELS,
    EXTRACT_POOL,
    PARCEL_STATS,
    READY_PRODUCTS,
    claim_lease,
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
        "batch_megapixels": Param(EXTRACT_BATCH_MEGAPIXELS, type="number", minimum=0, maximum=1e6,
                                  description="work per mapped task in megapixels read (a full S2 tile ~700: "
                                              "alone); small images share a task; 0 = one task per image"),
    },
)
def cbm_extract() -> None:
    """Reduce every `ready` image of an AOI to per-parcel band statistics in `cbm.parcel_obs`.

    Started by the `cbm_ready_products` asset (a catalogue poll found images) or by hand, e.g.
    with `product_id` to redo one image. Images are claimed with `FOR UPDATE SKIP LOCKED`, so
    overlapping runs never take the same image, and grouped into batches of about
    `batch_megapixels` of work: a full Sentinel-2 tile is a batch of its own, hundreds of small
    chips share one. Each batch is a mapped task in pool `cbm_extract` (named by AOI, image
    count and first/last image); inside it every image is its own unit: it replaces its earlier
    rows in one transaction and has its own status and lineage run. Bad input marks the image
    `failed` and the batch goes on (the task then fails without retry); another error on an
    image fails the task after the rest of the batch, and the retry redoes only the images not
    finished; on the last try they go back to `ready`. `cbm_parcel_stats` is updated when rows
    were written. Images extracted before a re-import of their parcel set are claimed again, and
    only the new and changed parcels are extracted (the season is complete again).
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
                batches = pipeline.claim_batches(
                    conn, aois=aois, worker=f"{context['dag'].dag_id}/{context['run_id']}",
                    limit=params["max_products"], force_product_id=params["product_id"],
                    target_megapixels=float(params["batch_megapixels"]),
                )
        work_state = tables("cbm.product_status")  # OpenLineage: the claims read and written
        report_lineage(inputs=[*tables("cbm.product"), *work_state], outputs=work_state)
        return [batch.as_dict() for batch in batches]

    @task(pool=EXTRACT_POOL, map_index_template="{{ cbm_batch }}")
    def extract(batch: dict[str, Any]) -> dict[str, Any]:
        from cbm_conn import label_cache, postgis_dsn, store_config
        from cbm_lineage import report_lineage, tables

        from cbm_tasks import db, lineage
        from cbm_tasks.pipeline.batches import ExtractBatch
        from cbm_tasks.pipeline.extract_batch import extract_batch
        from cbm_tasks.report.datasets import product_uris
        from cbm_tasks.store import open_store

        images = ExtractBatch.from_dict(batch)
        context = get_current_context()
        context["cbm_batch"] = images.label  # type: ignore[typeddict-unknown-key]
        ti = context["ti"]
        run = lineage.RunContext(step="extract", dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                 map_index=ti.map_index, try_number=ti.try_number)
        store = store_config()
        # a transient error on an image (BatchRetryError) fails the task after the rest of the batch:
        # Airflow's retry redoes only the images not finished; the AOI gone: a retry cannot help
        with fail_on_bad_input(f"batch {images.label}"):
            with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_extract") as conn:
                # OpenLineage: the images and parcels read, the time-series tables written
                report_lineage(inputs=[*product_uris(conn, list(images.product_ids), store_root=store.root),
                                       *tables("cbm.parcel")])
                outcome = extract_batch(conn, open_store(store), images, run=run,
                                        last_try=ti.try_number > ti.max_tries, label_cache=label_cache(),
                                        lease=claim_lease())
        if outcome.outcomes:
            report_lineage(outputs=tables("cbm.parcel_obs", "cbm.parcel_class_counts", "cbm.extraction"))
        if outcome.failed:  # corrupt raster, missing band: marked failed, a retry cannot help
            raise AirflowFailException(f"{len(outcome.failed)} of {len(images.product_ids)} images failed: "
                                       + "; ".join(f"product {pid}: {error}" for pid, error in outcome.failed))
        return outcome.as_dict()

    @task(trigger_rule="all_done")
    def summary(batches: list[dict[str, Any]], outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        from cbm_conn import postgis_dsn

        from cbm_tasks import db
        from cbm_tasks.pipeline.batches import ExtractBatch
        from cbm_tasks.pipeline.extract_batch import run_totals

        del outcomes  # waited for; a failed batch returns none, so the totals are read from the database
        with db.connect(postgis_dsn(), autocommit=True, application_name="cbm_extract") as conn:
            return run_totals(conn, [ExtractBatch.from_dict(batch) for batch in batches])

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

    batches = claim()
    totals = summary(batches, extract.expand(batch=batches))
    publish(totals)
    check(totals)


cbm_extract()
