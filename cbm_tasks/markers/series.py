"""The in-memory form of per-parcel time series: columnar arrays grouped by parcel.

One :class:`SeriesTable` holds every observation of a file (or of a database batch) as
parallel NumPy arrays sorted by (parcel, time, source, orbit, band), with ``offsets`` so that the
rows of parcel ``p`` are ``offsets[p]:offsets[p + 1]``. Marker kernels loop over parcels
inside Numba and never touch Python objects, which is what makes a parcel-season cost
microseconds rather than milliseconds.

Codes (stable; they are part of the public API):

* sources: ``SOURCES`` = ("s2", "bs", "c6", "c12"); the catalogue's product types map to them
  through ``PRODUCT_TYPES`` (S2MSI2A, CARD-BS, CARD-COH6, CARD-COH12).
* bands: ``BANDS`` = S2 reflectance bands B02..B12 (0-1) and NDVI (-1..1, for files that carry the
  index rather than red and NIR), and VV / VH (S1 linear backscatter, or coherence 0-1 for c6 / c12).

Times are float64 days since 1970-01-01 UTC (``obs_day``), so a day's fraction is kept and
date arithmetic is plain subtraction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cbm_tasks.errors import NotFoundError

__all__ = [
    "BANDS",
    "BAND_CODE",
    "MAX_REFLECTANCE",
    "OVERPASS_SECONDS",
    "PRODUCT_TYPES",
    "SCL_BAD_CLASSES",
    "SOURCES",
    "SOURCE_CODE",
    "SeriesTable",
    "band_name",
    "day_to_date",
    "group_offsets",
    "source_name",
]

SOURCES = ("s2", "bs", "c6", "c12")
SOURCE_CODE = {name: code for code, name in enumerate(SOURCES)}
PRODUCT_TYPES = {"S2MSI2A": "s2", "CARD-BS": "bs", "CARD-COH6": "c6", "CARD-COH12": "c12"}
# NDVI: an index some exports carry instead of (or beside) red and NIR; used where B04 or B08 is missing
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "VV", "VH", "NDVI")
BAND_CODE = {name: code for code, name in enumerate(BANDS)}
# Sentinel-2 bands by the names STAC catalogues give their assets (Earth Search: red, nir, swir16, ...; the
# eo:common_name of each band where it names one band only)
_COMMON_NAMES = {"BLUE": "B02", "GREEN": "B03", "RED": "B04", "REDEDGE1": "B05", "REDEDGE2": "B06",
                 "REDEDGE3": "B07", "NIR": "B08", "NIR08": "B8A", "SWIR16": "B11", "SWIR22": "B12",
                 # JRC's API and tables: VVb/VHb backscatter, VVc/VHc coherence (the source says which)
                 "VVB": "VV", "VHB": "VH", "VVC": "VV", "VHC": "VH"}
# Sentinel-2 L2A by the names of other tools and catalogues (STAC collection ids, openEO)
# (``s2`` itself and the product type S2MSI2A come through source_name's other two ways)
_S2_SOURCES = {"s2l2a", "s2_l2a", "sentinel-2", "sentinel2", "sentinel-2-l2a", "sentinel_2_l2a", "sentinel2_l2a"}


def band_name(text: str) -> str:
    """Upper-case band name as the markers know it: ``b4``, ``B4`` and ``red`` are ``B04``, JRC's ``VVb`` ``VV``."""
    upper = text.strip().upper()
    return f"B0{upper[1]}" if re.fullmatch(r"B[1-9]", upper) else _COMMON_NAMES.get(upper, upper)


def source_name(text: str) -> str:
    """``s2``, ``bs``, ``c6``, ``c12`` from ours, a catalogue product type or another tool's name of Sentinel-2 L2A."""
    lower = text.strip().lower()
    return "s2" if lower in _S2_SOURCES else PRODUCT_TYPES.get(text.strip().upper(), lower)


# SCL classes that make a pixel unusable: 0 no data, 1 saturated/defective, 3 cloud shadow,
# 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus, 11 snow or ice.
# (2 dark area and 7 unclassified are kept: they are frequent over wet or dark grassland.)
SCL_BAD_CLASSES = (0, 1, 3, 8, 9, 10, 11)

# Rows of one parcel at most this far apart in time are one overpass: the tiles of one Sentinel-2
# datatake (or the slices of one Sentinel-1 pass) carry per-granule times seconds apart in some
# catalogues and exports (STAC's per-item datetime). Real revisits are a day or more apart
# (ARCHITECTURE.md). The shipped marker parameters' data.overpass_seconds, which the database read
# takes from a run's parameters (0 for runs before version 8, so that they recompute as they ran).
OVERPASS_SECONDS = 600
# Surface reflectance is 0-1 (a bright cloud or snow a little above 1): a Sentinel-2 band mean above
# this is in other units, digital numbers (reflectance x 10000) from an image extracted without its scale.
MAX_REFLECTANCE = 2.0

_EPOCH = np.datetime64("1970-01-01", "D")


def day_to_date(day: float) -> str:
    """Return the UTC calendar date ``YYYY-MM-DD`` of a day number (days since 1970-01-01)."""
    return str(_EPOCH + np.timedelta64(int(np.floor(day)), "D"))


def group_offsets(index: np.ndarray, n_groups: int) -> np.ndarray:
    """Return offsets (n_groups + 1) of a sorted int index: group g is ``offsets[g]:offsets[g + 1]``."""
    return np.searchsorted(index, np.arange(n_groups + 1), side="left").astype(np.int64)


@dataclass(frozen=True, slots=True)
class SeriesTable:
    """Every observation of a set of parcels, columnar, sorted by (parcel, time, source, orbit, band).

    Attributes:
        parcel_ids: (n_parcels,) parcel ids as strings, in sorted order.
        offsets: int64 (n_parcels + 1,), row range of each parcel.
        parcel: int32 (n,), index into ``parcel_ids``.
        source: int8 (n,), index into ``SOURCES``.
        band: int8 (n,), index into ``BANDS``.
        obs_day: float64 (n,), days since 1970-01-01 UTC.
        mean: float64 (n,), physical units; NaN when the parcel had no valid pixel.
        clear_fraction: float64 (n,), share of clear pixels in [0, 1], NaN when not given.
        orbit: int32 (n,), relative orbit (S1), -1 when not given.
        scl_bad_share: float64 (n,), share of the parcel's SCL pixels in ``SCL_BAD_CLASSES``
            for the S2 observation of this row, NaN when no class counts were given.
        product_id: int64 (n,), the image (catalogue product id) of the row, -1 when not given;
            events name the images of their observations by it (``MarkerResult.products``).
        std: float64 (n,), standard deviation of the band over the parcel's pixels (its spread), NaN
            when not given; the markers use the red band's (``validity.max_red_spread``).
    """

    parcel_ids: np.ndarray
    offsets: np.ndarray
    parcel: np.ndarray
    source: np.ndarray
    band: np.ndarray
    obs_day: np.ndarray
    mean: np.ndarray
    clear_fraction: np.ndarray
    orbit: np.ndarray
    scl_bad_share: np.ndarray
    product_id: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.parcel)
        for name in ("source", "band", "obs_day", "mean", "clear_fraction", "orbit", "scl_bad_share", "product_id",
                     "std"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SeriesTable.{name} has {len(getattr(self, name))} rows, parcel has {n}")
        if len(self.offsets) != len(self.parcel_ids) + 1:
            raise ValueError(f"SeriesTable.offsets must have {len(self.parcel_ids) + 1} entries, "
                             f"got {len(self.offsets)}")

    @property
    def n_parcels(self) -> int:
        """Number of parcels."""
        return len(self.parcel_ids)

    @property
    def n_rows(self) -> int:
        """Number of (parcel, observation, band) rows."""
        return len(self.parcel)

    def one_parcel(self, parcel_id: str) -> SeriesTable:
        """Return the rows of parcel *parcel_id* as a table of their own.

        Raises:
            NotFoundError: *parcel_id* is not in the table.
        """
        matches = np.flatnonzero(self.parcel_ids == str(parcel_id))
        if len(matches) == 0:
            sample = ", ".join(map(str, self.parcel_ids[:5]))
            raise NotFoundError(f"parcel {parcel_id!r} is not in the series ({self.n_parcels} parcels: {sample}, ...)")
        rows = slice(self.offsets[matches[0]], self.offsets[matches[0] + 1])
        return SeriesTable(parcel_ids=self.parcel_ids[matches[:1]], offsets=np.array([0, rows.stop - rows.start]),
                           parcel=np.zeros(rows.stop - rows.start, self.parcel.dtype), source=self.source[rows],
                           band=self.band[rows], obs_day=self.obs_day[rows], mean=self.mean[rows],
                           clear_fraction=self.clear_fraction[rows], orbit=self.orbit[rows],
                           scl_bad_share=self.scl_bad_share[rows], product_id=self.product_id[rows],
                           std=self.std[rows])

    @classmethod
    def from_arrays(cls, *, parcel_id: np.ndarray, source: np.ndarray, band: np.ndarray, obs_day: np.ndarray,
                    mean: np.ndarray, clear_fraction: np.ndarray | None = None, orbit: np.ndarray | None = None,
                    scl_bad_share: np.ndarray | None = None, product_id: np.ndarray | None = None,
                    parcel_names: np.ndarray | None = None, std: np.ndarray | None = None) -> SeriesTable:
        """Build a table from unsorted row arrays (source and band as codes of SOURCE_CODE / BAND_CODE).

        Parcel ids may be strings or integers (e.g. the database's parcel keys: much faster to
        group; ``parcel_ids`` then holds them as strings, in numeric order). With *parcel_names*
        (sorted, unique strings), *parcel_id* holds integer codes into it: a file's ids are encoded
        once per distinct id instead of as one string per row (25 M rows: gigabytes and a string sort).

        Rows of a parcel at most ``OVERPASS_SECONDS`` apart are one overpass, dated at its first
        row. Duplicated (parcel, source, orbit, overpass, band) rows are reduced to the first one with
        a value, so a file listing an observation twice, or once per overlapping tile, counts it
        once. Parcel keys must be below 2^21 distinct values per table (batch a country by parcel
        ranges). ``product_id`` (integer image ids, -1 or None when unknown) and ``std`` (the band's
        spread over the parcel, NaN or None when unknown) are carried along and not used for grouping.
        """
        n = len(parcel_id)
        clear_fraction = np.full(n, np.nan) if clear_fraction is None else clear_fraction.astype(np.float64)
        orbit = np.full(n, -1, np.int32) if orbit is None else orbit.astype(np.int32)
        scl_bad_share = np.full(n, np.nan) if scl_bad_share is None else scl_bad_share.astype(np.float64)
        product_id = np.full(n, -1, np.int64) if product_id is None else product_id.astype(np.int64)
        std = np.full(n, np.nan) if std is None else std.astype(np.float64)
        if parcel_names is not None:
            present = np.bincount(parcel_id, minlength=len(parcel_names)) > 0
            parcel = (np.cumsum(present) - 1)[parcel_id]
            parcel_ids = np.asarray(parcel_names, dtype=str)[present]
        elif parcel_id.dtype.kind in "iu" and n and bool(np.all(parcel_id[1:] >= parcel_id[:-1])):
            # integer keys in order (the database reads by parcel_key): group without sorting
            change = np.ones(n, bool)
            change[1:] = parcel_id[1:] != parcel_id[:-1]
            parcel = np.cumsum(change) - 1
            parcel_ids = parcel_id[change].astype(str)
        elif parcel_id.dtype.kind in "iu":  # integer keys: unique on ints is fast
            keys, parcel = np.unique(parcel_id, return_inverse=True)
            parcel_ids = keys.astype(str)
        else:
            parcel_ids, parcel = np.unique(parcel_id.astype(str), return_inverse=True)
        parcel = parcel.astype(np.int32)
        source = source.astype(np.int8)
        band = band.astype(np.int8)
        obs_day = obs_day.astype(np.float64)
        # two int64 sort keys instead of five: (parcel, time to the microsecond) and (source, orbit, band)
        micros = np.rint(obs_day * 86_400e6).astype(np.int64) if n else np.zeros(0, np.int64)
        time_key = parcel.astype(np.int64) * (1 << 42) + (micros - (micros.min() if n else 0)) // 1000
        kind_key = (source.astype(np.int64) << 24) | ((orbit.astype(np.int64) + 1) << 8) | band.astype(np.int64)
        # a key given twice (e.g. one date from two overlapping tiles) keeps its first row with a value:
        # a tile the parcel lies outside of gives NaN, and must not hide the other tile's mean
        order = np.lexsort((np.isnan(mean), kind_key, time_key))
        time_key, kind_key, day = time_key[order], kind_key[order], obs_day[order]
        start = _overpass_starts(time_key)
        if start is not None:  # rows of one overpass take its first time; sorted again, the earliest row first
            time_key, day = time_key[start], day[start]
            again = np.lexsort((np.isnan(mean[order]), kind_key, time_key))
            order, time_key, kind_key, day = order[again], time_key[again], kind_key[again], day[again]
        keep = np.ones(n, bool)
        if n > 1:
            keep[1:] = (time_key[1:] != time_key[:-1]) | (kind_key[1:] != kind_key[:-1])
        order = order[keep]
        parcel = parcel[order]
        return cls(
            parcel_ids=parcel_ids,
            offsets=group_offsets(parcel, len(parcel_ids)),
            parcel=parcel,
            source=source[order],
            band=band[order],
            obs_day=day[keep],
            mean=mean.astype(np.float64)[order],
            clear_fraction=clear_fraction[order],
            orbit=orbit[order],
            scl_bad_share=scl_bad_share[order],
            product_id=product_id[order],
            std=std[order],
        )


def _overpass_starts(time_key: np.ndarray) -> np.ndarray | None:
    """Per row of sorted (parcel, time in ms) keys, the index of the first row of its overpass.

    None when every row is more than ``OVERPASS_SECONDS`` from the row before (or of another
    parcel, whose keys differ by far more): the usual case, and it costs one pass.
    """
    if len(time_key) < 2:
        return None
    step = np.diff(time_key)
    close = step <= OVERPASS_SECONDS * 1000
    if not (close & (step > 0)).any():
        return None
    first = np.ones(len(time_key), bool)
    first[1:] = ~close
    return np.maximum.accumulate(np.where(first, np.arange(len(time_key)), 0))
