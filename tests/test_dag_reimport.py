"""cbm_extract under dag.test() completes a season after a re-import: the images come back in a mapped batch."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import airflow_testenv
import numpy as np
import psycopg
import pyogrio
import pytest
import shapely

CFG = airflow_testenv.activate()  # before any airflow import

from airflow.dag_processing.dagbag import DagBag  # noqa: E402

from cbm_tasks.catalogue.local import LocalCatalogue  # noqa: E402
from cbm_tasks.demo import data as demo_data  # noqa: E402
from cbm_tasks.parcels import sets as parcel  # noqa: E402
from cbm_tasks.pipeline.poll import poll_aoi  # noqa: E402


@pytest.fixture(scope="module")
def airflow_db() -> str:
    return airflow_testenv.metadata_db()


def _changed_register(source: Path, target: Path) -> tuple[int, int]:
    """Write *source* without its first 5 parcels and with the next 5 moved 20 m east; return (kept, moved)."""
    meta, _, wkb, fields = pyogrio.raw.read(source)
    geoms = shapely.from_wkb(wkb)
    geoms[5:10] = shapely.transform(geoms[5:10], lambda xy: xy + np.array([20.0, 0.0]))
    pyogrio.raw.write(target, shapely.to_wkb(geoms[5:]), [f[5:] for f in fields], meta["fields"].tolist(),
                      driver="GPKG", geometry_type=meta["geometry_type"], crs=meta["crs"], layer="parcels")
    return len(geoms) - 5, 5


def _complete(db_url: str) -> tuple[list[tuple[int, int]], int, int]:
    """(extraction version, set version) per image, obs rows, and rows of parcels no longer in the set."""
    with psycopg.connect(db_url) as conn:
        versions = conn.execute("SELECT e.parcel_set_version, s.version FROM cbm.extraction e "
                                "JOIN cbm.parcel_set s USING (parcel_set_id) ORDER BY e.product_id").fetchall()
        rows = conn.execute("SELECT count(*) FROM cbm.parcel_obs").fetchone()
        orphans = conn.execute("SELECT count(*) FROM cbm.parcel_obs o WHERE NOT EXISTS (SELECT 1 FROM cbm.parcel p "
                               "WHERE (p.parcel_set_id, p.parcel_key) = (o.parcel_set_id, o.parcel_key))").fetchone()
    assert rows is not None and orphans is not None
    return [(int(a), int(b)) for a, b in versions], int(rows[0]), int(orphans[0])


def test_extract_run_completes_the_season_after_a_reimport(airflow_db: str, tmp_path: Path, db_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=2)
    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", airflow_testenv.postgis_connection(db_url))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_STORE", airflow_testenv.store_connection(tmp_path))
    monkeypatch.setenv("AIRFLOW_VAR_CBM_CATALOGUE",
                       json.dumps({"demo": {"kind": "local", "root": str(layout.catalogue_root)}}))
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
        poll_aoi(conn, LocalCatalogue(layout.catalogue_root), aoi="demo", product_types=["S2MSI2A"],
                 start=datetime(2017, 8, 1, tzinfo=UTC), end=datetime(2018, 12, 1, tzinfo=UTC))
    dag = DagBag(dag_folder=str(CFG.project / "dags")).dags["cbm_extract"]
    assert dag.test(run_conf={"aoi": "demo"}).state == "success"
    before, _, _ = _complete(db_url)
    assert before and all(v == (1, 1) for v in before)

    changed = _changed_register(layout.parcels_file, tmp_path / "v2.gpkg")
    with psycopg.connect(db_url, autocommit=True) as conn:
        report = parcel.import_parcels(conn, tmp_path / "v2.gpkg", aoi="demo", year=2018)
    assert (report.version, report.n_imported, report.n_changed, report.n_removed) == (2, changed[0], 5, 5)

    run = dag.test(run_conf={"aoi": "demo"})  # no hand work: the next run takes the images again
    assert run.state == "success"
    (batch,) = [ti for ti in run.get_task_instances() if ti.task_id == "extract"]  # small images: one batch
    assert batch.state == "success" and batch.rendered_map_index.startswith(f"demo: {len(before)} images")
    after, n_rows, orphans = _complete(db_url)
    assert after == [(2, 2)] * len(before) and orphans == 0

    # the rows equal those of a fresh extraction of the new register
    with psycopg.connect(db_url, autocommit=True) as conn:
        completed = conn.execute("SELECT parcel_key, product_id, stats FROM cbm.parcel_obs "
                                 "ORDER BY 1, 2").fetchall()
        conn.execute("DELETE FROM cbm.extraction")
        conn.execute("DELETE FROM cbm.parcel_obs")
        conn.execute("DELETE FROM cbm.parcel_class_counts")
        conn.execute("UPDATE cbm.product_status SET status = 'ready'")
    assert dag.test(run_conf={"aoi": "demo"}).state == "success"
    with psycopg.connect(db_url) as conn:
        fresh = conn.execute("SELECT parcel_key, product_id, stats FROM cbm.parcel_obs ORDER BY 1, 2").fetchall()
    assert len(fresh) == n_rows == len(completed)
    for (key, product, stats), (key2, product2, stats2) in zip(completed, fresh, strict=True):
        assert (key, product) == (key2, product2)
        np.testing.assert_array_equal(np.asarray(stats, np.float32), np.asarray(stats2, np.float32))
