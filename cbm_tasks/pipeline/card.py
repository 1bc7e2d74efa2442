"""The units of work of the ``cbm_s1_card`` DAG, without Airflow: each function is what one task does.

The CARD side of the product state machine (``cbm.product_status``, through the registry):

- :func:`plan_aoi` claims the AOI's ``new`` raw Sentinel-1 products, plans their CARD jobs
  (with every raw product of the AOI as a possible coherence partner), registers each job as a
  ``new`` CARD product and moves the raw products to ``processed``;
- :func:`claim_jobs` takes ``new`` CARD jobs for one run (``processing``, ``SKIP LOCKED``);
- :func:`process` makes one claimed job with any backend: local copies of the sources, the
  backend's file in a scratch folder, the file into the object store, then ``ready`` - in that
  order, so no reader ever sees a ``ready`` CARD product without its complete file. Bad input
  marks it ``failed`` with the reason; the last try of another error gives it back (``new``).
  Scratch folders are removed on success and failure;
- :func:`submit_order_once` / :func:`order_failed`: the on-demand service's side (the result of a
  completed order goes through :func:`process` with ``card.odp.OdpResultBackend``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import requests

from cbm_tasks import lineage
from cbm_tasks.aoi import aoi_footprint_wkt
from cbm_tasks.card import records
from cbm_tasks.card.backend import CardBackend, CardOutput
from cbm_tasks.card.jobs import plan_jobs
from cbm_tasks.card.odp import OdpConfig, submit_order
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import CARD_TYPES, Product
from cbm_tasks.catalogue.registry import ProductStatus
from cbm_tasks.errors import BadInputError, CbmError, ConfigError, ProductNotFoundError
from cbm_tasks.store import Store, scratch_folder

__all__ = ["CardOutcome", "PlanResult", "claim_jobs", "order_failed", "plan_and_claim", "plan_aoi", "process",
           "submit_order_once"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlanResult:
    """What one planning of one AOI did: raw products taken, jobs new to the catalogue."""

    aoi: str
    raw_new: int
    jobs_new: int

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-able dict (an XCom value)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CardOutcome:
    """One made CARD product."""

    aoi: str
    product_id: int
    key: str
    location: str
    size_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """Return the outcome as a JSON-able dict (an XCom value)."""
        return asdict(self)


def plan_aoi(
    conn: psycopg.Connection, *, aoi: str, area_wkt: str, worker: str = "plan",
    card_types: Sequence[str] = CARD_TYPES, prefix: str = "card",
) -> PlanResult:
    """Plan the CARD jobs of the AOI's new raw S1 products; move those products to ``processed``.

    Args:
        conn: CbM database.
        aoi: AOI name.
        area_wkt: the AOI's parcel extent, EPSG:4326 (jobs never leave it).
        worker: who plans (``<dag_id>/<run_id>``), recorded in the claim of the raw products.
        card_types: the CARD types this deployment's backend makes.
        prefix: store key prefix of CARD files.
    """
    taken = registry.claim(conn, aoi=aoi, worker=worker, status=ProductStatus.NEW, to=ProductStatus.PROCESSING,
                           limit=10_000, product_types=records.RAW_TYPES)
    if not taken:
        return PlanResult(aoi=aoi, raw_new=0, jobs_new=0)
    # every raw product of the AOI: the partner of a new SLC may have come in an earlier run
    candidates = [product for _, product in records.raw_products(conn, aoi=aoi)]
    jobs = plan_jobs(candidates, {aoi: area_wkt}, card_types=card_types,
                     known_keys=records.known_keys(conn, aoi=aoi))
    new_ids = registry.register(conn, records.job_products(jobs, prefix=prefix), aoi=aoi, status=ProductStatus.NEW)
    records.link_sources(conn, [job.key for job in jobs])
    for product_id in taken:
        registry.mark_done(conn, product_id, aoi=aoi, status=ProductStatus.PROCESSED)
    result = PlanResult(aoi=aoi, raw_new=len(taken), jobs_new=len(new_ids))
    log.info("planned aoi=%s raw_new=%d jobs_new=%d", aoi, result.raw_new, result.jobs_new)
    return result


def claim_jobs(
    conn: psycopg.Connection, *, aoi: str, worker: str, card_types: Sequence[str] = CARD_TYPES, limit: int = 100,
    stale_after: timedelta = timedelta(hours=6),
) -> list[int]:
    """Claim up to *limit* planned CARD jobs of *aoi* (``new`` -> ``processing``); return their product ids.

    As extraction claims: ``SKIP LOCKED``, oldest acquisitions first, each claim an attempt, a
    claim older than *stale_after* (a worker died mid-product) taken again.
    """
    return registry.claim(conn, aoi=aoi, worker=worker, status=ProductStatus.NEW, to=ProductStatus.PROCESSING,
                          limit=limit, stale_after=stale_after, product_types=card_types)


def plan_and_claim(
    conn: psycopg.Connection, *, aois: Sequence[str], worker: str, card_types: Sequence[str], limit: int = 1000,
    prefix: str = "card",
) -> list[tuple[str, int]]:
    """Plan the CARD jobs of every AOI's new raw products, then claim jobs for one run: ``(aoi, product_id)``.

    What is not claimed (over *limit*: Airflow caps a map at 1024) stays ``new`` for the next run.

    Raises:
        NotFoundError: an AOI without a parcel set.
    """
    claimed: list[tuple[str, int]] = []
    for aoi in aois:
        plan_aoi(conn, aoi=aoi, area_wkt=aoi_footprint_wkt(conn, aoi), worker=worker, card_types=card_types,
                 prefix=prefix)
        if len(claimed) < limit:
            batch = claim_jobs(conn, aoi=aoi, worker=worker, card_types=card_types, limit=limit - len(claimed))
            claimed.extend((aoi, product_id) for product_id in batch)
    return claimed


def _sources(conn: psycopg.Connection, uids: Sequence[str]) -> list[tuple[int, Product]]:
    with conn.transaction():
        rows = conn.execute("SELECT uid, product_id FROM cbm.product WHERE uid = ANY(%s)", (list(uids),)).fetchall()
        ids: dict[str, int] = {str(uid): int(product_id) for uid, product_id in rows}
        missing = [uid for uid in uids if uid not in ids]
        if missing:
            raise ProductNotFoundError(f"source products {missing} are not in the catalogue")
        return [(ids[uid], registry.get_product(conn, ids[uid])) for uid in uids]


def _lineage_io(sources: Sequence[tuple[int, Product]], output: CardOutput, *, product_id: int, location: str,
                size_bytes: int) -> tuple[list[lineage.RunInput], list[lineage.RunOutput]]:
    """What a CARD run read (source products, backend, graphs, DEM) and wrote (the CARD product)."""
    made = output.lineage
    version = made.get("sarsen") or made.get("gpt") or made.get("order")
    inputs = [lineage.RunInput("product", source.location, product_id=source_id, checksum=source.checksum)
              for source_id, source in sources]
    inputs.append(lineage.RunInput("backend", str(made.get("backend", "")),
                                   version=None if version is None else str(version)))
    inputs += [lineage.RunInput("graph", str(run["graph"]), version=str(run.get("graph_id")))
               for run in made.get("runs", []) if isinstance(run, dict) and run.get("graph")]
    if made.get("dem"):
        inputs.append(lineage.RunInput("dem", str(made["dem"]), detail={"geoid": made.get("geoid")}))
    outputs = [lineage.RunOutput("product", location, product_id=product_id,
                                 detail={"bands": list(output.bands), "epsg": output.epsg,
                                         "resolution_m": output.resolution_m, "bytes": size_bytes})]
    return inputs, outputs


def _release(conn: psycopg.Connection, product_id: int, *, aoi: str, error: str, permanent: bool) -> None:
    """Record a failure; a database that fails too must not hide the original error."""
    try:
        registry.mark_failed(conn, product_id, aoi=aoi, error=error, retry_status=ProductStatus.NEW,
                             permanent=permanent)
    except (psycopg.Error, CbmError) as err:
        log.warning("could not record the failure of card product_id=%d aoi=%s: %s", product_id, aoi, err)


def process(
    conn: psycopg.Connection, store: Store, backend: CardBackend, product_id: int, *, aoi: str,
    run: lineage.RunContext, last_try: bool,
) -> CardOutcome:
    """Make the claimed CARD product *product_id* with *backend* and make it ``ready``.

    Args:
        conn: CbM database (idle, not in a transaction).
        store: where the sources are and the product goes (``location`` of its row).
        backend: the deployment's backend.
        product_id: a claimed (``processing``) CARD product.
        aoi: the AOI it was planned for.
        run: lineage of this try; its ``cbm.pipeline_run`` row gets the backend's lineage.
        last_try: no retry follows a failure of this call.

    Raises:
        BadInputError: the job cannot be made (marked ``failed`` at once, reason in ``last_error``).
        CbmError: may pass on a retry; the claim is kept, or given back (``new``) on the last try.
    """
    started = time.perf_counter()
    job, record = records.job_of(conn, product_id)
    run_id = lineage.start_run(conn, run, params={"job": job.key, "card_type": job.card_type, "aoi": aoi,
                                                  "backend": backend.name, "sources": list(job.source_names)})
    try:
        if not backend.supports(job.card_type):
            raise ConfigError(f"job {job.key}: backend {backend.name} does not make {job.card_type}")
        sources = _sources(conn, job.sources)
        with scratch_folder(store.cfg) as scratch, ExitStack() as copies:
            local: list[tuple[Product, Path]] = [
                (source, copies.enter_context(store.local_copy(source.location)) if backend.local_sources
                 else Path(source.location)) for _, source in sources
            ]
            output = backend.make(job, local, scratch)
            size_bytes = output.path.stat().st_size
            store.upload(output.path, record.location, replace=True)  # atomic: a whole file or none
        records.add_run_params(conn, run_id, output.lineage)
        inputs, outputs = _lineage_io(sources, output, product_id=product_id, location=record.location,
                                      size_bytes=size_bytes)
        lineage.record_io(conn, run_id, inputs=inputs, outputs=outputs)
        records.record_output(conn, product_id, output=output, size_bytes=size_bytes, pipeline_run_id=run_id)
        registry.mark_done(conn, product_id, aoi=aoi, status=ProductStatus.READY)
    except BadInputError as err:
        message = f"{type(err).__name__}: {err}"
        _release(conn, product_id, aoi=aoi, error=message, permanent=True)
        lineage.finish_failed(conn, run_id, message)
        raise
    except BaseException as err:
        # BaseException: Airflow's execution timeout is one; the last try must not leave the
        # job 'processing' until its claim goes stale
        message = f"{type(err).__name__}: {err}"
        if last_try:
            _release(conn, product_id, aoi=aoi, error=message, permanent=False)
        lineage.finish_failed(conn, run_id, message)
        raise
    lineage.finish_run(conn, run_id, status="success")
    outcome = CardOutcome(aoi=aoi, product_id=product_id, key=job.key, location=record.location,
                          size_bytes=size_bytes, seconds=round(time.perf_counter() - started, 3))
    log.info("card ready product_id=%d key=%s backend=%s bytes=%d seconds=%.2f", product_id, job.key, backend.name,
             size_bytes, outcome.seconds)
    return outcome


def submit_order_once(conn: psycopg.Connection, session: requests.Session, cfg: OdpConfig, product_id: int, *,
                      aoi: str) -> str:
    """Submit the on-demand order of a claimed CARD job, once; return the order id.

    The order id is kept in the product's attributes (``odp_order``), so a retried task waits
    for the order it already placed instead of paying for a second one.

    Raises:
        OrderRejectedError, ConfigError: the service refused the order (the job is marked ``failed``).
        TransientError: the service is busy or unreachable (the claim is kept for the retry).
    """
    job, record = records.job_of(conn, product_id)
    placed = record.attributes.get("odp_order")
    if isinstance(placed, str) and placed:
        log.info("odp order already placed job=%s order=%s", job.key, placed)
        return placed
    try:
        order = submit_order(session, cfg, job)
    except BadInputError as err:
        _release(conn, product_id, aoi=aoi, error=f"{type(err).__name__}: {err}", permanent=True)
        raise
    records.set_order(conn, product_id, order.order_id)
    return order.order_id


def order_failed(conn: psycopg.Connection, product_id: int, *, aoi: str, error: str, permanent: bool) -> None:
    """Record that the on-demand order of a job failed or timed out; forget the order so a retry places a new one."""
    records.set_order(conn, product_id, None)
    _release(conn, product_id, aoi=aoi, error=error, permanent=permanent)
