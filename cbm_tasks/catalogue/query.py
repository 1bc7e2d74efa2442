"""What to search for, and the interface every catalogue client implements.

A :class:`SearchQuery` is validated once, when it is built (collection, product type, AOI,
time window), so a client never sends a request that the catalogue would reject or, worse,
silently answer with the wrong products.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import shapely
from shapely.geometry.base import BaseGeometry

from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import GeometryError

__all__ = ["COLLECTIONS", "KNOWN_PRODUCT_TYPES", "Catalogue", "SearchQuery"]

COLLECTIONS = ("SENTINEL-1", "SENTINEL-2")

# Product types the pipeline knows, with the collection each belongs to. Other types of the
# same shape are accepted (the catalogue is the authority), but these are cross-checked.
KNOWN_PRODUCT_TYPES: dict[str, str] = {
    "S2MSI2A": "SENTINEL-2",
    "S2MSI1C": "SENTINEL-2",
    "IW_GRDH_1S": "SENTINEL-1",
    "IW_GRDH_1S-COG": "SENTINEL-1",
    "IW_SLC__1S": "SENTINEL-1",
    "CARD-BS": "SENTINEL-1",
    "CARD-COH6": "SENTINEL-1",
    "CARD-COH12": "SENTINEL-1",
}

_PRODUCT_TYPE_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{1,31}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchQuery:
    """One catalogue search: products of one type over an AOI in a time window.

    Attributes:
        collection: ``SENTINEL-1`` or ``SENTINEL-2``.
        product_type: e.g. ``S2MSI2A``, ``IW_GRDH_1S``, ``IW_SLC__1S``, ``CARD-BS``; None means
            every product type of the collection (only useful for inspection).
        aoi_wkt: AOI as WKT Polygon or MultiPolygon in EPSG:4326 (lon, lat).
        start: first sensing time included, timezone-aware.
        end: first sensing time excluded (half-open window ``[start, end)``), timezone-aware.

    Raises:
        ValueError: unknown collection, malformed product type, a product type of the other
            collection, naive or reversed times.
        GeometryError: the AOI is not parseable, not a (Multi)Polygon, empty, invalid, or
            outside the lon/lat range.
    """

    collection: str
    product_type: str | None
    aoi_wkt: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.collection not in COLLECTIONS:
            raise ValueError(f"collection must be one of {COLLECTIONS}, got {self.collection!r}")
        if self.product_type is not None:
            if not _PRODUCT_TYPE_RE.match(self.product_type):
                raise ValueError(f"product_type must look like 'S2MSI2A' or 'IW_GRDH_1S', got {self.product_type!r}")
            expected = KNOWN_PRODUCT_TYPES.get(self.product_type)
            if expected is not None and expected != self.collection:
                raise ValueError(f"product_type {self.product_type} belongs to {expected}, not to {self.collection}")
        for label, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"{label} must be timezone-aware (UTC), got {value.isoformat()}")
        # Normalise to UTC so every client formats the same instant the same way.
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))
        if not self.start < self.end:
            raise ValueError(f"start must be before end, got {self.start.isoformat()} >= {self.end.isoformat()}")
        object.__setattr__(self, "aoi_wkt", _validated_aoi(self.aoi_wkt))

    @property
    def aoi(self) -> BaseGeometry:
        """The AOI as a shapely geometry (EPSG:4326)."""
        return shapely.from_wkt(self.aoi_wkt)

    @property
    def duration(self) -> timedelta:
        """Length of the time window."""
        return self.end - self.start


def _validated_aoi(wkt: str) -> str:
    try:
        geom = shapely.from_wkt(wkt)
    except shapely.errors.ShapelyError as err:
        raise GeometryError(f"aoi_wkt is not valid WKT: {err}; got {wkt[:80]!r}") from err
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise GeometryError(f"aoi_wkt must be a Polygon or MultiPolygon, got {geom.geom_type}")
    if geom.is_empty:
        raise GeometryError("aoi_wkt is empty")
    if not geom.is_valid:
        raise GeometryError(f"aoi_wkt is not a valid geometry: {shapely.is_valid_reason(geom)}")
    min_x, min_y, max_x, max_y = geom.bounds
    if min_x < -180 or max_x > 180 or min_y < -90 or max_y > 90:
        raise GeometryError(
            "aoi_wkt must be in EPSG:4326 (lon -180..180, lat -90..90), "
            f"got bounds ({min_x:g}, {min_y:g}, {max_x:g}, {max_y:g})"
        )
    # Six decimals (~0.1 m) keep request URLs short without moving the AOI noticeably.
    return str(shapely.to_wkt(geom, rounding_precision=6, trim=True))


@runtime_checkable
class Catalogue(Protocol):
    """A product catalogue: yields matching products one at a time, page by page."""

    name: str

    def search(self, query: SearchQuery, *, max_items: int | None = None) -> Iterator[Product]:
        """Yield the products matching ``query``, at most ``max_items`` (None = all)."""
        ...
