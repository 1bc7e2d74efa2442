"""CARD jobs in the catalogue: their records, looked up and annotated (never their status).

A planned job is a ``cbm.product`` row (catalogue ``card``, uid = the job key, ``derived_from``
= its sources' ids, the job in ``attributes["job"]``) with a status row for its AOI; the status
is changed only by ``cbm_tasks.pipeline.card`` through the registry (ARCHITECTURE.md):

    new -> processing -> ready -> extracting -> extracted        (cbm_extract takes it from ready)
               +-> new (a retry may help) / failed (bad input, or attempts spent; reason in last_error)

The row exists from planning on, so that claims, retries and failure reasons work as for
extraction; the file at ``location`` is written before the row turns ``ready``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from cbm_tasks.card.jobs import GRD_TYPES, SLC_TYPES, CardJob
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import CARD_TYPES, Product
from cbm_tasks.errors import ProductNotFoundError

if TYPE_CHECKING:
    from cbm_tasks.card.backend import CardOutput

__all__ = [
    "RAW_TYPES",
    "add_run_params",
    "card_location",
    "job_of",
    "job_products",
    "known_keys",
    "link_sources",
    "raw_products",
    "record_output",
    "set_order",
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


def add_run_params(conn: psycopg.Connection, pipeline_run_id: int, params: dict[str, Any]) -> None:
    """Add what a backend reported (version, graph, parameters, DEM, input checksums) to a run's lineage."""
    with conn.transaction():
        conn.execute("UPDATE cbm.pipeline_run SET params = params || %s::jsonb WHERE pipeline_run_id = %s",
                     (json.dumps(params, sort_keys=True, default=str), pipeline_run_id))


def job_products(jobs: Sequence[CardJob], *, prefix: str = "card") -> list[Product]:
    """Return the catalogue records of planned jobs (registered by the pipeline with status ``new``)."""
    return [
        Product(uid=job.key, name=job.key.replace(":", "_"), catalogue="card", collection="SENTINEL-1",
                product_type=job.card_type, acquired_at=job.acquired_at, location=card_location(job, prefix=prefix),
                platform=job.platform, relative_orbit=job.relative_orbit, orbit_direction=job.orbit_direction,
                footprint_wkt=job.footprint_wkt,
                attributes={"source_products": list(job.source_names), "aoi": job.aoi, "job": job.as_dict()})
        for job in jobs
    ]


def link_sources(conn: psycopg.Connection, keys: Sequence[str]) -> None:
    """Set ``derived_from`` of the CARD products *keys* to their sources' ids, in the job's order."""
    with conn.transaction():
        conn.execute(
            "UPDATE cbm.product c SET derived_from = (SELECT array_agg(src.product_id ORDER BY ord) "
            "  FROM jsonb_array_elements_text(c.attributes->'job'->'sources') WITH ORDINALITY AS j(uid, ord) "
            "  JOIN cbm.product src ON src.uid = j.uid) "
            "WHERE c.uid = ANY(%s) AND c.catalogue = 'card' AND c.derived_from IS NULL",
            (list(keys),),
        )


def record_output(conn: psycopg.Connection, product_id: int, *, output: CardOutput, size_bytes: int,
                  pipeline_run_id: int | None) -> None:
    """Add what the backend made (bands, grid, backend, run) to the CARD product's record."""
    extra: dict[str, Any] = {"band_names": list(output.bands), "epsg": output.epsg,
                             "resolution_m": output.resolution_m, "backend": output.lineage.get("backend"),
                             "pipeline_run_id": pipeline_run_id}
    with conn.transaction():
        conn.execute("UPDATE cbm.product SET size_bytes = %s, attributes = attributes || %s::jsonb "
                     "WHERE product_id = %s", (size_bytes, json.dumps(extra, default=str), product_id))


def set_order(conn: psycopg.Connection, product_id: int, order_id: str | None) -> None:
    """Keep (or forget, with None) the on-demand order placed for a CARD job."""
    with conn.transaction():
        if order_id is None:
            conn.execute("UPDATE cbm.product SET attributes = attributes - 'odp_order' WHERE product_id = %s",
                         (product_id,))
        else:
            conn.execute("UPDATE cbm.product SET attributes = attributes || jsonb_build_object('odp_order', %s::text) "
                         "WHERE product_id = %s", (order_id, product_id))
