"""``cbm demo``: build the built-in demo data (local catalogue + parcels)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cbm_tasks.ops import settings

if TYPE_CHECKING:
    from cbm_tasks.demo.data import DemoLayout

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm demo ...`` to the command line."""
    parser = subparsers.add_parser("demo", help="built-in demo data and runs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    build = commands.add_parser(
        "build",
        help="write the demo AOI (real 31UDS cube) as a local catalogue and parcel file; "
        "--synthetic adds a seeded synthetic AOI",
    )
    build.add_argument("--out", type=Path, help="output folder (default: <project>/var/demo)")
    build.add_argument("--cube-dir", type=Path, help="folder of a WorldCereal training cube (NetCDF; default the "
                       "shared 31UDS chip)")
    build.add_argument("--max-products", type=int, help="only the first N dates of each sensor")
    build.add_argument("--synthetic", action="store_true", help="also build the synthetic AOI")
    build.add_argument("--synthetic-parcels", type=int, default=3000, metavar="N", help="(default 3000)")
    build.add_argument("--synthetic-images", type=int, default=40, metavar="M", help="(default 40)")
    build.add_argument("--seed", type=int, default=42, metavar="S", help="synthetic seed (default 42)")
    build.set_defaults(func=_build)
    run = commands.add_parser(
        "run",
        help="build the demo, start PostGIS and Airflow, run cbm_catalogue and cbm_extract on it, print a summary",
    )
    run.add_argument("--out", type=Path, help="demo data folder (default: <project>/var/demo)")
    run.add_argument("--port", type=int, help="Airflow UI port on 127.0.0.1 (default: $CBM_AIRFLOW_PORT or 8080)")
    run.add_argument("--max-products", type=int, help="only the first N dates of each sensor (quick runs)")
    run.add_argument("--cube-dir", type=Path, help="folder of a WorldCereal training cube (NetCDF; default the "
                     "shared 31UDS chip): its chip, register and dates become the demo AOI")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the runs (default 3600)")
    run.set_defaults(func=_run)


def _build(args: argparse.Namespace) -> int:
    from cbm_tasks.demo.data import build_demo, demo_folder  # xarray, rasterio: only when data is built
    from cbm_tasks.demo.synthetic import build_synthetic

    out: Path = args.out or settings.project_dir() / "var" / "demo"
    layouts = [build_demo(demo_folder(out, args.cube_dir), cube_dir=args.cube_dir, max_products=args.max_products)]
    if args.synthetic:
        layouts.append(
            build_synthetic(
                out / "synthetic", n_parcels=args.synthetic_parcels, n_images=args.synthetic_images, seed=args.seed
            )
        )
    for layout in layouts:
        sys.stdout.write(_describe(layout))
    return 0


def _describe(layout: DemoLayout) -> str:
    lines = [
        f"aoi {layout.aoi} (year {layout.year})",
        f"  catalogue root  {layout.catalogue_root}  ({layout.n_s2} S2 L2A, {layout.n_s1} S1 CARD-BS products)",
        f"  parcels         {layout.parcels_file}  ({layout.n_parcels} parcels)",
    ]
    if layout.ground_truth_file is not None:
        lines.append(f"  ground truth    {layout.ground_truth_file}")
    lines.append(f"  import with     cbm parcels import {layout.parcels_file} --aoi {layout.aoi} --year {layout.year}")
    return "\n".join(lines) + "\n"


def _run(args: argparse.Namespace) -> int:
    from cbm_tasks.demo.run import run_demo  # starts services: imported only when asked for

    summary = run_demo(out_dir=args.out, port=args.port, max_products=args.max_products, timeout_s=args.timeout,
                       cube_dir=args.cube_dir)
    sys.stdout.write("\n".join(summary.lines()) + "\n")
    return 0 if summary.ok else 1
