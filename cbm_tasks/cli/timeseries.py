"""``cbm timeseries export``: the per-parcel time series of an AOI and year as CSV or Parquet.

The files and their format: :mod:`cbm_tasks.timeseries.export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbm_tasks.ops import settings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm timeseries ...`` to the command line."""
    parser = subparsers.add_parser("timeseries", help="per-parcel time series")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    export = commands.add_parser(
        "export", help="write the time series of an AOI and year to CSV or Parquet",
        description="Long format: parcel_id, obs_time, product_id, source, band, count, mean, std, min, max, "
        "p25, p50, p75. Class counts (S2 SCL) go to FILE's stem + '_classes' + suffix: parcel_id, obs_time, "
        "product_id, band, class, count.",
    )
    export.add_argument("--aoi", required=True, help="AOI name")
    export.add_argument("--year", required=True, type=int, help="year of the parcel set")
    export.add_argument("--out", required=True, type=Path, metavar="FILE", help="FILE.csv or FILE.parquet")
    export.add_argument("--wide", action="store_true", help="one row per parcel and image, a column per band "
                        "(<band> its mean, <band>_std): parcel_id, obs_time, product_id, source, B02, B02_std, ...")
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from cbm_tasks import db  # pyarrow: loaded only to export
    from cbm_tasks.timeseries.export import export_time_series

    with db.connect(settings.database_url()) as conn:
        result = export_time_series(conn, aoi=args.aoi, year=args.year, out=args.out, wide=args.wide)
    sys.stdout.write(f"{result.path}: {result.n_rows} rows; {result.classes_path}: {result.n_class_rows} rows\n")
    return 0
