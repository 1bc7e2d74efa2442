"""Write a local catalogue (STAC 1.0 items next to their COGs) and parcel GeoPackages.

Used by the built-in demo (:mod:`cbm_tasks.demo.data`, :mod:`cbm_tasks.demo.synthetic`); the
format is the local catalogue (ARCHITECTURE.md, "Formats") that :mod:`cbm_tasks.catalogue.local` reads.

Every file is written to a temporary name in its folder and moved into place with ``os.replace``;
a file whose new content equals the old one is left untouched (same bytes, same mtime), so a
rebuild is cheap and never exposes a half-written file to a reader.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import rasterio
from affine import Affine
from pyogrio import raw as ogr_raw
from pyproj import Transformer
from shapely.geometry import MultiPolygon

__all__ = [
    "SCL_CLASSES",
    "BandFile",
    "footprint",
    "raster_asset",
    "stac_item",
    "write_cog",
    "write_json",
    "write_parcels",
    "write_product",
    "write_text",
]

# Scene classification (L2A SCL) classes 0..11; names follow the classification extension rules.
SCL_CLASSES = (
    (0, "no_data", "No data"),
    (1, "saturated", "Saturated or defective"),
    (2, "dark_shadow", "Dark area pixels / topographic shadow"),
    (3, "cloud_shadow", "Cloud shadow"),
    (4, "vegetation", "Vegetation"),
    (5, "not_vegetated", "Not vegetated"),
    (6, "water", "Water"),
    (7, "unclassified", "Unclassified"),
    (8, "cloud_medium", "Cloud, medium probability"),
    (9, "cloud_high", "Cloud, high probability"),
    (10, "thin_cirrus", "Thin cirrus"),
    (11, "snow", "Snow or ice"),
)
_EXTENSIONS = {
    name: f"https://stac-extensions.github.io/{name}/{version}/schema.json"
    for name, version in (
        ("projection", "v1.1.0"),
        ("raster", "v1.1.0"),
        ("classification", "v1.1.0"),
        ("eo", "v1.1.0"),
        ("view", "v1.0.0"),
        ("grid", "v1.1.0"),
        ("processing", "v1.1.0"),
        ("sat", "v1.0.0"),
        ("sar", "v1.0.0"),
    )
}
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def _replace_if_changed(tmp: Path, path: Path) -> bool:
    """Move ``tmp`` onto ``path`` unless ``path`` already has the same bytes; return True if replaced."""
    if path.is_file() and path.stat().st_size == tmp.stat().st_size and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
        return False
    os.replace(tmp, path)
    return True


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_cog(
    path: Path,
    array: np.ndarray,
    *,
    transform: Affine,
    epsg: int,
    nodata: float | None,
    scale: float = 1.0,
    offset: float = 0.0,
    band_name: str,
    overviews: bool = True,
) -> bool:
    """Write one band as a deflate-compressed Cloud-Optimised GeoTIFF, atomically.

    Scale and offset go into the GeoTIFF metadata too, so GDAL tools show physical values.
    ``overviews=False`` leaves out the reduced-resolution copies (about a third more bytes and
    twice the writing time on a full tile); the extraction reads full resolution only.

    Returns:
        True if the file was created or changed, False if it already held these bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    height, width = array.shape
    profile = {
        "driver": "COG",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": array.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "nodata": nodata,
        "compress": "DEFLATE",
        # Horizontal differencing: smaller files, and several times faster deflate on noisy images.
        "predictor": 3 if array.dtype.kind == "f" else 2,
        "blocksize": 256,
        "overview_resampling": "nearest",
    }
    if not overviews:
        profile["overviews"] = "NONE"
    try:
        with rasterio.open(tmp, "w", **profile) as dataset:
            dataset.write(array, 1)
            dataset.set_band_description(1, band_name)
            dataset.scales = (scale,)
            dataset.offsets = (offset,)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _replace_if_changed(tmp, path)


def write_json(path: Path, document: Mapping[str, Any]) -> bool:
    """Write a JSON document (sorted keys, NaN refused) atomically; return True if it changed."""
    return write_text(path, json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> bool:
    """Write a UTF-8 text file atomically; return True if it was created or changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_text(text, encoding="utf-8")
    return _replace_if_changed(tmp, path)


def write_parcels(
    path: Path, *, layer: str, geometries: Sequence[MultiPolygon], columns: Mapping[str, np.ndarray], epsg: int
) -> bool:
    """Write parcels to a GeoPackage (MultiPolygon, ``epsg``), atomically.

    A GeoPackage records its write time, so bytes differ between runs; the content hash is kept
    in the layer metadata (``cbm_content_sha256``) and an existing file with the same hash is kept.

    Returns:
        True if the file was created or changed.
    """
    wkb = np.array([geometry.wkb for geometry in geometries], dtype=object)
    digest = hashlib.sha256()
    for blob in wkb:
        digest.update(blob)
    for name, values in columns.items():
        digest.update(name.encode())
        digest.update(json.dumps([value.item() if hasattr(value, "item") else value for value in values]).encode())
    content_hash = f"{digest.hexdigest()}:{layer}:{epsg}"
    if path.is_file():
        metadata = pyogrio.read_info(path, layer=layer).get("layer_metadata") or {}
        if metadata.get("cbm_content_sha256") == content_hash:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.unlink(missing_ok=True)
    try:
        ogr_raw.write(
            tmp,
            wkb,
            list(columns.values()),
            list(columns),
            layer=layer,
            driver="GPKG",
            geometry_type="MultiPolygon",
            crs=f"EPSG:{epsg}",
            layer_metadata={"cbm_content_sha256": content_hash},
        )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return True


def footprint(bounds: tuple[float, float, float, float], *, epsg: int, points_per_edge: int = 8) -> dict[str, Any]:
    """Return the GeoJSON Polygon (EPSG:4326, lon/lat, counter-clockwise) of projected bounds.

    Edges are densified so the footprint follows the projected rectangle on large AOIs.
    """
    left, bottom, right, top = bounds
    steps = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)
    xs = np.concatenate(
        [
            left + (right - left) * steps,
            np.full_like(steps, right),
            right - (right - left) * steps,
            np.full_like(steps, left),
            [left],
        ]
    )
    ys = np.concatenate(
        [
            np.full_like(steps, bottom),
            bottom + (top - bottom) * steps,
            np.full_like(steps, top),
            top - (top - bottom) * steps,
            [bottom],
        ]
    )
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [ring]}


def raster_asset(
    href: str,
    *,
    title: str,
    nodata: float | str | None,
    scale: float,
    offset: float,
    data_type: str,
    resolution_m: float,
    shape: tuple[int, int],
    transform: Affine,
    classes: Sequence[tuple[int, str, str]] | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    """Return a STAC asset for one single-band COG (raster, projection, classification fields)."""
    band: dict[str, Any] = {
        "nodata": nodata,
        "scale": scale,
        "offset": offset,
        "data_type": data_type,
        "spatial_resolution": resolution_m,
    }
    if unit:
        band["unit"] = unit
    asset: dict[str, Any] = {
        "href": href,
        "type": _COG_TYPE,
        "title": title,
        "roles": ["data"],
        "raster:bands": [band],
        "proj:shape": list(shape),
        "proj:transform": list(transform)[:6],
    }
    if classes is not None:
        asset["classification:classes"] = [
            {"value": value, "name": name, "description": text} for value, name, text in classes
        ]
    return asset


def stac_item(
    item_id: str,
    *,
    acquired_at: datetime,
    bounds: tuple[float, float, float, float],
    epsg: int,
    properties: Mapping[str, Any],
    assets: Mapping[str, Mapping[str, Any]],
    extensions: Sequence[str],
) -> dict[str, Any]:
    """Return a STAC 1.0 Item of one product (footprint computed from ``bounds`` in ``epsg``)."""
    geometry = footprint(bounds, epsg=epsg)
    ring = np.array(geometry["coordinates"][0])
    bbox = [round(float(v), 7) for v in (*ring.min(axis=0), *ring.max(axis=0))]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [_EXTENSIONS[name] for name in extensions],
        "id": item_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": acquired_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "proj:epsg": epsg,
            "proj:bbox": list(bounds),
            **properties,
        },
        "links": [],
        "assets": dict(assets),
    }


@dataclass(frozen=True, slots=True)
class BandFile:
    """One band of a product, to be written as a single-band COG named ``<name>.tif``.

    Attributes:
        name: band id (``B04``, ``SCL``, ``VV``); the asset key and file name.
        values: 2-D array in the stored dtype.
        transform: its pixel-corner transform (north-up).
        nodata: stored no-data value; NaN for float bands (the item then says null).
        scale, offset: physical = stored * scale + offset.
        title: asset title.
        classes: (value, name, description) of a categorical band (SCL), else None.
    """

    name: str
    values: np.ndarray
    transform: Affine
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0
    title: str = ""
    classes: Sequence[tuple[int, str, str]] | None = None


def write_product(
    folder: Path,
    item_id: str,
    *,
    bands: Sequence[BandFile],
    acquired_at: datetime,
    epsg: int,
    bounds: tuple[float, float, float, float],
    properties: Mapping[str, Any],
    extensions: Sequence[str],
    overviews: bool = True,
) -> int:
    """Write a product folder: one COG per band, then its STAC item ``<item_id>.json``.

    ``overviews``: as for :func:`write_cog`.

    The item comes last, so a catalogue reader never finds an item whose band files are missing.

    Returns:
        Number of files created or changed (0 when the product was already up to date).
    """
    changed = 0
    assets: dict[str, dict[str, Any]] = {}
    for band in bands:
        changed += write_cog(
            folder / f"{band.name}.tif",
            band.values,
            transform=band.transform,
            epsg=epsg,
            nodata=band.nodata,
            scale=band.scale,
            offset=band.offset,
            band_name=band.name,
            overviews=overviews,
        )
        nodata: float | None = band.nodata
        if band.nodata is not None and math.isnan(band.nodata):
            # NaN marks itself: the band descriptor contract knows a value or null (= NaN only),
            # and the raster extension's "nan" string would reach JSON columns as a bare NaN.
            nodata = None
        elif band.nodata is not None and band.values.dtype.kind in "iu":
            nodata = int(band.nodata)
        assets[band.name] = raster_asset(
            f"{band.name}.tif",
            title=band.title or band.name,
            nodata=nodata,
            scale=band.scale,
            offset=band.offset,
            data_type=band.values.dtype.name,
            resolution_m=band.transform.a,
            shape=band.values.shape,
            transform=band.transform,
            classes=band.classes,
        )
    item = stac_item(
        item_id,
        acquired_at=acquired_at,
        bounds=bounds,
        epsg=epsg,
        properties=properties,
        assets=assets,
        extensions=extensions,
    )
    return changed + write_json(folder / f"{item_id}.json", item)
