"""Read a per-parcel time-series file (``cbm timeseries export`` output) into a :class:`SeriesTable`.

Accepted files: ``.csv``, ``.csv.gz`` and ``.parquet``, one row per parcel, observation and band (a CSV
is comma-separated; one whose header has no comma but semicolons or tabs, as spreadsheets save it, is
read with that separator, and a leading BOM is skipped; numbers always take a decimal point):

* required columns: ``parcel_id, obs_time, source, band, mean``; ``obs_time`` is ISO 8601 (UTC
  without an offset) or a Unix time in seconds or milliseconds;
* optional: ``clear_fraction`` (share of clear pixels, 0-1; stated on any row of an S2 observation,
  even an SCL row, it holds for the whole observation), ``orbit`` (S1 relative orbit),
  ``product_id`` (integer image id: the events name the images that show them),
  ``std`` (the band's standard deviation over the parcel's pixels, >= 0: a red band spread far above
  the parcel's usual one marks an image part cloud, ``validity.max_red_spread``),
  ``count, min, max, p25, p50, p75`` (read and not needed by the markers).

``source`` is ``s2 | bs | c6 | c12`` or a catalogue product type (S2MSI2A, CARD-BS, CARD-COH6,
CARD-COH12), and Sentinel-2 L2A by other tools' names too (``sentinel-2-l2a``, ``S2_L2A``, ...); band
names are case-insensitive, ``B4`` means ``B04``, STAC's asset names (``red``, ``nir``, ``swir16``, ...)
the bands they name and JRC's ``VVb``/``VVc`` (backscatter, coherence) ``VV``; ``NDVI`` is read too
(used where an image has no red or NIR). A wide table, one column per band (``B04``, ``B4_mean``,
``B04_std``, ``NDVI``, ...) and no ``band``/``mean`` columns, is read as the long one
(:mod:`cbm_tasks.markers.wide`).
Values are physical units
(S2 reflectance 0-1, S1 linear backscatter, coherence 0-1): a file in other units (digital numbers,
dB) is an error.
Rows of other sources or bands (e.g. SCL means, product type ``UNKNOWN``) are dropped with one
WARNING naming them. S2 class counts are read from the export's companion file
``<stem>_classes<suffix>`` (``parcel_id, obs_time, product_id, band, class, count``) when it exists;
they give each S2 observation its share of unusable SCL pixels.

A file that cannot be used raises :class:`SeriesFileError` naming the file, and where it
applies the line (1 = header) and column.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cbm_tasks.markers.obs_time import UTC_TIME, SeriesFileError, utc_times
from cbm_tasks.markers.series import (
    BAND_CODE,
    MAX_REFLECTANCE,
    PRODUCT_TYPES,
    SCL_BAD_CLASSES,
    SOURCE_CODE,
    SeriesTable,
    band_name,
    source_name,
)
from cbm_tasks.markers.table_file import classes_file, read_table, require_columns
from cbm_tasks.markers.wide import is_wide, long_from_wide

__all__ = ["REQUIRED_COLUMNS", "SeriesFileError", "classes_file", "read_series", "read_table",
           "scl_bad_share_from_counts", "series_from_arrow"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("parcel_id", "obs_time", "source", "band", "mean")
_CLASS_COLUMNS = ("parcel_id", "obs_time", "band", "class", "count")


def _check_nulls(name: str, table: pa.Table, columns: tuple[str, ...]) -> None:
    for column in columns:
        nulls = table.column(column).is_null()
        if pc.any(nulls).as_py():
            line = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0]) + 2
            raise SeriesFileError(f"time-series file {name}: line {line}, column {column!r}: empty value")


def _check_units(name: str, source: np.ndarray, band: np.ndarray, mean: np.ndarray, usable: np.ndarray) -> None:
    """Reject a file whose values are in other units than the format's (module docstring).

    Judged on the median of each kind, so that a few odd observations (a saturated cloud) do not
    reject a file: Sentinel-2 digital numbers (x 10000) instead of reflectance, backscatter in dB
    instead of linear power, coherence above 1. Read as they are, such values would mark every
    observation hazy or drop the sensor without a word.
    """
    def median(*sources: str) -> float:
        values = mean[usable & np.isin(source, [SOURCE_CODE[n] for n in sources])]
        values = values[np.isfinite(values)]
        return float(np.median(values)) if len(values) else float("nan")

    index = usable & (band == BAND_CODE["NDVI"])
    usable = usable & ~index  # NDVI is not a reflectance
    s2, backscatter, coherence = median("s2"), median("bs"), median("c6", "c12")  # NaN: no such rows
    ndvi = mean[index & np.isfinite(mean)]
    ndvi_median = float(np.median(ndvi)) if len(ndvi) else 0.0
    if not -1.0 <= ndvi_median <= 1.0:
        raise SeriesFileError(f"time-series file {name}: NDVI outside -1..1 (median {ndvi_median:.4g}); "
                              "the format wants the index itself, not scaled (e.g. x 10000)")
    if s2 > MAX_REFLECTANCE:
        raise SeriesFileError(f"time-series file {name}: Sentinel-2 means look like digital numbers (median "
                              f"{s2:.4g}); the format wants surface reflectance 0-1 (DN / 10000, after "
                              "BOA_ADD_OFFSET for processing baseline 04.00 and later)")
    if backscatter <= 0.0:
        raise SeriesFileError(f"time-series file {name}: backscatter looks like dB (median {backscatter:.4g}); "
                              "the format wants linear power, 10 ** (dB / 10)")
    if coherence > 1.0:
        raise SeriesFileError(f"time-series file {name}: coherence above 1 (median {coherence:.4g}); the format "
                              "wants coherence 0-1")


def _checked(name: str, table: pa.Table, column: str, low: float, high: float, expected: str) -> np.ndarray | None:
    """Return the optional float *column* (None when absent); a value outside [low, high] is an error (NaN passes)."""
    if column not in table.column_names:
        return None
    values: np.ndarray = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(~np.isnan(values) & ((values < low) | (values > high)))
    if len(bad):
        raise SeriesFileError(f"time-series file {name}: line {int(bad[0]) + 2}, column {column!r}: expected "
                              f"{expected}, got {values[bad[0]]}")
    return values


def _codes(name: str, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (source code, band code, usable) per row; unknown sources and bands get usable False."""
    source_column = table.column("source").combine_chunks().dictionary_encode()
    band_column = table.column("band").combine_chunks().dictionary_encode()
    names = [str(v) for v in source_column.dictionary.to_pylist()]
    source_map = np.array([SOURCE_CODE.get(source_name(n), -1) for n in names] or [-1])
    names_b = [str(v) for v in band_column.dictionary.to_pylist()]
    band_map = np.array([BAND_CODE.get(band_name(n), -1) for n in names_b] or [-1])
    source = source_map[source_column.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    band = band_map[band_column.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    usable = (source >= 0) & (band >= 0)
    if not usable.all():
        unknown_sources = sorted(n for n, code in zip(names, source_map, strict=False) if code < 0)
        unknown_bands = sorted({names_b[i] for i in np.unique(band_column.indices.to_numpy(
            zero_copy_only=False)[(band < 0) & (source >= 0)])})
        log.warning("time-series file %s: ignored %d rows of unknown sources %s / bands %s",
                    name, int((~usable).sum()), unknown_sources or "-", unknown_bands or "-")
    return source, band, usable


def scl_bad_share_from_counts(counts: np.ndarray) -> np.ndarray:
    """Return the share of unusable SCL pixels per row of *counts* (n, n_classes: pixels per class value).

    Classes ``SCL_BAD_CLASSES`` (no data, saturated, cloud shadow, cloud medium / high, cirrus,
    snow) are unusable; a row without pixels gives NaN. This is how the database path, which stores
    the counts as arrays (``cbm.parcel_class_counts``), fills ``SeriesTable.scl_bad_share``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    bad_columns = [c for c in SCL_BAD_CLASSES if c < counts.shape[1]]
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share: np.ndarray = np.where(total > 0, counts[:, bad_columns].sum(axis=1) / total, np.nan)
    return share


def _parcel_codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Return (the distinct parcel ids as sorted strings, each row's int64 index into them).

    Arrow encodes the column once per distinct id, so no Python string per row is made.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = column.cast(pa.string()).dictionary_encode()
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=str)
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(len(names))
    return names[order], rank[encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)]


def _clear_per_observation(parcel_code: np.ndarray, obs_us: np.ndarray, is_s2: np.ndarray,
                           clear: np.ndarray) -> np.ndarray:
    """Give every row of an S2 observation the ``clear_fraction`` stated on any of its rows.

    A file may state it on one band's row only, or on a row of a band not read (an ``SCL`` row);
    where the rows of one observation state different values, the lowest holds.
    """
    rows = np.flatnonzero(is_s2)
    given = ~np.isnan(clear[rows])
    if given.all() or not given.any():
        return clear
    order = rows[np.lexsort((obs_us[rows], parcel_code[rows]))]
    start = np.ones(len(order), bool)
    start[1:] = (parcel_code[order][1:] != parcel_code[order][:-1]) | (obs_us[order][1:] != obs_us[order][:-1])
    lowest = np.fmin.reduceat(clear[order], np.flatnonzero(start))  # NaN only where no row states it
    out = clear.copy()
    out[order] = lowest[np.cumsum(start) - 1]
    return out


def _scl_bad_share(name: str, classes: pa.Table | None, names: np.ndarray, parcel_code: np.ndarray,
                   obs_us: np.ndarray, is_s2: np.ndarray) -> np.ndarray:
    """Share of unusable SCL pixels per row from the class counts, NaN where not given.

    *names* are the sorted parcel ids of the series, *parcel_code* each row's index into them.
    """
    share = np.full(len(parcel_code), np.nan)
    if classes is None:
        return share
    classes = classes.filter(pc.equal(pc.utf8_upper(classes.column("band")), "SCL"))
    _check_nulls(name, classes, _CLASS_COLUMNS)
    if classes.num_rows == 0 or not is_s2.any():
        return share
    c_names, c_code = _parcel_codes(classes.column("parcel_id"))
    # the class rows' parcels as codes of the series' parcels (-1: a parcel the series does not have)
    position = np.clip(np.searchsorted(names, c_names), 0, max(len(names) - 1, 0))
    known = names[position] == c_names if len(names) else np.zeros(len(c_names), bool)
    c_parcel = np.where(known, position, -1)[c_code]
    keep = c_parcel >= 0
    c_seconds = classes.column("obs_time").cast(pa.int64()).to_numpy()[keep] // 1_000_000
    c_class = classes.column("class").to_numpy(zero_copy_only=False).astype(np.int64)[keep]
    c_count = classes.column("count").to_numpy(zero_copy_only=False).astype(np.float64)[keep]
    rows = np.flatnonzero(is_s2)
    # one integer key per (parcel, second): parcel code x 2^31 + seconds since 1970 (fits int64)
    row_key = parcel_code[rows] * (1 << 31) + obs_us[rows] // 1_000_000
    class_key = c_parcel[keep] * (1 << 31) + c_seconds
    keys, inverse = np.unique(class_key, return_inverse=True)
    total = np.bincount(inverse, weights=c_count, minlength=len(keys))
    bad_sum = np.bincount(inverse, weights=c_count * np.isin(c_class, SCL_BAD_CLASSES), minlength=len(keys))
    position = np.clip(np.searchsorted(keys, row_key), 0, len(keys) - 1)
    found = (keys[position] == row_key) & (total[position] > 0)
    share[rows] = np.where(found, bad_sum[position] / np.maximum(total[position], 1.0), np.nan)
    return share


def series_from_arrow(band_stats: pa.Table, class_counts: pa.Table | None = None, *,
                      name: str = "(in memory)") -> SeriesTable:
    """Build a :class:`SeriesTable` from the long format as Arrow tables.

    This is the path of the database (``cbm_tasks.timeseries.read.read_time_series`` returns these
    two tables) and of :func:`read_series` (which reads them from files).

    Args:
        band_stats: columns ``parcel_id, obs_time, source, band, mean`` (+ optional
            ``clear_fraction``, ``orbit``, ``product_id``, ``std``); ``obs_time`` a timestamp or ISO 8601 strings.
        class_counts: ``parcel_id, obs_time, band, class, count`` (S2 SCL), or None.
        name: the input's name in messages (file path or ``aoi/year``).

    Raises:
        SeriesFileError: a required column is missing or empty, ``clear_fraction`` is outside
            [0, 1], a ``std`` is negative, no row has a known source and band, or the values are in
            other units.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in band_stats.column_names]
    if missing:
        raise SeriesFileError(f"time-series file {name}: missing column(s) {', '.join(missing)}")
    if band_stats.column("obs_time").type != UTC_TIME:
        band_stats = band_stats.set_column(band_stats.column_names.index("obs_time"), "obs_time",
                                           utc_times(Path(name), band_stats))
    _check_nulls(name, band_stats, ("parcel_id", "obs_time", "source", "band"))
    source, band, usable = _codes(name, band_stats)
    names, parcel_code = _parcel_codes(band_stats.column("parcel_id"))
    obs_us = band_stats.column("obs_time").cast(pa.int64()).to_numpy()
    mean = band_stats.column("mean").to_numpy(zero_copy_only=False).astype(np.float64)
    columns = band_stats.column_names
    clear = _checked(name, band_stats, "clear_fraction", 0.0, 1.0, "a value in [0, 1]")
    clear = np.full(len(mean), np.nan) if clear is None else clear
    std = _checked(name, band_stats, "std", 0.0, np.finfo(np.float64).max, "a finite standard deviation >= 0")
    orbit = (np.nan_to_num(band_stats.column("orbit").to_numpy(zero_copy_only=False).astype(np.float64), nan=-1.0)
             if "orbit" in columns else np.full(len(mean), -1.0))
    product_id = _product_ids(name, band_stats) if "product_id" in columns else None
    if band_stats.num_rows and not usable.any():
        raise SeriesFileError(f"time-series file {name}: no row has a known source (s2, bs, c6, c12 or "
                              f"{', '.join(PRODUCT_TYPES)}) and band ({', '.join(BAND_CODE)})")
    _check_units(name, source, band, mean, usable)
    clear = _clear_per_observation(parcel_code, obs_us, source == SOURCE_CODE["s2"], clear)
    scl = _scl_bad_share(name, class_counts, names, parcel_code, obs_us, source == SOURCE_CODE["s2"])
    return SeriesTable.from_arrays(
        parcel_id=parcel_code[usable], source=source[usable], band=band[usable],
        obs_day=obs_us[usable] / 86_400e6, mean=mean[usable], clear_fraction=clear[usable],
        orbit=orbit[usable], scl_bad_share=scl[usable],
        product_id=None if product_id is None else product_id[usable], parcel_names=names,
        std=None if std is None else std[usable])


def _product_ids(name: str, band_stats: pa.Table) -> np.ndarray:
    """Return the ``product_id`` column as int64, -1 where empty; a fraction or negative id is an error."""
    values = band_stats.column("product_id").to_numpy(zero_copy_only=False).astype(np.float64)
    given = ~np.isnan(values)
    bad = np.flatnonzero(given & ((values < 0) | (values != np.floor(values)) | (values >= 2.0**63)))
    if len(bad):
        raise SeriesFileError(f"time-series file {name}: line {int(bad[0]) + 2}, column 'product_id': expected an "
                              f"integer image id >= 0, got {values[bad[0]]}")
    return np.where(given, values, -1.0).astype(np.int64)


def read_series(path: str | Path) -> SeriesTable:
    """Read a long time-series file (and its ``_classes`` companion when present).

    Args:
        path: ``.csv``, ``.csv.gz`` or ``.parquet`` file in the long format (module docstring);
            a string is taken as a path (notebooks pass strings).

    Returns:
        The observations, grouped by parcel; duplicated rows are counted once.

    Raises:
        SeriesFileError: the file cannot be read, a required column is missing or empty,
            a value does not convert, ``clear_fraction`` is outside [0, 1], or no row has a
            known source and band.
    """
    t0 = time.perf_counter()
    path = Path(path)
    table = read_table(path, ("parcel_id", "obs_time"))
    if is_wide(table.column_names):
        table = long_from_wide(table, str(path))
    else:
        require_columns(path, table, REQUIRED_COLUMNS, hint=" (or one column per band: B04, B08, ...)")
    companion = classes_file(path)
    classes = read_table(companion, _CLASS_COLUMNS) if companion.is_file() else None
    series = series_from_arrow(table, classes, name=str(path))
    log.info("read time series file=%s rows=%d parcels=%d ignored_rows=%d seconds=%.2f",
             path, series.n_rows, series.n_parcels, table.num_rows - series.n_rows, time.perf_counter() - t0)
    return series
