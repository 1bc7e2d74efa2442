"""Lineage: which task try, code version and parameters wrote which rows.

Every step that changes data opens a ``cbm.pipeline_run`` row and passes its id to the rows
it writes (``cbm.extraction``, ``cbm.marker_run``, ``cbm.traffic_light``), so that an auditor
can go from a traffic light to the marker runs, images, code version and Airflow task try
behind it.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from cbm_tasks import __version__
from cbm_tasks.errors import MigrationError
from cbm_tasks.paths import REPO_ROOT

__all__ = ["RunContext", "code_version", "finish_run", "start_run"]

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
    """Record the start of a run; return its ``pipeline_run_id``. Commits at once, so it survives a failure."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO cbm.pipeline_run (dag_id, run_id, task_id, map_index, try_number, step, code_version, params) "
            "VALUES (%(dag_id)s, %(run_id)s, %(task_id)s, %(map_index)s, %(try_number)s, %(step)s, %(code)s, "
            "%(params)s) RETURNING pipeline_run_id",
            {**asdict(ctx), "code": code_version(), "params": json.dumps(params or {}, sort_keys=True, default=str)},
        ).fetchone()
    if row is None:  # INSERT ... RETURNING gives a row unless the table was changed by hand
        raise MigrationError("cbm.pipeline_run returned no id for a new run; is the schema migrated (cbm db migrate)?")
    return int(row[0])


def finish_run(conn: psycopg.Connection, pipeline_run_id: int, *, status: str, error: str | None = None) -> None:
    """Record the end of a run (``success`` or ``failed``)."""
    if status not in ("success", "failed"):
        raise ValueError(f"run status must be 'success' or 'failed', got {status!r}")
    with conn.transaction():
        conn.execute(
            "UPDATE cbm.pipeline_run SET status = %s, error = %s, finished_at = now() WHERE pipeline_run_id = %s",
            (status, error[-4000:] if error else None, pipeline_run_id),
        )
