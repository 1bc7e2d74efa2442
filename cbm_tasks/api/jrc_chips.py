"""JRC's chip and background queries and ``/dump``, the signed links their answers point to.

``/query/rawChipByLocation`` and ``rawChipByParcelID`` (one Sentinel-2 band over a date range),
``POST /query/rawChipsBatch`` (named Sentinel-2 products x bands) and ``POST /query/rawS1ChipsBatch``
(the VV and VH chips of the Sentinel-1 CARD products of ``plevel`` CARD-BS, CARD-COH6 or CARD-COH12
between two dates) answer as JRC's service ``{"dates": [...], "chips": [...]}``: the sensing times
(``YYYYmmddTHHMMSS``; ``<time>_<band>`` in batch answers) and, for each, a URL relative to the API's
base (``/dump/...``) of a GeoTIFF named ``<product>.<band>.tif`` (``<product>_<band>.tif`` for
Sentinel-1) that the client downloads without credentials (JRC's notebooks do:
``requests.get(api_url + chip)``). ``/query/chipsByLocation`` and ``chipsByParcelID`` answer JRC's
page of three-band composites (``bands`` red_green_blue, default B08_B04_B03; ``lut`` low_high
percentiles, default 5_95, or three low_high pairs of DNs): at most 24 images, 8 to a row, each PNG
such a link. ``/query/backgroundByLocation`` and ``backgroundByParcelID`` answer the URL of an
orthophoto background (``iformat=tif`` or ``raw=True``), else a page showing it: :mod:`.backgrounds`;
a ``tms`` this server does not configure gets 404 with JRC's ``{}`` (its ``cbm`` client moves on to the
next ``tms`` on exactly that) and the reason in the ``X-Detail`` header.
What is in a chip: :mod:`.raw_chips`. Each URL is a signed link
valid for a day (:mod:`.links`): the grant is checked when the query answers; the chip is cut when
the link is fetched, so a long list costs nothing until it is downloaded. A raw chip's link also
serves the other bands of its product when its file name is edited (``...B08.tif`` -> ``...B04.tif``,
``_VV`` -> ``_VH``), as JRC's scripts fetch them from JRC's one folder per request.

``chipsize`` is the side of the chip in metres (JRC: 1280 = 128 pixels of a 10 m band, at most
5120); ``plevel`` LEVEL2A (default) or LEVEL1C; ``band`` one Sentinel-2 band (``B02``, ``B8A``,
``SCL``; JRC's short names ``B2`` ... work too). Differences from JRC: an empty list instead of
``{}`` when nothing matches; a location outside every granted parcel set is 404; the date range is
at most MAX_DATE_SPAN_DAYS and the list at most MAX_RAW_CHIPS products (400 beyond: narrow it); a
batch body with an unknown key is 422 (JRC: an ``error`` member with 200).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from cbm_tasks.api import backgrounds, links, queries, raw_chips
from cbm_tasks.api.deps import Context, CurrentUser, app_root, json_response
from cbm_tasks.api.jrc import AoiParam, Flag, ParcelsParam, Pid, Ptype, YearParam, aoi_year, flag, nothing
from cbm_tasks.api.validation import ApiInputError, check_date_range
from cbm_tasks.errors import NotFoundError

__all__ = ["dump_router", "router"]

router = APIRouter(tags=["JRC compatible"])
dump_router = APIRouter(tags=["JRC compatible"])

Day = Annotated[date, Query(ge=date(2014, 1, 1), le=date(2100, 12, 31))]
BAND_PATTERN = r"^(B0?[1-9]|B1[0-2]|B8A|SCL)$"
MAX_TILES = 100
Band = Annotated[str, Query(pattern=BAND_PATTERN, description="one band: B02 ... B12, B8A, SCL")]
Lon = Annotated[float, Query(ge=-180, le=180)]
Lat = Annotated[float, Query(ge=-90, le=90)]
ChipSize = Annotated[int, Query(ge=10, le=raw_chips.MAX_SIZE_M, description="side of the chip in metres")]
Plevel = Literal["LEVEL2A", "LEVEL1C"]
_ONE = r"(B0?[1-9]|B1[0-2]|B8A)"
Bands = Annotated[str, Query(pattern=rf"^{_ONE}_{_ONE}_{_ONE}$", description="red_green_blue, e.g. B08_B04_B03")]
_NUM = r"[0-9]{1,5}(\.[0-9]{1,4})?"
Lut = Annotated[str, Query(pattern=rf"^{_NUM}_{_NUM}((_{_NUM}){{4}})?$", description="low_high percentiles, or "
                           "three low_high pairs of DNs")]
MAX_PAGE_CHIPS = 24  # JRC's limit of a chips page
Tms = Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="a background this server configures")]
BgSize = Annotated[int, Query(ge=16, le=backgrounds.MAX_SIZE_PX, description="side of the image in pixels")]
BgExtend = Annotated[float, Query(gt=0, le=backgrounds.MAX_EXTEND_M, description="side of the image in metres")]
CHIP_PX = 128  # as JRC shows them


def _band(name: str) -> str:
    return name if name in ("B8A", "SCL") or len(name) == 3 else f"B0{name[1]}"  # JRC's B2 is our B02


def _answer(ctx: Context, aois: frozenset[str], lon: float, lat: float, bands: Sequence[str], chipsize: int, *,
            product_types: Sequence[str], start: date | None = None, end: date | None = None,
            names: Sequence[str] | None = None, parcel_set_id: int | None = None, batch: bool = False,
            s1: bool = False) -> Response:
    """List the chips (product x band) as JRC's ``{"dates": [...], "chips": [...]}``, sorted by date label."""
    check_date_range(start, end)
    ctx.store()  # 404 now, not at each link, when this API serves no imagery
    with ctx.connection() as conn:
        found = raw_chips.find_raw_chips(conn, aois, lon, lat, product_types=product_types, start=start, end=end,
                                         names=names, parcel_set_id=parcel_set_id)
        wanted = [(c, b) for c in found for b in bands if c.may_have(b)]
        files = [raw_chips.chip_file_name(c.name, b, "_" if s1 else ".") for c, b in wanted]
        tokens = links.sign_links(conn, [_payload(c, b, lon, lat, chipsize, f)
                                         for (c, b), f in zip(wanted, files, strict=True)])
    labels = [f"{c.label}_{b}" if batch else c.label for c, b in wanted]  # JRC: date_band in batch answers
    order = sorted(range(len(wanted)), key=lambda i: (labels[i], i))
    return json_response({"dates": [labels[i] for i in order],
                          "chips": [f"/dump/{tokens[i]}/{files[i]}" for i in order]})


@router.get("/rawChipByLocation", summary="Raw Sentinel-2 chips (GeoTIFF links) around a WGS84 location (JRC)")
def raw_chip_by_location(
    user: CurrentUser, ctx: Context, lon: Lon, lat: Lat, start_date: Day, end_date: Day, band: Band,
    chipsize: ChipSize = 1280, plevel: Plevel = "LEVEL2A",
) -> Response:
    return _answer(ctx, user.aois, lon, lat, [_band(band)], chipsize, product_types=raw_chips.PLEVELS[plevel],
                   start=start_date, end=end_date)


@router.get("/rawChipByParcelID", summary="Raw Sentinel-2 chips (GeoTIFF links) around a parcel (JRC)")
@router.get("/rawChipByParcelId", include_in_schema=False)
def raw_chip_by_parcel_id(
    user: CurrentUser, ctx: Context, pid: Pid, start_date: Day, end_date: Day, band: Band,
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None,
    chipsize: ChipSize = 1280, plevel: Plevel = "LEVEL2A", ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        parcel = queries.parcel_by_pid(conn, ps, pid)
    return _answer(ctx, frozenset({name}), parcel["clon"], parcel["clat"], [_band(band)], chipsize,
                   product_types=raw_chips.PLEVELS[plevel], start=start_date, end=end_date,
                   parcel_set_id=ps.parcel_set_id)


class _Batch(BaseModel):
    """JRC's rawChipsBatch body: the named Sentinel-2 products (``tiles``) x ``bands``."""

    model_config = ConfigDict(extra="forbid")
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)
    tiles: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=MAX_TILES)
    bands: list[Annotated[str, Field(pattern=BAND_PATTERN)]] = Field(min_length=1, max_length=14)
    chipsize: int = Field(ge=10, le=raw_chips.MAX_SIZE_M)


class _S1Batch(BaseModel):
    """JRC's rawS1ChipsBatch body: the CARD products of ``plevel`` sensed between ``dates[0]`` and ``dates[1]``."""

    model_config = ConfigDict(extra="forbid")
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)
    dates: list[Annotated[date, Field(ge=date(2014, 1, 1), le=date(2100, 12, 31))]] = Field(min_length=2,
                                                                                           max_length=2)
    chipsize: int = Field(ge=10, le=raw_chips.MAX_SIZE_M)
    plevel: Literal["CARD-BS", "CARD-COH6", "CARD-COH12"]


@router.post("/rawChipsBatch", summary="Raw chips of named Sentinel-2 products x bands (JRC)")
def raw_chips_batch(user: CurrentUser, ctx: Context, body: _Batch) -> Response:
    bands = list(dict.fromkeys(_band(b) for b in body.bands))
    return _answer(ctx, user.aois, body.lon, body.lat, bands, body.chipsize, product_types=("S2MSI2A", "S2MSI1C"),
                   names=list(dict.fromkeys(t.removesuffix(".SAFE") for t in body.tiles)), batch=True)  # as ref=True


@router.post("/rawS1ChipsBatch", summary="Raw chips of Sentinel-1 CARD products (VV, VH) in a date range (JRC)")
def raw_s1_chips_batch(user: CurrentUser, ctx: Context, body: _S1Batch) -> Response:
    return _answer(ctx, user.aois, body.lon, body.lat, ["VV", "VH"], body.chipsize, product_types=[body.plevel],
                   start=body.dates[0], end=body.dates[1], batch=True, s1=True)


def _lut(text: str) -> list[float]:
    values = [float(v) for v in text.split("_")]
    pairs = list(zip(values[::2], values[1::2], strict=True))
    if any(low >= high for low, high in pairs) or (len(values) == 2 and not 0 <= values[0] < values[1] <= 100):
        raise ApiInputError(f"lut {text[:60]!r}: give low_high percentiles (0..100) or three low_high pairs of "
                            "values, each low below its high")
    return values


def _page(ctx: Context, aois: frozenset[str], lon: float, lat: float, start: date, end: date, bands: str,
          lut: str, chipsize: int, plevel: str, parcel_set_id: int | None = None) -> Response:
    """JRC's chips page: the composites of the images at the location, 8 to a row, each a signed PNG link."""
    check_date_range(start, end)
    names, stretch = [_band(b) for b in bands.split("_")], _lut(lut)
    ctx.store()
    with ctx.connection() as conn:
        found = raw_chips.find_raw_chips(conn, aois, lon, lat, product_types=raw_chips.PLEVELS[plevel], start=start,
                                         end=end, parcel_set_id=parcel_set_id)
        found = [c for c in found if all(c.may_have(b) for b in names)]
        if len(found) > MAX_PAGE_CHIPS:
            raise ApiInputError(f"{len(found)} images between {start} and {end}: a page shows at most "
                                f"{MAX_PAGE_CHIPS} (JRC's limit); narrow the date range")
        files = [raw_chips.chip_file_name(c.name, "_".join(names)).removesuffix(".tif") + ".png" for c in found]
        tokens = links.sign_links(conn, [_payload(c, "_".join(names), lon, lat, chipsize, f, k="png", l=stretch)
                                         for c, f in zip(found, files, strict=True)])
    cells = [f'<td><img src="../dump/{t}/{html.escape(f)}" width="{CHIP_PX}" height="{CHIP_PX}" alt="{c.label}">'
             f"<br>{c.acquired_at:%Y-%m-%d %H:%M}</td>" for c, t, f in zip(found, tokens, files, strict=True)]
    rows = "".join(f"<tr>{''.join(cells[i:i + 8])}</tr>" for i in range(0, len(cells), 8))
    title = html.escape(f"Sentinel-2 {'_'.join(names)} at {lon:.5f}, {lat:.5f}, {start} .. {end}")
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            "<style>body{font-family:sans-serif}td{text-align:center;font-size:12px;padding:4px}</style></head>"
            f"<body><h1>{title}</h1><p>{len(found)} images; lut {html.escape(lut)}</p><table>{rows}</table>"
            "</body></html>")
    return HTMLResponse(body)


@router.get("/chipsByLocation", response_class=HTMLResponse,
            summary="Page of Sentinel-2 composites around a WGS84 location (JRC)")
def chips_by_location(
    user: CurrentUser, ctx: Context, lon: Lon, lat: Lat, start_date: Day, end_date: Day, bands: Bands = "B08_B04_B03",
    lut: Lut = "5_95", chipsize: ChipSize = 1280, plevel: Plevel = "LEVEL2A",
) -> Response:
    return _page(ctx, user.aois, lon, lat, start_date, end_date, bands, lut, chipsize, plevel)


@router.get("/chipsByParcelID", response_class=HTMLResponse,
            summary="Page of Sentinel-2 composites around a parcel (JRC)")
@router.get("/chipsByParcelId", include_in_schema=False)
def chips_by_parcel_id(
    user: CurrentUser, ctx: Context, pid: Pid, start_date: Day, end_date: Day,
    aoi: AoiParam = None, year: YearParam = None, parcels: ParcelsParam = None, bands: Bands = "B08_B04_B03",
    lut: Lut = "5_95", chipsize: ChipSize = 1280, plevel: Plevel = "LEVEL2A", ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        parcel = queries.parcel_by_pid(conn, ps, pid)
    return _page(ctx, frozenset({name}), parcel["clon"], parcel["clat"], start_date, end_date, bands, lut, chipsize,
                 plevel, ps.parcel_set_id)


def _background(request: Request, ctx: Context, aois: frozenset[str], lon: float, lat: float, *, tms: str,
                chipsize: int, extend: float, iformat: str, raw: bool, parcel_set_id: int | None = None) -> Response:
    """JRC's background answer: the URL of the image (``iformat=tif`` or ``raw``), else a page showing it."""
    name = tms.lower()
    if name not in ctx.config.backgrounds:  # JRC's {}: its cbm client moves on to the next tms
        configured = ", ".join(sorted(ctx.config.backgrounds)) or "none"
        return nothing(f"no background {name!r} is configured on this server (configured: {configured})")
    with ctx.connection() as conn:
        raw_chips.granted_sets(conn, aois, lon, lat, parcel_set_id)  # not an open proxy to the agency's imagery
        [token] = links.sign_links(conn, [{"k": "bg", "g": name, "x": lon, "y": lat, "e": extend, "c": chipsize,
                                           "i": iformat, "f": f"{name}.{iformat}"}])
    url = f"{app_root(request)}/dump/{token}/{name}.{iformat}"
    if iformat == "tif" or raw:
        return Response(url, media_type="text/plain")
    title = html.escape(f"{name} around {lon:.5f}, {lat:.5f} ({extend:g} m)")
    return HTMLResponse(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
                        f'<body><h1>{title}</h1><img src="{html.escape(url)}" width="{chipsize}" '
                        f'height="{chipsize}" alt="{title}"></body></html>')


@router.get("/backgroundByLocation", response_class=Response,
            summary="Orthophoto background around a WGS84 location: its URL, or a page (JRC)")
def background_by_location(
    request: Request, user: CurrentUser, ctx: Context, lon: Lon, lat: Lat, tms: Tms = "google",
    chipsize: BgSize = 256, extend: BgExtend = 256.0, iformat: Literal["png", "tif"] = "png", raw: Flag = "False",
) -> Response:
    return _background(request, ctx, user.aois, lon, lat, tms=tms, chipsize=chipsize, extend=extend,
                       iformat=iformat, raw=flag(raw))


@router.get("/backgroundByParcelID", response_class=Response,
            summary="Orthophoto background around a parcel: its URL, or a page (JRC)")
@router.get("/backgroundByParcelId", include_in_schema=False)
def background_by_parcel_id(
    request: Request, user: CurrentUser, ctx: Context, pid: Pid, aoi: AoiParam = None, year: YearParam = None,
    parcels: ParcelsParam = None, tms: Tms = "google", chipsize: BgSize = 256, extend: BgExtend = 256.0,
    iformat: Literal["png", "tif"] = "png", raw: Flag = "False",
    withGeometry: Flag = "False",  # noqa: N803, ARG001 - JRC's parameter: accepted, no outline is drawn
    ptype: Ptype = "",
) -> Response:
    name, season = aoi_year(aoi, year, parcels, ptype)
    with ctx.connection() as conn:
        ps = queries.parcel_set(conn, user, name, season)
        parcel = queries.parcel_by_pid(conn, ps, pid)
    return _background(request, ctx, frozenset({name}), parcel["clon"], parcel["clat"], tms=tms, chipsize=chipsize,
                       extend=extend, iformat=iformat, raw=flag(raw), parcel_set_id=ps.parcel_set_id)


@dump_router.get("/dump/{token}/{filename}",
                 summary="One chip of a rawChip*, chipsBy* or background* answer (signed link, no login)",
                 response_class=Response, responses={200: {"content": {"image/tiff": {}, "image/png": {}}}})
async def dump(ctx: Context, token: Annotated[str, Path(max_length=links.MAX_TOKEN)],
               filename: Annotated[str, Path(max_length=256)]) -> Response:
    def render() -> bytes:
        with ctx.connection() as conn:
            payload = links.open_link(conn, token)
            band = _linked_band(payload, filename)
            if payload.get("k") != "bg":
                chip, _ = _chip(payload)
                where = (float(payload["x"]), float(payload["y"]), float(payload["m"]))
                if payload.get("k") == "png":
                    return raw_chips.render_composite(conn, ctx.store(), chip, band.split("_"), *where,
                                                      lut=[float(v) for v in payload["l"]])
                return raw_chips.render_raw_chip(conn, ctx.store(), chip, band, *where)
        source = ctx.config.backgrounds.get(str(payload["g"]))  # a web service: no pooled connection held
        if source is None:
            raise NotFoundError(f"background {payload['g']!r} is no longer configured")
        return backgrounds.render_background(str(payload["g"]), source, float(payload["x"]), float(payload["y"]),
                                             extend_m=float(payload["e"]), size_px=int(payload["c"]),
                                             fmt=str(payload["i"]))

    body = await run_in_threadpool(render)
    if filename.endswith(".png"):
        return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
    return Response(body, media_type="image/tiff",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "Cache-Control": "private, max-age=3600"})


def _payload(chip: raw_chips.RawChip, band: str, lon: float, lat: float, chipsize: int, filename: str,
             **extra: Any) -> dict[str, Any]:
    """What a chip link carries (read back by :func:`_chip`): product, parcel set, band(s), place, size, file."""
    return {"p": chip.product_id, "s": chip.parcel_set_id, "n": chip.name, "t": chip.acquired_at.isoformat(),
            "b": band, "x": lon, "y": lat, "m": chipsize, "f": filename, **extra}


def _linked_band(payload: dict[str, Any], filename: str) -> str:
    """The band *filename* asks of the link's product: the linked file's, or another band of the same raw chip.

    JRC's scripts fetch a chip's other bands by editing its URL (``B08.tif`` -> ``B04.tif``, ``_VV`` ->
    ``_VH``), as JRC's chips of one request lie in one folder: a raw chip's link serves every band of its
    product at its place (the query would have listed them to the same user). Composites and backgrounds
    serve their own file only.
    """
    signed, band = str(payload.get("f")), str(payload.get("b"))
    if filename == signed:
        return band
    prefix = signed.removesuffix(f"{band}.tif")
    other = filename.removeprefix(prefix).removesuffix(".tif")
    if (payload.get("k") is None and prefix != signed and filename == f"{prefix}{other}.tif"
            and re.fullmatch(r"B0[1-9]|B1[0-2]|B8A|SCL|VV|VH", other)):
        return other
    raise NotFoundError(f"no chip {filename[:80]!r} behind this link")


def _chip(payload: dict[str, Any]) -> tuple[raw_chips.RawChip, str]:
    try:
        return (raw_chips.RawChip(int(payload["p"]), int(payload["s"]), str(payload["n"]),
                                  datetime.fromisoformat(str(payload["t"]))), str(payload["b"]))
    except (KeyError, TypeError, ValueError):  # signed by us, so only an older link format gets here
        raise NotFoundError("no such chip: the link is of another version; ask the query again") from None
