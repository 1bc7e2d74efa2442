"""Planning and making CARD products against a real PostGIS and object store (folder and S3/moto)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import rasterio
import shapely
from card_data import RomeGrd, rome_grd, rome_product
from conftest import shared_data
from s3_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, moto_server

from cbm_tasks import lineage
from cbm_tasks.card.backend import BackendConfig, CardOutput
from cbm_tasks.card.errors import DemCoverageError
from cbm_tasks.card.jobs import CardJob
from cbm_tasks.card.sarsen_backend import SarsenBackend
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import TransientError
from cbm_tasks.pipeline.card import claim_jobs, plan_aoi, process
from cbm_tasks.store import LocalStore, StoreConfig, open_store

AREA = shapely.box(12.49, 41.99, 12.51, 42.01).wkt
EAST_OF_DEM = shapely.box(12.70, 41.99, 12.72, 42.01).wkt
GEOID = "/usr/share/proj/egm96_15.gtx"
RUN = lineage.RunContext(step="card", dag_id="cbm_s1_card", run_id="test", task_id="make_card", map_index=0,
                         try_number=1)


@pytest.fixture(scope="module")
def rome(tmp_path_factory: pytest.TempPathFactory) -> RomeGrd:
    return rome_grd(tmp_path_factory.mktemp("rome"), lon=12.5, lat=42.0, half_size_deg=0.02,
                    dn_first={"VV": 300, "VH": 100}, dn_second={"VV": 600, "VH": 200})


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


def backend_cfg() -> BackendConfig:
    return BackendConfig(dem_path=str(shared_data("s1_sarsen_rome", "Rome-30m-DEM.tif")), geoid_path=GEOID)


def status(conn: psycopg.Connection, product_id: int) -> tuple[str, str | None, int]:
    row = conn.execute("SELECT status, last_error, attempts FROM cbm.product_status WHERE product_id = %s",
                       (product_id,)).fetchone()
    assert row is not None
    conn.commit()
    return row[0], row[1], row[2]


def plan_one(conn: psycopg.Connection, product: Product, area: str, aoi: str = "rome") -> int:
    registry.register(conn, [product], aoi=aoi)
    assert plan_aoi(conn, aoi=aoi, area_wkt=area, card_types=("CARD-BS",)).jobs_new == 1
    (product_id,) = claim_jobs(conn, aoi=aoi, worker="test")
    return product_id


def test_planning_registers_each_job_once(conn: psycopg.Connection, rome: RomeGrd) -> None:
    product = rome_product(rome.safe)
    registry.register(conn, [product], aoi="rome")
    first = plan_aoi(conn, aoi="rome", area_wkt=AREA)
    assert (first.raw_new, first.jobs_new) == (1, 1)  # a GRD: CARD-BS only, no SLC partner
    assert plan_aoi(conn, aoi="rome", area_wkt=AREA).raw_new == 0
    row = conn.execute(
        "SELECT p.uid, p.product_type, p.catalogue, p.location, p.derived_from = ARRAY[src.product_id], s.status "
        "FROM cbm.product p JOIN cbm.product_status s USING (product_id), cbm.product src "
        "WHERE p.catalogue = 'card' AND src.uid = %s", (product.uid,)).fetchone()
    assert row == (f"CARD-BS:rome:{product.name}", "CARD-BS", "card",
                   f"card/rome/CARD-BS/2021/CARD-BS_{product.name}.tif", True, "new")
    raw = conn.execute("SELECT s.status FROM cbm.product_status s JOIN cbm.product p USING (product_id) "
                       "WHERE p.uid = %s", (product.uid,)).fetchone()
    assert raw == ("processed",)
    # a raw product outside the AOI: processed, no job
    far = Product(**{**{f: getattr(product, f) for f in product.__slots__}, "uid": "far", "name": product.name + "X",
                     "footprint_wkt": shapely.box(0, 0, 1, 1).wkt})
    registry.register(conn, [far], aoi="rome")
    assert plan_aoi(conn, aoi="rome", area_wkt=AREA).jobs_new == 0
    assert claim_jobs(conn, aoi="rome", worker="a") != []
    assert claim_jobs(conn, aoi="rome", worker="b") == []  # claimed once


def test_sarsen_card_from_s3_is_stored_and_ready(conn: psycopg.Connection, rome: RomeGrd, s3: MotoServer,
                                                tmp_path: Path) -> None:
    bucket = f"cbm-card-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    cfg = StoreConfig(kind="s3", bucket=bucket, root="cbm", endpoint_url=s3.endpoint_url, access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY, region=REGION, scratch_dir=str(tmp_path / "scratch"))
    store = open_store(cfg)
    for file in rome.safe.rglob("*"):  # the SAFE as the catalogue's object store holds it
        if file.is_file():
            store.upload(file, f"s3://{bucket}/eodata/{rome.safe.name}/{file.relative_to(rome.safe)}")
    product = rome_product(rome.safe, location=f"s3://{bucket}/eodata/{rome.safe.name}/")
    product_id = plan_one(conn, product, AREA)

    outcome = process(conn, store, SarsenBackend(backend_cfg()), product_id, aoi="rome", run=RUN, last_try=False)

    assert status(conn, product_id) == ("ready", None, 1)
    assert outcome.location == f"card/rome/CARD-BS/2021/CARD-BS_{product.name}.tif"
    with store.local_copy(outcome.location) as local, rasterio.open(local) as cog:
        assert cog.descriptions == ("VV", "VH") and cog.crs.to_epsg() == 32633
        assert cog.tags()["SOURCE_PRODUCTS"] == product.name
        assert local.stat().st_size == outcome.size_bytes
    run = conn.execute("SELECT status, params FROM cbm.pipeline_run ORDER BY pipeline_run_id DESC LIMIT 1").fetchone()
    assert run is not None and run[0] == "success"
    params = run[1]
    assert params["backend"] == "sarsen" and params["sarsen"] == "0.9.6" and params["geoid"] == GEOID
    assert params["dem"].endswith("Rome-30m-DEM.tif") and params["job"] == f"CARD-BS:rome:{product.name}"
    assert params["inputs"][product.name]["checksum"] == product.checksum
    # the run's inputs and outputs, as the audit report and the lineage tables show them
    inputs = conn.execute("SELECT kind, name, product_id, checksum, version FROM cbm.run_input "
                          "WHERE pipeline_run_id = (SELECT max(pipeline_run_id) FROM cbm.pipeline_run) "
                          "ORDER BY seq").fetchall()
    source_id = conn.execute("SELECT product_id FROM cbm.product WHERE uid = %s", (product.uid,)).fetchone()
    assert source_id is not None
    assert inputs[0] == ("product", product.location, source_id[0], product.checksum, None)
    assert inputs[1] == ("backend", "sarsen", None, None, "0.9.6")
    assert inputs[2][0] == "dem" and inputs[2][1].endswith("Rome-30m-DEM.tif") and len(inputs) == 3
    outputs = conn.execute("SELECT kind, name, product_id FROM cbm.run_output "
                           "WHERE pipeline_run_id = (SELECT max(pipeline_run_id) FROM cbm.pipeline_run)").fetchall()
    assert outputs == [("product", outcome.location, product_id)]
    attributes = registry.get_product(conn, product_id).attributes
    assert attributes["band_names"] == ["VV", "VH"] and "bands" not in attributes
    assert list((tmp_path / "scratch").iterdir()) == []  # scratch copies and outputs removed


def test_dem_gap_fails_the_job_with_its_reason(conn: psycopg.Connection, rome: RomeGrd, tmp_path: Path) -> None:
    store = LocalStore(StoreConfig(root=str(tmp_path / "store"), scratch_dir=str(tmp_path / "scratch")))
    product_id = plan_one(conn, rome_product(rome.safe), EAST_OF_DEM)
    with pytest.raises(DemCoverageError):
        process(conn, store, SarsenBackend(backend_cfg()), product_id, aoi="rome", run=RUN, last_try=False)
    state, error, _ = status(conn, product_id)
    assert state == "failed" and error is not None and error.startswith("DemCoverageError: DEM ")
    assert "does not cover the output grid" in error
    assert not (tmp_path / "store").exists() and list((tmp_path / "scratch").iterdir()) == []
    assert conn.execute("SELECT status FROM cbm.pipeline_run").fetchone() == ("failed",)


class _CrashingBackend:
    """Writes half a product, then fails like a worker losing its disk."""

    name = "crashing"
    local_sources = True

    def supports(self, card_type: str) -> bool:
        return True

    def make(self, job: CardJob, sources: list[tuple[Product, Path]], scratch: Path) -> CardOutput:
        (scratch / "partial.tif").write_bytes(b"II*\x00half")
        raise TransientError(f"job {job.key}: disk went away")


def test_transient_failure_keeps_the_claim_then_gives_it_back(conn: psycopg.Connection, rome: RomeGrd,
                                                              tmp_path: Path) -> None:
    store = LocalStore(StoreConfig(root=str(tmp_path / "store"), scratch_dir=str(tmp_path / "scratch")))
    product_id = plan_one(conn, rome_product(rome.safe), AREA)
    with pytest.raises(TransientError):
        process(conn, store, _CrashingBackend(), product_id, aoi="rome", run=RUN, last_try=False)
    assert status(conn, product_id)[0] == "processing"  # Airflow retries; no other run takes it
    with pytest.raises(TransientError):
        process(conn, store, _CrashingBackend(), product_id, aoi="rome", run=RUN, last_try=True)
    assert status(conn, product_id)[:2] == ("new", "TransientError: job CARD-BS:rome:" + rome.safe.name[:-5]
                                            + ": disk went away")
    assert not (tmp_path / "store").exists()  # the partial file never reached the store
    assert list((tmp_path / "scratch").iterdir()) == []
