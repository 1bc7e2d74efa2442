"""The local catalogue: a directory tree of STAC items next to their band files.

Used for the built-in demo and for air-gapped sites (format in ARCHITECTURE.md,
"Formats"). Every ``*.json`` file whose ``type`` is ``Feature`` is one product; other JSON files
(collections, catalogues) are ignored. Matching products are yielded in sensing-time order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.catalogue.stac_assets import band_descriptors, normalise_platform, orbit_direction, tile_code
from cbm_tasks.errors import CatalogueResponseError, ConfigError

__all__ = ["LocalCatalogue", "product_from_local_item"]

log = logging.getLogger(__name__)

_REQUIRED_PROPERTIES = ("datetime", "cbm:collection", "cbm:product_type")


class LocalCatalogue:
    """Search a directory of STAC item files.

    Args:
        root: folder that holds the items (searched recursively).

    Raises:
        ConfigError: ``root`` is not an existing directory.
    """

    name = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise ConfigError(f"local catalogue root {str(root)!r} is not a directory")
        self.root = path.resolve()

    def __repr__(self) -> str:
        return f"LocalCatalogue(root={str(self.root)!r})"

    def item_files(self) -> Iterator[Path]:
        """Yield every ``*.json`` file under the root, in path order (hidden folders skipped)."""
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(files):
                if name.endswith(".json"):
                    yield Path(folder) / name

    def search(self, query: SearchQuery, *, max_items: int | None = None) -> Iterator[Product]:
        """Yield the products matching ``query`` in sensing-time order, at most ``max_items``.

        Raises:
            ValueError: ``max_items`` < 1.
            CatalogueResponseError: an item file is not JSON or misses a required field (names
                the file and the field).
        """
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        t0 = time.perf_counter()
        aoi = query.aoi
        matches: list[Product] = []
        n_items = 0
        for path in self.item_files():
            item = _read_json(path)
            if not isinstance(item, dict) or item.get("type") != "Feature":
                continue
            n_items += 1
            product = product_from_local_item(item, path=path)
            if _matches(product, query, aoi):
                matches.append(product)
        matches.sort(key=lambda product: (product.acquired_at, product.uid))
        selected = matches if max_items is None else matches[:max_items]
        log.info(
            "searched catalogue=%s root=%s product_type=%s items=%d products=%d seconds=%.2f",
            self.name,
            self.root,
            query.product_type,
            n_items,
            len(selected),
            time.perf_counter() - t0,
        )
        yield from selected


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CatalogueResponseError(f"local catalogue item {path}: cannot read JSON: {err}") from err


def _matches(product: Product, query: SearchQuery, aoi: BaseGeometry) -> bool:
    if product.collection != query.collection:
        return False
    if query.product_type is not None and product.product_type != query.product_type:
        return False
    if not query.start <= product.acquired_at < query.end:
        return False
    return product.footprint_wkt is not None and bool(shapely.from_wkt(product.footprint_wkt).intersects(aoi))


def product_from_local_item(item: Mapping[str, Any], *, path: Path) -> Product:
    """Map one local STAC item to a :class:`Product` (location = the item's folder).

    Args:
        item: the parsed item file.
        path: the item file (absolute); relative asset hrefs are resolved against its folder.

    Raises:
        CatalogueResponseError: ``id``, ``geometry``, ``properties/datetime``,
            ``properties/cbm:collection``, ``properties/cbm:product_type`` or ``assets`` is
            missing or malformed; names the file and the field.
    """
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise CatalogueResponseError(f"local catalogue item {path}: missing field 'id'")
    properties = item.get("properties")
    if not isinstance(properties, dict):
        raise CatalogueResponseError(f"local catalogue item {path}: missing field 'properties'")
    for field in _REQUIRED_PROPERTIES:
        if not isinstance(properties.get(field), str) or not properties[field]:
            raise CatalogueResponseError(f"local catalogue item {path}: missing field 'properties/{field}'")
    assets = item.get("assets")
    if not isinstance(assets, dict):
        raise CatalogueResponseError(f"local catalogue item {path}: missing field 'assets'")
    try:
        acquired_at = _utc_time(properties["datetime"])
        footprint = _footprint(item.get("geometry"))
        bands = band_descriptors(assets, base_href=str(path.parent) + "/")
        direction = orbit_direction(properties.get("sat:orbit_state"))
        return Product(
            uid=item_id,
            name=item_id,
            catalogue="local",
            collection=properties["cbm:collection"],
            product_type=properties["cbm:product_type"],
            acquired_at=acquired_at,
            location=str(path.parent),
            platform=normalise_platform(properties.get("platform")),
            relative_orbit=_int_or_none(properties.get("sat:relative_orbit")),
            orbit_direction=direction,
            tile=tile_code(properties),
            processing_baseline=properties.get("processing:version"),
            footprint_wkt=footprint,
            attributes={
                "bands": bands,
                "epsg": properties.get("proj:epsg"),
                "generation_time": properties.get("created"),
                "source_products": properties.get("cbm:source_products"),
                "item_file": str(path),
            },
        )
    except (ValueError, TypeError, KeyError, shapely.errors.ShapelyError) as err:
        raise CatalogueResponseError(f"local catalogue item {path}: {err}") from err


def _utc_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError(f"field 'properties/datetime' must be an ISO 8601 time with zone, got {text!r}")
    return when


def _footprint(geometry: Any) -> str:
    if not isinstance(geometry, dict):
        raise ValueError("missing field 'geometry'")
    shape = shapely.geometry.shape(geometry)
    if shape.is_empty or shape.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"field 'geometry' must be a non-empty (Multi)Polygon, got {shape.geom_type}")
    return str(shape.wkt)


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None and not isinstance(value, bool) else None
