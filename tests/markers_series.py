"""Synthetic per-parcel series in the long file format, with known mowing dates (test helper)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np

HEADER = ["parcel_id", "obs_time", "source", "band", "mean", "clear_fraction", "orbit"]


def grass_ndvi(days: np.ndarray, cuts: Sequence[int]) -> np.ndarray:
    """NDVI of mown grass on day-of-year *days*: spring growth, a drop to 0.35 at each cut, regrowth 0.015/d."""
    ndvi = 0.45 + 0.4 * np.clip((days - 90) / 60.0, 0.0, 1.0)
    for cut in cuts:
        after = days >= cut
        ndvi = np.where(after, np.minimum(ndvi, 0.35 + 0.015 * (days - cut)), ndvi)
    return ndvi


def reflectance(ndvi: np.ndarray, nir: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(B04, B08) with the given NDVI and NIR reflectance."""
    return nir * (1 - ndvi) / (1 + ndvi), np.full(ndvi.shape, nir)


def grass_rows(parcel_id: str, cuts: Sequence[int], *, year: int = 2021, every: int = 5, cloudy: Sequence[int] = (),
               dips: Sequence[int] = (), coherence: bool = False, noise: float = 0.0,
               seed: int = 0, coherence_rise: float = 0.25, coherence_noise: float = 0.0) -> list[list[object]]:
    """Rows of one grass parcel: S2 every *every* days (doy 60..300), cloudy / dip observations on the given doys.

    With *coherence*, 6-day VV coherence 0.3 on tall grass and *coherence_rise* higher within 20 days after a
    cut, plus seeded normal noise of *coherence_noise*.
    """
    rng = np.random.default_rng(seed)
    days = np.arange(60, 301, every)
    ndvi = grass_ndvi(days, cuts) + rng.normal(0.0, noise, len(days))
    rows: list[list[object]] = []
    for doy, value in zip(days, ndvi, strict=True):
        when = (date(year, 1, 1) + timedelta(days=int(doy) - 1)).isoformat()
        clear = 0.1 if doy in cloudy else 0.97
        if doy in dips:
            value = 0.15
        red, nir = reflectance(np.array([value]))
        rows.append([parcel_id, when, "s2", "B04", f"{red[0]:.5f}", clear, ""])
        rows.append([parcel_id, when, "s2", "B08", f"{nir[0]:.5f}", clear, ""])
    if coherence:
        for doy in range(62, 301, 6):
            cut_near = any(0 <= doy - cut <= 20 for cut in cuts)
            when = (date(year, 1, 1) + timedelta(days=doy - 1)).isoformat()
            vv = 0.3 + (coherence_rise if cut_near else 0.0) + rng.normal(0.0, coherence_noise)
            rows.append([parcel_id, when, "c6", "VV", float(np.clip(vv, 0.01, 1.0)), "", ""])
            rows.append([parcel_id, when, "c6", "VH", 0.45 if cut_near else 0.25, "", ""])
    return rows


def write_rows(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = HEADER) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def doy_date(doy: float, year: int = 2021) -> date:
    return date(year, 1, 1) + timedelta(days=int(doy) - 1)
