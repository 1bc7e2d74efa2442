"""Image chips: a product's bands around one parcel, with the parcel outline, as PNG or GeoTIFF.

Only the window around the parcel is read (GDAL range requests on a COG in the object store,
``/vsis3/``), decimated on read to at most ``size`` pixels a side (overviews are used where the
COG has them). A product can be cut only around parcels of a set it was extracted for, so a
user sees imagery only where a granted AOI has parcels.

Rendering: each band is stretched to 0..255 between its 2nd and 98th percentile over the
chip (physical values); one band gives grey, three give RGB; nodata is transparent; the
parcel outline is drawn in yellow. The GeoTIFF holds the physical values (float32) with the
CRS and transform of the window, and no outline.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import rasterize
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.warp import transform_geom
from rasterio.windows import from_bounds as window_from_bounds
from shapely.geometry import shape

from cbm_tasks.api.queries import ParcelSet
from cbm_tasks.api.validation import ApiInputError, Source
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import NotFoundError
from cbm_tasks.extraction.bands import BandSource
from cbm_tasks.extraction.raster_io import open_raster, raster_error
from cbm_tasks.extraction.sources import product_bands
from cbm_tasks.store import Store

__all__ = ["MAX_BUFFER_M", "MAX_CHIP_PX", "MAX_STRIP", "ChipSource", "chip_source", "display_bands",
           "extracted_product", "parcel_geometry", "png_bytes", "render_chip", "render_comparable", "render_strip",
           "stretch", "strip_sources"]

MAX_CHIP_PX = 1024
MAX_STRIP = 24  # chips in one strip
MAX_BUFFER_M = 1000.0
_OUTLINE = np.array([255, 255, 0], np.uint8)
_MAX_UPSAMPLE = 16  # a picture's pixel repeats an image pixel at most this often a side


@dataclass(frozen=True, slots=True)
class ChipSource:
    """A product to cut and the parcel to cut it around (geometry in the parcel set's CRS)."""

    product_id: int
    product: Product
    parcel_geojson: dict[str, Any]
    srid: int


def parcel_geometry(conn: psycopg.Connection, parcel_set_id: int, key: int, set_name: str) -> dict[str, Any]:
    """Return parcel *key*'s outline as GeoJSON in its set's CRS (*set_name* names the set in the error).

    Raises:
        NotFoundError: no parcel *key* in the set.
    """
    row = conn.execute("SELECT ST_AsGeoJSON(geom) FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_key = %s",
                       (parcel_set_id, key)).fetchone()
    if row is None:
        raise NotFoundError(f"parcel {key} is not in {set_name}")
    geometry: dict[str, Any] = json.loads(row[0])
    return geometry


def _parcel_geometry(conn: psycopg.Connection, ps: ParcelSet, key: int) -> dict[str, Any]:
    return parcel_geometry(conn, ps.parcel_set_id, key, f"the {ps.year} parcel set of AOI {ps.aoi!r}")


def chip_source(conn: psycopg.Connection, ps: ParcelSet, key: int, product_id: int) -> ChipSource:
    """Return what is needed to cut *product_id* around parcel *key*.

    Raises:
        NotFoundError: no parcel *key*, or the product was not extracted for this parcel set.
    """
    geometry = _parcel_geometry(conn, ps, key)
    product = extracted_product(conn, ps.parcel_set_id, product_id, f"the {ps.year} parcel set of AOI {ps.aoi!r}")
    return ChipSource(product_id, product, geometry, ps.srid)


def extracted_product(conn: psycopg.Connection, parcel_set_id: int, product_id: int, set_name: str) -> Product:
    """Return *product_id* when it was extracted for the parcel set (*set_name* names it in the error).

    A user sees imagery only of products extracted for a parcel set granted to them.

    Raises:
        NotFoundError: the product was not extracted for that set.
    """
    if conn.execute("SELECT 1 FROM cbm.extraction WHERE parcel_set_id = %s AND product_id = %s",
                    (parcel_set_id, product_id)).fetchone() is None:
        raise NotFoundError(f"product {product_id} has no data for {set_name}")
    return registry.get_product(conn, product_id)


def strip_sources(conn: psycopg.Connection, ps: ParcelSet, key: int, src: Source, *, start: date,
                  end: date) -> list[ChipSource]:
    """Return the products of *src* with an observation of parcel *key* in [start, end], oldest first.

    Raises:
        NotFoundError: no parcel *key*.
        ApiInputError: more than MAX_STRIP products in the range.
    """
    geometry = _parcel_geometry(conn, ps, key)
    rows = conn.execute(
        "SELECT o.product_id FROM cbm.parcel_obs o JOIN cbm.product p USING (product_id) "
        "WHERE o.parcel_set_id = %s AND o.parcel_key = %s AND p.product_type = ANY(%s) "
        "AND p.acquired_at >= %s AND p.acquired_at < %s ORDER BY p.acquired_at, o.product_id LIMIT %s",
        (ps.parcel_set_id, key, list(src.product_types), start, end + timedelta(days=1), MAX_STRIP + 1),
    ).fetchall()
    if len(rows) > MAX_STRIP:
        raise ApiInputError(f"more than {MAX_STRIP} {src.name} images between {start} and {end}; "
                            "narrow the date range")
    return [ChipSource(int(r[0]), registry.get_product(conn, r[0]), geometry, ps.srid) for r in rows]


def _pick_bands(product: Product, store: Store, names: Sequence[str]) -> list[BandSource]:
    available = {b.name: b for b in product_bands(product, store=store) if not b.categorical}
    missing = [n for n in names if n not in available]
    if missing:
        raise ApiInputError(f"product {product.product_type} {product.name} has no band {', '.join(missing)}; "
                            f"bands: {', '.join(available)}")
    return [available[n] for n in names]


def _read_window(band: BandSource, store: Store, bounds: tuple[float, float, float, float], crs: Any,
                 shape_px: tuple[int, int] | None, size: int, product: str,
                 upsample: bool = False) -> tuple[np.ndarray, Any, Any]:
    """Return (physical values with NaN for nodata, window CRS, bounds actually read) of one band.

    The longer side is decimated to at most *size* pixels; with *upsample* a smaller window is also
    enlarged to about *size* (each pixel repeated, at most 16 times: a picture, not data).
    """
    with open_raster(band.href, store=store, product=product, band=band.name) as ds:
        if crs is not None and ds.crs != crs:
            raise ApiInputError(f"product {product}: band {band.name} is in another CRS than the first band")
        window = window_from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        if shape_px is None:
            scale = max(window.width, window.height) / size
            factor = max(scale, 1 / _MAX_UPSAMPLE) if upsample else max(scale, 1.0)
            shape_px = (max(1, math.ceil(window.height / factor)), max(1, math.ceil(window.width / factor)))
        try:
            dn = ds.read(band.band_index, window=window, out_shape=shape_px, boundless=True,
                         fill_value=band.nodata if band.nodata is not None else 0, resampling=Resampling.nearest)
        except RasterioError as err:
            raise raster_error(err, band.href, store=store, product=product, band=band.name, action="read") from err
        values = dn.astype(np.float32) * np.float32(band.scale) + np.float32(band.offset)
        if band.nodata is not None:
            values[dn == band.nodata] = np.nan
        return values, ds.crs, ds.window_bounds(window)


def _cut(chip: ChipSource, store: Store, band_names: Sequence[str], *, size: int, buffer_m: float,
         upsample: bool = False) -> tuple[np.ndarray, Any, tuple[float, float, float, float], dict[str, Any]]:
    bands = _pick_bands(chip.product, store, band_names)
    with rasterio.Env(**store.rasterio_env()):
        with open_raster(bands[0].href, store=store, product=chip.product.name, band=bands[0].name) as first:
            crs = first.crs
        parcel = transform_geom(f"EPSG:{chip.srid}", crs, chip.parcel_geojson)
        x0, y0, x1, y1 = shape(parcel).bounds
        bounds = (x0 - buffer_m, y0 - buffer_m, x1 + buffer_m, y1 + buffer_m)
        planes: list[np.ndarray] = []
        read_bounds = bounds
        for band in bands:
            values, _, read_bounds = _read_window(band, store, bounds, crs, planes[0].shape if planes else None,
                                                  size, chip.product.name, upsample)
            planes.append(values)
    return np.stack(planes), crs, read_bounds, parcel


def stretch(values: np.ndarray, low: float = 2, high: float = 98, *, percentiles: bool = True) -> np.ndarray:
    """Scale *values* to 0..255 between *low* and *high*, NaN to 0.

    *low* and *high* are percentiles of the finite values, or values themselves with ``percentiles=False``.
    """
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(valid, [low, high]) if percentiles else (low, high)
    scaled = (values - lo) / (hi - lo if hi > lo else 1.0) * 255
    out: np.ndarray = np.nan_to_num(np.clip(scaled, 0, 255), nan=0).astype(np.uint8)
    return out


def _rgba(planes: np.ndarray, parcel: dict[str, Any], bounds: tuple[float, float, float, float],
          limits: tuple[float, float] | None = None) -> np.ndarray:
    """RGBA of 1-3 band planes with the parcel outline; each band stretched over its own 2-98 % or all over *limits*."""
    n, height, width = planes.shape
    rgb = np.stack([stretch(planes[i]) if limits is None else stretch(planes[i], *limits, percentiles=False)
                    for i in range(n)])
    if n == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    elif n == 2:
        rgb = np.stack([rgb[0], rgb[1], rgb[0]])
    alpha = np.where(np.all(np.isnan(planes), axis=0), 0, 255).astype(np.uint8)
    outline = rasterize([shape(parcel).boundary], out_shape=(height, width), all_touched=True,
                        transform=from_bounds(*bounds, width, height), dtype="uint8")
    rgb[:, outline == 1] = _OUTLINE[:, None]
    alpha[outline == 1] = 255
    rgba: np.ndarray = np.concatenate([rgb[:3], alpha[None]])
    return rgba


def png_bytes(rgba: np.ndarray) -> bytes:
    """Encode a (4, height, width) uint8 RGBA array as PNG."""
    with warnings.catch_warnings(), MemoryFile() as mem:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture, georeferenced by the request
        with mem.open(driver="PNG", width=rgba.shape[2], height=rgba.shape[1], count=4, dtype="uint8") as out:
            out.write(rgba)
        return bytes(mem.read())


def render_chip(chip: ChipSource, store: Store, band_names: Sequence[str], *, size: int = 256,
                buffer_m: float = 50.0, fmt: str = "png") -> bytes:
    """Cut *band_names* of the chip's product around its parcel; return PNG or GeoTIFF bytes.

    Args:
        chip: product and parcel (:func:`chip_source`).
        store: the object store holding the product's files.
        band_names: 1 to 3 bands (3 = red, green, blue).
        size: the longer side in pixels at most (decimated read), 16..MAX_CHIP_PX.
        buffer_m: margin around the parcel's bounding box, in the raster CRS's units (metres).
        fmt: ``png`` or ``tif``.

    Raises:
        ApiInputError: a band the product does not have, or bands in different CRSs.
        BandError, CorruptProductError, TransientError: the files cannot be read.
    """
    planes, crs, bounds, parcel = _cut(chip, store, band_names, size=size, buffer_m=buffer_m)
    if fmt == "tif":
        _, height, width = planes.shape
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=width, height=height, count=planes.shape[0], dtype="float32",
                          crs=crs, transform=from_bounds(*bounds, width, height), nodata=float("nan"),
                          compress="deflate") as out:
                out.write(planes.astype(np.float32))
                for i, name in enumerate(band_names, start=1):
                    out.set_band_description(i, name)
            return bytes(mem.read())
    return png_bytes(_rgba(planes, parcel, bounds))


def display_bands(product: Product, store: Store) -> tuple[str, ...]:
    """The bands a picture of *product* shows: true colour, else false colour, else its first band.

    True colour is B04 B03 B02, false colour B08 B04 B03; one band is grey (Sentinel-1 VV, a single-band image).

    Raises:
        ApiInputError: the product has no band to show (only class bands such as SCL).
    """
    names = [b.name for b in product_bands(product, store=store) if not b.categorical]
    for choice in (("B04", "B03", "B02"), ("B08", "B04", "B03")):
        if set(choice) <= set(names):
            return choice
    if not names:
        raise ApiInputError(f"product {product.product_type} {product.name} has no band to show")
    return (names[0],)


def render_comparable(chips: Sequence[ChipSource], store: Store, band_names: Sequence[str], *,
                      size: int = 192, buffer_m: float = 50.0) -> list[bytes]:
    """Render *chips* (one parcel, several dates) as PNGs with one stretch for all of them.

    The bands are stretched between the 2nd and 98th percentile of their values over every chip together,
    so that a change between two dates (a cut: the parcel turns from green to the brown of stubble)
    shows as it is, where a stretch per chip would make each picture look alike. A small parcel's window
    is enlarged to about *size* pixels (pixels repeated), so that its outline stays thin.
    """
    cut = [_cut(chip, store, band_names, size=size, buffer_m=buffer_m, upsample=True) for chip in chips]
    # one stretch for the bands too: red, green and blue keep their ratios (grass green, stubble brown)
    pooled = np.concatenate([planes.ravel() for planes, *_ in cut])
    pooled = pooled[np.isfinite(pooled)]
    low, high = (float(np.percentile(pooled, 2)), float(np.percentile(pooled, 98))) if pooled.size else (0.0, 1.0)
    return [png_bytes(_rgba(planes, parcel, bounds, (low, high))) for planes, _, bounds, parcel in cut]


def render_strip(chips: Sequence[ChipSource], store: Store, band_names: Sequence[str], *, size: int = 128,
                 buffer_m: float = 50.0) -> tuple[bytes, list[tuple[int, datetime]]]:
    """Render one chip per product side by side (the inspector's calendar view) as one PNG.

    Returns:
        The PNG and (product_id, acquisition time) of each chip, left to right.
    """
    tiles: list[np.ndarray] = []
    for chip in chips:
        planes, _, bounds, parcel = _cut(chip, store, band_names, size=size, buffer_m=buffer_m)
        tiles.append(_rgba(planes, parcel, bounds))
    if not tiles:
        raise NotFoundError("no image in the date range")
    height = max(t.shape[1] for t in tiles)
    gap = 2
    width = sum(t.shape[2] for t in tiles) + gap * (len(tiles) - 1)
    strip = np.zeros((4, height, width), np.uint8)
    x = 0
    for tile in tiles:
        strip[:, : tile.shape[1], x : x + tile.shape[2]] = tile
        x += tile.shape[2] + gap
    return png_bytes(strip), [(c.product_id, c.product.acquired_at) for c in chips]
