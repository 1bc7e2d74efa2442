"""``cbm audit``: parcel reports, run reports and the reproducibility check.

- ``cbm audit parcel --aoi A --year Y --parcel ID [--scheme S] --out DIR``: HTML and PDF report;
- ``cbm audit run RUN_ID [--out DIR]``: what an Airflow run processed, retried, failed and wrote;
- ``cbm audit verify --aoi A --year Y [--parcel ID]``: recompute markers and lights, list every
  difference (exit status 1 when there is one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cbm_tasks.ops import settings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm audit`` and its commands."""
    parser = subparsers.add_parser("audit", help="audit reports and the reproducibility check")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parcel = commands.add_parser("parcel", help="HTML and PDF audit report of one parcel",
                                 description="Lights, markers, time series and the lineage of every product "
                                 "behind them, with a reproducibility stamp; the images behind the events cut "
                                 "around the parcel (from the store of the CBM_STORE_* variables).")
    parcel.add_argument("--aoi", required=True, help="AOI name")
    parcel.add_argument("--year", required=True, type=int, help="parcel-set year")
    parcel.add_argument("--parcel", required=True, help="parcel id as declared")
    parcel.add_argument("--scheme", help="only this aid scheme's light")
    parcel.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the report files")
    parcel.add_argument("--no-pdf", action="store_true", help="HTML only")
    parcel.add_argument("--no-images", action="store_true",
                        help="without the pictures of the images behind the events (no store access)")
    parcel.set_defaults(func=_parcel)

    run = commands.add_parser("run", help="summary of one Airflow run (from the lineage records)")
    run.add_argument("run_id", metavar="RUN_ID", help="Airflow dag run id, e.g. manual__2025-06-01T00:00:00+00:00")
    run.add_argument("--out", type=Path, metavar="DIR", help="also write RUN_ID.txt and .json here")
    run.set_defaults(func=_run)

    verify = commands.add_parser("verify", help="recompute markers and lights and list every difference")
    verify.add_argument("--aoi", required=True, help="AOI name")
    verify.add_argument("--year", required=True, type=int, help="parcel-set year")
    verify.add_argument("--parcel", help="only this parcel id")
    verify.set_defaults(func=_verify)


def _parcel(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.report.parcel_audit import gather  # matplotlib and weasyprint only for this command
    from cbm_tasks.report.render import write_parcel_report
    from cbm_tasks.store import open_store

    t0 = time.perf_counter()
    store = None if args.no_images else open_store(settings.store_config())
    with db.connect(settings.database_url(), autocommit=True, application_name="cbm audit") as conn:
        audit = gather(conn, aoi=args.aoi, year=args.year, parcel_id=args.parcel, scheme=args.scheme, store=store)
    files = write_parcel_report(audit, args.out, pdf=not args.no_pdf)
    lines = [str(files.html)] + ([str(files.pdf)] if files.pdf else [])
    sys.stdout.write("\n".join(lines) + f"\n({time.perf_counter() - t0:.2f} s)\n")
    return 0


def _run(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.report.run_report import run_report, write_run_report

    with db.connect(settings.database_url(), autocommit=True, application_name="cbm audit") as conn:
        report = run_report(conn, args.run_id)
    sys.stdout.write(report.text() + "\n")
    if args.out is not None:
        sys.stdout.write(f"{write_run_report(report, args.out)}\n")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from cbm_tasks import db
    from cbm_tasks.report.verify import verify_parcel_set

    with db.connect(settings.database_url(), autocommit=True, application_name="cbm audit") as conn:
        result = verify_parcel_set(conn, aoi=args.aoi, year=args.year, parcel_id=args.parcel)
    lines = [f"{result.aoi} {result.year}: {result.parcels_checked} parcels, {result.events_checked} events, "
             f"{result.lights_checked} lights recomputed (marker runs {', '.join(map(str, result.marker_runs))}; "
             f"stored by code {', '.join(result.code_versions)}, recomputed by {result.current_code_version}) "
             f"in {result.seconds:.2f} s",
             f"{len(result.differences)} differences in {len(result.parcels_differing)} parcels"]
    lines += [f"  {d.line()}" for d in result.differences]
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if result.differences else 0
