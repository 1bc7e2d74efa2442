"""Read lineage back: the runs behind a parcel's rows and the products they read.

``cbm.pipeline_run`` (with ``cbm.run_input`` / ``cbm.run_output``) records each task try that
changed data; ``cbm.extraction`` points at the run that wrote an image's statistics of a parcel
set, and a CARD product at the run that produced it (a ``run_output`` of kind ``product``). These
queries put them side by side for the audit report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

__all__ = ["ProductLineage", "RunRecord", "products_for_parcel", "run_record"]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One ``cbm.pipeline_run`` row and what it read (inputs as ``kind name [checksum] [version]``)."""

    pipeline_run_id: int
    step: str
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    map_index: int | None
    try_number: int | None
    code_version: str
    params_hash: str | None
    host: str | None
    status: str
    started_at: datetime
    finished_at: datetime | None
    inputs: tuple[str, ...] = ()

    @property
    def airflow_task(self) -> str:
        """``dag/run/task[map] try n``, or ``command line``."""
        if self.dag_id is None:
            return "command line"
        mapped = f"[{self.map_index}]" if self.map_index is not None and self.map_index >= 0 else ""
        return f"{self.dag_id} / {self.run_id} / {self.task_id}{mapped} try {self.try_number}"


@dataclass(frozen=True, slots=True)
class ProductLineage:
    """A product whose statistics a parcel's time series holds, with the runs that made them."""

    product_id: int
    name: str
    product_type: str
    acquired_at: datetime
    location: str
    checksum: str | None
    derived_from: tuple[int, ...]
    parcel_set_version: int
    extracted_at: datetime
    extraction_run: RunRecord | None
    card_run: RunRecord | None


_RUN_COLUMNS = ("pipeline_run_id, step, dag_id, run_id, task_id, map_index, try_number, code_version, params_hash, "
                "host, status, started_at, finished_at")


def _inputs(conn: psycopg.Connection, run_ids: list[int]) -> dict[int, tuple[str, ...]]:
    rows = conn.execute(
        "SELECT pipeline_run_id, kind, name, checksum, version FROM cbm.run_input WHERE pipeline_run_id = ANY(%s) "
        "ORDER BY pipeline_run_id, seq", (run_ids,),
    ).fetchall()
    found: dict[int, list[str]] = {}
    for run_id, kind, name, checksum, version in rows:
        text = f"{kind} {name}" + (f" {checksum}" if checksum else "") + (f" v{version}" if version else "")
        found.setdefault(int(run_id), []).append(text)
    return {run_id: tuple(texts) for run_id, texts in found.items()}


def _runs(conn: psycopg.Connection, run_ids: list[int]) -> dict[int, RunRecord]:
    if not run_ids:
        return {}
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM cbm.pipeline_run WHERE pipeline_run_id = ANY(%s)",  # noqa: S608 (constant)
        (run_ids,),
    ).fetchall()
    inputs = _inputs(conn, run_ids)
    return {int(run_id): RunRecord(int(run_id), step, dag_id, airflow_run, task_id, map_index, try_number, code,
                                   digest, host, status, started, finished, inputs.get(int(run_id), ()))
            for (run_id, step, dag_id, airflow_run, task_id, map_index, try_number, code, digest, host, status,
                 started, finished) in rows}


def run_record(conn: psycopg.Connection, pipeline_run_id: int) -> RunRecord | None:
    """Return one run with its inputs, or None when there is no such run."""
    with conn.transaction():
        return _runs(conn, [pipeline_run_id]).get(pipeline_run_id)


def products_for_parcel(conn: psycopg.Connection, *, parcel_set_id: int, parcel_key: int) -> list[ProductLineage]:
    """Return the products with statistics of the parcel, by acquisition time, with their lineage.

    Args:
        conn: CbM database.
        parcel_set_id: the parcel set.
        parcel_key: the parcel in it.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows: list[dict[str, Any]] = cur.execute(
            "SELECT pr.product_id, pr.name, pr.product_type, pr.acquired_at, pr.location, pr.checksum, "
            "       coalesce(pr.derived_from, '{}') AS derived_from, e.parcel_set_version, e.extracted_at, "
            "       e.pipeline_run_id AS extraction_run_id, "
            "       (SELECT o.pipeline_run_id FROM cbm.run_output o JOIN cbm.pipeline_run r USING (pipeline_run_id) "
            "        WHERE o.kind = 'product' AND o.product_id = pr.product_id AND r.status = 'success' "
            "        ORDER BY o.pipeline_run_id DESC LIMIT 1) AS card_run_id "
            "FROM cbm.parcel_obs ob "
            "JOIN cbm.extraction e ON e.parcel_set_id = ob.parcel_set_id AND e.product_id = ob.product_id "
            "JOIN cbm.product pr ON pr.product_id = ob.product_id "
            "WHERE ob.parcel_set_id = %s AND ob.parcel_key = %s ORDER BY pr.acquired_at, pr.product_id",
            (parcel_set_id, parcel_key),
        ).fetchall()
        run_ids = sorted({int(r[k]) for r in rows for k in ("extraction_run_id", "card_run_id") if r[k] is not None})
        runs = _runs(conn, run_ids)
    return [
        ProductLineage(
            product_id=int(r["product_id"]), name=r["name"], product_type=r["product_type"],
            acquired_at=r["acquired_at"], location=r["location"], checksum=r["checksum"],
            derived_from=tuple(r["derived_from"]), parcel_set_version=int(r["parcel_set_version"]),
            extracted_at=r["extracted_at"],
            extraction_run=runs.get(int(r["extraction_run_id"])) if r["extraction_run_id"] is not None else None,
            card_run=runs.get(int(r["card_run_id"])) if r["card_run_id"] is not None else None,
        )
        for r in rows
    ]
