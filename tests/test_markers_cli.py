"""``cbm markers run|plot`` on files: outputs, determinism, rules validation (nothing written on bad input)."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from markers_params import recorded_params
from markers_series import grass_rows, write_rows

from cbm_tasks.cli import main
from cbm_tasks.markers.engine import markers_from_prepared, run_markers
from cbm_tasks.markers.params import NEUTRAL, MarkerParams, ParamsFileError, check_ranges, default_params, load_params
from cbm_tasks.markers.plot import parcel_figure
from cbm_tasks.markers.preprocess import prepare
from cbm_tasks.markers.reader import read_series
from cbm_tasks.traffic_light import RulesFileError, evaluate_lights, load_rules
from cbm_tasks.traffic_light.evaluate import evaluate_rule
from cbm_tasks.traffic_light.rules import Rule

RULES = """version: 3
schemes:
  mown:
    rules:
      - {id: R1, marker: mowing, require: present, window: {start: "06-01", end: "08-31"}, min_confidence: 0.5}
crop_schemes:
  default:
    unknown_crop: [mown]
"""


def _series(tmp_path: Path) -> Path:
    rows = (grass_rows("cut", [190], noise=0.01) + grass_rows("uncut", [], noise=0.01, seed=3)
            + grass_rows("cloudy", [190], cloudy=list(range(140, 260))))
    return write_rows(tmp_path / "series.csv", rows)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_run_writes_events_and_lights_identically_twice(tmp_path: Path) -> None:
    series = _series(tmp_path)
    assert main(["markers", "run", "--timeseries", str(series), "--out", str(tmp_path / "a")]) == 0
    assert main(["markers", "run", "--timeseries", str(series), "--out", str(tmp_path / "b")]) == 0
    for name in ("events.csv", "traffic_lights.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lights = {(r["parcel_id"], r["scheme"]): (r["colour"], r["reason"]) for r in _read(tmp_path / "a" /
                                                                                     "traffic_lights.csv")}
    assert lights == {("cut", "grassland_mowing"): ("green", "EVENT_FOUND"),
                      ("uncut", "grassland_mowing"): ("red", "NO_EVENT"),
                      ("cloudy", "grassland_mowing"): ("yellow", "NO_DATA")}
    events = _read(tmp_path / "a" / "events.csv")
    assert list(events[0]) == ["parcel_id", "marker", "seq", "start_date", "main_date", "end_date", "confidence",
                               "value", "sources", "products"]  # a contract: columns are only appended
    assert {e["products"] for e in events} == {""}  # the series has no product_id column
    mowing = [e for e in events if e["marker"] == "mowing"]
    assert [(e["parcel_id"], e["seq"], e["sources"]) for e in mowing] == [("cut", "1", "s2")]
    assert mowing[0]["start_date"] <= mowing[0]["main_date"] <= mowing[0]["end_date"]


def test_a_file_of_several_seasons_gets_a_light_per_season(tmp_path: Path) -> None:
    # one plot mown in 2021 and not in 2022, another seen in 2022 only: lights per parcel, scheme and season
    rows = (grass_rows("plot", [190], year=2021) + grass_rows("plot", [], year=2022)
            + grass_rows("late", [200], year=2022))
    series = write_rows(tmp_path / "seasons.csv", rows)
    assert main(["markers", "run", "--timeseries", str(series), "--out", str(tmp_path / "o")]) == 0
    lights = _read(tmp_path / "o" / "traffic_lights.csv")
    assert list(lights[0]) == ["parcel_id", "scheme", "colour", "reason", "season"]  # season appended
    assert [(r["parcel_id"], r["season"], r["colour"], r["reason"]) for r in lights] == [
        ("late", "2022", "green", "EVENT_FOUND"), ("plot", "2021", "green", "EVENT_FOUND"),
        ("plot", "2022", "red", "NO_EVENT")]
    # a given --year lights that season only
    assert main(["markers", "run", "--timeseries", str(series), "--year", "2021", "--out", str(tmp_path / "y")]) == 0
    assert [(r["parcel_id"], r["season"], r["reason"]) for r in _read(tmp_path / "y" / "traffic_lights.csv")] == [
        ("late", "2021", "NO_DATA"), ("plot", "2021", "EVENT_FOUND")]


def test_crops_select_schemes(tmp_path: Path) -> None:
    series = _series(tmp_path)
    crops = write_rows(tmp_path / "crops.csv", [["cut", 9120], ["uncut", 1200]], ["parcel_id", "crop_code"])
    assert main(["markers", "run", "--timeseries", str(series), "--crops", str(crops), "--out",
                 str(tmp_path / "o")]) == 0
    lights = sorted((r["parcel_id"], r["scheme"], r["colour"]) for r in _read(tmp_path / "o" / "traffic_lights.csv"))
    assert lights == [("cloudy", "grassland_mowing", "yellow"), ("cut", "grassland_mowing", "green"),
                      ("cut", "permanent_grassland", "green"), ("uncut", "arable_harvest", "red")]


def test_crop_prefixes_map_a_hierarchy_of_codes(tmp_path: Path) -> None:
    # EuroCrops' HCAT and WorldCereal's legend group their codes by prefix: one key per group
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES + '    crops: {"33*": [mown], "3301*": [], "330102": [mown], "*": [mown]}\n')
    loaded = load_rules(rules)
    assert loaded.schemes_for("3302010100") == ("mown",)  # "33*"
    assert loaded.schemes_for("3301010100") == ()  # the longer prefix "3301*" wins
    assert loaded.schemes_for("330102") == ("mown",)  # the code's own key wins over any prefix
    assert loaded.schemes_for("9999") == ("mown",)  # "*": any crop code
    assert loaded.schemes_for(None) == ("mown",)  # no crop: unknown_crop, not "*"
    demo = load_rules()  # the shipped demo AOI maps the WorldCereal legend's groups
    assert [demo.schemes_for(code, aoi="demo") for code in ("1110", "4351", "4420", "7910", "9120", "3510")] == [
        ("arable_harvest",), ("arable_harvest",), (), ("forage_cut",), ("grassland_mowing", "permanent_grassland"),
        ()]


@pytest.mark.parametrize(("text", "message"), [
    (RULES.replace("marker: mowing", "marker: grazing"), r"rules\.yaml, scheme mown, rule 1 \(id R1\): unknown "
                                                          r"marker 'grazing'"),
    (RULES.replace('"06-01"', '"06-31"'), r"rule 1 \(id R1\): window date '06-31' is not a calendar day"),
    (RULES.replace('"06-01"', '"June"'), r"rule 1 \(id R1\): window date must be MM-DD, got 'June'"),
    (RULES.replace('"08-31"', '"05-01"'), r"\(id R1\): window ends \(05-01\) before it starts \(06-01\)"),
    (RULES.replace("require: present", "require: often"), r"\(id R1\): require must be one of present, absent"),
    (RULES.replace("unknown_crop: [mown]", "unknown_crop: [grazed]"), r"crop_schemes.default: unknown scheme"),
    (RULES + '    crops: {"3*3": [mown]}\n', r"crop_schemes.default: crop '3\*3': '\*' may only end a code"),
    ("schemes: [", r"rules\.yaml: not valid YAML"),
    (RULES.replace("min_confidence: 0.5}", "min_confidence: 0.5, min_events: 0}"), r"\(id R1\): min_events must be an"),
    (RULES.replace("min_confidence: 0.5}", "min_confidence: 0.5, max_events: 2}"), r"\(id R1\): max_events applies to "
                                                                                   r"require: absent"),
    (RULES.replace("min_confidence: 0.5}", "min_confidence: 0.5, max_gap_days: .nan}"),
     r"\(id R1\): max_gap_days must be a finite number, got nan"),
])
def test_bad_rules_file_is_named_and_nothing_is_written(tmp_path: Path, text: str, message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    with pytest.raises(RulesFileError, match=message):
        load_rules(rules)
    out = tmp_path / "out"
    assert main(["markers", "run", "--timeseries", str(_series(tmp_path)), "--rules", str(rules), "--out",
                 str(out)]) == 2
    assert "rules.yaml" in capsys.readouterr().err
    assert not out.exists()


def test_bad_series_and_params_write_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("parcel_id,obs_time,source,band,mean\na,2021-05-01,s2,B04,abc\n")
    assert main(["markers", "run", "--timeseries", str(bad), "--out", str(tmp_path / "o1")]) == 2
    assert not (tmp_path / "o1").exists()
    params = tmp_path / "p.yaml"
    params.write_text("mowing:\n  min_dropp: 0.2\n")
    with pytest.raises(ParamsFileError, match=r"p\.yaml: unknown key mowing\.min_dropp"):
        load_params(params)
    assert main(["markers", "run", "--timeseries", str(_series(tmp_path)), "--params", str(params), "--out",
                 str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize(("text", "error"), [
    ("validity:\n  min_clear_fraction: 80\n", r"validity\.min_clear_fraction must be a fraction, 0-1, got 80"),
    ("mowing:\n  season_end_doy: 400\n", r"mowing\.season_end_doy must be a day of year, 1-366, got 400"),
    ("mowing:\n  season_start_doy: 250\n  season_end_doy: 120\n",
     r"mowing\.season_start_doy \(250\) is after mowing\.season_end_doy \(120\)"),
    ("mowing:\n  min_drop: .nan\n", r"mowing\.min_drop must be finite"),
    ("mowing:\n  max_step_days: .inf\n", r"mowing\.max_step_days must be finite"),
    ("mowing:\n  lookback_days: -5\n", r"mowing\.lookback_days must not be negative \(days\), got -5"),
    ("harvest:\n  crop_cycles: 2\n", r"harvest\.crop_cycles must be 0 or 1, got 2"),
    ("bare_soil:\n  max_ndvi: 25\n", r"bare_soil\.max_ndvi must be an index value, -1 to 1, got 25"),
    ("mowing:\n  max_events: 0\n", r"mowing\.max_events must be at least 1, got 0"),
    ("mowing:\n  full_red_ratio: 1.2\n", r"mowing\.min_red_ratio \(1\.3\) is above mowing\.full_red_ratio \(1\.2\)"),
])
def test_params_out_of_range_are_named_and_write_nothing(tmp_path: Path, text: str, error: str) -> None:
    """A mis-scaled threshold (percent for a fraction, reflectance x 10000 ...) is an error, not a silent change."""
    params = tmp_path / "p.yaml"
    params.write_text(text)
    with pytest.raises(ParamsFileError, match=r"p\.yaml: " + error):
        load_params(params)
    assert main(["markers", "run", "--timeseries", str(_series(tmp_path)), "--params", str(params), "--out",
                 str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_shipped_params_are_in_range() -> None:
    check_ranges(default_params().sections, "defaults")  # the shipped file passes the checks users' files get
    # a negative NDVI threshold and 999 days ("off") are in range
    check_ranges({"validity": {"min_plausible_ndvi": -0.2}, "mowing": {"coherence_refine_gap_days": 999.0}}, "x")


def test_params_override_and_hash(tmp_path: Path) -> None:
    defaults = load_params()
    params = tmp_path / "p.yaml"
    params.write_text("version: 7\nmowing:\n  min_drop: 0.2\n")
    custom = load_params(params)
    assert custom.get("mowing", "min_drop") == 0.2 and custom.version == 7
    assert custom.get("mowing", "min_spacing_days") == defaults.get("mowing", "min_spacing_days")
    assert custom.hash != defaults.hash and load_params().hash == defaults.hash and len(defaults.hash) == 64


def test_parameters_recorded_by_an_older_version_recompute_as_they_did(tmp_path: Path) -> None:
    # a run recorded version 2 parameters (cbm.marker_run.params): no v3 keys. Recomputing it (audit
    # report, cbm audit verify) must not fail and must give the v2 result: the v3 rules are off.
    defaults = load_params()
    v3_keys = {("mowing", "min_moisture_drop"), ("mowing", "date_window_days")}
    recorded = recorded_params(2, without=v3_keys, source="marker_run")
    off = tmp_path / "v2.yaml"
    off.write_text("version: 2\nmowing:\n  min_moisture_drop: 0\n  date_window_days: 999\n")
    as_v2 = load_params(off)
    assert set(NEUTRAL) <= {(name, k) for name, values in defaults.sections.items() for k in values}
    assert [recorded.get(*key) for key in sorted(v3_keys)] == [as_v2.get(*key) for key in sorted(v3_keys)]
    # a cut in a 40-day cloud gap: v2 dates it in the gap's middle, v3 within the regrowth time
    days = list(range(60, 151, 5)) + list(range(190, 301, 5))
    keep = {(date(2021, 1, 1) + timedelta(days=d - 1)).isoformat() for d in days}
    series = read_series(write_rows(tmp_path / "gap.csv", [row for row in grass_rows("p", [186]) if row[1] in keep]))

    def mowing(params: MarkerParams) -> list[str]:
        return [r.main_date for r in run_markers(series, params).rows() if r.marker == "mowing"]
    assert mowing(recorded) == mowing(as_v2) != mowing(defaults)
    with pytest.raises(KeyError, match="marker_run.*no mowing.no_such_key"):
        recorded.get("mowing", "no_such_key")


def test_rule_outcomes() -> None:
    rule = Rule("R", "mowing", "present", (6, 1), (8, 31), 0.5, 3, 30.0)
    june1 = float(np.datetime64("2021-06-01").astype(int))
    clear = june1 + np.arange(0, 92, 10.0)
    def outcome(main: list[float], conf: list[float], clear_day: np.ndarray = clear, r: Rule = rule) -> tuple[str, str]:
        o = evaluate_rule(r, 2021, clear_day=clear_day, event_main=np.array(main), event_confidence=np.array(conf),
                          event_seq=np.arange(1, len(main) + 1))
        return o.colour, o.reason
    assert outcome([june1 + 30], [0.9]) == ("green", "EVENT_FOUND")
    assert outcome([june1 - 5], [0.9]) == ("red", "NO_EVENT")  # before the window
    assert outcome([june1 + 30], [0.3]) == ("yellow", "LOW_CONFIDENCE")
    assert outcome([], [], clear[:2]) == ("yellow", "NO_DATA")
    assert outcome([], [], clear[[0, 1, 2, 7, 8, 9]]) == ("yellow", "GAP")
    assert outcome([june1 + 30], [0.9], clear[:2]) == ("green", "EVENT_FOUND")  # a cut seen is a cut done
    banned = Rule("B", "bare_soil", "absent", (6, 1), (8, 31), 0.5, 3, 30.0)
    assert outcome([june1 + 30], [0.9], r=banned) == ("red", "EVENT_IN_BANNED_PERIOD")
    assert outcome([], [], r=banned) == ("green", "NO_EVENT")
    # counts: two mowings required (e.g. an eco-scheme), at most two cuts allowed (extensive grassland)
    twice = Rule("T", "mowing", "present", (6, 1), (8, 31), 0.5, 3, 30.0, min_events=2)
    assert outcome([june1 + 10, june1 + 50], [0.9, 0.8], r=twice) == ("green", "EVENT_FOUND")
    assert outcome([june1 + 10], [0.9], r=twice) == ("red", "TOO_FEW_EVENTS")
    assert outcome([june1 + 10, june1 + 50], [0.9, 0.3], r=twice) == ("yellow", "LOW_CONFIDENCE")
    assert outcome([], [], r=twice) == ("red", "NO_EVENT")
    at_most_two = Rule("X", "mowing", "absent", (6, 1), (8, 31), 0.5, 3, 30.0, max_events=2)
    cuts = [june1 + 5, june1 + 40, june1 + 80]
    assert outcome(cuts, [0.9, 0.8, 0.7], r=at_most_two) == ("red", "TOO_MANY_EVENTS")
    assert outcome(cuts[:2], [0.9, 0.8], r=at_most_two) == ("green", "EVENT_FOUND")  # within the limit
    assert outcome(cuts, [0.9, 0.8, 0.3], r=at_most_two) == ("yellow", "LOW_CONFIDENCE")  # a weak third
    assert outcome([], [], r=at_most_two) == ("green", "NO_EVENT")


def test_lights_trace_rule_and_event(tmp_path: Path) -> None:
    result = run_markers(read_series(_series(tmp_path)), load_params())
    lights = {light.parcel_id: light for light in evaluate_lights(result, load_rules())}
    assert lights["cut"].rule_id == "GM-MOW-1" and lights["cut"].event_seq == 1 and lights["cut"].year == 2021
    assert lights["cloudy"].n_clear_obs == 0 and lights["cloudy"].longest_gap_days == 92.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    series = _series(tmp_path)
    out = tmp_path / "cut.png"
    assert main(["markers", "plot", "--timeseries", str(series), "--parcel", "cut", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert main(["markers", "plot", "--timeseries", str(series), "--parcel", "nope", "--out",
                 str(tmp_path / "n.png")]) == 2
    assert not (tmp_path / "n.png").exists()
    # with B11 the inspector also sees the moisture index the cut test reads; without it, no such line
    with_swir = [[*r[:3], "B11", f"{float(r[4]) * 0.6:.5f}", *r[5:]] for r in grass_rows("w", [190]) if r[3] == "B08"]
    for rows, expected in ((grass_rows("w", [190]) + with_swir, True), (grass_rows("w", [190]), False)):
        prepared = prepare(read_series(write_rows(tmp_path / "w.csv", rows)), load_params())
        figure = parcel_figure(prepared, markers_from_prepared(prepared, load_params()), 0)
        assert ("NDMI (clear)" in [line.get_label() for line in figure.axes[0].lines]) is expected
    # the audit report draws only the events of the markers the parcel's schemes read
    result = markers_from_prepared(prepared, load_params())
    labels = [[line.get_label() for line in parcel_figure(prepared, result, 0, markers=only).axes[0].lines]
              for only in (None, {"harvest"})]
    assert "mowing" in labels[0] and "mowing" not in labels[1]
