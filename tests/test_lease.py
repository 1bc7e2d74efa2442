"""Claim leases: a working try holds its image, renews it, and a dead try's image is taken again once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cbm_tasks import lineage
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.local import LocalCatalogue
from cbm_tasks.demo import data as demo_data
from cbm_tasks.errors import ClaimLostError, ConfigError, TransientError
from cbm_tasks.parcels import sets as parcel
from cbm_tasks.pipeline import extract as workflow
from cbm_tasks.pipeline.lease import LeaseKeeper, LeaseTerms, lease_holder, run_owner
from cbm_tasks.pipeline.poll import poll_aoi
from cbm_tasks.store import StoreConfig, open_store

OWNER = "cbm_extract/run1"
MINUTE = timedelta(minutes=1)


def _run(try_number: int, run_id: str = "run1") -> lineage.RunContext:
    return lineage.RunContext(step="extract", dag_id="cbm_extract", run_id=run_id, task_id="extract", map_index=0,
                              try_number=try_number)


@pytest.fixture
def demo_db(tmp_path: Path, db_url: str) -> Iterator[tuple[psycopg.Connection, list[int]]]:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
        poll_aoi(conn, LocalCatalogue(layout.catalogue_root), aoi="demo", product_types=["S2MSI2A"],
                 start=datetime(2017, 8, 1, tzinfo=UTC), end=datetime(2018, 12, 1, tzinfo=UTC))
        claimed = workflow.claim_ready(conn, aois=["demo"], worker=OWNER)
        yield conn, [product_id for _, product_id in claimed]


def _lease(conn: psycopg.Connection, product_id: int) -> tuple[str, str | None, str | None, bool | None, int]:
    row = conn.execute("SELECT status, claimed_by, leased_by, lease_until > now(), attempts FROM cbm.product_status "
                       "WHERE product_id = %s", (product_id,)).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3], row[4]


def test_a_try_takes_its_runs_claim_and_a_second_try_waits_for_it(
    demo_db: tuple[psycopg.Connection, list[int]],
) -> None:
    conn, (product_id,) = demo_db
    take = registry.take_lease
    assert take(conn, product_id, aoi="demo", owner=OWNER, holder="try1", lease=MINUTE) is True
    assert take(conn, product_id, aoi="demo", owner=OWNER, holder="try1", lease=MINUTE) is True  # its own again
    assert take(conn, product_id, aoi="demo", owner=OWNER, holder="try2", lease=MINUTE) is False  # try1 lives
    with pytest.raises(ClaimLostError, match=f"product {product_id} .*claimed by 'cbm_extract/run1'"):
        take(conn, product_id, aoi="demo", owner="cbm_extract/run2", holder="x", lease=MINUTE)
    conn.execute("UPDATE cbm.product_status SET lease_until = now() - interval '1 second'")  # try1 died
    assert take(conn, product_id, aoi="demo", owner=OWNER, holder="try2", lease=MINUTE) is True
    assert _lease(conn, product_id) == ("extracting", OWNER, "try2", True, 1)
    assert registry.renew_lease(conn, product_id, aoi="demo", holder="try1", lease=MINUTE) is False
    assert registry.renew_lease(conn, product_id, aoi="demo", holder="try2", lease=MINUTE) is True
    registry.mark_done(conn, product_id, aoi="demo")
    assert _lease(conn, product_id) == ("extracted", None, None, None, 1)
    with pytest.raises(ClaimLostError, match="'extracted'"):
        take(conn, product_id, aoi="demo", owner=OWNER, holder="try3", lease=MINUTE)


def test_a_lapsed_lease_passes_to_another_run_as_a_new_attempt(demo_db: tuple[psycopg.Connection, list[int]]) -> None:
    conn, (product_id,) = demo_db
    assert registry.take_lease(conn, product_id, aoi="demo", owner=OWNER, holder="dead", lease=MINUTE)
    conn.execute("UPDATE cbm.product_status SET lease_until = now() - interval '1 second'")
    # the next claim of any run takes it (the short lease ran out: no 2-hour wait)
    assert registry.claim(conn, aoi="demo", worker="cbm_extract/run2") == [product_id]
    assert _lease(conn, product_id) == ("extracting", "cbm_extract/run2", None, True, 2)
    # the dead try's retry in run1 finds it taken over
    with pytest.raises(ClaimLostError, match="claimed by 'cbm_extract/run2'"):
        registry.take_lease(conn, product_id, aoi="demo", owner=OWNER, holder="retry", lease=MINUTE)


def test_the_keeper_renews_the_lease_and_notices_a_takeover(demo_db: tuple[psycopg.Connection, list[int]]) -> None:
    conn, (product_id,) = demo_db
    terms = LeaseTerms(lease=timedelta(seconds=2), renew_every=timedelta(seconds=0.5), wait=timedelta(seconds=1))
    with LeaseKeeper(conn, product_id, aoi="demo", run=_run(1), terms=terms) as keeper:
        assert keeper.holder == lease_holder(_run(1)) and keeper.holder.endswith("cbm_extract/run1/extract[0]#1")
        time.sleep(3)  # past the first lease: only renewals keep it
        assert _lease(conn, product_id)[2:4] == (keeper.holder, True)
        # a second try of the same task waits for the live lease, then gives up (Airflow retries it)
        with pytest.raises(TransientError, match="earlier try of cbm_extract/run1 still holds its lease"):
            LeaseKeeper(conn, product_id, aoi="demo", run=_run(2), terms=terms).__enter__()
        conn.execute("UPDATE cbm.product_status SET leased_by = 'someone else'")
        time.sleep(1.5)
        assert keeper.lost
    with pytest.raises(ConfigError, match="at most half the lease"):
        LeaseTerms(lease=timedelta(seconds=10), renew_every=timedelta(seconds=6))
    with pytest.raises(ConfigError, match="Airflow task"):
        run_owner(lineage.RunContext(step="extract"))


def test_the_retry_of_a_dead_try_extracts_the_image_once(
    demo_db: tuple[psycopg.Connection, list[int]], tmp_path: Path,
) -> None:
    conn, (product_id,) = demo_db
    store = open_store(StoreConfig(root=str(tmp_path)))
    # try 1 took the image and died (SIGKILL): its lease is not renewed and runs out
    assert registry.take_lease(conn, product_id, aoi="demo", owner=OWNER, holder=lease_holder(_run(1)),
                               lease=timedelta(seconds=1))
    time.sleep(1.2)
    outcome = workflow.extract_claimed(conn, store, product_id, aoi="demo", run=_run(2), last_try=False)
    assert outcome.status == "extracted" and outcome.n_rows > 0
    assert _lease(conn, product_id) == ("extracted", None, None, None, 1)
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM cbm.extraction WHERE product_id = %(p)s), "
        "(SELECT count(*) FROM cbm.parcel_obs WHERE product_id = %(p)s), "
        "(SELECT count(DISTINCT parcel_key) FROM cbm.parcel_obs WHERE product_id = %(p)s)",
        {"p": product_id}).fetchone()
    assert counts is not None and counts[0] == 1 and counts[1] == counts[2] == outcome.n_parcels
    # a late retry of another run cannot record it again
    with pytest.raises(ClaimLostError, match="'extracted'"):
        workflow.extract_claimed(conn, store, product_id, aoi="demo", run=_run(1, "run2"), last_try=False)
