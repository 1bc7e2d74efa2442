"""The unit of work of the ``cbm_catalogue`` DAG: poll the catalogue over an AOI and register what is new.

New Sentinel-2 L2A and CARD products enter ``ready``; raw Sentinel-1 products enter ``new``
for the CARD processing (``cbm_tasks.catalogue.registry.initial_status``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from cbm_tasks.aoi import aoi_footprint_wkt, aoi_id
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.poll import poll
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.query import KNOWN_PRODUCT_TYPES, Catalogue, SearchQuery
from cbm_tasks.errors import ConfigError, NotFoundError

__all__ = ["DEFAULT_PRODUCT_TYPES", "PollResult", "poll_aoi"]

log = logging.getLogger(__name__)

# Sentinel-2 L2A and Sentinel-1 GRD from the Copernicus catalogues; CARD-BS from a local
# catalogue of ready-made CARD products (the demo). A catalogue without a type finds none of it.
DEFAULT_PRODUCT_TYPES = ("S2MSI2A", "IW_GRDH_1S", "CARD-BS")


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
            "FROM cbm.product_status s WHERE s.aoi_id = %(aoi_id)s AND s.status = %(ready)s",
            {"new": new_ids, "aoi_id": aoi_id(conn, aoi), "ready": registry.ProductStatus.READY.value},
        ).fetchone()
    if row is None:  # an aggregate without GROUP BY always returns one row
        raise NotFoundError(f"AOI {aoi!r}: the count of ready products returned no row")
    result = PollResult(aoi=aoi, found=len(found), new=len(new_ids), new_ready=int(row[0]), ready_waiting=int(row[1]))
    log.info("poll aoi=%s window=%s..%s found=%d new=%d new_ready=%d ready_waiting=%d", aoi, start.date(),
             end.date(), result.found, result.new, result.new_ready, result.ready_waiting)
    return result
