"""A small parcel set with stored time series, extraction lineage, markers and lights, for the audit tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg

from cbm_tasks import lineage
from cbm_tasks.demo.series_seed import seed_parcel_set
from cbm_tasks.pipeline.markers import run_parcel_set

AOI, YEAR = "audited", 2018
MARKERS_RUN = lineage.RunContext(step="markers", dag_id="cbm_markers", run_id="manual__audit", task_id="markers",
                                 map_index=-1, try_number=1)


@dataclass(frozen=True, slots=True)
class Seeded:
    parcel_set_id: int
    product_ids: tuple[int, ...]
    extraction_runs: dict[int, int]  # product id -> pipeline_run_id


def seed(conn: psycopg.Connection, tmp_path: Path, *, n_parcels: int = 12) -> Seeded:
    """Seed the set, record an extraction run per image (as cbm_extract does), compute markers and lights."""
    seeded = seed_parcel_set(conn, tmp_path / "parcels", aoi=AOI, year=YEAR, n_parcels=n_parcels, seed=7)
    runs: dict[int, int] = {}
    for map_index, product_id in enumerate(seeded.product_ids):
        ctx = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="scheduled__seed", task_id="extract",
                                 map_index=map_index, try_number=1)
        run_id = lineage.start_run(conn, ctx, {"product_id": product_id, "aoi": AOI, "year": YEAR})
        location, checksum = conn.execute("SELECT location, checksum FROM cbm.product WHERE product_id = %s",
                                          (product_id,)).fetchone()
        lineage.record_io(conn, run_id,
                          inputs=[lineage.RunInput("product", location, product_id=product_id, checksum=checksum)],
                          outputs=[lineage.RunOutput("table", "cbm.parcel_obs", product_id=product_id,
                                                     n_rows=n_parcels)])
        conn.execute("UPDATE cbm.extraction SET pipeline_run_id = %s WHERE product_id = %s", (run_id, product_id))
        lineage.finish_run(conn, run_id, status="success")
        runs[product_id] = run_id
    run_parcel_set(conn, MARKERS_RUN, aoi=AOI, year=YEAR, full=True)
    return Seeded(seeded.parcel_set_id, seeded.product_ids, runs)
