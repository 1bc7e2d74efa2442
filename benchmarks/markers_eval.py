"""Event-level scores of the mowing marker on real ground truth (MODCiX protocol).

Protocol (MODCiX intercomparison): per parcel, predicted and true mowing dates are matched one to
one within +-12 days (closest pairs first); a matched pair is a true positive, an unmatched
prediction a false positive (also every prediction on a parcel without any true event), an
unmatched truth a false negative. Precision, recall, F1 and the median absolute date error of the
matched pairs are reported, for Sentinel-2 + Sentinel-1 and for Sentinel-2 alone.

Data sets (../shared/data, see its README):
  salms   JRC SALMS example, 10 parcels, 17 mowing dates (converted to the long format).
  sk      Slovak grassland plots, 492 plot-years; only the 246 surveyed plot-years are scored,
          37 of them surveyed not mown (their share without any detected mowing is reported);
          also with the red and NIR bands alone (no haze or moisture test), with NDVI alone (no red
          test either), and as one series per plot over its three seasons (scored per plot-year).
  synth   the seeded synthetic AOI (cbm demo build --synthetic), parcel means computed from its
          images (cloud-free pixels per SCL), mowing ground truth of its grassland parcels; and the
          harvest marker on its maize and winter wheat parcels (one true harvest each).

Usage: python benchmarks/markers_eval.py [--data DIR] [--params FILE] [--sets salms,sk,synth]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from cbm_tasks.markers import load_params, prepare, read_series, run_markers
from cbm_tasks.markers.importers import convert_salms
from cbm_tasks.markers.mowing import detect_mowing
from cbm_tasks.markers.params import MarkerParams
from cbm_tasks.markers.series import SeriesTable, day_to_date
from cbm_tasks.markers.truth import read_salms_truth, read_survey_truth
from cbm_tasks.markers.validation import (
    TOLERANCE_DAYS,
    Match,
    Score,
    bootstrap_lines,
    match_events,
    matches,
    score_lines,
)
from cbm_tasks.traffic_light import evaluate_lights, load_rules

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PERMANENT_GRASS = "9120"  # the crop code the shipped mapping gives permanent grassland (its two schemes)


def predict(series: Path | SeriesTable, params: MarkerParams, *, use_s1: bool,
            min_confidence: float = 0.0) -> dict[str, list[date]]:
    """Parcel id -> main dates of the detected mowings of a time-series file or a series already read."""
    prepared = prepare(series if isinstance(series, SeriesTable) else read_series(series), params)
    events = detect_mowing(prepared, params, use_s1=use_s1)
    out: dict[str, list[date]] = {}
    for parcel, main, confidence in zip(events.parcel, events.main, events.confidence, strict=True):
        if confidence >= min_confidence:
            out.setdefault(str(prepared.parcel_ids[parcel]), []).append(date.fromisoformat(day_to_date(main)))
    return out


def predict_harvest(series_file: Path, params: MarkerParams) -> dict[str, list[date]]:
    out: dict[str, list[date]] = {}
    for row in run_markers(read_series(series_file), params, use_s1=False).rows():
        if row.marker == "harvest":
            out.setdefault(row.parcel_id, []).append(date.fromisoformat(row.main_date))
    return out


def ground_truth(name: str, data: Path) -> tuple[dict[str, list[date]], list[str], set[str]]:
    """(truth, scored parcels, surveyed not-mown parcels) of the real set *name* (salms or sk)."""
    if name == "salms":
        truth = read_salms_truth(data / "salms_grassland")
        return truth, sorted(truth), set()
    surveyed, truth = read_survey_truth(data / "grassland_sk_train")
    return truth, sorted(surveyed), {parcel for parcel, survey in surveyed.items() if survey == "not_mown"}


@dataclass(frozen=True)
class Headline:
    """A headline score's matching, kept for its bootstrap intervals (matched once, as 'cbm markers validate')."""

    label: str
    predicted: dict[str, list[date]]
    lines: list[Match]
    parcels: list[str]
    negatives: set[str]
    score: Score


def _headline(label: str, predicted: dict[str, list[date]], truth: dict[str, list[date]], parcels: list[str],
              negatives: set[str], headlines: list[Headline]) -> Score:
    """Score *predicted* as :func:`match_events` does, and keep its matching in *headlines*."""
    lines = matches(predicted, truth, parcels)
    score = score_lines(lines, predicted, parcels, negatives=negatives)
    headlines.append(Headline(label, predicted, lines, parcels, negatives, score))
    return score


def eval_salms(data: Path, params: MarkerParams, work: Path, headlines: list[Headline]) -> dict[str, Score]:
    truth, parcels, _ = ground_truth("salms", data)
    series = read_series(convert_salms(data / "salms_grassland", work / "salms.csv"))
    return {f"SALMS {name}": _headline(f"SALMS {name}", predict(series, params, use_s1=s1), truth, parcels, set(),
                                       headlines)
            for name, s1 in (("S2+S1", True), ("S2 only", False))}


def _rewrite(series: Path, out: Path, change: Callable[[list[str], list[str]], list[str] | None]) -> Path:
    """Copy the gzipped long CSV *series* to *out*, each row through *change(header, row)* (None drops it)."""
    with gzip.open(series, "rt", newline="") as src, gzip.open(out, "wt", newline="") as dst:
        rows = csv.reader(src)
        writer = csv.writer(dst, lineterminator="\n")
        header = next(rows)
        writer.writerow(header)
        writer.writerows(kept for row in rows if (kept := change(header, row)) is not None)
    return out


def _red_nir_only(header: list[str], row: list[str]) -> list[str] | None:
    """The Sentinel-2 B04 and B08 rows only: the least an export may hold."""
    return row if row[header.index("source")] == "s2" and row[header.index("band")] in ("B04", "B08") else None


def _ndvi_only(series: Path, out: Path) -> Path:
    """The Sentinel-2 observations of the gzipped long CSV *series* as one NDVI row each (from B04 and B08,
    the clear share kept): files of the index alone, as some tools export."""
    bands: dict[tuple[str, ...], dict[str, float]] = {}
    with gzip.open(series, "rt", newline="") as src:
        for row in csv.DictReader(src):
            if row["source"] == "s2" and row["band"] in ("B04", "B08"):
                key = (row["parcel_id"], row["obs_time"], row.get("clear_fraction", ""))
                bands.setdefault(key, {})[row["band"]] = float(row["mean"])
    with gzip.open(out, "wt", newline="") as dst:
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow(["parcel_id", "obs_time", "source", "band", "mean", "clear_fraction"])
        for (parcel, when, clear), value in bands.items():
            red, nir = value.get("B04", -1.0), value.get("B08", -1.0)
            if red > 0 and nir > 0:
                writer.writerow([parcel, when, "s2", "NDVI", f"{(nir - red) / (nir + red):.6f}", clear])
    return out


def _plot_of_plot_year(header: list[str], row: list[str]) -> list[str]:
    """Plot-year ``LR100_2021`` renamed to its plot ``LR100``: one series per plot over its seasons, as files
    of plots followed for several years are (the rows of each plot-year lie in its own year)."""
    pid = header.index("parcel_id")
    return [*row[:pid], row[pid].rsplit("_", 1)[0], *row[pid + 1:]]


def _by_plot_year(predicted: dict[str, list[date]]) -> dict[str, list[date]]:
    out: dict[str, list[date]] = {}
    for plot, dates in predicted.items():
        for when in dates:
            out.setdefault(f"{plot}_{when.year}", []).append(when)
    return out


def eval_sk(data: Path, params: MarkerParams, work: Path, headlines: list[Headline]) -> dict[str, Score]:
    folder = data / "grassland_sk_train"
    surveyed, truth = read_survey_truth(folder)
    negatives = {parcel for parcel, survey in surveyed.items() if survey == "not_mown"}
    with (folder / "plots.csv").open(newline="") as stream:
        land_use = {row["parcel_id"]: row["land_use"] for row in csv.DictReader(stream)}
    parcels = sorted(surveyed)
    out = {}
    # some surveyed plot-years have no observation at all in the file (their images were no-data):
    # their dates count as misses above, and are left out in the "with observations" rows
    series = read_series(folder / "timeseries.csv.gz")
    observed = set(series.parcel_ids.tolist())
    for name, s1 in (("S2+S1", True), ("S2 only", False)):
        predicted = predict(series, params, use_s1=s1)
        out[f"SK {name}"] = _headline(f"SK {name}", predicted, truth, parcels, negatives, headlines)
        mown = [p for p in parcels if surveyed[p] == "mown"]
        out[f"SK {name}, mown plot-years only"] = match_events(predicted, truth, mown)
        with_data = [p for p in parcels if p in observed]
        out[f"SK {name}, plot-years with observations ({len(with_data)} of {len(parcels)})"] = match_events(
            predicted, truth, with_data, negatives=negatives & observed)
        # the not-mown plot-years by land use: grazing on pastures lowers NDVI as a cut does, abandoned ones not
        for use in sorted({land_use[p] for p in negatives}):
            group = sorted(p for p in negatives if land_use[p] == use)
            out[f"SK {name}, not mown: {use}"] = match_events(predicted, truth, group, negatives=set(group))
    # without blue and SWIR the haze and moisture tests cannot run (SALMS and many exports are like that)
    red_nir = _rewrite(folder / "timeseries.csv.gz", work / "sk_red_nir.csv.gz", _red_nir_only)
    out["SK S2 only, B04 + B08 only"] = match_events(predict(red_nir, params, use_s1=False), truth, parcels,
                                                     negatives=negatives)
    # the index alone: no red test of a cut either
    ndvi = _ndvi_only(folder / "timeseries.csv.gz", work / "sk_ndvi.csv.gz")
    out["SK S2 only, NDVI only"] = match_events(predict(ndvi, params, use_s1=False), truth, parcels,
                                                negatives=negatives)
    # one series per plot over 2021-2023: winter gaps and max_events must be handled per season
    per_plot = _rewrite(folder / "timeseries.csv.gz", work / "sk_per_plot.csv.gz", _plot_of_plot_year)
    out["SK S2 only, one series per plot (3 seasons)"] = match_events(
        _by_plot_year(predict(per_plot, params, use_s1=False)), truth, parcels, negatives=negatives)
    return out


def headline_intervals(headlines: list[Headline]) -> list[str]:
    """Table rows: 95 % bootstrap intervals (over parcels) of the headline scores of the real sets."""
    rows = []
    for h in headlines:
        score, ci = h.score, bootstrap_lines(h.lines, h.predicted, h.parcels, negatives=h.negatives)
        clean = (f"{score.negatives_clean / score.negatives:.0%} ({ci['negatives_clean'][0]:.0%}-"
                 f"{ci['negatives_clean'][1]:.0%})" if score.negatives else "-")
        rows.append(f"| {h.label} | {len(h.parcels)} | {score.f1:.2f} ({ci['f1'][0]:.2f}-{ci['f1'][1]:.2f}) | "
                    f"{score.recall:.2f} ({ci['recall'][0]:.2f}-{ci['recall'][1]:.2f}) | {clean} |")
    return rows


def ploughing_lights(series: Path | SeriesTable, params: MarkerParams) -> Counter[str]:
    """Colours of the shipped "permanent grassland: no ploughing" light on every parcel-season of *series*.

    The real grassland sets hold meadows and pastures that were not ploughed: a red light is false.
    """
    table = series if isinstance(series, SeriesTable) else read_series(series)
    crops = {str(pid): PERMANENT_GRASS for pid in table.parcel_ids}
    return Counter(light.colour for light in evaluate_lights(run_markers(table, params, use_s1=False), load_rules(),
                                                             crops=crops) if light.scheme == "permanent_grassland")


MOWING_SCHEME = "grassland_mowing"  # the shipped scheme for grassland of unknown crop: a cut in its window


def mowing_lights(series: Path | SeriesTable, params: MarkerParams) -> dict[str, str]:
    """Parcel-season (``<parcel id>@<year>``) -> colour of the shipped grassland mowing light (S2 only)."""
    table = series if isinstance(series, SeriesTable) else read_series(series)
    return {f"{light.parcel_id}@{light.year}": light.colour
            for light in evaluate_lights(run_markers(table, params, use_s1=False), load_rules())
            if light.scheme == MOWING_SCHEME}


def light_groups(truth: dict[str, list[date]], parcels: list[str], negatives: set[str],
                 lights: dict[str, str]) -> dict[str, Counter[str]]:
    """Colours of the mowing light of the scored parcel-seasons, by what the ground truth says of the rule.

    ``mown in the window``: a true mowing date in the scheme's window (green is right, red accuses a
    compliant farmer); ``mown outside it`` (red is right by the rule); ``not mown`` (red is right, green
    misses a non-compliant parcel). A scored parcel-season without observations gets no light (``none``).
    """
    (rule,) = load_rules().schemes[MOWING_SCHEME].rules
    groups: dict[str, Counter[str]] = {}
    for parcel in parcels:
        dates = truth.get(parcel, [])
        # a plot-year (LR100_2021) is its year's season; other parcels: the years of their mowings
        plot_year = re.fullmatch(r".+_(\d{4})", parcel)
        for year in [int(plot_year.group(1))] if plot_year else sorted({d.year for d in dates}):
            first, last = rule.window(year)
            if parcel in negatives:
                group = "not mown"
            elif any(first <= d <= last for d in dates if d.year == year):
                group = "mown in the window"
            else:
                group = "mown outside it"
            groups.setdefault(group, Counter())[lights.get(f"{parcel}@{year}", "none")] += 1
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--params", type=Path)
    parser.add_argument("--sets", default="salms,sk,synth")
    parser.add_argument("--synthetic-parcels", type=int, default=600)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    scores: dict[str, Score] = {}
    headlines: list[Headline] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = args.sets.split(",")
        if "salms" in sets:
            scores.update(eval_salms(args.data, params, work, headlines))
        if "sk" in sets:
            scores.update(eval_sk(args.data, params, work, headlines))
        if "synth" in sets:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from markers_synthetic import eval_synthetic  # heavier: builds the AOI and reduces its images

            scores.update(eval_synthetic(work, params, match_events=match_events, predict=predict,
                                         predict_harvest=predict_harvest, n_parcels=args.synthetic_parcels))
    print(f"mowing and harvest markers, parameters version {params.version} hash {params.hash[:12]}; "
          f"a hit = within +-{TOLERANCE_DAYS} days")
    print("| data | true | predicted | precision | recall | F1 | median date error (d) | not mown without mowing |")
    print("|---|---|---|---|---|---|---|---|")
    for name, score in scores.items():
        print(score.row(name))
    if headlines:
        print("\n95 % intervals of the headline scores (1000 bootstrap resamples of the parcels, seed 0; as "
              "'cbm markers validate' gives them)")
        print("| data | parcels | F1 | recall | not mown without mowing |")
        print("|---|---|---|---|---|")
        for row in headline_intervals(headlines):
            print(row)
    grass: dict[str, Callable[[Path], Path]] = {
        "salms": lambda work: convert_salms(args.data / "salms_grassland", work / "salms.csv"),
        "sk": lambda work: args.data / "grassland_sk_train" / "timeseries.csv.gz"}
    print("\npermanent grassland 'no ploughing' (S2 only) on grasslands that were not ploughed: a red light is false")
    print("| data | parcel-seasons | green | yellow | red |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in (n for n in grass if n in sets):
            colours = ploughing_lights(grass[name](Path(tmp)), params)
            print(f"| {name.upper()} | {sum(colours.values())} | {colours['green']} | {colours['yellow']} | "
                  f"{colours['red']} |")
    print(f"\n'{MOWING_SCHEME}' light (S2 only) against the ground truth: green is right for a parcel mown in the "
          "rule's window, red for the others")
    print("| data | ground truth | parcel-seasons | green | yellow | red | no light | right |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in (n for n in grass if n in sets):
            truth, parcels, negatives = ground_truth(name, args.data)
            groups = light_groups(truth, parcels, negatives, mowing_lights(grass[name](Path(tmp)), params))
            for group in ("mown in the window", "mown outside it", "not mown"):
                if group in groups:
                    c = groups[group]
                    right = c["green"] if group == "mown in the window" else c["red"]
                    lit = sum(c.values()) - c["none"]
                    print(f"| {name.upper()} | {group} | {sum(c.values())} | {c['green']} | {c['yellow']} | "
                          f"{c['red']} | {c['none']} | {right}/{lit} = {right / lit:.0%} |" if lit else
                          f"| {name.upper()} | {group} | {sum(c.values())} | 0 | 0 | 0 | {c['none']} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
