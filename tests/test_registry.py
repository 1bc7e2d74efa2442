"""The catalogue registry: idempotent registration and the claim state machine."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cbm_tasks import lineage
from cbm_tasks.aoi import ensure_aoi
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import NotFoundError, ProductNotFoundError

FOOTPRINT = "POLYGON((3.0 50.8, 3.1 50.8, 3.1 50.9, 3.0 50.9, 3.0 50.8))"


def _product(i: int, product_type: str = "S2MSI2A") -> Product:
    return Product(
        uid=f"uid-{i}", name=f"S2B_MSIL2A_2018040{i}", catalogue="local", collection="SENTINEL-2",
        product_type=product_type, acquired_at=datetime(2018, 4, 1, 10, 50, tzinfo=UTC) + timedelta(days=i),
        location=f"/data/p{i}", platform="S2B", tile="31UDS", footprint_wkt=FOOTPRINT,
        checksum=f"md5:{i:032x}", attributes={"bands": [{"name": "B04", "href": f"/data/p{i}/B04.tif"}]},
    )


def test_register_is_idempotent_and_sets_initial_status(conn: psycopg.Connection) -> None:
    products = [_product(1), _product(2), _product(3, "IW_GRDH_1S")]
    first = registry.register(conn, products, aoi="demo")
    assert len(first) == 3
    assert registry.register(conn, products, aoi="demo") == []
    assert conn.execute("SELECT count(*) FROM cbm.product").fetchone() == (3,)
    assert registry.status_counts(conn, aoi="demo") == {"ready": 2, "new": 1}
    # the same product seen for a second AOI gets its own status row, not a second record
    assert registry.register(conn, products[:1], aoi="other") == [first[0]]
    assert conn.execute("SELECT count(*) FROM cbm.product").fetchone() == (3,)


def test_get_product_round_trips(conn: psycopg.Connection) -> None:
    (pid,) = registry.register(conn, [_product(4)], aoi="demo")
    product = registry.get_product(conn, pid)
    assert product == _product(4).__class__(**{**_asdict(_product(4)), "footprint_wkt": product.footprint_wkt})
    assert product.footprint_wkt is not None and product.footprint_wkt.startswith("MULTIPOLYGON(((3 50.8")
    with pytest.raises(ProductNotFoundError, match="product 999999"):
        registry.get_product(conn, 999999)


def _asdict(p: Product) -> dict[str, object]:
    return {f: getattr(p, f) for f in p.__slots__}  # type: ignore[attr-defined]


def test_claim_moves_status_and_counts_attempts(conn: psycopg.Connection) -> None:
    ids = registry.register(conn, [_product(i) for i in range(1, 6)], aoi="demo")
    got = registry.claim(conn, aoi="demo", worker="w1", limit=2)
    assert got == ids[:2]  # oldest acquisitions first
    assert registry.claim(conn, aoi="demo", worker="w1", limit=10) == ids[2:]
    assert registry.claim(conn, aoi="demo", worker="w1") == []
    rows = conn.execute("SELECT DISTINCT status, attempts, claimed_by FROM cbm.product_status").fetchall()
    assert rows == [("extracting", 1, "w1")]


def test_stale_claims_are_reclaimed(conn: psycopg.Connection) -> None:
    (pid,) = registry.register(conn, [_product(1)], aoi="demo")
    assert registry.claim(conn, aoi="demo", worker="dead") == [pid]
    assert registry.claim(conn, aoi="demo", worker="w2") == []
    conn.execute("UPDATE cbm.product_status SET lease_until = now() - interval '1 second'")
    conn.commit()
    assert registry.claim(conn, aoi="demo", worker="w2", stale_after=timedelta(hours=2)) == [pid]
    assert conn.execute("SELECT claimed_by, attempts FROM cbm.product_status").fetchone() == ("w2", 2)


def test_mark_failed_retries_then_fails(conn: psycopg.Connection) -> None:
    (pid,) = registry.register(conn, [_product(1)], aoi="demo")
    for attempt in (1, 2):
        assert registry.claim(conn, aoi="demo", worker="w") == [pid]
        assert registry.mark_failed(conn, pid, aoi="demo", error=f"timeout {attempt}", max_attempts=3) == "ready"
    assert registry.claim(conn, aoi="demo", worker="w") == [pid]
    assert registry.mark_failed(conn, pid, aoi="demo", error="timeout 3", max_attempts=3) == "failed"
    assert conn.execute("SELECT status, attempts, last_error FROM cbm.product_status").fetchone() == (
        "failed", 3, "timeout 3")
    registry.reset(conn, pid, aoi="demo")
    assert registry.status_counts(conn, aoi="demo") == {"ready": 1}


def test_bad_input_fails_at_once(conn: psycopg.Connection) -> None:
    (pid,) = registry.register(conn, [_product(1)], aoi="demo")
    registry.claim(conn, aoi="demo", worker="w")
    assert registry.mark_failed(conn, pid, aoi="demo", error="corrupt", permanent=True) == "failed"


def test_mark_done_releases_claim(conn: psycopg.Connection) -> None:
    (pid,) = registry.register(conn, [_product(1)], aoi="demo")
    registry.claim(conn, aoi="demo", worker="w")
    registry.mark_done(conn, pid, aoi="demo")
    assert conn.execute("SELECT status, claimed_by FROM cbm.product_status").fetchone() == ("extracted", None)
    with pytest.raises(ProductNotFoundError, match="product 424242"):
        registry.mark_done(conn, 424242, aoi="demo")


def test_unknown_aoi_names_known_ones(conn: psycopg.Connection) -> None:
    ensure_aoi(conn, "demo")
    with pytest.raises(NotFoundError, match="AOI 'nope' does not exist; known AOIs: demo"):
        registry.claim(conn, aoi="nope", worker="w")


def test_two_concurrent_claimers_never_share_a_product(db_url: str) -> None:
    with psycopg.connect(db_url) as setup:
        registry.register(setup, [_product(i) for i in range(1, 9)] + [
            Product(**{**_asdict(_product(i)), "uid": f"extra-{i}"}) for i in range(1, 41)], aoi="demo")
    results: dict[str, list[int]] = {}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        got: list[int] = []
        with psycopg.connect(db_url) as conn:
            barrier.wait()
            while batch := registry.claim(conn, aoi="demo", worker=name, limit=3):
                got.extend(batch)
        results[name] = got

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(results["a"]).isdisjoint(results["b"])
    assert len(results["a"]) + len(results["b"]) == 48


def test_lineage_run_is_recorded(conn: psycopg.Connection) -> None:
    ctx = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="manual__1", task_id="extract",
                             map_index=3, try_number=2)
    run_id = lineage.start_run(conn, ctx, {"aoi": "demo"})
    lineage.finish_run(conn, run_id, status="failed", error="boom")
    row = conn.execute("SELECT dag_id, map_index, try_number, step, params, status, error, code_version "
                       "FROM cbm.pipeline_run WHERE pipeline_run_id = %s", (run_id,)).fetchone()
    assert row[:7] == ("cbm_extract", 3, 2, "extract", {"aoi": "demo"}, "failed", "boom")
    assert row[7].startswith("0.1.0")


def test_product_status_values_are_the_database_values(conn: psycopg.Connection) -> None:
    (check,) = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'cbm.product_status'::regclass AND contype = 'c' AND conname LIKE '%status%'"
    ).fetchone() or ("",)
    assert set(re.findall(r"'([a-z]+)'::text", check)) == {status.value for status in registry.ProductStatus}
    assert registry.STATUSES == tuple(status.value for status in registry.ProductStatus)
    (pid,) = registry.register(conn, [_product(7)], aoi="demo")
    registry.claim(conn, aoi="demo", worker="w", status=registry.ProductStatus.READY)
    registry.mark_done(conn, pid, aoi="demo", status=registry.ProductStatus.SKIPPED)
    assert conn.execute("SELECT status FROM cbm.product_status WHERE product_id = %s", (pid,)).fetchone() == (
        "skipped",)
    with pytest.raises(ValueError, match="unknown product status 'done'; valid: new, processing, ready"):
        registry.mark_done(conn, pid, aoi="demo", status="done")
