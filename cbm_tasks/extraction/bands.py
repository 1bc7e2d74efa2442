"""Band descriptors: where one band of a product is and how its numbers decode (:class:`BandSource`).

Bands come from the catalogue record's ``attributes["bands"]`` (local catalogue, STAC), used
as given (:func:`bands_from_descriptors`), or from a single raster file (GeoTIFF/COG, single
or multi-band, e.g. CARD coherence with VV and VH): band names from the band descriptions
(else, for a one-band file, the band its name names, else ``b1..bn``), nodata, scale and offset
from the file (:func:`raster_file_bands`).
Sentinel-2 SAFE folders are read by ``s2_safe``; ``sources.product_bands`` picks the reader.

Physical value = DN * scale + offset; ``nodata`` DNs are excluded. Nothing is assumed: a
value the product does not document is 1 (scale), 0 (offset) or None (nodata).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import rasterio

from cbm_tasks.errors import BandError
from cbm_tasks.extraction.raster_io import RasterStore, open_raster

__all__ = ["CATEGORICAL_BANDS", "SCL_CLASSES", "BandSource", "bands_from_descriptors", "canonical_band",
           "digital_number_bands", "raster_file_bands", "renamed", "with_decoding"]

SCL_CLASSES = 12  # Sentinel-2 scene classification: 0 no data .. 11 snow
# bands counted per class rather than measured, by name: their number of classes
CATEGORICAL_BANDS = {"SCL": SCL_CLASSES}


@dataclass(frozen=True, slots=True)
class BandSource:
    """Where one band of a product is and how its numbers decode.

    Attributes:
        name: band name as stored in cbm.extraction.bands (``B04``, ``VV``, ``SCL``).
        href: absolute local path or URI (``s3://...``) of the file holding the band.
        band_index: 1-based band index in that file.
        nodata: DN that marks a missing pixel, or None (every pixel valid, NaN excepted).
        scale, offset: physical = DN * scale + offset.
        resolution_m: pixel size in metres as documented, or None when unknown.
        categorical: class codes (counted per class) rather than a measurement.
        n_classes: number of classes (codes 0..n-1) of a categorical band.
    """

    name: str
    href: str
    band_index: int = 1
    nodata: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    resolution_m: float | None = None
    categorical: bool = False
    n_classes: int | None = None

    def __post_init__(self) -> None:
        if self.band_index < 1:
            raise BandError(f"band {self.name} in {self.href}: band index must be >= 1, got {self.band_index}")
        if not (math.isfinite(self.scale) and self.scale != 0 and math.isfinite(self.offset)):
            raise BandError(
                f"band {self.name} in {self.href}: scale must be finite and non-zero and offset finite, "
                f"got scale={self.scale} offset={self.offset}"
            )
        if self.categorical and (self.n_classes is None or self.n_classes < 1):
            raise BandError(f"band {self.name} in {self.href}: a categorical band needs n_classes >= 1")

    def descriptor(self) -> dict[str, Any]:
        """Return the band as a catalogue descriptor (the inverse of :func:`bands_from_descriptors`)."""
        return {"name": self.name, "href": self.href, "band": self.band_index, "nodata": self.nodata,
                "scale": self.scale, "offset": self.offset, "resolution_m": self.resolution_m,
                "categorical": self.categorical, "n_classes": self.n_classes}

    def params(self) -> dict[str, Any]:
        """Return the decoding parameters as stored in cbm.extraction.params (JSON)."""
        return {
            "href": self.href,
            "band_index": self.band_index,
            "nodata": self.nodata,
            "scale": self.scale,
            "offset": self.offset,
            "resolution_m": self.resolution_m,
            "categorical": self.categorical,
            "n_classes": self.n_classes,
        }


def _nodata(value: object) -> float | None:
    """Return a descriptor's nodata as a number; NaN (STAC writes "nan") means none, as NaN is always invalid."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]  # str or number; a bad one is caught as malformed
    return None if math.isnan(number) else number


def bands_from_descriptors(descriptors: Sequence[Mapping[str, Any]], *, product: str) -> tuple[BandSource, ...]:
    """Turn catalogue band descriptors (``attributes["bands"]`` of a product) into BandSource records.

    Raises:
        BandError: a descriptor lacks ``name`` or ``href``, or has a value of the wrong type,
            or two descriptors share a name.
    """
    bands: list[BandSource] = []
    for position, desc in enumerate(descriptors):
        if not isinstance(desc, Mapping) or not desc.get("name") or not desc.get("href"):
            raise BandError(f"product {product}: band descriptor {position} needs 'name' and 'href', got {desc!r}")
        try:
            categorical = bool(desc.get("categorical") or False)
            n_classes = desc.get("n_classes")
            bands.append(
                BandSource(
                    name=str(desc["name"]),
                    href=str(desc["href"]),
                    band_index=int(desc.get("band") or 1),
                    nodata=_nodata(desc.get("nodata")),
                    scale=float(1.0 if desc.get("scale") is None else desc["scale"]),
                    offset=float(desc.get("offset") or 0.0),
                    resolution_m=None if desc.get("resolution_m") is None else float(desc["resolution_m"]),
                    categorical=categorical,
                    n_classes=None if n_classes is None else int(n_classes),
                )
            )
        except (TypeError, ValueError) as err:
            raise BandError(f"product {product}: band descriptor {desc.get('name')!r} is malformed: {err}") from err
    _check_unique(bands, product)
    return tuple(bands)


def _check_unique(bands: Sequence[BandSource], product: str) -> None:
    names = [b.name for b in bands]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BandError(f"product {product}: band names must be unique, {', '.join(duplicates)} repeated")


def _band_number(tags: Mapping[str, str], *keys: str) -> float | None:
    lowered = {k.lower(): v for k, v in tags.items()}
    for key in keys:
        if key in lowered:
            try:
                return float(lowered[key])
            except ValueError:
                return None
    return None


# Band files are named after their band: CDSE and SAFE ``T33UWP_20240601T100031_B04_10m.jp2``, Earth Search
# ``B04.tif`` or (STAC common names) ``red.tif``, JRC's chips ``<product>.B04.tif``, CARD ``..._VV.tif``
_BAND_TOKEN = re.compile(r"B(?:0[1-9]|1[0-2]|8A)|SCL|VV|VH", re.IGNORECASE)
_COMMON_NAMES = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
                 "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "swir16": "B11", "swir22": "B12",
                 "scl": "SCL"}


def band_from_file_name(href: str) -> str | None:
    """The band a file's name names (``B04``, ``B8A``, ``SCL``, ``VV``; ``red`` -> ``B04``), None if none or several.

    A one-band GeoTIFF without a band description would otherwise be ``b1``, and the markers would not
    know its red from its NIR when a product's bands come as one file each.
    """
    stem = PurePosixPath(href.split("?", 1)[0]).name.rsplit(".", 1)[0]
    found = {token.upper() if _BAND_TOKEN.fullmatch(token) else _COMMON_NAMES.get(token.lower())
             for token in re.split(r"[._\-\s]+", stem)}
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def raster_file_bands(href: str, *, store: RasterStore, product: str | None = None) -> tuple[BandSource, ...]:
    """Return every band of a single raster file (GeoTIFF/COG), in file order.

    Names: band descriptions, else, for a one-band file, the band its file name names
    (:func:`band_from_file_name`), else ``b1..bn``; a band named SCL is categorical (12 classes).
    Nodata: the file's nodata value. Scale/offset: GDAL's band scale/offset, else the band
    tags ``scale_factor``/``add_offset``.

    Args:
        href: local path or URI of the file.
        store: the store it is read through.
        product: product name for error messages.

    Raises:
        BandError: the file does not exist.
        CorruptProductError: it cannot be opened as a raster.
    """
    with rasterio.Env(**store.rasterio_env()), open_raster(href, store=store, product=product) as dataset:
        bands = []
        resolution = abs(float(dataset.transform.a)) if dataset.crs is not None else None
        for index in range(1, dataset.count + 1):
            name = dataset.descriptions[index - 1] or (
                band_from_file_name(href) if dataset.count == 1 else None) or f"b{index}"
            tags = dataset.tags(index)
            scale, offset = float(dataset.scales[index - 1]), float(dataset.offsets[index - 1])
            if scale == 1.0 and offset == 0.0:
                scale = _band_number(tags, "scale_factor", "scale") or 1.0
                offset = _band_number(tags, "add_offset", "offset") or 0.0
            nodata = dataset.nodatavals[index - 1]
            n_classes = CATEGORICAL_BANDS.get(name.upper())
            bands.append(BandSource(
                name=name, href=href, band_index=index,
                nodata=None if nodata is None or math.isnan(nodata) else float(nodata),
                scale=scale, offset=offset, resolution_m=resolution,
                categorical=n_classes is not None, n_classes=n_classes,
            ))
    _check_unique(bands, href)
    return tuple(bands)


def canonical_band(name: str) -> str:
    """A band name as the markers read it: ``b4``, ``B4`` and ``red`` are ``B04``, ``vv`` is ``VV``; others as given."""
    text = name.strip()
    upper = text.upper()
    if re.fullmatch(r"B[1-9]", upper):
        return f"B0{upper[1]}"
    if _BAND_TOKEN.fullmatch(upper):
        return upper
    return _COMMON_NAMES.get(text.lower(), text)


def renamed(bands: Sequence[BandSource], names: Sequence[str], *, image: str) -> tuple[BandSource, ...]:
    """Return a file's *bands* (in file order) under the user's *names* (``cbm extract --bands``).

    Names are made canonical (:func:`canonical_band`); a band named SCL is categorical.

    Raises:
        BandError: not one name per band, or a name given twice.
    """
    if len(names) != len(bands):
        raise BandError(f"image {image}: --bands names {len(names)} band{'s' if len(names) != 1 else ''}, the file "
                        f"has {len(bands)} ({', '.join(band.name for band in bands)})")
    out = []
    for band, given in zip(bands, names, strict=True):
        name = canonical_band(given)
        n_classes = CATEGORICAL_BANDS.get(name.upper())
        out.append(dataclasses.replace(band, name=name, categorical=n_classes is not None, n_classes=n_classes))
    _check_unique(out, image)
    return tuple(out)


def with_decoding(bands: Sequence[BandSource], *, scale: float | None = None, offset: float | None = None,
                  like: Sequence[Mapping[str, Any]] = ()) -> tuple[BandSource, ...]:
    """Return *bands* with the decoding of their measurements completed.

    *scale* and *offset* (given by the user: ``cbm extract --scale/--offset``) replace those of every
    measurement band; categorical bands (SCL) keep theirs. Else a band the file leaves undecoded
    (scale 1, offset 0; nodata None) takes them from the catalogue descriptor of the same name in
    *like*: a local copy of a catalogued product decodes as the product does (Earth Search's COGs
    carry their scale and offset in the STAC item only).

    Raises:
        BandError: a scale that is zero or not finite, an offset that is not finite.
    """
    known = {str(desc.get("name")): desc for desc in like if isinstance(desc, Mapping)}
    out = []
    for band in bands:
        if band.categorical:
            out.append(band)
            continue
        new_scale, new_offset, nodata = band.scale, band.offset, band.nodata
        desc = known.get(band.name)
        if desc is not None and (band.scale, band.offset) == (1.0, 0.0):
            new_scale = float(1.0 if desc.get("scale") is None else desc["scale"])
            new_offset = float(desc.get("offset") or 0.0)
        if desc is not None and nodata is None:
            nodata = _nodata(desc.get("nodata"))
        new_scale = new_scale if scale is None else scale
        new_offset = new_offset if offset is None else offset
        out.append(dataclasses.replace(band, scale=new_scale, offset=new_offset, nodata=nodata))
    return tuple(out)


# Sentinel-2's reflectance bands: every ESA product (L1C, L2A) stores them as integers, reflectance x 10000
_S2_REFLECTANCE = re.compile(r"B(?:0[1-9]|1[0-2]|8A)", re.IGNORECASE)


def digital_number_bands(bands: Sequence[BandSource], *, store: RasterStore, product: str | None = None) -> list[str]:
    """Return the names of the Sentinel-2 reflectance bands held as integers without a scale (digital numbers).

    Their statistics would be stored as DNs (x 10000, and without the offset of processing baseline
    04.00 and later), which the markers cannot read as reflectance.
    """
    undecoded = [band for band in bands if not band.categorical and _S2_REFLECTANCE.fullmatch(canonical_band(band.name))
                 and (band.scale, band.offset) == (1.0, 0.0)]  # B4 and red too (Earth Engine, STAC asset keys)
    found = []
    for href in dict.fromkeys(band.href for band in undecoded):
        with rasterio.Env(**store.rasterio_env()), open_raster(href, store=store, product=product) as dataset:
            dtypes = dataset.dtypes
        found += [band.name for band in undecoded
                  if band.href == href and band.band_index <= len(dtypes)
                  and np.issubdtype(np.dtype(dtypes[band.band_index - 1]), np.integer)]
    return found
