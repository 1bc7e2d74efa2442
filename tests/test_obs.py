"""cbm_tasks.timeseries: binary COPY of one image's rows, replaced in one transaction, read back."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
import shapely
from test_extract_support import add_parcel_set, add_product, row_counts, wait_until_waiting_on_a_lock

from cbm_tasks.aoi import find_parcel_set
from cbm_tasks.errors import NotFoundError, TransientError
from cbm_tasks.timeseries import read
from cbm_tasks.timeseries import write as obs
from cbm_tasks.timeseries.export import export_time_series

T0 = datetime(2018, 4, 5, 10, 50, 31, tzinfo=UTC)


def _setup(conn: psycopg.Connection) -> tuple[int, int]:
    squares = [(f"P{i}", shapely.box(i * 100, 0, i * 100 + 50, 50)) for i in range(4)]
    set_id = add_parcel_set(conn, aoi="demo", year=2018, srid=32631, parcels=squares)
    product_id = add_product(conn, aoi="demo", name="S2A_TEST_20180405", location="/nowhere", acquired_at=T0)
    return set_id, product_id


def _image(keys: list[int], n_bands: int = 2, seed: int = 0) -> obs.ImageStats:
    rng = np.random.default_rng(seed)
    stats = rng.normal(size=(len(keys), 8 * n_bands)).astype(np.float32)
    stats[:, 0::8] = rng.integers(1, 100, size=(len(keys), n_bands))
    return obs.ImageStats(tuple(f"B{i}" for i in range(n_bands)), np.asarray(keys, np.int32), stats)


def test_binary_copy_round_trips_every_float32_value(conn: psycopg.Connection) -> None:
    set_id, product_id = _setup(conn)
    image = _image([1, 2, 4])
    image.stats[0, 1] = np.nan  # a band without valid pixels has NaN statistics
    image.stats[1, 2] = np.float32(1e-38)
    counts = obs.ClassCountRows("SCL", np.array([2, 4], np.int32), np.arange(24, dtype=np.int32).reshape(2, 12))
    image = obs.ImageStats(image.bands, image.parcel_keys, image.stats, (counts,))
    n_rows = obs.replace_image_stats(conn, set_id, product_id, image, parcel_set_version=1,
                                     params={"engine": "x"}, seconds=1.5, pipeline_run_id=None)
    assert n_rows == 3 * 2 + 2
    rows = conn.execute("SELECT parcel_key, stats FROM cbm.parcel_obs ORDER BY parcel_key").fetchall()
    assert [r[0] for r in rows] == [1, 2, 4]
    got = np.array([r[1] for r in rows], np.float32)
    np.testing.assert_array_equal(got, image.stats)  # NaN == NaN for assert_array_equal
    classes = conn.execute("SELECT parcel_key, class_band, counts FROM cbm.parcel_class_counts "
                           "ORDER BY parcel_key").fetchall()
    assert classes == [(2, 1, list(range(12))), (4, 1, list(range(12, 24)))]
    extraction = conn.execute("SELECT bands, class_bands, n_parcels, n_rows, params, seconds, parcel_set_version "
                              "FROM cbm.extraction").fetchone()
    assert extraction == (["B0", "B1"], ["SCL"], 3, 8, {"engine": "x"}, 1.5, 1)


def test_replace_deletes_the_previous_rows_of_the_image(conn: psycopg.Connection) -> None:
    set_id, product_id = _setup(conn)
    for keys, seed in (([1, 2, 3, 4], 1), ([2, 3], 2), ([2, 3], 2)):
        obs.replace_image_stats(conn, set_id, product_id, _image(keys, seed=seed), parcel_set_version=1,
                                params={}, seconds=0.1)
    rows = conn.execute("SELECT parcel_key, stats FROM cbm.parcel_obs ORDER BY parcel_key").fetchall()
    assert [r[0] for r in rows] == [2, 3]
    np.testing.assert_array_equal(np.array([r[1] for r in rows], np.float32), _image([2, 3], seed=2).stats)
    assert row_counts(conn)["cbm.extraction"] == 1


def test_failed_copy_leaves_the_old_rows(conn: psycopg.Connection) -> None:
    set_id, product_id = _setup(conn)
    obs.replace_image_stats(conn, set_id, product_id, _image([1, 2]), parcel_set_version=1, params={}, seconds=0.1)
    before = row_counts(conn)
    duplicate_keys = _image([3, 3])  # violates the unique (parcel_key, product_id) index mid-COPY
    with pytest.raises(psycopg.errors.UniqueViolation):
        obs.replace_image_stats(conn, set_id, product_id, duplicate_keys, parcel_set_version=1, params={},
                                seconds=0.1)
    assert row_counts(conn) == before
    assert [r[0] for r in conn.execute("SELECT parcel_key FROM cbm.parcel_obs ORDER BY 1").fetchall()] == [1, 2]


def test_time_series_and_export_batches(conn: psycopg.Connection) -> None:
    set_id, product_id = _setup(conn)
    second = add_product(conn, aoi="demo", name="S2A_TEST_20180410", location="/nowhere",
                         acquired_at=datetime(2018, 4, 10, tzinfo=UTC))
    obs.replace_image_stats(conn, set_id, second, _image([2], seed=5), parcel_set_version=1, params={}, seconds=0)
    obs.replace_image_stats(conn, set_id, product_id, _image([2], seed=4), parcel_set_version=1, params={},
                            seconds=0)
    series = read.parcel_time_series(conn, aoi="demo", year=2018, parcel_id="P1")
    assert [(o.obs_time, o.band) for o in series] == [
        (T0, "B0"), (T0, "B1"), (datetime(2018, 4, 10, tzinfo=UTC), "B0"), (datetime(2018, 4, 10, tzinfo=UTC), "B1")
    ]
    expected = _image([2], seed=4).stats[0]
    assert series[1].count == int(expected[8]) and series[1].p75 == pytest.approx(float(expected[15]))
    assert read.parcel_time_series(conn, aoi="demo", year=2018, parcel_id="P1", bands=["B1"])[0].band == "B1"
    batches = list(read.iter_band_stats(conn, parcel_set_id=set_id, batch_rows=3))
    assert [len(b) for b in batches] == [3, 1]
    assert batches[0][0][:5] == ("P1", T0, product_id, "S2MSI2A", "B0")
    with pytest.raises(NotFoundError, match="parcel 'P9'"):
        read.parcel_time_series(conn, aoi="demo", year=2018, parcel_id="P9")
    with pytest.raises(NotFoundError, match="no parcel set for 2019; years with parcels: 2018"):
        find_parcel_set(conn, aoi="demo", year=2019)


def test_delete_image_stats(conn: psycopg.Connection) -> None:
    set_id, product_id = _setup(conn)
    obs.replace_image_stats(conn, set_id, product_id, _image([1]), parcel_set_version=1, params={}, seconds=0)
    obs.delete_image_stats(conn, set_id, product_id)
    counts = row_counts(conn)
    assert counts["cbm.parcel_obs"] == counts["cbm.extraction"] == 0


def test_concurrent_writers_of_one_image_take_turns(conn: psycopg.Connection, db_url: str) -> None:
    set_id, product_id = _setup(conn)
    errors: list[BaseException] = []
    with psycopg.connect(db_url) as other:
        with other.transaction():  # the first writer has written but not committed yet
            obs.replace_image_stats(other, set_id, product_id, _image([1, 2], seed=1), parcel_set_version=1,
                                    params={}, seconds=0)

            def second_writer() -> None:
                try:
                    obs.replace_image_stats(conn, set_id, product_id, _image([2, 3], seed=2),
                                            parcel_set_version=1, params={}, seconds=0)
                except BaseException as err:  # noqa: BLE001 - handed to the test thread
                    errors.append(err)

            thread = threading.Thread(target=second_writer)
            thread.start()
            wait_until_waiting_on_a_lock(db_url, conn.info.backend_pid)  # blocked by the first writer
            assert thread.is_alive() and errors == []
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    rows = conn.execute("SELECT parcel_key FROM cbm.parcel_obs ORDER BY 1").fetchall()
    assert rows == [(2,), (3,)]  # the second writer replaced the first one's rows


def test_lost_connection_is_transient(conn: psycopg.Connection, db_url: str) -> None:
    set_id, product_id = _setup(conn)
    pid = conn.info.backend_pid
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(TransientError, match=f"product {product_id} for parcel set {set_id}"):
        obs.replace_image_stats(conn, set_id, product_id, _image([1]), parcel_set_version=1, params={}, seconds=0)


def test_read_time_series_is_what_the_export_writes(conn: psycopg.Connection, tmp_path: Path) -> None:
    set_id, product_id = _setup(conn)
    counts = obs.ClassCountRows("SCL", np.array([1, 2], np.int32), np.array([[0, 3, 1], [2, 0, 0]], np.int32))
    image = obs.ImageStats(("B0", "B1"), np.array([1, 2], np.int32),
                           _image([1, 2], seed=7).stats, (counts,))
    obs.replace_image_stats(conn, set_id, product_id, image, parcel_set_version=1, params={}, seconds=0)
    series = read.read_time_series(conn, aoi="demo", year=2018)
    assert series.band_stats.schema == read.BAND_STATS_SCHEMA
    assert series.band_stats.num_rows == 4 and series.class_counts.num_rows == 3
    assert series.band_stats.column("parcel_id").to_pylist() == ["P0", "P0", "P1", "P1"]
    assert series.class_counts.column("count").to_pylist() == [3, 1, 2]
    out = export_time_series(conn, aoi="demo", year=2018, out=tmp_path / "series.parquet")
    assert pq.read_table(out.path).equals(series.band_stats)
    assert pq.read_table(out.classes_path).equals(series.class_counts)
    with pytest.raises(NotFoundError, match="no parcel set for 2019"):
        read.read_time_series(conn, aoi="demo", year=2019)
