"""Markers and traffic lights on a real PostGIS: idempotent, incremental, traceable, clean on removal.

Each test seeds a small synthetic parcel set (cbm_tasks.demo.series_seed: S2 every 5 days with
SCL counts, S1 CARD-BS every 6 days) through the extraction's own writer into a fresh database.
"""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyogrio
import pytest
import yaml
from markers_params import recorded_params

from cbm_tasks import db, lineage
from cbm_tasks.demo.series_seed import SeededSet, add_s2_image, seed_parcel_set
from cbm_tasks.errors import BadInputError, ConfigError, TransientError
from cbm_tasks.markers import db_read, db_write
from cbm_tasks.markers.engine import run_markers
from cbm_tasks.markers.export import export_lights
from cbm_tasks.markers.params import MarkerParams, load_params
from cbm_tasks.markers.series import BAND_CODE, OVERPASS_SECONDS, SeriesTable
from cbm_tasks.parcels.sets import import_parcels
from cbm_tasks.pipeline.markers import lights_summary, run_parcel_set
from cbm_tasks.traffic_light import evaluate
from cbm_tasks.traffic_light.evaluate import evaluate_lights
from cbm_tasks.traffic_light.rules import load_rules

N_PARCELS = 40
CLI = lineage.RunContext(step="markers")


@pytest.fixture
def seeded(db_url: str, tmp_path: Path) -> SeededSet:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return seed_parcel_set(conn, tmp_path, aoi="mk", year=2018, n_parcels=N_PARCELS, seed=7)


def _rows(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every marker row, without run ids and times (what must not change between identical runs)."""
    with psycopg.connect(db_url) as conn:
        return {
            "events": conn.execute(
                "SELECT parcel_key, marker, seq, event_start, main_date, event_end, value, confidence, sources, "
                "start_product, main_product, end_product, evidence FROM cbm.marker_event ORDER BY 1, 2, 3").fetchall(),
            "lineage": conn.execute(
                "SELECT parcel_key, n_used, n_rejected, obs_used, obs_rejected FROM cbm.marker_parcel "
                "ORDER BY 1").fetchall(),
            "lights": conn.execute(
                "SELECT parcel_key, scheme, colour, reason, rule_id, rules_version, rules_hash, season, event_seq, "
                "n_clear_obs, longest_gap_days FROM cbm.traffic_light ORDER BY 1, 2").fetchall(),
            "runs": conn.execute("SELECT params_hash, code_version, markers, n_parcels FROM cbm.marker_run").fetchall(),
        }


def _keys_of_crop(db_url: str, crop_code: str) -> list[int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT parcel_key FROM cbm.parcel WHERE crop_code = %s ORDER BY 1", (crop_code,))
        return [int(r[0]) for r in rows.fetchall()]


def test_run_twice_gives_identical_rows(db_url: str, seeded: SeededSet) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
        rows = _rows(db_url)
        second = run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
    assert first.parcels == second.parcels == N_PARCELS
    assert first.marker_run_id is not None and second.marker_run_id == first.marker_run_id + 1
    assert first.events > N_PARCELS and first.lights == second.lights == len(rows["lights"])
    assert _rows(db_url) == rows
    assert len(rows["runs"]) == 1  # the first run was replaced, not kept beside the second
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT DISTINCT marker_run_ids FROM cbm.traffic_light").fetchall() == [
            ([second.marker_run_id],)]
        statuses = conn.execute("SELECT step, status FROM cbm.pipeline_run").fetchall()
    assert statuses == [("markers", "success")] * 2
    # mown grassland: the seeded truth has at least one cut in June-August for most parcels
    grass = _keys_of_crop(db_url, "9120")
    mown = [light for light in rows["lights"] if light[1] == "grassland_mowing"]
    assert len(mown) == len(grass) and sum(light[2] == "green" for light in mown) >= 0.7 * len(grass)


def test_nothing_new_writes_nothing(db_url: str, seeded: SeededSet) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_parcel_set(conn, CLI, aoi="mk", year=2018)  # incremental: every parcel is new
        rows = _rows(db_url)
        again = run_parcel_set(conn, CLI, aoi="mk", year=2018)
    assert again.marker_run_id is None and again.parcels == 0 and again.lights == 0
    assert _rows(db_url) == rows


def test_other_parameters_rules_or_sensors_recompute_every_parcel(db_url: str, seeded: SeededSet,
                                                                   tmp_path: Path) -> None:
    # an upgrade of the defaults (or another parameter / rules file, or S2 only) must reach every parcel
    # on the next incremental run, not only those with new images; the same configuration again: nothing
    params = tmp_path / "params.yaml"
    params.write_text("version: 99\nmowing:\n  min_drop: 0.15\n")
    rules = tmp_path / "rules.yaml"
    shipped = resources.files("cbm_tasks.traffic_light").joinpath("scheme_rules.yaml").read_text()
    rules.write_text(yaml.safe_dump({**yaml.safe_load(shipped), "version": 99}))
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_parcel_set(conn, CLI, aoi="mk", year=2018)
        counts = [run_parcel_set(conn, CLI, aoi="mk", year=2018, params_path=params).parcels,
                  run_parcel_set(conn, CLI, aoi="mk", year=2018, params_path=params).parcels,
                  run_parcel_set(conn, CLI, aoi="mk", year=2018, params_path=params, use_s1=False).parcels,
                  run_parcel_set(conn, CLI, aoi="mk", year=2018, params_path=params, use_s1=False,
                                 rules_path=rules).parcels,
                  run_parcel_set(conn, CLI, aoi="mk", year=2018, params_path=params, use_s1=False,
                                 rules_path=rules).parcels]
        lit = conn.execute("SELECT count(DISTINCT parcel_key) FROM cbm.traffic_light").fetchone()[0]
        hashes = conn.execute("SELECT count(DISTINCT r.params_hash), count(DISTINCT t.rules_hash) "
                              "FROM cbm.traffic_light t JOIN cbm.marker_run r "
                              "ON r.marker_run_id = t.marker_run_ids[1]").fetchone()
    assert counts == [N_PARCELS, 0, N_PARCELS, lit, 0] and 0 < lit < N_PARCELS  # rules: parcels with a light
    assert hashes == (1, 1)  # every light now of one parameter set and one rules file


def test_new_observations_recompute_only_those_parcels(db_url: str, seeded: SeededSet) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = run_parcel_set(conn, CLI, aoi="mk", year=2018)
        before = _rows(db_url)
        add_s2_image(conn, aoi="mk", year=2018, when=datetime(2018, 11, 3, 10, 30, tzinfo=UTC),
                     parcel_keys=np.array([3, 5, 8], np.int32))
        second = run_parcel_set(conn, CLI, aoi="mk", year=2018)
        runs = dict(conn.execute("SELECT parcel_key, marker_run_id FROM cbm.marker_parcel").fetchall())
        lights = dict(conn.execute("SELECT parcel_key, marker_run_ids FROM cbm.traffic_light").fetchall())
    assert second.parcels == 3 and second.marker_run_id is not None
    assert {key for key, run in runs.items() if run == second.marker_run_id} == {3, 5, 8}
    assert {key for key, run in runs.items() if run == first.marker_run_id} == set(range(1, N_PARCELS + 1)) - {3, 5, 8}
    assert lights[3] == [second.marker_run_id] and lights[4] == [first.marker_run_id]
    after = _rows(db_url)
    untouched = [row for row in after["lineage"] if row[0] not in (3, 5, 8)]
    assert untouched == [row for row in before["lineage"] if row[0] not in (3, 5, 8)]
    for key in (3, 5, 8):
        old = next(row for row in before["lineage"] if row[0] == key)
        new = next(row for row in after["lineage"] if row[0] == key)
        assert new[1] == old[1] + 1 and len(new[3]) == len(old[3]) + 1  # the new clear image is used


def test_removed_parcel_loses_its_lights(db_url: str, seeded: SeededSet, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
        gone = conn.execute("SELECT parcel_key, parcel_id FROM cbm.parcel WHERE parcel_key = 7").fetchone()
        n_lights = conn.execute("SELECT count(*) FROM cbm.traffic_light").fetchone()[0]
        n_gone = conn.execute("SELECT count(*) FROM cbm.traffic_light WHERE parcel_key = 7").fetchone()[0]
        source = tmp_path / f"mk_2018_{N_PARCELS}_7.gpkg"
        meta, _, geometry, fields = pyogrio.raw.read(source)
        keep = np.array([pid != gone[1] for pid in fields[list(meta["fields"]).index("parcel_id")]])
        smaller = tmp_path / "smaller.gpkg"
        pyogrio.raw.write(smaller, geometry[keep], [field[keep] for field in fields], fields=list(meta["fields"]),
                          geometry_type="MultiPolygon", crs=meta["crs"], driver="GPKG", layer="parcels")
        import_parcels(conn, smaller, aoi="mk", year=2018, id_column="parcel_id", crop_code_column="crop_code")
        counts = [conn.execute(f"SELECT count(*) FROM cbm.{table} WHERE parcel_key = 7").fetchone()[0]  # noqa: S608
                  for table in ("traffic_light", "marker_event", "marker_parcel")]
        others = conn.execute("SELECT count(DISTINCT parcel_key) FROM cbm.marker_parcel").fetchone()[0]
        n_map = conn.execute("SELECT count(*) FROM cbm.traffic_light_map").fetchone()[0]
    assert counts == [0, 0, 0]
    assert others == N_PARCELS - 1
    assert n_map == n_lights - n_gone > 0


def _rules_file(tmp_path: Path, content: dict[str, Any]) -> Path:
    path = tmp_path / "rules_from_db.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_light_traces_to_observations_rule_and_params_and_recomputes(db_url: str, seeded: SeededSet,
                                                                     tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
        trace = conn.execute(
            "SELECT t.parcel_set_id, t.parcel_key, t.scheme, t.colour, t.reason, t.rule_id, t.rules_hash, "
            "r.params, t.obs_used, t.obs_rejected, p.crop_code, t.code_version, t.pipeline_run_id "
            "FROM cbm.traffic_light_trace t JOIN cbm.marker_run r ON r.marker_run_id = t.marker_run_id "
            "JOIN cbm.parcel p ON p.parcel_set_id = t.parcel_set_id AND p.parcel_key = t.parcel_key "
            "WHERE t.scheme = 'grassland_mowing' "
            "ORDER BY t.parcel_key LIMIT 1").fetchone()
        set_id, key, scheme, colour, reason, rule_id, rules_hash, params, used, rejected, crop, code, run = trace
        content = conn.execute("SELECT content FROM cbm.scheme_rules WHERE rules_hash = %s", (rules_hash,)).fetchone()
        # every rejected image is one the SCL shows cloudy over this parcel; the used ones are clear
        cloud = dict(conn.execute(
            "SELECT product_id, (counts[10])::float / (counts[5] + counts[10]) FROM cbm.parcel_class_counts "
            "WHERE parcel_set_id = %s AND parcel_key = %s", (set_id, key)).fetchall())
        products = [p for p in db_read.read_products(conn, set_id) if p.product_id in set(used) | set(rejected)]
        series = db_read.read_parcel_series(conn, parcel_set_id=set_id, products=products,
                                            parcel_keys=np.array([key], np.int32))
        events = conn.execute("SELECT marker, seq, main_date, confidence FROM cbm.marker_event "
                              "WHERE parcel_key = %s ORDER BY 1, 2", (key,)).fetchall()
    assert code == lineage.code_version() and run is not None
    assert rejected and all(cloud[p] > 0.5 for p in rejected)
    assert all(cloud.get(p, 0.0) < 0.5 for p in used)
    # recompute from what the database recorded: the rules as stored, the parameters as stored
    rules = load_rules(_rules_file(tmp_path, content[0]))
    assert rules.hash == rules_hash
    marker_params = MarkerParams(int(params["version"]), {k: v for k, v in params.items() if k != "version"}, "db")
    result = run_markers(series.series, marker_params)
    light = next(li for li in evaluate_lights(result, rules, crops={str(key): crop}, aoi="mk", year=2018)
                 if li.scheme == scheme)
    assert (light.colour, light.reason, light.rule_id) == (colour, reason, rule_id)
    recomputed = sorted((row.marker, row.seq, row.main_date, row.confidence) for row in result.rows())
    assert [(m, s, str(d), pytest.approx(c, abs=6e-4)) for m, s, d, c in events] == recomputed  # rows() rounds to 3


def test_trace_names_the_deciding_event_and_its_images(db_url: str, seeded: SeededSet) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
        decided = conn.execute(
            "SELECT t.parcel_key, t.scheme, t.colour, t.reason, t.event_marker, t.event_seq, t.event_main_date, "
            "t.event_products, e.main_date, e.evidence, t.event_start_product, t.event_end_product "
            "FROM cbm.traffic_light_trace t JOIN cbm.marker_event e ON e.marker_run_id = t.marker_run_id "
            "AND e.parcel_key = t.parcel_key AND e.marker = t.event_marker AND e.seq = t.event_seq "
            "ORDER BY 1, 2").fetchall()
        undecided = conn.execute("SELECT count(*), count(event_marker), count(event_products) "
                                 "FROM cbm.traffic_light_trace WHERE event_seq = 0").fetchone()
        n_decided = conn.execute("SELECT count(*) FROM cbm.traffic_light WHERE event_seq > 0").fetchone()[0]
        # a light written before migration 019 has no event_marker: the rule's marker is found again
        key, scheme = decided[0][:2]
        conn.execute("UPDATE cbm.traffic_light SET event_marker = NULL WHERE parcel_key = %s AND scheme = %s",
                     (key, scheme))
        again = conn.execute("SELECT cbm.rule_marker(rules_hash, scheme, rule_id) FROM cbm.traffic_light "
                             "WHERE parcel_key = %s AND scheme = %s", (key, scheme)).fetchone()[0]
    assert len(decided) == n_decided > 0  # every light decided by an event finds that event
    assert {(colour, reason, marker) for _, scheme, colour, reason, marker, *_ in decided
            if scheme == "grassland_mowing"} == {("green", "EVENT_FOUND", "mowing")}
    for *_, seq, main, products, event_main, evidence, start_product, end_product in decided:
        assert seq > 0 and main == event_main and products == evidence and products  # the images of that event
        assert start_product in products and end_product in products
    assert undecided[0] > 0 and undecided[1:] == (0, 0)  # NO_DATA, GAP, ...: no event, no images
    assert again == decided[0][4]


def test_empty_and_all_cloudy_series_give_no_data(db_url: str, seeded: SeededSet) -> None:
    empty, cloudy = _keys_of_crop(db_url, "9120")[:2]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM cbm.parcel_obs WHERE parcel_key = %s", (empty,))
        conn.execute("DELETE FROM cbm.parcel_class_counts WHERE parcel_key = %s", (empty,))
        conn.execute("UPDATE cbm.parcel_class_counts SET counts = '{0,0,0,0,0,0,0,0,0,100,0,0}' "
                     "WHERE parcel_key = %s", (cloudy,))
        run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
        lights = conn.execute("SELECT parcel_key, scheme, colour, reason FROM cbm.traffic_light "
                              "WHERE parcel_key = ANY(%s) ORDER BY 1, 2", ([empty, cloudy],)).fetchall()
        lineage_rows = {row[0]: row[1:] for row in conn.execute(
            "SELECT parcel_key, n_used, cardinality(obs_used), n_rejected, cardinality(obs_rejected) "
            "FROM cbm.marker_parcel WHERE parcel_key = ANY(%s)", ([empty, cloudy],)).fetchall()}
        mowings = conn.execute("SELECT count(*) FROM cbm.marker_event WHERE parcel_key = ANY(%s) AND marker IN "
                               "('mowing', 'bare_soil', 'harvest')", ([empty, cloudy],)).fetchone()[0]
    assert [(k, s, c) for k, s, c, _ in lights] == [
        (empty, "grassland_mowing", "yellow"), (empty, "permanent_grassland", "yellow"),
        (cloudy, "grassland_mowing", "yellow"), (cloudy, "permanent_grassland", "yellow")]
    assert {reason for *_, reason in lights} == {"NO_DATA"}
    assert mowings == 0  # no event is made up from clouds or from nothing
    assert lineage_rows[empty] == (0, 0, 0, 0)
    n_used, n_read_used, n_rejected, n_read_rejected = lineage_rows[cloudy]
    assert n_used == 0 and n_rejected == n_read_rejected == 49  # every S2 image rejected
    assert n_read_used == 41  # the Sentinel-1 images were still read (and recorded)


def test_invalid_rules_or_scheme_write_nothing(db_url: str, seeded: SeededSet, tmp_path: Path) -> None:
    bad = tmp_path / "bad_rules.yaml"
    bad.write_text("version: 1\nschemes:\n  s:\n    rules:\n      - {id: X, marker: grazing, require: present, "
                   "window: {start: '06-01', end: '08-31'}}\n")
    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises(ConfigError, match="bad_rules.yaml"):
            run_parcel_set(conn, CLI, aoi="mk", year=2018, rules_path=bad)
        with pytest.raises(ConfigError, match="no_such_scheme"):
            run_parcel_set(conn, CLI, aoi="mk", year=2018, scheme="no_such_scheme")
    rows = _rows(db_url)
    assert rows["events"] == rows["lights"] == rows["runs"] == []


def test_one_scheme_keeps_the_others_traceable(db_url: str, seeded: SeededSet) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
        second = run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True, scheme="grassland_mowing")
        by_scheme = dict(conn.execute("SELECT scheme, array_agg(DISTINCT marker_run_ids[1]) FROM cbm.traffic_light "
                                      "GROUP BY 1").fetchall())
        untraced = conn.execute("SELECT count(*) FROM cbm.traffic_light_trace WHERE obs_used IS NULL").fetchone()[0]
        old_events = conn.execute("SELECT count(*) FROM cbm.marker_event WHERE marker_run_id = %s",
                                  (first.marker_run_id,)).fetchone()[0]
    assert by_scheme["grassland_mowing"] == [second.marker_run_id]
    assert by_scheme["permanent_grassland"] == by_scheme["arable_harvest"] == [first.marker_run_id]
    assert untraced == 0 and old_events > 0


def test_export_gpkg_and_csv_and_summary(db_url: str, seeded: SeededSet, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        outcome = run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
        n_gpkg = export_lights(conn, aoi="mk", year=2018, out=tmp_path / "lights.gpkg")
        n_csv = export_lights(conn, aoi="mk", year=2018, out=tmp_path / "lights.csv", scheme="grassland_mowing")
        summary = lights_summary(conn, aoi="mk", year=2018)
        with pytest.raises(BadInputError, match="lights.txt"):
            export_lights(conn, aoi="mk", year=2018, out=tmp_path / "lights.txt")
    info = pyogrio.read_info(tmp_path / "lights.gpkg")
    assert n_gpkg == outcome.lights == info["features"] and info["crs"] == "EPSG:4326"
    assert info["geometry_type"] == "MultiPolygon"
    lines = (tmp_path / "lights.csv").read_text().splitlines()
    assert lines[0].startswith("light_id,parcel_id,crop_code,scheme,colour,reason,rule_id")
    assert len(lines) - 1 == n_csv == sum(sum(r.values()) for r in summary["grassland_mowing"].values())
    # each green mowing light carries the date of the mowing that decided it (a label in QGIS); red ones none
    rows = list(csv.DictReader(lines))
    assert list(rows[0])[-2:] == ["event_marker", "event_date"]  # appended
    decided = {(r["colour"], r["event_marker"], bool(r["event_date"])) for r in rows}
    assert ("green", "mowing", True) in decided and all(
        marker == "" and not has_date for colour, marker, has_date in decided if colour != "green")
    _, _, _, fields = pyogrio.raw.read(tmp_path / "lights.gpkg", columns=["event_marker", "event_date"])
    dates = [d for marker, d in zip(*fields, strict=True) if marker == "mowing"]
    assert dates and all(re.fullmatch(r"2018-\d\d-\d\d", d) for d in dates)
    assert sum(sum(sum(r.values()) for r in colours.values()) for colours in summary.values()) == outcome.lights


def test_database_series_equals_the_cores_own_grouping(db_url: str, seeded: SeededSet) -> None:
    """The reader's direct SeriesTable is exactly what SeriesTable.from_arrays makes of the same rows."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        products = db_read.read_products(conn, seeded.parcel_set_id)
        got = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id, products=products,
                                         parcel_keys=np.arange(1, N_PARCELS + 1, dtype=np.int32)).series
    shuffled = np.random.default_rng(1).permutation(got.n_rows)
    reference = SeriesTable.from_arrays(
        parcel_id=got.parcel[shuffled], source=got.source[shuffled], band=got.band[shuffled],
        obs_day=got.obs_day[shuffled], mean=got.mean[shuffled], orbit=got.orbit[shuffled],
        scl_bad_share=got.scl_bad_share[shuffled], product_id=got.product_id[shuffled], std=got.std[shuffled])
    for name in ("offsets", "parcel", "source", "band", "obs_day", "mean", "orbit", "scl_bad_share", "product_id",
                 "std"):
        np.testing.assert_array_equal(getattr(got, name), getattr(reference, name), err_msg=name)
    assert got.n_parcels == N_PARCELS and set(np.unique(got.band).tolist()) == {0, 2, 6, 8, 10, 11}
    # the red band's spread is read (the seed stores 0.01 for every band), the other bands' is not
    red = got.band == BAND_CODE["B04"]
    np.testing.assert_allclose(got.std[red], 0.01, rtol=1e-6)
    assert np.isnan(got.std[~red]).all()


def test_bands_named_as_other_tools_name_them_are_read(db_url: str, seeded: SeededSet) -> None:
    """Images extracted from files whose band descriptions say B2, red or nir (Earth Engine, STAC asset keys)."""
    keys = np.arange(1, N_PARCELS + 1, dtype=np.int32)
    with psycopg.connect(db_url, autocommit=True) as conn:
        products = db_read.read_products(conn, seeded.parcel_set_id)
        before = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id, products=products,
                                            parcel_keys=keys).series
        updated = conn.execute("UPDATE cbm.extraction SET bands = %s WHERE bands = %s",
                               (["B2", "red", "nir", "swir16"], ["B02", "B04", "B08", "B11"])).rowcount
        assert updated == sum(p.source == "s2" for p in products) > 0
        renamed = db_read.read_products(conn, seeded.parcel_set_id)
        after = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id, products=renamed,
                                           parcel_keys=keys).series
    assert {p.bands for p in renamed if p.source == "s2"} == {("B02", "B04", "B08", "B11")}
    for name in ("offsets", "band", "obs_day", "mean", "std", "scl_bad_share"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)


def test_the_narrow_nir_and_a_files_ndvi_stand_in_as_the_file_reader_takes_them(db_url: str,
                                                                               seeded: SeededSet) -> None:
    """An image extracted at 20 or 60 m has B8A but no B08; an NDVI-only image has neither red nor NIR."""
    keys = np.arange(1, N_PARCELS + 1, dtype=np.int32)
    with psycopg.connect(db_url, autocommit=True) as conn:
        products = db_read.read_products(conn, seeded.parcel_set_id)
        narrow, index_only, both, index_beside = [p.product_id for p in products if p.source == "s2"][3:7]
        before = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id, products=products,
                                            parcel_keys=keys).series
        conn.execute("UPDATE cbm.extraction SET bands = array_replace(bands, 'B08', 'B8A') WHERE product_id = %s",
                     (narrow,))
        conn.execute("UPDATE cbm.extraction SET bands = array_replace(array_replace(bands, 'B04', 'NDVI'), 'B08', "
                     "'b8') WHERE product_id = %s", (index_only,))
        conn.execute("UPDATE cbm.extraction SET bands = array_replace(bands, 'B11', 'B8A') WHERE product_id = %s",
                     (both,))
        conn.execute("UPDATE cbm.extraction SET bands = array_replace(bands, 'B11', 'NDVI') WHERE product_id = %s",
                     (index_beside,))
        after = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id,
                                           products=db_read.read_products(conn, seeded.parcel_set_id),
                                           parcel_keys=keys).series
    for product, band, was in ((narrow, "B8A", "B08"), (index_only, "NDVI", "B04")):
        got, old = after.product_id == product, before.product_id == product
        assert set(after.band[got].tolist()) >= {BAND_CODE[band]} and BAND_CODE[was] not in after.band[got]
        np.testing.assert_array_equal(after.mean[got & (after.band == BAND_CODE[band])],
                                      before.mean[old & (before.band == BAND_CODE[was])])
    assert BAND_CODE["B8A"] not in after.band[after.product_id == both]  # read only where B08 is missing
    # an image's own NDVI is read beside its red and NIR (the markers prefer it: data.file_ndvi, version 13)
    assert {BAND_CODE[b] for b in ("B04", "B08", "NDVI")} <= set(after.band[after.product_id == index_beside].tolist())


def test_the_read_raises_work_mem_for_its_transaction_only(db_url: str, seeded: SeededSet) -> None:
    """The images' arrays are aggregated in memory, not spilled to disk: work_mem up for the read's transaction."""
    keys = np.arange(1, N_PARCELS + 1, dtype=np.int32)
    with psycopg.connect(db_url, autocommit=True) as conn:
        products = db_read.read_products(conn, seeded.parcel_set_id)
        before = conn.execute("SHOW work_mem").fetchone()
        for session, during in ((None, db_read.READ_WORK_MEM), ("1GB", "1GB")):  # raised, never lowered
            if session:
                conn.execute("SET work_mem = '1GB'")
            with conn.transaction():
                db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id, products=products,
                                           parcel_keys=keys)
                assert conn.execute("SHOW work_mem").fetchone() == (during,)
            assert conn.execute("SHOW work_mem").fetchone() == (session or before[0],)  # type: ignore[index]
    assert before != (db_read.READ_WORK_MEM,)


def test_one_overpass_in_two_tiles_is_one_observation(db_url: str, seeded: SeededSet) -> None:
    """Two tiles of one datatake, dated 17 s apart (STAC dates each tile): a parcel in both is seen once."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = add_s2_image(conn, aoi="mk", year=2018, when=datetime(2018, 11, 3, 10, 30, tzinfo=UTC),
                             parcel_keys=np.array([3, 5], np.int32))
        second = add_s2_image(conn, aoi="mk", year=2018, when=datetime(2018, 11, 3, 10, 30, 17, tzinfo=UTC),
                              parcel_keys=np.array([5, 8], np.int32))
        read = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id,
                                          products=db_read.read_products(conn, seeded.parcel_set_id),
                                          parcel_keys=np.array([3, 5, 8], np.int32))
    series, overpass = read.series, (datetime(2018, 11, 3, 10, 30, tzinfo=UTC).timestamp()) / 86_400
    for index, key in enumerate((3, 5, 8)):
        rows = slice(series.offsets[index], series.offsets[index + 1])
        days, products = series.obs_day[rows], series.product_id[rows]
        on_the_day = np.floor(days) == np.floor(overpass)
        assert set(days[on_the_day].tolist()) == {overpass}, key  # one observation, at the overpass's first time
        expected = {3: {first}, 5: {first}, 8: {second}}[key]  # parcel 5: the first tile's values
        assert set(products[on_the_day].tolist()) == expected, key
        assert len(products[on_the_day]) == len(set(series.band[rows][on_the_day].tolist()))  # one row per band
    # the lineage still names every image read: both tiles for parcel 5
    read_by_5 = {int(p) for k, p in zip(read.obs_parcel, read.obs_product, strict=True) if read.parcel_keys[k] == 5}
    assert {first, second} <= read_by_5
    # runs of parameters before version 8 (data.overpass_seconds neutral: 0) read both tiles, as they ran
    with psycopg.connect(db_url, autocommit=True) as conn:
        old = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id,
                                         products=db_read.read_products(conn, seeded.parcel_set_id),
                                         parcel_keys=np.array([5], np.int32),
                                         overpass_seconds=v7_params().get("data", "overpass_seconds")).series
    assert len(set(old.obs_day[np.floor(old.obs_day) == np.floor(overpass)].tolist())) == 2
    assert load_params().get("data", "overpass_seconds") == OVERPASS_SECONDS  # the file reader's rule


def v7_params() -> MarkerParams:
    """The shipped parameters without the keys of version 8, as a run of version 7 recorded them."""
    return recorded_params(7, without=[("data", "overpass_seconds")])


def test_a_connection_lost_mid_run_writes_nothing_and_the_rerun_completes(
        db_url: str, seeded: SeededSet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection is killed while the run writes its second batch: the error says so, no row is half
    written, the lost run is closed as abandoned, and the next incremental run computes every parcel."""
    writes = []
    write_batch = db_write.write_batch

    def write_then_lose_the_connection(cur: psycopg.Cursor[Any], **kwargs: Any) -> Any:
        writes.append(kwargs["marker_run_id"])
        if len(writes) == 2:  # the first batch is written (uncommitted); the server drops the session now
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (cur.connection.info.backend_pid,))
        return write_batch(cur, **kwargs)

    monkeypatch.setattr(db_write, "write_batch", write_then_lose_the_connection)
    with pytest.raises(TransientError, match="lost the connection to PostGIS: terminating connection due to "
                                             "administrator command"):
        with db.connect(db_url, autocommit=True) as conn:
            run_parcel_set(conn, CLI, aoi="mk", year=2018, batch_parcels=N_PARCELS // 4)
    assert len(writes) == 2
    assert _rows(db_url) == {"events": [], "lineage": [], "lights": [], "runs": []}
    monkeypatch.undo()

    with db.connect(db_url, autocommit=True) as conn:
        again = run_parcel_set(conn, CLI, aoi="mk", year=2018, batch_parcels=N_PARCELS // 4)
        rows = _rows(db_url)
        runs = conn.execute("SELECT status, error FROM cbm.pipeline_run ORDER BY pipeline_run_id").fetchall()
        full = run_parcel_set(conn, CLI, aoi="mk", year=2018, full=True)
    assert again.parcels == full.parcels == N_PARCELS and again.lights == full.lights > 0
    assert _rows(db_url) == rows  # the incremental rerun left what a full run gives
    assert runs[0][0] == "abandoned" and "ended without closing the run" in runs[0][1]
    assert runs[1] == ("success", None)


def test_lights_are_written_as_they_were_decided(db_url: str, seeded: SeededSet) -> None:
    """The lights' own binary COPY encoder: texts of any script, a gap of NaN or infinity, NULL where none."""
    rules = load_rules(None)
    lights = [evaluate.TrafficLight("3", "grassland_mowing", "green", "EVENT_FOUND", "GM-MOW-1", 2018, 2, 11, 17.5),
              evaluate.TrafficLight("4", "grassland_mowing", "yellow", "NO_DATA ünïcode ÉTÉ", "GM-MOW-1", 2018, 0, 0,
                                    float("nan")),
              evaluate.TrafficLight("5", "permanent_grassland", "green", "NO_EVENT", "PG-NOPLOUGH-1", 2018, 0, 30,
                                    float("inf"))]
    with psycopg.connect(db_url) as conn:
        with conn.cursor() as cur:
            run_id = db_write.start_marker_run(cur, parcel_set_id=seeded.parcel_set_id, params=load_params(None),
                                               code_version="test", use_s1=True, scope="full", pipeline_run_id=None)
            db_write.record_rules(cur, rules, {"test": True})
            for pipeline_run_id in (None, 2**40):
                cur.execute("DELETE FROM cbm.traffic_light")
                if pipeline_run_id is not None:
                    cur.execute("INSERT INTO cbm.pipeline_run (pipeline_run_id, step, code_version) "
                                "OVERRIDING SYSTEM VALUE VALUES (%s, 'markers', 'test')", (pipeline_run_id,))
                assert db_write._copy_lights(cur, parcel_set_id=seeded.parcel_set_id, marker_run_id=run_id,
                                             pipeline_run_id=pipeline_run_id, rules=rules, lights=lights) == 3
                rows = cur.execute(
                    "SELECT parcel_key, scheme, colour, reason, marker_run_ids, pipeline_run_id, rule_id, "
                    "rules_version, rules_hash, season, event_seq, n_clear_obs, longest_gap_days::text, event_marker "
                    "FROM cbm.traffic_light ORDER BY parcel_key").fetchall()
                assert rows == [
                    (3, "grassland_mowing", "green", "EVENT_FOUND", [run_id], pipeline_run_id, "GM-MOW-1",
                     rules.version, rules.hash, 2018, 2, 11, "17.5", "mowing"),
                    (4, "grassland_mowing", "yellow", "NO_DATA ünïcode ÉTÉ", [run_id], pipeline_run_id, "GM-MOW-1",
                     rules.version, rules.hash, 2018, 0, 0, "NaN", None),
                    (5, "permanent_grassland", "green", "NO_EVENT", [run_id], pipeline_run_id, "PG-NOPLOUGH-1",
                     rules.version, rules.hash, 2018, 0, 30, "Infinity", None)]
