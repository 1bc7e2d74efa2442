"""The red band's spread over the parcel: an image part cloud is not a cut (validity.max_red_spread)."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from markers_params import recorded_params
from markers_series import HEADER, doy_date, grass_rows, reflectance, write_rows

from cbm_tasks.markers import load_params, read_series, run_markers
from cbm_tasks.markers.mowing_explain import explain_mowing
from cbm_tasks.markers.reader import SeriesFileError
from cbm_tasks.markers.series import BAND_CODE

PARAMS = load_params()
PART_CLOUDY_DOY = 180
SPREAD_KEYS = (("validity", "max_red_spread"), ("validity", "red_spread_factor"))


def _rows(*, spread: float, part_cloud_spread: float | None, cuts: tuple[int, ...] = ()) -> list[list[object]]:
    """Grass without a cut, one image on doy 180 part cloud (NDVI 0.85 -> 0.55, red x3.6), the next four cloudy.

    Across the cloudy gap the fall cannot be told from a cut by its return (the cloud-dip test judges
    neighbours at most 25 days apart), so only the spread of its red band shows the cloud. *spread* is every
    other image's red std; *part_cloud_spread* the part-cloudy image's (None: a file without a std column).
    """
    rows = grass_rows("p", list(cuts), cloudy=[185, 190, 195, 200])
    red, nir = reflectance(np.array([0.55]))
    when = doy_date(PART_CLOUDY_DOY).isoformat()
    out: list[list[object]] = []
    for row in rows:
        if row[1] == when:
            row = [*row[:4], f"{(red if row[3] == 'B04' else nir)[0]:.5f}", *row[5:]]
        if part_cloud_spread is not None:
            row = [*row, part_cloud_spread if row[1] == when else spread]
        out.append(row)
    return out


def _mowings(tmp_path: Path, rows: list[list[object]], params: object = PARAMS) -> list[str]:
    header = HEADER if len(rows[0]) == len(HEADER) else [*HEADER, "std"]
    series = read_series(write_rows(tmp_path / "s.csv", rows, header))
    return [row.main_date for row in run_markers(series, params, use_s1=False).rows() if row.marker == "mowing"]


def test_a_part_cloudy_image_is_not_a_cut(tmp_path: Path) -> None:
    # means alone: the fall to the part-cloudy image passes every test of a cut
    (found,) = _mowings(tmp_path, _rows(spread=0.004, part_cloud_spread=None))
    assert doy_date(PART_CLOUDY_DOY - 5) <= date.fromisoformat(found) <= doy_date(PART_CLOUDY_DOY)
    # with the spread: its red std 0.08 is far above the parcel's 0.004, and the image is not used
    assert _mowings(tmp_path, _rows(spread=0.004, part_cloud_spread=0.08)) == []
    series = read_series(tmp_path / "s.csv")
    (image,) = [o for o in explain_mowing(series, "p", PARAMS, use_s1=False, year=2021).observations
                if o.date == doy_date(PART_CLOUDY_DOY).isoformat()]
    assert not image.used and image.reason.startswith("red spread over the parcel above max_red_spread")
    assert image.reason.endswith(": red std 0.080, the parcel's usual 0.004")


def test_an_uneven_parcel_is_judged_by_its_own_spread(tmp_path: Path) -> None:
    # every image spreads 0.04 (a farm track, a hedge, a pond in the parcel): above max_red_spread, but not
    # above 3 x the parcel's usual spread, so nothing is rejected and the real cut of doy 150 is found;
    # an image at 0.15 (over 3 x 0.04) still is
    rows = _rows(spread=0.04, part_cloud_spread=0.04, cuts=(150,))
    found = _mowings(tmp_path, rows)
    assert [d[:7] for d in found] == ["2021-05", "2021-06"]  # the cut, and the part-cloudy fall kept
    assert [d[:7] for d in _mowings(tmp_path, _rows(spread=0.04, part_cloud_spread=0.15, cuts=(150,)))] == ["2021-05"]


def test_parameters_before_version_11_use_every_image(tmp_path: Path) -> None:
    # a run recorded with version 10 lacks the two keys: recomputed, it keeps the part-cloudy image as it did
    old = recorded_params(10, without=SPREAD_KEYS)
    assert len(_mowings(tmp_path, _rows(spread=0.004, part_cloud_spread=0.08), old)) == 1


def test_a_negative_or_infinite_spread_names_its_line(tmp_path: Path) -> None:
    rows = _rows(spread=0.004, part_cloud_spread=0.08)
    rows[3][-1] = -0.01
    path = write_rows(tmp_path / "s.csv", rows, [*HEADER, "std"])
    with pytest.raises(SeriesFileError, match=r"s\.csv: line 5, column 'std': expected a finite standard deviation"):
        read_series(path)
    rows[3][-1] = "inf"
    path = write_rows(tmp_path / "s.csv", rows, [*HEADER, "std"])
    with pytest.raises(SeriesFileError, match=r"s\.csv: line 5, column 'std': .* got inf"):
        read_series(path)


def test_exponent_notation_switches_a_test_off(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e9 as a string; the parameter file's comments write "1e9 switches it off"
    (tmp_path / "p.yaml").write_text("validity:\n  max_red_spread: 1e9\n  red_spread_factor: 2.5E+1\n")
    params = load_params(tmp_path / "p.yaml")
    assert (params.get("validity", "max_red_spread"), params.get("validity", "red_spread_factor")) == (1e9, 25.0)
    assert len(_mowings(tmp_path, _rows(spread=0.004, part_cloud_spread=0.08), params)) == 1


def test_the_synthetic_aois_series_carry_the_spread_of_its_part_clouds(tmp_path: Path) -> None:
    # markers_eval's synthetic row: the images reduced as the extraction does, spread included; the AOI's round
    # clouds cover parts of parcels, and those images spread far above the parcels' usual
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from markers_synthetic import synthetic_series

    from cbm_tasks.markers.preprocess import PART_CLOUD, prepare, rejection_codes

    path, truth, parcel_ids = synthetic_series(tmp_path, n_parcels=60)
    series = read_series(path)
    red = series.band == BAND_CODE["B04"]
    assert np.isfinite(series.std[red]).all() and (series.std[red] >= 0).all()
    s2 = prepare(series, PARAMS).s2
    codes = rejection_codes(s2, PARAMS)
    assert (codes == PART_CLOUD).sum() >= 5
    assert (s2.red_spread[codes == PART_CLOUD] > PARAMS.get("validity", "max_red_spread")).all()
    assert truth["mowing"] and set(truth["mowing"]) <= set(parcel_ids)
