"""Every marker event names the images that prove it: events.csv ``products`` and cbm.marker_event products."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from markers_series import HEADER, grass_rows, write_rows
from psycopg import sql

from cbm_tasks import lineage
from cbm_tasks.cli import main
from cbm_tasks.demo.series_seed import seed_parcel_set
from cbm_tasks.markers.engine import PRODUCT_ROLES, evidence_lists, run_markers
from cbm_tasks.markers.event_copy import COPY_COLUMNS, events_copy_payload
from cbm_tasks.markers.params import load_params
from cbm_tasks.markers.reader import SeriesFileError, read_series
from cbm_tasks.markers.series import BAND_CODE, SOURCE_CODE, SeriesTable
from cbm_tasks.pipeline.markers import run_parcel_set

S2_BASE, COH_BASE = 100_000, 200_000  # product id = base + day of year: the date can be read off the id


def _doy(text: str) -> int:
    return (date.fromisoformat(text) - date(2021, 1, 1)).days + 1


def _with_products(rows: list[list[object]]) -> list[list[object]]:
    """Add a product_id to every row: one image per sensor and date."""
    return [[*row, (COH_BASE if row[2] == "c6" else S2_BASE) + _doy(str(row[1]))] for row in rows]


def _events(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_file_events_name_the_bracketing_images(tmp_path: Path) -> None:
    rows = grass_rows("cut", [190], coherence=True) + grass_rows("plain", [150], seed=2)
    series = write_rows(tmp_path / "series.csv", _with_products(rows), [*HEADER, "product_id"])
    for out in ("a", "b"):
        assert main(["markers", "run", "--timeseries", str(series), "--out", str(tmp_path / out)]) == 0
    assert (tmp_path / "a" / "events.csv").read_bytes() == (tmp_path / "b" / "events.csv").read_bytes()
    events = _events(tmp_path / "a" / "events.csv")
    assert list(events[0])[-1] == "products"
    mowing = {e["parcel_id"]: e for e in events if e["marker"] == "mowing"}
    # S2 every 5 days from doy 60: the last high observation is doy 185, the first low doy 190;
    # coherence (every 6 days from doy 62) rose across the cut: the first pair after it (doy 194) and the
    # last pair before it (doy 176, the tall-grass side of the rise) are named
    assert mowing["cut"]["products"] == f"{S2_BASE + 185};{S2_BASE + 190};{COH_BASE + 194};{COH_BASE + 176}"
    assert "coh" in mowing["cut"]["sources"]
    assert mowing["plain"]["products"] == f"{S2_BASE + 145};{S2_BASE + 150}"
    for event in events:  # every event: its first image is dated start_date, its S2 images lie in the event
        ids = [int(i) for i in event["products"].split(";")]
        s2_days = [i - S2_BASE for i in ids if i < COH_BASE]
        assert s2_days[0] == _doy(event["start_date"]), event
        assert _doy(event["end_date"]) in s2_days, event
        assert all(_doy(event["start_date"]) <= d <= _doy(event["end_date"]) for d in s2_days), event
    vegetation = next(e for e in events if e["marker"] == "vegetation" and e["parcel_id"] == "plain")
    assert vegetation["products"].split(";")[1] == str(S2_BASE + _doy(vegetation["main_date"]))  # the peak


def test_file_without_product_ids_gives_empty_products(tmp_path: Path) -> None:
    rows = _with_products(grass_rows("cut", [190]))
    for row in rows:
        row[-1] = ""  # the column exists but names no image
    series = write_rows(tmp_path / "series.csv", rows, [*HEADER, "product_id"])
    result = run_markers(read_series(series), load_params(None))
    assert result.n_events >= 3 and (result.products == -1).all()
    assert {row.products for row in result.rows()} == {""}


def test_fractional_product_id_is_named(tmp_path: Path) -> None:
    rows = _with_products(grass_rows("cut", [190]))
    rows[3][-1] = 12.5
    series = write_rows(tmp_path / "series.csv", rows, [*HEADER, "product_id"])
    with pytest.raises(SeriesFileError, match=r"series.csv: line 5, column 'product_id'.*12.5"):
        read_series(series)


def test_coherence_pair_that_dates_a_cut_in_a_long_gap_is_named(tmp_path: Path) -> None:
    """A cut inside a 40-day S2 gap is dated by the first coherence pair on short grass: that pair is named."""
    refine = tmp_path / "params.yaml"
    refine.write_text("mowing:\n  coherence_refine_gap_days: 20\n")  # off by default (marker_params.yaml)
    s2_days = np.array([100, 105, 110, 115, 120, 125, 130, 170, 175, 180, 185, 190, 195, 200], np.float64)
    ndvi = np.where(s2_days < 150, 0.85, np.minimum(0.85, 0.35 + 0.004 * (s2_days - 150)))
    nir = 0.3
    red = nir * (1 - ndvi) / (1 + ndvi)
    coh_days = np.arange(92.0, 200.0, 6.0)
    coh = np.where((coh_days > 150) & (coh_days < 175), 0.6, 0.3)
    parcel = np.zeros(2 * len(s2_days) + len(coh_days), np.int64)
    source = np.r_[np.full(2 * len(s2_days), SOURCE_CODE["s2"]), np.full(len(coh_days), SOURCE_CODE["c6"])]
    band = np.r_[np.full(len(s2_days), BAND_CODE["B04"]), np.full(len(s2_days), BAND_CODE["B08"]),
                 np.full(len(coh_days), BAND_CODE["VV"])]
    day = np.r_[s2_days, s2_days, coh_days] + 18_628.0  # 2021-01-01 is day 18,628
    mean = np.r_[red, np.full(len(s2_days), nir), coh]
    product = np.r_[S2_BASE + s2_days, S2_BASE + s2_days, COH_BASE + coh_days].astype(np.int64)
    clear = np.r_[np.full(2 * len(s2_days), 0.99), np.full(len(coh_days), 1.0)]
    series = SeriesTable.from_arrays(parcel_id=parcel, source=source, band=band, obs_day=day, mean=mean,
                                     clear_fraction=clear, product_id=product)
    result = run_markers(series, load_params(refine))
    mowing = np.flatnonzero(result.marker == 0)
    assert len(mowing) == 1
    roles = dict(zip(PRODUCT_ROLES, result.products[mowing[0]].tolist(), strict=True))
    assert roles["start"] == S2_BASE + 130 and roles["end"] == S2_BASE + 170 and roles["main"] == -1
    assert roles["s1_date"] == COH_BASE + 152  # the first pair at the short-grass level inside the gap
    main_doy = int(np.floor(result.main[mowing[0]] - 18_628.0))
    assert 130 <= main_doy <= 152
    assert evidence_lists(result.products[mowing])[0][:3] == [S2_BASE + 130, S2_BASE + 170, COH_BASE + 152]


def test_database_events_name_their_images(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        seed_parcel_set(conn, tmp_path, aoi="ev", year=2018, n_parcels=20, seed=5)
        run_parcel_set(conn, lineage.RunContext(step="markers"), aoi="ev", year=2018, full=True)
        rows = conn.execute(
            "SELECT e.marker, e.event_start, e.main_date, e.event_end, e.start_product, e.main_product, "
            "e.end_product, e.evidence, m.obs_used, "
            "(SELECT p.acquired_at::date FROM cbm.product p WHERE p.product_id = e.start_product), "
            "(SELECT p.acquired_at::date FROM cbm.product p WHERE p.product_id = e.main_product), "
            "(SELECT p.acquired_at::date FROM cbm.product p WHERE p.product_id = e.end_product) "
            "FROM cbm.marker_event e JOIN cbm.marker_parcel m USING (marker_run_id, parcel_key) "
            "ORDER BY e.parcel_key, e.marker, e.seq").fetchall()
    named = [row for row in rows if row[4] is not None]
    unnamed = [row for row in rows if row[4] is None]
    assert all(row[0] == "data_sufficiency" and row[5:8] == (None, None, []) for row in unnamed)
    assert {row[0] for row in named} >= {"mowing", "vegetation", "data_sufficiency"}
    assert len(named) >= len(rows) - 20  # only a season without any clear observation names no image
    for marker, start, main_date, end, start_id, main_id, end_id, evidence, used, start_on, main_on, end_on in named:
        assert (start_on, end_on) == (start, end), marker  # the images are those the dates come from
        assert main_id is None or main_on == main_date, marker
        assert evidence[0] == start_id and end_id in evidence and len(set(evidence)) == len(evidence)
        assert set(evidence) <= set(used), marker  # only images the run used (clear ones)
    mowing = [row for row in named if row[0] == "mowing"]
    assert mowing and all(row[5] is None and row[4] != row[6] for row in mowing)
    assert all(timedelta(0) < row[3] - row[1] for row in mowing)


def test_events_copy_stream_of_no_event_is_valid(db_url: str) -> None:
    empty = run_markers(SeriesTable.from_arrays(parcel_id=np.zeros(0, np.int64), source=np.zeros(0, np.int8),
                                                band=np.zeros(0, np.int8), obs_day=np.zeros(0), mean=np.zeros(0)),
                        load_params(None))
    assert empty.n_events == 0
    query = sql.SQL("COPY cbm.marker_event ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)))
    with psycopg.connect(db_url) as conn, conn.transaction(force_rollback=True), conn.cursor() as cur:
        with cur.copy(query) as copy:
            copy.write(events_copy_payload(1, np.zeros(0, np.int32), empty))
        assert cur.rowcount == 0
