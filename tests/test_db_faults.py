"""The database under faults: dropped connections, killed clients, lock timeouts, hostile lock holders.

The commands run as real processes against the real PostGIS; connections are dropped with
``pg_terminate_backend`` from another session, as a restart or an administrator would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
import pytest
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, row_counts, write_tif

from cbm_tasks import db
from cbm_tasks.errors import TransientError
from cbm_tasks.ops import cluster

CBM = str(Path(sys.executable).parent / "cbm")
X0, Y0 = 500000, 5600100


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _lock_waiters(admin: psycopg.Connection, dbname: str) -> list[int]:
    """Backends of *dbname* waiting on a heavyweight lock."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (dbname,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def _alive(admin: psycopg.Connection, pid: int) -> bool:
    return admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None


@pytest.fixture
def admin(db_url: str) -> psycopg.Connection:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


def test_cli_extract_reports_a_dropped_connection_without_traceback(
    conn: psycopg.Connection, admin: psycopg.Connection, db_url: str, tmp_path: Path
) -> None:
    parcels = [(f"p{i}", shapely.box(X0 + 20 * i, Y0 - 40, X0 + 20 * i + 20, Y0)) for i in range(3)]
    add_parcel_set(conn, aoi="cli", year=2018, srid=32631, parcels=parcels)
    image = write_tif(tmp_path / "image.tif", np.full((1, 4, 6), 1000, np.uint16),
                      transform=Affine(10, 0, X0, 0, -10, Y0), nodata=0, descriptions=["B04"])
    before = row_counts(conn)
    dbname = conn.info.dbname
    with conn.transaction():
        # the extraction computes, then waits here to write its rows: the connection is dropped meanwhile
        conn.execute("LOCK TABLE cbm.extraction IN EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [CBM, "extract", str(image), "--aoi", "cli", "--year", "2018", "--obs-time", "2018-06-01T10:00:00Z"],
            env={**os.environ, "CBM_DATABASE_URL": db_url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        _wait_for("the extraction to wait on its write", lambda: bool(_lock_waiters(admin, dbname)), 120)
        (pid,) = _lock_waiters(admin, dbname)
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cbm: error: writing the rows of product") and last.endswith("(temporary: retry later)")
    assert "lost the connection to PostGIS: terminating connection due to administrator command" in last
    assert "Traceback" not in err and out == ""
    assert row_counts(conn) == before  # nothing half-written, the image not registered


def test_cli_reports_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql:///cbm?host={tmp_path}&port=1"  # no server on that socket
    result = subprocess.run([CBM, "db", "migrate"], env={**os.environ, "CBM_DATABASE_URL": url},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 75
    assert result.stderr.startswith("cbm: error: cannot connect to PostGIS") and "Traceback" not in result.stderr


def test_pipeline_connections_have_session_limits(db_url: str) -> None:
    with db.connect(db_url) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
            "('lock_timeout', 'statement_timeout', 'client_connection_check_interval')"
        ).fetchall())
        assert conn.execute("SHOW application_name").fetchone() == ("cbm",)
    assert settings == {"lock_timeout": "600000ms", "statement_timeout": "3600000ms",
                        "client_connection_check_interval": "10000ms"}
    # a DSN's own options are kept
    with db.connect(f"{db_url}&options=-c%20search_path%3Dcbm", lock_timeout_s=2) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("cbm",)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("2s",)


def test_lock_timeout_is_transient_and_says_so(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("LOCK TABLE cbm.aoi IN ACCESS EXCLUSIVE MODE")  # held until the test ends
    t0 = time.monotonic()
    with pytest.raises(TransientError, match=r"gave up waiting for a database lock \(lock_timeout\)"), \
            db.connect(db_url, lock_timeout_s=0.5) as other:
        other.execute("SELECT count(*) FROM cbm.aoi")
    assert time.monotonic() - t0 < 30
    conn.rollback()


_WAIT_ON_LOCK = textwrap.dedent("""
    import sys
    import psycopg
    from cbm_tasks import db
    url, how = sys.argv[1], sys.argv[2]
    conn = db.connect(url) if how == "pipeline" else psycopg.connect(url)
    print(conn.info.backend_pid, flush=True)
    conn.execute("SELECT count(*) FROM cbm.aoi")  # waits on the test's lock
""")


def test_killed_client_waiting_on_a_lock_leaves_no_session(conn: psycopg.Connection, admin: psycopg.Connection,
                                                           db_url: str) -> None:
    conn.execute("LOCK TABLE cbm.aoi IN ACCESS EXCLUSIVE MODE")
    procs = {how: subprocess.Popen([sys.executable, "-c", _WAIT_ON_LOCK, db_url, how], stdout=subprocess.PIPE,
                                   text=True) for how in ("pipeline", "plain")}
    pids = {how: int(proc.stdout.readline()) for how, proc in procs.items()}  # type: ignore[union-attr]
    _wait_for("both clients to wait on the lock",
              lambda: set(pids.values()) <= set(_lock_waiters(admin, conn.info.dbname)))
    for proc in procs.values():
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # client_connection_check_interval (10 s) ends the pipeline's session while it still waits
    _wait_for("the killed pipeline client's session to end", lambda: not _alive(admin, pids["pipeline"]), 40)
    # without it (a plain connection) the session lingers as long as the lock is held
    assert _alive(admin, pids["plain"])
    conn.rollback()
    _wait_for("the plain session to end once the lock is free", lambda: not _alive(admin, pids["plain"]))


def test_a_reader_cannot_block_migrations_or_image_writers(conn: psycopg.Connection, db_url: str) -> None:
    from test_obs import _image, _setup

    from cbm_tasks.timeseries import write as obs

    set_id, product_id = _setup(conn)
    conn.commit()
    with psycopg.connect(db_url) as reader:
        reader.execute("SET ROLE cbm_reader")
        # the advisory keys the migration runner and the image writers used before
        reader.execute("SELECT pg_advisory_lock(%s)", (0x43424D,))
        reader.execute("SELECT pg_advisory_lock(hashtextextended('cbm.parcel_obs ' || %s || ' ' || %s, 0))",
                       (set_id, product_id))
        reader.execute("SELECT pg_advisory_lock(hashtext('cbm.ensure_parcel_set_partitions'), %s)", (set_id,))
        # and the locks used now are refused to it
        for statement in ("LOCK TABLE public.schema_migrations IN EXCLUSIVE MODE",
                          "SELECT 1 FROM cbm.extraction FOR UPDATE",
                          "LOCK TABLE ONLY cbm.parcel_obs IN SHARE UPDATE EXCLUSIVE MODE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)
            reader.rollback()
            reader.execute("SET ROLE cbm_reader")
        # a reader's long read does not block either
        reader.execute("SELECT count(*) FROM cbm.extraction")
        with db.connect(db_url, lock_timeout_s=5) as writer:  # a block would raise TransientError
            assert db.migrate(writer) == []
            assert obs.replace_image_stats(writer, set_id, product_id, _image([1, 2]), parcel_set_version=1,
                                           params={}, seconds=0) == 4  # 2 parcels x 2 bands
            writer.execute("SELECT cbm.ensure_parcel_set_partitions(%s::smallint)", (set_id + 1,))
        reader.rollback()


def test_concurrent_migrate_commands_apply_each_migration_once(pg_cluster: cluster.ClusterConfig) -> None:
    name = f"cbm_test_migrate_{os.getpid()}"
    cluster.ensure_database(pg_cluster, name)  # empty: the runners race to create schema_migrations too
    try:
        env = {**os.environ, "CBM_DATABASE_URL": pg_cluster.url(name)}
        procs = [subprocess.Popen([CBM, "db", "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(3)]
        outputs = [proc.communicate(timeout=300) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
        n_files = len(db.list_migrations())
        applied = sorted(out for out, _ in outputs)
        assert applied[:2] == ["applied 0 migration(s): none pending\n"] * 2
        assert applied[2].startswith(f"applied {n_files} migration(s): 000_")
        with psycopg.connect(pg_cluster.url(name)) as conn:
            rows = conn.execute("SELECT version FROM public.schema_migrations ORDER BY 1").fetchall()
        assert [r[0] for r in rows] == [m.version for m in db.list_migrations()]
    finally:
        cluster.drop_database(pg_cluster, name)


def test_a_second_migrate_waits_for_the_first(conn: psycopg.Connection, db_url: str) -> None:
    with conn.transaction():
        conn.execute("LOCK TABLE public.schema_migrations IN EXCLUSIVE MODE")  # what a running migrate holds
        with pytest.raises(TransientError, match="lock_timeout"), db.connect(db_url, lock_timeout_s=1) as other:
            db.migrate(other)
    with db.connect(db_url, lock_timeout_s=1) as other:  # released: nothing pending
        assert db.migrate(other) == []
