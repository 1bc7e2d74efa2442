"""``/query``: JRC's CbM query names, parameters and answer shapes, for notebooks written for JRC's API.

An answer is a JSON object of equal-length column lists (``pandas.read_json`` reads it as a table); no
rows give the columns with empty lists. ``pid`` takes a parcel's key or the parcel id it was declared
with (JRC's deployments configured either). Parcel queries answer ``ogc_fid`` and ``pid`` (both our parcel
key, the ``pid`` the other queries take: JRC's API named it ``ogc_fid`` until 2022 and ``pid`` since;
peers give it as ``pid`` and ``pids``), ``cropname``, ``cropcode``, ``srid``, ``area`` (m2), ``clon``,
``clat`` (WGS84 centroid) and with ``withGeometry=True`` ``geom`` (GeoJSON text, in the set's CRS or
with ``wgs84=True`` in WGS84). Time series answer ``date_part`` (acquisition, epoch seconds), ``band``
(JRC's names: ``B02`` ... ``B12``, ``B8A``, ``SC`` for the scene classification, ``VVb``/``VHb`` for
backscatter and ``VVc``/``VHc`` for coherence, as JRC's servers answer; ``B2`` ... where the deployment
names them as the extractor of JRC's repository, ``ApiConfig.jrc_band_names``; a band asked for by name,
``band=B4``, is answered under that name), ``count``, ``mean``, ``std``, ``min``, ``p25``, ``p50``,
``p75``, ``max``; ``tsformat=csv`` gives the same table as CSV. As JRC's: ``tstype=s2`` gives after each
image's bands its ``SC`` row (the statistics of its scene classification, as ``tstype=scl``, which
also answers JRC's ``obsid``, the image id, and always ``hist``);
``scl=True`` (the default) adds ``hist``, the image's SCL pixel counts per class (``{"4": 812, "8":
3}``; JSON text in CSV; ``{}`` where the image has none, where JRC leaves the row out) for Sentinel-2;
``ref=True`` adds ``reference``, the product name.

``info`` describes the server and, per granted AOI, its years, time-series types, example parcel
ids and request URLs (JRC's first notebook cell). ``markers`` answers a parcel's marker events in
JRC's marker-table columns: ``foi_id`` (the declared parcel id), ``marker`` (mowing, harvest,
bare_soil, emergence, vegetation), ``marker_type`` (the sensors that show it: ``s2``, ``s2+c6``;
JRC's signal), ``date_start`` / ``date_main`` / ``date_end`` (``YYYY-MM-DD``), ``duration_days``,
``value_1`` (the marker's value, e.g. the NDVI drop of a mowing), ``value_2`` (its confidence),
``value_3`` (its number in the parcel's series of that marker), ``pid``, ``practice`` (the declared
crop). The events are those of the parcel's current marker run, as ``/v1/.../markers``.

Differences from JRC's service, on purpose: errors are HTTP 400/401/403/404/422 with a JSON
body instead of ``{}`` with 200 (a background or weather series this server cannot give: 404 with
JRC's ``{}``, which JRC's client expects, and the reason in ``X-Detail``); every parameter is
validated; ``parcelsByPolygon`` also takes WKT or GeoJSON and pages (``limit`` <= 1000 instead of a
silent 100). ``ptype`` must be empty (one parcel set per AOI and year; 400 otherwise, on every
parcel query); no weather series. JRC's chip and background queries are :mod:`.jrc_chips`'.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cbm_tasks import __version__
from cbm_tasks.api import decision_queries, queries
from cbm_tasks.api.deps import Context, CurrentUser, app_root, csv_response, json_response
from cbm_tasks.api.validation import (
    AOI_PATTERN,
    MAX_DISTANCE_M,
    MAX_PAGE,
    MAX_PEERS,
    SOURCES,
    ApiInputError,
    bands_for,
    jrc_band_labels,
    parse_polygon,
    source,
)
from cbm_tasks.errors import NotFoundError

__all__ = ["AoiParam", "Flag", "ParcelsParam", "Pid", "Ptype", "YearParam", "aoi_year", "flag", "nothing", "router",
           "scl_stats"]

router = APIRouter(tags=["JRC compatible"])

_PARCELS = re.compile(r"^([a-z][a-z0-9_]{0,62}?)_?(\d{4})$")
# ogc_fid (JRC's API until 2022) and pid (since): the same parcel key, so notebooks of either generation run
_PARCEL_COLUMNS = ("ogc_fid", "pid", "cropname", "cropcode", "srid", "area", "clon", "clat")
_TS_COLUMNS = ("date_part", "band", "count", "mean", "std", "min", "p25", "p50", "p75", "max")
_MARKER_COLUMNS = ("foi_id", "marker", "marker_type", "date_start", "date_main", "date_end", "duration_days",
                   "value_1", "value_2", "value_3", "pid", "practice")

AoiParam = Annotated[str | None, Query(pattern=AOI_PATTERN, max_length=63)]
YearParam = Annotated[int | None, Query(ge=2014, le=2100)]
ParcelsParam = Annotated[str | None, Query(max_length=67, description="AOI and year run together, e.g. nl2023")]
Pid = Annotated[str, Query(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$",
                           description="the parcel's ogc_fid (its key), or the parcel id it was declared with")]
Flag = Annotated[str, Query(max_length=5, pattern="^(True|False|true|false|1|0)$")]
Ptype = Annotated[str, Query(max_length=20, description="JRC's parcel table type: empty (one set per AOI and year)")]


def flag(value: str) -> bool:
    """A JRC flag parameter (``Flag``) as a bool."""
    return value in ("True", "true", "1")


def aoi_year(aoi: str | None, year: int | None, parcels: str | None, ptype: str = "") -> tuple[str, int]:
    """The (AOI, year) of a JRC query: ``aoi`` and ``year``, or ``parcels`` as JRC writes them (``nl2023``).

    JRC's ``ptype`` (a second parcel table of the same AOI and year) must be empty: this server keeps one
    parcel set per AOI and year, and answering from it for another table would answer the wrong parcels.
    """
    if ptype:
        raise ApiInputError(f"ptype {ptype[:20]!r}: this server keeps one parcel set per AOI and year; "
                            "leave ptype empty")
    if parcels is not None:
        match = _PARCELS.match(parcels)
        if match is None:
            raise ApiInputError(f"parcels {parcels[:70]!r}: expected the AOI name followed by the year, e.g. nl2023")
        return match.group(1), int(match.group(2))
    if aoi is None or year is None:
        raise ApiInputError("give aoi and year (or parcels=<aoi><year>)")
    return aoi, year


def _columns(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _parcel_answer(found: list[dict[str, Any]], with_geometry: bool) -> Response:
    names = list(_PARCEL_COLUMNS)
    if with_geometry:
        names.insert(5, "geom")
    rows = [[p["parcel_key"], p["parcel_key"], p["crop_name"], p["crop_code"], p["srid"],
             *([_geojson_text(p)] if with_geometry else []), p["area_m2"], p["clon"], p["clat"]] for p in found]
    return json_response(_columns(names, rows))


def _geojson_text(parcel: dict[str, Any]) -> str:
    """Return a parcel's geometry as GeoJSON text (JRC answers ``st_asgeojson`` text)."""
    return json.dumps(parcel["geometry"], separators=(",", ":"))


def _geometry(with_geometry: bool, wgs84: bool) -> str | None:
    return None if not with_geometry else ("wgs84" if wgs84 else "native")


@router.get("/parcelByLocation", summary="Parcel at a WGS84 location (JRC)")
def parcel_by_location(
    user: CurrentUser, ctx: Context,
    lon: Annotated[float, Query(ge=-180, le=180)], lat: Annotated[float, Query(ge=-90, le=90)],
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None,
    withGeometry: Flag = "False", wgs84: Flag = "False",  # noqa: N803 - JRC's parameter names
    ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        found = queries.parcels_at(conn, ps, lon, lat, geometry=_geometry(flag(withGeometry), flag(wgs84)))
    return _parcel_answer(found, flag(withGeometry))


@router.get("/parcelByID", summary="Parcel by ogc_fid (JRC)")
@router.get("/parcelById", include_in_schema=False)
def parcel_by_id(
    user: CurrentUser, ctx: Context, pid: Pid,
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None,
    withGeometry: Flag = "False", wgs84: Flag = "False",  # noqa: N803
    ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        found = [queries.parcel_by_pid(conn, ps, pid, geometry=_geometry(flag(withGeometry), flag(wgs84)))]
    return _parcel_answer(found, flag(withGeometry))


@router.get("/parcelsByPolygon", summary="Parcels intersecting a WGS84 polygon (JRC)")
def parcels_by_polygon(
    user: CurrentUser, ctx: Context,
    polygon: Annotated[str, Query(max_length=100_000, description="lon_lat-lon_lat-..., WKT or GeoJSON")],
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None,
    withGeometry: Flag = "False", only_ids: Flag = "True", wgs84: Flag = "False",  # noqa: N803
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0, ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    shape = parse_polygon(polygon)
    with_geometry = flag(withGeometry)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        found = queries.parcels_in_polygon(conn, ps, shape, limit=limit, offset=offset,
                                           geometry=_geometry(with_geometry, flag(wgs84)))
    if flag(only_ids):
        names = ["ogc_fid", "pid", "geom"] if with_geometry else ["ogc_fid", "pid"]
        rows = [[p["parcel_key"], p["parcel_key"], *([_geojson_text(p)] if with_geometry else [])] for p in found]
        return json_response(_columns(names, rows))
    return _parcel_answer(found, with_geometry)


@router.get("/parcelPeers", summary="Nearest parcels with the same crop (JRC)")
def parcel_peers(
    user: CurrentUser, ctx: Context, pid: Pid,
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None,
    distance: Annotated[float, Query(gt=0, le=MAX_DISTANCE_M)] = 1000.0,
    max: Annotated[int, Query(ge=1, le=MAX_PEERS)] = 10,  # noqa: A002 - JRC's parameter name
    ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        key = queries.parcel_by_pid(conn, ps, pid)["parcel_key"]
        found = queries.peers(conn, ps, key, distance_m=distance, limit=max)
    return json_response(_columns(("pid", "pids", "distance"),  # pids: JRC's name since 2022, the same keys
                                  [(p["parcel_key"], p["parcel_key"], p["distance_m"]) for p in found]))


def scl_stats(counts: Sequence[int]) -> tuple[int, float, float, float, float, float, float, float]:
    """Return (count, mean, std, min, p25, p50, p75, max) of class values from per-class pixel counts.

    The same statistics (numpy linear percentiles, population std) that the numeric bands
    have, computed over the parcel's SCL pixels, as JRC's ``SC`` band.
    """
    weights = np.asarray(counts, dtype=np.int64)
    n = int(weights.sum())
    if n == 0:
        nan = float("nan")
        return 0, nan, nan, nan, nan, nan, nan, nan
    classes = np.arange(len(weights), dtype=np.float64)
    mean = float((classes * weights).sum() / n)
    std = float(np.sqrt(((classes - mean) ** 2 * weights).sum() / n))
    cumulative = np.cumsum(weights)

    def value_at(rank: int) -> float:  # the rank-th (0-based) value of the sorted pixels
        return float(np.searchsorted(cumulative, rank, side="right").item())

    def percentile(q: float) -> float:
        pos = q / 100 * (n - 1)
        lo = int(pos)
        frac = pos - lo
        return value_at(lo) + frac * (value_at(min(lo + 1, n - 1)) - value_at(lo))

    present = np.nonzero(weights)[0]
    return n, mean, std, float(present[0]), percentile(25), percentile(50), percentile(75), float(present[-1])


@router.get("/parcelTimeSeries", summary="Time series of a parcel (JRC)")
def parcel_time_series(
    user: CurrentUser, ctx: Context, pid: Pid,
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None,
    tstype: Literal["s2", "bs", "c6", "c12", "scl", "S2", "BS", "C6", "C12", "SCL"] = "s2",
    band: Annotated[str | None, Query(max_length=16)] = None,
    tsformat: Literal["json", "csv"] = "json",
    scl: Flag = "True", ref: Flag = "False", ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    src = source(tstype)
    optical = src.name in ("s2", "scl")
    only_scl = src.categorical or (src.name == "s2" and band is not None and band.upper() in ("SC", "SCL"))
    bands = None if only_scl else bands_for(src, [band] if band else None)
    with_hist, with_ref = optical and (flag(scl) or src.categorical), flag(ref)  # JRC: none for Sentinel-1
    with_obsid = src.categorical  # JRC's tstype=scl answers obsid (its image id) and hist
    with_sc = optical and (only_scl or bands is None)  # the SC rows
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        key = queries.parcel_by_pid(conn, ps, pid)["parcel_key"]
        classes = queries.class_counts(conn, ps, key, SOURCES["scl"]) if with_hist or with_sc else []
        series = [] if only_scl else queries.time_series(conn, ps, key, src, bands=bands)
        names = queries.product_names(conn, sorted({r.product_id for r in series} | {c[1] for c in classes})
                                      ) if with_ref else {}
    labels = jrc_band_labels(ctx.config.jrc_band_names, src, band)
    hist = {product: {str(value): int(n) for value, n in enumerate(counts) if n} for _, product, _, counts in classes}
    sc_rows = {product: (int(t.timestamp()), labels.get(b, b), *scl_stats(counts))
               for t, product, b, counts in classes} if with_sc else {}

    def extra(product: int) -> tuple[Any, ...]:
        return (*([product] if with_obsid else []), *([hist.get(product, {})] if with_hist else []),
                *([names.get(product)] if with_ref else []))

    # per image (by time and product id): its bands, then its SCL statistics as the band SC (JRC's s2 answer
    # carries both; tstype=scl or band=SC the SC rows alone)
    keyed: list[tuple[int, int, int, tuple[Any, ...]]] = []
    for rank, r in enumerate(series):
        count, mean, std, vmin, vmax, p25, p50, p75 = r.stats
        seconds = int(r.obs_time.timestamp())
        keyed.append((seconds, r.product_id, rank, (seconds, labels.get(r.band, r.band), int(count), mean, std,
                                                    vmin, p25, p50, p75, vmax, *extra(r.product_id))))
    keyed += [(row[0], product, len(series), (*row, *extra(product))) for product, row in sc_rows.items()]
    rows = [item[3] for item in sorted(keyed, key=lambda item: item[:3])]
    columns = (*_TS_COLUMNS, *(["obsid"] if with_obsid else []), *(["hist"] if with_hist else []),
               *(["reference"] if with_ref else []))
    if tsformat == "csv":
        text_rows = [tuple(json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else v for v in row)
                     for row in rows]
        return csv_response(columns, text_rows, filename=f"{name}{season}_{key}_{src.name}.csv")
    return json_response(_columns(columns, rows))


@router.get("/info", summary="The server, and per granted AOI its years, data and example requests (JRC)")
def info(
    user: CurrentUser, ctx: Context, request: Request,
    aoi: Annotated[str | None, Query(pattern=AOI_PATTERN, max_length=63, description="one AOI only")] = None,
) -> Response:
    base = app_root(request)
    with ctx.connection() as conn:
        sets = queries.aoi_parcel_sets(conn, user)
        if aoi is not None:
            queries.require_grant(user, aoi)
        if aoi is not None and aoi not in {s["aoi"] for s in sets}:
            raise NotFoundError(f"AOI {aoi!r} has no parcel set")
        aois: dict[str, Any] = {}
        for name in sorted({s["aoi"] for s in sets if aoi in (None, s["aoi"])}):
            years = [s["year"] for s in sets if s["aoi"] == name]
            year = years[-1]  # examples of the latest set
            types, pids = queries.set_overview(conn, queries.parcel_set(conn, user, name, year))
            ts = [src.name for src in SOURCES.values() if not src.categorical and set(src.product_types) & set(types)]
            q = f"{base}/query/{{}}?aoi={name}&year={year}&pid={pids[0] if pids else 1}"
            examples = {"parcelByID": q.format("parcelByID") + "&withGeometry=True",
                        **{f"parcelTimeSeries_{t}": q.format("parcelTimeSeries") + f"&tstype={t}" for t in ts},
                        "parcelPeers": q.format("parcelPeers"), "markers": q.format("markers")}
            if "s2" in ts and ctx.config.store is not None:  # the chips of June (JRC: a page holds 24)
                june = f"&start_date={year}-06-01&end_date={year}-06-30"
                examples |= {"rawChipByParcelID": q.format("rawChipByParcelID") + june + "&band=SCL",
                             "chipsByParcelID": q.format("chipsByParcelID") + june}
            examples |= {f"backgroundByParcelID_{name}": q.format("backgroundByParcelID") + f"&tms={name}&raw=True"
                         for name in sorted(ctx.config.backgrounds)}
            aois[name] = {"years": years, "datasets": [], "time_series": ts, "id_table_column": "ogc_fid",
                          f"id_examples_{year}": pids, "request_examples": examples}
    return json_response({
        "server": {"title": "RESTful API for CbM", "description": "Checks by Monitoring backend (cbm_tasks)",
                   "version": __version__},
        "helpers": {"information_page": f"{base}/query/info", "swagger": f"{base}/docs",
                    "openapi": f"{base}/openapi.json", "api_v1": f"{base}/v1/aois",
                    "backgrounds": sorted(ctx.config.backgrounds), "band_names": ctx.config.jrc_band_names},
        "aois": aois,
    })


@router.get("/options", summary="The granted AOIs with their description and parcel-set years (JRC)")
def options(user: CurrentUser, ctx: Context) -> Response:
    """JRC's ``config/options.json`` answer, from the database: ``{"aois": {name: {"desc", "year"}}}``.

    Years are strings, the latest first, as JRC's file lists them; ``desc`` is the AOI's description
    (its name where it has none).
    """
    with ctx.connection() as conn:
        sets = queries.aoi_parcel_sets(conn, user)
        names = sorted({s["aoi"] for s in sets})
        descriptions = queries.aoi_descriptions(conn, names)
    aois = {name: {"desc": descriptions.get(name) or name,
                   "year": [str(s["year"]) for s in reversed(sets) if s["aoi"] == name]} for name in names}
    return json_response({"aois": aois})


@router.get("/weatherTimeSeries", summary="Not served: this deployment holds no weather series (JRC)")
def weather_time_series(user: CurrentUser) -> Response:
    return nothing("weatherTimeSeries: this deployment holds no weather data (JRC's meteo grids are not part of "
                   "it); parcel time series are /query/parcelTimeSeries")


def nothing(detail: str) -> Response:
    """JRC's answer when it has nothing to give: ``{}`` as 404, the reason in ``X-Detail``.

    JRC's cbm client reads ``{}`` as "no image" or an empty table; anything else it fails on.
    """
    return Response("{}", status_code=404, media_type="application/json", headers={"X-Detail": detail})


@router.get("/markers", summary="Marker events of a parcel in JRC's marker-table columns (JRC)")
def markers(
    user: CurrentUser, ctx: Context, pid: Pid,
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None, ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        parcel = queries.parcel_by_pid(conn, ps, pid)
        key = parcel["parcel_key"]
        events = decision_queries.parcel_markers(conn, ps, key)
    rows = [(parcel["parcel_id"], e["marker"], e["sources"], *_dates(e), e["value"], e["confidence"], e["seq"], key,
             parcel["crop_name"]) for e in events]
    return json_response(_columns(_MARKER_COLUMNS, rows))


def _dates(event: dict[str, Any]) -> tuple[str | None, str | None, str | None, int | None]:
    start, main, end = event["event_start"], event["main_date"], event["event_end"]
    duration = (end - start).days if start is not None and end is not None else None
    start_text, main_text, end_text = (None if d is None else d.isoformat() for d in (start, main, end))
    return start_text, main_text, end_text, duration
