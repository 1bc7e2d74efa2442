"""Find the bands of a product: which file, which band in it, and how to decode its numbers.

Three kinds of product are understood:

- a catalogue record whose ``attributes["bands"]`` lists band descriptors (local catalogue,
  STAC; see CONTRACTS.md), used as given;
- a Sentinel-2 L2A SAFE folder: ``GRANULE/*/IMG_DATA/R10m|R20m|R60m/*.jp2``, each band at its
  finest available resolution, with ``BOA_QUANTIFICATION_VALUE`` and (processing baseline
  >= 04.00) ``BOA_ADD_OFFSET`` per band from ``MTD_MSIL2A.xml``;
- a lone GeoTIFF/COG, single or multi-band (e.g. CARD coherence with VV and VH): band names
  from the band descriptions (else ``b1..bn``), nodata, scale and offset from the file.

Physical value = DN * scale + offset; ``nodata`` DNs are excluded. Nothing is assumed: a
value the product does not document is 1 (scale), 0 (offset) or None (nodata).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET  # noqa: S405 - ESA metadata of products we chose to process
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import rasterio
from rasterio.errors import RasterioError

from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import BandError, CbmError, CorruptProductError, NotFoundError, TransientError

__all__ = [
    "S2_BANDS",
    "SCL_CLASSES",
    "BandSource",
    "RasterStore",
    "SafeMetadata",
    "bands_from_descriptors",
    "is_remote",
    "open_raster",
    "product_bands",
    "raster_acquired_at",
    "raster_error",
    "raster_file_bands",
    "read_safe_metadata",
    "safe_bands",
]

# The L2A bands worth extracting per parcel, in output order (B01/B09 are atmospheric bands
# at 60 m, B10 is absent from L2A); SCL is the scene classification (categorical).
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL")
SCL_CLASSES = 12  # 0 no data .. 11 snow
# MTD band_id -> band name (the order of Spectral_Information in MTD_MSIL2A.xml)
_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_SAFE_IMAGE = re.compile(r"^GRANULE/[^/]+/IMG_DATA/R(10|20|60)m/[^/]*_(?P<band>B\d[\dA]|SCL)_(?P<res>\d+)m\.jp2$")
_CATEGORICAL = {"SCL": SCL_CLASSES}


class RasterStore(Protocol):
    """What the extraction needs of an object store (cbm_tasks.store.Store satisfies it)."""

    def gdal_path(self, uri: str) -> str:
        """Return the path GDAL opens for *uri* (local path or /vsis3/...)."""

    def rasterio_env(self) -> dict[str, Any]:
        """Return the GDAL options to pass to ``rasterio.Env``."""

    def exists(self, uri: str) -> bool:
        """Return whether the object exists (TransientError when the store cannot be reached)."""

    def read_bytes(self, uri: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Return the object's bytes (NotFoundError when absent)."""

    def iter_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[Any]:
        """Yield the objects (with a ``uri`` attribute) under *prefix*."""


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


@dataclass(frozen=True, slots=True)
class SafeMetadata:
    """What MTD_MSIL2A.xml says about an L2A product."""

    product_uri: str
    acquired_at: datetime
    processing_baseline: str
    platform: str | None
    relative_orbit: int | None
    footprint_wkt: str | None
    quantification: float
    boa_offsets: Mapping[str, float]  # band name -> BOA_ADD_OFFSET (DN); empty before baseline 04.00


def is_remote(uri: str) -> bool:
    """Tell whether *uri* names an object-store key rather than a local path."""
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def product_bands(product: Product, *, store: RasterStore) -> tuple[BandSource, ...]:
    """Return the bands of *product*, in extraction order.

    Band descriptors in ``product.attributes["bands"]`` win; otherwise ``product.location``
    is opened as a SAFE folder or as a single raster file.

    Raises:
        BandError: a descriptor is malformed, the location holds no band, or is missing.
        CorruptProductError: the metadata or raster cannot be read.
    """
    descriptors = product.attributes.get("bands")
    if descriptors:
        return bands_from_descriptors(descriptors, product=product.name)
    location = product.location
    if location.rstrip("/").upper().endswith(".SAFE") or (
        not is_remote(location) and (_local(location) / "MTD_MSIL2A.xml").exists()
    ):
        return safe_bands(location, store=store)
    return raster_file_bands(location, store=store, product=product.name)


def _nodata(value: object) -> float | None:
    """Return a descriptor's nodata as a number; NaN (STAC writes "nan") means none, as NaN is always invalid."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]  # str or number; a bad one is caught as malformed
    return None if math.isnan(number) else number


def bands_from_descriptors(descriptors: Sequence[Mapping[str, Any]], *, product: str) -> tuple[BandSource, ...]:
    """Turn catalogue band descriptors (CONTRACTS.md) into BandSource records.

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


def _text(root: ET.Element, tag: str) -> str | None:
    element = root.find(f".//{tag}")
    return None if element is None or element.text is None else element.text.strip()


def _footprint_wkt(pos_list: str | None) -> str | None:
    if not pos_list:
        return None
    numbers = [float(v) for v in pos_list.split()]
    if len(numbers) < 8 or len(numbers) % 2:
        return None
    # EXT_POS_LIST is lat lon pairs; WKT wants lon lat
    ring = ", ".join(f"{lon!r} {lat!r}" for lat, lon in zip(numbers[0::2], numbers[1::2], strict=True))
    return f"POLYGON(({ring}))"


def _mtd_root(safe: str, store: RasterStore | None) -> tuple[ET.Element, str]:
    mtd = f"{safe}/MTD_MSIL2A.xml"
    try:
        if is_remote(safe):
            if store is None:
                raise ValueError(f"S2 L2A product {safe} is on an object store: give the store")
            return ET.fromstring(store.read_bytes(mtd)), mtd  # noqa: S314 - see the import
        if not _local(mtd).exists():
            raise CorruptProductError(f"S2 L2A product {safe}: no MTD_MSIL2A.xml (not an L2A SAFE folder?)")
        return ET.parse(_local(mtd)).getroot(), mtd  # noqa: S314 - see the import
    except NotFoundError as err:
        raise CorruptProductError(f"S2 L2A product {safe}: no MTD_MSIL2A.xml (not an L2A SAFE folder?)") from err
    except (OSError, ET.ParseError) as err:
        raise CorruptProductError(f"cannot read S2 metadata {mtd}: {err}") from err


def read_safe_metadata(safe: Path | str, *, store: RasterStore | None = None) -> SafeMetadata:
    """Read acquisition time, baseline, footprint and radiometric decoding of an L2A SAFE.

    Args:
        safe: the .SAFE folder: a local path, or a URI read through *store*.
        store: needed for a URI.

    Raises:
        CorruptProductError: MTD_MSIL2A.xml is missing, unreadable, or lacks the sensing time
            or the quantification value.
        TransientError: the store cannot be reached.
    """
    where = str(safe).rstrip("/")
    root, mtd = _mtd_root(where, store)
    start = _text(root, "PRODUCT_START_TIME")
    quantification = _text(root, "BOA_QUANTIFICATION_VALUE")
    if start is None or quantification is None:
        raise CorruptProductError(f"{mtd}: PRODUCT_START_TIME or BOA_QUANTIFICATION_VALUE missing")
    try:
        acquired_at = datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(UTC)
        offsets = {
            _BAND_IDS[int(el.attrib["band_id"])]: float(el.text or "0") for el in root.iter("BOA_ADD_OFFSET")
        }
        orbit = _text(root, "SENSING_ORBIT_NUMBER")
        platform = _text(root, "SPACECRAFT_NAME")
        return SafeMetadata(
            product_uri=(_text(root, "PRODUCT_URI") or where.rsplit("/", 1)[-1]).removesuffix(".SAFE"),
            acquired_at=acquired_at,
            processing_baseline=_text(root, "PROCESSING_BASELINE") or "",
            platform=None if platform is None else platform.replace("Sentinel-", "S").upper(),
            relative_orbit=None if orbit is None else int(orbit),
            footprint_wkt=_footprint_wkt(_text(root, "EXT_POS_LIST")),
            quantification=float(quantification),
            boa_offsets=offsets,
        )
    except (KeyError, IndexError, ValueError) as err:
        raise CorruptProductError(f"{mtd}: malformed value: {err}") from err


def _safe_images(safe: str, store: RasterStore | None) -> Iterator[tuple[str, str]]:
    """Yield (href, path relative to the SAFE folder) of the files under GRANULE/."""
    if is_remote(safe):
        if store is None:
            raise ValueError(f"S2 L2A product {safe} is on an object store: give the store")
        for info in store.iter_objects(f"{safe}/GRANULE/"):
            yield info.uri, info.uri[len(safe) + 1:]
    else:
        folder = _local(safe)
        for path in sorted(folder.glob("GRANULE/*/IMG_DATA/R*m/*.jp2")):
            yield str(path.resolve()), path.relative_to(folder).as_posix()


def safe_bands(safe: Path | str, *, store: RasterStore | None = None,
               names: Sequence[str] = S2_BANDS) -> tuple[BandSource, ...]:
    """Return the bands *names* of an L2A SAFE folder, each at its finest resolution present.

    Reflectance bands: nodata 0, scale 1/QUANTIFICATION_VALUE, offset
    BOA_ADD_OFFSET/QUANTIFICATION_VALUE (0 when the baseline has no offsets), so that
    physical = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE. SCL: categorical, 12 classes,
    nodata 0. A band absent at every resolution is left out (partial products exist).

    Args:
        safe: the .SAFE folder: a local path, or a URI (``s3://eodata/.../X.SAFE/``) listed and
            read through *store*.
        store: needed for a URI.
        names: the bands wanted, in output order.

    Raises:
        BandError: none of *names* is present.
        CorruptProductError: the metadata cannot be read.
        TransientError: the store cannot be reached.
    """
    where = str(safe).rstrip("/")
    meta = read_safe_metadata(where, store=store)
    found: dict[str, tuple[int, str]] = {}
    for href, relative in _safe_images(where, store):
        match = _SAFE_IMAGE.match(relative)
        if match is None:
            continue
        band, res = match.group("band"), int(match.group("res"))
        if band in names and (band not in found or res < found[band][0]):
            found[band] = (res, href)
    bands = []
    for name in names:
        if name not in found:
            continue
        res, href = found[name]
        if name in _CATEGORICAL:
            bands.append(BandSource(name, href, nodata=0.0, resolution_m=float(res), categorical=True,
                                    n_classes=_CATEGORICAL[name]))
        else:
            q = meta.quantification
            bands.append(BandSource(name, href, nodata=0.0, scale=1.0 / q,
                                    offset=meta.boa_offsets.get(name, 0.0) / q, resolution_m=float(res)))
    if not bands:
        raise BandError(f"S2 L2A product {where}: none of the bands {', '.join(names)} found under GRANULE")
    return tuple(bands)


# GDAL/curl messages of failures that may pass (the object store, not the file, is the problem)
_TRANSIENT = re.compile(r"HTTP response code: (5\d\d|429)|curl error|timed? ?out|Could not resolve|"
                        r"Couldn't connect|Connection (refused|reset)|SSL", re.IGNORECASE)


def _what(href: str, product: str | None, band: str | None) -> str:
    parts = ([f"product {product}"] if product else []) + ([f"band {band}"] if band else [])
    return ": ".join(parts + [f"file {href}"])


def raster_error(err: RasterioError, href: str, *, store: RasterStore, product: str | None = None,
                 band: str | None = None, action: str = "open") -> CbmError:
    """Translate a GDAL error on *href* into the error the pipeline acts on.

    A missing file is a BandError; a network failure on a remote file (HTTP 5xx/429, curl and
    connection errors, or the store itself unreachable) a TransientError, so Airflow retries;
    anything else a CorruptProductError (truncated or not a raster).
    """
    what, text = _what(href, product, band), str(err)
    if is_remote(href):
        if _TRANSIENT.search(text):
            return TransientError(f"{what}: cannot {action} it: {text}")
        if action == "open" and not store.exists(href):  # raises TransientError when the store is unreachable
            return BandError(f"{what} does not exist: {text}")
    elif not _local(href).exists():
        return BandError(f"{what} does not exist")
    return CorruptProductError(f"{what}: cannot {action} it: {text}")


def open_raster(href: str, *, store: RasterStore, product: str | None = None,
                band: str | None = None) -> rasterio.DatasetReader:
    """Open *href* through *store* for reading (call inside ``rasterio.Env(**store.rasterio_env())``).

    Raises:
        BandError: the file does not exist.
        TransientError: a remote file could not be reached.
        CorruptProductError: it exists but cannot be opened as a raster.
    """
    if not is_remote(href) and not _local(href).exists():
        raise BandError(f"{_what(href, product, band)} does not exist")
    try:
        return rasterio.open(store.gdal_path(href))
    except RasterioError as err:
        raise raster_error(err, href, store=store, product=product, band=band) from err


def _band_number(tags: Mapping[str, str], *keys: str) -> float | None:
    lowered = {k.lower(): v for k, v in tags.items()}
    for key in keys:
        if key in lowered:
            try:
                return float(lowered[key])
            except ValueError:
                return None
    return None


def raster_file_bands(href: str, *, store: RasterStore, product: str | None = None) -> tuple[BandSource, ...]:
    """Return every band of a single raster file (GeoTIFF/COG), in file order.

    Names: band descriptions, else ``b1..bn``; a band named SCL is categorical (12 classes).
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
            name = dataset.descriptions[index - 1] or f"b{index}"
            tags = dataset.tags(index)
            scale, offset = float(dataset.scales[index - 1]), float(dataset.offsets[index - 1])
            if scale == 1.0 and offset == 0.0:
                scale = _band_number(tags, "scale_factor", "scale") or 1.0
                offset = _band_number(tags, "add_offset", "offset") or 0.0
            nodata = dataset.nodatavals[index - 1]
            n_classes = _CATEGORICAL.get(name.upper())
            bands.append(BandSource(
                name=name, href=href, band_index=index,
                nodata=None if nodata is None or math.isnan(nodata) else float(nodata),
                scale=scale, offset=offset, resolution_m=resolution,
                categorical=n_classes is not None, n_classes=n_classes,
            ))
    _check_unique(bands, href)
    return tuple(bands)


_TAG_TIMES = ("ACQUISITION_START_TIME", "ACQUISITION_TIME", "ACQUISITION_DATE", "DATETIME", "TIFFTAG_DATETIME")
_NAME_TIME = re.compile(r"(?<!\d)(\d{8})T(\d{6})(?!\d)")
_NAME_DATE = re.compile(r"(?<!\d)(20\d{2})-?([01]\d)-?([0-3]\d)(?!\d)")


def _parse_time(text: str) -> datetime | None:
    text = text.strip()
    for candidate in (text.replace("Z", "+00:00"), text.replace(":", "-", 2).replace("Z", "+00:00")):
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return None


def _time_from_name(name: str) -> datetime | None:
    match = _NAME_TIME.search(name)
    if match:
        return datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    match = _NAME_DATE.search(name)
    if match:
        try:
            return datetime(int(match.group(1)), int(match.group(2)), int(match.group(3)), tzinfo=UTC)
        except ValueError:
            return None
    return None


def raster_acquired_at(href: str, *, store: RasterStore) -> datetime | None:
    """Return the acquisition time a raster file states, or None when it states none.

    Looked for, in order: the tags ACQUISITION_START_TIME, ACQUISITION_TIME, ACQUISITION_DATE,
    DATETIME, TIFFTAG_DATETIME (``YYYY:MM:DD HH:MM:SS`` read as UTC), then a date in the file
    name (``20180405T105031`` or ``2018-04-05``). A naive time is taken as UTC.

    Raises:
        BandError, CorruptProductError: as :func:`raster_file_bands`.
    """
    with rasterio.Env(**store.rasterio_env()), open_raster(href, store=store) as dataset:
        tags = {k.upper(): v for k, v in dataset.tags().items()}
    for key in _TAG_TIMES:
        if key in tags:
            parsed = _parse_time(tags[key])
            if parsed is not None:
                return parsed
    return _time_from_name(href.rstrip("/").rsplit("/", 1)[-1])
