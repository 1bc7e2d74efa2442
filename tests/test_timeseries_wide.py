"""``cbm timeseries export --wide``: a column per band, read back by the markers as the long export is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest

from cbm_tasks.cli import main
from cbm_tasks.demo.series_seed import seed_parcel_set
from cbm_tasks.markers import load_params, run_markers
from cbm_tasks.markers.reader import read_series
from cbm_tasks.traffic_light import evaluate_lights, load_rules

SERIES = ("offsets", "parcel", "source", "band", "obs_day", "mean", "std", "scl_bad_share", "product_id")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_wide_export_reads_as_the_long_one(db_url: str, tmp_path: Path, suffix: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        seeded = seed_parcel_set(conn, tmp_path, aoi="wide", year=2018, n_parcels=30, seed=5)
    long_file, wide_file = tmp_path / f"long{suffix}", tmp_path / f"wide{suffix}"
    assert main(["timeseries", "export", "--aoi", "wide", "--year", "2018", "--out", str(long_file)]) == 0
    assert main(["timeseries", "export", "--aoi", "wide", "--year", "2018", "--out", str(wide_file), "--wide"]) == 0
    assert (tmp_path / f"wide_classes{suffix}").is_file()  # the SCL counts, long, as beside the long export
    if suffix == ".parquet":
        columns = pq.read_schema(wide_file).names
        assert columns[:6] == ["parcel_id", "obs_time", "product_id", "source", "B02", "B02_std"]
        assert {"B04", "B08", "B11", "VV", "VH_std"} <= set(columns) and "band" not in columns
        pairs = pq.read_table(long_file, columns=["parcel_id", "product_id"]).group_by(
            ["parcel_id", "product_id"]).aggregate([])
        assert pq.read_metadata(wide_file).num_rows == pairs.num_rows > seeded.n_parcels  # a row per parcel and image
    long, wide = read_series(long_file), read_series(wide_file)
    for name in SERIES:
        np.testing.assert_array_equal(getattr(wide, name), getattr(long, name), err_msg=name)
    params, rules = load_params(), load_rules()
    long_result, wide_result = run_markers(long, params), run_markers(wide, params)
    assert list(wide_result.rows()) == list(long_result.rows()) and len(list(long_result.rows())) > 0
    assert list(evaluate_lights(wide_result, rules)) == list(evaluate_lights(long_result, rules))
