"""The mowing marker's physical rules, each on a small constructed Sentinel-2 series.

A cut is a sharp drop within one revisit followed by regrowth; grazing lowers NDVI slowly over
several revisits; haze and thin cloud that the mask missed lower NDVI for one or two observations
and carry a blue excess (haze index), while bright soil is redder than cloud. See ``marker_params.yaml``
for the values and their sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from markers_params import recorded_params
from markers_series import write_rows

from cbm_tasks.markers import load_params, prepare, read_series, run_markers
from cbm_tasks.markers.mowing import detect_mowing
from cbm_tasks.markers.mowing_explain import explain_mowing
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import BRIGHT_BLUE, HAZE, REJECTIONS, haze_index, rejection_codes
from cbm_tasks.markers.series import day_to_date
from cbm_tasks.traffic_light import evaluate_lights, load_rules

PARAMS = load_params()
NIR = 0.30


def _rows(days: Sequence[int], ndvi: Sequence[float], *, hazy: Sequence[int] = (), haze_add: float = 0.03,
          clear: float = 0.97, red: Sequence[float] | None = None,
          ndmi: Sequence[float] | None = None) -> list[list[object]]:
    """S2 rows (B02, B04, B08) of one parcel in 2021; on *hazy* days blue, red and NIR gain path radiance.

    NIR is 0.3 and red follows from NDVI, unless *red* is given (then NIR follows from it). With
    *ndmi*, a B11 row follows from NIR and the moisture index.
    """
    rows: list[list[object]] = []
    for i, (doy, value) in enumerate(zip(days, ndvi, strict=True)):
        if red is None:
            red_i, nir = NIR * (1 - value) / (1 + value), NIR
        else:
            red_i, nir = red[i], red[i] * (1 + value) / (1 - value)
        blue, red_i = 0.7 * red_i, red_i
        if doy in hazy:  # aerosol scattering: strongest in blue, less in red, least in NIR
            blue, red_i, nir = blue + haze_add, red_i + 0.66 * haze_add, nir + 0.33 * haze_add
        when = (date(2021, 1, 1) + timedelta(days=int(doy) - 1)).isoformat()
        bands = [("B02", blue), ("B04", red_i), ("B08", nir)]
        if ndmi is not None:
            bands.append(("B11", nir * (1 - ndmi[i]) / (1 + ndmi[i])))
        rows += [["p", when, "s2", band, f"{mean:.5f}", clear, ""] for band, mean in bands]
    return rows


def _mowing(tmp_path: Path, rows: list[list[object]]) -> tuple[list[str], np.ndarray]:
    prepared = prepare(read_series(write_rows(tmp_path / "s.csv", rows)), PARAMS)
    events = detect_mowing(prepared, PARAMS, use_s1=False)
    dips = prepared.s2.day[prepared.s2.cloud_dip]
    return [day_to_date(d) for d in events.main], dips


def _doy(day: float) -> int:
    return (date.fromisoformat(day_to_date(day)) - date(2021, 1, 1)).days + 1


def _grass(days: np.ndarray, cut: int | None) -> np.ndarray:
    """Grass at 0.82 from May; a cut drops it to 0.4 within a revisit, regrowth 0.015 NDVI per day."""
    ndvi = 0.45 + 0.37 * np.clip((days - 90) / 50.0, 0.0, 1.0)
    if cut is not None:
        ndvi = np.where(days >= cut, np.minimum(ndvi, 0.40 + 0.015 * (days - cut)), ndvi)
    return ndvi


def test_a_cut_is_found(tmp_path: Path) -> None:
    days = np.arange(90, 271, 5)
    found, dips = _mowing(tmp_path, _rows(days, _grass(days, 182)))
    assert len(dips) == 0
    assert len(found) == 1
    assert abs((date.fromisoformat(found[0]) - date(2021, 7, 1)).days) <= 3


def test_a_grazing_like_decline_is_not_a_cut(tmp_path: Path) -> None:
    # pasture: from 0.82 down to 0.45 in steps of ~0.05 per revisit over five weeks, then slow regrowth
    days = np.arange(90, 271, 5)
    ndvi = 0.45 + 0.37 * np.clip((days - 90) / 50.0, 0.0, 1.0)
    ndvi = np.where(days >= 170, np.maximum(0.82 - 0.0106 * (days - 170), 0.45), ndvi)
    ndvi = np.where(days >= 210, np.minimum(0.45 + 0.006 * (days - 210), 0.82), ndvi)
    found, _ = _mowing(tmp_path, _rows(days, ndvi))
    assert found == []


def test_a_one_observation_haze_dip_is_not_a_cut(tmp_path: Path) -> None:
    # revisits 10 days apart: the dip's recovery (0.09 in 10 days) is slow enough for regrowth,
    # only its blue excess tells it from a cut; the mask (clear share 0.97) missed it
    days = np.arange(90, 271, 10)
    rows = _rows(days, _grass(days, None), hazy=[190])
    found, dips = _mowing(tmp_path, rows)
    assert found == []
    assert [_doy(d) for d in dips] == [190]
    # the same dip without the blue excess is kept as an observation (it could be a cut)
    _, dips_plain = _mowing(tmp_path, _rows(days, np.where(days == 190, 0.71, _grass(days, None))))
    assert len(dips_plain) == 0


def test_thick_haze_is_rejected_by_the_haze_index(tmp_path: Path) -> None:
    days = np.arange(90, 271, 5)
    rows = _rows(days, _grass(days, None), hazy=[200], haze_add=0.08)
    prepared = prepare(read_series(write_rows(tmp_path / "s.csv", rows)), PARAMS)
    s2 = prepared.s2
    hazy = s2.doy == 200
    index = haze_index(s2.bands[:, 0], s2.bands[:, 1], red_weight=PARAMS.get("validity", "haze_red_weight"))
    assert index[hazy][0] > PARAMS.get("validity", "max_haze_index") > index[~hazy].max()
    assert not s2.valid[hazy].any() and s2.valid[~hazy].all()


def test_a_two_observation_cloud_run_is_not_a_cut(tmp_path: Path) -> None:
    days = np.arange(90, 271, 5)
    ndvi = np.where((days == 195) | (days == 200), 0.5, _grass(days, None))
    found, dips = _mowing(tmp_path, _rows(days, ndvi))
    assert found == []
    assert [_doy(d) for d in dips] == [195, 200]


def test_a_fall_undone_within_a_week_is_not_a_cut(tmp_path: Path) -> None:
    # one image 0.15 below its neighbours with red doubled (a bare field edge seen through the co-registration error
    # of a small plot, or a shadow or haze the mask missed), back at the level five days later: 0.03 NDVI a day is
    # not faster than grass regrows, but cut grass stays low for more than a week (cloud_dip.min_cut_low_days)
    days = np.arange(90, 271, 5)
    ndvi = np.where(days == 195, _grass(days, None) - 0.15, _grass(days, None))
    rows = _rows(days, ndvi)
    found, dips = _mowing(tmp_path, rows)
    assert found == [] and [_doy(d) for d in dips] == [195]
    # parameters before version 10 took it for a cut; a real cut (test_a_cut_is_found) stays low and is no dip
    before_v10 = recorded_params(9, without=[("cloud_dip", "min_cut_low_days")])
    prepared = prepare(read_series(write_rows(tmp_path / "s.csv", rows)), before_v10)
    assert not prepared.s2.cloud_dip.any()
    assert [_doy(d) for d in detect_mowing(prepared, before_v10, use_s1=False).main] == [192]
    # revisits ten days apart: a fall back at the level after ten days may be a cut that regrew, and stays one
    sparse = np.arange(90, 271, 10)
    _, dips = _mowing(tmp_path, _rows(sparse, np.where(sparse == 190, _grass(sparse, None) - 0.15,
                                                       _grass(sparse, None))))
    assert len(dips) == 0


def test_a_real_cut_followed_by_a_cloud_is_still_found(tmp_path: Path) -> None:
    days = np.arange(90, 271, 5)
    ndvi = _grass(days, 182)
    ndvi = np.where(days == 190, 0.2, ndvi)  # an unmasked cloud a week after the cut
    found, _ = _mowing(tmp_path, _rows(days, ndvi, hazy=[190]))
    assert len(found) == 1
    assert abs((date.fromisoformat(found[0]) - date(2021, 7, 1)).days) <= 3


def test_a_drop_without_the_red_rise_of_a_cut_is_not_a_cut(tmp_path: Path) -> None:
    # the same NDVI series as a cut on doy 182, but with red unchanged (NIR alone falls: grazed or
    # shaded canopy, no bare stubble): not a cut; with red rising 2.5x across the step it is one
    days = np.arange(90, 271, 5)
    ndvi = _grass(days, 182)
    red = np.full(len(days), 0.03)
    found, _ = _mowing(tmp_path, _rows(days, ndvi, red=red))
    assert found == []
    red_cut = np.where((days >= 185) & (days < 200), 0.075, red)
    found, _ = _mowing(tmp_path, _rows(days, ndvi, red=red_cut))
    assert len(found) == 1
    # across a long gap (clouds) regrowth may have greened the stubble: red must only not have fallen
    sparse = days[(days < 175) | (days > 195)]
    found, _ = _mowing(tmp_path, _rows(sparse, _grass(sparse, 182), red=np.full(len(sparse), 0.03)))
    assert len(found) == 1


def test_a_drop_without_the_drying_of_a_cut_is_not_a_cut(tmp_path: Path) -> None:
    # NDVI and red of a cut on doy 182, but the moisture index (NDMI, B08/B11) does not fall: the
    # canopy kept its water (shadow, lodged or grazed grass), not a cut; where it falls it is one;
    # without B11 the test does not apply
    days = np.arange(90, 271, 5)
    ndvi = _grass(days, 182)
    red = np.where((days >= 185) & (days < 200), 0.075, 0.03)
    wet = np.full(len(days), 0.3)
    found, _ = _mowing(tmp_path, _rows(days, ndvi, red=red, ndmi=wet))
    assert found == []
    drying = np.where((days >= 185) & (days < 200), 0.1, wet)
    found, _ = _mowing(tmp_path, _rows(days, ndvi, red=red, ndmi=drying))
    assert len(found) == 1
    found, _ = _mowing(tmp_path, _rows(days, ndvi, red=red))
    assert len(found) == 1


def test_a_cut_in_a_long_gap_is_dated_within_the_regrowth_time(tmp_path: Path) -> None:
    # clouds from doy 150 to 190 (a 40-day gap), cut on doy 186: the gap's middle (doy 170) would be 16
    # days early; a cut at the start of the gap would have regrown by doy 190, so the date lies
    # date_window_days / 2 before the first low observation
    days = np.concatenate([np.arange(90, 151, 5), np.arange(190, 271, 5)])
    found, _ = _mowing(tmp_path, _rows(days, _grass(days, 186)))
    window = PARAMS.get("mowing", "date_window_days")
    assert [(date.fromisoformat(d) - date(2020, 12, 31)).days for d in found] == [190 - int(window // 2)]
    # a gap shorter than the window keeps its middle
    days = np.concatenate([np.arange(90, 171, 5), np.arange(185, 271, 5)])
    found, _ = _mowing(tmp_path, _rows(days, _grass(days, 182)))
    assert [(date.fromisoformat(d) - date(2020, 12, 31)).days for d in found] == [177]


def test_a_cut_seen_across_a_long_gap_is_found_by_its_red_rise(tmp_path: Path) -> None:
    # clouds from doy 235 to 260 (a 25-day gap) hide a late-summer cut; no regrowth follows (autumn). The fall
    # (NDVI 0.82 -> 0.64) alone scores below min_confidence: the drop is small, the date imprecise, no regrowth.
    # Red tripled across the gap (bare stubble) is the cut signature that version 12 counts as evidence
    days = np.concatenate([np.arange(90, 236, 5), np.arange(260, 301, 5)])
    ndvi = np.where(days < 250, _grass(days, None), 0.64)
    stubble = np.where(days < 250, 0.03, 0.09)
    found, _ = _mowing(tmp_path, _rows(days, ndvi, red=stubble))
    assert len(found) == 1 and 240 <= _doy_of(found[0]) <= 260
    # the same fall with red unchanged (a canopy browning or shaded) stays below min_confidence
    found, _ = _mowing(tmp_path, _rows(days, ndvi, red=np.full(len(days), 0.03)))
    assert found == []
    # version 11 (no red term) left the cut below min_confidence; explain names the parts of the confidence
    v11 = recorded_params(11, without=[("mowing", "weight_red"), ("mowing", "full_red_ratio")])
    prepared = prepare(read_series(write_rows(tmp_path / "s.csv", _rows(days, ndvi, red=stubble))), v11)
    assert len(detect_mowing(prepared, v11, use_s1=False).main) == 0
    (step,) = [s for s in explain_mowing(read_series(tmp_path / "s.csv"), "p", PARAMS).steps if s.verdict == "mowing"]
    assert step.red_ratio == pytest.approx(3.0) and "red 0.20 + S1 0.00" in step.confidence_parts


def _doy_of(when: str) -> int:
    return (date.fromisoformat(when) - date(2020, 12, 31)).days


def _spectra_rows(spectra: Sequence[tuple[int, tuple[float, float, float, float]]]) -> list[list[object]]:
    """S2 rows of parcel p in 2021: (day of year, (B02, B04, B08, B11)) each, all marked clear."""
    when = [(date(2021, 1, 1) + timedelta(days=doy - 1)).isoformat() for doy, _ in spectra]
    return [["p", day, "s2", band, f"{mean:.4f}", 1.0, ""] for day, (_, values) in zip(when, spectra, strict=True)
            for band, mean in zip(("B02", "B04", "B08", "B11"), values, strict=True)]


GRASS = (0.03, 0.035, 0.32, 0.20)
LIGHT_SOIL = (0.15, 0.22, 0.27, 0.35)  # dry light soil, ploughed: bright in blue, redder still (red/blue 1.47)


def test_a_ploughing_on_bright_soil_is_soil_not_cloud(tmp_path: Path) -> None:
    # permanent grassland ploughed in July on a light soil (blue 0.15 > max_blue_reflectance): its visible spectrum
    # is red, not flat, so the observations are used and the ploughing is found with full confidence, a red light
    # on "permanent grassland: no ploughing"; parameters before version 9 took the bright soil for cloud (no event)
    before_v9 = recorded_params(8, without=[("validity", "min_soil_red_ratio")])
    spectra = [(doy, GRASS) for doy in range(100, 196, 5)] + [(doy, LIGHT_SOIL) for doy in range(200, 236, 5)]
    series = read_series(write_rows(tmp_path / "s.csv", _spectra_rows(spectra)))

    def bare(params: MarkerParams) -> list[tuple[str, float]]:
        return [(row.start_date, row.confidence) for row in run_markers(series, params, use_s1=False).rows()
                if row.marker == "bare_soil"]

    assert bare(PARAMS) == [("2021-07-19", 1.0)]
    assert bare(before_v9) == []
    assert prepare(series, before_v9).s2.valid.sum() == 20
    light = evaluate_lights(run_markers(series, PARAMS, use_s1=False), load_rules(), crops={"p": "9120"},
                            aoi="t", year=2021)
    assert {(lt.scheme, lt.colour, lt.reason) for lt in light if lt.scheme == "permanent_grassland"} == {
        ("permanent_grassland", "red", "EVENT_IN_BANNED_PERIOD")}


def test_white_cloud_and_snow_are_still_rejected(tmp_path: Path) -> None:
    # a cloud the mask missed over grass (flat spectrum: red/blue 1.0) and snow (bluish) stay rejected by the blue
    # test; haze over grass lifts blue most (red/blue < 1) and stays rejected by the haze index
    cloud, snow, haze = (0.16, 0.16, 0.33, 0.25), (0.62, 0.58, 0.55, 0.05), (0.075, 0.065, 0.34, 0.21)
    spectra = [(100, GRASS), (105, cloud), (110, GRASS), (115, snow), (120, GRASS), (125, haze), (130, GRASS)]
    s2 = prepare(read_series(write_rows(tmp_path / "s.csv", _spectra_rows(spectra))), PARAMS).s2
    assert s2.valid.tolist() == [True, False, True, False, True, False, True]
    codes = rejection_codes(s2, PARAMS)
    assert [REJECTIONS[c] for c in codes[[1, 3, 5]]] == [REJECTIONS[BRIGHT_BLUE], REJECTIONS[BRIGHT_BLUE],
                                                        REJECTIONS[HAZE]]
