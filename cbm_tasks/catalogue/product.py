"""The normalised product record every catalogue client yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["CARD_TYPES", "Product"]

# Product types the pipeline knows. S2 L2A and CARD products are extracted directly;
# S1 GRD/SLC are turned into CARD products first.
CARD_TYPES = ("CARD-BS", "CARD-COH6", "CARD-COH12")


@dataclass(frozen=True, slots=True)
class Product:
    """One catalogue product, normalised across catalogues.

    Attributes:
        uid: the catalogue's identifier (CDSE Id, STAC item id); unique in cbm.product.
        name: product name, e.g. ``S2A_MSIL2A_20180405T105031_N0206_R051_T31UDS_20180405T142238``.
        catalogue: which client found it: ``cdse-odata``, ``cdse-stac``, ``local``, ``file``, ``card``.
        collection: ``SENTINEL-1`` or ``SENTINEL-2``.
        product_type: ``S2MSI2A``, ``IW_GRDH_1S``, ``IW_SLC__1S``, ``CARD-BS``, ``CARD-COH6``, ``CARD-COH12``.
        acquired_at: sensing start, timezone-aware UTC.
        location: where the product's files are: ``s3://bucket/key/`` or a local path.
        footprint_wkt: footprint in EPSG:4326 as WKT (Polygon or MultiPolygon), or None.
        attributes: everything else worth keeping (STAC assets with per-band nodata/scale/offset, ...).
    """

    uid: str
    name: str
    catalogue: str
    collection: str
    product_type: str
    acquired_at: datetime
    location: str
    platform: str | None = None
    relative_orbit: int | None = None
    orbit_direction: str | None = None
    tile: str | None = None
    processing_baseline: str | None = None
    footprint_wkt: str | None = None
    checksum: str | None = None
    size_bytes: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.acquired_at.tzinfo is None:
            raise ValueError(f"product {self.name}: acquired_at must be timezone-aware, got {self.acquired_at}")
        if self.orbit_direction not in (None, "ASCENDING", "DESCENDING"):
            raise ValueError(
                f"product {self.name}: orbit_direction must be ASCENDING or DESCENDING, got {self.orbit_direction!r}"
            )
