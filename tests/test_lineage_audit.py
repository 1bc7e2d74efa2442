"""Lineage records: inputs and outputs of a run, and finished records the pipeline role cannot change."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, add_product, write_tif

from cbm_tasks import lineage
from cbm_tasks.extraction.extract import extract_product
from cbm_tasks.store import StoreConfig, open_store

RUN = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="manual__1", task_id="extract", map_index=3,
                         try_number=2)
X0, Y0 = 500000, 5600100


def _as_writer(conn: psycopg.Connection) -> None:
    """Act as the pipeline's role from here on (the test connects as the cluster's superuser)."""
    conn.execute("SET ROLE cbm_writer")
    conn.commit()  # a SET in a transaction that is rolled back would be undone with it


def _finished_run(conn: psycopg.Connection) -> int:
    run_id = lineage.start_run(conn, RUN, {"aoi": "demo", "product_id": 7})
    lineage.record_io(conn, run_id, inputs=[lineage.RunInput("product", "s3://eodata/S2A_X/", product_id=7,
                                                             checksum="md5:00ff")],
                      outputs=[lineage.RunOutput("table", "cbm.parcel_obs", n_rows=12)])
    lineage.finish_run(conn, run_id, status="success")
    return run_id


def test_start_run_records_host_hash_and_code(conn: psycopg.Connection) -> None:
    run_id = lineage.start_run(conn, RUN, {"b": 1, "a": [2, 3]})
    row = conn.execute("SELECT host, params_hash, code_version, map_index, try_number, status "
                       "FROM cbm.pipeline_run WHERE pipeline_run_id = %s", (run_id,)).fetchone()
    assert row is not None
    host, digest, code, map_index, try_number, status = row
    assert host and (map_index, try_number, status) == (3, 2, "running")
    assert digest == lineage.params_hash({"a": [2, 3], "b": 1}) and len(digest) == 64
    assert code.startswith(lineage.code_version().split("+")[0])


def test_writer_cannot_update_or_delete_a_finished_run(conn: psycopg.Connection) -> None:
    run_id = _finished_run(conn)
    conn.commit()
    _as_writer(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"pipeline_run {run_id} is finished"):
        conn.execute("UPDATE cbm.pipeline_run SET status = 'failed' WHERE pipeline_run_id = %s", (run_id,))
    conn.rollback()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pipeline_run"):
        conn.execute("DELETE FROM cbm.pipeline_run WHERE pipeline_run_id = %s", (run_id,))
    conn.rollback()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pipeline_run"):
        conn.execute("TRUNCATE cbm.pipeline_run CASCADE")
    conn.rollback()
    for table in ("run_input", "run_output"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=table):
            conn.execute(f"UPDATE cbm.{table} SET name = 'forged' WHERE pipeline_run_id = %s", (run_id,))  # noqa: S608
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=table):
            conn.execute(f"DELETE FROM cbm.{table} WHERE pipeline_run_id = %s", (run_id,))  # noqa: S608
        conn.rollback()
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"pipeline_run {run_id} is finished"):
        lineage.record_io(conn, run_id, outputs=[lineage.RunOutput("table", "cbm.parcel_obs", n_rows=1)])
    conn.rollback()
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT current_user").fetchone() != ("cbm_writer",)
    assert conn.execute("SELECT status FROM cbm.pipeline_run WHERE pipeline_run_id = %s", (run_id,)).fetchone() \
        == ("success",)
    assert conn.execute("SELECT count(*) FROM cbm.run_input").fetchone() == (1,)


def test_even_the_owner_cannot_rewrite_a_finished_run(conn: psycopg.Connection) -> None:
    run_id = _finished_run(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="finished"):
        conn.execute("UPDATE cbm.pipeline_run SET code_version = 'forged' WHERE pipeline_run_id = %s", (run_id,))


def test_writer_may_close_a_running_run(conn: psycopg.Connection) -> None:
    # the clean-up of orphaned runs and finish_run move a 'running' row on; that stays allowed
    run_id = lineage.start_run(conn, RUN)
    conn.commit()
    _as_writer(conn)
    lineage.finish_run(conn, run_id, status="failed", error="worker lost")
    assert conn.execute("SELECT status FROM cbm.pipeline_run WHERE pipeline_run_id = %s", (run_id,)).fetchone() \
        == ("failed",)


def test_extraction_records_what_it_read_and_wrote(conn: psycopg.Connection, tmp_path: Path) -> None:
    transform = Affine(10, 0, X0, 0, -10, Y0)
    image = write_tif(tmp_path / "B04.tif", np.full((10, 10), 300, np.uint16), transform=transform, nodata=0,
                      descriptions=["B04"], scales=[1e-4], offsets=[0.0])
    add_parcel_set(conn, aoi="lin", year=2018, srid=32631,
                   parcels=[("a", shapely.box(X0 + 10, Y0 - 50, X0 + 50, Y0 - 10)),
                            ("b", shapely.box(X0 + 60, Y0 - 90, X0 + 90, Y0 - 60))])
    product_id = add_product(conn, aoi="lin", name="S2X_20180601", location=str(image),
                             acquired_at=datetime(2018, 6, 1, 10, 30, tzinfo=UTC))
    conn.execute("UPDATE cbm.product SET checksum = 'md5:abc123' WHERE product_id = %s", (product_id,))
    conn.commit()
    extract_product(conn, open_store(StoreConfig()), product_id, aoi="lin", run=RUN)
    inputs = conn.execute("SELECT kind, name, product_id, checksum, detail->>'name' FROM cbm.run_input").fetchall()
    assert inputs == [("product", str(image), product_id, "md5:abc123", "S2X_20180601")]
    outputs = conn.execute("SELECT kind, name, product_id, n_rows, (detail->>'stats')::int "
                           "FROM cbm.run_output").fetchall()
    assert outputs == [("table", "cbm.parcel_obs", product_id, 2, 2)]
