"""cbm_s1_card then cbm_extract under dag.test(), with the sarsen backend, on the real Rome GRD geometry.

A raw GRD in the catalogue (status new) becomes a CARD-BS COG in the local object store (ready),
which cbm_extract reduces to per-parcel gamma0: parcels north of the DN step (earlier lines,
DN 300) get a quarter of the power of those south of it (DN 600).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import airflow_testenv
import numpy as np
import psycopg
import pytest

CFG = airflow_testenv.activate()  # before any airflow import

import pyogrio  # noqa: E402
import shapely  # noqa: E402
from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from card_data import rome_grd, rome_product  # noqa: E402
from conftest import shared_data  # noqa: E402
from pyproj import Transformer  # noqa: E402

from cbm_tasks.catalogue import registry  # noqa: E402
from cbm_tasks.parcels import sets as parcels  # noqa: E402

# parcel id -> centre (lon, lat): two north and two south of the test area's middle line
PARCELS = {"N1": (12.497, 42.006), "N2": (12.503, 42.006), "S1": (12.497, 41.994), "S2": (12.503, 41.994)}


@pytest.fixture(scope="module")
def airflow_db() -> str:
    return airflow_testenv.metadata_db()


def write_parcels(path: Path) -> Path:
    """150 m square parcels (EPSG:32633) around the PARCELS centres."""
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    geoms = []
    for lon, lat in PARCELS.values():
        x, y = to_utm.transform(lon, lat)
        geoms.append(shapely.box(x - 75, y - 75, x + 75, y + 75))
    pyogrio.raw.write(path, shapely.to_wkb(np.array(geoms, dtype=object)),
                      [np.array(list(PARCELS), dtype=object), np.array(["451"] * len(PARCELS), dtype=object),
                       np.array(["meadow"] * len(PARCELS), dtype=object)],
                      ["parcel_id", "crop_code", "crop_name"], driver="GPKG", geometry_type="Polygon", crs="EPSG:32633",
                      layer="parcels")
    return path


def _dags() -> DagBag:
    bag = DagBag(dag_folder=str(CFG.project / "dags"))
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        for task in dag.tasks:
            task.retry_delay = timedelta(0)
    return bag


def test_raw_grd_to_ready_card_to_parcel_statistics(airflow_db: str, tmp_path: Path, db_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rome = rome_grd(tmp_path / "eodata", lon=12.5, lat=42.0, half_size_deg=0.02, dn_first={"VV": 300, "VH": 100},
                    dn_second={"VV": 600, "VH": 200})
    product = rome_product(rome.safe)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcels.import_parcels(conn, write_parcels(tmp_path / "parcels.gpkg"), aoi="rome", year=2021)
        registry.register(conn, [product], aoi="rome")
    monkeypatch.setenv("AIRFLOW_CONN_CBM_POSTGIS", airflow_testenv.postgis_connection(db_url))
    monkeypatch.setenv("AIRFLOW_CONN_CBM_STORE", airflow_testenv.store_connection(tmp_path / "store"))
    monkeypatch.setenv("AIRFLOW_VAR_CBM_CARD", json.dumps({
        "backend": "sarsen", "dem_path": str(shared_data("s1_sarsen_rome", "Rome-30m-DEM.tif")),
        "geoid_path": "/usr/share/proj/egm96_15.gtx", "margin_m": 100.0}))
    dags = _dags()

    run = dags.dags["cbm_s1_card"].test(run_conf={"aoi": "rome"})

    assert run.state == "success"
    assert run.get_task_instance("publish").state == "success"  # the asset event that starts cbm_extract
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT p.uid, p.catalogue, s.status, p.location FROM cbm.product p "
                            "JOIN cbm.product_status s USING (product_id) ORDER BY p.product_id").fetchall()
        lineage = conn.execute("SELECT task_id, try_number, status, params->>'backend', params->>'sarsen' "
                               "FROM cbm.pipeline_run WHERE step = 'card'").fetchall()
    assert [(uid, catalogue, status) for uid, catalogue, status, _ in rows] == [
        (product.uid, "cdse-odata", "processed"), (f"CARD-BS:rome:{product.name}", "card", "ready")]
    assert (tmp_path / "store" / rows[1][3]).is_file()
    assert lineage == [("make", 1, "success", "sarsen", "0.9.6")]

    # planning again finds nothing new: no second product, no second file
    run = dags.dags["cbm_s1_card"].test(run_conf={"aoi": "rome"})
    assert run.state == "success" and run.get_task_instance("publish").state == "skipped"

    run = dags.dags["cbm_extract"].test(run_conf={"aoi": "rome"})
    assert run.state == "success"
    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT s.status FROM cbm.product_status s JOIN cbm.product p USING (product_id) "
                              "WHERE p.catalogue = 'card'").fetchone()
        # stats holds 8 values per band of extraction.bands (count, mean, ...): VV's mean
        stats = dict(conn.execute(
            "SELECT q.parcel_id, o.stats[(array_position(e.bands, 'VV') - 1) * 8 + 2] FROM cbm.parcel_obs o "
            "JOIN cbm.parcel q USING (parcel_set_id, parcel_key) "
            "JOIN cbm.extraction e USING (parcel_set_id, product_id)").fetchall())
    assert status == ("extracted",)
    assert set(stats) == set(PARCELS)
    north, south = (np.mean([stats[p] for p in PARCELS if p.startswith(side)]) for side in "NS")
    assert 0.2 < north < 0.8  # gamma0 of DN 300 with a betaNought of 474: beta0 0.40, times tan(incidence)
    assert south / north == pytest.approx(4.0, rel=0.25)
