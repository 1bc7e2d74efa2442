"""Check a Sentinel-1 SAFE folder before processing: is everything its manifest lists there?

A SAFE copied half-way (interrupted download, object-store sync that stopped) opens fine in
most readers and fails deep inside a backend after minutes, or worse, yields zeros. So the
files a backend needs (annotation with orbit and geometry, calibration LUTs, noise LUTs,
measurement) are checked against the manifest first, per polarisation.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET  # noqa: S405 - ESA manifests of products we chose to process
from dataclasses import dataclass
from pathlib import Path

from cbm_tasks.card.errors import IncompleteSafeError
from cbm_tasks.errors import CorruptProductError

__all__ = ["SafeContents", "inspect_safe", "polarisations_of"]

# manifest representation id -> what it is, for messages
_NEEDED = {
    "s1Level1ProductSchema": "annotation",
    "s1Level1CalibrationSchema": "calibration",
    "s1Level1NoiseSchema": "noise",
    "s1Level1MeasurementSchema": "measurement",
}
_POLARISATIONS = {"SV": ("VV",), "DV": ("VV", "VH"), "SH": ("HH",), "DH": ("HH", "HV")}
_NAME_RE = re.compile(r"^S1[A-D]_(?P<mode>IW|EW|S\d)_(?P<type>GRD[HM]|SLC_)_1S(?P<pol>[SD][VH])_")


@dataclass(frozen=True, slots=True)
class SafeContents:
    """What a checked SAFE holds.

    Attributes:
        name: product name (the folder name without ``.SAFE``).
        product_type: ``GRD`` or ``SLC``.
        polarisations: the polarisations checked (all files present).
        manifest_md5: MD5 of ``manifest.safe`` (which itself lists every file's MD5): the
            input checksum recorded in lineage.
    """

    name: str
    product_type: str
    polarisations: tuple[str, ...]
    manifest_md5: str


def polarisations_of(name: str) -> tuple[str, ...]:
    """Return the polarisations a product name promises (``1SDV`` -> VV, VH).

    Raises:
        CorruptProductError: the name is not a Sentinel-1 Level-1 product name.
    """
    match = _NAME_RE.match(name)
    if match is None:
        raise CorruptProductError(f"product {name}: not a Sentinel-1 Level-1 GRD/SLC product name")
    return _POLARISATIONS[match["pol"]]


def inspect_safe(path: Path, *, polarisations: tuple[str, ...] | None = None) -> SafeContents:
    """Check that *path* holds every file the backends need for *polarisations*.

    Args:
        path: the ``.SAFE`` folder.
        polarisations: which to check; None = all the product name promises.

    Raises:
        CorruptProductError: no readable ``manifest.safe``, or a name that is not Sentinel-1 Level-1.
        IncompleteSafeError: the manifest lacks, or the folder misses, a needed file (each named).
    """
    name = path.name.removesuffix(".SAFE")
    match = _NAME_RE.match(name)
    if match is None:
        raise CorruptProductError(f"product {name}: not a Sentinel-1 Level-1 GRD/SLC product name ({path})")
    wanted = polarisations or _POLARISATIONS[match["pol"]]
    manifest = path / "manifest.safe"
    try:
        raw = manifest.read_bytes()
        root = ET.fromstring(raw)  # noqa: S314 - see the import
    except (OSError, ET.ParseError) as err:
        raise CorruptProductError(f"product {name}: cannot read {manifest}: {err}") from err
    listed: dict[tuple[str, str], list[str]] = {}
    for data_object in root.iter("dataObject"):
        kind = _NEEDED.get(data_object.get("repID", ""))
        location = data_object.find("byteStream/fileLocation")
        if kind is None or location is None:
            continue
        href = location.get("href", "").removeprefix("./")
        polarisation = next((p for p in wanted if f"-{p.lower()}-" in Path(href).name), None)
        if polarisation is not None:
            listed.setdefault((kind, polarisation), []).append(href)
    problems: list[str] = []
    for polarisation in wanted:
        for kind in _NEEDED.values():
            hrefs = listed.get((kind, polarisation))
            if not hrefs:
                problems.append(f"{polarisation} {kind}: not listed in manifest.safe")
                continue
            for href in hrefs:
                file = path / href
                if not file.is_file() or file.stat().st_size == 0:
                    problems.append(f"{polarisation} {kind}: {href} is {'empty' if file.is_file() else 'missing'}")
    if problems:
        raise IncompleteSafeError(f"product {name}: incomplete SAFE {path}: " + "; ".join(problems))
    product_type = "SLC" if match["type"] == "SLC_" else "GRD"
    return SafeContents(name=name, product_type=product_type, polarisations=tuple(wanted),
                        manifest_md5=hashlib.md5(raw, usedforsecurity=False).hexdigest())
