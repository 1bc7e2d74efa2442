"""The catalogue in the database: product records and their work state per AOI.

A product is inserted once (unique ``uid``) and gets one status row per AOI it covers:

    new -> processing -> ready -> extracting -> extracted
                                             -> failed   (after max_attempts, or bad input)
                                             -> skipped  (nothing to extract, e.g. no parcel inside)
    new -> processing -> processed               (raw Sentinel-1: its CARD jobs are planned)

S2 L2A and ready-made CARD products enter as ``ready``; raw Sentinel-1 products enter as
``new`` and become ``ready`` once their CARD products exist. Workers take work with
:func:`claim`, which uses ``FOR UPDATE SKIP LOCKED`` so that two workers never take the same
image. A claim is a lease (``lease_until``): it starts as long as ``stale_after`` (the product
may wait in its run's queue); the task working on the product takes it with
:func:`take_lease` and keeps it short and renewed (:func:`renew_lease`) while it works, so the
product of a dead worker is free again within a minute (ARCHITECTURE.md, "Claims and leases").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any

import psycopg

from cbm_tasks.aoi import aoi_id, ensure_aoi
from cbm_tasks.catalogue.product import CARD_TYPES, Product
from cbm_tasks.errors import ClaimLostError, ProductNotFoundError, TransientError

__all__ = [
    "STATUSES",
    "ProductStatus",
    "claim",
    "get_product",
    "initial_status",
    "mark_done",
    "mark_failed",
    "register",
    "release_lease",
    "renew_claims",
    "renew_lease",
    "reset",
    "status_counts",
    "take_lease",
]

log = logging.getLogger(__name__)



class ProductStatus(StrEnum):
    """The work state of a product for one AOI; the values are those stored in ``cbm.product_status.status``."""

    NEW = "new"  # found, needs processing first (raw Sentinel-1 -> CARD)
    PROCESSING = "processing"  # CARD production under way
    READY = "ready"  # can be extracted
    EXTRACTING = "extracting"  # claimed by an extraction run
    EXTRACTED = "extracted"  # its per-parcel rows are written
    FAILED = "failed"  # bad input, or out of attempts
    SKIPPED = "skipped"  # nothing to extract (no parcel inside, no parcel set for its season)
    PROCESSED = "processed"  # raw Sentinel-1 whose CARD jobs are planned (they carry its data on)


STATUSES = tuple(status.value for status in ProductStatus)


def _checked(status: str) -> str:
    """Return *status* as stored in the database; ValueError names the valid ones."""
    if status not in STATUSES:
        raise ValueError(f"unknown product status {status!r}; valid: {', '.join(STATUSES)}")
    return ProductStatus(status).value
_READY_TYPES = ("S2MSI2A", *CARD_TYPES)


def initial_status(product_type: str) -> str:
    """Return the status a newly found product starts in: ``ready`` unless it needs processing."""
    return ProductStatus.READY.value if product_type in _READY_TYPES else ProductStatus.NEW.value


_INSERT_PRODUCT = """
INSERT INTO cbm.product (uid, name, catalogue, collection, product_type, platform, acquired_at,
                         relative_orbit, orbit_direction, tile, processing_baseline, footprint,
                         location, checksum, size_bytes, attributes)
VALUES (%(uid)s, %(name)s, %(catalogue)s, %(collection)s, %(product_type)s, %(platform)s, %(acquired_at)s,
        %(relative_orbit)s, %(orbit_direction)s, %(tile)s, %(processing_baseline)s,
        ST_Multi(ST_GeomFromText(%(footprint_wkt)s, 4326)),
        %(location)s, %(checksum)s, %(size_bytes)s, %(attributes)s)
ON CONFLICT (uid) DO NOTHING
RETURNING product_id
"""


def _product_params(product: Product) -> dict[str, Any]:
    return {
        "uid": product.uid,
        "name": product.name,
        "catalogue": product.catalogue,
        "collection": product.collection,
        "product_type": product.product_type,
        "platform": product.platform,
        "acquired_at": product.acquired_at,
        "relative_orbit": product.relative_orbit,
        "orbit_direction": product.orbit_direction,
        "tile": product.tile,
        "processing_baseline": product.processing_baseline,
        "footprint_wkt": product.footprint_wkt,
        "location": product.location,
        "checksum": product.checksum,
        "size_bytes": product.size_bytes,
        "attributes": json.dumps(product.attributes, sort_keys=True, default=str),
    }


def register(conn: psycopg.Connection, products: Iterable[Product], *, aoi: str,
             status: str | None = None) -> list[int]:
    """Insert products and their status rows for *aoi*; return the ids new to this AOI.

    Idempotent: a product already known by ``uid`` is not inserted again (its record is
    kept as first seen), and a product already registered for the AOI keeps its status.
    All rows go in one transaction. New status rows start in *status*, or by default in
    :func:`initial_status` (planned CARD jobs start ``new``, found CARD products ``ready``).
    """
    forced = None if status is None else _checked(status)
    new_ids: list[int] = []
    n_seen = 0
    with conn.transaction():
        target_aoi = ensure_aoi(conn, aoi)
        for product in products:
            n_seen += 1
            # look up first: INSERT ... ON CONFLICT draws an id even for a product seen in every poll
            row = conn.execute("SELECT product_id FROM cbm.product WHERE uid = %s", (product.uid,)).fetchone()
            if row is None:
                row = conn.execute(_INSERT_PRODUCT, _product_params(product)).fetchone()
            if row is None:  # inserted by a concurrent transaction meanwhile
                row = conn.execute("SELECT product_id FROM cbm.product WHERE uid = %s", (product.uid,)).fetchone()
            if row is None:  # neither inserted nor there: a concurrent transaction deleted it
                raise TransientError(f"product {product.uid}: deleted by another transaction while registering")
            product_id = int(row[0])
            status_row = conn.execute(
                "INSERT INTO cbm.product_status (product_id, aoi_id, status) VALUES (%s, %s, %s) "
                "ON CONFLICT (product_id, aoi_id) DO NOTHING RETURNING product_id",
                (product_id, target_aoi, forced or initial_status(product.product_type)),
            ).fetchone()
            if status_row is not None:
                new_ids.append(product_id)
    log.info("registered aoi=%s products=%d new=%d", aoi, n_seen, len(new_ids))
    return new_ids


_CLAIM = """
WITH picked AS (
    SELECT s.product_id
    FROM cbm.product_status s
    JOIN cbm.product p ON p.product_id = s.product_id
    WHERE s.aoi_id = %(aoi_id)s
      AND (%(types)s::text[] IS NULL OR p.product_type = ANY(%(types)s::text[]))
      AND (s.status = %(from)s
           OR (s.status = %(to)s AND coalesce(s.lease_until, s.claimed_at + %(stale_after)s::interval) < now()))
    ORDER BY p.acquired_at, s.product_id
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE cbm.product_status s
SET status = %(to)s, claimed_by = %(worker)s, claimed_at = now(), attempts = s.attempts + 1, updated_at = now(),
    lease_until = now() + %(stale_after)s::interval, leased_by = NULL
FROM picked
WHERE s.product_id = picked.product_id AND s.aoi_id = %(aoi_id)s
RETURNING s.product_id
"""


def claim(
    conn: psycopg.Connection,
    *,
    aoi: str,
    worker: str,
    status: str = ProductStatus.READY,
    to: str = ProductStatus.EXTRACTING,
    limit: int = 100,
    stale_after: timedelta = timedelta(hours=2),
    product_types: Sequence[str] | None = None,
) -> list[int]:
    """Claim up to *limit* products of *aoi* in *status*, moving them to *to*; return their ids.

    Two concurrent claimers never get the same product (``SKIP LOCKED``). The claim's lease
    is *stale_after*: a product left in *to* whose lease ran out (never started within
    *stale_after*, or its worker stopped renewing the short lease of :func:`take_lease`) is
    claimed again. Each claim counts as an attempt. Oldest acquisitions first. *product_types*
    limits the claim to those types (raw Sentinel-1 and CARD jobs share the status ``new``).
    """
    status, to = _checked(status), _checked(to)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    with conn.transaction():
        rows = conn.execute(
            _CLAIM,
            {"aoi_id": aoi_id(conn, aoi), "from": status, "to": to, "worker": worker, "limit": limit,
             "stale_after": stale_after, "types": None if product_types is None else list(product_types)},
        ).fetchall()
    ids = sorted(int(r[0]) for r in rows)
    log.info("claimed aoi=%s worker=%s status=%s to=%s products=%d", aoi, worker, status, to, len(ids))
    return ids


_TAKE_LEASE = """
UPDATE cbm.product_status
SET leased_by = %(holder)s, lease_until = now() + %(lease)s::interval, updated_at = now()
WHERE product_id = %(product_id)s AND aoi_id = %(aoi_id)s AND status = %(status)s
  AND ((claimed_by = %(owner)s AND (leased_by IS NULL OR leased_by = %(holder)s)) OR lease_until < now())
RETURNING claimed_by
"""


def take_lease(conn: psycopg.Connection, product_id: int, *, aoi: str, owner: str, holder: str, lease: timedelta,
               status: str = ProductStatus.EXTRACTING) -> bool:
    """Take the claim of a product for the task try *holder*, for *lease*; return False while another holds it.

    The claim is taken when *owner* (the run that claimed it, ``claimed_by``) holds it and no other
    try works on it yet, when *holder* holds it already, or when its lease ran out (whoever held it:
    the claim passes to *owner*, which counts as an attempt). False means another try of *owner*
    holds a live lease: wait for it to end or run out.

    Raises:
        ClaimLostError: the product is no longer claimed by *owner* with a live lease of another
            run, or is not in *status* (it was finished, released or reset meanwhile); the message
            says by whom and in which state.
    """
    status = _checked(status)
    with conn.transaction():
        params = {"product_id": product_id, "aoi_id": aoi_id(conn, aoi), "status": status, "owner": owner,
                  "holder": holder, "lease": lease}
        row = conn.execute(_TAKE_LEASE, params).fetchone()
        if row is not None:
            if row[0] != owner:  # a lapsed claim of another run: this run takes it over
                conn.execute("UPDATE cbm.product_status SET claimed_by = %(owner)s, claimed_at = now(), "
                             "attempts = attempts + 1 WHERE product_id = %(product_id)s AND aoi_id = %(aoi_id)s",
                             params)
            return True
        state = conn.execute(
            "SELECT status, claimed_by, leased_by, lease_until > now() FROM cbm.product_status "
            "WHERE product_id = %(product_id)s AND aoi_id = %(aoi_id)s", params).fetchone()
    if state is None:
        raise ProductNotFoundError(f"product {product_id} is not registered for AOI {aoi!r}")
    current, claimed_by, leased_by, live = state
    if current == status and claimed_by == owner and live:
        return False
    raise ClaimLostError(f"product {product_id} (AOI {aoi!r}) is no longer {owner}'s to work on: it is "
                         f"{current!r}, claimed by {claimed_by!r}, leased by {leased_by!r}")


def renew_lease(conn: psycopg.Connection, product_id: int, *, aoi: str, holder: str, lease: timedelta,
                status: str = ProductStatus.EXTRACTING) -> bool:
    """Extend the lease *holder* has on a product to *lease* from now; return False when it holds it no more."""
    return _change_lease(conn, product_id, aoi=aoi, holder=holder, status=status, keep_holder=True, until=lease)


def release_lease(conn: psycopg.Connection, product_id: int, *, aoi: str, holder: str,
                  hold: timedelta = timedelta(hours=2), status: str = ProductStatus.EXTRACTING) -> bool:
    """Give back the lease *holder* has on a product, keeping the claim of its run for *hold*.

    A try that fails with an error it will be retried for (it is alive and knows it stops) frees
    the product at once for its retry, instead of making the retry wait for the lease to run out.
    Returns False when *holder* held no lease on it any more (nothing changed).
    """
    return _change_lease(conn, product_id, aoi=aoi, holder=holder, status=status, keep_holder=False, until=hold)


def _change_lease(conn: psycopg.Connection, product_id: int, *, aoi: str, holder: str, status: str,
                  keep_holder: bool, until: timedelta) -> bool:
    # only while *holder* still holds the lease: a takeover by another try is never undone
    with conn.transaction():
        row = conn.execute(
            "UPDATE cbm.product_status SET lease_until = now() + %(until)s::interval, "
            "leased_by = CASE WHEN %(keep)s THEN leased_by END "
            "WHERE product_id = %(product_id)s AND aoi_id = %(aoi_id)s AND status = %(status)s "
            "AND leased_by = %(holder)s RETURNING product_id",
            {"product_id": product_id, "aoi_id": aoi_id(conn, aoi), "status": _checked(status), "holder": holder,
             "until": until, "keep": keep_holder},
        ).fetchone()
    return row is not None


def _update_status(conn: psycopg.Connection, product_id: int, aoi: str, query: str, params: dict[str, Any]) -> None:
    with conn.transaction():
        params = {**params, "product_id": product_id, "aoi_id": aoi_id(conn, aoi)}
        if conn.execute(query, params).rowcount != 1:
            raise ProductNotFoundError(f"product {product_id} is not registered for AOI {aoi!r}")


def mark_done(conn: psycopg.Connection, product_id: int, *, aoi: str, status: str = ProductStatus.EXTRACTED) -> None:
    """Set the final *status* (``extracted``, ``skipped`` or ``ready`` after processing) and release the claim."""
    status = _checked(status)
    _update_status(
        conn, product_id, aoi,
        "UPDATE cbm.product_status SET status = %(status)s, claimed_by = NULL, claimed_at = NULL, "
        "lease_until = NULL, leased_by = NULL, "
        "last_error = NULL, updated_at = now() WHERE product_id = %(product_id)s AND aoi_id = %(aoi_id)s",
        {"status": status},
    )


def mark_failed(
    conn: psycopg.Connection,
    product_id: int,
    *,
    aoi: str,
    error: str,
    retry_status: str = ProductStatus.READY,
    max_attempts: int = 3,
    permanent: bool = False,
) -> str:
    """Record a failed attempt; return the new status.

    The product goes back to *retry_status* for another claim, or to ``failed`` once it has
    been attempted *max_attempts* times or when *permanent* (bad input: retrying cannot help).
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE cbm.product_status SET "
            "status = CASE WHEN %(permanent)s OR attempts >= %(max_attempts)s THEN %(failed)s ELSE %(retry)s END, "
            "last_error = %(error)s, claimed_by = NULL, claimed_at = NULL, lease_until = NULL, leased_by = NULL, "
            "updated_at = now() "
            "WHERE product_id = %(product_id)s AND aoi_id = %(aoi_id)s RETURNING status",
            {"permanent": permanent, "max_attempts": max_attempts, "retry": _checked(retry_status),
             "failed": ProductStatus.FAILED.value, "error": error[-4000:],
             "product_id": product_id, "aoi_id": aoi_id(conn, aoi)},
        ).fetchone()
    if row is None:
        raise ProductNotFoundError(f"product {product_id} is not registered for AOI {aoi!r}")
    log.warning("failed product=%s aoi=%s status=%s error=%s", product_id, aoi, row[0], error[-500:])
    return str(row[0])


def reset(conn: psycopg.Connection, product_id: int, *, aoi: str, status: str = ProductStatus.READY) -> None:
    """Put a product back to *status* with no attempts, e.g. to force its re-extraction."""
    status = _checked(status)
    _update_status(
        conn, product_id, aoi,
        "UPDATE cbm.product_status SET status = %(status)s, attempts = 0, last_error = NULL, claimed_by = NULL, "
        "claimed_at = NULL, lease_until = NULL, leased_by = NULL, updated_at = now() "
        "WHERE product_id = %(product_id)s AND aoi_id = %(aoi_id)s",
        {"status": status},
    )


def renew_claims(conn: psycopg.Connection, product_ids: Sequence[int], *, aoi: str, worker: str,
                 status: str = ProductStatus.EXTRACTING, hold: timedelta = timedelta(hours=2)) -> list[int]:
    """Renew the claims *worker* still holds on *product_ids* of *aoi*; return those ids, ascending.

    A held claim is in *status* with ``claimed_by = worker``; renewing it resets ``claimed_at`` and,
    for an image no task try works on yet (no ``leased_by``), holds it for *hold* from now, so that
    a batch of images extracted one after the other never goes stale (:func:`claim`'s
    ``stale_after``) while it waits its turn. An image a try works on keeps that try's short lease
    (:func:`take_lease`): a dead try's image is taken again when it runs out. The ids not returned
    were finished (extracted, skipped, failed, released) or taken over by another worker after
    their claim went stale: they must not be worked on.
    """
    with conn.transaction():
        rows = conn.execute(
            "UPDATE cbm.product_status SET claimed_at = now(), "
            "lease_until = CASE WHEN leased_by IS NULL THEN now() + %(hold)s::interval ELSE lease_until END "
            "WHERE aoi_id = %(aoi_id)s AND product_id = ANY(%(ids)s) AND status = %(status)s "
            "AND claimed_by = %(worker)s RETURNING product_id",
            {"aoi_id": aoi_id(conn, aoi), "ids": list(product_ids), "status": _checked(status), "worker": worker,
             "hold": hold},
        ).fetchall()
    return sorted(int(r[0]) for r in rows)


def status_counts(conn: psycopg.Connection, *, aoi: str) -> dict[str, int]:
    """Return the number of products per status for *aoi*."""
    rows = conn.execute(
        "SELECT status, count(*) FROM cbm.product_status WHERE aoi_id = %s GROUP BY status",
        (aoi_id(conn, aoi),),
    ).fetchall()
    return {str(status): int(n) for status, n in rows}


def get_product(conn: psycopg.Connection, product_id: int) -> Product:
    """Return the catalogue record of *product_id*.

    Raises:
        ProductNotFoundError: no such product.
    """
    row = conn.execute(
        "SELECT uid, name, catalogue, collection, product_type, acquired_at, location, platform, relative_orbit, "
        "orbit_direction, tile, processing_baseline, ST_AsText(footprint), checksum, size_bytes, attributes "
        "FROM cbm.product WHERE product_id = %s",
        (product_id,),
    ).fetchone()
    if row is None:
        raise ProductNotFoundError(f"product {product_id} is not in the catalogue (cbm.product)")
    return Product(
        uid=row[0], name=row[1], catalogue=row[2], collection=row[3], product_type=row[4], acquired_at=row[5],
        location=row[6], platform=row[7], relative_orbit=row[8], orbit_direction=row[9], tile=row[10],
        processing_baseline=row[11], footprint_wkt=row[12], checksum=row[13], size_bytes=row[14],
        attributes=dict(row[15]),
    )
