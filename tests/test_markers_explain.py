"""Why a parcel has or lacks a mowing (`cbm markers explain`, the audit report's table of NDVI falls).

The explanation judges every fall with the mowing kernel's own tests, so it must name as ``mowing``
exactly the events the detector emits: checked on every plot of the real development sets.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from markers_explained import bare_runs_detected, bare_runs_explained, emergences_detected, emergences_explained
from markers_params import recorded_params
from markers_series import grass_rows, write_rows

from cbm_tasks import cli
from cbm_tasks.errors import BadInputError
from cbm_tasks.markers import load_params, prepare, read_series, run_markers
from cbm_tasks.markers.bare_soil_explain import explain_bare_soil
from cbm_tasks.markers.emergence_explain import explain_emergence
from cbm_tasks.markers.harvest_explain import explain_harvest
from cbm_tasks.markers.importers import convert_salms
from cbm_tasks.markers.mowing import detect_mowing
from cbm_tasks.markers.mowing_explain import explain_mowing
from cbm_tasks.markers.params import with_value
from cbm_tasks.markers.series import SeriesTable, day_to_date
from cbm_tasks.traffic_light import evaluate_lights, load_rules

PARAMS = load_params()


def _explained(series: SeriesTable, use_s1: bool) -> dict[str, list[tuple[str, str, str, float]]]:
    out: dict[str, list[tuple[str, str, str, float]]] = {}
    for parcel_id in series.parcel_ids:
        for step in explain_mowing(series, str(parcel_id), PARAMS, use_s1=use_s1).steps:
            if step.verdict == "mowing":
                out.setdefault(str(parcel_id), []).append((step.start_date, step.end_date, step.main_date,
                                                           round(step.confidence, 9)))
    return out


def _detected(series: SeriesTable, use_s1: bool) -> dict[str, list[tuple[str, str, str, float]]]:
    prepared = prepare(series, PARAMS)
    events = detect_mowing(prepared, PARAMS, use_s1=use_s1)
    out: dict[str, list[tuple[str, str, str, float]]] = {}
    for parcel, start, main, end, confidence in zip(events.parcel, events.start, events.main, events.end,
                                                    events.confidence, strict=True):
        out.setdefault(str(prepared.parcel_ids[parcel]), []).append(
            (day_to_date(start), day_to_date(end), day_to_date(main), round(float(confidence), 9)))
    return out


def _harvests_explained(series: SeriesTable) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for parcel_id in series.parcel_ids:
        for cycle in explain_harvest(series, str(parcel_id), PARAMS).cycles:
            if cycle.verdict == "harvest":
                out.setdefault(str(parcel_id), []).append((cycle.last_high_date, cycle.low_date))
    return out


def _harvests_detected(series: SeriesTable) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for row in run_markers(series, PARAMS, use_s1=False).rows():
        if row.marker == "harvest":
            out.setdefault(row.parcel_id, []).append((row.start_date, row.end_date))
    return out


def test_harvest_explanation_names_exactly_the_detected_harvests(tmp_path: Path) -> None:
    salms = read_series(convert_salms(shared_data("salms_grassland"), tmp_path / "salms.csv"))
    slovak = read_series(shared_data("grassland_sk_train", "timeseries.csv.gz"))
    for series in (salms, slovak):
        detected = _harvests_detected(series)
        assert _harvests_explained(series) == detected
    assert sum(map(len, detected.values())) > 50  # grass plots grazed or cut to stubble: harvest-like cycles


def test_bare_soil_explanation_names_exactly_the_detected_runs(tmp_path: Path) -> None:
    salms = read_series(convert_salms(shared_data("salms_grassland"), tmp_path / "salms.csv"))
    slovak = read_series(shared_data("grassland_sk_train", "timeseries.csv.gz"))
    for series in (salms, slovak):
        detected = bare_runs_detected(series)
        assert bare_runs_explained(series) == detected and detected
    # the Slovak set has B02 and B11: lows the soil index calls green or wet are listed as not bare
    verdicts = {(o.verdict, o.reason.split(":")[0]) for pid in slovak.parcel_ids
                for o in explain_bare_soil(slovak, str(pid), PARAMS).observations}
    assert ("not bare soil", "BSI below bare_soil.min_bsi 0.00") in verdicts
    assert ("not used", "cloud dip") in verdicts


def test_bare_soil_explanation_of_a_ploughed_grassland(tmp_path: Path) -> None:
    # grass ploughed in mid-May (doy 135-150 at the soil line), a one-image cloud dip in August and a cloudy image
    rows = grass_rows("p", [], cloudy=[200], dips=[230])
    ploughed = [r for r in rows if not (135 <= (date.fromisoformat(str(r[1])) - date(2021, 1, 1)).days + 1 <= 150)]
    soil = []
    for doy in (135, 140, 145, 150):
        when = (date(2021, 1, 1) + timedelta(days=doy - 1)).isoformat()
        soil += [["p", when, "s2", "B04", "0.12000", 0.97, ""], ["p", when, "s2", "B08", "0.16000", 0.97, ""]]
    series = read_series(write_rows(tmp_path / "s.csv", ploughed + soil))
    explanation = explain_bare_soil(series, "p", PARAMS)
    (run,) = explanation.runs
    assert (run.start_date, run.end_date, run.n_obs) == ("2021-05-15", "2021-05-30", 4)
    assert run.confidence == 0.85 and "soil index 0.00 (no B02 and B11)" in run.confidence_parts
    assert bare_runs_explained(series) == bare_runs_detected(series) == {"p": [("2021-05-15", "2021-05-30", 0.85)]}
    # the cloud dip to NDVI 0.15 is listed as not used (with its test); the cloudy image only counted
    (dip,) = [o for o in explanation.observations if o.verdict == "not used"]
    assert dip.date == "2021-08-18" and dip.reason.startswith("cloud dip")
    text = io.StringIO()
    explanation.write(text)
    assert "run 1: 2021-05-15 .. 2021-05-30  4 observations, lowest NDVI 0.14" in text.getvalue()
    assert cli.main(["markers", "explain", "--timeseries", str(tmp_path / "s.csv"), "--parcel", "p", "--marker",
                     "bare_soil", "--csv", str(tmp_path / "b.csv")]) == 0
    with (tmp_path / "b.csv").open(newline="") as stream:
        rows_out = list(csv.DictReader(stream))
    assert [(r["date"], r["verdict"], r["run"]) for r in rows_out if r["run"] != "0"] == [
        ("2021-05-15", "bare soil", "1"), ("2021-05-20", "bare soil", "1"), ("2021-05-25", "bare soil", "1"),
        ("2021-05-30", "bare soil", "1")]
    assert rows_out[0]["bsi"] == ""  # no B02, B11: no soil index


def test_bare_soil_without_green_cover_before_is_inconclusive(tmp_path: Path) -> None:
    # two permanent grasslands with soil-low images in May: one green before (ploughed: red), one under snow
    # until May, then brown litter, then green (no cover before: its run loses no_cover_penalty, a yellow light)
    def low(pid: str, doys: range) -> list[list[object]]:
        out: list[list[object]] = []
        for doy in doys:
            when = (date(2021, 1, 1) + timedelta(days=doy - 1)).isoformat()
            out += [[pid, when, "s2", "B04", "0.12000", 0.97, ""], [pid, when, "s2", "B08", "0.16000", 0.97, ""]]
        return out

    def doy_of(row: list[object]) -> int:
        return (date.fromisoformat(str(row[1])) - date(2021, 1, 1)).days + 1

    ploughed = [r for r in grass_rows("ploughed", []) if not 135 <= doy_of(r) <= 150] + low("ploughed",
                                                                                            range(135, 151, 5))
    snowy = [r for r in grass_rows("snowy", [], cloudy=list(range(60, 135, 5))) if not 135 <= doy_of(r) <= 150]
    path = write_rows(tmp_path / "s.csv", ploughed + snowy + low("snowy", range(135, 151, 5)))
    series = read_series(path)
    (run,) = explain_bare_soil(series, "ploughed", PARAMS).runs
    assert run.cover_date == "2021-05-10" and run.cover_ndvi >= 0.4 and run.confidence == 0.85
    (run,) = explain_bare_soil(series, "snowy", PARAMS).runs
    assert (run.cover_date, run.confidence) == ("", 0.6)
    assert run.confidence_parts.endswith("no green cover before it 0.25")
    assert bare_runs_explained(series) == bare_runs_detected(series)
    crops = {"ploughed": "9120", "snowy": "9120"}
    lights = {(light.parcel_id, light.scheme): (light.colour, light.reason) for light in
              evaluate_lights(run_markers(series, PARAMS, use_s1=False), load_rules(), crops=crops)}
    assert lights[("ploughed", "permanent_grassland")] == ("red", "EVENT_IN_BANNED_PERIOD")
    assert lights[("snowy", "permanent_grassland")] == ("yellow", "LOW_CONFIDENCE")
    # parameters before version 6 had no cover test: the same run was a ploughing (recomputing old runs)
    before_v6 = recorded_params(5, without=[("bare_soil", key) for key in ("min_cover_ndvi", "cover_lookback_days",
                                                                         "no_cover_penalty")])
    (run,) = explain_bare_soil(series, "snowy", before_v6).runs
    assert run.confidence == 0.85 and "cover" not in run.confidence_parts


def test_emergence_explanation_names_exactly_the_detected_emergences(tmp_path: Path) -> None:
    salms = read_series(convert_salms(shared_data("salms_grassland"), tmp_path / "salms.csv"))
    slovak = read_series(shared_data("grassland_sk_train", "timeseries.csv.gz"))
    for series in (salms, slovak):
        detected = emergences_detected(series)
        assert emergences_explained(series) == detected and detected
    # parameters before version 4 (every_cycle off): only the year's first emergence; later ones are named
    before_v4 = recorded_params(3, without=[("emergence", "every_cycle")])
    assert emergences_explained(slovak, before_v4) == emergences_detected(slovak, before_v4)
    failed = {c.failed for pid in slovak.parcel_ids for c in explain_emergence(slovak, str(pid), before_v4).crossings}
    assert any("after the year's first emergence" in f for f in failed)
    assert any(f.startswith("no bare soil") for f in failed)


def test_cli_explains_the_emergence_of_a_sown_crop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # bare soil until late April, a crop sown that greens through May: one emergence, dated where NDVI crossed 0.35
    rows: list[list[object]] = []
    for doy, ndvi in zip(range(90, 200, 10), (0.15, 0.16, 0.15, 0.2, 0.3, 0.45, 0.6, 0.75, 0.8, 0.8, 0.8),
                         strict=True):
        when = (date(2021, 1, 1) + timedelta(days=doy - 1)).isoformat()
        red, nir = 0.05 * (1 - ndvi) / 0.5, 0.05 * (1 + ndvi) / 0.5
        rows += [["p", when, "s2", "B04", f"{red:.5f}", 0.97, ""], ["p", when, "s2", "B08", f"{nir:.5f}", 0.97, ""]]
    path = write_rows(tmp_path / "sown.csv", rows)
    assert cli.main(["markers", "explain", "--timeseries", str(path), "--parcel", "p", "--marker", "emergence",
                     "--csv", str(tmp_path / "e.csv")]) == 0
    out = capsys.readouterr().out
    assert "parcel p: 1 rises of NDVI through 0.35" in out
    assert "2021-05-10 -> 2021-05-20  NDVI 0.30 -> 0.45  crossed 2021-05-13 confidence 1.00: emergence" in out
    with (tmp_path / "e.csv").open(newline="") as stream:
        (row,) = list(csv.DictReader(stream))
    assert (row["main_date"], row["verdict"], row["failed"]) == ("2021-05-13", "emergence", "")


def test_harvest_explanation_needs_crop_cycles(tmp_path: Path) -> None:
    series = read_series(write_rows(tmp_path / "s.csv", grass_rows("p", [180])))
    with pytest.raises(BadInputError, match="version 4 or later"):
        explain_harvest(series, "p", recorded_params(3, values={("harvest", "crop_cycles"): 0}))


@pytest.mark.parametrize("use_s1", [True, False], ids=["s2+s1", "s2-only"])
def test_explanation_names_exactly_the_detected_cuts(tmp_path: Path, use_s1: bool) -> None:
    salms = read_series(convert_salms(shared_data("salms_grassland"), tmp_path / "salms.csv"))
    slovak = read_series(shared_data("grassland_sk_train", "timeseries.csv.gz"))
    for series in (salms, slovak):
        detected = _detected(series, use_s1)
        assert sum(map(len, detected.values())) >= 8
        assert _explained(series, use_s1) == detected


def test_a_fall_shows_the_red_rise_its_red_test_judged(tmp_path: Path) -> None:
    # cut on doy 180; the first image after it sees the swath still green (NDVI 0.6, red x1.23), the next,
    # within the settling days, the stubble (red x5): the red test takes the higher, so must the explanation
    rows = grass_rows("p", [180])
    for row in rows:
        if row[1] == "2021-06-29":
            row[4] = "0.03000" if row[3] == "B04" else "0.12000"
    red = {row[1]: float(row[4]) for row in rows if row[3] == "B04"}  # type: ignore[arg-type]
    explanation = explain_mowing(read_series(write_rows(tmp_path / "s.csv", rows)), "p", PARAMS, year=2021)
    cut = next(s for s in explanation.steps if s.end_date == "2021-06-29")
    assert cut.verdict == "mowing" and cut.failed == ""
    assert red["2021-06-29"] / red["2021-06-24"] < PARAMS.get("mowing", "min_red_ratio")
    assert cut.red_ratio == pytest.approx(red["2021-07-04"] / red["2021-06-24"]) and cut.red_ratio > 4
    out = io.StringIO()
    explanation.write(out)
    assert f"red x{cut.red_ratio:.2f} confidence" in out.getvalue()


def test_each_fall_names_the_tests_it_failed(tmp_path: Path) -> None:
    # a grass plot cut on doy 180; a fall on doy 240 in which red falls with NIR (shadow-like; three images
    # long, so not a cloud dip); a cloudy image on doy 150
    rows = grass_rows("p", [180], cloudy=[150])
    shadow = (date(2021, 1, 1) + timedelta(days=239)).isoformat()
    low = {(date(2021, 1, 1) + timedelta(days=doy - 1)).isoformat() for doy in (240, 245, 250)}
    for row in rows:
        if row[1] in low:
            row[4] = "0.02000" if row[3] == "B04" else "0.08000"  # NDVI 0.6 from ~0.8, red lower than before
    explanation = explain_mowing(read_series(write_rows(tmp_path / "s.csv", rows)), "p", PARAMS, year=2021)
    cuts = [s for s in explanation.steps if s.verdict == "mowing"]
    assert len(cuts) == 1 and abs(np.datetime64(cuts[0].main_date) - np.datetime64("2021-06-29")).astype(int) <= 3
    assert cuts[0].failed == "" and cuts[0].red_ratio > 1.3 and 0.5 <= cuts[0].confidence <= 1
    fall = next(s for s in explanation.steps if s.end_date == shadow)
    assert fall.verdict == "not a cut" and "red did not rise" in fall.failed and fall.red_ratio < 1
    assert np.isnan(fall.confidence)
    # every listed fall lies in the mowing season; rejected observations say why
    assert all("2021-04-01" <= s.main_date <= "2021-09-30" for s in explanation.steps)
    cloudy = [o for o in explanation.observations if not o.used]
    assert [o.date for o in cloudy] == [(date(2021, 1, 1) + timedelta(days=149)).isoformat()]
    assert cloudy[0].reason.startswith("clear share below min_clear_fraction")


def test_weaker_cut_nearby_is_named(tmp_path: Path) -> None:
    # SALMS plot 3 judged without the red spread test (parameters before version 11) and on the NDVI of its band
    # means (before version 13): the September fall seen on 15 September loses to the larger one of 30 September
    # (an image part cloud, which version 11 rejects)
    series = read_series(convert_salms(shared_data("salms_grassland"), tmp_path / "salms.csv"))
    params = with_value(with_value(PARAMS, "validity.max_red_spread", 1e9), "data.file_ndvi", 0)
    steps = explain_mowing(series, "3", params, use_s1=False, year=2020).steps
    # a scored fall shows its confidence as the sum the marker made: base + drop + dating + regrowth + S1
    scored = [s for s in steps if s.confidence_parts]
    assert scored and all(abs(min(sum(float(part.split()[-1]) for part in s.confidence_parts.split(" + ")), 1.0)
                              - s.confidence) <= 0.025 for s in scored)  # five parts rounded to 0.01
    assert all(s.confidence_parts == "" for s in steps if np.isnan(s.confidence))
    weaker = [s for s in steps if s.verdict.startswith("weaker than the cut of")]
    assert [(s.end_date, s.verdict) for s in weaker] == [("2020-09-15", "weaker than the cut of 2020-09-25")]
    assert weaker[0].failed == "" and weaker[0].confidence >= PARAMS.get("mowing", "min_confidence")


def test_cli_explains_a_file_and_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_rows(tmp_path / "s.csv", grass_rows("p", [150, 210], cloudy=[100]))
    out_csv = tmp_path / "falls.csv"
    assert cli.main(["markers", "explain", "--timeseries", str(path), "--parcel", "p", "--s2-only",
                     "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "parcel p: " in text and "not used: clear share below" in text and text.count(": mowing") == 2
    # a cut's line says how sure it is, part by part, as a fall below min_confidence does
    cuts = [line for line in text.splitlines() if ": mowing" in line]
    assert all(re.search(r": mowing \(base 0\.20 \+ drop [\d.]+ \+ dating [\d.]+ \+ regrowth [\d.]+ \+ red [\d.]+ "
                         r"\+ S1 0\.00\)$", line) for line in cuts), cuts
    with out_csv.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["verdict"] for r in rows].count("mowing") == 2 and {r["parcel_id"] for r in rows} == {"p"}
    assert all(r["confidence"] == "" for r in rows if r["verdict"] == "not a cut" and r["failed"] != "confidence "
               "below min_confidence")
    assert cli.main(["markers", "explain", "--timeseries", str(path), "--parcel", "p", "--marker", "harvest",
                     "--csv", str(out_csv)]) == 0
    assert "parcel p: " in capsys.readouterr().out
    with out_csv.open(newline="") as stream:
        assert next(csv.reader(stream))[:3] == ["parcel_id", "peak_date", "peak_ndvi"]
    assert cli.main(["markers", "explain", "--timeseries", str(path), "--parcel", "nope"]) == 2
    assert "parcel 'nope' is not in the series" in capsys.readouterr().err
