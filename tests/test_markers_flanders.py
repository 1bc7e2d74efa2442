"""Harvest and emergence on real Flemish arable parcels of 2018 (the demo's cube: shared/data/worldcereal_31UDS).

The parcels are the register rasterised in the cube (maize, potatoes, ...); their means are taken
here from the cube's own pixels (S2 L2A, SCL for the clear share), written in the long format and
run through the file path. The Flemish maize parcels carry a winter cover (grass or catch crop,
NDVI 0.8-0.9 until April) that is destroyed in May before sowing: the harvest must be found at the
end of the maize's own cycle in September, not at that spring low.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from markers_explained import bare_runs_detected, bare_runs_explained, emergences_detected, emergences_explained
from markers_params import recorded_params
from rasterio import features

from cbm_tasks.demo.cube import CUBE_FILES, open_sensor_cube, polygonise_crop_types, read_parcel_raster
from cbm_tasks.markers import load_params, read_series, run_markers
from cbm_tasks.markers.bare_soil_explain import explain_bare_soil
from cbm_tasks.markers.emergence_explain import explain_emergence
from cbm_tasks.markers.harvest_explain import explain_harvest
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import SCL_BAD_CLASSES
from cbm_tasks.traffic_light import evaluate_lights, load_rules
from cbm_tasks.traffic_light.explain import explain_light


@pytest.fixture(scope="module")
def flemish_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Per-parcel band means of every S2 date of the cube, in the long format; and parcel -> crop code."""
    cube = shared_data("worldcereal_31UDS")
    grid, crop_types, land_cover, _ = read_parcel_raster(cube / CUBE_FILES["POLY"])
    parcels = polygonise_crop_types(crop_types, land_cover, transform=grid.transform)
    labels = features.rasterize(((p.geometry, i) for i, p in enumerate(parcels, start=1)),
                                out_shape=crop_types.shape, transform=grid.transform, fill=0, dtype="int32")
    s10 = open_sensor_cube(cube / CUBE_FILES["S2_10m"], bands=("B02", "B04", "B08"))
    s20 = open_sensor_cube(cube / CUBE_FILES["S2_20m"], bands=("B11", "SCL"))
    assert s10.times == s20.times
    out = tmp_path_factory.mktemp("flanders") / "flanders.csv"
    n = len(parcels) + 1
    with out.open("w", newline="") as stream:
        rows = csv.writer(stream)
        rows.writerow(["parcel_id", "obs_time", "source", "band", "mean", "clear_fraction"])
        for t, when in enumerate(s10.times):
            scl = np.kron(s20.bands["SCL"][t], np.ones((2, 2), dtype=s20.bands["SCL"].dtype))  # 20 m -> 10 m
            bad = np.isin(scl, SCL_BAD_CLASSES)
            clear = 1.0 - np.bincount(labels.ravel(), weights=bad.ravel(), minlength=n) / np.maximum(
                np.bincount(labels.ravel(), minlength=n), 1)
            bands = {name: s10.bands[name][t] for name in ("B02", "B04", "B08")}
            bands["B11"] = np.kron(s20.bands["B11"][t], np.ones((2, 2), dtype=s20.bands["B11"].dtype))
            for name, dn in bands.items():
                ok = (dn != 0) & (labels > 0)
                sums = np.bincount(labels[ok], weights=dn[ok].astype(np.float64) / 10000.0, minlength=n)
                count = np.bincount(labels[ok], minlength=n)
                for i, parcel in enumerate(parcels, start=1):
                    if count[i]:
                        rows.writerow([parcel.parcel_id, when.isoformat(), "s2", name, f"{sums[i] / count[i]:.5f}",
                                       f"{clear[i]:.4f}"])
    return out, {p.parcel_id: p.crop_code for p in parcels}


def _harvests(series: Path, params: MarkerParams) -> dict[str, list[date]]:
    out: dict[str, list[date]] = {}
    for row in run_markers(read_series(series), params, use_s1=False).rows():
        if row.marker == "harvest" and row.main_date.startswith("2018"):
            out.setdefault(row.parcel_id, []).append(date.fromisoformat(row.main_date))
    return out


def test_maize_after_a_winter_cover_is_harvested_in_september(flemish_series: tuple[Path, dict[str, int]]) -> None:
    series, crops = flemish_series
    maize = sorted(p for p, code in crops.items() if code == 1200)
    assert maize == ["demo-0005", "demo-0007", "demo-0011", "demo-0018"]
    harvests = _harvests(series, load_params())
    # the maize is cut between the clear images of 1 and 21 September 2018 (NDVI 0.74-0.80 -> 0.25-0.34)
    for parcel in ("demo-0005", "demo-0007", "demo-0011"):
        assert harvests[parcel] == [date(2018, 9, 11)], parcel
    # demo-0018 falls from 0.78 to 0.43 and stays at 0.41-0.49 (undersown grass or weeds): above the
    # stubble level of max_ndvi_after 0.4, so no harvest is claimed (its light is red: a known limit)
    assert "demo-0018" not in harvests
    # the potatoes (demo-0017) die back through September and are lifted in early October
    assert [p for p, code in crops.items() if code == 5100] == ["demo-0017"]
    assert harvests["demo-0017"] == [date(2018, 10, 7)]


def test_the_cover_sown_after_the_maize_emerges_too(flemish_series: tuple[Path, dict[str, int]]) -> None:
    # demo-0011: maize emerges from bare soil in June; after its harvest the field is bare again
    # (NDVI 0.23-0.30 in October) and a winter cover greens it by November (0.67 on 17 November)
    series, _ = flemish_series
    emergences = [row.main_date for row in run_markers(read_series(series), load_params(), use_s1=False).rows()
                  if row.marker == "emergence" and row.parcel_id == "demo-0011" and row.main_date.startswith("2018")]
    assert emergences == ["2018-06-11", "2018-10-23"]
    # cbm markers explain --marker emergence names them, and every other rise of the Flemish parcels with its reason
    params = load_params()
    table = read_series(series)
    assert emergences_explained(table, params) == emergences_detected(table, params)
    rises = explain_emergence(table, "demo-0011", params, year=2018).crossings
    assert [c.main_date for c in rises if c.verdict == "emergence"] == emergences


def test_the_calendar_year_peak_took_the_spring_low_for_the_harvest(
        flemish_series: tuple[Path, dict[str, int]]) -> None:
    # parameters before version 4 (crop_cycles absent = 0) recompute as they did: demo-0005's winter
    # cover (NDVI 0.86 in January) was the year's peak, and the low after its destruction in May the harvest
    series, _ = flemish_series
    before_v4 = recorded_params(3, without=[("harvest", "crop_cycles")])
    assert _harvests(series, before_v4)["demo-0005"] == [date(2018, 5, 30)]


def test_the_harvest_explanation_says_why_demo_0018_has_none(flemish_series: tuple[Path, dict[str, int]]) -> None:
    # cbm markers explain --marker harvest: the maize harvests are the ends of their own cycles; demo-0018's
    # cycle never ends (NDVI stays at 0.41-0.49 after its fall, above the stubble level 0.40)
    series = read_series(flemish_series[0])
    params = load_params()
    cycles = explain_harvest(series, "demo-0005", params, year=2018).cycles
    assert [(c.last_high_date, c.low_date) for c in cycles if c.verdict == "harvest"] == [("2018-09-01", "2018-09-21")]
    spring = next(c for c in cycles if c.low_date.startswith("2018-05"))  # the winter cover destroyed in May
    assert spring.verdict == "not a harvest" and "harvest period" in spring.failed
    (open_cycle,) = [c for c in explain_harvest(series, "demo-0018", params, year=2018).cycles
                     if c.verdict != "not a harvest"]
    assert open_cycle.verdict == "not ended" and "max_ndvi_after 0.40" in open_cycle.failed
    assert 0.40 <= open_cycle.low_ndvi < 0.45


def test_bare_soil_explanation_on_arable_parcels(flemish_series: tuple[Path, dict[str, int]]) -> None:
    # cbm markers explain --marker bare_soil on real arable parcels with B02 and B11 (soil index tested): its runs
    # are exactly the marker's bare soil events, each confidence with the soil index part
    series = read_series(flemish_series[0])
    params = load_params()
    explained, detected = bare_runs_explained(series, params), bare_runs_detected(series, params)
    assert explained == detected and sum(map(len, detected.values())) >= 5
    runs = {pid: explain_bare_soil(series, pid, params).runs for pid in detected}
    assert all("soil index 0.15" in run.confidence_parts for pid_runs in runs.values() for run in pid_runs)
    # the maize of demo-0011 harvested in October: bare soil after its green cover, full confidence (a ploughing
    # of permanent grassland would look the same)
    (autumn,) = [run for run in runs["demo-0011"] if run.start_date.startswith("2018-10")]
    assert autumn.cover_date.startswith("2018-09") and autumn.cover_ndvi >= 0.4 and autumn.confidence == 1.0


def test_forage_legumes_are_cut_not_harvested(flemish_series: tuple[Path, dict[str, int]]) -> None:
    # the demo's "other leguminous crops" are forage legumes, cut several times and never bare: under the demo's
    # mapping (scheme rules v3: forage_cut) each is green by its cut of 7 May 2018; judged as an arable harvest
    # it would be red NO_EVENT (its NDVI never falls below the stubble level)
    series, crops = flemish_series
    table = read_series(series)
    params, rules = load_params(), load_rules()
    legumes = {pid: str(code) for pid, code in crops.items() if code == 7900}
    assert sorted(legumes) == ["demo-0006", "demo-0008", "demo-0016"]
    lights = list(evaluate_lights(run_markers(table, params, use_s1=False), rules, crops=legumes, aoi="demo",
                                  year=2018))
    assert {(light.parcel_id, light.scheme, light.colour, light.reason) for light in lights} == {
        (pid, "forage_cut", "green", "EVENT_FOUND") for pid in legumes}
    for pid in legumes:
        (cut,) = explain_light(table, pid, "forage_cut", rules, params, year=2018, use_s1=False).rules
        assert [e.main_date for e in cut.events if e.counted][0] == "2018-05-07"
        as_harvest = explain_light(table, pid, "arable_harvest", rules, params, year=2018, use_s1=False)
        assert (as_harvest.colour, as_harvest.reason) == ("red", "NO_EVENT")
