"""Copernicus Data Space (CDSE) STAC catalogue client, on pystac-client.

pystac-client does the STAC API work (landing page, conformance, ``/search`` POST, ``next``
links with their bodies); this module supplies the I/O object (our session and retry policy,
so tests replay recorded answers and 429/5xx are retried like in the OData client), maps a
:class:`SearchQuery` to a STAC search and the items to :class:`Product` records with band
descriptors from their assets.
"""

from __future__ import annotations

import logging
import posixpath
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pystac
import requests
import shapely
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO

from cbm_tasks.catalogue.http import DEFAULT_RETRY, RetryPolicy, Sleep, request_text
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.catalogue.stac_assets import band_descriptors, normalise_platform, orbit_direction, tile_code
from cbm_tasks.errors import CatalogueResponseError

__all__ = ["CDSE_STAC_COLLECTIONS", "CDSE_STAC_URL", "CdseStacCatalogue", "SessionStacIO", "product_from_stac"]

log = logging.getLogger(__name__)

CDSE_STAC_URL = "https://stac.dataspace.copernicus.eu/v1"

# Our product type -> the CDSE STAC collection that holds it.
CDSE_STAC_COLLECTIONS: dict[str, str] = {
    "S2MSI2A": "sentinel-2-l2a",
    "S2MSI1C": "sentinel-2-l1c",
    "IW_GRDH_1S": "sentinel-1-grd",
    "IW_SLC__1S": "sentinel-1-slc",
}


class SessionStacIO(StacApiIO):
    """pystac-client I/O over a given ``requests.Session`` with our retry policy.

    pystac-client would wrap every failure in its ``APIError``; here 429/5xx/timeouts become
    :class:`TransientError` and other 4xx :class:`CatalogueResponseError`, like in the
    OData client, so Airflow treats both catalogues alike.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(max_retries=None)
        self.session = session
        self._retry = retry
        self._sleep = sleep
        self._rng = rng

    def request(
        self,
        href: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        """Send one STAC API request (POST/PUT/PATCH: parameters as JSON body) and return the text."""
        verb = (method or "GET").upper()
        with_body = verb in ("POST", "PUT", "PATCH")
        return request_text(
            self.session,
            href,
            method=verb,
            params=None if with_body else parameters,
            json_body=parameters if with_body else None,
            headers=headers,
            policy=self._retry,
            sleep=self._sleep,
            rng=self._rng,
        )


class CdseStacCatalogue:
    """Search a STAC API (by default CDSE's) for the products of a query.

    Args:
        session: HTTP session (see :func:`cbm_tasks.catalogue.http.make_session`).
        url: the STAC API landing page.
        page_size: items per page (``limit``), 1..10000.
        collections: product type -> STAC collection id.
        retry: retry policy of every request.
        sleep: how to wait between retries (tests inject a recorder).

    Raises:
        ValueError: ``url`` is not an http(s) URL or ``page_size`` is out of range.
    """

    name = "cdse-stac"

    def __init__(
        self,
        session: requests.Session,
        *,
        url: str = CDSE_STAC_URL,
        page_size: int = 100,
        collections: Mapping[str, str] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not 1 <= page_size <= 10_000:
            raise ValueError(f"page_size must be within 1..10000, got {page_size}")
        self.url = url
        self.page_size = page_size
        self.collections = dict(CDSE_STAC_COLLECTIONS if collections is None else collections)
        self._io = SessionStacIO(session, retry=retry, sleep=sleep, rng=rng)
        self._client: Client | None = None  # opened on first search: the constructor sends nothing

    def __repr__(self) -> str:
        return f"CdseStacCatalogue(url={self.url!r}, page_size={self.page_size})"

    def _open(self) -> Client:
        if self._client is None:
            try:
                self._client = Client.open(self.url, stac_io=self._io)
            except (APIError, pystac.STACError, KeyError, ValueError) as err:
                raise CatalogueResponseError(f"GET {self.url}: not a STAC API landing page: {err}") from err
        return self._client

    def search(self, query: SearchQuery, *, max_items: int | None = None) -> Iterator[Product]:
        """Yield the products matching ``query``, at most ``max_items``.

        STAC datetime intervals are closed; items sensed exactly at ``query.end`` are dropped
        so the window stays half-open like the OData client's. Items of another collection or
        product type (the server ignored the filter) are skipped with a warning.

        Raises:
            ValueError: the product type has no STAC collection, or ``max_items`` < 1.
            CatalogueResponseError: a malformed answer or item (names the URL and field).
            TransientError: a page could not be fetched after retries.
        """
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        if query.product_type not in self.collections:
            raise ValueError(
                f"product_type {query.product_type!r} has no STAC collection at {self.url}; "
                f"known: {sorted(self.collections)}"
            )
        collection_id = self.collections[query.product_type]
        t0 = time.perf_counter()
        n_yielded = n_skipped = 0
        try:
            item_search = self._open().search(
                collections=[collection_id],
                intersects=shapely.geometry.mapping(query.aoi),
                datetime=[query.start, query.end],
                limit=self.page_size,
            )
            for item in item_search.items_as_dicts():
                product = product_from_stac(
                    item,
                    url=self.url,
                    collection=query.collection,
                    catalogue=self.name,
                    default_type=query.product_type,
                )
                reason = _skip_reason(item, product, query, collection_id)
                if reason:
                    log.warning("skipped item=%s reason=%s", item.get("id"), reason)
                    n_skipped += 1
                    continue
                yield product
                n_yielded += 1
                if max_items is not None and n_yielded >= max_items:
                    return
        except (APIError, pystac.STACError) as err:
            raise CatalogueResponseError(f"POST {self.url}/search: {err}") from err
        finally:
            log.info(
                "searched catalogue=%s collection=%s product_type=%s products=%d skipped=%d seconds=%.2f",
                self.name,
                collection_id,
                query.product_type,
                n_yielded,
                n_skipped,
                time.perf_counter() - t0,
            )


def _skip_reason(item: Mapping[str, Any], product: Product, query: SearchQuery, collection_id: str) -> str:
    if item.get("collection") not in (None, collection_id):
        return f"collection {item.get('collection')} is not the requested {collection_id}"
    if product.product_type != query.product_type:
        return f"product type {product.product_type} is not the requested {query.product_type}"
    if not query.start <= product.acquired_at < query.end:
        return f"sensed {product.acquired_at.isoformat()} outside [{query.start.isoformat()}, {query.end.isoformat()})"
    return ""


def product_from_stac(
    item: Mapping[str, Any], *, url: str, collection: str, catalogue: str = "cdse-stac", default_type: str | None = None
) -> Product:
    """Map one STAC item (as a dict) to a :class:`Product`, with band descriptors.

    Args:
        item: the GeoJSON Feature.
        url: where it came from (for messages).
        collection: ``SENTINEL-1``/``SENTINEL-2``.
        catalogue: value of ``Product.catalogue``.
        default_type: product type when the item has no ``product:type``/``s2:product_type``.

    Raises:
        CatalogueResponseError: ``id`` or ``properties/datetime`` missing or malformed; names
            the URL, the item and the field.
    """
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise CatalogueResponseError(f"{url}: item without field 'id'")
    properties = item.get("properties")
    if not isinstance(properties, dict):
        raise CatalogueResponseError(f"{url}: item {item_id}: missing field 'properties'")
    stamp = properties.get("datetime") or properties.get("start_datetime")
    if not isinstance(stamp, str):
        raise CatalogueResponseError(f"{url}: item {item_id}: missing field 'properties/datetime'")
    try:
        acquired_at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError as err:
        raise CatalogueResponseError(f"{url}: item {item_id}: properties/datetime is not ISO 8601: {stamp!r}") from err
    if acquired_at.tzinfo is None:
        raise CatalogueResponseError(f"{url}: item {item_id}: properties/datetime has no time zone: {stamp!r}")
    product_type = properties.get("product:type") or properties.get("s2:product_type") or default_type
    if not isinstance(product_type, str):
        product_type = "UNKNOWN"
    assets = item.get("assets") or {}
    try:
        bands = band_descriptors(assets, base_href=_item_folder(item))
        direction = orbit_direction(properties.get("sat:orbit_state"))
    except ValueError as err:
        raise CatalogueResponseError(f"{url}: item {item_id}: {err}") from err
    baseline = properties.get("processing:version") or properties.get("s2:processing_baseline")
    name = properties.get("s2:product_uri") or item_id
    geometry = item.get("geometry")
    return Product(
        uid=item_id,
        name=str(name).removesuffix(".SAFE"),
        catalogue=catalogue,
        collection=collection,
        product_type=product_type,
        acquired_at=acquired_at,
        location=_location(item, properties, assets, url=url),
        platform=normalise_platform(properties.get("platform")),
        relative_orbit=_int_or_none(properties.get("sat:relative_orbit")) or _orbit_from_name(str(name)),
        orbit_direction=direction,
        tile=tile_code(properties),
        processing_baseline=str(baseline) if baseline else None,
        footprint_wkt=str(shapely.geometry.shape(geometry).wkt) if isinstance(geometry, dict) else None,
        attributes={
            "bands": bands,
            "stac_collection": item.get("collection"),
            "cloud_cover": properties.get("eo:cloud_cover"),
            "generation_time": properties.get("s2:generation_time") or properties.get("created"),
            "datatake_id": properties.get("s2:datatake_id"),
            "epsg": properties.get("proj:epsg"),
        },
    )


def _item_folder(item: Mapping[str, Any]) -> str | None:
    for link in item.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "self" and isinstance(link.get("href"), str):
            return str(posixpath.dirname(link["href"])) + "/"
    return None


def _location(item: Mapping[str, Any], properties: Mapping[str, Any], assets: Mapping[str, Any], *, url: str) -> str:
    s3_path = properties.get("earthsearch:s3_path")
    if isinstance(s3_path, str) and s3_path:
        return s3_path.rstrip("/") + "/"
    manifest = assets.get("safe_manifest") or assets.get("manifest")
    if isinstance(manifest, dict) and isinstance(manifest.get("href"), str):
        return str(posixpath.dirname(manifest["href"])) + "/"  # CDSE: s3://eodata/.../X.SAFE/manifest.safe
    folder = _item_folder(item)
    if folder:
        return folder
    for asset in assets.values():
        if isinstance(asset, dict) and "data" in (asset.get("roles") or []) and isinstance(asset.get("href"), str):
            return str(posixpath.dirname(asset["href"])) + "/"
    raise CatalogueResponseError(
        f"{url}: item {item.get('id')}: no location (no s3 path, manifest, self link or data asset)"
    )


def _orbit_from_name(name: str) -> int | None:
    # Earth Search S2 items carry no sat:relative_orbit; the SAFE name does (..._R141_...).
    match = re.search(r"^S2[A-D]_MSI\w{3}_\d{8}T\d{6}_N\d{4}_R(\d{3})_", name)
    return int(match.group(1)) if match else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
