"""``/ogc``: OGC API - Features (Part 1 Core + GeoJSON, Part 2 CRS) for parcels with their traffic lights.

One collection per parcel set, ``<aoi>_<year>``, listed only for the AOIs granted to the user;
items page with ``limit``/``offset`` and filter by ``bbox`` (``bbox-crs``), in CRS84 or the
set's own CRS (``crs``). QGIS and GDAL's OAPIF driver open a collection as a layer.

Why a minimal implementation here rather than tipg or pygeoapi: both serve tables they
discover (tipg) or configure (pygeoapi) with their own database connections and URL
layout. The API's security model is per user and per AOI inside one table (``cbm.parcel``,
rows of every agency's AOI), enforced by the same dependency as every other route, and
lights join from another table. tipg would need one view per AOI and a per-request
collection filter patched into its catalogue, pygeoapi a provider plugin and its own
configuration file per deployment; either would bring a second authentication path to keep
right. The read-only subset GIS clients use (landing page, conformance, collections, items,
item) is a few routes over one query (:mod:`.features`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from cbm_tasks.api import features, queries
from cbm_tasks.api.deps import Context, CurrentUser, app_root, json_response
from cbm_tasks.api.validation import MAX_PAGE, ApiInputError
from cbm_tasks.errors import NotFoundError

__all__ = ["CRS84", "router"]

router = APIRouter(tags=["OGC API - Features"])

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
_EPSG = "http://www.opengis.net/def/crs/EPSG/0/"
_GEOJSON = "application/geo+json"
_CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
]
CollectionId = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,62}_\d{4}$", max_length=68)]
Format = Annotated[str | None, Query(pattern="^(json|geojson)$", description="only JSON is served")]


def _base(request: Request) -> str:
    return app_root(request) + "/ogc"


def _split(collection_id: str) -> tuple[str, int]:
    aoi, _, year = collection_id.rpartition("_")
    return aoi, int(year)


def _crs_srid(uri: str | None, ps: queries.ParcelSet, param: str) -> int:
    if uri is None or uri == CRS84:
        return 4326
    if uri == f"{_EPSG}{ps.srid}":
        return ps.srid
    raise ApiInputError(f"{param} {uri[:100]!r} is not offered; use {CRS84} or {_EPSG}{ps.srid}")


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ApiInputError(f"bbox {text[:100]!r}: four comma-separated numbers minx,miny,maxx,maxy") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ApiInputError(f"bbox {text[:100]!r}: four finite numbers minx,miny,maxx,maxy (no 3-D bbox)")
    if values[0] > values[2] or values[1] > values[3]:
        raise ApiInputError(f"bbox {text[:100]!r}: min must not exceed max")
    return values[0], values[1], values[2], values[3]


def _collection(base: str, entry: dict[str, Any]) -> dict[str, Any]:
    cid = f"{entry['aoi']}_{entry['year']}"
    url = f"{base}/collections/{cid}"
    native = f"{_EPSG}{entry['srid']}"
    return {
        "id": cid,
        "title": f"Parcels of {entry['aoi']} {entry['year']} with traffic lights",
        "description": f"{entry['n_parcels']} parcels; traffic_light = worst colour over the aid schemes",
        "itemType": "feature",
        "extent": {"spatial": {"bbox": [entry["bbox"]] if entry["bbox"] else [[-180, -90, 180, 90]], "crs": CRS84},
                   "temporal": {"interval": [[f"{entry['year']}-01-01T00:00:00Z",
                                              f"{entry['year']}-12-31T23:59:59Z"]]}},
        "crs": [CRS84, native],
        "storageCrs": native,
        "links": [
            {"href": url, "rel": "self", "type": "application/json", "title": "this collection"},
            {"href": f"{url}/items", "rel": "items", "type": _GEOJSON, "title": "parcels"},
        ],
    }


@router.get("", summary="Landing page")
@router.get("/", include_in_schema=False)
def landing(request: Request, user: CurrentUser, f: Format = None) -> Response:
    base = _base(request)
    root = app_root(request)
    return json_response({
        "title": "CbM parcels and traffic lights",
        "description": "OGC API - Features over the parcel sets granted to you",
        "links": [
            {"href": base, "rel": "self", "type": "application/json", "title": "this document"},
            {"href": f"{root}/openapi.json", "rel": "service-desc",
             "type": "application/vnd.oai.openapi+json;version=3.0", "title": "the API definition"},
            {"href": f"{base}/conformance", "rel": "conformance", "type": "application/json"},
            {"href": f"{base}/collections", "rel": "data", "type": "application/json"},
        ],
    })


@router.get("/conformance", summary="Conformance classes")
def conformance(user: CurrentUser, f: Format = None) -> Response:
    return json_response({"conformsTo": _CONFORMANCE})


@router.get("/collections", summary="One collection per granted parcel set")
def collections(request: Request, user: CurrentUser, ctx: Context, f: Format = None) -> Response:
    base = _base(request)
    with ctx.connection() as conn:
        sets = queries.aoi_parcel_sets(conn, user)
    return json_response({
        "links": [{"href": f"{base}/collections", "rel": "self", "type": "application/json"}],
        "collections": [_collection(base, entry) for entry in sets],
    })


@router.get("/collections/{collection_id}", summary="One collection")
def collection(request: Request, collection_id: CollectionId, user: CurrentUser, ctx: Context,
               f: Format = None) -> Response:
    aoi, year = _split(collection_id)
    with ctx.connection() as conn:
        queries.parcel_set(conn, user, aoi, year)
        entry = next(e for e in queries.aoi_parcel_sets(conn, user) if e["aoi"] == aoi and e["year"] == year)
    return json_response(_collection(_base(request), entry))


@router.get("/collections/{collection_id}/items", summary="Parcels with traffic lights (GeoJSON, paged)")
def items(
    request: Request, collection_id: CollectionId, user: CurrentUser, ctx: Context,
    limit: Annotated[int, Query(ge=1, le=10_000, description=f"at most {MAX_PAGE} are returned")] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    bbox: Annotated[str | None, Query(max_length=200)] = None,
    bbox_crs: Annotated[str | None, Query(alias="bbox-crs", max_length=200)] = None,
    crs: Annotated[str | None, Query(max_length=200)] = None,
    f: Format = None,
) -> Response:
    aoi, year = _split(collection_id)
    box = _bbox(bbox)
    limit = min(limit, MAX_PAGE)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        out_srid, bbox_srid = _crs_srid(crs, ps, "crs"), _crs_srid(bbox_crs, ps, "bbox-crs")
        page, matched = features.features_page(conn, ps, bbox=box, bbox_srid=bbox_srid, out_srid=out_srid,
                                               limit=limit, offset=offset)
    url = f"{_base(request)}/collections/{collection_id}/items"
    keep = {k: v for k, v in request.query_params.items() if k not in ("offset", "limit")}

    def link(rel: str, at: int) -> dict[str, str]:
        query = urlencode({**keep, "limit": str(limit), "offset": str(at)})
        return {"href": f"{url}?{query}", "rel": rel, "type": _GEOJSON}

    links = [link("self", offset)]
    if offset + len(page) < matched:
        links.append(link("next", offset + limit))
    if offset > 0:
        links.append(link("prev", max(0, offset - limit)))
    crs_uri = CRS84 if out_srid == 4326 else f"{_EPSG}{out_srid}"
    return json_response(
        {"type": "FeatureCollection", "features": page, "numberMatched": matched, "numberReturned": len(page),
         "timeStamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "links": links},
        media_type=_GEOJSON, headers={"Content-Crs": f"<{crs_uri}>"},
    )


@router.get("/collections/{collection_id}/items/{feature_id}", summary="One parcel with its traffic lights")
def item(
    request: Request, collection_id: CollectionId, user: CurrentUser, ctx: Context,
    feature_id: Annotated[int, Path(ge=1, le=2_147_483_647)],
    crs: Annotated[str | None, Query(max_length=200)] = None, f: Format = None,
) -> Response:
    aoi, year = _split(collection_id)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        out_srid = _crs_srid(crs, ps, "crs")
        found = features.feature(conn, ps, feature_id, out_srid=out_srid)
    if found is None:
        raise NotFoundError(f"parcel {feature_id} is not in collection {collection_id}")
    url = f"{_base(request)}/collections/{collection_id}"
    found["links"] = [{"href": f"{url}/items/{feature_id}", "rel": "self", "type": _GEOJSON},
                      {"href": url, "rel": "collection", "type": "application/json"}]
    crs_uri = CRS84 if out_srid == 4326 else f"{_EPSG}{out_srid}"
    return json_response(found, media_type=_GEOJSON, headers={"Content-Crs": f"<{crs_uri}>"})
