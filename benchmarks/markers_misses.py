"""Where the mowing marker's misses and false detections come from, on the real ground-truth sets.

For every true mowing date the shipped defaults miss (MODCiX matching, +-12 days, as
``markers_eval.py``), the cause is named as ``cbm markers validate`` names it
(``cbm_tasks.markers.miss_reasons``: the falls of NDVI near the date judged by the marker's own tests):
no markers computed, outside the mowing season, no clear image within 12 days after, no NDVI fall,
a larger fall nearby won, a mowing dated more than 12 days away, or the tests the largest fall failed.

Every false detection is listed with its fall (drop, red ratio, confidence), on surveyed not-mown
plot-years apart. Sentinel-2 only (the variant every agency can run) unless ``--s1``.

Usage: python benchmarks/markers_misses.py [--data DIR] [--params FILE] [--sets salms,sk] [--s1] [--list]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path

from markers_eval import DATA, predict

from cbm_tasks.markers import load_params, read_series
from cbm_tasks.markers.importers import convert_salms
from cbm_tasks.markers.miss_reasons import detection_step, explain_lines
from cbm_tasks.markers.mowing_explain import explain_mowing
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import SeriesTable
from cbm_tasks.markers.truth import read_salms_truth, read_survey_truth
from cbm_tasks.markers.validation import TOLERANCE_DAYS, false_events, matches, missed_events


def report(name: str, series: SeriesTable, truth: dict[str, list[date]], parcels: list[str], params: MarkerParams, *,
           use_s1: bool, negatives: set[str], show: bool) -> None:
    """Print the reasons of the misses and the false detections of one data set."""
    predicted = predict(series, params, use_s1=use_s1)
    lines = matches(predicted, truth, parcels)
    missed, false = missed_events(lines), false_events(lines)
    known = set(series.parcel_ids.tolist())
    explained = {p: explain_mowing(series, p, params, use_s1=use_s1) if p in known else None
                 for p in sorted({parcel for parcel, _ in missed + false})}
    reasons, falls = explain_lines(missed, false,
                                   lambda parcel: None if explained[parcel] is None else (explained[parcel], params),
                                   tolerance_days=TOLERANCE_DAYS)
    n_true = sum(len(truth.get(p, [])) for p in parcels)
    print(f"{name}: {len(reasons)} of {n_true} true mowings missed, {len(falls)} false detections "
          f"({sum(parcel in negatives for parcel, _ in falls)} on surveyed not-mown plot-years)")
    for reason, n in Counter(reasons.values()).most_common():
        print(f"  {n:4d}  {reason}")
    if show:
        for (parcel, when), reason in reasons.items():
            print(f"    missed {parcel} {when}: {reason}")
        for (parcel, when), fall in falls.items():
            kind = "not mown" if parcel in negatives else "mown"
            found = explained[parcel]
            cut = None if found is None else detection_step(found, when)
            text = "" if cut is None else f"{fall}, confidence {cut.confidence:.2f}"
            print(f"    false  {parcel} ({kind}) {when}: {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--params", type=Path)
    parser.add_argument("--sets", default="salms,sk")
    parser.add_argument("--s1", action="store_true", help="Sentinel-2 and Sentinel-1 (default: Sentinel-2 only)")
    parser.add_argument("--list", action="store_true", help="list every miss and false detection")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(f"mowing marker, parameters version {params.version} hash {params.hash[:12]}, "
          f"{'S2 + S1' if args.s1 else 'S2 only'}; a hit = within +-{TOLERANCE_DAYS} days")
    sets = args.sets.split(",")
    if "salms" in sets:
        with tempfile.TemporaryDirectory() as tmp:
            series = read_series(convert_salms(args.data / "salms_grassland", Path(tmp) / "salms.csv"))
        truth = read_salms_truth(args.data / "salms_grassland")
        report("SALMS", series, truth, sorted(truth), params, use_s1=args.s1, negatives=set(), show=args.list)
    if "sk" in sets:
        folder = args.data / "grassland_sk_train"
        surveyed, sk_truth = read_survey_truth(folder)
        report("Slovak plot-years (surveyed)", read_series(folder / "timeseries.csv.gz"), sk_truth, sorted(surveyed),
               params, use_s1=args.s1, negatives={p for p, s in surveyed.items() if s == "not_mown"}, show=args.list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
