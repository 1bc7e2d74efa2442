"""Reading time-series files: formats, the export's layout, and every bad input named by file, line, column."""

from __future__ import annotations

import gzip
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from markers_series import HEADER, grass_rows, write_rows

from cbm_tasks.markers import load_params, prepare, run_markers
from cbm_tasks.markers.params import with_value
from cbm_tasks.markers.preprocess import NO_VALUE, rejection_codes
from cbm_tasks.markers.reader import SeriesFileError, classes_file, read_series, scl_bad_share_from_counts
from cbm_tasks.markers.series import BAND_CODE, SOURCE_CODE, SeriesTable


def test_export_layout_with_product_types_and_scl_classes(tmp_path: Path) -> None:
    # what `cbm timeseries export` writes: product types as source, microsecond timestamps with Z, SCL counts apart
    path = tmp_path / "export.csv"
    header = ["parcel_id", "obs_time", "product_id", "source", "band", "count", "mean", "std", "min", "max", "p25",
              "p50", "p75"]
    rows = [["p1", "2018-04-05 10:50:31.000000Z", 3, "S2MSI2A", "B04", 40, 0.05, 0.01, 0, 1, 0, 0, 0],
            ["p1", "2018-04-05 10:50:31.000000Z", 3, "S2MSI2A", "B08", 40, 0.35, 0.01, 0, 1, 0, 0, 0],
            ["p1", "2018-04-05 10:50:31.000000Z", 3, "S2MSI2A", "SCL", 10, 4.2, "", "", "", "", "", ""],
            ["p1", "2018-04-07 17:32:00.000000Z", 9, "CARD-BS", "VV", 20, 0.05, 0.01, 0, 1, 0, 0, 0],
            ["p1", "2018-04-07 17:32:00.000000Z", 9, "CARD-COH6", "VV", 20, 0.4, 0.01, 0, 1, 0, 0, 0]]
    write_rows(path, rows, header)
    write_rows(classes_file(path), [["p1", "2018-04-05 10:50:31.000000Z", 3, "SCL", 4, 30],
                                    ["p1", "2018-04-05 10:50:31.000000Z", 3, "SCL", 9, 10]],
               ["parcel_id", "obs_time", "product_id", "band", "class", "count"])
    series = read_series(path)
    assert list(series.parcel_ids) == ["p1"]
    assert series.n_rows == 4  # the SCL mean row is not a marker band
    assert sorted(series.source.tolist()) == [SOURCE_CODE["s2"], SOURCE_CODE["s2"], SOURCE_CODE["bs"],
                                              SOURCE_CODE["c6"]]
    s2 = series.source == SOURCE_CODE["s2"]
    np.testing.assert_allclose(series.scl_bad_share[s2], [0.25, 0.25])
    assert np.isnan(series.scl_bad_share[~s2]).all()
    assert series.obs_day[s2][0] == pytest.approx(17626 + (10 * 3600 + 50 * 60 + 31) / 86400)


def test_gzip_and_parquet_read_the_same(tmp_path: Path) -> None:
    rows = grass_rows("a", [160]) + grass_rows("b", [])
    plain = read_series(write_rows(tmp_path / "s.csv", rows))
    gz = tmp_path / "s.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "s.csv").read_bytes()))
    table = pa.table({"parcel_id": [r[0] for r in rows], "obs_time": [r[1] for r in rows],
                      "source": [r[2] for r in rows], "band": [r[3] for r in rows],
                      "mean": [float(str(r[4])) for r in rows], "clear_fraction": [float(str(r[5])) for r in rows]})
    pq.write_table(table, tmp_path / "s.parquet")
    # a string path (as a notebook passes it) reads the same as a Path
    for other in (read_series(gz), read_series(tmp_path / "s.parquet"), read_series(str(tmp_path / "s.csv"))):
        np.testing.assert_array_equal(other.parcel_ids, plain.parcel_ids)
        np.testing.assert_array_equal(other.obs_day, plain.obs_day)
        np.testing.assert_allclose(other.mean, plain.mean)


def test_duplicated_observations_count_once(tmp_path: Path) -> None:
    rows = grass_rows("a", [160])
    once = read_series(write_rows(tmp_path / "once.csv", rows))
    twice = read_series(write_rows(tmp_path / "twice.csv", rows + rows[:10]))
    assert twice.n_rows == once.n_rows
    np.testing.assert_array_equal(twice.mean, once.mean)
    # the same date from two overlapping tiles, the first without a value (the parcel lies outside
    # it): the row with the value is kept, wherever it stands in the file
    empty_first = [[*row[:4], "nan", *row[5:]] for row in rows[:10]] + rows
    both = read_series(write_rows(tmp_path / "tiles.csv", empty_first))
    assert both.n_rows == once.n_rows
    np.testing.assert_array_equal(both.mean, once.mean)


def test_one_overpass_seen_in_two_tiles_seconds_apart_is_one_observation(tmp_path: Path) -> None:
    # catalogues that date each tile by its own sensing time (STAC) give a parcel in the overlap of
    # two tiles two observations seconds apart: one overpass, counted once, at its first time
    rows = grass_rows("a", [160, 220], cloudy=[150, 155])
    once = read_series(write_rows(tmp_path / "once.csv", rows))
    other_tile = [[r[0], f"{r[1]}T00:00:17Z", r[2], r[3], f"{float(str(r[4])) * 1.01:.5f}", *r[5:]] for r in rows]
    both = read_series(write_rows(tmp_path / "tiles.csv", other_tile + rows))
    assert both.n_rows == once.n_rows
    np.testing.assert_array_equal(both.obs_day, once.obs_day)
    np.testing.assert_array_equal(both.mean, once.mean)  # the first tile's values
    params = load_params()
    events = list(run_markers(once, params).rows())
    assert [e.main_date for e in events if e.marker == "mowing"] and list(run_markers(both, params).rows()) == events
    # the first tile without a value for the parcel: the second tile's, still at the overpass's time
    empty_first = [[*r[:4], "nan", *r[5:]] for r in rows] + other_tile
    second = read_series(write_rows(tmp_path / "second.csv", empty_first))
    np.testing.assert_array_equal(second.obs_day, once.obs_day)
    np.testing.assert_allclose(second.mean, once.mean * 1.01, atol=1e-5)
    # more than ten minutes apart is not one overpass (no satellite revisits that fast): both stay
    later = [[r[0], f"{r[1]}T00:10:01Z", *r[2:]] for r in rows]
    assert read_series(write_rows(tmp_path / "later.csv", later + rows)).n_rows == 2 * once.n_rows


def test_times_with_and_without_zone_offsets_in_one_file(tmp_path: Path) -> None:
    # a file assembled from several exports: offsets, Z, none (UTC), nanoseconds, a bare date
    rows = [["a", when, "s2", band, value, 1.0, ""]
            for when in ("2021-05-01T10:30:00+02:00", "2021-05-06 10:30:00", "2021-05-11",
                         "2021-05-16T10:30:00.123456789Z")
            for band, value in (("B04", 0.03), ("B08", 0.3))]
    series = read_series(write_rows(tmp_path / "mixed.csv", rows))
    hours = np.round((series.obs_day % 1) * 24, 3)
    assert hours.tolist() == [8.5, 8.5, 10.5, 10.5, 0.0, 0.0, 10.5, 10.5]  # all in UTC
    bad = [*rows[:2], ["a", "2021/05/16", "s2", "B04", 0.03, 1.0, ""], ["a", None, "s2", "B08", 0.3, 1.0, ""]]
    with pytest.raises(SeriesFileError, match=r"line 4, column 'obs_time': cannot read '2021/05/16'"):
        read_series(write_rows(tmp_path / "bad.csv", bad))
    with pytest.raises(SeriesFileError, match=r"line 4, column 'obs_time': empty value"):
        read_series(write_rows(tmp_path / "empty.csv", [*rows[:2], bad[3]]))


def test_a_file_of_ndvi_alone_is_read_and_its_cuts_found(tmp_path: Path) -> None:
    # some tools export the index, not the bands: NDVI stands in for red and NIR where they are missing
    rows = grass_rows("a", [160, 220], cloudy=[150])
    bands = read_series(write_rows(tmp_path / "bands.csv", rows))
    by_obs: dict[tuple[object, ...], dict[object, float]] = {}
    for r in rows:
        by_obs.setdefault((r[0], r[1], r[5]), {})[r[3]] = float(str(r[4]))
    index_rows = [[pid, when, "s2", "NDVI", f"{(b['B08'] - b['B04']) / (b['B08'] + b['B04']):.6f}", clear, ""]
                  for (pid, when, clear), b in by_obs.items()]
    index = read_series(write_rows(tmp_path / "ndvi.csv", index_rows))
    params = load_params()
    np.testing.assert_allclose(prepare(index, params).s2.ndvi, prepare(bands, params).s2.ndvi, atol=1e-5)
    mowing = [e.main_date for e in run_markers(index, params, use_s1=False).rows() if e.marker == "mowing"]
    assert mowing == [e.main_date for e in run_markers(bands, params, use_s1=False).rows() if e.marker == "mowing"]
    assert len(mowing) == 2
    # beside the bands, the file's own NDVI is used (data.file_ndvi, version 13: the mean of the pixels' NDVI, as
    # JRC and Sen4CAP extract it); with data.file_ndvi 0 (versions before 13) that of the band means
    skewed = [[*r[:4], "0.1", *r[5:]] for r in index_rows]
    both = read_series(write_rows(tmp_path / "both.csv", rows + skewed))
    assert np.all(prepare(both, params).s2.ndvi == 0.1)
    np.testing.assert_array_equal(prepare(both, with_value(params, "data.file_ndvi", 0)).s2.ndvi,
                                  prepare(bands, params).s2.ndvi)
    # an index scaled to integers is named, not read as values of 0.8e4
    scaled = [[*r[:4], f"{float(str(r[4])) * 10000:.0f}", *r[5:]] for r in index_rows]
    with pytest.raises(SeriesFileError, match=r"NDVI outside -1\.\.1 \(median 7\d\d\d\)"):
        read_series(write_rows(tmp_path / "scaled.csv", scaled))


def test_b8a_is_the_nir_of_a_file_without_b08(tmp_path: Path) -> None:
    rows = grass_rows("a", [160, 220], cloudy=[150])
    narrow = [[*r[:3], "B8A" if r[3] == "B08" else r[3], *r[4:]] for r in rows]  # a 20 m export
    params = load_params()
    with_b08 = prepare(read_series(write_rows(tmp_path / "b08.csv", rows)), params).s2
    with_b8a = prepare(read_series(write_rows(tmp_path / "b8a.csv", narrow)), params).s2
    np.testing.assert_array_equal(with_b8a.ndvi, with_b08.ndvi)
    np.testing.assert_array_equal(with_b8a.valid, with_b08.valid)
    # beside B08, B8A is not used
    other = [[*r[:3], "B8A", "0.9", *r[5:]] for r in rows if r[3] == "B08"]
    both = prepare(read_series(write_rows(tmp_path / "both.csv", rows + other)), params).s2
    np.testing.assert_array_equal(both.ndvi, with_b08.ndvi)


def test_unix_times_in_seconds_or_milliseconds(tmp_path: Path) -> None:
    # JRC's API dates observations in epoch seconds (date_part), Earth Engine in milliseconds
    rows = grass_rows("a", [160])
    iso = read_series(write_rows(tmp_path / "iso.csv", rows))
    epoch = [[r[0], int(datetime.fromisoformat(str(r[1])).replace(tzinfo=UTC).timestamp()), *r[2:]] for r in rows]
    seconds = read_series(write_rows(tmp_path / "s.csv", epoch))
    millis = read_series(write_rows(tmp_path / "ms.csv", [[r[0], r[1] * 1000, *r[2:]] for r in epoch]))
    np.testing.assert_array_equal(seconds.obs_day, iso.obs_day)
    np.testing.assert_array_equal(millis.obs_day, iso.obs_day)
    with pytest.raises(SeriesFileError, match=r"line 3, column 'obs_time': '12' is no Unix time"):
        read_series(write_rows(tmp_path / "bad.csv", [epoch[0], [epoch[1][0], 12, *epoch[1][2:]]]))
    with pytest.raises(SeriesFileError, match=r"line 3, column 'obs_time': empty value"):
        read_series(write_rows(tmp_path / "empty.csv", [epoch[0], [epoch[1][0], None, *epoch[1][2:]]]))


def test_clear_fraction_stated_on_one_row_holds_for_the_observation(tmp_path: Path) -> None:
    # an export that states the clear share once per observation: on its B08 row, or on an SCL row
    rows = grass_rows("a", [160], cloudy=[150, 155])
    full = read_series(write_rows(tmp_path / "full.csv", rows))
    on_b08 = [[*r[:5], r[5] if r[3] == "B08" else "", *r[6:]] for r in rows]
    on_scl = [[*r[:5], "", *r[6:]] for r in rows] + [[r[0], r[1], "s2", "SCL", 4.0, r[5], ""] for r in rows
                                                      if r[3] == "B04"]
    for variant in (on_b08, on_scl):
        series = read_series(write_rows(tmp_path / "one.csv", variant))
        np.testing.assert_array_equal(series.clear_fraction, full.clear_fraction)
    assert (full.clear_fraction < 0.5).sum() > 0  # the cloudy dates stay cloudy


def test_unknown_source_and_band_are_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = grass_rows("a", []) + [["a", "2021-05-01", "landsat", "B04", 0.1, "", ""],
                                  ["a", "2021-05-01", "s2", "NDRE", 0.1, "", ""]]
    with caplog.at_level(logging.WARNING):
        series = read_series(write_rows(tmp_path / "s.csv", rows))
    assert "ignored 2 rows" in caplog.text and "landsat" in caplog.text and "NDRE" in caplog.text
    assert set(series.band.tolist()) == {BAND_CODE["B04"], BAND_CODE["B08"]}


def test_nan_means_are_kept_as_missing(tmp_path: Path) -> None:
    rows = grass_rows("a", [])
    rows[0][4] = "NaN"
    rows[2][4] = ""
    series = read_series(write_rows(tmp_path / "s.csv", rows))
    assert int(np.isnan(series.mean).sum()) == 2


def test_no_data_fills_are_missing_not_a_ploughing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # an export that writes -9999 (or 0, or -0.1: DN 0 after the offset) for images without data, on a
    # grass plot cut on doy 180: read as values the fills make NDVI ~0 in August, a "ploughing"
    rows = grass_rows("p", [180])
    fills = {(date(2021, 1, 1) + timedelta(days=doy - 1)).isoformat(): value
             for doy, value in ((230, "-9999"), (235, "0"), (240, "-0.1"))}
    for row in rows:
        row[4] = fills.get(str(row[1]), row[4])
    series = read_series(write_rows(tmp_path / "s.csv", rows))
    with caplog.at_level(logging.WARNING, logger="cbm_tasks.markers.preprocess"):
        result = run_markers(series, load_params(), use_s1=False)
    assert "6 of 98 band values (3 observations)" in caplog.text
    assert {row.marker for row in result.rows()} >= {"mowing"}
    assert not [row for row in result.rows() if row.marker == "bare_soil"]
    prepared = prepare(series, load_params())
    assert int((~prepared.s2.valid).sum()) == 3 and int(np.isnan(prepared.s2.ndvi).sum()) == 3


def test_spreadsheet_exports_semicolons_tabs_and_a_bom(tmp_path: Path) -> None:
    """Spreadsheets save "CSV" with semicolons (decimal-comma locales) or tabs, often with a BOM: read as such."""
    rows = grass_rows("a", [160]) + grass_rows("b", [])
    plain = read_series(write_rows(tmp_path / "s.csv", rows))
    text = (tmp_path / "s.csv").read_text()
    for name, content in (("semicolon.csv", text.replace(",", ";")), ("tab.csv", text.replace(",", "\t")),
                          ("bom.csv", "\ufeff" + text)):
        (tmp_path / name).write_text(content, encoding="utf-8")
        other = read_series(tmp_path / name)
        np.testing.assert_array_equal(other.parcel_ids, plain.parcel_ids)
        np.testing.assert_array_equal(other.obs_day, plain.obs_day)
        np.testing.assert_allclose(other.mean, plain.mean)
        np.testing.assert_allclose(other.clear_fraction, plain.clear_fraction)
    # a decimal comma is not guessed at: the value is named, with what is wrong with it
    rows[6][4] = "0,3"
    (tmp_path / "comma.csv").write_text("\n".join(";".join(map(str, r)) for r in
                                               [["parcel_id", "obs_time", "source", "band", "mean", "clear_fraction",
                                                 "orbit"], *rows]) + "\n")
    with pytest.raises(SeriesFileError, match=r"comma\.csv: line 8, column 'mean': cannot read '0,3' as double "
                                              r"\(a decimal comma: the format wants a point\)"):
        read_series(tmp_path / "comma.csv")


def test_bad_value_names_file_line_and_column(tmp_path: Path) -> None:
    rows = grass_rows("a", [])
    rows[6][4] = "0.3x"
    path = write_rows(tmp_path / "bad.csv", rows)
    with pytest.raises(SeriesFileError, match=r"bad\.csv: line 8, column 'mean': cannot read '0\.3x'"):
        read_series(path)


def test_values_in_other_units_are_an_error_naming_the_file(tmp_path: Path) -> None:
    # digital numbers (x 10000), backscatter in dB and coherence in percent would read without error
    # and silently mark every observation hazy or drop the sensor
    rows = grass_rows("a", [182], coherence=True)
    as_dn = [[*r[:4], f"{float(r[4]) * 10000:.0f}", *r[5:]] if r[2] == "s2" else r for r in rows]
    with pytest.raises(SeriesFileError, match=r"dn\.csv: Sentinel-2 means look like digital numbers.*median"):
        read_series(write_rows(tmp_path / "dn.csv", as_dn))
    in_db = rows + [["a", "2021-06-01", "bs", band, value, "", "37"] for band, value in (("VV", -9.5), ("VH", -16.0))]
    with pytest.raises(SeriesFileError, match=r"db\.csv: backscatter looks like dB"):
        read_series(write_rows(tmp_path / "db.csv", in_db))
    percent = [[*r[:4], float(r[4]) * 100, *r[5:]] if r[2] == "c6" else r for r in rows]
    with pytest.raises(SeriesFileError, match=r"pct\.csv: coherence above 1"):
        read_series(write_rows(tmp_path / "pct.csv", percent))
    # one saturated cloud among reflectances is an observation, not a unit error
    odd = [list(r) for r in rows]
    odd[0][4] = "1.7"
    assert read_series(write_rows(tmp_path / "odd.csv", odd)).n_rows == len(rows)


def test_band_names_without_the_zero_and_in_lower_case(tmp_path: Path) -> None:
    rows = grass_rows("a", [182])
    renamed = [[*r[:3], {"B04": "b4", "B08": "B8"}[r[3]], *r[4:]] for r in rows]
    plain = read_series(write_rows(tmp_path / "a.csv", rows))
    short = read_series(write_rows(tmp_path / "b.csv", renamed))
    assert short.n_rows == plain.n_rows == len(rows)
    np.testing.assert_array_equal(short.band, plain.band)


def test_jrc_names_of_sentinel1_bands(tmp_path: Path) -> None:
    """A file made from JRC's API answers: VVb / VHb backscatter, VVc / VHc coherence."""
    rows = grass_rows("a", [182], coherence=True)
    rows += [["a", "2021-06-01", "bs", band, value, "", "37"] for band, value in (("VV", 0.11), ("VH", 0.025))]
    suffix = {"bs": "b", "c6": "c"}
    renamed = [[*r[:3], r[3] + suffix[r[2]] if r[2] in suffix else r[3], *r[4:]] for r in rows]
    assert {r[3] for r in renamed if r[2] != "s2"} == {"VVb", "VHb", "VVc", "VHc"}
    plain = read_series(write_rows(tmp_path / "a.csv", rows))
    jrc = read_series(write_rows(tmp_path / "b.csv", renamed))
    assert jrc.n_rows == plain.n_rows == len(rows)
    np.testing.assert_array_equal(jrc.band, plain.band)


def test_stac_asset_names_and_other_names_of_sentinel2(tmp_path: Path) -> None:
    """Files written by other tools: Earth Search's asset names (red, nir) and its collection id as the source."""
    rows = grass_rows("a", [182])
    renamed = [[r[0], r[1], ["sentinel-2-l2a", "S2_L2A"][i % 2], {"B04": "red", "B08": "NIR"}[r[3]], *r[4:]]
               for i, r in enumerate(rows)]
    plain = read_series(write_rows(tmp_path / "a.csv", rows))
    other = read_series(write_rows(tmp_path / "b.csv", renamed))
    assert other.n_rows == plain.n_rows == len(rows)
    np.testing.assert_array_equal(other.band, plain.band)
    np.testing.assert_array_equal(other.source, plain.source)


def test_bad_time_names_line(tmp_path: Path) -> None:
    rows = grass_rows("a", [])
    rows[3][1] = "2021-13-45"
    with pytest.raises(SeriesFileError, match=r"line 5, column 'obs_time'.*2021-13-45"):
        read_series(write_rows(tmp_path / "bad.csv", rows))


def test_missing_column_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "nomean.csv"
    path.write_text("parcel_id,obs_time,source,band\na,2021-05-01,s2,B04\n")
    with pytest.raises(SeriesFileError, match=r"nomean\.csv: line 1: missing column\(s\) mean"):
        read_series(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SeriesFileError, match="empty.csv"):
        read_series(empty)
    header_only = write_rows(tmp_path / "header.csv", [])
    assert read_series(header_only).n_parcels == 0


def test_clear_fraction_out_of_range_and_empty_id(tmp_path: Path) -> None:
    rows = grass_rows("a", [])
    rows[4][5] = 1.5
    with pytest.raises(SeriesFileError, match=r"line 6, column 'clear_fraction'.*1\.5"):
        read_series(write_rows(tmp_path / "c.csv", rows))
    rows = grass_rows("a", [])
    rows[2][0] = ""
    with pytest.raises(SeriesFileError, match=r"line 4, column 'parcel_id': empty"):
        read_series(write_rows(tmp_path / "id.csv", rows))


def test_only_unknown_sources_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SeriesFileError, match="no row has a known source"):
        read_series(write_rows(tmp_path / "u.csv", [["a", "2021-05-01", "modis", "B01", 0.1, "", ""]]))


def test_missing_file_and_extension(tmp_path: Path) -> None:
    with pytest.raises(SeriesFileError, match="no such file"):
        read_series(tmp_path / "none.csv")
    other = tmp_path / "x.txt"
    other.write_text("a")
    with pytest.raises(SeriesFileError, match="extension"):
        read_series(other)


def test_scl_counts_to_bad_share_and_integer_parcel_ids() -> None:
    counts = np.zeros((3, 12))
    counts[0, [4, 9]] = [30, 10]
    counts[1, [3, 5, 8, 10]] = [1, 2, 3, 4]
    np.testing.assert_allclose(scl_bad_share_from_counts(counts), [0.25, 0.8, np.nan])
    table = SeriesTable.from_arrays(parcel_id=np.array([10, 2, 10, 2]), source=np.zeros(4), band=np.array([2, 2, 6, 6]),
                                    obs_day=np.array([5.0, 5.0, 5.0, 5.0]), mean=np.array([0.1, 0.2, 0.3, 0.4]))
    assert list(table.parcel_ids) == ["2", "10"] and list(table.offsets) == [0, 2, 4]
    np.testing.assert_allclose(table.mean, [0.2, 0.4, 0.1, 0.3])


def test_arrow_tables_of_the_database_reader() -> None:
    # the schema cbm_tasks.timeseries.read returns: product types, UTC timestamps, float32 means, null stats
    from datetime import UTC, datetime

    from cbm_tasks.markers import series_from_arrow
    from cbm_tasks.timeseries.read import BAND_STATS_SCHEMA, CLASS_COUNTS_SCHEMA

    when = datetime(2018, 4, 5, 10, 50, 31, tzinfo=UTC)
    stats = pa.table({"parcel_id": ["7", "7", "7"], "obs_time": [when] * 3, "product_id": [1, 1, 1],
                      "source": ["S2MSI2A"] * 3, "band": ["B04", "B08", "B11"], "count": [9, 9, 0],
                      **{name: [0.05, 0.4, None] for name in ("mean", "std", "min", "max", "p25", "p50", "p75")}},
                     schema=BAND_STATS_SCHEMA)
    counts = pa.table({"parcel_id": ["7", "7"], "obs_time": [when] * 2, "product_id": [1, 1], "band": ["SCL", "SCL"],
                       "class": [4, 8], "count": [9, 1]}, schema=CLASS_COUNTS_SCHEMA)
    series = series_from_arrow(stats, counts, name="demo/2018")
    assert series.n_rows == 3 and list(series.parcel_ids) == ["7"]
    np.testing.assert_allclose(series.scl_bad_share, [0.1, 0.1, 0.1])
    assert np.isnan(series.mean[series.band == BAND_CODE["B11"]]).all()
    # integer parcel ids (as a Parquet file may hold them) read as their strings, sorted as strings;
    # class counts of a parcel the series lacks are ignored, not given to another parcel
    ints = pa.table({"parcel_id": pa.array([10, 9, 10, 9], pa.int64()), "obs_time": [when] * 4,
                     "source": ["s2"] * 4, "band": ["B04", "B04", "B08", "B08"], "mean": [0.05, 0.06, 0.4, 0.5]})
    other = pa.table({"parcel_id": pa.array([10, 11, 11], pa.int64()), "obs_time": [when] * 3,
                      "band": ["SCL"] * 3, "class": [4, 8, 9], "count": [3, 5, 5]})
    series = series_from_arrow(ints, other)
    assert list(series.parcel_ids) == ["10", "9"] and list(series.offsets) == [0, 2, 4]
    np.testing.assert_allclose(series.mean, [0.05, 0.4, 0.06, 0.5])
    np.testing.assert_allclose(series.scl_bad_share[:2], [0.0, 0.0])
    assert np.isnan(series.scl_bad_share[2:]).all()
    with pytest.raises(SeriesFileError, match="demo/2018: missing column"):
        series_from_arrow(stats.drop_columns(["mean"]), name="demo/2018")


def test_times_with_zone_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    rows = [["a", "2021-05-01T12:00:00+02:00", "s2", "B04", 0.05, 0.9, ""],
            ["a", "2021-05-01T10:00:00Z", "s2", "B08", 0.3, 0.9, ""]]
    series = read_series(write_rows(tmp_path / "tz.csv", rows))
    assert series.obs_day.tolist() == [18748 + 10 / 24] * 2


def test_an_image_in_digital_numbers_is_missing_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # one image of the season extracted without its scale (reflectance x 10000): its blue would reject
    # it as cloud and its NDVI would lack the offset; it is missing, and the log names the image
    rows = [[*row[:5], row[5], row[6], 100 + k // 2] for k, row in enumerate(grass_rows("p", [180]))]
    raw_day = (date(2021, 1, 1) + timedelta(days=200 - 1)).isoformat()
    for row in rows:
        if row[1] == raw_day:
            row[4] = f"{float(str(row[4])) * 10000:.0f}"
    path = write_rows(tmp_path / "s.csv", rows, header=[*HEADER, "product_id"])
    series = read_series(path)  # one image of many: the file's median is reflectance, it is read
    with caplog.at_level(logging.WARNING, logger="cbm_tasks.markers.preprocess"):
        prepared = prepare(series, load_params())
    raw_image = next(int(row[7]) for row in rows if row[1] == raw_day)
    assert f"1 observations taken as missing (images {raw_image})" in caplog.text and "--scale 0.0001" in caplog.text
    index = int(np.flatnonzero(prepared.s2.product == raw_image)[0])
    assert np.isnan(prepared.s2.ndvi[index]) and not prepared.s2.valid[index]
    assert int(rejection_codes(prepared.s2, load_params())[index]) == NO_VALUE
    assert int((~prepared.s2.valid).sum()) == 1  # the others are reflectance and used
    assert "mowing" in {row.marker for row in run_markers(series, load_params(), use_s1=False).rows()}


def test_an_ndvi_beside_the_bands_outside_its_range_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    # the database path has no reader to refuse a scaled index (an NDVI image extracted as x 10000 integers)
    days = np.repeat(np.arange(18_000.0, 18_100.0, 5.0), 3)
    n = len(days)
    band = np.tile([BAND_CODE["B04"], BAND_CODE["B08"], BAND_CODE["NDVI"]], n // 3)
    mean = np.tile([0.04, 0.36, 8000.0], n // 3)
    mean[5] = 0.5  # one image's NDVI in range: that one is the file's
    series = SeriesTable.from_arrays(parcel_id=np.zeros(n, np.int64), source=np.full(n, SOURCE_CODE["s2"]),
                                     band=band, obs_day=days, mean=mean)
    with caplog.at_level("WARNING"):
        ndvi = prepare(series, load_params()).s2.ndvi
    np.testing.assert_allclose(np.delete(ndvi, 1), 0.8)  # (0.36 - 0.04) / (0.36 + 0.04) of the band means
    assert ndvi[1] == 0.5
    assert "NDVI values outside [-1, 1] are no NDVI (scaled by an export?): 19 observations" in caplog.text
