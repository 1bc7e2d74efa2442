"""``cbm markers``: markers and traffic lights from a time-series file (no database needed).

``cbm markers run --timeseries FILE --out DIR`` writes ``DIR/events.csv`` and
``DIR/traffic_lights.csv``; ``cbm markers plot --timeseries FILE --parcel ID --out F.png`` draws
the parcel's series with its events, ``cbm markers explain`` lists its NDVI falls and why each is or
is not a mowing (``--marker harvest``: its crop cycles and why each is or is not a harvest;
``--marker bare_soil``: its observations below the soil line and its runs of bare soil;
``--marker emergence``: its rises of NDVI through the emergence threshold; ``--scheme S``: why
its traffic light of scheme S has its colour, rule by rule), ``cbm markers validate --timeseries FILE
--truth T`` scores a marker's events against the agency's own ground truth (``cbm_tasks.markers.scoring``). Rules
and parameters are validated before the series is read, and nothing is written when any input is
invalid. Without ``--timeseries``, ``run``, ``plot`` and ``explain`` work on the parcel set of
``--aoi`` and ``--year`` in the database, and ``export`` writes its lights (``cbm_tasks.cli.markers_db``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cbm_tasks.cli import markers_db
from cbm_tasks.errors import BadInputError
from cbm_tasks.markers.explain import EXPLAINED_MARKERS

if TYPE_CHECKING:
    from cbm_tasks.markers.params import MarkerParams
    from cbm_tasks.markers.scoring import MarkerValidation

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm markers run|plot|explain|validate|export`` to the command line."""
    parser = subparsers.add_parser("markers", help="markers and traffic lights from per-parcel time series")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    run = commands.add_parser(
        "run", help="compute markers and traffic lights from a time-series file",
        description="Read FILE (long format of 'cbm timeseries export': CSV, CSV.GZ or Parquet, with its "
        "_classes companion when present), compute the markers and the traffic light of every parcel and "
        "scheme, write DIR/events.csv and DIR/traffic_lights.csv.")
    run.add_argument("--timeseries", type=Path, metavar="FILE",
                     help="time-series file (without it: the parcel set of --aoi and --year in the database)")
    run.add_argument("--out", type=Path, metavar="DIR", help="output folder (created; with --timeseries)")
    run.add_argument("--rules", type=Path, metavar="FILE", help="scheme rules YAML (default: the shipped rules)")
    run.add_argument("--params", type=Path, metavar="FILE", help="marker parameters YAML overriding the defaults")
    crops = run.add_mutually_exclusive_group()
    crops.add_argument("--crops", type=Path, metavar="FILE", help="CSV/Parquet with parcel_id and crop_code")
    crops.add_argument("--crop-column", metavar="NAME", help="crop code column of the time-series file")
    run.add_argument("--aoi", help="AOI whose crop -> scheme mapping applies (default mapping otherwise)")
    run.add_argument("--year", type=int, help="season year of the rule windows (default: per parcel, every "
                     "year it has clear observations in: a light per season)")
    run.add_argument("--s2-only", action="store_true", help="ignore Sentinel-1 (the Sentinel-2-only variant)")
    run.add_argument("--scheme", help="database: evaluate and replace only this scheme's lights")
    run.add_argument("--full", action="store_true", help="database: every parcel, not only those with new "
                     "observations")
    run.set_defaults(func=_run)
    plot = commands.add_parser("plot", help="draw one parcel's series and events to a PNG",
                               description="NDVI, S1 backscatter (dB) and coherence of one parcel; cloudy "
                               "observations grey, detected events marked.")
    _series_arguments(plot, "time-series file (without it: --aoi and --year in the database)")
    plot.add_argument("--parcel", required=True, metavar="ID", help="parcel id")
    plot.add_argument("--out", required=True, type=Path, metavar="F.png", help="PNG file to write")
    plot.add_argument("--params", type=Path, metavar="FILE", help="marker parameters YAML")
    plot.add_argument("--all-markers", action="store_true",
                      help="database: draw every marker's events (default: those the parcel's schemes read, as "
                      "the audit report does; every marker when the parcel has no light)")
    plot.set_defaults(func=_plot)
    explain = commands.add_parser(
        "explain", help="why a parcel has or lacks a mowing (a harvest, bare soil, an emergence): every NDVI fall "
        "(crop cycle, low observation, rise) and the tests it failed",
        description="List the parcel's Sentinel-2 observations of the mowing season that were not used (and "
        "why) and every fall of NDVI between used observations, judged by the mowing marker's own tests: "
        "mowing, or which tests it failed. With --marker harvest: every crop cycle (peak and the low that "
        "ended it) judged by the harvest marker's own tests. With --marker bare_soil: every observation below "
        "the soil line (bare soil, not bare by its soil index, or not used and why) and the runs of bare soil "
        "with their confidence. With --marker emergence: every rise of NDVI through the emergence threshold "
        "judged by the emergence marker's own tests. With --scheme S: why the parcel's traffic light of scheme S "
        "has its colour: per rule the window, the clear images, the longest gap (where, and why the images in it "
        "were not used) and the events with their confidence.")
    _series_arguments(explain, "time-series file (without it: --aoi and --year in the database, with the parameters "
                      "of the parcel's latest marker run)", "database: parcel-set year; file: only this calendar year")
    explain.add_argument("--parcel", required=True, metavar="ID", help="parcel id")
    explain.add_argument("--marker", choices=EXPLAINED_MARKERS, default="mowing",
                         help="mowing: every NDVI fall judged as a cut (default); harvest: every crop cycle judged as "
                         "a harvest; bare_soil: every observation below the soil line judged as bare soil; "
                         "emergence: every rise through the emergence threshold judged as an emergence")
    explain.add_argument("--scheme", metavar="S",
                         help="explain the traffic light of this aid scheme instead of a marker")
    _file_model_arguments(explain)
    explain.add_argument("--csv", type=Path, metavar="FILE",
                         help="also write the falls (the crop cycles, low observations, rises) to this CSV file")
    explain.set_defaults(func=_explain)
    validate = commands.add_parser(
        "validate", help="score a marker's events against your own ground truth (precision, recall, F1)",
        description="Run the markers on FILE as 'cbm markers run' does (or take the events stored for --aoi and "
        "--year, those the traffic lights were decided on) and score one marker's event dates against "
        "ground truth: a CSV with parcel_id (or ID, plot_id) and date (YYYY-MM-DD or DD/MM/YYYY; optional event column "
        "naming the marker; an empty date: checked, no such event), or a survey folder (surveyed.csv + truth.csv). "
        "MODCiX protocol: per parcel, detected and true dates matched one to one within the tolerance. Prints "
        "precision, recall and F1 with 95 % bootstrap intervals over the parcels, the date error, the share of "
        "checked negatives without a detection and, per tenth of confidence, how many detections were hits; for "
        "mowing also the cause of each miss (no data, clouds, or the marker test that rejected the fall near "
        "it). From the database only the dated checks of the parcel set's year count. --out DIR also writes "
        "matches.csv (every hit, miss with its cause and false detection with its fall) and scores.json.")
    _series_arguments(validate, "time-series file (long format of 'cbm timeseries export'); without it: the events "
                      "stored for --aoi and --year in the database, each parcel's from its current marker run")
    validate.add_argument("--truth", type=Path, required=True, metavar="T",
                          help="ground-truth CSV file or survey folder")
    validate.add_argument("--marker", choices=EXPLAINED_MARKERS,
                          help="the marker whose events are scored (default mowing)")
    validate.add_argument("--scheme", metavar="S",
                          help="score the traffic lights of aid scheme S instead, against check outcomes (a CSV "
                          "with parcel_id and compliant yes/no; optional scheme and season columns): how many "
                          "compliant parcels are lit red, non-compliant ones green, and how many yellow")
    _file_model_arguments(validate)
    validate.add_argument("--tolerance-days", type=int, default=12, metavar="N",
                          help="largest date difference of a hit (default 12, as MODCiX)")
    validate.add_argument("--vary", metavar="SECTION.KEY=V1,V2,...",
                          help="file: also score each of these values of one marker parameter (e.g. "
                          "mowing.min_confidence=0.4,0.5,0.6): the trade-off of your own checks, row by row "
                          "(with --out: DIR/vary.csv)")
    validate.add_argument("--out", type=Path, metavar="DIR", help="also write DIR/matches.csv and DIR/scores.json")
    validate.set_defaults(func=_validate)
    markers_db.add_export(commands)


def _file_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--params``, ``--rules`` and ``--s2-only`` of a command that recomputes the markers of a file.

    From the database the stored marker run's own parameters, rules and sensors apply.
    """
    parser.add_argument("--params", type=Path, metavar="FILE",
                        help="file: marker parameters YAML overriding the defaults")
    parser.add_argument("--rules", type=Path, metavar="FILE", help="file, with --scheme: scheme rules YAML")
    parser.add_argument("--s2-only", action="store_true",
                        help="file: ignore Sentinel-1, as a --s2-only run (the Sentinel-2-only variant)")


def _series_arguments(parser: argparse.ArgumentParser, timeseries_help: str,
                      year_help: str = "database: parcel-set year") -> None:
    """``--timeseries FILE``, or ``--aoi`` and ``--year`` of a parcel set in the database."""
    parser.add_argument("--timeseries", type=Path, metavar="FILE", help=timeseries_help)
    parser.add_argument("--aoi", help="database: AOI name")
    parser.add_argument("--year", type=int, help=year_help)


def _run(args: argparse.Namespace) -> int:
    if args.timeseries is None:
        return markers_db.run(args)
    if args.out is None:
        raise BadInputError("cbm markers run --timeseries: --out DIR is required")
    # numpy, numba, pyarrow: loaded only when markers are computed
    from cbm_tasks.markers.engine import run_markers
    from cbm_tasks.markers.params import load_params
    from cbm_tasks.markers.reader import read_series
    from cbm_tasks.markers.writer import LIGHT_COLUMNS, read_crops, write_csv, write_events
    from cbm_tasks.traffic_light.evaluate import evaluate_lights
    from cbm_tasks.traffic_light.rules import load_rules

    rules = load_rules(args.rules)  # validated before anything is read or written
    params = load_params(args.params)
    crops = None
    if args.crops is not None:
        crops = read_crops(args.crops)
    elif args.crop_column is not None:
        crops = read_crops(args.timeseries, column=args.crop_column)
    series = read_series(args.timeseries)
    result = run_markers(series, params, use_s1=not args.s2_only)
    lights = list(evaluate_lights(result, rules, crops=crops, aoi=args.aoi, year=args.year))
    if args.out.exists() and not args.out.is_dir():
        raise BadInputError(f"--out {args.out}: exists and is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    n_events = write_events(args.out / "events.csv", result.rows())
    n_lights = write_csv(args.out / "traffic_lights.csv", LIGHT_COLUMNS,
                         ((light.parcel_id, light.scheme, light.colour, light.reason, light.year)
                          for light in lights))
    colours = {colour: sum(light.colour == colour for light in lights) for colour in ("green", "yellow", "red")}
    sys.stdout.write(f"{args.out / 'events.csv'}: {n_events} events of {series.n_parcels} parcels; "
                     f"{args.out / 'traffic_lights.csv'}: {n_lights} lights (green {colours['green']}, yellow "
                     f"{colours['yellow']}, red {colours['red']}); parameters {params.hash[:12]}, rules "
                     f"v{rules.version}\n")
    return 0


def _parse_vary(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    try:
        numbers = [float(value) for value in values.split(",") if value.strip()]
    except ValueError:
        numbers = []
    if not name.strip() or not numbers:
        raise BadInputError(f"--vary {text!r}: expected SECTION.KEY=V1,V2,... (e.g. mowing.min_confidence=0.4,0.5)")
    return name.strip(), numbers


def _validate(args: argparse.Namespace) -> int:
    from cbm_tasks.markers.scoring import file_predictions, score, with_miss_reasons
    from cbm_tasks.markers.truth import read_truth

    if args.tolerance_days < 0:
        raise BadInputError(f"--tolerance-days {args.tolerance_days}: must be 0 or more")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise BadInputError(f"--out {args.out}: exists and is not a folder")
    if args.vary is not None and args.timeseries is None:
        raise BadInputError("cbm markers validate --vary recomputes the markers: give --timeseries FILE")
    if args.scheme is not None:
        return _validate_lights(args)
    args.marker = args.marker or "mowing"
    truth = read_truth(args.truth, args.marker)  # checked before the events are read or computed
    if args.timeseries is None:  # a parcel set is one season: checks of other years are not about it
        truth = truth.of_year(args.year) if args.year is not None else truth
        result = score(markers_db.stored_predictions(args), truth, tolerance_days=args.tolerance_days)
        if args.marker == "mowing":
            result = markers_db.with_stored_miss_reasons(args, result)
        varied = []
    else:
        from cbm_tasks.markers.params import load_params, with_value
        from cbm_tasks.markers.reader import read_series

        params = load_params(args.params)
        name, values = _parse_vary(args.vary) if args.vary is not None else ("", [])
        variants = [(value, with_value(params, name, value)) for value in values]  # all checked before any run
        series = read_series(args.timeseries)

        def scored(p: MarkerParams) -> MarkerValidation:
            return score(file_predictions(series, p, args.marker, source=str(args.timeseries),
                                          use_s1=not args.s2_only), truth, tolerance_days=args.tolerance_days)

        result = scored(params)
        if args.marker == "mowing":
            from cbm_tasks.markers.mowing_explain import explain_mowing

            result = with_miss_reasons(result, lambda parcel: (
                explain_mowing(series, parcel, params, use_s1=not args.s2_only), params))
        varied = [(value, scored(p)) for value, p in variants]
    sys.stdout.write(result.summary())
    if varied:
        _write_variation(args, varied)
    if args.out is not None:
        matches_csv, scores = result.write(args.out)
        sys.stdout.write(f"{matches_csv}: every hit, miss and false detection (for mowing with its cause or fall); "
                         f"{scores}: the scores\n")
    return 0


def _validate_lights(args: argparse.Namespace) -> int:
    """``validate --scheme S``: the scheme's lights against check outcomes (cbm_tasks.traffic_light.checks)."""
    from cbm_tasks.traffic_light.checks import file_lights, read_checks, score_lights

    if args.marker is not None or args.vary is not None:
        raise BadInputError("cbm markers validate --scheme scores lights: --marker and --vary score marker events")
    checks = read_checks(args.truth, args.scheme)  # checked before the lights are read or computed
    if args.timeseries is None:
        if args.rules is not None:
            raise BadInputError("cbm markers validate --aoi/--year scores the stored lights as their rules made them: "
                                "--rules applies to --timeseries only")
        lights, source, described = markers_db.stored_lights(args)
    else:
        from cbm_tasks.markers.params import load_params
        from cbm_tasks.markers.reader import read_series
        from cbm_tasks.markers.validation import sensors_text
        from cbm_tasks.traffic_light.rules import load_rules

        rules, params = load_rules(args.rules), load_params(args.params)
        lights = file_lights(read_series(args.timeseries), rules, params, args.scheme, use_s1=not args.s2_only)
        source = str(args.timeseries)
        described = (f"rules version {rules.version} (hash {rules.hash[:12]}), parameters version {params.version} "
                     f"hash {params.hash[:12]}, {sensors_text(not args.s2_only)}")
    result = score_lights(lights, checks, source=source, described=described)
    sys.stdout.write(result.summary())
    if args.out is not None:
        lights_csv, scores = result.write(args.out)
        sys.stdout.write(f"{lights_csv}: the light of every checked parcel-season; {scores}: the scores\n")
    return 0


def _write_variation(args: argparse.Namespace, varied: list[tuple[float, MarkerValidation]]) -> None:
    from cbm_tasks.markers.scoring import VARY_COLUMNS, variation_rows
    from cbm_tasks.markers.writer import write_csv

    rows = variation_rows(varied)

    def cell(value: object) -> str:
        return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    name = args.vary.partition("=")[0].strip()
    sys.stdout.write(f"\n{name} varied (the rest as above; a value chosen on these checks must be scored on others "
                     "before it is used):\n")
    width = max(len(name), 5)
    sys.stdout.write(f"  {name:>{width}s}  detected  hits  missed  false  precision  recall  F1 (95 % interval)  "
                     "negatives clean\n")
    for row in rows:
        value, _, detected, hits, missed, false, precision, recall, f1, low, high, clean, _ = row
        share = "-" if clean is None else f"{clean:.0%}"
        sys.stdout.write(f"  {value:>{width}s}  {detected:>8}  {hits:>4}  {missed:>6}  {false:>5}  "
                         f"{cell(precision):>9}  {cell(recall):>6}  {cell(f1)} ({cell(low)}-{cell(high)})  "
                         f"{share:>15}\n")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(args.out / "vary.csv", VARY_COLUMNS, rows)


def _explain(args: argparse.Namespace) -> int:
    if args.timeseries is None:
        return markers_db.explain(args)
    if args.scheme is not None:
        return _explain_light(args)
    from cbm_tasks.markers.explain import explain_marker
    from cbm_tasks.markers.params import load_params
    from cbm_tasks.markers.reader import read_series

    params = load_params(args.params)
    explanation = explain_marker(read_series(args.timeseries), args.parcel, params, args.marker,
                                 use_s1=not args.s2_only, year=args.year)
    explanation.write(sys.stdout)
    if args.csv is not None:
        explanation.write_csv(args.csv)
    return 0


def _explain_light(args: argparse.Namespace) -> int:
    """``cbm markers explain --timeseries FILE --parcel ID --scheme S [--year Y]``: every season it is lit in."""
    from cbm_tasks.markers.params import load_params
    from cbm_tasks.markers.reader import read_series
    from cbm_tasks.traffic_light.explain import explain_light, light_seasons
    from cbm_tasks.traffic_light.rules import load_rules

    rules, params = load_rules(args.rules), load_params(args.params)
    series = read_series(args.timeseries)
    for year in [args.year] if args.year is not None else light_seasons(series, args.parcel, params):
        explain_light(series, args.parcel, args.scheme, rules, params, year=year,
                      use_s1=not args.s2_only).write(sys.stdout)
    return 0


def _plot(args: argparse.Namespace) -> int:
    if args.timeseries is None:
        return markers_db.plot(args)
    from cbm_tasks.markers.params import load_params
    from cbm_tasks.markers.plot import plot_parcel  # matplotlib only when a plot is asked for
    from cbm_tasks.markers.reader import read_series

    params = load_params(args.params)
    series = read_series(args.timeseries)
    plot_parcel(series, args.parcel, params=params, out=args.out)
    sys.stdout.write(f"{args.out}\n")
    return 0
