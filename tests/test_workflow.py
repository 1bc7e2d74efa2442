"""The DAG steps without Airflow: season year, claimed-image outcomes, batches, and their catalogue states."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cbm_tasks import lineage
from cbm_tasks.aoi import aoi_footprint_wkt, list_aois
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.local import LocalCatalogue
from cbm_tasks.catalogue.product import Product
from cbm_tasks.demo import data as demo_data
from cbm_tasks.errors import BadInputError, ConfigError, NotFoundError, TransientError
from cbm_tasks.parcels import sets as parcel
from cbm_tasks.pipeline import extract as workflow
from cbm_tasks.pipeline.batches import ExtractBatch
from cbm_tasks.pipeline.extract_batch import BatchRetryError, extract_batch, run_totals
from cbm_tasks.pipeline.poll import PollResult, poll_aoi
from cbm_tasks.report.run_report import run_report
from cbm_tasks.store import StoreConfig, open_store
from cbm_tasks.timeseries import write as obs

RUN = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="test", task_id="extract", map_index=0,
                         try_number=1)


@pytest.fixture
def demo_db(tmp_path: Path, db_url: str) -> Iterator[tuple[psycopg.Connection, demo_data.DemoLayout]]:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
        yield conn, layout


def _poll(conn: psycopg.Connection, layout: demo_data.DemoLayout) -> PollResult:
    return poll_aoi(conn, LocalCatalogue(layout.catalogue_root), aoi="demo",
                    start=datetime(2017, 8, 1, tzinfo=UTC), end=datetime(2018, 12, 1, tzinfo=UTC))


def _status(conn: psycopg.Connection, product_id: int) -> tuple[str, int, str | None]:
    row = conn.execute("SELECT status, attempts, last_error FROM cbm.product_status WHERE product_id = %s",
                       (product_id,)).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_poll_registers_once_and_counts_what_is_ready(demo_db: tuple[psycopg.Connection, demo_data.DemoLayout]) -> None:
    conn, layout = demo_db
    assert list_aois(conn) == ["demo"]
    first = _poll(conn, layout)
    assert (first.found, first.new, first.new_ready, first.ready_waiting) == (2, 2, 2, 2)
    again = _poll(conn, layout)
    assert (again.found, again.new, again.new_ready, again.ready_waiting) == (2, 0, 0, 2)
    with pytest.raises(ConfigError, match="S2MSI1X"):
        poll_aoi(conn, LocalCatalogue(layout.catalogue_root), aoi="demo", product_types=["S2MSI1X"],
                          start=datetime(2017, 8, 1, tzinfo=UTC), end=datetime(2018, 12, 1, tzinfo=UTC))
    with pytest.raises(NotFoundError, match="nowhere"):
        aoi_footprint_wkt(conn, "nowhere")


def test_autumn_images_serve_the_next_season_and_others_are_skipped(
    demo_db: tuple[psycopg.Connection, demo_data.DemoLayout], tmp_path: Path
) -> None:
    conn, layout = demo_db
    _poll(conn, layout)
    spring = Product(uid="spring-2017", name="spring-2017", catalogue="local", collection="SENTINEL-2",
                     product_type="S2MSI2A", acquired_at=datetime(2017, 3, 1, tzinfo=UTC),
                     location=str(tmp_path / "absent"), footprint_wkt=aoi_footprint_wkt(conn, "demo"))
    (spring_id,) = registry.register(conn, [spring], aoi="demo")
    claimed = workflow.claim_ready(conn, aois=["demo"], worker="cbm_extract/test")
    assert len(claimed) == 3 and all(aoi == "demo" for aoi, _ in claimed)
    years = {pid: workflow.parcel_year(conn, pid, aoi="demo") for _, pid in claimed}
    assert years.pop(spring_id) is None
    assert set(years.values()) == {2018}  # August 2017 images belong to the 2018 parcels

    store = open_store(StoreConfig(kind="local", root=str(tmp_path)))
    outcome = workflow.extract_claimed(conn, store, spring_id, aoi="demo", run=RUN, last_try=False)
    assert (outcome.status, outcome.n_rows) == ("skipped", 0)
    assert _status(conn, spring_id)[0] == "skipped"
    for product_id in years:
        outcome = workflow.extract_claimed(conn, store, product_id, aoi="demo", run=RUN, last_try=False)
        assert outcome.status == "extracted" and outcome.n_parcels == layout.n_parcels
        assert _status(conn, product_id) == ("extracted", 1, None)
    summary = workflow.aoi_summary(conn, "demo")
    assert summary.products == {"extracted": 2, "skipped": 1}
    assert summary.images_extracted == 2 and summary.parcels == layout.n_parcels
    assert summary.parcel_obs_rows == 2 * layout.n_parcels


def test_bad_input_fails_at_once_and_transient_errors_keep_the_claim(
    demo_db: tuple[psycopg.Connection, demo_data.DemoLayout], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, layout = demo_db
    _poll(conn, layout)
    ids = dict(conn.execute("SELECT product_type, product_id FROM cbm.product").fetchall())
    s2_id, s1_id = ids["S2MSI2A"], ids["CARD-BS"]
    claimed = workflow.claim_ready(conn, aois=["demo"], worker="cbm_extract/test")
    assert sorted(pid for _, pid in claimed) == sorted(ids.values())
    store = open_store(StoreConfig(kind="local", root=str(tmp_path)))
    s2 = registry.get_product(conn, s2_id)
    band = Path(s2.location) / "B04.tif"
    band.write_bytes(b"not a GeoTIFF")
    with pytest.raises(BadInputError, match="B04"):
        workflow.extract_claimed(conn, store, s2_id, aoi="demo", run=RUN, last_try=False)
    status, attempts, error = _status(conn, s2_id)
    assert (status, attempts) == ("failed", 1) and "B04" in (error or "")

    other = s1_id
    def lost_connection(*args: object, **kwargs: object) -> int:
        raise TransientError("cannot connect to PostGIS: server closed the connection")

    monkeypatch.setattr(obs, "replace_image_stats", lost_connection)
    with pytest.raises(TransientError):
        workflow.extract_claimed(conn, store, other, aoi="demo", run=RUN, last_try=False)
    assert _status(conn, other)[0] == "extracting"  # Airflow retries it; nobody else claims it meanwhile
    with pytest.raises(TransientError):
        workflow.extract_claimed(conn, store, other, aoi="demo", run=RUN, last_try=True)
    status, attempts, error = _status(conn, other)
    assert (status, attempts) == ("ready", 1) and "TransientError" in (error or "")

    # Airflow's execution timeout is a BaseException: the last try must still release the claim
    class TaskTimeout(BaseException):
        pass

    def too_slow(*args: object, **kwargs: object) -> int:
        raise TaskTimeout("Timeout, PID: 4242")

    assert [pid for _, pid in workflow.claim_ready(conn, aois=["demo"], worker="cbm_extract/test")] == [other]
    monkeypatch.setattr(obs, "replace_image_stats", too_slow)
    with pytest.raises(TaskTimeout):
        workflow.extract_claimed(conn, store, other, aoi="demo", run=RUN, last_try=True)
    status, attempts, error = _status(conn, other)
    assert (status, attempts) == ("ready", 2) and "TaskTimeout: Timeout, PID: 4242" in (error or "")


def test_execution_timeout_marks_the_lineage_run_failed(
    demo_db: tuple[psycopg.Connection, demo_data.DemoLayout], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Airflow's execution timeout is a BaseException: the cbm.pipeline_run row must not stay 'running'
    conn, layout = demo_db
    _poll(conn, layout)
    ((_, product_id),) = [c for c in workflow.claim_ready(conn, aois=["demo"], worker="cbm_extract/test")
                          if registry.get_product(conn, c[1]).product_type == "S2MSI2A"][:1]

    class TaskTimeout(BaseException):
        pass

    def too_slow(*args: object, **kwargs: object) -> int:
        raise TaskTimeout("Timeout, PID: 4242")

    monkeypatch.setattr(obs, "replace_image_stats", too_slow)
    store = open_store(StoreConfig(kind="local", root=str(tmp_path)))
    with pytest.raises(TaskTimeout):
        workflow.extract_claimed(conn, store, product_id, aoi="demo", run=RUN, last_try=False)
    row = conn.execute("SELECT status, error, finished_at IS NOT NULL FROM cbm.pipeline_run "
                       "WHERE (params->>'product_id')::int = %s", (product_id,)).fetchone()
    assert row == ("failed", "TaskTimeout: Timeout, PID: 4242", True)


def _batch(conn: psycopg.Connection) -> ExtractBatch:
    """Claim every ready image of the demo AOI as one batch."""
    (batch,) = workflow.claim_batches(conn, aois=["demo"], worker="cbm_extract/test", target_megapixels=1e5)
    return batch


def _runs(conn: psycopg.Connection) -> list[tuple[int, int, str]]:
    """(product_id, try_number, status) of every extraction lineage run."""
    return [(int(r[0]), int(r[1]), str(r[2])) for r in conn.execute(
        "SELECT (params->>'product_id')::int, try_number, status FROM cbm.pipeline_run WHERE step = 'extract' "
        "ORDER BY 1, 2").fetchall()]


def test_a_corrupt_image_fails_alone_and_the_batch_goes_on(tmp_path: Path, db_url: str) -> None:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=3)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
        _poll(conn, layout)
        batch = _batch(conn)
        assert len(batch.product_ids) == 6 and batch.label.startswith("demo: 6 images")
        s2_ids = [pid for pid in batch.product_ids if registry.get_product(conn, pid).product_type == "S2MSI2A"]
        corrupt = s2_ids[1]
        (Path(registry.get_product(conn, corrupt).location) / "B04.tif").write_bytes(b"not a GeoTIFF")
        store = open_store(StoreConfig(kind="local", root=str(tmp_path)))
        outcome = extract_batch(conn, store, batch, run=RUN, last_try=False)
        assert [pid for pid, _ in outcome.failed] == [corrupt] and "B04" in outcome.failed[0][1]
        assert sorted(o.product_id for o in outcome.outcomes) == sorted(set(batch.product_ids) - {corrupt})
        assert all(o.status == "extracted" and o.n_parcels == layout.n_parcels for o in outcome.outcomes)
        assert {pid: _status(conn, pid)[0] for pid in batch.product_ids} == {
            pid: "failed" if pid == corrupt else "extracted" for pid in batch.product_ids}
        # one lineage run per image, all of this task try; one cbm.extraction row per good image
        assert _runs(conn) == sorted((pid, 1, "failed" if pid == corrupt else "success") for pid in batch.product_ids)
        assert conn.execute("SELECT count(*), count(DISTINCT pipeline_run_id) FROM cbm.extraction").fetchone() == (5, 5)
        totals = run_totals(conn, [batch])
        assert (totals["claimed"], totals["extracted"], totals["failed"], totals["aois"]) == (6, 5, 1, ["demo"])
        assert totals["rows"] == conn.execute("SELECT sum(n_rows) FROM cbm.extraction").fetchone()[0]


def test_a_transient_error_mid_batch_is_retried_alone_and_nothing_is_extracted_twice(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=3)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
        _poll(conn, layout)
        batch = _batch(conn)
        flaky = batch.product_ids[2]
        real_replace = obs.replace_image_stats

        def lost_connection_once(conn: psycopg.Connection, parcel_set_id: int, product_id: int,
                                 *args: Any, **kwargs: Any) -> int:
            if product_id == flaky:
                raise TransientError("cannot write to PostGIS: server closed the connection")
            return real_replace(conn, parcel_set_id, product_id, *args, **kwargs)

        monkeypatch.setattr(obs, "replace_image_stats", lost_connection_once)
        store = open_store(StoreConfig(kind="local", root=str(tmp_path)))
        with pytest.raises(BatchRetryError, match=f"1 image\\(s\\) to retry \\({flaky}\\), 5 finished") as raised:
            extract_batch(conn, store, batch, run=RUN, last_try=False)
        assert [pid for pid, _ in raised.value.outcome.retry] == [flaky]
        assert _status(conn, flaky)[0] == "extracting"  # still this run's: the task's retry takes it
        assert [pid for pid in batch.product_ids if _status(conn, pid)[0] == "extracted"] == [
            pid for pid in batch.product_ids if pid != flaky]

        monkeypatch.setattr(obs, "replace_image_stats", real_replace)
        retry = replace(RUN, try_number=2)
        again = extract_batch(conn, store, batch, run=retry, last_try=False)
        assert [o.product_id for o in again.outcomes] == [flaky]
        assert again.not_held == tuple(pid for pid in batch.product_ids if pid != flaky)
        assert all(_status(conn, pid) == ("extracted", 1, None) for pid in batch.product_ids)
        # each image extracted once: one successful run each, the flaky one after a failed first try
        assert _runs(conn) == sorted([(pid, 1, "success") for pid in batch.product_ids if pid != flaky]
                                     + [(flaky, 1, "failed"), (flaky, 2, "success")])
        assert conn.execute("SELECT count(*) FROM cbm.parcel_obs").fetchone()[0] == 6 * layout.n_parcels
        # a third try finds nothing left to do, and writes nothing
        third = extract_batch(conn, store, batch, run=replace(RUN, try_number=3), last_try=True)
        assert (third.outcomes, len(third.not_held)) == ((), 6) and len(_runs(conn)) == 7
        report = run_report(conn, RUN.run_id or "")
        (line,) = report.tasks
        assert (line.status, line.tries, line.units, report.retried, report.failed) == ("success", 2, 6, 1, 0)
        assert line.rows_written == conn.execute("SELECT sum(n_parcels) FROM cbm.extraction").fetchone()[0]


def test_a_batch_stopped_on_its_last_try_gives_back_what_it_did_not_do(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = demo_data.build_demo(tmp_path / "demo", max_products=2)
    with psycopg.connect(db_url, autocommit=True) as conn:
        parcel.import_parcels(conn, layout.parcels_file, aoi="demo", year=2018)
        _poll(conn, layout)
        batch = _batch(conn)
        other_run = replace(batch, claimed_by="cbm_extract/another_run")
        untouched = extract_batch(conn, open_store(StoreConfig(kind="local", root=str(tmp_path))), other_run,
                                  run=RUN, last_try=False)
        assert untouched.not_held == batch.product_ids and _runs(conn) == []  # not that run's claims

        class TaskTimeout(BaseException):
            pass

        real_replace = obs.replace_image_stats
        calls: list[int] = []

        def times_out_on_the_second(conn: psycopg.Connection, parcel_set_id: int, product_id: int,
                                    *args: Any, **kwargs: Any) -> int:
            calls.append(product_id)
            if len(calls) == 2:
                raise TaskTimeout("Timeout, PID: 4242")
            return real_replace(conn, parcel_set_id, product_id, *args, **kwargs)

        monkeypatch.setattr(obs, "replace_image_stats", times_out_on_the_second)
        with pytest.raises(TaskTimeout):
            extract_batch(conn, open_store(StoreConfig(kind="local", root=str(tmp_path))), batch, run=RUN,
                          last_try=True)
        first, second, *rest = batch.product_ids
        assert _status(conn, first)[0] == "extracted"
        assert _status(conn, second)[:2] == ("ready", 1)  # released by its own failure
        for pid in rest:  # never started: given back at once, not left to go stale
            status, attempts, error = _status(conn, pid)
            assert (status, attempts) == ("ready", 1) and "batch stopped before this image" in (error or "")
