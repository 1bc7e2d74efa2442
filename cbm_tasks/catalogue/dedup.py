"""Keep one product per acquisition when a catalogue lists several versions of it.

Catalogues list the same acquisition more than once:

- **Sentinel-2 reprocessing.** ESA reprocesses the archive with newer processing baselines
  (``_N0500_``, ``_N0509_``...), and sometimes regenerates a product with the same baseline
  (the last field of the name is the generation time). The acquisition is identified by
  mission, level, sensing start, relative orbit and tile; the newest baseline wins, then the
  newest generation time. Extracting both would put two observations of one date into the
  parcel time series.
- **Sentinel-1 ``_COG`` duplicates.** CDSE publishes, next to each IW GRD, a ``-COG``
  variant made from the same Level-1 product: same datatake, same start/stop time, same IPF,
  same pixels, but the measurement GeoTIFFs are Cloud-Optimised (internally tiled, with
  overviews). The COG variant is kept because an AOI's window can be read from object
  storage with range requests instead of fetching whole ~1 GB swaths, and its SAFE layout
  (manifest, annotation, calibration) is unchanged, so the CARD processing reads it like the
  plain GRD. When only the plain GRD exists (older archive, conversion not done yet) it is
  kept. SLC and GRD of one datatake are different products and are both kept.
- **Sentinel-1 CARD products** are keyed by their source product(s)
  (``attributes["source_products"]``) and product type; the most recently generated wins.
- The same ``uid`` twice (a page boundary that moved during paging) is always collapsed.

Everything else is passed through unchanged. The output keeps the input order of first
appearance of each acquisition.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Iterable
from typing import Any

from cbm_tasks.catalogue.product import CARD_TYPES, Product

__all__ = ["acquisition_key", "deduplicate", "version_rank"]

log = logging.getLogger(__name__)

_S2_NAME_RE = re.compile(
    r"^(?P<mission>S2[A-D])_MSI(?P<level>L1C|L2A)_(?P<sensing>\d{8}T\d{6})_N(?P<baseline>\d{4})"
    r"_R(?P<orbit>\d{3})_T(?P<tile>[0-9]{2}[A-Z]{3})_(?P<generated>\d{8}T\d{6})$"
)
_S1_NAME_RE = re.compile(
    r"^(?P<mission>S1[A-D])_(?P<mode>[A-Z0-9]{2})_(?P<type>[A-Z_]{4})_(?P<level>\d[A-Z_]{3})"
    r"_(?P<start>\d{8}T\d{6})_(?P<stop>\d{8}T\d{6})_(?P<orbit>\d{6})_(?P<datatake>[0-9A-F]{6})"
    r"_(?P<crc>[0-9A-F]{4})(?P<cog>_COG)?$"
)


def acquisition_key(product: Product) -> Hashable:
    """Return what identifies the acquisition behind ``product`` (equal keys = versions of one product)."""
    if product.product_type in CARD_TYPES:
        sources = product.attributes.get("source_products")
        if isinstance(sources, list | tuple) and sources:
            return ("CARD", product.product_type, tuple(sorted(str(source) for source in sources)))
        return ("uid", product.uid)
    match = _S2_NAME_RE.match(product.name)
    if match:
        return ("S2", match["mission"], match["level"], match["sensing"], match["orbit"], match["tile"])
    match = _S1_NAME_RE.match(product.name)
    if match:
        return ("S1", *match.group("mission", "mode", "type", "level", "start", "stop", "orbit", "datatake"))
    return ("uid", product.uid)


def version_rank(product: Product) -> tuple[Any, ...]:
    """Return a sort key; of two versions of one acquisition the one with the larger rank is kept."""
    match = _S2_NAME_RE.match(product.name)
    if match:
        return (match["baseline"], match["generated"])
    match = _S1_NAME_RE.match(product.name)
    if match:
        return (match["cog"] is not None, product.processing_baseline or "", _generated(product))
    return (product.processing_baseline or "", _generated(product))


def _generated(product: Product) -> str:
    value = product.attributes.get("generation_time") or product.attributes.get("publication_date")
    return str(value) if value else ""


def deduplicate(products: Iterable[Product]) -> list[Product]:
    """Return one product per acquisition: the newest processing version, or the S1 COG variant.

    Args:
        products: products in any order (e.g. as a catalogue yields them).

    Returns:
        The kept products, in the order the first version of each acquisition appeared.
    """
    kept: dict[Hashable, Product] = {}
    n_in = 0
    for product in products:
        n_in += 1
        key = acquisition_key(product)
        current = kept.get(key)
        if current is None:
            kept[key] = product
            continue
        if current.uid == product.uid:
            continue
        winner, loser = (product, current) if version_rank(product) > version_rank(current) else (current, product)
        log.debug("duplicate product=%s kept=%s", loser.name, winner.name)
        kept[key] = winner
    log.info("deduplicated products_in=%d products_out=%d dropped=%d", n_in, len(kept), n_in - len(kept))
    return list(kept.values())
