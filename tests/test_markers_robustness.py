"""benchmarks/markers_robustness.py: the Slovak set degraded (images lost, clouds the mask missed, no mask).

The degradations must be what the script says they are (whole overpasses dropped, only clear Sentinel-2 images
hazed, independent of the file's row order), and its table must start from the scores markers_eval.py reports.
"""

from __future__ import annotations

import csv
import gzip
import random
import sys
from pathlib import Path

import pytest
from conftest import shared_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import markers_robustness as robustness  # noqa: E402

HEADER = ["parcel_id", "obs_time", "source", "band", "mean", "clear_fraction", "orbit"]


def _rows() -> list[list[str]]:
    """Four bands of 40 Sentinel-2 dates of two plots (clear and cloudy alternately) and their Sentinel-1 rows."""
    rows = []
    for plot in ("a", "b"):
        for day in range(1, 41):
            when = f"2021-06-{day:02d}" if day <= 30 else f"2021-07-{day - 30:02d}"
            clear = "0.95" if day % 2 else "0.3"
            rows += [[plot, when, "s2", band, value, clear, ""] for band, value in
                     (("B02", "0.03"), ("B04", "0.04"), ("B08", "0.30"), ("B11", "0.20"))]
            rows.append([plot, when, "bs", "VV", "0.05", "", "51"])
    return rows


def _degrade(tmp_path: Path, rows: list[list[str]], change: robustness.Change) -> list[list[str]]:
    source = tmp_path / "in.csv.gz"
    with gzip.open(source, "wt", newline="") as stream:
        csv.writer(stream, lineterminator="\n").writerows([HEADER, *rows])
    with robustness.degraded(source, tmp_path / "out.csv", change).open(newline="") as stream:
        return list(csv.reader(stream))[1:]


def test_images_lost_drops_whole_overpasses_whatever_the_row_order(tmp_path: Path) -> None:
    rows = _rows()
    kept = _degrade(tmp_path, rows, robustness.images_lost(0.5, seed=3))
    s2_dates = {(r[0], r[1]) for r in kept if r[2] == "s2"}
    assert all(sum(1 for r in kept if (r[0], r[1]) == key and r[2] == "s2") == 4 for key in s2_dates)
    assert 20 <= len(s2_dates) <= 60  # about half of the 80 overpasses
    assert sum(1 for r in kept if r[2] == "bs") == 80  # Sentinel-1 is not touched
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    assert sorted(_degrade(tmp_path, shuffled, robustness.images_lost(0.5, seed=3))) == sorted(kept)
    assert sorted(_degrade(tmp_path, rows, robustness.images_lost(0.5, seed=4))) != sorted(kept)


def test_clouds_missed_hazes_clear_images_only_and_most_in_blue(tmp_path: Path) -> None:
    rows = _rows()
    out = _degrade(tmp_path, rows, robustness.clouds_missed(1.0, seed=0, min_clear=0.8))
    assert [r[5] for r in out] == [r[5] for r in rows]  # the mask's verdict is kept: it missed the haze
    changed = {(o[0], o[1]) for o, r in zip(out, rows, strict=True) if o[4] != r[4]}
    assert changed == {(r[0], r[1]) for r in rows if r[2] == "s2" and r[5] == "0.95"}
    by_key = {(o[0], o[1], o[3]): float(o[4]) for o in out}
    for plot, when in changed:
        blue_gain, nir_gain = by_key[plot, when, "B02"] - 0.03, by_key[plot, when, "B08"] - 0.30
        assert blue_gain > 0 and blue_gain > nir_gain  # haze brightens blue most (NIR may even darken)
        ndvi = (by_key[plot, when, "B08"] - by_key[plot, when, "B04"]) / (by_key[plot, when, "B08"]
                                                                         + by_key[plot, when, "B04"])
        assert ndvi < 0.76  # below the clear 0.765: a dip a mowing marker must not take for a cut
    assert _degrade(tmp_path, rows, robustness.clouds_missed(0.0, seed=0, min_clear=0.8)) == rows


def test_edge_mixing_pulls_clear_images_towards_bare_soil(tmp_path: Path) -> None:
    rows = _rows()
    out = _degrade(tmp_path, rows, robustness.edge_mixing(1.0, seed=0, min_clear=0.8))
    assert [r[5] for r in out] == [r[5] for r in rows]  # the mask does not see a neighbour
    changed = {(o[0], o[1]) for o, r in zip(out, rows, strict=True) if o[4] != r[4]}
    assert changed == {(r[0], r[1]) for r in rows if r[2] == "s2" and r[5] == "0.95"}
    by_key = {(o[0], o[1], o[3]): float(o[4]) for o in out}
    for plot, when in changed:
        red, nir = by_key[plot, when, "B04"], by_key[plot, when, "B08"]
        assert 0.04 < red <= 0.75 * 0.04 + 0.25 * 0.13 and 0.75 * 0.30 + 0.25 * 0.21 <= nir < 0.30  # m <= 0.25
        assert (nir - red) / (nir + red) < 0.765  # NDVI falls and red rises, as at a cut: what the marker must bear
    # the share holds (seeded), and a share of 0 changes nothing
    some = _degrade(tmp_path, rows, robustness.edge_mixing(0.5, seed=1, min_clear=0.8))
    assert 5 <= len({(o[0], o[1]) for o, r in zip(some, rows, strict=True) if o[4] != r[4]}) <= 35
    assert _degrade(tmp_path, rows, robustness.edge_mixing(0.0, seed=0, min_clear=0.8)) == rows


def test_no_cloud_mask_empties_the_clear_share_only(tmp_path: Path) -> None:
    rows = _rows()
    out = _degrade(tmp_path, rows, robustness.no_cloud_mask)
    assert [r[:5] for r in out] == [r[:5] for r in rows] and {r[5] for r in out} == {""}


def test_the_table_starts_from_markers_eval_scores(capsys: pytest.CaptureFixture[str]) -> None:
    assert robustness.main(["--data", str(shared_data()), "--draws", "1"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "condition" not in line]
    assert [line.split(" | ")[0][2:] for line in table] == [
        "as it is", "images lost (30% of the overpasses)", "clouds missed (10% of the clear images hazed)",
        "no cloud mask (clear_fraction removed)", "edge mixing (20% of the clear images part bare neighbour)",
        "SALMS as it is, S2+S1 (control)", "SALMS as it is, S2 only (control)"]
    # the unchanged set: markers_eval.py's SK S2-only row (186 hits, 15 false, 32 of the 37 not-mown plot-years clean)
    assert table[0] == "| as it is | 1 | 186 | 15 | 0.93 | 0.86 | 0.89 | 32 of 37 |"
    # the control rows: markers_eval.py's SALMS rows (14 of 17 dates found, 2 false, with S1 or without)
    assert table[5:] == ["| SALMS as it is, S2+S1 (control) | 1 | 14 | 2 | 0.88 | 0.82 | 0.85 | - |",
                         "| SALMS as it is, S2 only (control) | 1 | 14 | 2 | 0.88 | 0.82 | 0.85 | - |"]
    # fewer images: fewer hits; without the mask the marker's own cloud tests keep most of the scores
    hits = [int(line.split(" | ")[2].split()[0]) for line in table]
    assert hits[1] < hits[0] and hits[3] >= 0.9 * hits[0]
    # a bare neighbour seen in single images makes false mowings (README: the marker's weak side)
    false = [int(line.split(" | ")[3].split()[0]) for line in table]
    assert false[4] > 2 * false[0]


@pytest.mark.parametrize(("vary", "message"), [("mowing.no_such_key=1", "no parameter 'mowing.no_such_key'"),
                                               ("mowing.min_drop=abc", "could not convert"),
                                               ("mowing.min_drop=", "expected SECTION.KEY=V1,V2")])
def test_a_bad_vary_is_named(vary: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        robustness.main(["--data", str(shared_data()), "--vary", vary])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
