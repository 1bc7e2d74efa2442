"""Raw chips: a square of one band's original pixels around a location, as a GeoTIFF (JRC's rawChip*).

Unlike :mod:`.chips` (a picture around a parcel), a raw chip keeps the product's pixel grid, data
type and numbers: ``size_m`` metres a side at the band's own resolution (1280 m = 128 pixels of a
10 m band, 64 of a 20 m one: JRC's ``chipsize``), the DNs as stored, with the band's nodata, scale
and offset written into the file (physical value = DN * scale + offset; GDAL and rasterio read
them as ``scales``/``offsets``). Pixels beyond the raster's edge are nodata (NaN in a float band
without nodata; 0 in an integer band without nodata). The GeoTIFF carries
the raster's CRS and the window's transform, so a client can overlay a parcel and count classes
(JRC's notebooks histogram the SCL band of each chip under the parcel).

A user sees imagery only where a granted AOI has parcels: a location must lie in the extent of a
granted parcel set, and only the products extracted for that set are cut (as :mod:`.chips`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.warp import transform as transform_points
from rasterio.windows import Window, from_bounds

from cbm_tasks.api.chips import extracted_product, png_bytes, stretch
from cbm_tasks.api.validation import ApiInputError
from cbm_tasks.errors import NotFoundError
from cbm_tasks.extraction.bands import BandSource
from cbm_tasks.extraction.raster_io import open_raster, raster_error
from cbm_tasks.extraction.sources import product_bands
from cbm_tasks.store import Store

__all__ = ["MAX_RAW_CHIPS", "MAX_SIZE_M", "PLEVELS", "RawChip", "chip_file_name", "find_raw_chips",
           "granted_sets", "render_composite", "render_raw_chip"]

MAX_SIZE_M = 5120  # JRC's limit of chipsize
MAX_CHIP_PX = 2048  # pixels a side: a raster finer than ~2.5 m asks for a smaller chipsize
MAX_RAW_CHIPS = 200  # chips in one answer (a season of one band, overlapping orbits included)
PLEVELS = {"LEVEL2A": ("S2MSI2A",), "LEVEL1C": ("S2MSI1C",)}
OVERPASS_S = 600  # products sensed this close are one overpass (tiles of one datatake), as data.overpass_seconds
_POINT = "ST_SetSRID(ST_MakePoint(%(lon)s, %(lat)s), 4326)"
# a set imported before its extent was recorded: the extent of its parcels
_PARCELS_EXTENT = ("SELECT ST_Transform(ST_SetSRID(ST_Extent(q.geom)::geometry, s.srid), 4326) FROM cbm.parcel q "
                   "WHERE q.parcel_set_id = s.parcel_set_id")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class RawChip:
    """One product to cut at a location, and the granted parcel set it was extracted for."""

    product_id: int
    parcel_set_id: int
    name: str
    acquired_at: datetime
    bands: tuple[str, ...] | None = None  # from the catalogue record; None = known only when the files are opened

    def may_have(self, band: str) -> bool:
        """False when the catalogue record lists the product's bands and *band* is not among them."""
        return self.bands is None or band in self.bands

    @property
    def label(self) -> str:
        """JRC's date label of the chip: the sensing time ``YYYYmmddTHHMMSS`` (UTC)."""
        return f"{self.acquired_at:%Y%m%dT%H%M%S}"


def chip_file_name(product_name: str, band: str, separator: str = ".") -> str:
    """``<product>.<band>.tif`` as JRC names Sentinel-2 chips (clients glob ``*.SCL.tif``); ``_`` for Sentinel-1.

    The product part has no dot (``.SAFE`` dropped, others made ``_``): JRC's ``cbm`` client finds a
    date's other bands by the name up to the first dot (``<stem>.B03.tif`` beside ``<stem>.B04.tif``).
    """
    stem = product_name.removesuffix(".SAFE").removesuffix(".safe")
    return f"{_UNSAFE.sub('_', stem)[:200]}{separator}{band}.tif"


def granted_sets(conn: psycopg.Connection, aois: Collection[str], lon: float, lat: float,
                 parcel_set_id: int | None = None) -> list[int]:
    """The parcel sets of *aois* (only *parcel_set_id* when given) whose extent holds (*lon*, *lat*).

    Raises:
        NotFoundError: none: the location is in no granted parcel set.
    """
    rows = conn.execute(
        f"SELECT s.parcel_set_id FROM cbm.parcel_set s JOIN cbm.aoi a USING (aoi_id) "  # noqa: S608 - constant
        f"WHERE a.name = ANY(%(aois)s) AND ST_Intersects(coalesce(s.extent, ({_PARCELS_EXTENT})), {_POINT}) "
        "AND (%(set)s::integer IS NULL OR s.parcel_set_id = %(set)s)",
        {"aois": sorted(aois), "lon": lon, "lat": lat, "set": parcel_set_id},
    ).fetchall()
    if not rows:
        raise NotFoundError(f"no granted parcel set covers lon {lon}, lat {lat}")
    return [int(r[0]) for r in rows]


def find_raw_chips(conn: psycopg.Connection, aois: Collection[str], lon: float, lat: float, *,
                   product_types: Collection[str], start: date | None = None, end: date | None = None,
                   names: Collection[str] | None = None, parcel_set_id: int | None = None) -> list[RawChip]:
    """Return the products to cut at (*lon*, *lat*), oldest first.

    Products of one overpass (tile overlaps: sensing times within OVERPASS_S) give one chip, from the
    tile whose footprint reaches furthest around the location; products named in *names* are all kept.

    Args:
        conn: a cbm_reader connection.
        aois: the AOIs the user may read; the location must lie in the extent of one of their
            parcel sets (of *parcel_set_id* when given), and only products extracted for those sets are cut.
        lon: longitude of the location (WGS84).
        lat: latitude of the location.
        product_types: catalogue product types (S2MSI2A, CARD-BS, ...).
        start: first sensing date (None: open).
        end: last sensing date, inclusive (None: open).
        names: only the products of these names (JRC's ``tiles``).
        parcel_set_id: only this parcel set (a parcel's chips).

    Raises:
        NotFoundError: the location is in no granted parcel set.
        ApiInputError: more than MAX_RAW_CHIPS products.
    """
    sets = granted_sets(conn, aois, lon, lat, parcel_set_id)
    rows = conn.execute(
        f"SELECT DISTINCT ON (p.acquired_at, p.product_id) "  # noqa: S608 - a product of two granted sets: once
        "p.product_id, e.parcel_set_id, p.name, p.acquired_at, p.attributes -> 'bands', "
        f"coalesce(ST_Distance(ST_Boundary(p.footprint), {_POINT}), 0) "
        "FROM cbm.product p JOIN cbm.extraction e USING (product_id) "
        "WHERE e.parcel_set_id = ANY(%(sets)s) AND p.product_type = ANY(%(types)s) "
        "AND (%(start)s::date IS NULL OR p.acquired_at >= %(start)s) "
        "AND (%(end)s::date IS NULL OR p.acquired_at < %(end)s) "
        "AND (%(names)s::text[] IS NULL OR p.name = ANY(%(names)s)) "
        f"AND (p.footprint IS NULL OR ST_Intersects(p.footprint, {_POINT})) "
        "ORDER BY p.acquired_at, p.product_id, e.parcel_set_id LIMIT %(limit)s",
        {"sets": sets, "types": list(product_types), "start": start,
         "end": end + timedelta(days=1) if end is not None else None, "names": list(names) if names else None,
         "lon": lon, "lat": lat, "limit": 4 * MAX_RAW_CHIPS},
    ).fetchall()
    too_many = ApiInputError(f"more than {MAX_RAW_CHIPS} images to cut; narrow the date range or the list")
    if len(rows) == 4 * MAX_RAW_CHIPS:
        raise too_many
    groups: list[list[tuple[Any, ...]]] = []
    for row in rows:  # one overpass: sensing times within OVERPASS_S of the first; named products each alone
        if groups and not names and (row[3] - groups[-1][0][3]).total_seconds() <= OVERPASS_S:
            groups[-1].append(row)
        else:
            groups.append([row])
    chips = []
    for group in groups:
        best = max(group, key=lambda r: r[5])  # ties: the first (oldest, lowest id)
        known = tuple(str(d["name"]) for d in best[4] if isinstance(d, dict) and "name" in d) if best[4] else None
        chips.append(RawChip(int(best[0]), int(best[1]), best[2], best[3], known or None))
    if len(chips) > MAX_RAW_CHIPS:
        raise too_many
    return chips


def _bands(conn: psycopg.Connection, store: Store, chip: RawChip, names: Sequence[str]) -> tuple[str, list[BandSource]]:
    """The product's name and its bands *names*, once the product is known to be extracted for the chip's set."""
    product = extracted_product(conn, chip.parcel_set_id, chip.product_id, f"parcel set {chip.parcel_set_id}")
    available = {b.name: b for b in product_bands(product, store=store)}
    missing = [n for n in names if n not in available]
    if missing:
        raise NotFoundError(f"product {product.name} has no band {', '.join(missing)}")
    return product.name, [available[n] for n in names]


def _read(ds: rasterio.DatasetReader, source: BandSource, window: Window, product: str, store: Store, *,
          shape: tuple[int, int] | None = None) -> tuple[np.ndarray, float | None]:
    """DNs of *window* (nodata beyond the raster's edge) and the nodata value they use."""
    nodata = source.nodata
    if nodata is None and np.dtype(ds.dtypes[source.band_index - 1]).kind == "f":
        nodata = float("nan")  # beyond the edge of a float raster without nodata: NaN, not a false 0
    try:
        dn = ds.read(source.band_index, window=window, boundless=True, out_shape=shape,
                     fill_value=0 if nodata is None else nodata, resampling=Resampling.nearest)
    except RasterioError as err:
        raise raster_error(err, source.href, store=store, product=product, band=source.name, action="read") from err
    return dn, nodata


def _window(ds: rasterio.DatasetReader, lon: float, lat: float, size_m: float) -> Window:
    """*size_m* metres a side around (*lon*, *lat*) on the raster's own pixel grid.

    Raises:
        NotFoundError: the raster has no CRS.
        ApiInputError: its pixels are so fine that the chip would exceed MAX_CHIP_PX a side.
    """
    if ds.crs is None:
        raise NotFoundError(f"{ds.name}: the raster has no CRS; no chip can be placed on it")
    xs, ys = transform_points("EPSG:4326", ds.crs, [lon], [lat])
    col, row = ~ds.transform * (xs[0], ys[0])
    width_m, height_m = abs(ds.transform.a), abs(ds.transform.e)
    if ds.crs.is_geographic:  # degrees: 111.32 km of latitude, of longitude that times cos(latitude)
        width_m *= 111_320.0 * max(math.cos(math.radians(lat)), 1e-6)
        height_m *= 111_320.0
    nx, ny = max(1, round(size_m / width_m)), max(1, round(size_m / height_m))
    if max(nx, ny) > MAX_CHIP_PX:
        raise ApiInputError(f"a chip of {size_m:g} m is {max(nx, ny)} pixels of this raster; at most {MAX_CHIP_PX}: "
                            "ask a smaller chipsize")
    # floor(x + 0.5), not round(): no banker's rounding at a pixel's edge
    return Window(math.floor(col - nx / 2 + 0.5), math.floor(row - ny / 2 + 0.5), nx, ny)


def render_raw_chip(conn: psycopg.Connection, store: Store, chip: RawChip, band: str, lon: float, lat: float,
                    size_m: float) -> bytes:
    """Cut *size_m* metres of *band* of *chip*'s product around (*lon*, *lat*); return a GeoTIFF.

    Raises:
        NotFoundError: the product is gone, was not extracted for the parcel set, or has no *band*.
        BandError, CorruptProductError, TransientError: the product's files cannot be read.
    """
    product, [source] = _bands(conn, store, chip, [band])
    with rasterio.Env(**store.rasterio_env()), open_raster(source.href, store=store, product=product,
                                                          band=band) as ds:
        window = _window(ds, lon, lat, size_m)
        dn, nodata = _read(ds, source, window, product, store)
        profile = {"driver": "GTiff", "width": window.width, "height": window.height, "count": 1,
                   "dtype": dn.dtype.name, "crs": ds.crs, "transform": ds.window_transform(window), "nodata": nodata,
                   "compress": "deflate"}
    with MemoryFile() as mem:
        with mem.open(**profile) as out:
            out.write(np.ascontiguousarray(dn), 1)
            out.set_band_description(1, band)
            out.scales, out.offsets = (source.scale,), (source.offset,)
            out.update_tags(PRODUCT=product, SENSING_TIME=chip.acquired_at.isoformat(), BAND=band)
        return bytes(mem.read())


def render_composite(conn: psycopg.Connection, store: Store, chip: RawChip, bands: Sequence[str], lon: float,
                     lat: float, size_m: float, lut: Sequence[float]) -> bytes:
    """Three bands of *chip*'s product as red, green and blue around (*lon*, *lat*): a PNG (JRC's chipsByLocation).

    The first band sets the grid (as JRC: ``B08_B04_B03`` gives 10 m); the others are read onto it
    (nearest neighbour). *lut*: two percentiles (low, high) stretched per band over the chip, or
    three (low, high) pairs of DNs, one per band, as JRC's ``lut``. Nodata is transparent.

    Raises:
        NotFoundError: the product is gone, was not extracted for the parcel set, or lacks a band.
    """
    product, sources = _bands(conn, store, chip, bands)
    planes: list[np.ndarray] = []
    with rasterio.Env(**store.rasterio_env()):
        for i, source in enumerate(sources):
            with open_raster(source.href, store=store, product=product, band=source.name) as ds:
                if i == 0:
                    window = _window(ds, lon, lat, size_m)
                    bounds = ds.window_bounds(window)
                    dn, nodata = _read(ds, source, window, product, store)
                else:
                    other = from_bounds(*bounds, transform=ds.transform)
                    dn, nodata = _read(ds, source, other, product, store, shape=(window.height, window.width))
            values = dn.astype(np.float64)
            if nodata is not None and not np.isnan(nodata):  # a NaN nodata is NaN in values already
                values[dn == nodata] = np.nan
            planes.append(values)
    pairs = [lut[2 * i:2 * i + 2] if len(lut) == 6 else lut for i in range(len(planes))]
    rgb = np.stack([stretch(v, *pair, percentiles=len(lut) == 2) for v, pair in zip(planes, pairs, strict=True)])
    alpha = np.where(np.all(np.isnan(np.stack(planes)), axis=0), 0, 255).astype(np.uint8)
    return png_bytes(np.concatenate([rgb, alpha[None]]))
