"""Markers: per-parcel events (mowing, harvest, bare soil, ...) from Sentinel time series."""

from cbm_tasks.markers.params import MarkerParams, load_params
from cbm_tasks.markers.preprocess import PreparedSeries, prepare
from cbm_tasks.markers.reader import SeriesFileError, read_series
from cbm_tasks.markers.series import SeriesTable

__all__ = ["MarkerParams", "PreparedSeries", "SeriesFileError", "SeriesTable", "load_params", "prepare",
           "read_series"]
