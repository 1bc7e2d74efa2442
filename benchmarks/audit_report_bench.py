"""Parcel audit report benchmark: seconds per parcel for `cbm audit parcel` (goal: under 2 s).

Seeds a parcel set with a season of Sentinel-2 and Sentinel-1 statistics in a fresh database of
the project-local cluster (cbm_tasks.demo.series_seed), computes its markers and lights
(cbm_tasks.pipeline.markers), then writes the audit report of --reports parcels, timing the two
parts a user waits for: gathering (database reads, marker figure) and rendering (HTML, PDF).
A peer: the markers core's own `cbm markers plot` (figure only) for the same parcels, so the
ratio shows what the report costs on top of the picture an inspector would look at anyway.
Also times `cbm audit verify` over the whole set.

Usage:
    .venv/bin/python benchmarks/audit_report_bench.py [--parcels 2000] [--reports 10]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from cbm_tasks import db, lineage
from cbm_tasks.demo.series_seed import seed_parcel_set
from cbm_tasks.markers import db_read
from cbm_tasks.markers.params import load_params
from cbm_tasks.markers.plot import plot_parcel
from cbm_tasks.ops import cluster, settings
from cbm_tasks.pipeline.markers import run_parcel_set
from cbm_tasks.report.parcel_audit import gather
from cbm_tasks.report.render import write_parcel_report
from cbm_tasks.report.verify import verify_parcel_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parcels", type=int, default=2000)
    parser.add_argument("--reports", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = settings.local_cluster()
    cluster.start(cfg)
    name = f"cbm_bench_audit_{uuid.uuid4().hex[:8]}"
    cluster.ensure_database(cfg, name)
    try:
        with db.connect(cfg.url(name), autocommit=True) as conn, tempfile.TemporaryDirectory() as folder:
            db.migrate(conn)
            seeded = seed_parcel_set(conn, Path(folder), aoi="bench", year=2018, n_parcels=args.parcels, seed=3)
            run_parcel_set(conn, lineage.RunContext(step="markers"), aoi="bench", year=2018, full=True)
            ids = [f"P{i + 1:07d}" for i in np.linspace(0, args.parcels - 1, args.reports).astype(int)]
            gather_s, render_s, plot_s = [], [], []
            params = load_params()
            for parcel_id in ids:
                t0 = time.perf_counter()
                audit = gather(conn, aoi="bench", year=2018, parcel_id=parcel_id)
                t1 = time.perf_counter()
                write_parcel_report(audit, Path(folder) / "reports")
                t2 = time.perf_counter()
                products = db_read.read_products(conn, seeded.parcel_set_id)
                key = audit.parcel.parcel_key
                read = db_read.read_parcel_series(conn, parcel_set_id=seeded.parcel_set_id, products=products,
                                                  parcel_keys=np.array([key], np.int32))
                plot_parcel(read.series, str(key), params=params, out=Path(folder) / f"{parcel_id}.png")
                t3 = time.perf_counter()
                gather_s.append(t1 - t0)
                render_s.append(t2 - t1)
                plot_s.append(t3 - t2)
            t0 = time.perf_counter()
            result = verify_parcel_set(conn, aoi="bench", year=2018)
            verify_s = time.perf_counter() - t0
    finally:
        cluster.drop_database(cfg, name)
    report = np.array(gather_s) + np.array(render_s)
    lines = [
        f"parcel set: {args.parcels} parcels, {len(seeded.product_ids)} images; {args.reports} reports",
        f"audit report (HTML + PDF): median {np.median(report):.2f} s, max {report.max():.2f} s per parcel "
        f"(gather {np.median(gather_s):.2f} s, render {np.median(render_s):.2f} s); goal < 2 s",
        f"peer `cbm markers plot` (figure only): median {np.median(plot_s):.2f} s; "
        f"report / plot = {np.median(report) / np.median(plot_s):.1f}x",
        f"verify: {result.parcels_checked} parcels, {result.events_checked} events, {result.lights_checked} lights "
        f"in {verify_s:.2f} s ({len(result.differences)} differences)",
    ]
    print("\n".join(lines))  # noqa: T201 - the benchmark's output


if __name__ == "__main__":
    main()
