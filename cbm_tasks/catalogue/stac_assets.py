"""STAC item fields -> Product fields, shared by the STAC and the local catalogue clients.

The band descriptors written here (``Product.attributes["bands"]``, format in ARCHITECTURE.md)
are what the extraction reads, so nodata, scale and offset come from the item's
``raster:bands`` (STAC 1.0) or ``bands`` (STAC 1.1), never from assumptions, with one
documented exception: the S2 scene classification (SCL) is categorical with 12 classes.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

__all__ = ["S2_COMMON_NAMES", "band_descriptors", "normalise_platform", "orbit_direction", "tile_code"]

# Earth Search names S2 assets by common name; the extraction and the markers use band ids.
S2_COMMON_NAMES = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}
_SCL_CLASSES = 12  # SCL values 0..11 (0 = no data)
_BAND_ID_RE = re.compile(r"^(B\d{2}|B8A|SCL|AOT|WVP|TCI|VV|VH|HH|HV)$", re.IGNORECASE)
_ASSET_SUFFIX_RE = re.compile(r"([_-](\d+m|jp2|cog|tif))+$", re.IGNORECASE)


def normalise_platform(value: Any) -> str | None:
    """``sentinel-2a`` / ``Sentinel-1B`` / ``S2A`` -> ``S2A``; other platforms unchanged; None if absent."""
    if not isinstance(value, str) or not value:
        return None
    match = re.fullmatch(r"(?:sentinel-?|s)(\d)([a-d])", value.strip(), re.IGNORECASE)
    return f"S{match.group(1)}{match.group(2).upper()}" if match else value


def orbit_direction(value: Any) -> str | None:
    """``ascending``/``descending`` (any case) -> upper case; None if absent.

    Raises:
        ValueError: any other value.
    """
    if value is None:
        return None
    direction = str(value).upper()
    if direction not in ("ASCENDING", "DESCENDING"):
        raise ValueError(f"orbit state must be ascending or descending, got {value!r}")
    return direction


def tile_code(properties: Mapping[str, Any]) -> str | None:
    """MGRS tile ``31UDS`` from ``grid:code`` (``MGRS-31UDS``), ``s2:tile_id`` or the ``mgrs:*`` triple."""
    grid = properties.get("grid:code")
    if isinstance(grid, str) and grid.upper().startswith("MGRS-"):
        return grid[5:].upper()
    parts = (properties.get("mgrs:utm_zone"), properties.get("mgrs:latitude_band"), properties.get("mgrs:grid_square"))
    if all(part is not None for part in parts):
        return f"{int(parts[0]):02d}{parts[1]}{parts[2]}".upper()  # type: ignore[arg-type]
    return None


def band_descriptors(assets: Mapping[str, Mapping[str, Any]], *, base_href: str | None) -> list[dict[str, Any]]:
    """Return one descriptor per band of the ``data`` assets, one asset per band name.

    When several assets carry the same band (CDSE: ``B02_10m``/``B02_20m``/``B02_60m``; Earth
    Search: ``blue``/``blue-jp2``) the finest resolution wins, then a GeoTIFF over JPEG2000
    (COGs can be read with range requests).

    Args:
        assets: the item's ``assets`` object.
        base_href: URL or absolute path that relative hrefs are resolved against (the item
            file's folder, with a trailing slash); None to keep hrefs as they are.

    Returns:
        Descriptors ``{"name", "href", "band", "nodata", "scale", "offset", "resolution_m",
        "categorical", "n_classes"}`` sorted by name.

    Raises:
        ValueError: a data asset has no ``href``; names the asset.
    """
    best: dict[str, tuple[tuple[float, int], dict[str, Any]]] = {}
    for key, asset in assets.items():
        if "data" not in (asset.get("roles") or []):
            continue
        href = asset.get("href")
        if not isinstance(href, str) or not href:
            raise ValueError(f"asset {key!r}: missing field 'href'")
        full_href = _resolve(href, base_href)
        specs = _band_specs(asset)
        names = _band_names(key, asset, len(specs))
        classes = asset.get("classification:classes")
        for index, (spec, name) in enumerate(zip(specs, names, strict=True), start=1):
            descriptor = _descriptor(name, full_href, index, spec, asset, classes)
            rank = (descriptor["resolution_m"] or 1e9, 0 if full_href.lower().endswith((".tif", ".tiff")) else 1)
            if name not in best or rank < best[name][0]:
                best[name] = (rank, descriptor)
    return [best[name][1] for name in sorted(best)]


def _resolve(href: str, base_href: str | None) -> str:
    if base_href is None or urlsplit(href).scheme or href.startswith("/"):
        return href
    if urlsplit(base_href).scheme in ("http", "https", "s3"):
        return urljoin(base_href, href)
    return posixpath.normpath(posixpath.join(base_href, href))


def _band_specs(asset: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    for field in ("raster:bands", "bands"):
        specs = asset.get(field)
        if isinstance(specs, list) and specs and all(isinstance(spec, dict) for spec in specs):
            return specs
    return [{}]  # a single-band asset described only at asset level


def _band_names(key: str, asset: Mapping[str, Any], n_bands: int) -> list[str]:
    named = asset.get("eo:bands") or asset.get("bands") or []
    names = [spec.get("name") if isinstance(spec, dict) else None for spec in named]
    base = _ASSET_SUFFIX_RE.sub("", key)
    if n_bands == 1:
        candidates = [names[0] if names else None, base]
        for candidate in candidates:
            if isinstance(candidate, str) and candidate:
                band = _band_id(candidate)
                if band is not None:
                    return [band]
        return [base]
    if len(names) == n_bands and all(isinstance(name, str) and name for name in names):
        return [_band_id(str(name)) or str(name) for name in names]
    return [f"{base}_{index}" for index in range(1, n_bands + 1)]


def _band_id(name: str) -> str | None:
    if _BAND_ID_RE.match(name):
        return name.upper()
    return S2_COMMON_NAMES.get(name.lower())


def _first(spec: Mapping[str, Any], asset: Mapping[str, Any], *fields: str) -> Any:
    for source in (spec, asset):
        for field in fields:
            if source.get(field) is not None:
                return source[field]
    return None


def _descriptor(
    name: str, href: str, index: int, spec: Mapping[str, Any], asset: Mapping[str, Any], classes: Any
) -> dict[str, Any]:
    scale = _first(spec, asset, "scale", "raster:scale")
    offset = _first(spec, asset, "offset", "raster:offset")
    resolution = _first(spec, asset, "spatial_resolution", "raster:spatial_resolution", "gsd")
    categorical = False
    n_classes: int | None = None
    if isinstance(classes, list) and classes:
        categorical = True
        n_classes = max(int(item["value"]) for item in classes if isinstance(item, dict) and "value" in item) + 1
    elif name == "SCL":
        categorical, n_classes = True, _SCL_CLASSES
    return {
        "name": name,
        "href": href,
        "band": index,
        "nodata": _first(spec, asset, "nodata", "raster:nodata"),
        "scale": float(scale) if scale is not None else 1.0,
        "offset": float(offset) if offset is not None else 0.0,
        "resolution_m": float(resolution) if resolution is not None else None,
        "categorical": categorical,
        "n_classes": n_classes,
    }
