"""A wide time-series table (a column per band) is read as the long one, and its bad input is named."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from markers_series import grass_rows, write_rows

from cbm_tasks.markers import load_params, run_markers
from cbm_tasks.markers.reader import SeriesFileError, read_series
from cbm_tasks.markers.series import BAND_CODE, SOURCE_CODE

SERIES = ("offsets", "parcel", "source", "band", "obs_day", "mean", "clear_fraction", "orbit", "std")


def _wide(rows: list[list[object]], names: dict[str, str]) -> list[list[object]]:
    """The long rows of grass_rows as one row per parcel and date, a column per band, named as *names* says."""
    table: dict[tuple[str, str], dict[str, object]] = {}
    for parcel_id, when, _, band, mean, clear, _ in rows:
        cells = table.setdefault((str(parcel_id), str(when)), {"clear": clear})
        cells[names[str(band)]] = mean
    columns = list(names.values())
    return [[parcel_id, when, *[cells.get(c, "") for c in columns], cells["clear"], f"img{k}"]
            for k, ((parcel_id, when), cells) in enumerate(table.items())]


def test_a_wide_table_reads_as_the_long_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    long_rows = grass_rows("a", [170, 230]) + grass_rows("b", [200], seed=1)
    long_path = write_rows(tmp_path / "long.csv", long_rows)
    # Earth Engine's band names, and a column of its own the markers do not read
    wide_rows = _wide(long_rows, {"B04": "B4", "B08": "B8"})
    wide_path = write_rows(tmp_path / "wide.csv", wide_rows,
                           header=["parcel_id", "obs_time", "B4", "B8", "clear_fraction", "system:index"])
    with caplog.at_level(logging.WARNING, logger="cbm_tasks.markers.wide"):
        wide = read_series(wide_path)
    assert "columns not read: system:index" in caplog.text
    long = read_series(long_path)
    for name in SERIES:
        np.testing.assert_array_equal(getattr(wide, name), getattr(long, name), err_msg=name)
    params = load_params()
    events = list(run_markers(wide, params, use_s1=False).rows())
    assert events == list(run_markers(long, params, use_s1=False).rows())
    assert sum(row.marker == "mowing" for row in events) == 3


def test_means_and_spreads_and_empty_cells(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "zonal.csv", [
        ["p", "2021-06-01", 0.05, 0.01, 0.40, "", 0.31, 0.9],
        ["p", "2021-06-06", "", "", 0.42, 0.66, "", 0.8],  # no red: the image has B08 and NDVI only
    ], header=["parcel_id", "obs_time", "B04_mean", "B04_std", "mean_B08", "ndvi", "VVb", "clear_fraction"])
    series = read_series(path)
    got = sorted(zip(series.obs_day.tolist(), series.source.tolist(), series.band.tolist(), series.mean.tolist(),
                     np.nan_to_num(series.std, nan=-1).tolist(), strict=True))
    june1, june6 = got[0][0], got[-1][0]
    s2, bs = SOURCE_CODE["s2"], SOURCE_CODE["bs"]
    assert got == sorted([(june1, s2, BAND_CODE["B04"], 0.05, 0.01), (june1, s2, BAND_CODE["B08"], 0.40, -1),
                          (june1, bs, BAND_CODE["VV"], 0.31, -1), (june6, s2, BAND_CODE["B08"], 0.42, -1),
                          (june6, s2, BAND_CODE["NDVI"], 0.66, -1)])


def test_sentinel1_columns_say_their_source(tmp_path: Path) -> None:
    header = ["parcel_id", "obs_time", "VV", "VH"]
    with pytest.raises(SeriesFileError, match=r"wide_s1.csv: line 1: column\(s\) VV, VH do not say their source"):
        read_series(write_rows(tmp_path / "wide_s1.csv", [["p", "2021-06-01", 0.05, 0.01]], header=header))
    with_source = read_series(write_rows(tmp_path / "s1.csv", [["p", "2021-06-01", "c12", 0.6, 0.4]],
                                         header=["parcel_id", "obs_time", "source", "VV", "VH"]))
    assert set(with_source.source.tolist()) == {SOURCE_CODE["c12"]}
    jrc = read_series(write_rows(tmp_path / "jrc.csv", [["p", "2021-06-01", 0.6, 0.05]],
                                 header=["parcel_id", "obs_time", "VVc", "VHb"]))
    assert sorted(zip(jrc.source.tolist(), jrc.band.tolist(), strict=True)) == sorted(
        [(SOURCE_CODE["c6"], BAND_CODE["VV"]), (SOURCE_CODE["bs"], BAND_CODE["VH"])])


def test_bad_cells_are_named_by_their_line(tmp_path: Path) -> None:
    header = ["parcel_id", "obs_time", "B04", "B08", "clear_fraction"]
    good = ["p", "2021-06-01", 0.05, 0.4, 0.9]
    with pytest.raises(SeriesFileError, match=r"w.csv: line 3, column 'clear_fraction': expected a value in \[0, 1\]"):
        read_series(write_rows(tmp_path / "w.csv", [good, ["p", "2021-06-06", 0.05, 0.4, 90]], header=header))
    with pytest.raises(SeriesFileError, match=r"v.csv: line 2, column 'parcel_id': empty value"):
        read_series(write_rows(tmp_path / "v.csv", [["", "2021-06-06", 0.05, 0.4, 0.9], good], header=header))
    with pytest.raises(SeriesFileError, match=r"x.csv: line 1: band B04 in more than one column"):
        read_series(write_rows(tmp_path / "x.csv", [["p", "2021-06-06", 0.05, 0.05]],
                               header=["parcel_id", "obs_time", "B04", "red"]))
    with pytest.raises(SeriesFileError, match=r"n.csv: line 1: missing column\(s\) source, band, mean; .* \(or one "
                                              r"column per band: B04, B08, ...\)"):
        read_series(write_rows(tmp_path / "n.csv", [["p", "2021-06-06", 0.05]],
                               header=["parcel_id", "obs_time", "greenness"]))
    with pytest.raises(SeriesFileError, match=r"s.csv: line 1: missing column\(s\) source, band, mean"):
        read_series(write_rows(tmp_path / "s.csv", [["p", "2021-06-06", 0.05]],
                               header=["parcel_id", "obs_time", "B04_std"]))  # a spread without its mean
