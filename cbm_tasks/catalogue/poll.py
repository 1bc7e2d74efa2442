"""Search a catalogue and keep one version of each acquisition: what a polling task needs."""

from __future__ import annotations

import logging
import time

from cbm_tasks.catalogue.dedup import deduplicate
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.query import Catalogue, SearchQuery

__all__ = ["poll"]

log = logging.getLogger(__name__)


def poll(catalogue: Catalogue, query: SearchQuery, *, max_items: int | None = None) -> list[Product]:
    """Return the de-duplicated products of ``query`` (see :mod:`cbm_tasks.catalogue.dedup`).

    Args:
        catalogue: any client (:func:`cbm_tasks.catalogue.clients.open_catalogue`).
        query: what to search for.
        max_items: cap on products read from the catalogue (before de-duplication); None = all.

    Returns:
        Products in sensing-time order.

    Raises:
        CatalogueResponseError: a malformed answer (never retried).
        TransientError: the catalogue is unreachable or overloaded (retry later).
    """
    t0 = time.perf_counter()
    found = list(catalogue.search(query, max_items=max_items))
    kept = sorted(deduplicate(found), key=lambda product: (product.acquired_at, product.uid))
    log.info(
        "polled catalogue=%s collection=%s product_type=%s found=%d kept=%d seconds=%.2f",
        catalogue.name,
        query.collection,
        query.product_type,
        len(found),
        len(kept),
        time.perf_counter() - t0,
    )
    return kept
