"""Copernicus Data Space Ecosystem (CDSE) OData catalogue client.

Shaped like pystac-client's ``ItemSearch``: the constructor only validates; nothing is sent
until :meth:`CdseODataCatalogue.search` is iterated; pages are followed through
``@odata.nextLink`` and products are yielded one at a time, capped by ``max_items``.
The same client reads CREODIAS' OData (same CSC schema) when given its ``base_url``.

Request (CDSE "OData" API, Products entity set)::

    GET {base_url}?$filter=Collection/Name eq 'SENTINEL-2'
        and Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'productType'
            and att/OData.CSC.StringAttribute/Value eq 'S2MSI2A')
        and OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((...))')
        and ContentDate/Start ge 2024-05-01T00:00:00.000Z and ContentDate/Start lt 2024-06-01T00:00:00.000Z
      &$expand=Attributes&$orderby=ContentDate/Start asc&$top={page_size}
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import shapely

from cbm_tasks.catalogue.http import DEFAULT_RETRY, RetryPolicy, Sleep, request_json
from cbm_tasks.catalogue.product import Product
from cbm_tasks.catalogue.query import SearchQuery
from cbm_tasks.errors import CatalogueResponseError

__all__ = [
    "CDSE_ODATA_URL",
    "MAX_AOI_WKT_CHARS",
    "CdseODataCatalogue",
    "odata_filter",
    "product_from_odata",
    "search_area_wkt",
]

log = logging.getLogger(__name__)

CDSE_ODATA_URL = "https://catalogue.dataspace.copernicus.eu/odata/v1/Products"

_FOOTPRINT_RE = re.compile(r"^geography'SRID=4326;(?P<wkt>.+)'$", re.DOTALL)
_BASELINE_IN_NAME_RE = re.compile(r"_N(\d{2})(\d{2})_")
# The filter travels in the URL; long AOI outlines (a parcel-set union) would exceed URL
# limits (HTTP 414). Beyond this length the convex hull is searched instead: a superset,
# which is safe because images that miss every parcel are skipped at extraction.
MAX_AOI_WKT_CHARS = 4000


def odata_filter(query: SearchQuery) -> str:
    """Return the OData ``$filter`` expression of a query (half-open time window)."""
    parts = [f"Collection/Name eq '{query.collection}'"]
    if query.product_type is not None:
        parts.append(
            "Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'productType' and "
            f"att/OData.CSC.StringAttribute/Value eq '{query.product_type}')"
        )
    parts.append(f"OData.CSC.Intersects(area=geography'SRID=4326;{search_area_wkt(query)}')")
    parts.append(f"ContentDate/Start ge {_odata_time(query.start)}")
    parts.append(f"ContentDate/Start lt {_odata_time(query.end)}")
    return " and ".join(parts)


def search_area_wkt(query: SearchQuery) -> str:
    """Return the AOI as sent to OData: as given while short enough, else a covering outline.

    Tried in order until one fits MAX_AOI_WKT_CHARS: the AOI, its convex hull, its minimum
    rotated rectangle (both cover the AOI).
    """
    wkt = query.aoi_wkt
    for cover in (shapely.convex_hull, shapely.oriented_envelope):
        if len(wkt) <= MAX_AOI_WKT_CHARS:
            break
        wkt = str(shapely.to_wkt(cover(query.aoi), rounding_precision=6, trim=True))
    return wkt


def _odata_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class CdseODataCatalogue:
    """Search the CDSE (or CREODIAS) OData catalogue.

    Args:
        session: HTTP session (see :func:`cbm_tasks.catalogue.http.make_session`).
        base_url: the ``Products`` entity set URL.
        page_size: ``$top`` of one page, 1..1000 (the CDSE maximum).
        retry: retry policy of every page request.
        sleep: how to wait between retries (tests inject a recorder).
        max_pages: safety cap on pages followed in one search.

    Raises:
        ValueError: ``base_url`` is not an http(s) URL, or ``page_size``/``max_pages`` is out of range.
    """

    name = "cdse-odata"

    def __init__(
        self,
        session: requests.Session,
        *,
        base_url: str = CDSE_ODATA_URL,
        page_size: int = 100,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = time.sleep,
        rng: Callable[[], float] = random.random,
        max_pages: int = 1000,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be within 1..1000, got {page_size}")
        if max_pages < 1:
            raise ValueError(f"max_pages must be >= 1, got {max_pages}")
        self.session = session
        self.base_url = base_url
        self.page_size = page_size
        self.retry = retry
        self.max_pages = max_pages
        self._sleep = sleep
        self._rng = rng

    def __repr__(self) -> str:
        return f"CdseODataCatalogue(base_url={self.base_url!r}, page_size={self.page_size})"

    def pages(self, query: SearchQuery) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Yield ``(url, products)`` per page: the raw OData entities of each page, in order.

        Raises:
            CatalogueResponseError: a page is not a JSON object with a ``value`` list, a
                ``@odata.nextLink`` points to a page already read, or ``max_pages`` is exceeded.
            TransientError: a page could not be fetched after retries.
        """
        params: Mapping[str, str | int] | None = {
            "$filter": odata_filter(query),
            "$expand": "Attributes",
            "$orderby": "ContentDate/Start asc",
            "$top": self.page_size,
        }
        url = self.base_url
        seen: set[str] = set()
        for page_no in range(1, self.max_pages + 1):
            page = request_json(self.session, url, params=params, policy=self.retry, sleep=self._sleep, rng=self._rng)
            shown = url if params is None else requests.Request("GET", url, params=params).prepare().url or url
            if not isinstance(page, dict) or not isinstance(page.get("value"), list):
                raise CatalogueResponseError(f"GET {shown}: page {page_no} has no 'value' list")
            log.debug("page url=%s number=%d products=%d", shown, page_no, len(page["value"]))
            yield shown, page["value"]
            next_link = page.get("@odata.nextLink")
            if not next_link or not page["value"]:
                return
            if not isinstance(next_link, str):
                raise CatalogueResponseError(f"GET {shown}: '@odata.nextLink' is not a string: {next_link!r}")
            seen.add(shown)
            if next_link in seen:
                raise CatalogueResponseError(f"GET {shown}: '@odata.nextLink' loops back to {next_link}")
            url, params = next_link, None  # the link carries the whole query
        raise CatalogueResponseError(
            f"GET {self.base_url}: more than max_pages={self.max_pages} pages; narrow the query"
        )

    def search(self, query: SearchQuery, *, max_items: int | None = None) -> Iterator[Product]:
        """Yield the products matching ``query`` in sensing-time order, at most ``max_items``.

        Products of another type than ``query.product_type`` (the server ignored the filter)
        are skipped with a warning rather than registered.

        Raises:
            ValueError: ``max_items`` < 1.
            CatalogueResponseError: a malformed page or product (names the URL and the field).
            TransientError: a page could not be fetched after retries.
        """
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        t0 = time.perf_counter()
        n_yielded = n_pages = n_skipped = 0
        try:
            for url, entities in self.pages(query):
                n_pages += 1
                for entity in entities:
                    product = product_from_odata(entity, url=url, collection=query.collection, catalogue=self.name)
                    if query.product_type is not None and product.product_type != query.product_type:
                        log.warning(
                            "skipped product=%s product_type=%s reason=not the requested %s",
                            product.name,
                            product.product_type,
                            query.product_type,
                        )
                        n_skipped += 1
                        continue
                    yield product
                    n_yielded += 1
                    if max_items is not None and n_yielded >= max_items:
                        return
        finally:
            log.info(
                "searched catalogue=%s collection=%s product_type=%s pages=%d products=%d skipped=%d seconds=%.2f",
                self.name,
                query.collection,
                query.product_type,
                n_pages,
                n_yielded,
                n_skipped,
                time.perf_counter() - t0,
            )


def product_from_odata(
    entity: Mapping[str, Any], *, url: str, collection: str, catalogue: str = "cdse-odata"
) -> Product:
    """Map one OData ``Product`` entity (with expanded ``Attributes``) to a :class:`Product`.

    Args:
        entity: the JSON object of one product.
        url: the page it came from (for messages).
        collection: the searched collection (``SENTINEL-1``/``SENTINEL-2``).
        catalogue: value of ``Product.catalogue``.

    Raises:
        CatalogueResponseError: ``Id``, ``Name``, ``ContentDate/Start`` or ``S3Path`` missing
            or malformed; names the URL, the product and the field.
    """
    name = _required_str(entity, "Name", url=url, product="?")
    uid = _required_str(entity, "Id", url=url, product=name)
    content_date = entity.get("ContentDate")
    start_text = content_date.get("Start") if isinstance(content_date, dict) else None
    if not isinstance(start_text, str):
        raise CatalogueResponseError(f"{url}: product {name}: missing field 'ContentDate/Start'")
    acquired_at = _parse_time(start_text, url=url, product=name, field="ContentDate/Start")
    s3_path = _required_str(entity, "S3Path", url=url, product=name)
    attributes = _attributes(entity.get("Attributes"), url=url, product=name)
    product_type = attributes.get("productType")
    if not isinstance(product_type, str):
        raise CatalogueResponseError(
            f"{url}: product {name}: missing attribute 'productType' (is $expand=Attributes set?)"
        )
    short_name = name.removesuffix(".SAFE")
    return Product(
        uid=uid,
        name=short_name,
        catalogue=catalogue,
        collection=collection,
        product_type=product_type,
        acquired_at=acquired_at,
        location=_s3_location(s3_path),
        platform=_platform(attributes),
        relative_orbit=_int_or_none(attributes.get("relativeOrbitNumber")),
        orbit_direction=_orbit_direction(attributes.get("orbitDirection"), url=url, product=name),
        tile=_str_or_none(attributes.get("tileId")),
        processing_baseline=_baseline(attributes, short_name),
        footprint_wkt=_footprint(entity, url=url, product=name),
        checksum=_checksum(entity.get("Checksum")),
        size_bytes=_int_or_none(entity.get("ContentLength")) or None,  # CREODIAS reports 0 = unknown
        attributes={
            "odata": {key: value for key, value in attributes.items() if key != "coordinates"},
            "online": entity.get("Online"),
            "publication_date": entity.get("PublicationDate"),
            "content_end": content_date.get("End") if isinstance(content_date, dict) else None,
        },
    )


def _required_str(entity: Mapping[str, Any], field: str, *, url: str, product: str) -> str:
    value = entity.get(field)
    if not isinstance(value, str) or not value:
        raise CatalogueResponseError(f"{url}: product {product}: missing field {field!r}")
    return value


def _parse_time(text: str, *, url: str, product: str, field: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise CatalogueResponseError(f"{url}: product {product}: {field} is not an ISO time: {text!r}") from err
    if when.tzinfo is None:
        raise CatalogueResponseError(f"{url}: product {product}: {field} has no time zone: {text!r}")
    return when


def _attributes(raw: Any, *, url: str, product: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise CatalogueResponseError(f"{url}: product {product}: 'Attributes' is not a list")
    return {item["Name"]: item.get("Value") for item in raw if isinstance(item, dict) and "Name" in item}


def _s3_location(s3_path: str) -> str:
    # CDSE S3Path is "/eodata/<key>"; the bucket is "eodata". SAFE products are folders.
    location = "s3://" + s3_path.lstrip("/")
    return location + "/" if location.endswith(".SAFE") else location


def _platform(attributes: Mapping[str, Any]) -> str | None:
    short = attributes.get("platformShortName")
    serial = attributes.get("platformSerialIdentifier") or attributes.get("platform")  # CREODIAS: "platform"
    if not isinstance(short, str) or not isinstance(serial, str):
        return None
    match = re.fullmatch(r"SENTINEL-(\d)", short)
    if match is None or not re.fullmatch(r"[A-D]", serial):
        return None  # e.g. "S1_" auxiliary files shared by all units
    return f"S{match.group(1)}{serial}"


def _orbit_direction(value: Any, *, url: str, product: str) -> str | None:
    if value is None:
        return None
    direction = str(value).upper()
    if direction not in ("ASCENDING", "DESCENDING"):
        raise CatalogueResponseError(
            f"{url}: product {product}: orbitDirection must be ASCENDING or DESCENDING, got {value!r}"
        )
    return direction


def _baseline(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get("processingBaseline")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return f"{value:05.2f}"
    if isinstance(value, str) and value:
        return value
    match = _BASELINE_IN_NAME_RE.search(name)  # S2 names carry it: ..._N0509_... -> 05.09
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    return None


def _footprint(entity: Mapping[str, Any], *, url: str, product: str) -> str | None:
    text = entity.get("Footprint")
    if isinstance(text, str) and text:
        match = _FOOTPRINT_RE.match(text)
        if match is None:
            raise CatalogueResponseError(
                f"{url}: product {product}: Footprint is not geography'SRID=4326;...': {text[:60]!r}"
            )
        try:
            return str(shapely.from_wkt(match.group("wkt")).wkt)
        except shapely.errors.ShapelyError as err:
            raise CatalogueResponseError(f"{url}: product {product}: Footprint is not valid WKT: {err}") from err
    geo = entity.get("GeoFootprint")
    if isinstance(geo, dict) and geo:
        try:
            return str(shapely.geometry.shape(geo).wkt)
        except (ValueError, KeyError, TypeError, shapely.errors.ShapelyError) as err:
            raise CatalogueResponseError(f"{url}: product {product}: GeoFootprint is not GeoJSON: {err}") from err
    return None


def _checksum(raw: Any) -> str | None:
    if not isinstance(raw, list):
        return None
    sums = {str(item.get("Algorithm", "")).lower(): item.get("Value") for item in raw if isinstance(item, dict)}
    sums = {algo: value for algo, value in sums.items() if algo and isinstance(value, str) and value}
    if "md5" in sums:  # what the CDSE download and S3 ETags can be checked against
        return f"md5:{sums['md5']}"
    for algo, value in sums.items():
        return f"{algo}:{value}"
    return None


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
