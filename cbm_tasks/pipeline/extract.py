"""The units of work of the DAGs, without Airflow: each function is what one task does.

A DAG task opens the connection and the store from its Airflow connections
(``dags/cbm_conn.py``), makes one call here and returns the small value it gets back. The
state machine of the catalogue (``cbm.product_status``) is driven from here:

- :func:`poll_aoi` searches the catalogue over an AOI's parcels and registers what is new;
- :func:`claim_ready` takes ``ready`` products for one extraction run (``SKIP LOCKED``);
- :func:`extract_claimed` extracts one claimed product and records the outcome: ``extracted``,
  ``skipped`` (no parcel inside), ``failed`` at once for bad input, and back to ``ready`` (or
  ``failed`` after the last attempt) when the last Airflow try of a transient error is spent.
  Between tries the claim is kept, so no other run takes the product meanwhile; if the worker
  dies, the claim goes stale and is taken again (``registry.claim(stale_after=...)``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from cbm_tasks import lineage
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.poll import poll
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.query import KNOWN_PRODUCT_TYPES, Catalogue, SearchQuery
from cbm_tasks.errors import BadInputError, CbmError, ConfigError, NotFoundError, ProductNotFoundError
from cbm_tasks.extraction import extract
from cbm_tasks.extraction.bands import RasterStore
from cbm_tasks.extraction.label_cache import LabelCache

__all__ = [
    "DEFAULT_PRODUCT_TYPES",
    "MAX_CLAIM",
    "AoiSummary",
    "ExtractOutcome",
    "PollResult",
    "aoi_footprint_wkt",
    "aoi_summary",
    "claim_ready",
    "extract_claimed",
    "list_aois",
    "parcel_year",
    "poll_aoi",
]

log = logging.getLogger(__name__)

# Sentinel-2 L2A and Sentinel-1 GRD from the Copernicus catalogues; CARD-BS from a local
# catalogue of ready-made CARD products (the demo). A catalogue without a type finds none of it.
DEFAULT_PRODUCT_TYPES = ("S2MSI2A", "IW_GRDH_1S", "CARD-BS")
# one extraction run maps one task per product, and Airflow caps a map at 1024 ([core]
# max_map_length); what is left stays ready for the next run
MAX_CLAIM = 1000
_SEASON_START_MONTH = 8  # images from August on also serve the next year's parcels (winter crops)


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of one AOI found.

    Attributes:
        aoi: AOI name.
        found: products kept after de-duplication.
        new: products registered for the AOI now (the rest were known).
        new_ready: new products that can be extracted at once (S2 L2A, CARD).
        ready_waiting: products of the AOI in status ``ready`` after the poll (new or left over).
    """

    aoi: str
    found: int
    new: int
    new_ready: int
    ready_waiting: int

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-able dict (an XCom value)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ExtractOutcome:
    """What became of one claimed product."""

    aoi: str
    product_id: int
    status: str  # extracted or skipped
    n_parcels: int
    n_rows: int
    seconds: float

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


def list_aois(conn: psycopg.Connection) -> list[str]:
    """Return the AOIs that have at least one parcel set (the ones worth polling), by name."""
    rows = conn.execute(
        "SELECT DISTINCT a.name FROM cbm.aoi a JOIN cbm.parcel_set s USING (aoi_id) ORDER BY a.name"
    ).fetchall()
    return [str(row[0]) for row in rows]


def aoi_footprint_wkt(conn: psycopg.Connection, aoi: str) -> str:
    """Return the area to search the catalogue over: the union of the AOI's parcel-set extents (EPSG:4326).

    Raises:
        NotFoundError: the AOI has no parcel set (import parcels first).
    """
    row = conn.execute(
        "SELECT ST_AsText(ST_Union(s.extent)) FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) "
        "WHERE a.name = %s AND s.extent IS NOT NULL",
        (aoi,),
    ).fetchone()
    if row is None or row[0] is None:
        raise NotFoundError(f"AOI {aoi!r} has no parcel set with an extent; import parcels first "
                            "(cbm parcels import FILE --aoi NAME --year YEAR)")
    return str(row[0])


def poll_aoi(
    conn: psycopg.Connection,
    catalogue: Catalogue,
    *,
    aoi: str,
    start: datetime,
    end: datetime,
    product_types: Sequence[str] = DEFAULT_PRODUCT_TYPES,
    max_items: int | None = None,
) -> PollResult:
    """Search *catalogue* over the parcels of *aoi* in ``[start, end)`` and register the new products.

    Idempotent: products already registered for the AOI keep their status.

    Args:
        conn: CbM database.
        catalogue: the client (``clients.open_catalogue``).
        aoi: AOI name; its parcel sets give the search area.
        start: first sensing time, timezone-aware.
        end: end of the window (excluded), timezone-aware.
        product_types: what to search for, e.g. ``S2MSI2A``, ``IW_GRDH_1S``, ``CARD-BS``.
        max_items: cap on products read per product type; None = all.

    Raises:
        ConfigError: an unknown product type or an empty list.
        NotFoundError: the AOI has no parcel set.
        CatalogueResponseError, TransientError: from the catalogue.
    """
    unknown = [name for name in product_types if name not in KNOWN_PRODUCT_TYPES]
    if unknown or not product_types:
        raise ConfigError(f"product types must be among {', '.join(KNOWN_PRODUCT_TYPES)}; got {list(product_types)}")
    area = aoi_footprint_wkt(conn, aoi)
    found: list[Product] = []
    for product_type in product_types:
        query = SearchQuery(collection=KNOWN_PRODUCT_TYPES[product_type], product_type=product_type,
                            aoi_wkt=area, start=start, end=end)
        found.extend(poll(catalogue, query, max_items=max_items))
    new_ids = registry.register(conn, found, aoi=aoi)
    with conn.transaction():
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE s.product_id = ANY(%(new)s::integer[])), count(*) "
            "FROM cbm.product_status s JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %(aoi)s AND s.status = 'ready'",
            {"new": new_ids, "aoi": aoi},
        ).fetchone()
    assert row is not None  # an aggregate always returns a row
    result = PollResult(aoi=aoi, found=len(found), new=len(new_ids), new_ready=int(row[0]), ready_waiting=int(row[1]))
    log.info("poll aoi=%s window=%s..%s found=%d new=%d new_ready=%d ready_waiting=%d", aoi, start.date(),
             end.date(), result.found, result.new, result.new_ready, result.ready_waiting)
    return result


def claim_ready(
    conn: psycopg.Connection,
    *,
    aois: Sequence[str],
    worker: str,
    limit: int | None = None,
    force_product_id: int | None = None,
) -> list[tuple[str, int]]:
    """Claim the ``ready`` products of *aois* for one extraction run; return ``(aoi, product_id)`` pairs.

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


def parcel_year(conn: psycopg.Connection, product_id: int, *, aoi: str) -> int | None:
    """Return the year of the parcel set an image is extracted for, or None when the AOI has none for it.

    The set of the acquisition year; for an image of August to December without one, the set
    of the next year: autumn images show the sowing of that season's winter crops.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT extract(year FROM p.acquired_at AT TIME ZONE 'UTC')::int, "
            "       extract(month FROM p.acquired_at AT TIME ZONE 'UTC')::int, "
            "       array(SELECT s.year::int FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %s) "
            "FROM cbm.product p WHERE p.product_id = %s",
            (aoi, product_id),
        ).fetchone()
    if row is None:
        raise ProductNotFoundError(f"product {product_id} is not in the catalogue (cbm.product)")
    year, month, years = int(row[0]), int(row[1]), set(row[2])
    if year in years:
        return year
    if month >= _SEASON_START_MONTH and year + 1 in years:
        return year + 1
    return None


def _release_after_failure(conn: psycopg.Connection, product_id: int, *, aoi: str, error: str) -> None:
    """Record a failed last try; a database that fails too must not hide the original error."""
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
) -> ExtractOutcome:
    """Extract one claimed product and record its new status.

    Args:
        conn: CbM database (idle, not in a transaction).
        store: where the band files are.
        product_id: the claimed product.
        aoi: the AOI it was claimed for.
        run: lineage of this try (written to ``cbm.pipeline_run`` by the extraction).
        last_try: no retry follows a failure of this call (Airflow's last try).
        label_cache: label rasters shared with the other tasks of the worker (same grid and
            parcel-set version: S2 tiles come back every few days); None rasterises anew.

    Raises:
        BadInputError: the product cannot be extracted (it is marked ``failed`` first).
        TransientError: may pass; the claim is kept for the next try, or released on the last.
    """
    try:
        year = parcel_year(conn, product_id, aoi=aoi)
        if year is None:
            registry.mark_done(conn, product_id, aoi=aoi, status="skipped")
            log.warning("skipped product_id=%d aoi=%s: no parcel set for its season", product_id, aoi)
            return ExtractOutcome(aoi=aoi, product_id=product_id, status="skipped", n_parcels=0, n_rows=0,
                                  seconds=0.0)
        result = extract.extract_product(conn, store, product_id, aoi=aoi, year=year, run=run,
                                         label_cache=label_cache)
    except BadInputError as err:
        registry.mark_failed(conn, product_id, aoi=aoi, error=f"{type(err).__name__}: {err}", permanent=True)
        raise
    except BaseException as err:
        # Anything else may pass on a retry: keep the claim unless no retry follows. BaseException
        # because Airflow's execution timeout is one: without this, an image whose last try timed
        # out would stay 'extracting' until its claim goes stale.
        if last_try:
            _release_after_failure(conn, product_id, aoi=aoi, error=f"{type(err).__name__}: {err}")
        raise
    status = "extracted" if result.n_parcels > 0 else "skipped"
    registry.mark_done(conn, product_id, aoi=aoi, status=status)
    if status == "skipped":
        log.warning("skipped product_id=%d aoi=%s: no parcel with a valid pixel in the image", product_id, aoi)
    return ExtractOutcome(aoi=aoi, product_id=product_id, status=status, n_parcels=result.n_parcels,
                          n_rows=result.n_rows, seconds=round(result.seconds, 3))


def aoi_summary(conn: psycopg.Connection, aoi: str) -> AoiSummary:
    """Return products per status and the time-series rows stored for *aoi* (all its parcel sets)."""
    with conn.transaction():
        products = registry.status_counts(conn, aoi=aoi)
        row = conn.execute(
            "SELECT count(e.product_id), coalesce(sum(e.n_rows), 0), "
            "  (SELECT coalesce(sum(s2.n_parcels), 0) FROM cbm.parcel_set s2 WHERE s2.aoi_id = a.aoi_id), "
            "  (SELECT count(*) FROM cbm.parcel_obs o JOIN cbm.parcel_set s3 USING (parcel_set_id) "
            "   WHERE s3.aoi_id = a.aoi_id) "
            "FROM cbm.aoi a LEFT JOIN cbm.parcel_set s ON s.aoi_id = a.aoi_id "
            "LEFT JOIN cbm.extraction e ON e.parcel_set_id = s.parcel_set_id "
            "WHERE a.name = %s GROUP BY a.aoi_id",
            (aoi,),
        ).fetchone()
    assert row is not None  # status_counts found the AOI
    return AoiSummary(aoi=aoi, products=products, images_extracted=int(row[0]), stats_rows=int(row[1]),
                      parcels=int(row[2]), parcel_obs_rows=int(row[3]))
