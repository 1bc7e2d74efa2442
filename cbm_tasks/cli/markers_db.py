"""``cbm markers`` on the database: ``run``, ``plot``, ``explain``, ``export`` and ``validate`` of ``--aoi A --year Y``.

``cbm_tasks.cli.markers`` parses the command line; when no ``--timeseries`` file is given it
calls these, which work on the CbM database of ``cbm db`` (``CBM_DATABASE_URL`` or the
project-local cluster). Each run is recorded in ``cbm.pipeline_run`` as a command-line run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cbm_tasks.errors import BadInputError, NotFoundError
from cbm_tasks.ops import settings

if TYPE_CHECKING:
    import psycopg

    from cbm_tasks.markers.mowing_explain import MowingExplanation
    from cbm_tasks.markers.params import MarkerParams
    from cbm_tasks.markers.scoring import MarkerValidation
    from cbm_tasks.markers.validation import Predictions

__all__ = ["add_export", "explain", "export", "plot", "run", "stored_lights", "stored_predictions"]


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


@contextmanager
def _stored_set(args: argparse.Namespace, what: str) -> Iterator[tuple[psycopg.Connection, int]]:
    """(connection, parcel set id) of ``--aoi`` / ``--year`` for ``cbm markers validate`` of stored *what*."""
    from cbm_tasks import db
    from cbm_tasks.aoi import find_parcel_set

    _need_set(args, "validate")
    if args.params is not None or args.s2_only:
        raise BadInputError(f"cbm markers validate --aoi/--year scores the stored {what} as their runs made them: "
                            "--params and --s2-only apply to --timeseries only")
    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        yield conn, find_parcel_set(conn, aoi=args.aoi, year=args.year).parcel_set_id


def stored_predictions(args: argparse.Namespace) -> Predictions:
    """The stored events of ``--marker`` of the parcel set ``--aoi`` / ``--year`` (``cbm markers validate``)."""
    from cbm_tasks.report.decisions import stored_predictions as read_stored

    with _stored_set(args, "events") as (conn, parcel_set_id):
        return read_stored(conn, parcel_set_id=parcel_set_id, marker=args.marker,
                           source=f"{args.aoi} {args.year} in the database")


def with_stored_miss_reasons(args: argparse.Namespace, result: MarkerValidation) -> MarkerValidation:
    """*result* (the stored mowings of ``--aoi`` / ``--year``) with the causes of its misses and its false falls.

    Every parcel is judged with the parameters and sensors of its current marker run, as ``cbm markers explain
    --aoi`` judges it.
    """
    from cbm_tasks.markers.scoring import with_miss_reasons
    from cbm_tasks.report.explain import decision_params, explain_stored

    with _stored_set(args, "events") as (conn, parcel_set_id):
        names = sorted({parcel for parcel, _ in result.missed() + result.false()})
        keys = dict(conn.execute("SELECT parcel_id, parcel_key FROM cbm.parcel WHERE parcel_set_id = %s "
                                 "AND parcel_id = ANY(%s)", (parcel_set_id, names)).fetchall())

        params_of_run: dict[int | None, MarkerParams] = {}  # parsed and hash-checked once per run, not per parcel

        def explain(parcel: str) -> tuple[MowingExplanation, MarkerParams] | None:
            if parcel not in keys:
                return None
            explanation, run = explain_stored(conn, parcel_set_id=parcel_set_id, parcel_key=int(keys[parcel]),
                                              parcel_id=parcel, year=args.year, marker="mowing")
            run_id = None if run is None else run.marker_run_id
            if run_id not in params_of_run:
                params_of_run[run_id] = decision_params(run)[0]
            return explanation, params_of_run[run_id]

        return with_miss_reasons(result, explain)


def stored_lights(args: argparse.Namespace) -> tuple[dict[tuple[str, int | None], tuple[str, str]], str, str]:
    """The stored lights of ``--scheme`` in ``--aoi`` / ``--year``, whose they are and how they were made."""
    from cbm_tasks.report.decisions import stored_lights as read_stored

    with _stored_set(args, "lights") as (conn, parcel_set_id):
        lights = read_stored(conn, parcel_set_id=parcel_set_id, scheme=args.scheme)
    return lights, f"{args.aoi} {args.year} in the database", "the stored lights, each with its rules and marker run"


def _parcel(conn: psycopg.Connection, args: argparse.Namespace) -> tuple[int, int]:
    """Return (parcel set id, parcel key) of ``--parcel`` in ``--aoi`` / ``--year``.

    Raises:
        NotFoundError: no such parcel set or parcel.
    """
    from cbm_tasks.aoi import find_parcel_set

    parcel_set = find_parcel_set(conn, aoi=args.aoi, year=args.year)
    row = conn.execute("SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s AND parcel_id = %s",
                       (parcel_set.parcel_set_id, args.parcel)).fetchone()
    if row is None:
        raise NotFoundError(f"parcel {args.parcel!r} is not in the {args.year} parcel set of AOI {args.aoi!r}")
    return parcel_set.parcel_set_id, int(row[0])


def plot(args: argparse.Namespace) -> int:
    """Draw one parcel of a parcel set in the database."""
    from cbm_tasks import db
    from cbm_tasks.markers.db_read import parcel_series
    from cbm_tasks.markers.params import load_params
    from cbm_tasks.markers.plot import plot_parcel  # matplotlib only when a plot is asked for
    from cbm_tasks.report import decisions

    _need_set(args, "plot")
    params = load_params(args.params)
    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        set_id, key = _parcel(conn, args)
        series = parcel_series(conn, parcel_set_id=set_id, parcel_key=key, name=str(args.parcel),
                               overpass_seconds=params.get("data", "overpass_seconds"))
        lights = decisions.lights(conn, parcel_set_id=set_id, parcel_key=key)
        # the events of the markers the parcel's schemes read, as in its audit report
        markers = None if args.all_markers or not lights else decisions.scheme_markers(conn, lights)
    plot_parcel(series, str(args.parcel), params=params, out=args.out, markers=markers)
    sys.stdout.write(f"{args.out}\n")
    return 0


def explain(args: argparse.Namespace) -> int:
    """Explain one parcel's marker decision (or, with --scheme, its light) as its latest marker run made it."""
    from cbm_tasks import db
    from cbm_tasks.report.explain import explain_stored

    _need_set(args, "explain")
    if args.scheme is not None:
        return _explain_light(args)
    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        set_id, key = _parcel(conn, args)
        explanation, run = explain_stored(conn, parcel_set_id=set_id, parcel_key=key, parcel_id=str(args.parcel),
                                          year=args.year, marker=args.marker)
    if run is not None:
        sys.stdout.write(f"marker run {run.marker_run_id} ({run.created_at:%Y-%m-%d %H:%M}), sensors: "
                         f"{'S2 + S1' if run.use_s1 else 'S2 only'}\n")
    explanation.write(sys.stdout)
    if args.csv is not None:
        explanation.write_csv(args.csv)
    return 0


def _explain_light(args: argparse.Namespace) -> int:
    """Explain the parcel's stored light of ``--scheme`` with its rules and its latest marker run's parameters."""
    from cbm_tasks import db
    from cbm_tasks.report.explain import explain_stored_light

    with db.connect(settings.database_url(), autocommit=True, application_name="cbm markers") as conn:
        set_id, key = _parcel(conn, args)
        explanation, light = explain_stored_light(conn, parcel_set_id=set_id, parcel_key=key,
                                                  parcel_id=str(args.parcel), year=args.year, scheme=args.scheme)
    if light is None:
        sys.stdout.write(f"no stored light of scheme {args.scheme}: judged with the shipped rules\n")
    else:
        sys.stdout.write(f"stored light: {light.colour} ({light.reason}, rule {light.rule_id}, rules "
                         f"v{light.rules_version}), decided {light.decided_at:%Y-%m-%d %H:%M}\n")
        if not explanation.matches(light.colour, light.reason, light.rule_id):
            sys.stdout.write("  differs from the evaluation below: images were extracted after the light was decided "
                             "(cbm markers run brings it up to date)\n")
    explanation.write(sys.stdout)
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
