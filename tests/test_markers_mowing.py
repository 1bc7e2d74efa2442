"""Mowing and crop markers on synthetic series with known dates; kernels against plain references."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from markers_params import recorded_params
from markers_series import doy_date, grass_rows, write_rows

from cbm_tasks.markers import load_params, prepare, read_series
from cbm_tasks.markers.coherence import coherence_cut_date, coherence_noise, coherence_rise
from cbm_tasks.markers.crop_events import _crop_events_kernel
from cbm_tasks.markers.engine import MARKERS, run_markers
from cbm_tasks.markers.mowing import _PARAM_ORDER, _mowing_kernel, detect_mowing
from cbm_tasks.markers.mowing_explain import explain_mowing
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.preprocess import _cloud_dip_kernel
from cbm_tasks.markers.series import day_to_date

PARAMS = load_params()


def _mowing_dates(path: Path, *, use_s1: bool = True) -> dict[str, list[tuple[str, float, str]]]:
    result = run_markers(read_series(path), PARAMS, use_s1=use_s1)
    out: dict[str, list[tuple[str, float, str]]] = {}
    for row in result.rows():
        if row.marker == "mowing":
            out.setdefault(row.parcel_id, []).append((row.main_date, row.confidence, row.sources))
    return out


def test_known_cuts_found_within_tolerance_s2_only(tmp_path: Path) -> None:
    cuts = {"one": [165], "two": [150, 200], "three": [140, 185, 235], "none": []}
    rows = [row for parcel, days in cuts.items() for row in grass_rows(parcel, days, noise=0.01, seed=len(days))]
    found = _mowing_dates(write_rows(tmp_path / "s.csv", rows), use_s1=False)
    assert "none" not in found
    for parcel, days in cuts.items():
        got = [np.datetime64(d) for d, _, _ in found.get(parcel, [])]
        assert len(got) == len(days), (parcel, found.get(parcel))
        for want, have in zip(days, got, strict=True):
            assert abs((np.datetime64(doy_date(want)) - have).astype(int)) <= 3


def test_max_events_counts_per_season(tmp_path: Path) -> None:
    # one plot, three seasons in one file, 2 + 3 + 2 cuts: max_events (4) holds per season, not per series
    cuts = {2020: [150, 200], 2021: [140, 185, 235], 2022: [160, 215]}
    rows = [row for year, days in cuts.items() for row in grass_rows("plot", days, year=year, noise=0.01, seed=year)]
    path = write_rows(tmp_path / "s.csv", rows)
    want = [doy_date(d, year) for year, days in cuts.items() for d in days]
    got = [np.datetime64(d) for d, _, _ in _mowing_dates(path, use_s1=False)["plot"]]
    assert len(got) == 7
    assert all(abs((np.datetime64(w) - g).astype(int)) <= 3 for w, g in zip(want, got, strict=True))
    # parameters before version 4 counted the whole series: the 4 strongest of the 7 cuts
    before_v4 = recorded_params(3, without=[("mowing", "max_events_per_season")],
                                values={("mowing", "max_events"): 4})  # as version 3 recorded it
    old = [r for r in run_markers(read_series(path), before_v4, use_s1=False).rows() if r.marker == "mowing"]
    assert len(old) == 4


def test_five_cuts_of_an_intensive_meadow_are_all_found(tmp_path: Path) -> None:
    # an alpine / southern German meadow cut five times, every 5 weeks from early May (parameters v5)
    cuts = [125, 160, 195, 230, 265]
    path = write_rows(tmp_path / "s.csv", grass_rows("meadow", cuts, noise=0.01, seed=3))
    got = [np.datetime64(d) for d, _, _ in _mowing_dates(path, use_s1=False)["meadow"]]
    assert len(got) == 5
    assert all(abs((np.datetime64(doy_date(w)) - g).astype(int)) <= 3 for w, g in zip(cuts, got, strict=True))
    # version 4 kept at most 4 cuts a season: the recorded parameters of such a run give its 4 again
    version_4 = recorded_params(4, values={("mowing", "max_events"): 4})
    old = [r for r in run_markers(read_series(path), version_4, use_s1=False).rows() if r.marker == "mowing"]
    assert len(old) == 4


def test_cloudy_and_dip_observations_do_not_hide_or_fake_cuts(tmp_path: Path) -> None:
    # a cut on doy 180; an undetected cloud dip on doy 130 (recovers at the next observation), masked clouds
    rows = grass_rows("p", [180], cloudy=[175, 185, 190], dips=[130])
    series = read_series(write_rows(tmp_path / "s.csv", rows))
    prepared = prepare(series, PARAMS)
    dip_days = [day_to_date(d) for d in prepared.s2.day[prepared.s2.cloud_dip]]
    assert dip_days == [doy_date(130).isoformat()]
    assert int((~prepared.s2.valid).sum()) == 4
    found = _mowing_dates(tmp_path / "s.csv", use_s1=False)["p"]
    assert len(found) == 1
    assert abs((np.datetime64(found[0][0]) - np.datetime64(doy_date(180))).astype(int)) <= 6


def test_real_cut_seen_in_one_observation_is_not_a_dip(tmp_path: Path) -> None:
    # the only low observation after the cut is followed by slow regrowth: kept
    rows = grass_rows("p", [200], every=10)
    prepared = prepare(read_series(write_rows(tmp_path / "s.csv", rows)), PARAMS)
    assert not prepared.s2.cloud_dip.any()
    assert len(detect_mowing(prepared, PARAMS).parcel) == 1


def test_coherence_raises_confidence(tmp_path: Path) -> None:
    rows = grass_rows("p", [170], coherence=True, noise=0.0)
    path = write_rows(tmp_path / "s.csv", rows)
    with_s1 = _mowing_dates(path)["p"]
    s2_only = _mowing_dates(path, use_s1=False)["p"]
    assert with_s1[0][2] == "s2+coh" and s2_only[0][2] == "s2"
    assert with_s1[0][1] == pytest.approx(min(s2_only[0][1] + PARAMS.get("mowing", "s1_bonus"), 1.0))


def _s1_test(path: Path, params: MarkerParams) -> tuple[float, float, float]:
    """(confidence, coherence rise, rise needed) of the one mowing of parcel p, from its explanation."""
    steps = [s for s in explain_mowing(read_series(path), "p", params).steps if s.verdict == "mowing"]
    assert len(steps) == 1
    rise, need = re.search(r"coherence ([+-][0-9.]+) [<>]=? ([0-9.]+)", steps[0].confidence_parts).groups()
    return steps[0].confidence, float(rise), float(need)


def test_coherence_rise_within_its_noise_is_no_support(tmp_path: Path) -> None:
    """Coherence of small parcels is noisy: the same rise supports a cut on a calm series, not on a noisy one."""
    bonus = PARAMS.get("mowing", "s1_bonus")
    calm = write_rows(tmp_path / "calm.csv", grass_rows("p", [170], coherence=True, coherence_rise=0.08,
                                                        coherence_noise=0.01, seed=3))
    s2_only = _mowing_dates(calm, use_s1=False)["p"][0][1]
    confidence, rise, need = _s1_test(calm, PARAMS)
    assert rise >= need == pytest.approx(PARAMS.get("mowing", "min_coherence_rise"), abs=0.02)
    assert confidence == pytest.approx(min(s2_only + bonus, 1.0))
    assert _mowing_dates(calm)["p"][0][2] == "s2+coh"
    noisy = write_rows(tmp_path / "noisy.csv", grass_rows("p", [170], coherence=True, coherence_rise=0.08,
                                                          coherence_noise=0.15, seed=3))
    confidence, rise, need = _s1_test(noisy, PARAMS)
    assert PARAMS.get("mowing", "min_coherence_rise") <= rise < need  # a rise the old test took as support
    assert confidence == pytest.approx(s2_only)
    assert _mowing_dates(noisy)["p"][0][2] == "s2+coh"  # coherence was read, it did not support the cut
    # parameters before version 7 have no noise test: a recomputed old run gives the bonus as it did
    old = recorded_params(6, without=[("mowing", "coherence_noise_z")])
    confidence, rise, need = _s1_test(noisy, old)
    assert need == PARAMS.get("mowing", "min_coherence_rise") and confidence == pytest.approx(min(s2_only + bonus, 1.0))


def test_one_noisy_pair_does_not_date_a_cut_in_a_long_gap() -> None:
    """Inside a 40-day S2 gap (doy 100-140) the first pair clearly above tall grass dates the cut, not a noise spike."""
    day = np.array([70.0, 76.0, 82.0, 88.0, 94.0, 106.0, 118.0, 124.0])
    vv = np.array([0.30, 0.25, 0.35, 0.30, 0.30, 0.36, 0.60, 0.62])  # doy 106: +0.06, within the noise
    interval = np.full(len(day), 6.0)
    args = (day, vv, interval, 0, len(day), 100.0, 140.0, 0.04)
    noise = coherence_noise(vv, interval, np.full(len(day), -1, np.int32), 0, len(day))
    assert 0.03 < noise < 0.2
    assert coherence_cut_date(*args, np.nan, 0.0) == (103.0, 5)  # the absolute floor alone (before version 7)
    assert coherence_cut_date(*args, noise, 1.645) == (115.0, 6)  # the pair of short grass


def test_degenerate_series(tmp_path: Path) -> None:
    one = write_rows(tmp_path / "one.csv", grass_rows("p", [])[:2])
    result = run_markers(read_series(one), PARAMS)
    # one observation (1 March, before the season): only the data-sufficiency marker, with no clear observation
    assert [(r.marker, r.value, r.confidence) for r in result.rows()] == [("data_sufficiency", 0.0, 0.0)]
    assert int(result.n_used[0]) == 1
    cloudy = write_rows(tmp_path / "cloudy.csv", grass_rows("p", [150], cloudy=list(range(0, 366))))
    result = run_markers(read_series(cloudy), PARAMS)
    assert [r.marker for r in result.rows()] == ["data_sufficiency"]
    assert int(result.n_used[0]) == 0 and int(result.n_rejected[0]) == 49
    empty = write_rows(tmp_path / "empty.csv", [])
    assert run_markers(read_series(empty), PARAMS).n_events == 0
    nan = grass_rows("p", [150])
    for row in nan[::3]:
        row[4] = "nan"
    result = run_markers(read_series(write_rows(tmp_path / "nan.csv", nan)), PARAMS)
    assert int(result.n_used[0]) < 49 and np.isfinite(result.confidence).all()


def _red_nir_rows(parcel: str, days: np.ndarray, ndvi: np.ndarray) -> list[list[object]]:
    """B04 and B08 rows of a clear S2 series with the given NDVI on days of year *days* (2021)."""
    rows: list[list[object]] = []
    for doy, value in zip(days, ndvi, strict=True):
        red, nir = 0.3 * (1 - value) / (1 + value), 0.3
        rows += [[parcel, doy_date(doy).isoformat(), "s2", band, mean, 0.99, ""] for band, mean in (("B04", red),
                                                                                                  ("B08", nir))]
    return rows


def test_arable_markers(tmp_path: Path) -> None:
    # maize: bare until May, emergence, peak in August, harvest on doy 270, bare again
    days = np.arange(60, 331, 5)
    ndvi = np.where(days < 140, 0.15, np.where(days < 270, 0.15 + 0.75 * np.clip((days - 140) / 60, 0, 1), 0.18))
    result = run_markers(read_series(write_rows(tmp_path / "m.csv", _red_nir_rows("m", days, ndvi))), PARAMS)
    by_marker = {}
    for row in result.rows():
        by_marker.setdefault(row.marker, []).append(row)
    assert [r.main_date for r in by_marker["harvest"]] == [doy_date(267).isoformat()]
    assert len(by_marker["emergence"]) == 1
    assert abs((np.datetime64(by_marker["emergence"][0].main_date) - np.datetime64(doy_date(156))).astype(int)) <= 2
    assert [(r.start_date, r.end_date) for r in by_marker["bare_soil"]] == [
        (doy_date(60).isoformat(), doy_date(145).isoformat()), (doy_date(270).isoformat(), doy_date(330).isoformat())]
    assert "mowing" not in by_marker
    assert by_marker["vegetation"][0].value == pytest.approx(0.9, abs=1e-3)


def test_each_crop_cycle_ends_in_its_own_harvest(tmp_path: Path) -> None:
    # double cropping: winter barley (green from March, harvested on doy 183), then a second crop that
    # emerges in late July, peaks in September and is harvested on doy 288; each cycle's crop emerges
    days = np.arange(60, 331, 5)
    barley = np.where(days < 183, 0.85, 0.2)
    second = 0.2 + 0.55 * np.clip((days - 205) / 45, 0, 1)
    ndvi = np.where(days < 205, barley, np.where(days < 288, second, 0.22))
    result = run_markers(read_series(write_rows(tmp_path / "d.csv", _red_nir_rows("d", days, ndvi))), PARAMS)
    harvests = [r for r in result.rows() if r.marker == "harvest"]
    assert [(r.seq, r.main_date) for r in harvests] == [(1, doy_date(182).isoformat()), (2, doy_date(287).isoformat())]
    assert [r.value for r in harvests] == pytest.approx([0.65, 0.53], abs=1e-3)
    # the barley was green when the series starts; the second crop emerges after the bare stubble
    emergences = [r for r in result.rows() if r.marker == "emergence"]
    assert [r.main_date for r in emergences] == [doy_date(217).isoformat()]  # 0.35 reached 12.3 days after doy 205
    maize = 0.15 + 0.75 * np.clip((days - 140) / 60, 0, 1)
    maize_then_catch_crop = np.where(days < 140, 0.15, np.where(days < 270, maize, np.where(days < 290, 0.18, 0.6)))
    result = run_markers(read_series(write_rows(tmp_path / "c.csv", _red_nir_rows("c", days, maize_then_catch_crop))),
                         PARAMS)
    # the maize emerges from bare soil in June, the catch crop sown after its harvest in October
    assert [r.main_date for r in result.rows() if r.marker == "emergence"] == [doy_date(156).isoformat(),
                                                                               doy_date(287).isoformat()]


def _dip_reference(offsets, day, ndvi, valid, rate, margin, span):  # type: ignore[no-untyped-def]
    dip = np.zeros(len(day), bool)
    for p in range(len(offsets) - 1):
        rows = [r for r in range(offsets[p], offsets[p + 1]) if valid[r]]
        kept: list[int] = []
        for r in rows:
            if len(kept) >= 2:
                a, b = kept[-2], kept[-1]
                if (day[r] - day[a] <= span and ndvi[a] - ndvi[b] > margin and ndvi[r] >= ndvi[a] - margin
                        and (ndvi[r] - ndvi[b]) / max(day[r] - day[b], 1.0) > rate):
                    dip[b] = True
                    kept[-1] = r
                    continue
            kept.append(r)
    return dip


def test_kernels_match_plain_references() -> None:
    rng = np.random.default_rng(7)
    offsets = np.array([0, 40, 41, 41, 120], np.int64)
    day = np.concatenate([np.sort(rng.uniform(0, 300, n)) for n in np.diff(offsets)])
    ndvi = rng.uniform(0.1, 0.9, len(day))
    valid = rng.random(len(day)) > 0.2
    no_haze = np.full(len(day), np.nan)
    got = _cloud_dip_kernel(offsets, day, ndvi, no_haze, valid, 0.03, 0.05, 25.0, 1, 0.01, 0.0)
    want = _dip_reference(offsets, day, ndvi, valid, 0.03, 0.05, 25.0)
    np.testing.assert_array_equal(got, want)
    assert got.sum() > 3
    haze = rng.uniform(0.0, 0.04, len(day))
    runs = _cloud_dip_kernel(offsets, day, ndvi, haze, valid, 0.03, 0.05, 25.0, 2, 0.01, 0.0)
    np.testing.assert_array_equal(runs, _cloud_dip_kernel.py_func(offsets, day, ndvi, haze, valid, 0.03, 0.05, 25.0,
                                                                  2, 0.01, 0.0))
    assert runs.sum() > got.sum()  # two-observation runs and haze signatures add dips
    week = _cloud_dip_kernel(offsets, day, ndvi, haze, valid, 0.03, 0.05, 25.0, 2, 0.01, 7.0)
    np.testing.assert_array_equal(week, _cloud_dip_kernel.py_func(offsets, day, ndvi, haze, valid, 0.03, 0.05, 25.0,
                                                                  2, 0.01, 7.0))
    assert week.sum() >= runs.sum() and (week | ~runs).all()  # a fall undone within a week adds dips, drops none
    coh_day = np.sort(rng.uniform(0, 300, 60))
    coh = rng.uniform(0.1, 0.8, 60)
    for start in (50.0, 120.0, 200.0):
        before = coh[(coh_day >= start - 18 - 12) & (coh_day <= start - 6)]
        after = coh[(coh_day >= start + 5) & (coh_day <= start + 5 + 18)]
        assert coherence_rise(coh_day, coh, 0, 60, start, start + 5, 18.0)[0] == pytest.approx(
            after.mean() - before.mean())
    # the noise of one pair: robust scatter of successive pairs of the same interval and orbit, over sqrt(2)
    interval = np.where(np.arange(60) % 3 == 0, 12.0, 6.0)
    no_orbit = np.full(60, -1, np.int32)
    noisy = 0.4 + rng.normal(0.0, 0.1, 60)
    diffs = np.concatenate([np.diff(noisy[interval == k]) for k in (6.0, 12.0)])
    want_noise = 1.4826 * np.median(np.abs(diffs)) / np.sqrt(2.0)
    assert coherence_noise(noisy, interval, no_orbit, 0, 60) == pytest.approx(want_noise)
    assert 0.07 < want_noise < 0.13  # it estimates the noise put in
    assert np.isnan(coherence_noise(noisy, interval, no_orbit, 0, 4))  # too few pairs to tell
    # two orbits in turn, their levels 0.15 apart (incidence, time of day): the offset is not noise
    orbit = np.where(np.arange(60) % 2 == 0, 22, 95).astype(np.int32)
    calm = 0.4 + np.where(orbit == 22, 0.15, 0.0) + np.random.default_rng(7).normal(0.0, 0.02, 60)
    six = np.full(60, 6.0)
    assert coherence_noise(calm, six, orbit, 0, 60) < 0.04 < coherence_noise(calm, six, no_orbit, 0, 60)
    # the compiled kernels give what their Python source gives
    doy = (day % 365).astype(np.float64) + 1
    packed = np.array([PARAMS.get("mowing", k) for k in _PARAM_ORDER])
    red = rng.uniform(0.02, 0.12, len(day))
    ndmi = 0.6 * ndvi - 0.1 + rng.normal(0.0, 0.03, len(day))  # moisture follows greenness
    ndmi[::7] = np.nan  # no SWIR band: the moisture test does not apply
    coh_offsets = np.array([0, 60, 60, 60, 60], np.int64)
    coh_interval = np.full(60, 6.0)
    coh_orbit = np.where(np.arange(60) % 2 == 0, 22, 95).astype(np.int32)
    for per_season in (0.0, 1.0):  # max_events over the series (before v4) / per season
        packed[_PARAM_ORDER.index("max_events_per_season")] = per_season
        compiled = _mowing_kernel(offsets, day, doy, ndvi, red, ndmi, valid, coh_offsets, coh_day, coh, coh_interval,
                                  coh_orbit, packed)
        python = _mowing_kernel.py_func(offsets, day, doy, ndvi, red, ndmi, valid, coh_offsets, coh_day, coh,
                                        coh_interval, coh_orbit, packed)
        assert len(compiled[0]) > 3
        np.testing.assert_array_equal(compiled[0], python[0])
        np.testing.assert_allclose(compiled[1], python[1])
        np.testing.assert_array_equal(compiled[2], python[2])  # the observations that prove each event
    year = np.full(len(day), 2021, np.int32)
    bsi = rng.uniform(-0.2, 0.2, len(day))
    # harvest after the calendar year's peak (before v4) / per crop cycle; bare soil without (v6) / with the cover
    for crop_cycles, penalty in ((0, 0.0), (1, 0.0), (1, 0.25)):
        crop_params = np.array([0.5, 0.25, 0.0, 0.6, 0.4, 0.25, 0.35, 91, 273, 15, 45, 152, 319, 60, 304,
                                crop_cycles, crop_cycles, 0.4, 120, penalty], np.float64)
        compiled = _crop_events_kernel(offsets, day, doy, year, ndvi, bsi, valid, crop_params)
        python = _crop_events_kernel.py_func(offsets, day, doy, year, ndvi, bsi, valid, crop_params)
        assert len(compiled[0]) > 5 and (compiled[1] == 2).any()
        for a, b in zip(compiled, python, strict=True):
            np.testing.assert_allclose(a, b)


def test_marker_names_are_stable() -> None:
    assert MARKERS == ("mowing", "vegetation", "bare_soil", "harvest", "emergence", "data_sufficiency")
