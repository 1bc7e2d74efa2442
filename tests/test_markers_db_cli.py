"""`cbm markers run|plot|explain|export` on the database (no --timeseries): a real PostGIS, seeded series."""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psycopg
import pyogrio
import pytest
from PIL import Image
from psycopg import sql

from cbm_tasks import cli
from cbm_tasks.demo.run import DemoSummary, _why_lights
from cbm_tasks.demo.series_seed import seed_parcel_set
from cbm_tasks.markers import plot as plot_module
from cbm_tasks.markers.miss_reasons import NOT_COMPUTED
from cbm_tasks.pipeline.extract import AoiSummary
from cbm_tasks.traffic_light import load_rules


@pytest.fixture
def seeded(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        seed_parcel_set(conn, tmp_path, aoi="mk", year=2018, n_parcels=12, seed=5)
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    return db_url


def test_run_plot_export(seeded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["markers", "run", "--aoi", "mk", "--year", "2018"]) == 0
    out = capsys.readouterr().out
    assert "mk 2018: marker run 1 (incremental): 12 parcels" in out
    assert "grassland_mowing: " in out and "EVENT_FOUND" in out
    assert cli.main(["markers", "run", "--aoi", "mk", "--year", "2018"]) == 0
    assert "nothing new to compute" in capsys.readouterr().out
    with psycopg.connect(seeded) as conn:
        assert conn.execute("SELECT count(*), min(dag_id) FROM cbm.pipeline_run WHERE step = 'markers'"
                            ).fetchone() == (2, None)  # a command-line run is recorded without an Airflow id

    png = tmp_path / "p1.png"
    assert cli.main(["markers", "plot", "--aoi", "mk", "--year", "2018", "--parcel", "P0000001",
                     "--out", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size[0] > 400 and np.asarray(image).std() > 10  # a picture, not a blank canvas
    # it draws the events of the markers the parcel's schemes read (as the audit report), or all of them
    drawn: list[object] = []

    def spy(*args: object, markers: object = None) -> object:
        drawn.append(markers)
        return figure(*args, markers=markers)

    figure = plot_module.parcel_figure
    monkeypatch.setattr(plot_module, "parcel_figure", spy)
    for extra in ([], ["--all-markers"]):
        assert cli.main(["markers", "plot", "--aoi", "mk", "--year", "2018", "--parcel", "P0000001",
                         "--out", str(png), *extra]) == 0
    with psycopg.connect(seeded) as conn:
        schemes = {row[0] for row in conn.execute(
            "SELECT scheme FROM cbm.traffic_light t JOIN cbm.parcel p USING (parcel_set_id, parcel_key) "
            "WHERE p.parcel_id = 'P0000001'")}
    rules = load_rules()
    assert drawn == [{rule.marker for scheme in schemes for rule in rules.schemes[scheme].rules}, None]
    assert drawn[0]

    gpkg = tmp_path / "lights.gpkg"
    assert cli.main(["markers", "export", "--aoi", "mk", "--year", "2018", "--out", str(gpkg)]) == 0
    assert pyogrio.read_info(gpkg)["features"] > 0


def test_errors_name_the_input(seeded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["markers", "run", "--aoi", "mk"]) == 2
    assert "--aoi and --year" in capsys.readouterr().err
    assert cli.main(["markers", "run", "--aoi", "nowhere", "--year", "2018"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli.main(["markers", "plot", "--aoi", "mk", "--year", "2018", "--parcel", "X-9",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "X-9" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert cli.main(["markers", "run", "--aoi", "mk", "--year", "2018", "--scheme", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_explain_agrees_with_the_stored_events(seeded: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["markers", "explain", "--aoi", "mk", "--year", "2018", "--parcel", "P0000001"]) == 0
    assert "marker run" not in capsys.readouterr().out  # before any run: the default parameters
    assert cli.main(["markers", "run", "--aoi", "mk", "--year", "2018"]) == 0
    capsys.readouterr()
    # the stored events of 2018 are exactly the falls named "mowing", the crop cycles named "harvest" and the rises
    # named "emergence"
    cases = (("mowing", "e.main_date::text", "e.main_date", lambda r: r["main_date"]),
             ("harvest", "e.event_start::text || '/' || e.event_end::text", "e.event_end",
              lambda r: f"{r['last_high_date']}/{r['low_date']}"),
             ("emergence", "e.event_start::text || '/' || e.event_end::text", "e.event_end",
              lambda r: f"{r['start_date']}/{r['end_date']}"))
    for marker, value, when, explained in cases:
        with psycopg.connect(seeded) as conn:
            stored = conn.execute(sql.SQL(
                "SELECT p.parcel_id, array_agg({value} ORDER BY e.event_start) FROM cbm.marker_event e "
                "JOIN cbm.parcel p USING (parcel_key) WHERE e.marker = %s AND extract(year FROM {when}) = 2018 "
                "GROUP BY 1 ORDER BY 1").format(value=sql.SQL(value), when=sql.SQL(when)), (marker,)).fetchall()
        assert stored, marker
        for parcel_id, values in stored[:3]:
            table = tmp_path / f"{parcel_id}_{marker}.csv"
            assert cli.main(["markers", "explain", "--aoi", "mk", "--year", "2018", "--parcel", parcel_id,
                             "--marker", marker, "--csv", str(table)]) == 0
            out = capsys.readouterr().out
            assert out.startswith("marker run 1 (") and f"parcel {parcel_id}: " in out
            with table.open(newline="") as stream:
                assert [explained(r) for r in csv.DictReader(stream) if r["verdict"] == marker] == values
    # bare soil: the observations of each run are the stored event's first to last image
    with psycopg.connect(seeded) as conn:
        stored = conn.execute(
            "SELECT p.parcel_id, array_agg(e.event_start::text || '/' || e.event_end::text ORDER BY e.event_start) "
            "FROM cbm.marker_event e JOIN cbm.parcel p USING (parcel_key) WHERE e.marker = 'bare_soil' "
            "AND extract(year FROM e.event_start) = 2018 GROUP BY 1 ORDER BY 1").fetchall()
    assert stored
    for parcel_id, values in stored[:3]:
        table = tmp_path / f"{parcel_id}_bare_soil.csv"
        assert cli.main(["markers", "explain", "--aoi", "mk", "--year", "2018", "--parcel", parcel_id,
                         "--marker", "bare_soil", "--csv", str(table)]) == 0
        assert f"{len(values)} runs of bare soil" in capsys.readouterr().out
        runs: dict[str, list[str]] = {}
        with table.open(newline="") as stream:
            for r in csv.DictReader(stream):
                assert (r["verdict"] == "bare soil") == (r["run"] != "0")
                if r["verdict"] == "bare soil":
                    runs.setdefault(r["run"], []).append(r["date"])
        assert [f"{dates[0]}/{dates[-1]}" for _, dates in sorted(runs.items(), key=lambda kv: int(kv[0]))] == values
    assert cli.main(["markers", "explain", "--aoi", "mk", "--year", "2018", "--parcel", "X-9"]) == 2
    assert "X-9" in capsys.readouterr().err


def test_explain_a_stored_light(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    # --scheme: the stored light re-evaluated with its stored rules gives the stored colour, reason and rule
    assert cli.main(["markers", "run", "--aoi", "mk", "--year", "2018"]) == 0
    with psycopg.connect(seeded) as conn:
        lights = conn.execute(
            "SELECT DISTINCT ON (t.scheme, t.colour, t.reason) p.parcel_id, t.scheme, t.colour, t.reason, t.rule_id "
            "FROM cbm.traffic_light t JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id "
            "AND p.parcel_key = t.parcel_key ORDER BY t.scheme, t.colour, t.reason, p.parcel_id").fetchall()
    assert len(lights) >= 2
    capsys.readouterr()
    for parcel_id, scheme, colour, reason, rule_id in lights:
        assert cli.main(["markers", "explain", "--aoi", "mk", "--year", "2018", "--parcel", parcel_id, "--scheme",
                         scheme]) == 0
        stored, explained, *rules = capsys.readouterr().out.splitlines()
        assert stored.startswith(f"stored light: {colour} ({reason}, rule {rule_id}, rules v")
        assert not any(line.startswith("  differs") for line in rules)  # nothing extracted since the run
        assert explained == f"parcel {parcel_id}, scheme {scheme} 2018: {colour} ({reason}), decided by rule {rule_id}"
        assert any(line.startswith(f"  rule {rule_id}: ") for line in rules)
    # a stored light the evaluation no longer gives (as after images extracted since): the difference is said
    parcel_id, scheme, colour, reason, _ = lights[0]
    other = ("red", "NO_EVENT") if colour != "red" else ("green", "EVENT_FOUND")
    with psycopg.connect(seeded, autocommit=True) as conn:
        conn.execute("UPDATE cbm.traffic_light t SET colour = %s, reason = %s FROM cbm.parcel p WHERE "
                     "p.parcel_key = t.parcel_key AND p.parcel_id = %s AND t.scheme = %s", (*other, parcel_id, scheme))
    assert cli.main(["markers", "explain", "--aoi", "mk", "--year", "2018", "--parcel", parcel_id, "--scheme",
                     scheme]) == 0
    out = capsys.readouterr().out
    assert f"stored light: {other[0]} ({other[1]}" in out and "  differs from the evaluation below" in out
    assert f"scheme {scheme} 2018: {colour} ({reason})" in out
    assert cli.main(["markers", "explain", "--aoi", "mk", "--year", "2018", "--parcel", lights[0][0], "--scheme",
                     "no_such_scheme"]) == 2
    assert "scheme 'no_such_scheme' is not in the rules" in capsys.readouterr().err


def test_demo_summary_commands_explain_its_lights(seeded: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # the `make demo` summary prints, per scheme with red lights, a command that explains one: each runs
    with psycopg.connect(seeded, autocommit=True) as conn:
        seed_parcel_set(conn, tmp_path, aoi="why", year=2018, n_parcels=150, seed=11)
    assert cli.main(["markers", "run", "--aoi", "why", "--year", "2018"]) == 0
    with psycopg.connect(seeded) as conn:
        lines = _why_lights(conn, SimpleNamespace(aoi="why", year=2018))
        red = {row[0] for row in conn.execute(
            "SELECT DISTINCT t.scheme FROM cbm.traffic_light t JOIN cbm.parcel_set s USING (parcel_set_id) "
            "JOIN cbm.aoi a USING (aoi_id) WHERE a.name = 'why' AND t.colour = 'red'")}
    *by_marker, by_light = lines
    assert by_marker and {line.split("  (")[1].split(":")[0] for line in by_marker} <= red
    assert "--scheme" in by_light and "rule by rule" in by_light
    capsys.readouterr()
    for line in lines:
        argv = line.split("  (")[0].split()
        assert argv[:3] == ["cbm", "markers", "explain"]
        assert cli.main(argv[1:]) == 0
        out = capsys.readouterr().out
        expected = {"harvest": "crop cycles", "bare_soil": "runs of bare soil", "emergence": "rises of NDVI"}.get(
            argv[-1], "falls of NDVI")
        if "--scheme" in argv:
            colour = line.split(": why ")[1].split(",")[0]
            expected = f"stored light: {colour} ("
        assert expected in out


def test_validate_scores_the_stored_events_as_the_exported_series(db_url: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``validate --aoi --year`` scores the events the lights were decided on; the exported series scores the same."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        truth_of = seed_parcel_set(conn, tmp_path, aoi="mk", year=2018, n_parcels=12, seed=5).truth
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    truth = tmp_path / "checks.csv"
    with truth.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["parcel_id", "date", "event"])
        for parcel, events in sorted(truth_of.items()):
            mowings = [(date(2018, 1, 1) + timedelta(days=doy - 1)).isoformat() for doy, kind in events
                       if kind == "mowing"]
            writer.writerows([parcel, when, "mowing"] for when in mowings or [""])  # "": checked, not mown
        writer.writerow(["P9999999", "2018-06-01", "mowing"])  # not in the parcel set
        # a declared cut the series does not show: a miss whose cause is judged from the parcel's own falls
        mown = min(parcel for parcel, events in truth_of.items() if any(kind == "mowing" for _, kind in events))
        writer.writerow([mown, "2018-04-10", "mowing"])
    stored = ["markers", "validate", "--aoi", "mk", "--year", "2018", "--truth", str(truth)]
    # before any marker run nothing is computed: every true mowing is missed, and the summary says to run first
    assert cli.main([*stored, "--out", str(tmp_path / "none")]) == 0
    text = capsys.readouterr().out
    assert "none: run cbm markers run first" in text and "parcels scored: 13 (13 without markers computed" in text
    assert cli.main(["markers", "run", "--aoi", "mk", "--year", "2018"]) == 0
    capsys.readouterr()
    # the command the `make demo` summary shows, with the checks file filled in
    demo = DemoSummary(aoi="mk", catalogue_root=Path(), summary=AoiSummary("mk", {}, 0, 0, 0, 0),
                       catalogue_run=("c", "success"), extract_runs=(), markers_run=("m", "success"), lights={},
                       url="http://127.0.0.1:8080", username="admin", password="-", year=2018)
    (hint,) = [line for line in demo.lines() if line.startswith("score on checks")]
    argv = [str(truth) if arg == "checks.csv" else arg for arg in hint.split("  (")[0].split()[3:]]
    assert argv[:3] == ["cbm", "markers", "validate"] and argv[3:] == stored[2:]
    assert cli.main([*argv[1:], "--out", str(tmp_path / "db")]) == 0
    text = capsys.readouterr().out
    assert "mowing marker of mk 2018 in the database" in text and "stored events of marker run 1" in text
    assert "parcels scored: 13 (1 without markers computed" in text
    assert cli.main(["timeseries", "export", "--aoi", "mk", "--year", "2018", "--out", str(tmp_path / "s.csv")]) == 0
    assert cli.main(["markers", "validate", "--timeseries", str(tmp_path / "s.csv"), "--truth", str(truth),
                     "--out", str(tmp_path / "file")]) == 0
    db_lines, file_lines = ((tmp_path / out / "matches.csv").read_text() for out in ("db", "file"))
    assert db_lines == file_lines and db_lines.count("\n") > 10  # the causes of the misses included
    with (tmp_path / "db" / "matches.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    causes = {(row["parcel_id"], row["true_date"]): row["reason"] for row in rows if row["outcome"] == "missed"}
    falls = [row["reason"] for row in rows if row["outcome"] == "false"]
    assert falls and all(fall.startswith("fall ") for fall in falls)  # each false detection with its fall
    assert causes[("P9999999", "2018-06-01")] == NOT_COMPUTED
    assert causes[(mown, "2018-04-10")] not in ("", NOT_COMPUTED)
    # a check of another season is not about the 2018 parcel set: left out, and said
    with truth.open("a", newline="") as stream:
        csv.writer(stream, lineterminator="\n").writerow([mown, "2017-06-20", "mowing"])
    assert cli.main([*stored, "--out", str(tmp_path / "other")]) == 0
    assert "(2018 only: 1 date of other years left out)" in capsys.readouterr().out
    assert (tmp_path / "other" / "matches.csv").read_text() == db_lines
    db_scores = json.loads((tmp_path / "db" / "scores.json").read_text())
    assert db_scores["marker_runs"] == [1] and db_scores["hits"] >= 8 and db_scores["parcels_without_observations"] == 1
    with psycopg.connect(db_url) as conn:  # every detection scored is a stored mowing of the parcel's current run
        stored_count = conn.execute("SELECT count(*) FROM cbm.marker_event e JOIN cbm.parcel p ON "
                                    "p.parcel_key = e.parcel_key WHERE e.marker = 'mowing'").fetchone()
    assert db_scores["detected"] == stored_count[0]
    # the file options do not apply to stored events
    assert cli.main([*stored, "--s2-only"]) == 2
    assert "--params and --s2-only apply to --timeseries only" in capsys.readouterr().err


def test_validate_stored_lights_against_checks(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``validate --aoi --year --scheme``: the stored lights of the checked parcels, as the exported series gives."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        seeded = seed_parcel_set(conn, tmp_path, aoi="mk", year=2018, n_parcels=40, seed=8)
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    (rule,) = load_rules().schemes["grassland_mowing"].rules
    first, last = rule.window(2018)
    checks = tmp_path / "checks.csv"
    with checks.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["parcel_id", "compliant", "scheme"])
        for parcel, events in sorted(seeded.truth.items()):
            if seeded.crops[parcel] == "grassland":  # the parcels the scheme's lights are stored for
                mown = any(first <= date(2018, 1, 1) + timedelta(days=doy - 1) <= last for doy, kind in events
                           if kind == "mowing")
                writer.writerow([parcel, "yes" if mown else "no", "grassland_mowing"])
    stored = ["markers", "validate", "--aoi", "mk", "--year", "2018", "--scheme", "grassland_mowing", "--truth",
              str(checks)]
    assert cli.main(["markers", "run", "--aoi", "mk", "--year", "2018"]) == 0
    capsys.readouterr()
    # the command the `make demo` summary shows (the line after the dated one), with the checks file filled in
    demo = DemoSummary(aoi="mk", catalogue_root=Path(), summary=AoiSummary("mk", {}, 0, 0, 0, 0),
                       catalogue_run=("c", "success"), extract_runs=(), markers_run=("m", "success"), lights={},
                       url="http://127.0.0.1:8080", username="admin", password="-", year=2018)
    lines = demo.lines()
    hint = lines[next(i for i, line in enumerate(lines) if line.startswith("score on checks")) + 1]
    argv = [str(checks) if arg == "otsc.csv" else arg for arg in hint.split("  (")[0].split()]
    assert argv[:3] == ["cbm", "markers", "validate"] and argv[1:] == stored
    assert cli.main([*argv[1:], "--out", str(tmp_path / "db")]) == 0
    text = capsys.readouterr().out
    assert "grassland_mowing lights of mk 2018 in the database" in text and "compliant lit red" in text
    db_lights = _read_csv(tmp_path / "db" / "lights.csv")
    assert db_lights and {row["colour"] for row in db_lights} <= {"green", "yellow", "red"}  # every one is lit
    with psycopg.connect(db_url) as conn:
        stored_colours = dict(conn.execute(
            "SELECT p.parcel_id, t.colour FROM cbm.traffic_light t JOIN cbm.parcel p USING (parcel_set_id, parcel_key) "
            "WHERE t.scheme = 'grassland_mowing'").fetchall())
    assert {row["parcel_id"]: row["colour"] for row in db_lights} == {
        row["parcel_id"]: stored_colours[row["parcel_id"]] for row in db_lights}
    # the exported series, as a file, gives the same lights
    assert cli.main(["timeseries", "export", "--aoi", "mk", "--year", "2018", "--out", str(tmp_path / "s.csv")]) == 0
    assert cli.main(["markers", "validate", "--timeseries", str(tmp_path / "s.csv"), "--truth", str(checks),
                     "--scheme", "grassland_mowing", "--out", str(tmp_path / "file")]) == 0
    assert _read_csv(tmp_path / "file" / "lights.csv") == db_lights
    assert cli.main([*stored, "--rules", str(checks)]) == 2
    assert "--rules applies to --timeseries only" in capsys.readouterr().err


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))
