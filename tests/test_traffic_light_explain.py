"""Why a light has its colour (`cbm markers explain --scheme`): the explanation re-evaluates each rule with the
lights' own evaluation, so its colour, reason, deciding rule, clear images and gap are those of the light; checked
on every light of the real development sets, then on constructed series for what the light does not store."""

from __future__ import annotations

import dataclasses
import io
from datetime import date
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from markers_series import grass_rows, write_rows

from cbm_tasks import cli
from cbm_tasks.errors import BadInputError
from cbm_tasks.markers import load_params, read_series, run_markers
from cbm_tasks.markers.importers import convert_salms
from cbm_tasks.traffic_light import evaluate_lights, load_rules
from cbm_tasks.traffic_light.evaluate import evaluate_rule
from cbm_tasks.traffic_light.explain import explain_light, light_seasons
from cbm_tasks.traffic_light.rules import Rule, RulesFileError

PARAMS = load_params()
RULES = load_rules()
RULES_TEXT = resources.files("cbm_tasks.traffic_light").joinpath("scheme_rules.yaml").read_text()


@pytest.mark.parametrize("use_s1", [True, False])
def test_explanation_gives_every_light_of_the_real_sets(tmp_path: Path, use_s1: bool) -> None:
    salms = read_series(convert_salms(shared_data("salms_grassland"), tmp_path / "salms.csv"))
    slovak = read_series(shared_data("grassland_sk_train", "timeseries.csv.gz"))
    n_yellow = 0
    for series in (salms, slovak):
        crops = {str(pid): "9120" for pid in series.parcel_ids}  # grassland mowing and permanent grassland
        lights = list(evaluate_lights(run_markers(series, PARAMS, use_s1=use_s1), RULES, crops=crops))
        assert lights
        for light in lights:
            explained = explain_light(series, light.parcel_id, light.scheme, RULES, PARAMS, year=light.year,
                                      use_s1=use_s1)
            deciding = next(r for r in explained.rules if r.rule_id == light.rule_id)
            assert (explained.colour, explained.reason, explained.rule_id) == (light.colour, light.reason,
                                                                                light.rule_id)
            assert (deciding.n_clear, deciding.longest_gap_days) == (light.n_clear_obs, light.longest_gap_days)
            n_yellow += light.colour == "yellow"
            if light.reason == "LOW_CONFIDENCE":  # the weak events that could change the count are named
                assert any(not e.counted for e in deciding.events)
            if light.reason == "GAP":
                assert deciding.longest_gap_days > deciding.max_gap_days
    assert n_yellow > 20


def test_a_gap_names_its_days_and_the_clouds_in_it(tmp_path: Path) -> None:
    # a grass parcel cut on doy 200, with the images of doy 160-190 under clouds: a 35-day gap in June-July
    rows = grass_rows("p", [200], cloudy=list(range(160, 195, 5)))
    series = read_series(write_rows(tmp_path / "s.csv", rows))
    explained = explain_light(series, "p", "grassland_mowing", RULES, PARAMS, year=2021)
    (rule,) = explained.rules
    assert (rule.window_from, rule.window_to) == ("2021-06-01", "2021-08-31")
    assert (rule.gap_from, rule.gap_to, rule.longest_gap_days) == ("2021-06-04", "2021-07-14", 40.0)
    assert rule.gap_images == "7 clear share below min_clear_fraction (cloud, shadow, snow)"
    assert [(e.main_date[:7], e.counted) for e in rule.events] == [("2021-07", True)]
    assert (explained.colour, explained.reason) == ("green", "EVENT_FOUND")  # a mowing seen wins over the gap
    # the permanent grassland rule on the same parcel: no bare soil, window edges bound no gap here
    (pg,) = explain_light(series, "p", "permanent_grassland", RULES, PARAMS, year=2021).rules
    assert pg.events == [] and (pg.colour, pg.reason) == ("green", "NO_EVENT")
    text = io.StringIO()
    explained.write(text)
    assert "longest gap: 2021-06-04 .. 2021-07-14, 40 d (at most 30); not used in it: 7 clear share" in text.getvalue()


def test_a_gap_to_the_window_end(tmp_path: Path) -> None:
    # an uncut grass parcel whose images after doy 200 are all under clouds: the gap runs to the window's end
    rows = grass_rows("p", [], cloudy=list(range(205, 301, 5)))
    series = read_series(write_rows(tmp_path / "s.csv", rows))
    explained = explain_light(series, "p", "grassland_mowing", RULES, PARAMS, year=2021)
    (rule,) = explained.rules
    assert (rule.gap_from, rule.gap_to, rule.longest_gap_days) == ("2021-07-19", "2021-08-31 (window end)", 44.0)
    assert rule.gap_images == "8 clear share below min_clear_fraction (cloud, shadow, snow)" and rule.events == []
    assert (explained.colour, explained.reason) == ("yellow", "GAP")


def test_cli_explains_a_light_of_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_rows(tmp_path / "s.csv", grass_rows("p", [200], cloudy=list(range(160, 195, 5))))
    assert light_seasons(read_series(path), "p", PARAMS) == [2021]
    assert cli.main(["markers", "explain", "--timeseries", str(path), "--parcel", "p", "--scheme",
                     "grassland_mowing"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("parcel p, scheme grassland_mowing 2021: green (EVENT_FOUND), decided by rule GM-MOW-1")
    assert "clear images in the window: " in out and ": counted" in out
    assert cli.main(["markers", "explain", "--timeseries", str(path), "--parcel", "p", "--scheme", "nope"]) == 2
    assert "scheme 'nope' is not in the rules" in capsys.readouterr().err
    with pytest.raises(BadInputError, match="scheme 'nope'"):
        explain_light(read_series(path), "p", "nope", RULES, PARAMS, year=2021)


def test_a_period_counts_in_the_window_by_any_of_its_days(tmp_path: Path) -> None:
    # scheme rules v4: vegetation and bare soil are states over a period; the vegetation event's main date is the
    # season's peak. A crop green from 16 April with its peak on 1 September was grown between April and August
    def day(month: int, dom: int) -> float:
        return float((date(2018, month, dom) - date(1970, 1, 1)).days)

    any_day = Rule("V", "vegetation", "present", (4, 1), (8, 31), 0.5, 0, 200.0, in_window="any_day")
    events = {"clear_day": np.array([day(5, 1)]), "event_main": np.array([day(9, 1)]),
              "event_confidence": np.array([1.0]), "event_seq": np.array([1]),
              "event_start": np.array([day(4, 16)]), "event_end": np.array([day(9, 26)])}
    assert evaluate_rule(any_day, 2018, **events).colour == "green"
    assert evaluate_rule(dataclasses.replace(any_day, in_window="main_date"), 2018, **events).colour == "red"
    before = {**events, "event_start": np.array([day(2, 1)]), "event_end": np.array([day(3, 31)]),
              "event_main": np.array([day(3, 1)])}
    assert evaluate_rule(any_day, 2018, **before).colour == "red"  # a period wholly before the window
    assert [r.in_window for r in RULES.schemes["arable_harvest"].rules] == ["any_day", "main_date"]
    bad = tmp_path / "rules.yaml"
    bad.write_text(RULES_TEXT.replace("        in_window: any_day", "        in_window: sometimes", 1))
    with pytest.raises(RulesFileError, match="in_window must be one of main_date, any_day, got 'sometimes'"):
        load_rules(bad)
