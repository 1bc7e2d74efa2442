"""Importers of third-party per-parcel series into the long time-series format.

:func:`convert_salms` converts the JRC SALMS example data (``scripts/SALMS/inst/extdata`` of
ec-jrc/cbm: one folder ``tsdir`` with ``<ID>_s2_ts.csv``, ``<ID>_s1_coh6_ts.csv``, ... and the
ground truth ``gtdir/FOIinfo.csv``) into a file :func:`cbm_tasks.markers.reader.read_series` reads,
with the SCL histogram columns (``hist.0`` .. ``hist.11``) as the ``_classes`` companion.

What is converted: S2 B02..B12 band means (reflectance) and spreads (std) with their SCL class counts, and
the 6-day coherence VV / VH (``c6``, dated at the acquisition the SALMS file gives). The SALMS
backscatter files hold ratios (``s1_bs_rAD``), not backscatter, and are left out.

Their ground truth is read by :mod:`cbm_tasks.markers.truth`.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from cbm_tasks.errors import BadInputError
from cbm_tasks.markers.series import BANDS

__all__ = ["convert_salms"]

_S2_BANDS = {name for name in BANDS if name.startswith("B")}


def _salms_time(text: str, where: str) -> str:
    for pattern in ("%Y%m%dT%H%M%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, pattern).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            continue
    raise BadInputError(f"SALMS file {where}: cannot read date {text!r}")


def _std(record: dict[str, str]) -> str:
    """The band's spread over the parcel (``STD.DEV``), empty where the file says NA (a single pixel)."""
    value = record.get("STD.DEV", "")
    return "" if value.upper() in ("", "NA", "NAN") else value


def convert_salms(salms_dir: Path, out: Path) -> Path:
    """Write the SALMS series of every parcel in ``salms_dir/tsdir`` to *out* (``.csv`` or ``.csv.gz``).

    The class counts go to the companion ``<stem>_classes<suffix>``.

    Returns:
        *out*.

    Raises:
        BadInputError: no ``tsdir`` folder, or a file without the SALMS columns.
    """
    tsdir = salms_dir / "tsdir"
    if not tsdir.is_dir():
        raise BadInputError(f"SALMS data {salms_dir}: no tsdir folder")
    parcels = sorted({path.name.split("_")[0] for path in tsdir.glob("*_s2_ts.csv")}, key=lambda x: (len(x), x))
    gz = out.name.endswith(".gz")
    stem = out.name[: -len(".csv.gz")] if gz else out.stem
    classes = out.with_name(f"{stem}_classes.csv" + (".gz" if gz else ""))
    opener = gzip.open if gz else open
    with opener(out, "wt", newline="") as main_stream, opener(classes, "wt", newline="") as class_stream:
        rows = csv.writer(main_stream, lineterminator="\n")
        class_rows = csv.writer(class_stream, lineterminator="\n")
        rows.writerow(["parcel_id", "obs_time", "source", "band", "mean", "count", "std"])
        class_rows.writerow(["parcel_id", "obs_time", "product_id", "band", "class", "count"])
        for parcel in parcels:
            s2_file = tsdir / f"{parcel}_s2_ts.csv"
            seen: set[str] = set()
            with s2_file.open(newline="") as stream:
                for record in csv.DictReader(stream):
                    if record.get("band") not in _S2_BANDS:
                        continue
                    when = _salms_time(record["date"], str(s2_file))
                    rows.writerow([parcel, when, "s2", record["band"], record["MEAN"], record["count"], _std(record)])
                    if when not in seen:
                        seen.add(when)
                        for scl_class in range(12):
                            count = int(float(record.get(f"hist.{scl_class}") or 0))
                            if count:
                                class_rows.writerow([parcel, when, "", "SCL", scl_class, count])
            # SALMS's own NDVI per parcel (the mean of its pixels' NDVI), which the markers prefer (data.file_ndvi)
            rows.writerows(_band_rows(tsdir / f"{parcel}_s2_idx_ts.csv", parcel, "s2", {"NDVI": "NDVI"}))
            rows.writerows(_band_rows(tsdir / f"{parcel}_s1_coh6_ts.csv", parcel, "c6",
                                      {"s1_coh6_VV": "VV", "s1_coh6_VH": "VH", "VV": "VV", "VH": "VH"}))
    return out


def _band_rows(path: Path, parcel: str, source: str, bands: dict[str, str]) -> Iterator[list[str]]:
    """The long-format rows of a SALMS statistics file (none when it is absent): its *bands* (SALMS name: ours)."""
    if not path.is_file():
        return
    with path.open(newline="") as stream:
        for record in csv.DictReader(stream):
            band = bands.get(record.get("band", ""))
            if band is not None:
                yield [parcel, _salms_time(record["date"], str(path)), source, band, record["MEAN"], record["count"],
                       _std(record)]
