"""Orthophoto backgrounds around a location (JRC's backgroundByLocation): the agency's own imagery, warped to metres.

A deployment names its background sources (``tms``) and gives each as anything GDAL opens: a GDAL
WMS/TMS/WMTS service description (an XML file, as JRC's ``config/tms/*.xml``, or a ``WMTS:`` string),
a national orthophoto COG on a web server (``/vsicurl/https://...``) or in the object store, a VRT
mosaic. Names and sources come from the deployment's settings (:func:`parse_backgrounds`), never
from a request. A background is ``extend_m`` metres a side, centred on the location, warped
(bilinear) to the local UTM zone at ``size_px`` pixels: PNG (RGBA, nodata transparent) or GeoTIFF
(the source's values, bands and data type, with the UTM CRS).
"""

from __future__ import annotations

import json
import re

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points

from cbm_tasks.api.chips import png_bytes, stretch
from cbm_tasks.errors import ConfigError, TransientError

__all__ = ["MAX_EXTEND_M", "MAX_SIZE_PX", "parse_backgrounds", "render_background"]

MAX_SIZE_PX = 2048
MAX_EXTEND_M = 10_000.0
_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


def parse_backgrounds(text: str | None, *, where: str) -> dict[str, str]:
    """Return ``{name: GDAL source}`` from the JSON object *text* (names lower case); {} for None or empty.

    Raises:
        ConfigError: not a JSON object of names (``[a-z0-9_-]``, 1-32) to non-empty strings; *where* names the setting.
    """
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object of background name -> GDAL source")
    out: dict[str, str] = {}
    for name, source in value.items():
        if not _NAME.match(str(name).lower()) or not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where}: background {str(name)[:40]!r} needs a name of [a-z0-9_-] (1-32) and a "
                              "non-empty GDAL source (path, URL, WMS XML file, WMTS: string)")
        out[str(name).lower()] = source.strip()
    return out


def _utm(lon: float, lat: float) -> str:
    zone = min(60, int((lon + 180) // 6) + 1)
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def render_background(name: str, source: str, lon: float, lat: float, *, extend_m: float, size_px: int,
                      fmt: str) -> bytes:
    """Warp ``extend_m`` metres of *source* around (*lon*, *lat*) to *size_px* pixels; PNG or GeoTIFF bytes.

    Raises:
        TransientError: the source (a web service, a remote file) cannot be read now.
    """
    crs = _utm(lon, lat)
    xs, ys = transform_points("EPSG:4326", crs, [lon], [lat])
    half = extend_m / 2
    transform = from_bounds(xs[0] - half, ys[0] - half, xs[0] + half, ys[0] + half, size_px, size_px)
    try:
        with rasterio.Env(GDAL_HTTP_TIMEOUT="30", GDAL_HTTP_MAX_RETRY="2"), rasterio.open(source) as src:
            with WarpedVRT(src, crs=crs, transform=transform, width=size_px, height=size_px,
                           resampling=Resampling.bilinear) as vrt:
                count = min(src.count, 4 if fmt == "tif" else 3)
                values = vrt.read(list(range(1, count + 1)))
                valid = vrt.read_masks(1) > 0
                dtype, nodata = src.dtypes[0], src.nodata
    except RasterioError as err:  # an unreachable service or file: try later (the source is the deployment's)
        raise TransientError(f"background {name!r} cannot be read: {str(err).splitlines()[0][:200]}") from err
    if fmt == "tif":
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=size_px, height=size_px, count=count, dtype=dtype, crs=crs,
                          transform=transform, nodata=nodata, compress="deflate") as out:
                out.write(values)
                out.update_tags(BACKGROUND=name)
            return bytes(mem.read())
    if dtype == "uint8":
        rgb = values
    else:  # e.g. 16-bit orthophotos: stretched per band
        planes = values.astype(np.float64)
        planes[:, ~valid] = np.nan
        rgb = np.stack([stretch(p) for p in planes])
    rgb = rgb if count == 3 else np.repeat(rgb[:1], 3, axis=0)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return png_bytes(np.concatenate([rgb.astype(np.uint8), alpha[None]]))
