"""A wide time-series table (one column per band) turned into the long format the markers read.

Analysts' exports often carry one row per parcel and image with a column per band (Earth Engine's
``B4``/``B8``, openEO's ``B04``, zonal statistics' ``B04_mean`` and ``B04_std``, a column ``NDVI``),
where ``cbm timeseries export`` writes one row per band (``source, band, mean``). :func:`long_from_wide`
makes such a table long, so that both read alike:

* band columns: a band the markers know (``B04``, ``B4``, ``red``, ``nir``, ``NDVI``, JRC's ``VVb``,
  ``VHc``, ...), alone or with ``_mean`` / ``mean_`` (the mean), or with ``_std`` / ``std_`` (its
  standard deviation over the parcel);
* the source: a ``source`` column when there is one; else Sentinel-2 bands are ``s2``, JRC's
  ``VVb``/``VHb`` backscatter ``bs`` and ``VVc``/``VHc`` 6-day coherence ``c6``; a bare ``VV`` or ``VH``
  without a ``source`` column is an error (backscatter or coherence cannot be told);
* ``parcel_id, obs_time`` and the optional per-image columns (``clear_fraction``, ``orbit``,
  ``product_id``) are repeated on every band's row; other columns are ignored, named in one WARNING;
* an empty cell is no observation of that band (no row).

Errors name the file, and the line (1 = header) and column where they apply, as the long reader's.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cbm_tasks.markers.obs_time import SeriesFileError
from cbm_tasks.markers.series import BAND_CODE, band_name

__all__ = ["is_wide", "long_from_wide"]

log = logging.getLogger(__name__)

# columns of one image, repeated on each of its band rows
_PER_IMAGE = ("clear_fraction", "orbit", "product_id")
_KEYS = ("parcel_id", "obs_time", "source")
_STAT = re.compile(r"(?:(?P<before>mean|std)[_.])?(?P<band>.+?)(?:[_.](?P<after>mean|std))?", re.IGNORECASE)
# JRC's names of Sentinel-1 bands say the source: b backscatter, c coherence (its CARD-COH6)
_S1_SOURCE = {"b": "bs", "c": "c6"}
_S2_BANDS = frozenset(name for name in BAND_CODE if name not in ("VV", "VH"))


def _band_column(column: str) -> tuple[str, str, str | None] | None:
    """(band, statistic, source implied by the name) of a band column, None for another column."""
    match = _STAT.fullmatch(column.strip())
    if match is None or (match["before"] and match["after"]):
        return None
    band = band_name(match["band"])
    if band not in BAND_CODE:
        return None
    stat = (match["before"] or match["after"] or "mean").lower()
    core = match["band"].strip()
    if band in _S2_BANDS:
        return band, stat, "s2"
    return band, stat, _S1_SOURCE.get(core[-1].lower()) if len(core) == 3 else None


def is_wide(columns: list[str]) -> bool:
    """Whether a table with these columns is wide: no ``band`` and ``mean`` columns, and a band's mean column."""
    return "band" not in columns and "mean" not in columns and any(
        (found := _band_column(c)) is not None and found[1] == "mean" for c in columns)


def _check_per_image(name: str, table: pa.Table) -> None:
    """Errors that name a line must be found before the rows are multiplied by the bands."""
    for column in ("parcel_id", "obs_time"):
        nulls = table.column(column).is_null()
        if pc.any(nulls).as_py():
            line = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0]) + 2
            raise SeriesFileError(f"time-series file {name}: line {line}, column {column!r}: empty value")
    checks = [("clear_fraction", 0.0, 1.0, "a value in [0, 1]")]
    checks += [(c, 0.0, np.inf, "a finite standard deviation >= 0") for c in table.column_names
               if (found := _band_column(c)) is not None and found[1] == "std"]
    for column, low, high, expected in checks:
        if column not in table.column_names:
            continue
        values = _floats(name, table, column)
        bad = np.flatnonzero(~np.isnan(values) & ((values < low) | (values > high)))
        if len(bad):
            raise SeriesFileError(f"time-series file {name}: line {int(bad[0]) + 2}, column {column!r}: expected "
                                  f"{expected}, got {values[bad[0]]}")


def _floats(name: str, table: pa.Table, column: str) -> np.ndarray:
    try:
        return np.asarray(pc.cast(table.column(column), pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise SeriesFileError(f"time-series file {name}: column {column!r} of type {table.column(column).type} "
                              f"cannot be read as numbers: {err}") from err


def long_from_wide(table: pa.Table, name: str) -> pa.Table:
    """Return the long table (``parcel_id, obs_time, source, band, mean`` [+ ``std`` and per-image columns]).

    Raises:
        SeriesFileError: a ``parcel_id`` or ``obs_time`` is empty, a bare ``VV``/``VH`` column without a
            ``source`` column, a band named twice, a value that is not a number, or a
            ``clear_fraction`` or standard deviation out of range (named by line and column).
    """
    columns = table.column_names
    found = {column: _band_column(column) for column in columns}
    means = {band: (column, source) for column, spec in found.items() if spec and spec[1] == "mean"
             for band, _, source in [spec]}
    stds = {spec[0]: column for column, spec in found.items() if spec and spec[1] == "std"}
    bands = [spec[0] for spec in found.values() if spec and spec[1] == "mean"]
    twice = sorted({band for band in bands if bands.count(band) > 1})
    if twice:
        raise SeriesFileError(f"time-series file {name}: line 1: band {', '.join(twice)} in more than one column")
    has_source = "source" in columns
    unsaid = [column for column, source in means.values() if source is None and not has_source]
    if unsaid:
        raise SeriesFileError(f"time-series file {name}: line 1: column(s) {', '.join(unsaid)} do not say their "
                              "source: add a column source (bs, c6, c12) or name them VVb/VHb (backscatter) or "
                              "VVc/VHc (coherence)")
    ignored = [c for c in columns if found[c] is None and c not in (*_KEYS, *_PER_IMAGE)
               and c not in ("count", "min", "max", "p25", "p50", "p75")]
    if ignored:
        log.warning("time-series file %s: wide table, columns not read: %s", name, ", ".join(ignored))
    _check_per_image(name, table)
    n = table.num_rows
    parts = []
    for band, (column, source) in means.items():
        mean = _floats(name, table, column)
        part: dict[str, pa.Array | pa.ChunkedArray] = {
            "parcel_id": table.column("parcel_id"), "obs_time": table.column("obs_time"),
            # a source column says it for every band; else the band's name does
            "source": table.column("source").cast(pa.string()) if has_source else pa.array([source] * n, pa.string()),
            "band": pa.array([band] * n, pa.string()),
            "mean": pa.array(mean, pa.float64(), mask=~np.isfinite(mean)),
            "std": pa.array(_floats(name, table, stds[band]), pa.float64()) if band in stds
            else pa.nulls(n, pa.float64()),
        }
        part |= {c: table.column(c) for c in _PER_IMAGE if c in columns}
        chunk = pa.table(part)
        parts.append(chunk.filter(pc.is_valid(chunk.column("mean"))))
    log.info("time-series file %s: wide table of %d rows and bands %s read as %d band rows", name, n,
             ", ".join(means), sum(p.num_rows for p in parts))
    return pa.concat_tables(parts)
