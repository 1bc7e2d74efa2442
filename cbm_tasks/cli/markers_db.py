"""``cbm markers`` on the database: ``run --aoi A --year Y``, ``plot|explain --aoi A --year Y --parcel ID``, ``export``.

``cbm_tasks.cli.markers`` parses the command line; when no ``--timeseries`` file is given it
calls these, which work on the CbM database of ``cbm db`` (``CBM_DATABASE_URL`` or the
project-local cluster). Each run is recorded in ``cbm.pipeline_run`` as a command-line run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cbm_tasks.errors import BadInputError, NotFoundError
from cbm_tasks.ops import settings

if TYPE_CHECKING:
    import psycopg

    from cbm_tasks.markers.series import SeriesTable

__all__ = ["add_export", "explain", "export", "plot", "run"]


def _need_set(args: argparse.Namespace, action: str) -> None:
    if args.aoi is None or args.year is None:
        raise BadInputError(f"cbm markers {action}: give --timeseries FILE, or --aoi and --year for the database")


def run(args: argparse.Namespace) -> int:
    """Markers and lights of a parcel set in the database; prints the lights per scheme."""
    from cbm_tasks import db, lineage  # the marker engine (numpy, numba): loaded only to run it
    from cbm_tasks.pipeline.markers import lights_summary, run_parcel_set

    _need_set(args, "run")
    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        outcome = run_parcel_set(conn, lineage.RunContext(step="markers"), aoi=args.aoi, year=args.year,
                                 scheme=args.scheme, full=args.full, rules_path=args.rules, params_path=args.params,
                                 use_s1=not args.s2_only)
        summary = lights_summary(conn, aoi=args.aoi, year=args.year)
    done = ("nothing new to compute" if outcome.marker_run_id is None else
            f"marker run {outcome.marker_run_id} ({outcome.scope}): {outcome.parcels} parcels, {outcome.events} "
            f"events, {outcome.lights} lights in {outcome.seconds:.1f} s")
    lines = [f"{args.aoi} {args.year}: {done}"]
    for scheme, colours in summary.items():
        parts = [f"{colour} {sum(reasons.values())} ({', '.join(f'{r} {n}' for r, n in reasons.items())})"
                 for colour, reasons in colours.items()]
        lines.append(f"  {scheme}: " + "; ".join(parts))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _parcel_series(conn: psycopg.Connection, args: argparse.Namespace) -> tuple[int, int, SeriesTable]:
    """Return (parcel set id, parcel key, time series named by the declared id) of ``--parcel``.

    Raises:
        NotFoundError: no such parcel set or parcel, or the parcel has no observation yet.
    """
    import numpy as np

    from cbm_tasks.aoi import find_parcel_set
    from cbm_tasks.markers import db_read

    parcel_set = find_parcel_set(conn, aoi=args.aoi, year=args.year)
    row = conn.execute("SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_id = %s",
                       (parcel_set.parcel_set_id, args.parcel)).fetchone()
    if row is None:
        raise NotFoundError(f"parcel {args.parcel!r} is not in the {args.year} parcel set of AOI {args.aoi!r}")
    read = db_read.read_parcel_series(conn, parcel_set_id=parcel_set.parcel_set_id,
                                      products=db_read.read_products(conn, parcel_set.parcel_set_id),
                                      parcel_keys=np.array([row[0]], np.int32))
    if read.series.n_parcels == 0:
        raise NotFoundError(f"parcel {args.parcel!r} of AOI {args.aoi!r} {args.year} has no observation yet "
                            "(cbm extract writes them)")
    series = dataclasses.replace(read.series, parcel_ids=np.array([str(args.parcel)]))
    return parcel_set.parcel_set_id, int(row[0]), series


def plot(args: argparse.Namespace) -> int:
    """Draw one parcel of a parcel set in the database."""
    from cbm_tasks import db
    from cbm_tasks.markers.params import load_params
    from cbm_tasks.markers.plot import plot_parcel  # matplotlib only when a plot is asked for
    from cbm_tasks.report import decisions

    _need_set(args, "plot")
    params = load_params(args.params)
    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        set_id, key, series = _parcel_series(conn, args)
        lights = decisions.lights(conn, parcel_set_id=set_id, parcel_key=key)
        # the events of the markers the parcel's schemes read, as in its audit report
        markers = None if args.all_markers or not lights else decisions.scheme_markers(conn, lights)
    plot_parcel(series, str(args.parcel), params=params, out=args.out, markers=markers)
    sys.stdout.write(f"{args.out}\n")
    return 0


def explain(args: argparse.Namespace) -> int:
    """Explain the mowing decision of one parcel with the parameters of its latest marker run."""
    from cbm_tasks import db
    from cbm_tasks.markers.mowing_explain import explain_mowing
    from cbm_tasks.markers.params import default_params
    from cbm_tasks.report import decisions
    from cbm_tasks.report.recorded import recorded_params

    _need_set(args, "explain")
    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        set_id, key, series = _parcel_series(conn, args)
        current = decisions.current_runs(conn, parcel_set_id=set_id, parcel_key=key)
        run = decisions.marker_run(conn, current[key][0]) if key in current else None
    # the parameters and sensors the decision was made with; the defaults before any run
    params = default_params() if run is None else recorded_params(run.params, expected_hash=run.params_hash)
    explanation = explain_mowing(series, str(args.parcel), params, use_s1=True if run is None else run.use_s1,
                                 year=args.year)
    if run is not None:
        sys.stdout.write(f"marker run {run.marker_run_id} ({run.created_at:%Y-%m-%d %H:%M}), sensors: "
                         f"{'S2 + S1' if run.use_s1 else 'S2 only'}\n")
    explanation.write(sys.stdout)
    if args.csv is not None:
        explanation.write_csv(args.csv)
    return 0


def add_export(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm markers export``."""
    parser = commands.add_parser("export", help="traffic lights with parcel geometry to GeoPackage or CSV",
                                 description="Write the lights of a parcel set (view cbm.traffic_light_map) to "
                                 "FILE.gpkg (layer traffic_lights, EPSG:4326) or FILE.csv (no geometry).")
    parser.add_argument("--aoi", required=True, help="AOI name")
    parser.add_argument("--year", required=True, type=int, help="parcel-set year")
    parser.add_argument("--scheme", help="only this scheme")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="FILE.gpkg or FILE.csv")
    parser.set_defaults(func=export)


def export(args: argparse.Namespace) -> int:
    """Export the lights."""
    from cbm_tasks import db
    from cbm_tasks.markers.export import export_lights  # geopandas: only to export

    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        n = export_lights(conn, aoi=args.aoi, year=args.year, out=args.out, scheme=args.scheme)
    sys.stdout.write(f"{args.out}: {n} lights\n")
    return 0
