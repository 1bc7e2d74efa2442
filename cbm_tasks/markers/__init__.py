"""Markers: per-parcel events (mowing, harvest, bare soil, ...) from Sentinel time series.

A marker is an observed change of state on a date (JRC CbM): each event has a start, main and end
date, the signal value that shows it, a confidence in [0, 1] and the sensors used. No database and
no Airflow here: arrays in, arrays out; the readers and writers sit at the edges.

Public API (stable; the database path and the ``cbm_markers`` DAG build on it):

* :func:`read_series` (path) -> :class:`SeriesTable`: CSV / CSV.GZ / Parquet long format of
  ``cbm timeseries export`` (+ its ``_classes`` file).
* :func:`series_from_arrow` (band_stats, class_counts=None, name=...) -> :class:`SeriesTable`: the
  same from Arrow tables, i.e. from ``cbm_tasks.timeseries.read.read_time_series(conn, aoi=, year=)``
  (``.band_stats``, ``.class_counts``) or its batches. Lower level, without Arrow:
  :meth:`SeriesTable.from_arrays` (parcel ids or integer keys, source / band codes from ``SOURCE_CODE`` /
  ``BAND_CODE``, ``obs_day`` in days since 1970-01-01 UTC, ``mean``, optional ``clear_fraction``,
  ``orbit``, ``scl_bad_share`` and ``product_id``; :func:`scl_bad_share_from_counts` turns SCL class counts
  into ``scl_bad_share``).
* :func:`load_params` (path | None) -> :class:`MarkerParams` (shipped ``marker_params.yaml``
  overridden by a user file; ``.hash`` and ``.version`` for lineage).
* :func:`run_markers` (series, params, use_s1=True) -> :class:`MarkerResult`: all events as arrays
  (``.rows()`` yields :class:`EventRow` for CSV or COPY) with the product ids of the images that prove
  each (``.products``), per-parcel clear-observation days, and the numbers of S2 observations used
  and rejected.
* :func:`cbm_tasks.traffic_light.evaluate_lights` (result, rules, crops=, aoi=, year=) -> lights.
* :func:`cbm_tasks.markers.writer.write_events`, :func:`cbm_tasks.markers.plot.plot_parcel`.
* :func:`cbm_tasks.markers.validation.match_events`: MODCiX scoring against ground truth.

Modules: ``series`` (in-memory form), ``reader``, ``params``, ``preprocess`` (validity, NDVI, dB,
cloud dips), ``mowing``, ``crop_events`` (vegetation, bare soil, harvest, emergence, data
sufficiency), ``engine``, ``writer``, ``plot``, ``importers`` (JRC SALMS), ``validation``.

Speed: parcels are processed inside Numba kernels over offset-grouped arrays; a parcel-season
of S2 every 5 days plus S1 costs about 30 microseconds (492 SK plot-years in 16 ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cbm_tasks.lazy import lazy_names

if TYPE_CHECKING:
    from cbm_tasks.markers.engine import MARKERS, EventRow, MarkerResult, run_markers
    from cbm_tasks.markers.params import MarkerParams, load_params
    from cbm_tasks.markers.preprocess import PreparedSeries, prepare
    from cbm_tasks.markers.reader import SeriesFileError, read_series, scl_bad_share_from_counts, series_from_arrow
    from cbm_tasks.markers.series import BAND_CODE, SOURCE_CODE, SeriesTable

__all__ = ["BAND_CODE", "MARKERS", "SOURCE_CODE", "EventRow", "MarkerParams", "MarkerResult", "PreparedSeries",
           "SeriesFileError", "SeriesTable", "load_params", "prepare", "read_series", "run_markers",
           "scl_bad_share_from_counts", "series_from_arrow"]

# the public names load their modules when first used: importing one submodule (params: YAML only) does not load
# the engine (Numba, pyarrow); ``from cbm_tasks.markers import run_markers`` works as before
_LAZY = {
    "MARKERS": "cbm_tasks.markers.engine",
    "EventRow": "cbm_tasks.markers.engine",
    "MarkerResult": "cbm_tasks.markers.engine",
    "run_markers": "cbm_tasks.markers.engine",
    "MarkerParams": "cbm_tasks.markers.params",
    "load_params": "cbm_tasks.markers.params",
    "PreparedSeries": "cbm_tasks.markers.preprocess",
    "prepare": "cbm_tasks.markers.preprocess",
    "SeriesFileError": "cbm_tasks.markers.reader",
    "read_series": "cbm_tasks.markers.reader",
    "scl_bad_share_from_counts": "cbm_tasks.markers.reader",
    "series_from_arrow": "cbm_tasks.markers.reader",
    "BAND_CODE": "cbm_tasks.markers.series",
    "SOURCE_CODE": "cbm_tasks.markers.series",
    "SeriesTable": "cbm_tasks.markers.series",
}


__getattr__ = lazy_names(__name__, _LAZY)
