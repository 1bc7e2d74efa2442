"""The units of work of the ``cbm_extract`` DAG, without Airflow: each function is what one task does.

A DAG task opens the connection and the store from its Airflow connections
(``dags/cbm_conn.py``), makes one call here and returns the small value it gets back. The
extraction side of the product state machine (``cbm.product_status``) is driven from here:

- :func:`requeue_incomplete` puts ``extracted`` images back to ``ready`` when their parcel
  set was re-imported since (new or changed parcels lack their rows), and ``skipped`` ones
  whose footprint parcels of a set imported since now intersect;
- :func:`claim_ready` takes ``ready`` products for one extraction run (``SKIP LOCKED``), and
  :func:`claim_batches` groups them into batches of about equal work (``pipeline.batches``),
  one mapped task each;
- :func:`extract_claimed` extracts one claimed product and records the outcome: ``extracted``,
  ``skipped`` (no parcel inside), ``failed`` at once for bad input, and back to ``ready`` (or
  ``failed`` after the last attempt) when the last Airflow try of a transient error is spent.
  Between tries the claim is kept, so no other run takes the product meanwhile. While a try
  works on the product it holds the claim's lease and renews it (:mod:`.lease`); if its worker
  dies, the lease runs out within a minute and the retry of the task (on any worker) takes the
  product again, or another run's claim does.
- ``pipeline.extract_batch`` runs :func:`extract_claimed` for each image of a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from cbm_tasks import lineage
from cbm_tasks.aoi import aoi_id, parcel_set_years
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.registry import ProductStatus
from cbm_tasks.errors import (
    BadInputError,
    CbmError,
    ClaimLostError,
    ConfigError,
    NotFoundError,
    ProductNotFoundError,
)
from cbm_tasks.extraction import extract
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.extraction.raster_io import RasterStore
from cbm_tasks.pipeline.batches import TARGET_MEGAPIXELS, ExtractBatch, plan_batches, sized_image
from cbm_tasks.pipeline.lease import LeaseKeeper, LeaseTerms

__all__ = [
    "MAX_CLAIM",
    "AoiSummary",
    "ExtractOutcome",
    "aoi_summary",
    "claim_batches",
    "claim_ready",
    "extract_claimed",
    "parcel_year",
    "release_after_failure",
    "requeue_incomplete",
]

log = logging.getLogger(__name__)

# one extraction run maps at most one task per product (a batch holds one or more), and Airflow
# caps a map at 1024 ([core] max_map_length); what is left stays ready for the next run
MAX_CLAIM = 1000
_SEASON_START_MONTH = 8  # images from August on also serve the next year's parcels (winter crops)


@dataclass(frozen=True, slots=True)
class ExtractOutcome:
    """What became of one claimed product."""

    aoi: str
    product_id: int
    status: str  # ProductStatus.EXTRACTED or SKIPPED, as its value (an XCom is JSON)
    n_parcels: int
    n_rows: int
    seconds: float
    warning: str | None = None  # why the image gave no row (misses every parcel, only nodata)

    def as_dict(self) -> dict[str, Any]:
        """Return the outcome as a JSON-able dict (an XCom value)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AoiSummary:
    """The state of one AOI in the database: products per status and time-series rows."""

    aoi: str
    products: dict[str, int]
    images_extracted: int
    parcels: int
    parcel_obs_rows: int
    stats_rows: int


def claim_ready(
    conn: psycopg.Connection,
    *,
    aois: Sequence[str],
    worker: str,
    limit: int | None = None,
    force_product_id: int | None = None,
) -> list[tuple[str, int]]:
    """Claim the ``ready`` products of *aois* for one extraction run; return ``(aoi, product_id)`` pairs.

    Extracted images made incomplete by a re-import are queued again first (:func:`requeue_incomplete`).

    Args:
        conn: CbM database.
        aois: AOI names, in the order they are served.
        worker: who claims (``<dag_id>/<run_id>``), recorded in ``claimed_by``.
        limit: at most this many products in all; None = up to MAX_CLAIM.
        force_product_id: put this product back to ``ready`` first (force its re-extraction);
            needs exactly one AOI.

    Raises:
        ConfigError: *force_product_id* with other than one AOI, or *limit* < 1.
        NotFoundError, ProductNotFoundError: unknown AOI, or the product is not registered for it.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 or None, got {limit}")
    # images whose parcel set was re-imported since their extraction are claimed with the others
    requeue_incomplete(conn, aois=aois)
    if force_product_id is not None:
        if len(aois) != 1:
            raise ConfigError(f"product_id {force_product_id} needs exactly one AOI, got {list(aois)}")
        registry.reset(conn, force_product_id, aoi=aois[0])
        log.info("reset product_id=%d aoi=%s to ready (forced re-extraction)", force_product_id, aois[0])
    claimed: list[tuple[str, int]] = []
    cap = MAX_CLAIM if limit is None else min(limit, MAX_CLAIM)
    for aoi in aois:
        if len(claimed) >= cap:
            break
        batch = registry.claim(conn, aoi=aoi, worker=worker, limit=cap - len(claimed))
        claimed.extend((aoi, product_id) for product_id in batch)
    if force_product_id is not None and (aois[0], force_product_id) not in claimed:
        raise NotFoundError(f"product {force_product_id} was reset but another run claimed it first")
    return claimed


# FOR UPDATE OF both: an extraction writing meanwhile is waited for and its new version re-read
_INCOMPLETE = """
SELECT a.name, ps.product_id, e.parcel_set_version, s.version
FROM cbm.product_status ps
JOIN cbm.aoi a ON a.aoi_id = ps.aoi_id
JOIN cbm.parcel_set s ON s.aoi_id = ps.aoi_id
JOIN cbm.extraction e ON e.parcel_set_id = s.parcel_set_id AND e.product_id = ps.product_id
WHERE a.name = ANY(%(aois)s) AND ps.status = %(extracted)s AND e.parcel_set_version < s.version
ORDER BY a.name, ps.product_id
FOR UPDATE OF ps, e
"""

# skipped (no parcel inside, or no set for the season) before a set of the image's season was
# imported, and a parcel of that set now intersects the footprint (no footprint: the extraction
# uses the raster's bounds, so it is tried again); skipped again after the import: not taken
_SKIPPED_BEFORE_IMPORT = """
SELECT a.name, ps.product_id
FROM cbm.product_status ps
JOIN cbm.aoi a ON a.aoi_id = ps.aoi_id
JOIN cbm.product pr ON pr.product_id = ps.product_id
WHERE a.name = ANY(%(aois)s) AND ps.status = %(skipped)s
  AND EXISTS (
    SELECT 1 FROM cbm.parcel_set s
    WHERE s.aoi_id = ps.aoi_id AND s.imported_at > ps.updated_at
      AND s.year IN (extract(year FROM pr.acquired_at AT TIME ZONE 'UTC')::int,
                     CASE WHEN extract(month FROM pr.acquired_at AT TIME ZONE 'UTC') >= %(season_start_month)s
                          THEN extract(year FROM pr.acquired_at AT TIME ZONE 'UTC')::int + 1 END)
      AND (pr.footprint IS NULL
           OR (s.extent && pr.footprint
               AND EXISTS (SELECT 1 FROM cbm.parcel p WHERE p.parcel_set_id = s.parcel_set_id
                           AND ST_Intersects(p.geom, ST_Transform(pr.footprint, s.srid))))))
ORDER BY a.name, ps.product_id
FOR UPDATE OF ps
"""


def requeue_incomplete(conn: psycopg.Connection, *, aois: Sequence[str]) -> list[tuple[str, int]]:
    """Put back to ``ready`` the images of *aois* that a parcel-set import since made incomplete.

    A re-import deletes the rows of changed and removed parcels, and new parcels have none:
    the images extracted before it are incomplete. Each goes back to ``ready`` (the next
    ``cbm_extract`` run claims it) and its extraction then computes the new and changed
    parcels only (``extract_product(complete=True)``). An image ``skipped`` before the import
    (no parcel inside it, or no parcel set for its season yet) goes back too when a parcel of
    a set of its season (its year, or the next one from August) now intersects its footprint,
    or when it has no footprint. Idempotent: an image already queued, or completed or skipped
    again after the import, is not taken again.

    Args:
        conn: CbM database.
        aois: AOI names.

    Returns:
        The ``(aoi, product_id)`` pairs queued again.
    """
    with conn.transaction():
        rows = conn.execute(_INCOMPLETE, {"aois": list(aois), "extracted": ProductStatus.EXTRACTED.value}).fetchall()
        for aoi, product_id, extracted_at, current in rows:
            registry.reset(conn, int(product_id), aoi=str(aoi))
            log.info("requeued product_id=%d aoi=%s: extracted at parcel-set version %d, the set is at %d",
                     product_id, aoi, extracted_at, current)
        skipped = conn.execute(_SKIPPED_BEFORE_IMPORT,
                               {"aois": list(aois), "skipped": ProductStatus.SKIPPED.value,
                                "season_start_month": _SEASON_START_MONTH}).fetchall()
        for aoi, product_id in skipped:
            registry.reset(conn, int(product_id), aoi=str(aoi))
            log.info("requeued product_id=%d aoi=%s: skipped before an import of its season's parcel set, "
                     "whose parcels now intersect its footprint", product_id, aoi)
    return [(str(aoi), int(product_id)) for aoi, product_id, *_ in [*rows, *skipped]]


def parcel_year(conn: psycopg.Connection, product_id: int, *, aoi: str) -> int | None:
    """Return the year of the parcel set an image is extracted for, or None when the AOI has none for it.

    The set of the acquisition year; for an image of August to December without one, the set
    of the next year: autumn images show the sowing of that season's winter crops.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT extract(year FROM acquired_at AT TIME ZONE 'UTC')::int, "
            "       extract(month FROM acquired_at AT TIME ZONE 'UTC')::int "
            "FROM cbm.product WHERE product_id = %s",
            (product_id,),
        ).fetchone()
        years = set(parcel_set_years(conn, aoi))
    if row is None:
        raise ProductNotFoundError(f"product {product_id} is not in the catalogue (cbm.product)")
    year, month = int(row[0]), int(row[1])
    if year in years:
        return year
    if month >= _SEASON_START_MONTH and year + 1 in years:
        return year + 1
    return None


def release_after_failure(conn: psycopg.Connection, product_id: int, *, aoi: str, error: str) -> None:
    """Give back the claim of a product whose last try failed (``registry.mark_failed``).

    A database that fails too must not hide the original error: it is logged, and the claim
    goes stale instead.
    """
    try:
        registry.mark_failed(conn, product_id, aoi=aoi, error=error)
    except (psycopg.Error, CbmError) as err:
        log.warning("could not release product_id=%d aoi=%s after %s: %s (the claim goes stale instead)",
                    product_id, aoi, error[:200], err)


def extract_claimed(
    conn: psycopg.Connection,
    store: RasterStore,
    product_id: int,
    *,
    aoi: str,
    run: lineage.RunContext,
    last_try: bool,
    label_cache: LabelCache | None = None,
    lease: LeaseTerms | None = None,
) -> ExtractOutcome:
    """Extract one claimed product and record its new status.

    The try holds the claim's lease while it works (:class:`~cbm_tasks.pipeline.lease.LeaseKeeper`):
    a retry of a try whose worker died takes the product again once that lease has run out.

    Args:
        conn: CbM database (idle, not in a transaction).
        store: where the band files are.
        product_id: the claimed product.
        aoi: the AOI it was claimed for.
        run: lineage of this try (written to ``cbm.pipeline_run`` by the extraction); its
            ``<dag_id>/<run_id>`` is the claim's owner.
        last_try: no retry follows a failure of this call (Airflow's last try).
        label_cache: label rasters shared with the other tasks of the worker (same grid and
            parcel-set version: S2 tiles come back every few days); None rasterises anew.
        lease: lease, heartbeat and wait of the claim; None = :class:`LeaseTerms` defaults.

    Raises:
        BadInputError: the product cannot be extracted (it is marked ``failed`` first).
        ClaimLostError: the product is no longer this run's (taken over, finished or reset); nothing
            is recorded for it.
        TransientError: may pass; the claim is kept for the next try, or released on the last.
    """
    with LeaseKeeper(conn, product_id, aoi=aoi, run=run, terms=lease) as keeper:
        outcome = _extract_leased(conn, store, product_id, aoi=aoi, run=run, last_try=last_try,
                                  label_cache=label_cache, keeper=keeper)
    return outcome


def _extract_leased(conn: psycopg.Connection, store: RasterStore, product_id: int, *, aoi: str,
                    run: lineage.RunContext, last_try: bool, label_cache: LabelCache | None,
                    keeper: LeaseKeeper) -> ExtractOutcome:
    try:
        year = parcel_year(conn, product_id, aoi=aoi)
        if year is None:
            registry.mark_done(conn, product_id, aoi=aoi, status=ProductStatus.SKIPPED)
            log.warning("skipped product_id=%d aoi=%s: no parcel set for its season", product_id, aoi)
            return ExtractOutcome(aoi=aoi, product_id=product_id, status=ProductStatus.SKIPPED.value, n_parcels=0,
                                  n_rows=0, seconds=0.0)
        # complete: an image queued again after a re-import gets its new and changed parcels only
        result = extract.extract_product(conn, store, product_id, aoi=aoi, year=year, run=run,
                                         label_cache=label_cache, complete=True)
    except BadInputError as err:
        registry.mark_failed(conn, product_id, aoi=aoi, error=f"{type(err).__name__}: {err}", permanent=True)
        raise
    except BaseException as err:
        # Anything else may pass on a retry: keep the claim unless no retry follows. BaseException
        # because Airflow's execution timeout is one: without this, an image whose last try timed
        # out would stay 'extracting' until its claim goes stale.
        if last_try and not keeper.lost:
            release_after_failure(conn, product_id, aoi=aoi, error=f"{type(err).__name__}: {err}")
        raise
    if keeper.lost:
        # another try took the product over while this one ran: its rows replace these (one
        # transaction per image), and it records the outcome
        raise ClaimLostError(f"product {product_id} (AOI {aoi!r}): the lease of {keeper.holder} was taken over "
                             "during the extraction; the new holder records the result")
    status = (ProductStatus.EXTRACTED if result.n_parcels > 0 else ProductStatus.SKIPPED).value
    registry.mark_done(conn, product_id, aoi=aoi, status=status)
    if status == ProductStatus.SKIPPED:
        log.warning("skipped product_id=%d aoi=%s: no parcel with a valid pixel in the image", product_id, aoi)
    return ExtractOutcome(aoi=aoi, product_id=product_id, status=status, n_parcels=result.n_parcels,
                          n_rows=result.n_rows, seconds=round(result.seconds, 3), warning=result.warning)


def aoi_summary(conn: psycopg.Connection, aoi: str) -> AoiSummary:
    """Return products per status and the time-series rows stored for *aoi* (all its parcel sets).

    Raises:
        NotFoundError: no such AOI.
    """
    with conn.transaction():
        products = registry.status_counts(conn, aoi=aoi)
        row = conn.execute(
            "SELECT count(e.product_id), coalesce(sum(e.n_rows), 0), "
            "  (SELECT coalesce(sum(s2.n_parcels), 0) FROM cbm.parcel_set s2 WHERE s2.aoi_id = %(aoi_id)s), "
            "  (SELECT count(*) FROM cbm.parcel_obs o JOIN cbm.parcel_set s3 USING (parcel_set_id) "
            "   WHERE s3.aoi_id = %(aoi_id)s) "
            "FROM cbm.parcel_set s JOIN cbm.extraction e USING (parcel_set_id) WHERE s.aoi_id = %(aoi_id)s",
            {"aoi_id": aoi_id(conn, aoi)},
        ).fetchone()
    if row is None:  # an aggregate without GROUP BY always returns one row
        raise NotFoundError(f"AOI {aoi!r}: the summary query returned no row")
    return AoiSummary(aoi=aoi, products=products, images_extracted=int(row[0]), stats_rows=int(row[1]),
                      parcels=int(row[2]), parcel_obs_rows=int(row[3]))


_CLAIMED_SIZES = """
WITH claimed AS (SELECT * FROM unnest(%(aois)s::text[], %(ids)s::integer[]) AS c(aoi, product_id)),
extents AS (
    SELECT a.name AS aoi, ST_Union(s.extent) AS extent
    FROM cbm.aoi a JOIN cbm.parcel_set s USING (aoi_id)
    WHERE a.name = ANY(%(aois)s::text[]) GROUP BY a.name
)
SELECT c.aoi, c.product_id, p.acquired_at, p.product_type, p.tile, p.relative_orbit,
       ST_Area(geography(CASE WHEN e.extent IS NULL THEN p.footprint WHEN p.footprint IS NULL THEN e.extent
                              ELSE ST_Intersection(p.footprint, e.extent) END)),
       p.attributes -> 'bands'
FROM claimed c JOIN cbm.product p USING (product_id) LEFT JOIN extents e USING (aoi)
"""


def claim_batches(
    conn: psycopg.Connection,
    *,
    aois: Sequence[str],
    worker: str,
    limit: int | None = None,
    force_product_id: int | None = None,
    target_megapixels: float = TARGET_MEGAPIXELS,
) -> list[ExtractBatch]:
    """Claim the ``ready`` products of *aois* (:func:`claim_ready`) and group them into batches.

    Each batch carries about *target_megapixels* of work (``pipeline.batches.plan_batches``):
    the pixels of the footprint inside the AOI's parcel extent, plus a fixed cost per image.

    Args:
        conn: CbM database.
        aois: AOI names, in the order they are served.
        worker: who claims (``<dag_id>/<run_id>``); each batch records it as ``claimed_by``.
        limit: at most this many products in all; None = up to MAX_CLAIM.
        force_product_id: as for :func:`claim_ready` (force the re-extraction of one image).
        target_megapixels: work per batch (one mapped task); 0 = one image per batch.

    Raises:
        As :func:`claim_ready`; ConfigError for a negative target.
    """
    if not 0 <= target_megapixels < float("inf"):
        raise ConfigError(f"target_megapixels must be >= 0 and finite, got {target_megapixels}")
    claimed = claim_ready(conn, aois=aois, worker=worker, limit=limit, force_product_id=force_product_id)
    with conn.transaction():
        rows = conn.execute(_CLAIMED_SIZES, {"aois": [aoi for aoi, _ in claimed],
                                             "ids": [product_id for _, product_id in claimed]}).fetchall()
    images = [sized_image(str(aoi), int(product_id), acquired_at, product_type=str(product_type), tile=tile,
                          relative_orbit=relative_orbit, area_m2=None if area is None else float(area), bands=bands)
              for aoi, product_id, acquired_at, product_type, tile, relative_orbit, area, bands in rows]
    batches = plan_batches(images, claimed_by=worker, target_megapixels=target_megapixels)
    log.info("planned aois=%s images=%d batches=%d target_megapixels=%.1f largest_batch=%d", ",".join(aois),
             len(images), len(batches), target_megapixels, max((len(b.product_ids) for b in batches), default=0))
    return batches
