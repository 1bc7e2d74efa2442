"""What one Airflow run did, from the lineage it left: processed, retried, failed, rows, time.

Every task try that changes data writes a ``cbm.pipeline_run`` row with the Airflow run id, and
its outputs in ``cbm.run_output``; this module reads them back for one run id (``cbm audit run``,
and the ``cbm_audit`` DAG after each markers run). Only the database is read: the report holds
for any executor and survives Airflow's own metadata clean-up.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from cbm_tasks.errors import NotFoundError

__all__ = ["RunReport", "TaskLine", "run_report", "write_run_report"]

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True, slots=True)
class TaskLine:
    """One task (or mapped task instance) of the run: its tries and what its last try did."""

    dag_id: str
    task_id: str
    map_index: int | None
    step: str
    tries: int
    status: str  # of the last try
    error: str | None
    seconds: float | None
    rows_written: int
    inputs: list[str]
    units: int = 1  # units of work with their own lineage runs (the images of an extraction batch)


@dataclass(frozen=True, slots=True)
class RunReport:
    """The summary of one Airflow run id."""

    run_id: str
    dag_ids: list[str]
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None
    processed: int
    succeeded: int
    failed: int
    retried: int
    running: int
    rows_written: int
    rows_by_table: dict[str, int]
    code_versions: list[str]
    tasks: list[TaskLine]

    def text(self) -> str:
        """The report as lines of text."""
        lines = [f"run {self.run_id} ({', '.join(self.dag_ids)}): {self.processed} task instances, "
                 f"{self.succeeded} succeeded, {self.failed} failed, {self.retried} retried, {self.running} running",
                 f"  started {self.started_at:%Y-%m-%d %H:%M:%S} UTC, "
                 + (f"took {self.seconds:.1f} s" if self.seconds is not None else "not finished"),
                 f"  rows written {self.rows_written}: "
                 + (", ".join(f"{table} {n}" for table, n in self.rows_by_table.items()) or "none"),
                 f"  code {', '.join(self.code_versions)}"]
        for task in self.tasks:
            mapped = f"[{task.map_index}]" if task.map_index is not None and task.map_index >= 0 else ""
            took = f"{task.seconds:.1f} s" if task.seconds is not None else "-"
            lines.append(f"  {task.task_id}{mapped}: {task.status} after {task.tries} "
                         f"{'try' if task.tries == 1 else 'tries'}, {took}, {task.rows_written} rows"
                         + (f" in {task.units} runs" if task.units > 1 else "")
                         + (f"; {task.error.splitlines()[0][:200]}" if task.error and task.status != "success" else ""))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return json.loads(json.dumps(asdict(self), default=str))  # type: ignore[no-any-return]


def run_report(conn: psycopg.Connection, run_id: str) -> RunReport:
    """Summarise the lineage records of the Airflow run *run_id* (of any DAG).

    Raises:
        NotFoundError: no task of that run recorded anything.
    """
    with conn.transaction():
        rows = conn.execute(
            "SELECT r.pipeline_run_id, r.dag_id, r.task_id, r.map_index, r.try_number, r.step, r.status, r.error, "
            "       r.started_at, r.finished_at, r.code_version, "
            "       coalesce((SELECT sum(o.n_rows) FROM cbm.run_output o WHERE o.pipeline_run_id = r.pipeline_run_id "
            "                 AND o.kind = 'table'), 0), "
            "       coalesce((SELECT array_agg(i.name ORDER BY i.seq) FROM cbm.run_input i "
            "                 WHERE i.pipeline_run_id = r.pipeline_run_id), '{}'), "
            "       coalesce((SELECT jsonb_object_agg(o.name, o.n_rows) FROM cbm.run_output o "
            "                 WHERE o.pipeline_run_id = r.pipeline_run_id AND o.kind = 'table'), '{}'), "
            "       r.params_hash "
            "FROM cbm.pipeline_run r WHERE r.run_id = %s "
            "ORDER BY r.dag_id, r.task_id, r.map_index NULLS FIRST, r.try_number NULLS FIRST, r.pipeline_run_id",
            (run_id,),
        ).fetchall()
    if not rows:
        raise NotFoundError(f"Airflow run {run_id!r} left no lineage record (cbm.pipeline_run); "
                            "is it the run id of a DAG that changes data?")
    tasks: dict[tuple[str, str, int | None], list[tuple[Any, ...]]] = {}
    for row in rows:
        tasks.setdefault((row[1], row[2], row[3]), []).append(row)
    lines: list[TaskLine] = []
    by_table: dict[str, int] = {}
    for (dag_id, task_id, map_index), task_rows in tasks.items():
        line, written = _task_line(dag_id, task_id, map_index, task_rows)
        lines.append(line)
        for table, n in written.items():
            by_table[table] = by_table.get(table, 0) + n
    started = min(row[8] for row in rows)
    running = sum(1 for line in lines if line.status == "running")
    finished = None if running else max(row[9] for row in rows if row[9] is not None)
    return RunReport(
        run_id=run_id, dag_ids=sorted({row[1] for row in rows if row[1]}), started_at=started, finished_at=finished,
        seconds=None if finished is None else round((finished - started).total_seconds(), 3),
        processed=len(lines), succeeded=sum(1 for line in lines if line.status == "success"),
        failed=sum(1 for line in lines if line.status not in ("success", "running")),
        retried=sum(1 for line in lines if line.tries > 1), running=running,
        rows_written=sum(by_table.values()), rows_by_table=dict(sorted(by_table.items())),
        code_versions=sorted({row[10] for row in rows}), tasks=lines,
    )


def _task_line(dag_id: str, task_id: str, map_index: int | None,
               rows: list[tuple[Any, ...]]) -> tuple[TaskLine, dict[str, int]]:
    """One task instance from its pipeline runs (in try order); also the rows it wrote per table.

    A task instance may hold several units of work, each with its own run per try (a
    ``cbm_extract`` batch: one run per image). A unit is known by its parameters (the same in
    every try); its last run says what became of it. The task's status is the worst of its
    units' (running, then failed or abandoned, then success).
    """
    units: dict[Any, tuple[Any, ...]] = {}
    for row in rows:  # ordered by try, then run id: the last run of a unit wins
        units[row[14]] = row
    last = list(units.values())
    unfinished = [row for row in last if row[6] == "running"]
    bad = [row for row in last if row[6] not in ("success", "running")]
    decisive = unfinished[0] if unfinished else bad[0] if bad else last[-1]
    seconds = None if any(row[9] is None for row in last) else sum((row[9] - row[8]).total_seconds() for row in last)
    written: dict[str, int] = {}
    for row in last:
        if row[6] == "success":
            for table, n in (row[13] or {}).items():
                written[table] = written.get(table, 0) + int(n or 0)
    tries = len({row[4] for row in rows}) if all(row[4] is not None for row in rows) else len(rows)
    line = TaskLine(dag_id, task_id, map_index, decisive[5], tries, decisive[6], decisive[7], seconds,
                    sum(int(row[11]) for row in last), [name for row in last for name in row[12]], units=len(last))
    return line, written


def write_run_report(report: RunReport, out_dir: Path) -> Path:
    """Write ``<run id>.json`` and ``.txt`` into *out_dir* (created); return the text file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _SAFE.sub("_", report.run_id)
    for suffix, content in ((".json", json.dumps(report.as_dict(), indent=1)), (".txt", report.text() + "\n")):
        partial = out_dir / f".{stem}{suffix}.partial"
        partial.write_text(content)
        os.replace(partial, out_dir / f"{stem}{suffix}")
    return out_dir / f"{stem}.txt"
