"""The shipped defaults on real ground truth, through the file path (SALMS converted, Slovak set as shipped).

The asserted counts are the evaluation figures of benchmarks/markers_eval.py: a change of the
defaults or of the algorithm shows here as a change of numbers, to be reported.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest
from conftest import shared_data

from cbm_tasks.cli import main
from cbm_tasks.markers import load_params, read_series, run_markers
from cbm_tasks.markers.importers import convert_salms, read_salms_truth
from cbm_tasks.markers.validation import match_events

PARAMS = load_params()


def _mowing(path: Path, *, use_s1: bool) -> dict[str, list[date]]:
    out: dict[str, list[date]] = {}
    for row in run_markers(read_series(path), PARAMS, use_s1=use_s1).rows():
        if row.marker == "mowing":
            out.setdefault(row.parcel_id, []).append(date.fromisoformat(row.main_date))
    return out


def test_salms_through_the_cli(tmp_path: Path) -> None:
    salms = shared_data("salms_grassland")
    series = convert_salms(salms, tmp_path / "salms.csv.gz")
    truth = read_salms_truth(salms)
    assert sum(len(v) for v in truth.values()) == 17
    s2s1 = match_events(_mowing(series, use_s1=True), truth, sorted(truth))
    s2 = match_events(_mowing(series, use_s1=False), truth, sorted(truth))
    assert (s2s1.tp, s2s1.fp, s2s1.fn, s2s1.median_error) == (8, 8, 9, 5.5)
    assert (s2.tp, s2.fp, s2.fn, s2.median_error) == (7, 8, 10, 5.0)
    assert main(["markers", "run", "--timeseries", str(series), "--out", str(tmp_path / "out")]) == 0
    with (tmp_path / "out" / "traffic_lights.csv").open(newline="") as stream:
        lights = {row["parcel_id"]: row["colour"] for row in csv.DictReader(stream)}
    # every SALMS parcel was mown between 1 June and 31 August; parcels 8 and 10 are missed (red)
    assert sorted(p for p, colour in lights.items() if colour != "green") == ["10", "8"]


def test_slovak_set_defaults() -> None:
    folder = shared_data("grassland_sk_train")
    with (folder / "surveyed.csv").open(newline="") as stream:
        surveyed = {row["parcel_id"]: row["survey"] for row in csv.DictReader(stream)}
    truth: dict[str, list[date]] = {}
    with (folder / "truth.csv").open(newline="") as stream:
        for row in csv.DictReader(stream):
            truth.setdefault(row["parcel_id"], []).append(date.fromisoformat(row["date"]))
    negatives = {p for p, survey in surveyed.items() if survey == "not_mown"}
    series = read_series(folder / "timeseries.csv.gz")
    result = run_markers(series, PARAMS, use_s1=False)
    predicted: dict[str, list[date]] = {}
    for row in result.rows():
        if row.marker == "mowing":
            predicted.setdefault(row.parcel_id, []).append(date.fromisoformat(row.main_date))
    score = match_events(predicted, truth, sorted(surveyed), negatives=negatives)
    assert (score.tp, score.fp, score.fn, score.median_error) == (185, 14, 32, 4.0)
    assert (score.negatives, score.negatives_clean) == (37, 32)
    assert score.recall == pytest.approx(0.853, abs=1e-3)
