"""Lineage: which task try, code version and parameters wrote which rows.

Every step that changes data opens a ``cbm.pipeline_run`` row and passes its id to the rows
it writes (``cbm.extraction``, ``cbm.marker_run``, ``cbm.traffic_light``), so that an auditor
can go from a traffic light to the marker runs, images, code version and Airflow task try
behind it.

A run killed outright (SIGKILL, a lost machine) cannot close its own row. Each run records the
database session that opened it; :func:`close_abandoned_runs` (called by every
:func:`start_run`, so by the next try of a killed task at the latest) marks ``abandoned`` the
runs whose session has ended, and those of an Airflow task that has started a later try.

What a run read and wrote hangs off it in ``cbm.run_input`` / ``cbm.run_output`` (products with
their object-store URIs and checksums, graphs and backend versions, tables with row counts).
Once a run is finished its record is final: the database refuses to change it
(``sql/018_lineage_audit.sql``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from cbm_tasks import __version__
from cbm_tasks.errors import MigrationError
from cbm_tasks.paths import REPO_ROOT

__all__ = ["RunContext", "RunInput", "RunOutput", "close_abandoned_runs", "code_version", "finish_failed", "finish_run",
           "params_hash", "record_io", "start_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunContext:
    """Where a unit of work runs: an Airflow task try, or the command line (all None)."""

    step: str
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None


@dataclass(frozen=True, slots=True)
class RunInput:
    """One thing a run read (a row of ``cbm.run_input``).

    Attributes:
        kind: product, file, graph, backend, dem, params or table.
        name: URI, path, table, graph file or package name.
        product_id: the catalogue product, when it is one.
        checksum: e.g. ``md5:...`` as the catalogue publishes it.
        version: graph, package or parameter-file version.
    """

    kind: str
    name: str
    product_id: int | None = None
    checksum: str | None = None
    version: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RunOutput:
    """One thing a run wrote (a row of ``cbm.run_output``): table rows, a CARD product, a file."""

    kind: str
    name: str
    product_id: int | None = None
    n_rows: int | None = None
    checksum: str | None = None
    detail: dict[str, Any] | None = None


def params_hash(params: dict[str, Any] | None) -> str:
    """Return the sha256 (hex) of the canonical JSON of *params* (sorted keys, no spaces)."""
    canonical = json.dumps(params or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """Return ``<package version>+<git commit>`` (``+dirty`` when the checkout has local edits)."""
    repo = REPO_ROOT
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__  # an installed copy without git history (e.g. a container image)
    return f"{__version__}+{commit}{'.dirty' if dirty else ''}"


def start_run(conn: psycopg.Connection, ctx: RunContext, params: dict[str, Any] | None = None) -> int:
    """Record the start of a run; return its ``pipeline_run_id``. Commits at once, so it survives a failure.

    The run keeps the session of *conn*: keep that connection open until :func:`finish_run`.
    Runs left ``running`` by killed processes are closed first (:func:`close_abandoned_runs`).
    """
    close_abandoned_runs(conn, ctx)
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO cbm.pipeline_run (dag_id, run_id, task_id, map_index, try_number, step, code_version, params, "
            "backend_pid, backend_start, params_hash, host) "
            "SELECT %(dag_id)s, %(run_id)s, %(task_id)s, %(map_index)s, %(try_number)s, %(step)s, %(code)s, "
            "%(params)s, a.pid, a.backend_start, %(hash)s, %(host)s FROM pg_stat_activity a "
            "WHERE a.pid = pg_backend_pid() RETURNING pipeline_run_id",
            {**asdict(ctx), "code": code_version(), "params": json.dumps(params or {}, sort_keys=True, default=str),
             "hash": params_hash(params), "host": socket.gethostname()},
        ).fetchone()
    if row is None:  # INSERT ... RETURNING gives a row unless the table was changed by hand
        raise MigrationError("cbm.pipeline_run returned no id for a new run; is the schema migrated (cbm db migrate)?")
    return int(row[0])


_CLOSE_ABANDONED = """
WITH earlier_try AS (  -- earlier tries of the task now starting (none from the command line)
    SELECT pipeline_run_id FROM cbm.pipeline_run
    WHERE status = 'running' AND %(dag_id)s::text IS NOT NULL AND dag_id = %(dag_id)s::text
      AND run_id = %(run_id)s::text AND task_id = %(task_id)s::text
      AND map_index IS NOT DISTINCT FROM %(map_index)s::int AND try_number < %(try_number)s::int
)
UPDATE cbm.pipeline_run r
SET status = 'abandoned', finished_at = now(), error = CASE
    WHEN r.pipeline_run_id IN (SELECT pipeline_run_id FROM earlier_try)
    THEN format('abandoned: try %%s of the task started while this try was still running', %(try_number)s::int)
    ELSE format('abandoned: its database session (pid %%s) ended without closing the run', r.backend_pid) END
WHERE r.status = 'running' AND r.backend_pid IS DISTINCT FROM pg_backend_pid()
  AND (r.pipeline_run_id IN (SELECT pipeline_run_id FROM earlier_try)
       OR (r.backend_pid IS NOT NULL AND NOT EXISTS (
           -- backend_start is NULL for another role's session without pg_read_all_stats: then the
           -- pid alone counts, and a reused pid keeps the run open until that session ends too
           SELECT FROM pg_stat_activity a
           WHERE a.pid = r.backend_pid AND (a.backend_start IS NULL OR a.backend_start = r.backend_start))))
RETURNING r.pipeline_run_id
"""


def close_abandoned_runs(conn: psycopg.Connection, ctx: RunContext | None = None) -> list[int]:
    """Mark ``abandoned`` the runs still ``running`` whose process is gone; return their ids.

    A run is abandoned when the database session that started it has ended (the process was
    killed or lost its connection, so it can no longer write), or when *ctx* is a later try of
    the same Airflow task (Airflow starts a new try only when the earlier one is over). Runs of
    rows written before this check existed (no session recorded) are left alone.
    """
    keys = asdict(ctx) if ctx is not None else {"dag_id": None, "run_id": None, "task_id": None,
                                                "map_index": None, "try_number": None}
    with conn.transaction():
        closed = [int(r[0]) for r in conn.execute(_CLOSE_ABANDONED, keys).fetchall()]
    if closed:
        log.warning("closed abandoned pipeline runs=%s", closed)
    return closed


def finish_run(conn: psycopg.Connection, pipeline_run_id: int, *, status: str, error: str | None = None) -> None:
    """Record the end of a run (``success`` or ``failed``)."""
    if status not in ("success", "failed"):
        raise ValueError(f"run status must be 'success' or 'failed', got {status!r}")
    with conn.transaction():
        conn.execute(
            "UPDATE cbm.pipeline_run SET status = %s, error = %s, finished_at = now() WHERE pipeline_run_id = %s",
            (status, error[-4000:] if error else None, pipeline_run_id),
        )


def finish_failed(conn: psycopg.Connection, pipeline_run_id: int, err: BaseException | str) -> None:
    """Record that a run failed with *err*, from the error handler that is about to re-raise it.

    A database that fails too (the failure may be the lost connection itself) only logs a warning:
    it must not replace the original error. The run stays ``running`` until the next
    :func:`start_run` closes it as ``abandoned`` (its session is gone).
    """
    error = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    try:
        finish_run(conn, pipeline_run_id, status="failed", error=error)
    except psycopg.Error as db_err:
        log.warning("could not record pipeline_run %d as failed: %s", pipeline_run_id, db_err)


def record_io(conn: psycopg.Connection, pipeline_run_id: int, *, inputs: Sequence[RunInput] = (),
              outputs: Sequence[RunOutput] = ()) -> None:
    """Record what a running run read and wrote (before :func:`finish_run`; appends, never replaces).

    Raises:
        psycopg.errors.InsufficientPrivilege: the run is already finished (the database refuses).
    """
    if not inputs and not outputs:
        return
    with conn.transaction(), conn.cursor() as cur:
        start = cur.execute(
            "SELECT coalesce(max(seq), 0) FROM (SELECT seq FROM cbm.run_input WHERE pipeline_run_id = %(id)s "
            "UNION ALL SELECT seq FROM cbm.run_output WHERE pipeline_run_id = %(id)s) s", {"id": pipeline_run_id},
        ).fetchone()
        seq = int(start[0]) if start else 0
        for item in inputs:
            seq += 1
            cur.execute(
                "INSERT INTO cbm.run_input (pipeline_run_id, seq, kind, name, product_id, checksum, version, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (pipeline_run_id, seq, item.kind, item.name, item.product_id, item.checksum, item.version,
                 json.dumps(item.detail or {}, sort_keys=True, default=str)),
            )
        for out in outputs:
            seq += 1
            cur.execute(
                "INSERT INTO cbm.run_output (pipeline_run_id, seq, kind, name, product_id, n_rows, checksum, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (pipeline_run_id, seq, out.kind, out.name, out.product_id, out.n_rows, out.checksum,
                 json.dumps(out.detail or {}, sort_keys=True, default=str)),
            )
