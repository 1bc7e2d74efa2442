"""``cbm markers validate``: a marker's events scored against the agency's own ground truth."""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
from datetime import date
from pathlib import Path

import pytest
from markers_series import doy_date, grass_rows, write_rows

from cbm_tasks.cli import main
from cbm_tasks.errors import BadInputError
from cbm_tasks.markers.miss_reasons import NOT_COMPUTED, miss_reason
from cbm_tasks.markers.mowing_explain import MowingExplanation, ObservationVerdict, StepVerdict
from cbm_tasks.markers.params import ParamsFileError, load_params, with_value
from cbm_tasks.markers.scoring import score, with_miss_reasons
from cbm_tasks.markers.truth import GroundTruth, read_truth
from cbm_tasks.markers.validation import Predictions, bootstrap_intervals, match_events, matches, unmatched, wilson
from cbm_tasks.traffic_light.checks import Checks, read_checks, score_lights


def _truth_file(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("parcel_id", "date", "event")) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_validate_counts_hits_misses_false_detections_and_clean_negatives(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    series = write_rows(tmp_path / "series.csv", grass_rows("two_cuts", [150, 205], noise=0.005)
                        + grass_rows("one_cut", [190], noise=0.005, seed=1)
                        + grass_rows("uncut", [], noise=0.005, seed=2))
    truth = _truth_file(tmp_path / "truth.csv", [
        ["two_cuts", doy_date(151).isoformat(), "mowing"], ["two_cuts", doy_date(204).isoformat(), "Mowing"],
        ["one_cut", doy_date(230).isoformat(), "mowing"],  # declared 40 days after the cut: a miss and a false one
        ["one_cut", doy_date(230).isoformat(), "mowing"],  # a duplicated row is one event
        ["uncut", "", "mowing"],  # checked, not mown
        ["unseen", doy_date(180).isoformat(), "mowing"],  # no observation in the series
        ["uncut", doy_date(250).isoformat(), "harvest"],  # another marker: not read
    ])
    out = tmp_path / "scores"
    args = ["markers", "validate", "--timeseries", str(series), "--truth", str(truth), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "parcels scored: 4 (1 without markers computed" in text
    assert "true events 4, detected 3: hits 2, missed 2, false 1 (0 on parcels checked without mowing; " in text
    assert "checked without mowing: 1 parcel, 1 of them without a detection" in text
    lines = _read(out / "matches.csv")
    assert [(r["parcel_id"], r["outcome"], r["true_date"]) for r in lines] == [
        ("one_cut", "false", ""), ("one_cut", "missed", doy_date(230).isoformat()),
        ("two_cuts", "hit", doy_date(151).isoformat()), ("two_cuts", "hit", doy_date(204).isoformat()),
        ("unseen", "missed", doy_date(180).isoformat())]
    # each miss with its cause: no clear image near the declared 230th day shows a fall; "unseen" has no series
    assert {(r["parcel_id"], r["reason"]) for r in lines if r["outcome"] == "missed"} == {
        ("one_cut", "no NDVI fall"), ("unseen", NOT_COMPUTED)}
    assert all(r["reason"] == "" for r in lines if r["outcome"] == "hit")
    # a false detection with the fall behind it: the two images, NDVI, drop and red ratio
    (false,) = [r for r in lines if r["outcome"] == "false"]
    day = r"\d{4}-\d\d-\d\d"
    assert re.fullmatch(rf"fall {day} -> {day}: NDVI 0\.\d\d -> 0\.\d\d, drop 0\.\d\d, red x\d\.\d\d",
                        false["reason"]), false["reason"]
    start, end = re.findall(day, false["reason"])
    assert start <= false["predicted_date"] <= end
    assert f"missed, by cause (cbm markers explain --parcel ID shows the falls; matches.csv names each):\n" \
           f"     1  no NDVI fall\n     1  {NOT_COMPUTED}\n" in text
    for row in lines:
        if row["outcome"] == "hit":  # error = predicted - true, within the tolerance, with the event's confidence
            error = (date.fromisoformat(row["predicted_date"]) - date.fromisoformat(row["true_date"])).days
            assert int(row["error_days"]) == error and abs(error) <= 12 and 0.5 <= float(row["confidence"]) <= 1
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["hits"], scores["missed"], scores["false"], scores["negatives"], scores["negatives_clean"],
            scores["parcels_without_observations"], scores["false_on_negatives"]) == (2, 2, 1, 1, 1, 1, 0)
    assert scores["precision"] == pytest.approx(2 / 3, abs=1e-4) and scores["recall"] == pytest.approx(0.5)
    assert scores["missed_by_cause"] == {"no NDVI fall": 1, NOT_COMPUTED: 1}
    low, high = scores["intervals_95"]["f1"]
    assert 0 <= low <= scores["f1"] <= high <= 1
    # the same run again gives the same files (seeded bootstrap, fixed order)
    first = {name: (out / name).read_bytes() for name in ("matches.csv", "scores.json")}
    assert main(args) == 0
    assert {name: (out / name).read_bytes() for name in first} == first
    # a tolerance of 0 days turns the hits into misses and false detections
    assert main(args[:-2] + ["--tolerance-days", "0"]) == 0
    assert "hits 0, missed 4, false 3" in capsys.readouterr().out


def test_validate_scores_other_markers_by_their_event_column(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # a cut of grass from NDVI 0.85 to 0.35 is also the end of a crop cycle to the harvest marker
    series = write_rows(tmp_path / "series.csv", grass_rows("one_cut", [190]) + grass_rows("uncut", []))
    truth = _truth_file(tmp_path / "truth.csv", [["one_cut", doy_date(190).isoformat(), "harvest"],
                                                 ["uncut", "", "harvest"], ["uncut", "2021-06-01", "mowing"],
                                                 ["one_cut", doy_date(290).isoformat(), "harvest"]])
    assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(truth), "--marker", "harvest",
                 "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("harvest marker of ")
    assert "true events 2, detected 1: hits 1, missed 1, false 0" in text
    assert "checked without harvest: 1 parcel, 1 of them without a detection" in text
    # causes are named for the mowing marker only: the missed harvest has none
    assert "missed, by cause" not in text
    assert [r["reason"] for r in _read(tmp_path / "out" / "matches.csv") if r["outcome"] == "missed"] == [""]


def test_truth_of_one_season() -> None:
    """A parcel set is one season: the checks of other years are left out, and the source says so."""
    truth = GroundTruth("checks.csv", "mowing", {"a": [date(2017, 6, 1), date(2018, 6, 1)], "b": [date(2017, 7, 1)]},
                        ("a", "b", "c"), frozenset({"c"}))
    season = truth.of_year(2018)
    assert season.events == {"a": [date(2018, 6, 1)]} and season.parcels == ("a", "c")
    assert season.negatives == {"c"} and season.source == "checks.csv (2018 only: 2 dates of other years left out)"
    assert truth.of_year(2018).of_year(2018) == season
    only = GroundTruth("checks.csv", "mowing", {"a": [date(2018, 6, 1)]}, ("a",), frozenset())
    assert only.of_year(2018) is only  # nothing left out: the same truth, the same source
    with pytest.raises(BadInputError, match="checks.csv: no mowing date of 2019"):
        GroundTruth("checks.csv", "mowing", {"a": [date(2018, 6, 1)]}, ("a",), frozenset()).of_year(2019)


def test_a_miss_is_put_down_to_its_cause() -> None:
    """miss_reason on constructed explanations: the first cause that holds, as validate names it."""
    params = load_params()
    june = date(2021, 6, 15)

    def fall(start: str, end: str, main: str, drop: float, verdict: str, failed: str = "") -> StepVerdict:
        return StepVerdict(start, end, main, 0.8, 0.8 - drop, 0.8, 0.8 - drop, drop, 1.5, math.nan, 0.9, verdict,
                           failed)

    def explained(steps: list[StepVerdict], clear: list[str]) -> MowingExplanation:
        return MowingExplanation("p", params.hash, [ObservationVerdict(d, 0.8, 1.0, True, "") for d in clear], steps)

    assert miss_reason(None, june, params, tolerance_days=12) == NOT_COMPUTED
    assert miss_reason(explained([], []), date(2021, 1, 10), params, tolerance_days=12) == "outside the mowing season"
    assert miss_reason(explained([], ["2021-05-20"]), june, params, tolerance_days=12) == \
        "no clear image within 12 days after"
    assert miss_reason(explained([], ["2021-06-20"]), june, params, tolerance_days=12) == "no NDVI fall"
    # a date in a year without any image of the parcel: a typo in the ground truth (2023 recorded as 2025)
    assert miss_reason(explained([], ["2021-05-20", "2021-06-20"]), date(2025, 6, 15), params, tolerance_days=12) == \
        "no image of the parcel in 2025 (its images 2021-05-20 .. 2021-06-20): is the recorded date right?"
    far = fall("2021-07-20", "2021-07-25", "2021-07-22", 0.4, "mowing")  # out of reach of the tolerance
    assert miss_reason(explained([far], ["2021-06-20"]), june, params, tolerance_days=12) == "no NDVI fall"
    weak = fall("2021-06-10", "2021-06-17", "2021-06-14", 0.2, "not a cut", "red did not rise as at a cut")
    assert miss_reason(explained([weak], []), june, params, tolerance_days=12) == "red did not rise as at a cut"
    lost = fall("2021-06-12", "2021-06-17", "2021-06-14", 0.3, "weaker than the cut of 2021-06-29")
    assert miss_reason(explained([weak, lost], []), june, params, tolerance_days=12) == "a larger fall nearby won"
    late = fall("2021-06-20", "2021-07-10", "2021-07-01", 0.3, "mowing")  # a long gap dates it 16 days late
    assert miss_reason(explained([late], []), june, params, tolerance_days=12) == \
        "its fall is a mowing dated more than 12 days away"
    assert miss_reason(explained([late], []), june, params, tolerance_days=20) == \
        "its fall is a mowing matched to another true date"
    # a miss of another marker has no cause to name
    result = score(Predictions("harvest", {}, {}, frozenset(), "s.csv", "test", {}),
                   GroundTruth("t.csv", "harvest", {"a": [june]}, ("a",), frozenset()))
    with pytest.raises(ValueError, match="mowing marker, not 'harvest'"):
        with_miss_reasons(result, lambda parcel: None)


def test_truth_file_formats(tmp_path: Path) -> None:
    # JRC's SALMS layout: ID, Event_date as DD/MM/YYYY, numeric Event_type (not a marker name: not read)
    foi = _truth_file(tmp_path / "FOIinfo.csv",
                      [["0", "7", "1.3", "10/07/2020", "1"], ["1", "7", "1.3", "09/09/2020", "1"]],
                      header=("", "ID", "area", "Event_date", "Event_type"))
    truth = read_truth(foi)
    assert truth.events == {"7": [date(2020, 7, 10), date(2020, 9, 9)]} and truth.parcels == ("7",)
    assert truth.negatives == frozenset()
    # gzipped, with a byte-order mark and timestamps
    packed = tmp_path / "truth.csv.gz"
    with gzip.open(packed, "wt", encoding="utf-8-sig") as stream:
        stream.write("parcel_id,date\nA,2021-06-30T00:00:00Z\nB,\n")
    truth = read_truth(packed)
    assert truth.events == {"A": [date(2021, 6, 30)]} and truth.parcels == ("A", "B")
    assert truth.negatives == frozenset({"B"})
    # field surveys and camera plots name their parcels plot_id
    plots = _truth_file(tmp_path / "plots.csv", [["P7", "2023-05-02"], ["P7", "2023-06-20"]],
                        header=("plot_id", "date"))
    assert read_truth(plots).events == {"P7": [date(2023, 5, 2), date(2023, 6, 20)]}


@pytest.mark.parametrize(("rows", "header", "message"), [
    ([["A", "2021-13-01"]], ("parcel_id", "date"), "line 2: column 'date': cannot read date '2021-13-01'"),
    ([["A", "2021-06-01"]], ("plot", "date"), "needs a parcel column"),
    ([["A", "2021-06-01"], ["A", ""]], ("parcel_id", "date"), "line 3: parcel 'A' has no mowing here but dated"),
    ([["", "2021-06-01"]], ("parcel_id", "date"), "line 2: column 'parcel_id' is empty"),
    ([["A", "2021-06-01", "harvest"]], ("parcel_id", "date", "event"), "no rows of marker 'mowing'"),
])
def test_bad_truth_files_are_named_and_nothing_is_written(tmp_path: Path, rows: list[list[str]],
                                                          header: tuple[str, ...], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    truth = _truth_file(tmp_path / "truth.csv", rows, header=header)
    with pytest.raises(BadInputError, match=message) as error:
        read_truth(truth)
    assert str(truth) in str(error.value)
    series = write_rows(tmp_path / "series.csv", grass_rows("A", [190]))
    assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(truth), "--out",
                 str(tmp_path / "out")]) == 2
    assert str(truth) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_truth_and_survey_folders_of_other_markers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file or folder"):
        read_truth(tmp_path / "absent.csv")
    with pytest.raises(BadInputError, match="holds mowing only, not 'harvest'"):
        read_truth(tmp_path, "harvest")


def test_bootstrap_intervals() -> None:
    truth = {f"p{i}": [date(2021, 6, 1)] for i in range(40)}
    # 30 parcels found on the day, 10 missed, and a false detection on 5 of the found ones
    predicted = {f"p{i}": [date(2021, 6, 3)] + ([date(2021, 8, 1)] if i < 5 else []) for i in range(30)}
    parcels = sorted(truth) + ["n1", "n2"]
    negatives = {"n1", "n2"}
    predicted["n2"] = [date(2021, 7, 1)]
    score = match_events(predicted, truth, parcels, negatives=negatives)
    intervals = bootstrap_intervals(predicted, truth, parcels, negatives=negatives)
    assert intervals == bootstrap_intervals(predicted, truth, parcels, negatives=negatives)  # seeded
    for name, value in (("precision", score.precision), ("recall", score.recall), ("f1", score.f1),
                        ("negatives_clean", 0.5)):
        low, high = intervals[name]
        assert low <= value <= high, name
    # fewer parcels, wider interval
    few = bootstrap_intervals(predicted, truth, [f"p{i}" for i in (0, 1, 2, 3, 30, 31)])  # recall 4/6
    assert few["recall"][1] - few["recall"][0] >= intervals["recall"][1] - intervals["recall"][0]
    assert all(math.isnan(v) for v in few["negatives_clean"])  # no negative among them
    assert all(math.isnan(v) for v in bootstrap_intervals({}, {}, [])["f1"])


def test_detections_by_confidence_say_how_often_each_tenth_was_right() -> None:
    d = date(2021, 6, 1)
    truth = GroundTruth("checks.csv", "mowing", {"a": [d], "b": [d], "c": [d]}, ("a", "b", "c", "d", "e"),
                        frozenset({"d"}))
    events = {"a": [d], "b": [date(2021, 7, 1)], "c": [d], "d": [d], "e": [d], "x": [d]}
    confidence = {("a", d): 0.95, ("b", date(2021, 7, 1)): 0.62, ("c", d): 1.0, ("d", d): 0.6, ("e", d): math.nan,
                  ("x", d): 0.55}  # x: not a scored parcel; e: a stored event without a confidence
    predictions = Predictions("mowing", events, confidence, frozenset(events), "series.csv", "test", {})
    result = score(predictions, truth)
    # a and c (1.0 goes with the top tenth) are hits; b (dated a month off) and d (checked, not mown) are false
    assert result.by_confidence() == [(0.6, 2, 0), (0.9, 2, 2)]
    text = result.summary()
    assert "detections by confidence: how many were hits" in text
    assert "  0.6-0.7     0 of    2 =   0% (0%-66%)" in text and "  0.9-1.0     2 of    2 = 100% (34%-100%)" in text
    assert result.figures()["by_confidence"] == [
        {"confidence_from": 0.6, "confidence_to": 0.7, "detected": 2, "hits": 0, "hit_share": 0.0,
         "hit_share_95": [0.0, 0.6576]},
        {"confidence_from": 0.9, "confidence_to": 1.0, "detected": 2, "hits": 2, "hit_share": 1.0,
         "hit_share_95": [0.3424, 1.0]}]
    # no detection on a scored parcel: no table
    empty = score(Predictions("mowing", {}, {}, frozenset("abcde"), "series.csv", "test", {}), truth)
    assert empty.by_confidence() == [] and "detections by confidence" not in empty.summary()


def test_matches_agree_with_the_score_and_unmatched() -> None:
    truth = {"a": [date(2021, 6, 1), date(2021, 7, 20)], "b": [date(2021, 6, 10)]}
    predicted = {"a": [date(2021, 6, 5), date(2021, 9, 1)], "c": [date(2021, 6, 1)]}
    lines = matches(predicted, truth, ["a", "b", "c"])
    score = match_events(predicted, truth, ["a", "b", "c"])
    outcomes = [line.outcome for line in lines]
    assert (outcomes.count("hit"), outcomes.count("false"), outcomes.count("missed")) == (score.tp, score.fp, score.fn)
    assert [line.error_days for line in lines if line.outcome == "hit"] == [4]
    missed, false = unmatched(predicted, truth, ["a", "b", "c"])
    assert missed == {"a": [date(2021, 7, 20)], "b": [date(2021, 6, 10)]}
    assert false == {"a": [date(2021, 9, 1)], "c": [date(2021, 6, 1)]}


def test_parcel_ids_a_spreadsheet_wrote_as_floats_match_and_foreign_ids_are_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = write_rows(tmp_path / "series.csv", grass_rows("1234", [190]))
    spreadsheet = _truth_file(tmp_path / "excel.csv", [["1234.0", doy_date(190).isoformat()]], ("parcel_id", "date"))
    assert read_truth(spreadsheet).parcels == ("1234",)
    assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(spreadsheet)]) == 0
    assert "hits 1, missed 0, false 0" in capsys.readouterr().out
    other = _truth_file(tmp_path / "other.csv", [["AT-1234", doy_date(190).isoformat()]], ("parcel_id", "date"))
    assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(other)]) == 0
    assert "WARNING: no parcel of the ground truth has markers: ids there look like 'AT-1234', in " in \
        capsys.readouterr().out


def test_vary_scores_each_value_of_one_parameter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = write_rows(tmp_path / "series.csv", grass_rows("two_cuts", [150, 205], noise=0.005)
                        + grass_rows("uncut", [], noise=0.005, seed=2))
    truth = _truth_file(tmp_path / "truth.csv", [["two_cuts", doy_date(151).isoformat()],
                                                 ["two_cuts", doy_date(204).isoformat()], ["uncut", ""]],
                        ("parcel_id", "date"))
    out = tmp_path / "out"
    assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(truth), "--vary",
                 "mowing.season_end_doy=273,180", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mowing.season_end_doy varied" in text
    rows = _read(out / "vary.csv")
    # 273 (30 September) is the default: its row is the main score, with the default parameters' hash
    scores = json.loads((out / "scores.json").read_text())
    assert rows[0]["parameters_hash"] == scores["parameters_hash"][:12]
    assert rows[0]["hits"] == str(scores["hits"]) == "2"
    # a season ending on 29 June leaves the July cut out
    assert (rows[1]["detected"], rows[1]["hits"], rows[1]["missed"]) == ("1", "1", "1")
    assert rows[1]["parameters_hash"] != rows[0]["parameters_hash"]


@pytest.mark.parametrize(("vary", "message"), [
    ("mowing.min_dorp=0.1", "no parameter 'mowing.min_dorp'"),
    ("mowing.min_confidence=1.5", r"mowing.min_confidence must be a fraction, 0-1"),
    ("mowing.min_confidence", "expected SECTION.KEY=V1,V2"),
    ("mowing.min_confidence=a,b", "expected SECTION.KEY=V1,V2"),
])
def test_bad_vary_is_named_and_nothing_is_written(tmp_path: Path, vary: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    series = write_rows(tmp_path / "series.csv", grass_rows("A", [190]))
    truth = _truth_file(tmp_path / "truth.csv", [["A", doy_date(190).isoformat()]], ("parcel_id", "date"))
    assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(truth), "--vary", vary,
                 "--out", str(tmp_path / "out")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_with_value_hashes_as_a_file_stating_it(tmp_path: Path) -> None:
    stated = tmp_path / "p.yaml"
    stated.write_text("mowing:\n  min_spacing_days: 30\n  min_confidence: 0.45\n")
    changed = with_value(with_value(load_params(), "mowing.min_spacing_days", 30.0), "mowing.min_confidence", 0.45)
    assert changed.hash == load_params(stated).hash
    assert changed.source == "defaults with mowing.min_spacing_days=30 with mowing.min_confidence=0.45"
    with pytest.raises(ParamsFileError, match="no parameter 'nowhere'"):
        with_value(load_params(), "nowhere", 1.0)


def test_read_checks(tmp_path: Path) -> None:
    checks = _truth_file(tmp_path / "checks.csv", [
        ["A", "Yes", "grassland_mowing", ""], ["B", "non-compliant", "grassland_mowing", "2021"],
        ["B", "0", "grassland_mowing", "2021.0"],  # the same check again (a spreadsheet's year)
        ["C", "1", "arable_harvest", ""],  # another scheme: not read
        ["D", "no", "", ""],  # no scheme named: this one
    ], ("ID", "compliant", "scheme", "season"))
    read = read_checks(checks, "grassland_mowing")
    assert read.outcomes == {("A", None): True, ("B", 2021): False, ("D", None): False}


@pytest.mark.parametrize(("rows", "message"), [
    ([["A", "maybe"]], "line 2: column 'compliant': 'maybe' is not yes/no"),
    ([["", "yes"]], "line 2: column 'parcel_id': empty"),
    ([["A", "yes"], ["A", "no"]], "line 3: parcel 'A' is checked compliant and not compliant"),
])
def test_bad_checks_are_named(tmp_path: Path, rows: list[list[str]], message: str) -> None:
    checks = _truth_file(tmp_path / "checks.csv", rows, ("parcel_id", "compliant"))
    with pytest.raises(BadInputError, match=message):
        read_checks(checks, "grassland_mowing")
    with pytest.raises(BadInputError, match="needs a parcel column"):
        read_checks(_truth_file(tmp_path / "other.csv", [["A", "yes"]], ("parcel_id", "mown")), "grassland_mowing")


def test_wilson_interval() -> None:
    low, high = wilson(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)  # the textbook value
    low, high = wilson(17, 194)
    assert low < 17 / 194 < high and high - low < 0.1
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_score_lights_by_season() -> None:
    lights = {("A", 2021): ("green", "EVENT_FOUND"), ("A", 2022): ("red", "NO_EVENT"), ("B", 2022): ("yellow", "GAP")}
    checks = Checks("checks.csv", "s", {("A", 2022): True, ("B", None): False, ("C", None): True})
    result = score_lights(lights, checks, source="f", described="d")
    assert result.lines == [("A", 2022, True, "red", "NO_EVENT"), ("B", 2022, False, "yellow", "GAP"),
                            ("C", None, True, "none", "")]
    figures = result.figures()
    assert figures["compliant_lit_red"]["count"] == 1 and figures["compliant_lit_red"]["of"] == 1
    assert figures["yellow"]["count"] == 1 and figures["yellow"]["of"] == 2
    with pytest.raises(BadInputError, match="parcel 'A' is lit in seasons 2021, 2022: give the check's season"):
        score_lights(lights, Checks("checks.csv", "s", {("A", None): True}), source="f", described="d")


def test_validate_lights_of_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = write_rows(tmp_path / "series.csv", grass_rows("cut", [190], noise=0.01)
                        + grass_rows("uncut", [], noise=0.01, seed=3))
    checks = _truth_file(tmp_path / "checks.csv", [["cut", "yes"], ["uncut", "yes"]], ("parcel_id", "compliant"))
    out = tmp_path / "out"
    assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(checks), "--scheme",
                 "grassland_mowing", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "compliant lit red: 1 of 2 lit = 50%" in text and "(a farmer wrongly accused)" in text
    assert [(r["parcel_id"], r["colour"], r["reason"]) for r in _read(out / "lights.csv")] == [
        ("cut", "green", "EVENT_FOUND"), ("uncut", "red", "NO_EVENT")]
    assert json.loads((out / "light_scores.json").read_text())["compliant"] == {
        "green": 1, "yellow": 0, "red": 1, "none": 0}
    for extra, message in ((["--scheme", "no_such"], "no scheme 'no_such'"),
                           (["--scheme", "grassland_mowing", "--marker", "mowing"], "--marker and --vary score")):
        assert main(["markers", "validate", "--timeseries", str(series), "--truth", str(checks), *extra]) == 2
        assert message in capsys.readouterr().err
