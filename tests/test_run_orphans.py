"""Pipeline runs whose process was killed outright are closed as ``abandoned``, never left ``running``."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psycopg
import pytest

from cbm_tasks import db, lineage

# A task try as the extract DAG runs it: open the pipeline connection, record the run, work.
_TASK_TRY = textwrap.dedent("""
    import sys, time
    from cbm_tasks import db, lineage
    url, dag_id, try_number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with db.connect(url, autocommit=True) as conn:
        ctx = lineage.RunContext(step="extract", dag_id=dag_id or None, run_id="manual__1" if dag_id else None,
                                 task_id="extract" if dag_id else None, map_index=0 if dag_id else None,
                                 try_number=try_number if dag_id else None)
        print(lineage.start_run(conn, ctx, {"product_id": 7}), flush=True)
        time.sleep(600)  # the work, killed before it ends
""")


def _start_try(db_url: str, *, dag_id: str = "cbm_extract", try_number: int = 1) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", _TASK_TRY, db_url, dag_id, str(try_number)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _run(conn: psycopg.Connection, run_id: int) -> tuple[str, str | None, bool]:
    row = conn.execute("SELECT status, error, finished_at IS NOT NULL FROM cbm.pipeline_run "
                       "WHERE pipeline_run_id = %s", (run_id,)).fetchone()
    conn.commit()
    assert row is not None
    return row[0], row[1], row[2]


def test_next_try_closes_the_killed_try(conn: psycopg.Connection, db_url: str) -> None:
    proc, killed = _start_try(db_url, try_number=1)
    _kill(proc)
    assert _run(conn, killed)[0] == "running"  # nobody has looked yet
    # the next try of the same task starts: its own run record first closes the killed one
    with db.connect(db_url, autocommit=True) as task_conn:
        ctx = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="manual__1", task_id="extract",
                                 map_index=0, try_number=2)
        second = lineage.start_run(task_conn, ctx, {"product_id": 7})
        lineage.finish_run(task_conn, second, status="success")
    status, error, finished = _run(conn, killed)
    assert status == "abandoned" and finished
    assert error is not None and error.startswith("abandoned:")
    assert _run(conn, second) == ("success", None, True)


def test_reaper_closes_a_killed_command_but_not_a_live_one(conn: psycopg.Connection, db_url: str) -> None:
    killed_proc, killed = _start_try(db_url, dag_id="")  # a command-line run: no Airflow try to compare
    live_proc, live = _start_try(db_url, dag_id="")
    try:
        _kill(killed_proc)
        closed: list[int] = []
        deadline = time.monotonic() + 30
        while killed not in closed and time.monotonic() < deadline:  # the server notices the closed socket
            with db.connect(db_url, autocommit=True) as reaper:
                closed += lineage.close_abandoned_runs(reaper)
            time.sleep(0.2)
        assert closed == [killed]
        status, error, finished = _run(conn, killed)
        assert status == "abandoned" and finished
        assert error is not None and "database session" in error and "ended without closing the run" in error
        assert _run(conn, live) == ("running", None, False)  # still working: left alone
    finally:
        _kill(live_proc)


def test_a_run_cannot_be_finished_as_abandoned(conn: psycopg.Connection) -> None:
    run_id = lineage.start_run(conn, lineage.RunContext(step="extract"))
    with pytest.raises(ValueError, match="'success' or 'failed'"):
        lineage.finish_run(conn, run_id, status="abandoned")
