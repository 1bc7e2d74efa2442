"""A batch of claimed images in one ``cbm_extract`` task, and what an extraction run did.

:func:`extract_batch` runs ``pipeline.extract.extract_claimed`` for each image of a batch
(``pipeline.batches``) still claimed by its run: every image keeps its own write transaction,
status and lineage run; a bad image does not stop the others; a transient error stops only its
image, and the task's retry redoes only the images not finished yet. :func:`run_totals` reads
what became of a run's images from their status. Without Airflow, like the rest of ``pipeline``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from cbm_tasks import lineage
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.registry import ProductStatus
from cbm_tasks.errors import BadInputError, ClaimLostError, TransientError
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.extraction.raster_io import RasterStore
from cbm_tasks.pipeline.batches import ExtractBatch
from cbm_tasks.pipeline.extract import ExtractOutcome, extract_claimed, release_after_failure
from cbm_tasks.pipeline.lease import LeaseTerms

__all__ = ["BatchOutcome", "BatchRetryError", "extract_batch", "run_totals"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one try of a batch did with each of its images.

    Attributes:
        outcomes: the images extracted or skipped by this try.
        failed: ``(product_id, error)`` of the images with bad input (marked ``failed``).
        retry: ``(product_id, error)`` of the images a transient error stopped: the claim is kept
            for the task's next try (released on the last one).
        not_held: images this try left alone: finished by an earlier try, or taken over by
            another run after their claim went stale.
    """

    aoi: str
    label: str
    outcomes: tuple[ExtractOutcome, ...]
    failed: tuple[tuple[int, str], ...]
    retry: tuple[tuple[int, str], ...]
    not_held: tuple[int, ...]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """Return the counts as a JSON-able dict (an XCom value)."""
        return {"aoi": self.aoi, "label": self.label,
                "extracted": sum(1 for o in self.outcomes if o.status == ProductStatus.EXTRACTED),
                "skipped": sum(1 for o in self.outcomes if o.status == ProductStatus.SKIPPED),
                "failed": [product_id for product_id, _ in self.failed],
                "retry": [product_id for product_id, _ in self.retry], "not_held": list(self.not_held),
                "rows": sum(o.n_rows for o in self.outcomes), "seconds": round(self.seconds, 3)}


class BatchRetryError(TransientError):
    """Some images of a batch hit a transient error; the others are finished. The task's retry does the rest."""

    def __init__(self, outcome: BatchOutcome) -> None:
        self.outcome = outcome
        first_id, first_error = outcome.retry[0]
        super().__init__(f"batch {outcome.label}: {len(outcome.retry)} image(s) to retry "
                         f"({', '.join(str(product_id) for product_id, _ in outcome.retry)}), "
                         f"{len(outcome.outcomes)} finished; first: product {first_id}: {first_error}")


def extract_batch(
    conn: psycopg.Connection,
    store: RasterStore,
    batch: ExtractBatch,
    *,
    run: lineage.RunContext,
    last_try: bool,
    label_cache: LabelCache | None = None,
    lease: LeaseTerms | None = None,
) -> BatchOutcome:
    """Extract each image of *batch* still claimed under ``batch.claimed_by``, one after the other.

    Every image is its own unit, as in a task of its own (:func:`extract_claimed`): its own write
    transaction, ``cbm.extraction`` row, lineage run (``cbm.pipeline_run`` with *run*'s task try)
    and status. Before each image the claims of the images still to do are renewed
    (``registry.renew_claims``): a long batch never goes stale, and an image no longer held
    (finished by an earlier try, or taken over by another run) is left alone, so a retry redoes
    only what is not done. The label rasters are shared by the images of the batch. A claim
    lease renewed by a heartbeat while the task runs must cover the whole batch: renew the
    claims of every image still to do (``registry.renew_claims``), not only the current one.

    Args:
        conn: CbM database (idle).
        store: where the band files are.
        batch: the images (``claim_batches``).
        run: lineage of this task try; each image's run row carries it.
        last_try: no retry follows (Airflow's last try): a failing image gives its claim back.
        label_cache: label rasters shared with the worker's other tasks; None = one for this batch.
        lease: lease, heartbeat and wait of each image's claim; None = :class:`LeaseTerms` defaults.

    Returns:
        The outcome per image; bad input does not stop the batch (those images are ``failed``).

    Raises:
        BatchRetryError: images hit a transient error; the others were finished first.
        BaseException: e.g. Airflow's execution timeout stops the batch at once; on the last
            try the images not started yet give their claim back.
    """
    t0 = time.perf_counter()
    cache = label_cache if label_cache is not None else LabelCache()
    todo = list(batch.product_ids)
    outcomes: list[ExtractOutcome] = []
    failed: list[tuple[int, str]] = []
    retry: list[tuple[int, str]] = []
    not_held: list[int] = []
    first_error: BaseException | None = None
    while todo:
        held = registry.renew_claims(conn, todo, aoi=batch.aoi, worker=batch.claimed_by)
        not_held += [product_id for product_id in todo if product_id not in held]
        todo = [product_id for product_id in todo if product_id in held]
        if not todo:
            break
        product_id = todo.pop(0)
        try:
            outcomes.append(extract_claimed(conn, store, product_id, aoi=batch.aoi, run=run, last_try=last_try,
                                            label_cache=cache, lease=lease))
        except ClaimLostError:  # another try or run took it over (its lease ran out): theirs to record
            not_held.append(product_id)
        except BadInputError as err:  # marked failed by extract_claimed; the next image may be fine
            failed.append((product_id, f"{type(err).__name__}: {err}"))
        except Exception as err:  # kept for the retry (released on the last try), reported below
            retry.append((product_id, f"{type(err).__name__}: {err}"))
            first_error = first_error or err
            if conn.closed or conn.broken:  # the others would fail the same way: the retry reconnects
                retry += [(other, "not tried: the database connection was lost") for other in todo]
                todo = []
        except BaseException as err:
            if last_try:
                for other in todo:
                    release_after_failure(conn, other, aoi=batch.aoi,
                                           error=f"batch stopped before this image: {type(err).__name__}: {err}")
            raise
    outcome = BatchOutcome(aoi=batch.aoi, label=batch.label, outcomes=tuple(outcomes), failed=tuple(failed),
                           retry=tuple(retry), not_held=tuple(not_held), seconds=time.perf_counter() - t0)
    counts = outcome.as_dict()
    log.info("extracted batch=%r aoi=%s images=%d extracted=%d skipped=%d failed=%d retry=%d not_held=%d rows=%d "
             "seconds=%.2f", batch.label, batch.aoi, len(batch.product_ids), counts["extracted"], counts["skipped"],
             len(failed), len(retry), len(not_held), counts["rows"], outcome.seconds)
    if retry:
        raise BatchRetryError(outcome) from first_error
    return outcome


_RUN_TOTALS = """
SELECT c.aoi, ps.status, count(*), coalesce(sum(e.n_rows), 0), coalesce(sum(e.seconds), 0)
FROM unnest(%(aois)s::text[], %(ids)s::integer[]) AS c(aoi, product_id)
JOIN cbm.aoi a ON a.name = c.aoi
JOIN cbm.product_status ps ON ps.aoi_id = a.aoi_id AND ps.product_id = c.product_id
LEFT JOIN LATERAL (
    SELECT sum(x.n_rows) AS n_rows, sum(x.seconds) AS seconds
    FROM cbm.extraction x JOIN cbm.parcel_set s USING (parcel_set_id)
    WHERE s.aoi_id = a.aoi_id AND x.product_id = c.product_id
) e ON ps.status = %(extracted)s
GROUP BY c.aoi, ps.status
"""


def run_totals(conn: psycopg.Connection, batches: Sequence[ExtractBatch]) -> dict[str, Any]:
    """Return what became of the images of an extraction run's *batches*, from their status now.

    Read from the database, not from the tasks' return values: a batch task that failed (bad
    input in one image, a killed worker) returns nothing, yet its other images are done.

    Returns:
        ``aois`` (with an image extracted), ``claimed``, ``extracted``, ``skipped``, ``failed``
        (every other state: failed, given back, still claimed), ``rows`` (statistics held by the
        extracted images) and ``seconds`` (their extraction time).
    """
    pairs = [(batch.aoi, product_id) for batch in batches for product_id in batch.product_ids]
    with conn.transaction():
        rows = conn.execute(_RUN_TOTALS, {"aois": [aoi for aoi, _ in pairs], "ids": [pid for _, pid in pairs],
                                          "extracted": ProductStatus.EXTRACTED.value}).fetchall()
    by_status: dict[str, int] = {}
    for _, status, n, _, _ in rows:
        by_status[str(status)] = by_status.get(str(status), 0) + int(n)
    extracted, skipped = by_status.get(ProductStatus.EXTRACTED, 0), by_status.get(ProductStatus.SKIPPED, 0)
    return {
        "aois": sorted({str(aoi) for aoi, status, _, _, _ in rows if status == ProductStatus.EXTRACTED}),
        "claimed": len(pairs), "extracted": extracted, "skipped": skipped,
        "failed": len(pairs) - extracted - skipped,
        "rows": sum(int(r[3]) for r in rows), "seconds": round(sum(float(r[4]) for r in rows), 2),
    }
