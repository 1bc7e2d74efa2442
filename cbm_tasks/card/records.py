"""CARD products in the catalogue: planned jobs, claims, and the product made ready.

A planned job is a ``cbm.product`` row (catalogue ``card``, uid = the job key, ``derived_from``
= its sources' ids, the job in ``attributes["job"]``) with a status row for its AOI:

    new -> processing -> ready -> extracting -> extracted        (cbm_extract takes it from ready)
               +-> new (a retry may help) / failed (bad input, or attempts spent; reason in last_error)

The row exists from planning on so that claims, retries and failure reasons work as for
extraction; the file at ``location`` is written before the row turns ``ready``, and a row is
never ``ready`` without its complete file. Raw S1 products whose jobs are planned go to
``processed`` (migration 014). Two planners never plan twice: the key is unique (``ON CONFLICT``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg

from cbm_tasks.card.backend import CardOutput
from cbm_tasks.card.jobs import GRD_TYPES, SLC_TYPES, CardJob
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import CARD_TYPES, Product
from cbm_tasks.errors import ProductNotFoundError

__all__ = [
    "RAW_TYPES",
    "add_run_params",
    "card_location",
    "claim_jobs",
    "job_of",
    "known_keys",
    "mark_processed",
    "mark_ready",
    "raw_products",
    "register_jobs",
]

log = logging.getLogger(__name__)

RAW_TYPES = (*GRD_TYPES, *SLC_TYPES)


def card_location(job: CardJob, *, prefix: str = "card") -> str:
    """Return the store key of a job's product: ``<prefix>/<aoi>/<type>/<year>/<type>_<sources>.tif``.

    The file name keeps the reference product's name and the later products' start times, so
    it is unique per key and readable in a bucket listing.
    """
    reference, *later = job.source_names
    stamps = "".join(f"_{name.split('_')[5]}" for name in later if name.count("_") >= 5)
    aoi = re.sub(r"[^A-Za-z0-9_.-]", "_", job.aoi)
    return f"{prefix.rstrip('/')}/{aoi}/{job.card_type}/{job.acquired_at:%Y}/{job.card_type}_{reference}{stamps}.tif"


def raw_products(
    conn: psycopg.Connection, *, aoi: str, statuses: Sequence[str] | None = None
) -> list[tuple[int, Product]]:
    """Return ``(product_id, record)`` of the raw S1 products (GRD, SLC) of *aoi*, optionally only in *statuses*."""
    rows = conn.execute(
        "SELECT p.product_id FROM cbm.product p JOIN cbm.product_status s USING (product_id) "
        "JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %s AND p.product_type = ANY(%s) "
        "AND (%s::text[] IS NULL OR s.status = ANY(%s::text[])) ORDER BY p.acquired_at, p.product_id",
        (aoi, list(RAW_TYPES), None if statuses is None else list(statuses),
         None if statuses is None else list(statuses)),
    ).fetchall()
    return [(int(row[0]), registry.get_product(conn, int(row[0]))) for row in rows]


def known_keys(conn: psycopg.Connection, *, aoi: str) -> set[str]:
    """Return the keys (uids) of the CARD products planned or made for *aoi*."""
    rows = conn.execute(
        "SELECT p.uid FROM cbm.product p JOIN cbm.product_status s USING (product_id) JOIN cbm.aoi a USING (aoi_id) "
        "WHERE a.name = %s AND p.catalogue = 'card' AND p.product_type = ANY(%s)",
        (aoi, list(CARD_TYPES)),
    ).fetchall()
    return {str(row[0]) for row in rows}


_INSERT_JOB = """
INSERT INTO cbm.product (uid, name, catalogue, collection, product_type, platform, acquired_at, relative_orbit,
                         orbit_direction, footprint, location, derived_from, attributes)
VALUES (%(uid)s, %(name)s, 'card', 'SENTINEL-1', %(product_type)s, %(platform)s, %(acquired_at)s,
        %(relative_orbit)s, %(orbit_direction)s,
        ST_Multi(ST_CollectionExtract(ST_GeomFromText(%(footprint)s, 4326), 3)),
        %(location)s, (SELECT array_agg(product_id ORDER BY array_position(%(sources)s::text[], uid))
                       FROM cbm.product WHERE uid = ANY(%(sources)s::text[])), %(attributes)s)
ON CONFLICT (uid) DO NOTHING
"""


def register_jobs(conn: psycopg.Connection, jobs: Sequence[CardJob], *, prefix: str = "card") -> list[int]:
    """Insert planned jobs as ``new`` CARD products of their AOI; return the product ids new to their AOI.

    Idempotent: a key already in the catalogue keeps its row and status. One transaction.
    """
    new_ids: list[int] = []
    with conn.transaction():
        for job in jobs:
            conn.execute(_INSERT_JOB, {
                "uid": job.key, "name": job.key.replace(":", "_"), "product_type": job.card_type,
                "platform": job.platform, "acquired_at": job.acquired_at, "relative_orbit": job.relative_orbit,
                "orbit_direction": job.orbit_direction, "footprint": job.footprint_wkt,
                "location": card_location(job, prefix=prefix), "sources": list(job.sources),
                "attributes": json.dumps({"source_products": list(job.source_names), "aoi": job.aoi,
                                          "job": job.as_dict()}, sort_keys=True),
            })  # fmt: skip
            row = conn.execute(
                "INSERT INTO cbm.product_status (product_id, aoi_id, status) "
                "SELECT p.product_id, a.aoi_id, 'new' FROM cbm.product p, cbm.aoi a WHERE p.uid = %s AND a.name = %s "
                "ON CONFLICT (product_id, aoi_id) DO NOTHING RETURNING product_id",
                (job.key, job.aoi),
            ).fetchone()
            if row is not None:
                new_ids.append(int(row[0]))
    log.info("registered card jobs=%d new=%d", len(jobs), len(new_ids))
    return new_ids


def mark_processed(conn: psycopg.Connection, product_ids: Sequence[int], *, aoi: str) -> int:
    """Move raw products of *aoi* from ``new`` to ``processed`` (their jobs are planned); return how many."""
    with conn.transaction():
        moved = conn.execute(
            "UPDATE cbm.product_status s SET status = 'processed', updated_at = now() FROM cbm.aoi a "
            "WHERE s.aoi_id = a.aoi_id AND a.name = %s AND s.product_id = ANY(%s) AND s.status = 'new'",
            (aoi, list(product_ids)),
        ).rowcount
    return int(moved)


_CLAIM_JOBS = """
WITH picked AS (
    SELECT s.product_id FROM cbm.product_status s JOIN cbm.product p USING (product_id)
    WHERE s.aoi_id = %(aoi_id)s AND p.catalogue = 'card' AND p.product_type = ANY(%(types)s)
      AND (s.status = 'new' OR (s.status = 'processing' AND s.claimed_at < now() - %(stale_after)s::interval))
    ORDER BY p.acquired_at, s.product_id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE cbm.product_status s
SET status = 'processing', claimed_by = %(worker)s, claimed_at = now(), attempts = s.attempts + 1, updated_at = now()
FROM picked WHERE s.product_id = picked.product_id AND s.aoi_id = %(aoi_id)s
RETURNING s.product_id
"""


def claim_jobs(
    conn: psycopg.Connection, *, aoi: str, worker: str, card_types: Sequence[str] = CARD_TYPES, limit: int = 100,
    stale_after: timedelta = timedelta(hours=6),
) -> list[int]:
    """Claim up to *limit* planned CARD jobs of *aoi* (``new`` -> ``processing``); return their product ids.

    Like extraction claims: ``SKIP LOCKED``, oldest acquisitions first, each claim counts as an
    attempt, a claim older than *stale_after* (a worker died mid-product) is taken again.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    with conn.transaction():
        rows = conn.execute(_CLAIM_JOBS, {"aoi_id": registry.aoi_id(conn, aoi), "types": list(card_types),
                                          "worker": worker, "limit": limit, "stale_after": stale_after}).fetchall()
    ids = sorted(int(row[0]) for row in rows)
    log.info("claimed card jobs aoi=%s worker=%s jobs=%d", aoi, worker, len(ids))
    return ids


def job_of(conn: psycopg.Connection, product_id: int) -> tuple[CardJob, Product]:
    """Return the job and catalogue record of a planned CARD product.

    Raises:
        ProductNotFoundError: no such product, or it is not a planned CARD product.
    """
    product = registry.get_product(conn, product_id)
    job = product.attributes.get("job")
    if product.catalogue != "card" or not isinstance(job, dict):
        raise ProductNotFoundError(f"product {product_id} ({product.name}) is not a planned CARD product")
    return CardJob.from_dict(job), product


def mark_ready(conn: psycopg.Connection, product_id: int, *, aoi: str, output: CardOutput, size_bytes: int,
               pipeline_run_id: int | None) -> None:
    """Record a finished CARD product (file already in the store) and make it ``ready``, in one transaction."""
    extra: dict[str, Any] = {"band_names": list(output.bands), "epsg": output.epsg,
                             "resolution_m": output.resolution_m, "backend": output.lineage.get("backend"),
                             "pipeline_run_id": pipeline_run_id}
    with conn.transaction():
        conn.execute(
            "UPDATE cbm.product SET size_bytes = %s, attributes = attributes || %s::jsonb "
            "WHERE product_id = %s",
            (size_bytes, json.dumps(extra, default=str), product_id),
        )
        registry.mark_done(conn, product_id, aoi=aoi, status="ready")


def add_run_params(conn: psycopg.Connection, pipeline_run_id: int, params: dict[str, Any]) -> None:
    """Add what a backend reported (version, graph, parameters, DEM, input checksums) to a run's lineage."""
    with conn.transaction():
        conn.execute("UPDATE cbm.pipeline_run SET params = params || %s::jsonb WHERE pipeline_run_id = %s",
                     (json.dumps(params, sort_keys=True, default=str), pipeline_run_id))
