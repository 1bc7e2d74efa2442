"""``/v1``: the API's own routes, scoped by AOI and year, parcels addressed by their integer key.

Handlers only parse, authorise (through :func:`queries.parcel_set`) and shape answers; the
SQL is in :mod:`.queries` and :mod:`.chips`.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from cbm_tasks.api import chips, decision_queries, queries
from cbm_tasks.api.auth import Principal
from cbm_tasks.api.context import ApiContext
from cbm_tasks.api.deps import Context, CurrentUser, csv_response, json_response
from cbm_tasks.api.validation import (
    AOI_PATTERN,
    MAX_DISTANCE_M,
    MAX_PAGE,
    MAX_PEERS,
    ApiInputError,
    bands_for,
    check_date_range,
    parse_polygon,
    source,
)

__all__ = ["router"]

router = APIRouter(tags=["v1"])

Aoi = Annotated[str, Path(pattern=AOI_PATTERN, max_length=63, description="AOI name")]
Year = Annotated[int, Path(ge=2014, le=2100, description="year of the parcel set")]
Key = Annotated[int, Path(ge=1, le=2_147_483_647, description="parcel key (JRC ogc_fid)")]
Scheme = Annotated[str, Path(pattern=r"^[\w .:-]{1,63}$", max_length=63, description="aid scheme")]
Geometry = Literal["none", "wgs84", "native"]
SourceName = Literal["s2", "bs", "c6", "c12", "scl"]
Day = Annotated[date | None, Query(ge=date(2014, 1, 1), le=date(2100, 12, 31))]
BandList = Annotated[list[str] | None, Query(max_length=16, description="band names (repeat or comma-separated)")]
_DEFAULT_CHIP_BANDS = {"S2MSI2A": ("B04", "B03", "B02")}


def _geometry(geometry: Geometry) -> str | None:
    return None if geometry == "none" else geometry


@router.get("/aois", summary="The parcel sets (AOI, year) the user may read")
def list_aois(user: CurrentUser, ctx: Context) -> Response:
    with ctx.connection() as conn:
        return json_response({"user": user.name, "parcel_sets": queries.aoi_parcel_sets(conn, user)})


@router.get("/aois/{aoi}/{year}/parcels", summary="Find parcels by declared id, location or polygon (paged)")
def find_parcels(
    aoi: Aoi, year: Year, user: CurrentUser, ctx: Context,
    parcel_id: Annotated[str | None, Query(max_length=200, description="declared parcel id")] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    polygon: Annotated[str | None, Query(max_length=100_000, description="WGS84 WKT or GeoJSON")] = None,
    geometry: Geometry = "none",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    given = [name for name, value in (("parcel_id", parcel_id), ("lon/lat", lon if lat is not None else None),
                                      ("polygon", polygon)) if value is not None]
    if len(given) != 1 or (lon is None) != (lat is None):
        raise ApiInputError("give exactly one of parcel_id, lon and lat, or polygon")
    shape = parse_polygon(polygon) if polygon is not None else None
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        if parcel_id is not None:
            found = queries.parcels_by_id(conn, ps, parcel_id, geometry=_geometry(geometry))
        elif shape is not None:
            found = queries.parcels_in_polygon(conn, ps, shape, limit=limit, offset=offset,
                                               geometry=_geometry(geometry))
        else:
            assert lon is not None and lat is not None
            found = queries.parcels_at(conn, ps, lon, lat, geometry=_geometry(geometry))
    return json_response({"aoi": aoi, "year": year, "limit": limit, "offset": offset, "parcels": found})


@router.get("/aois/{aoi}/{year}/parcels/{key}", summary="One parcel")
def get_parcel(aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context,
               geometry: Geometry = "none") -> Response:
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        return json_response(queries.parcel_by_key(conn, ps, key, geometry=_geometry(geometry)))


@router.get("/aois/{aoi}/{year}/parcels/{key}/peers", summary="Nearest parcels with the same crop")
def get_peers(
    aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context,
    distance_m: Annotated[float, Query(gt=0, le=MAX_DISTANCE_M)] = 1000.0,
    limit: Annotated[int, Query(ge=1, le=MAX_PEERS)] = 10,
) -> Response:
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        found = queries.peers(conn, ps, key, distance_m=distance_m, limit=limit)
    return json_response({"parcel_key": key, "distance_m": distance_m, "peers": found})


@router.get("/aois/{aoi}/{year}/parcels/{key}/timeseries", summary="Time series of one parcel")
def get_time_series(
    aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context,
    source_name: Annotated[SourceName, Query(alias="source")] = "s2",
    band: BandList = None, start: Day = None, end: Day = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    src = source(source_name)
    bands = bands_for(src, band)
    check_date_range(start, end)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        if src.categorical:
            counts = queries.class_counts(conn, ps, key, src, start=start, end=end)
            rows: list[tuple[object, ...]] = [(t, pid, b, cls, n) for t, pid, b, values in counts
                                              for cls, n in enumerate(values) if n]
            header: tuple[str, ...] = ("obs_time", "product_id", "band", "class", "count")
        else:
            series = queries.time_series(conn, ps, key, src, bands=bands, start=start, end=end)
            rows = [(r.obs_time, r.product_id, r.band, *r.stats) for r in series]
            header = ("obs_time", "product_id", "band", *queries.STAT_NAMES)
    if format == "csv":
        return csv_response(header, rows, filename=f"{aoi}_{year}_{key}_{src.name}.csv")
    return json_response({"aoi": aoi, "year": year, "parcel_key": key, "source": src.name,
                          "columns": list(header), "rows": rows})


@router.get("/aois/{aoi}/{year}/parcels/{key}/markers", summary="Marker events of one parcel (latest run per marker)")
def get_markers(aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context) -> Response:
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        return json_response({"parcel_key": key, "markers": decision_queries.parcel_markers(conn, ps, key)})


def _explained(ctx: ApiContext, user: Principal, aoi: str, year: int, key: int,
               marker: Literal["mowing", "harvest", "bare_soil", "emergence"]) -> tuple[Any, dict[str, Any]]:
    """The parcel's explanation for *marker* with its latest run's parameters, and the answer's common fields."""
    from cbm_tasks.report.explain import explain_stored  # numba: loaded by the first explanation, not at start

    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        explanation, run = explain_stored(conn, parcel_set_id=ps.parcel_set_id, parcel_key=key,
                                          parcel_id=queries.declared_id(conn, ps, key), year=year, marker=marker)
    return explanation, {"parcel_key": key, "parcel_id": explanation.parcel_id,
                         "marker_run_id": None if run is None else run.marker_run_id,
                         "params_hash": explanation.params_hash, "use_s1": True if run is None else run.use_s1}


@router.get("/aois/{aoi}/{year}/parcels/{key}/mowing-falls",
            summary="Why a mowing was or was not found: every NDVI fall of the season judged as a cut")
async def get_mowing_falls(aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context) -> Response:
    """The parcel's NDVI falls judged by the mowing marker's own tests with its latest run's parameters.

    Each fall: its images (``start_date``, ``end_date``), NDVI, drop, red ratio, confidence and its
    parts, ``verdict`` (``mowing``, ``not a cut``, ``weaker than the cut of ...``) and the tests it
    ``failed``; and the season's images that were not used, with the reason (as ``cbm markers explain``).
    """
    def answer() -> dict[str, Any]:
        explanation, head = _explained(ctx, user, aoi, year, key, "mowing")
        return {**head, "observations_not_used": [{"date": o.date, "ndvi": o.ndvi, "clear": o.clear,
                                                    "reason": o.reason} for o in explanation.observations
                                                   if not o.used],
                "falls": [dataclasses.asdict(step) for step in explanation.steps]}

    return json_response(await run_in_threadpool(answer))


@router.get("/aois/{aoi}/{year}/parcels/{key}/harvest-cycles",
            summary="Why a harvest was or was not found: every crop cycle of the year judged as a harvest")
async def get_harvest_cycles(aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context) -> Response:
    """The parcel's crop cycles judged by the harvest marker's own tests with its latest run's parameters.

    Each cycle: its peak, the low that ended it and the image before that, the drop, ``verdict``
    (``harvest``, ``not a harvest``, or ``not ended`` when NDVI never fell below the stubble level)
    and the tests it ``failed`` (as ``cbm markers explain --marker harvest``).
    """
    def answer() -> dict[str, Any]:
        explanation, head = _explained(ctx, user, aoi, year, key, "harvest")
        return {**head, "cycles": [dataclasses.asdict(cycle) for cycle in explanation.cycles]}

    return json_response(await run_in_threadpool(answer))


@router.get("/aois/{aoi}/{year}/parcels/{key}/bare-soil",
            summary="Why bare soil (a ploughing) was or was not found: every observation below the soil line")
async def get_bare_soil(aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context) -> Response:
    """The parcel's observations below the soil line judged by the bare soil marker with its latest run's parameters.

    Each observation: NDVI, bare soil index (null without B02 and B11), clear share, ``verdict``
    (``bare soil`` with its ``run``, ``not bare soil``, ``not used``) and the ``reason``; the
    observations rejected as clouds are only counted (``n_clouded``). Each run of bare soil: its
    first and last image, number of observations, lowest NDVI and confidence with its parts (as
    ``cbm markers explain --marker bare_soil``).
    """
    def answer() -> dict[str, Any]:
        explanation, head = _explained(ctx, user, aoi, year, key, "bare_soil")
        return {**head, "max_ndvi": explanation.max_ndvi, "min_bsi": explanation.min_bsi,
                "n_clouded": explanation.n_clouded,
                "observations": [dataclasses.asdict(o) for o in explanation.observations],
                "runs": [dataclasses.asdict(run) for run in explanation.runs]}

    return json_response(await run_in_threadpool(answer))


@router.get("/aois/{aoi}/{year}/parcels/{key}/emergence",
            summary="Why an emergence was or was not found: every rise of NDVI through the emergence threshold")
async def get_emergence(aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context) -> Response:
    """The parcel's rises of NDVI through the emergence threshold judged by the marker with its latest run's parameters.

    Each rise: the images before and after it with their NDVI, the interpolated date, the
    confidence, ``verdict`` (``emergence`` or ``not an emergence``) and the tests it ``failed``
    (as ``cbm markers explain --marker emergence``).
    """
    def answer() -> dict[str, Any]:
        explanation, head = _explained(ctx, user, aoi, year, key, "emergence")
        return {**head, "ndvi_threshold": explanation.threshold,
                "crossings": [dataclasses.asdict(c) for c in explanation.crossings]}

    return json_response(await run_in_threadpool(answer))


@router.get("/aois/{aoi}/{year}/parcels/{key}/traffic-lights/{scheme}/explanation",
            summary="Why the parcel's light of one scheme has its colour: each rule's window, data, gap and events")
async def get_light_explanation(aoi: Aoi, year: Year, key: Key, scheme: Scheme, user: CurrentUser,
                                ctx: Context) -> Response:
    """The light of *scheme* re-evaluated rule by rule with its stored rules and the latest run's parameters.

    ``stored``: the light as stored (null when the parcel has none of that scheme: the shipped rules
    judge it), ``matches`` false when the evaluation now differs (images extracted since it was
    decided). ``explanation``: the colour, reason and deciding rule, and per rule its window, clear
    images, longest gap (``gap_from`` .. ``gap_to`` and why the images in it were not used) and the
    events of its marker in the window with their confidence, ``counted`` or too weak (as ``cbm
    markers explain --scheme``).
    """
    from cbm_tasks.report.explain import explain_stored_light  # numba: loaded by the first explanation

    def answer() -> dict[str, Any]:
        with ctx.connection() as conn:
            ps = queries.parcel_set(conn, user, aoi, year)
            explanation, light = explain_stored_light(conn, parcel_set_id=ps.parcel_set_id, parcel_key=key,
                                                      parcel_id=queries.declared_id(conn, ps, key), year=year,
                                                      scheme=scheme)
        stored = None if light is None else {
            "colour": light.colour, "reason": light.reason, "rule_id": light.rule_id,
            "rules_version": light.rules_version, "rules_hash": light.rules_hash,
            "matches": explanation.matches(light.colour, light.reason, light.rule_id)}
        return {"parcel_key": key, "parcel_id": explanation.parcel_id, "scheme": scheme, "stored": stored,
                "explanation": dataclasses.asdict(explanation)}

    return json_response(await run_in_threadpool(answer))


@router.get("/aois/{aoi}/{year}/parcels/{key}/traffic-lights", summary="Traffic light per aid scheme of one parcel")
def get_traffic_lights(aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context) -> Response:
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        lights = decision_queries.parcel_traffic_lights(conn, ps, key)
        return json_response({"parcel_key": key, "traffic_lights": lights})


@router.get("/aois/{aoi}/{year}/traffic-lights", summary="Parcels per scheme, colour and reason")
def get_traffic_light_summary(aoi: Aoi, year: Year, user: CurrentUser, ctx: Context) -> Response:
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, aoi, year)
        summary = decision_queries.traffic_light_summary(conn, ps)
    return json_response({"aoi": aoi, "year": year, "n_parcels": ps.n_parcels, "summary": summary})


@router.get("/aois/{aoi}/{year}/parcels/{key}/chip", summary="Image chip of one product around the parcel",
            response_class=Response, responses={200: {"content": {"image/png": {}, "image/tiff": {}}}})
async def get_chip(
    aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context,
    product_id: Annotated[int, Query(ge=1, le=2_147_483_647)],
    band: BandList = None,
    size: Annotated[int, Query(ge=16, le=chips.MAX_CHIP_PX)] = 256,
    buffer_m: Annotated[float, Query(ge=0, le=chips.MAX_BUFFER_M)] = 50.0,
    format: Literal["png", "tif"] = "png",
) -> Response:
    def render() -> bytes:
        store = ctx.store()
        with ctx.connection() as conn:
            ps = queries.parcel_set(conn, user, aoi, year)
            chip = chips.chip_source(conn, ps, key, product_id)
        names = _chip_bands(band, chip.product.product_type)
        return chips.render_chip(chip, store, names, size=size, buffer_m=buffer_m, fmt=format)

    body = await run_in_threadpool(render)
    return Response(body, media_type="image/png" if format == "png" else "image/tiff")


@router.get("/aois/{aoi}/{year}/parcels/{key}/chips", summary="Strip of chips over a date range (calendar view)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def get_chip_strip(
    aoi: Aoi, year: Year, key: Key, user: CurrentUser, ctx: Context,
    start: Annotated[date, Query(ge=date(2014, 1, 1), le=date(2100, 12, 31))],
    end: Annotated[date, Query(ge=date(2014, 1, 1), le=date(2100, 12, 31))],
    source_name: Annotated[Literal["s2", "bs", "c6", "c12"], Query(alias="source")] = "s2",
    band: BandList = None,
    size: Annotated[int, Query(ge=16, le=256)] = 128,
    buffer_m: Annotated[float, Query(ge=0, le=chips.MAX_BUFFER_M)] = 50.0,
) -> Response:
    check_date_range(start, end)
    src = source(source_name)

    def render() -> tuple[bytes, list[tuple[int, datetime]]]:
        store = ctx.store()
        with ctx.connection() as conn:
            ps = queries.parcel_set(conn, user, aoi, year)
            sources = chips.strip_sources(conn, ps, key, src, start=start, end=end)
        names = _chip_bands(band, src.product_types[0])
        return chips.render_strip(sources, store, names, size=size, buffer_m=buffer_m)

    body, order = await run_in_threadpool(render)
    listing = ",".join(f"{pid}@{str(when)[:19]}" for pid, when in order)
    return Response(body, media_type="image/png", headers={"X-Chip-Products": listing})


def _chip_bands(requested: list[str] | None, product_type: str) -> tuple[str, ...]:
    names: list[str] = [b.strip() for item in requested or [] for b in item.split(",") if b.strip()]
    if not names:
        names = list(_DEFAULT_CHIP_BANDS.get(product_type, ("VV",)))
    if not 1 <= len(names) <= 3:
        raise ApiInputError(f"band: give 1 to 3 bands for a chip, got {len(names)}")
    for name in names:
        if not (name.isascii() and name.isalnum() and len(name) <= 8):
            raise ApiInputError(f"band {name[:20]!r}: not a band name")
    return tuple(names)
