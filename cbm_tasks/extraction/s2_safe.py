"""Sentinel-2 L2A SAFE folders: metadata (MTD_MSIL2A.xml) and band files.

``GRANULE/*/IMG_DATA/R10m|R20m|R60m/*.jp2``, each band at its finest available resolution,
with ``BOA_QUANTIFICATION_VALUE`` and (processing baseline >= 04.00) ``BOA_ADD_OFFSET`` per
band from ``MTD_MSIL2A.xml``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # noqa: S405 - ESA metadata of products we chose to process
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cbm_tasks.errors import BandError, CorruptProductError, NotFoundError
from cbm_tasks.extraction.bands import CATEGORICAL_BANDS, BandSource
from cbm_tasks.extraction.raster_io import RasterStore
from cbm_tasks.store.base import is_remote, local_path

__all__ = ["S2_BANDS", "SafeMetadata", "is_safe", "read_safe_metadata", "safe_bands"]

# The L2A bands worth extracting per parcel, in output order (B01/B09 are atmospheric bands
# at 60 m, B10 is absent from L2A); SCL is the scene classification (categorical).
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL")
# MTD band_id -> band name (the order of Spectral_Information in MTD_MSIL2A.xml)
_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_SAFE_IMAGE = re.compile(r"^GRANULE/[^/]+/IMG_DATA/R(10|20|60)m/[^/]*_(?P<band>B\d[\dA]|SCL)_(?P<res>\d+)m\.jp2$")


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


def is_safe(location: str, *, store: RasterStore) -> bool:
    """Tell whether *location* is an L2A SAFE folder: named ``*.SAFE``, or a local folder with MTD_MSIL2A.xml."""
    where = location.rstrip("/")
    return where.upper().endswith(".SAFE") or (not is_remote(where) and store.exists(f"{where}/MTD_MSIL2A.xml"))


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
        if not local_path(mtd).exists():
            raise CorruptProductError(f"S2 L2A product {safe}: no MTD_MSIL2A.xml (not an L2A SAFE folder?)")
        return ET.parse(local_path(mtd)).getroot(), mtd  # noqa: S314 - see the import
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
        folder = local_path(safe)
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
        if name in CATEGORICAL_BANDS:
            bands.append(BandSource(name, href, nodata=0.0, resolution_m=float(res), categorical=True,
                                    n_classes=CATEGORICAL_BANDS[name]))
        else:
            q = meta.quantification
            bands.append(BandSource(name, href, nodata=0.0, scale=1.0 / q,
                                    offset=meta.boa_offsets.get(name, 0.0) / q, resolution_m=float(res)))
    if not bands:
        raise BandError(f"S2 L2A product {where}: none of the bands {', '.join(names)} found under GRANULE")
    return tuple(bands)
