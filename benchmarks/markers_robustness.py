"""How the mowing marker's scores hold when the observations get worse (Slovak set, Sentinel-2 only).

The development sets are one region's images with a good cloud score. An agency's parcels may lie under more
cloud, and its mask may miss more of it, so the marker is scored here on the Slovak set degraded in seeded,
documented ways (MODCiX matching within +-12 days, as ``markers_eval.py``):

  images lost  each Sentinel-2 overpass of a plot-year is dropped with probability --lost (default 0.3):
               fewer clear images and longer gaps, as in a cloudier region or season.
  clouds missed  each clear observation (clear_fraction >= validity.min_clear_fraction) is, with probability
               --hazed (default 0.1), seen through haze or thin cloud its mask missed, clear_fraction
               unchanged: reflectance r -> (1 - a) r + a c (490 nm / wavelength), a ~ U(0.05, 0.3),
               c ~ U(0.25, 0.5): a bright layer whose scattering falls with wavelength (Angstrom exponent 1).
  no cloud mask  clear_fraction removed: every image is used unless the marker's own blue, haze and cloud-dip
               tests reject it (exports without a cloud score or SCL).
  edge mixing  each clear observation is, with probability --mixed (default 0.2), partly a bare neighbour's
               signal: reflectance r -> (1 - m) r + m s, m ~ U(0.05, 0.25), s a dry loam's spectrum. Small plots
               (a few 10 m pixels, as camera-observed sites) see their neighbour through the image's
               co-registration error (Sentinel-2: ~5-10 m between dates) on some dates: NDVI falls and red rises,
               as at a cut, for one image.

Each random degradation is drawn --draws times (seeds 0..N-1); whether an observation is dropped or hazed
depends on the seed, the plot-year and the date only, so the file's row order does not matter. The table
gives the mean and range over the draws. --vary SECTION.KEY=V1,V2,... scores each value under every
condition, and on the SALMS set as it is (S2+S1 and S2 only, the control rows): a parameter value earns its
place when it helps under all of them, not on the unchanged Slovak set alone.

Usage: python benchmarks/markers_robustness.py [--data DIR] [--params FILE] [--draws N] [--lost P] [--hazed P]
                                               [--mixed P] [--vary SECTION.KEY=V1,V2,...]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from markers_eval import DATA, ground_truth, predict

from cbm_tasks.markers import load_params, read_series
from cbm_tasks.markers.importers import convert_salms
from cbm_tasks.markers.params import MarkerParams, ParamsFileError, with_value
from cbm_tasks.markers.validation import TOLERANCE_DAYS, Score, match_events

# centre wavelengths (micrometres) of the Sentinel-2 bands the Slovak set carries
WAVELENGTH = {"B02": 0.49, "B03": 0.56, "B04": 0.665, "B05": 0.705, "B06": 0.74, "B07": 0.783, "B08": 0.842,
              "B8A": 0.865, "B11": 1.61, "B12": 2.19}
# a bare, dry loam neighbour (field edge, track): surface reflectance per band, typical of Sentinel-2 L2A over
# tilled soil (red above blue, NIR and SWIR above red; NDVI ~0.2)
SOIL = {"B02": 0.07, "B03": 0.10, "B04": 0.13, "B05": 0.16, "B06": 0.18, "B07": 0.19, "B08": 0.21, "B8A": 0.22,
        "B11": 0.30, "B12": 0.25}
Row = list[str]
Change = Callable[[dict[str, int], Row], Row | None]


def _draw(seed: int, kind: str, parcel: str, when: str) -> random.Random:
    """The random source of one observation: the same for every row (band) of it, whatever the row order."""
    return random.Random(f"{seed}/{kind}/{parcel}/{when}")


def images_lost(share: float, seed: int) -> Change:
    """Drop each Sentinel-2 overpass with probability *share* (all its bands; Sentinel-1 rows stay)."""
    def change(col: dict[str, int], row: Row) -> Row | None:
        if row[col["source"]] != "s2":
            return row
        lost = _draw(seed, "lost", row[col["parcel_id"]], row[col["obs_time"]]).random() < share
        return None if lost else row
    return change


Layer = Callable[[random.Random], tuple[float, Callable[[str], float]]]


def _blended(kind: str, share: float, seed: int, min_clear: float, bands: Iterable[str], layer: Layer) -> Change:
    """Blend a clear observation's reflectances r -> (1 - w) r + w t(band) with probability *share*.

    *layer* draws, from the observation's random source, the weight w and the layer's reflectance t per band;
    rows of other sources, of unclear observations and of bands not in *bands* stay as they are.
    """
    known = frozenset(bands)

    def change(col: dict[str, int], row: Row) -> Row | None:
        clear, band = row[col["clear_fraction"]], row[col["band"]]
        if row[col["source"]] != "s2" or not clear or float(clear) < min_clear or band not in known:
            return row
        rng = _draw(seed, kind, row[col["parcel_id"]], row[col["obs_time"]])
        if rng.random() >= share:
            return row
        weight, target = layer(rng)
        out = list(row)
        out[col["mean"]] = f"{(1 - weight) * float(row[col['mean']]) + weight * target(band):.6f}"
        return out
    return change


def clouds_missed(share: float, seed: int, min_clear: float) -> Change:
    """Haze a clear observation's reflectances with probability *share* (module docstring), its clear share kept."""
    def haze(rng: random.Random) -> tuple[float, Callable[[str], float]]:
        a, c = rng.uniform(0.05, 0.3), rng.uniform(0.25, 0.5)
        return a, lambda band: c * WAVELENGTH["B02"] / WAVELENGTH[band]
    return _blended("hazed", share, seed, min_clear, WAVELENGTH, haze)


def edge_mixing(share: float, seed: int, min_clear: float) -> Change:
    """Mix a clear observation's reflectances with a bare neighbour's with probability *share* (module docstring)."""
    return _blended("mixed", share, seed, min_clear, SOIL, lambda rng: (rng.uniform(0.05, 0.25), SOIL.__getitem__))


def no_cloud_mask(col: dict[str, int], row: Row) -> Row | None:
    """The row without its clear share."""
    out = list(row)
    out[col["clear_fraction"]] = ""
    return out


def degraded(series: Path, out: Path, change: Change) -> Path:
    """Write the long CSV *series* (gzipped) to *out* with each row through *change* (None drops the row)."""
    with gzip.open(series, "rt", newline="") as src, out.open("w", newline="") as dst:
        rows: Iterator[Row] = csv.reader(src)
        header = next(rows)
        col = {name: i for i, name in enumerate(header)}
        writer = csv.writer(dst, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(kept for row in rows if (kept := change(col, row)) is not None)
    return out


def conditions(params: MarkerParams, *, draws: int, lost: float, hazed: float,
               mixed: float) -> list[tuple[str, list[Change | None]]]:
    """(label, one change per draw; None: the file as it is) of every condition scored."""
    min_clear = float(params.sections["validity"]["min_clear_fraction"])
    return [("as it is", [None]),
            (f"images lost ({lost:.0%} of the overpasses)", [images_lost(lost, seed) for seed in range(draws)]),
            (f"clouds missed ({hazed:.0%} of the clear images hazed)",
             [clouds_missed(hazed, seed, min_clear) for seed in range(draws)]),
            ("no cloud mask (clear_fraction removed)", [no_cloud_mask]),
            (f"edge mixing ({mixed:.0%} of the clear images part bare neighbour)",
             [edge_mixing(mixed, seed, min_clear) for seed in range(draws)])]


def score_conditions(data: Path, params_list: list[MarkerParams], work: Path, *, draws: int, lost: float,
                     hazed: float, mixed: float) -> list[tuple[str, list[list[Score]]]]:
    """Per condition, per parameter set, the score of each draw on the Slovak set (each file written and read once)."""
    truth, parcels, negatives = ground_truth("sk", data)
    series = data / "grassland_sk_train" / "timeseries.csv.gz"
    out = []
    for label, changes in conditions(params_list[0], draws=draws, lost=lost, hazed=hazed, mixed=mixed):
        per_params: list[list[Score]] = [[] for _ in params_list]
        for change in changes:
            table = read_series(series if change is None else degraded(series, work / "degraded.csv", change))
            for scores, params in zip(per_params, params_list, strict=True):
                scores.append(match_events(predict(table, params, use_s1=False), truth, parcels, negatives=negatives))
        out.append((label, per_params))
    return out


def score_salms(data: Path, params_list: list[MarkerParams], work: Path) -> list[tuple[str, list[list[Score]]]]:
    """The other real set as it is (S2+S1 and S2 only), per parameter set: a value chosen here must not cost it."""
    truth, parcels, _ = ground_truth("salms", data)
    series = read_series(convert_salms(data / "salms_grassland", work / "salms.csv"))
    return [(f"SALMS as it is, {name} (control)",
             [[match_events(predict(series, params, use_s1=s1), truth, parcels)] for params in params_list])
            for name, s1 in (("S2+S1", True), ("S2 only", False))]


def _span(values: list[float], fmt: str) -> str:
    """The mean of *values* and, over several draws, their range: ``166 (160-174)``."""
    mean = format(sum(values) / len(values), fmt)
    return mean if len(values) == 1 else f"{mean} ({min(values):{fmt}}-{max(values):{fmt}})"


def table_row(label: str, scores: list[Score]) -> str:
    """One Markdown row: hits, false detections, P, R, F1 and clean negatives, mean (range) over the draws."""
    clean = (f"{_span([s.negatives_clean for s in scores], '.0f')} of {scores[0].negatives}" if scores[0].negatives
             else "-")
    return (f"| {label} | {len(scores)} | {_span([s.tp for s in scores], '.0f')} | "
            f"{_span([s.fp for s in scores], '.0f')} | {_span([s.precision for s in scores], '.2f')} | "
            f"{_span([s.recall for s in scores], '.2f')} | {_span([s.f1 for s in scores], '.2f')} | "
            f"{clean} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--params", type=Path)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--lost", type=float, default=0.3)
    parser.add_argument("--hazed", type=float, default=0.1)
    parser.add_argument("--mixed", type=float, default=0.2)
    parser.add_argument("--vary", metavar="SECTION.KEY=V1,V2,...")
    args = parser.parse_args(argv)
    if args.draws < 1 or not all(0 <= share <= 1 for share in (args.lost, args.hazed, args.mixed)):
        parser.error("--draws must be 1 or more, --lost, --hazed and --mixed shares in [0, 1]")
    params = load_params(args.params)
    labels, params_list = ["defaults" if args.params is None else str(args.params)], [params]
    if args.vary:
        name, _, values = args.vary.partition("=")
        try:
            for value in (float(v) for v in values.split(",") if v.strip()):
                labels.append(f"{name.strip()}={value:g}")
                params_list.append(with_value(params, name.strip(), value))
        except (ValueError, ParamsFileError) as err:
            parser.error(f"--vary {args.vary!r}: {err}")
        if len(params_list) == 1:
            parser.error(f"--vary {args.vary!r}: expected SECTION.KEY=V1,V2,...")
    with tempfile.TemporaryDirectory() as tmp:
        results = score_conditions(args.data, params_list, Path(tmp), draws=args.draws, lost=args.lost,
                                   hazed=args.hazed, mixed=args.mixed)
        results += score_salms(args.data, params_list, Path(tmp))
    print(f"mowing marker on the Slovak survey degraded (Sentinel-2 only) and on SALMS as it is; parameters version "
          f"{params.version} hash {params.hash[:12]}; a hit = within +-{TOLERANCE_DAYS} days; mean (range) over the "
          f"draws (seeds 0-{args.draws - 1})")
    print("| condition | draws | hits | false | precision | recall | F1 | not mown without mowing |")
    print("|---|---|---|---|---|---|---|---|")
    for label, per_params in results:
        for name, scores in zip(labels, per_params, strict=True):
            print(table_row(label if len(labels) == 1 else f"{label}, {name}", scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
