"""Mowing and harvest scores on the seeded synthetic AOI (``cbm demo build --synthetic``), for markers_eval.py.

The AOI is built into a temporary folder; each image is reduced to per-parcel means and standard
deviations (all pixels of the parcel, as the extraction engine does) and SCL class counts, written in the export's long
format with its ``_classes`` companion, and read back through the file path the CLI uses.
Ground truth: the mowing dates of the grassland parcels, every other parcel (maize, wheat, bare)
must have none; the harvest dates of the maize and wheat parcels.
"""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from pyogrio.raw import read as read_vector
from rasterio import features

from cbm_tasks.demo.synthetic import build_synthetic
from cbm_tasks.markers.params import MarkerParams

__all__ = ["eval_synthetic", "synthetic_series"]


def synthetic_series(work: Path, *, n_parcels: int,
                     seed: int = 42) -> tuple[Path, dict[str, dict[str, list[date]]], list[str]]:
    """Build the AOI and write its series; return (series file, event -> parcel -> true dates, all parcel ids)."""
    layout = build_synthetic(work / "aoi", n_parcels=n_parcels, seed=seed)
    meta, _, wkb, fields = read_vector(layout.parcels_file)
    geometries = shapely.from_wkb(wkb)
    parcel_ids = [str(v) for v in fields[list(meta["fields"]).index("parcel_id")]]
    series, classes = work / "synthetic.csv", work / "synthetic_classes.csv"
    labels_by_grid: dict[tuple[int, int, tuple[float, ...]], np.ndarray] = {}
    with series.open("w", newline="") as main_stream, classes.open("w", newline="") as class_stream:
        rows, class_rows = csv.writer(main_stream, lineterminator="\n"), csv.writer(class_stream, lineterminator="\n")
        rows.writerow(["parcel_id", "obs_time", "source", "band", "mean", "std"])
        class_rows.writerow(["parcel_id", "obs_time", "product_id", "band", "class", "count"])
        for item in sorted(layout.catalogue_root.glob("*/*/*.json")):
            meta = json.loads(item.read_text())
            when = meta["properties"]["datetime"]
            source = meta["properties"]["cbm:product_type"]
            for tif in sorted(item.parent.glob("*.tif")):
                with rasterio.open(tif) as band:
                    values = band.read(1, masked=True)
                    key = (band.width, band.height, tuple(band.transform)[:6])
                    if key not in labels_by_grid:
                        labels_by_grid[key] = features.rasterize(
                            zip(geometries, range(1, len(parcel_ids) + 1), strict=True),
                            out_shape=(band.height, band.width), transform=band.transform, fill=0, dtype="int32")
                    labels = labels_by_grid[key]
                    scale = band.scales[0] or 1.0
                inside = (labels > 0) & ~np.ma.getmaskarray(values)
                lab = labels[inside]
                if tif.stem == "SCL":
                    data = np.asarray(values)[inside].astype(np.int64)
                    counts = np.bincount(lab * 16 + data, minlength=(len(parcel_ids) + 1) * 16).reshape(-1, 16)
                    for key_, name in enumerate(parcel_ids, start=1):
                        for scl_class in np.flatnonzero(counts[key_]):
                            class_rows.writerow([name, when, "", "SCL", int(scl_class), int(counts[key_, scl_class])])
                    continue
                data = np.asarray(values)[inside].astype(np.float64) * scale
                sums = np.bincount(lab, weights=data, minlength=len(parcel_ids) + 1)
                squares = np.bincount(lab, weights=data * data, minlength=len(parcel_ids) + 1)
                n = np.bincount(lab, minlength=len(parcel_ids) + 1)
                for key_, name in enumerate(parcel_ids, start=1):
                    if n[key_]:
                        mean = sums[key_] / n[key_]
                        std = np.sqrt(max(squares[key_] / n[key_] - mean * mean, 0.0))  # population, as extracted
                        rows.writerow([name, when, source, tif.stem, f"{mean:.6g}", f"{std:.6g}"])
    truth: dict[str, dict[str, list[date]]] = {"mowing": {}, "harvest": {}}
    assert layout.ground_truth_file is not None
    with layout.ground_truth_file.open(newline="") as stream:
        for record in csv.DictReader(stream):
            if record["event"] not in truth:  # "none": a parcel without events
                continue
            truth[record["event"]].setdefault(record["parcel_id"], []).append(
                date.fromisoformat(record["date"]))
    return series, truth, parcel_ids


def eval_synthetic(work: Path, params: MarkerParams, *, match_events: Any, predict: Any,
                   predict_harvest: Any, n_parcels: int = 600) -> dict[str, Any]:
    """Mowing scores of S2+S1 and S2 only on the synthetic AOI (all parcels; non-grassland ones have no
    mowing), and the harvest score of its arable parcels (maize, winter wheat: one harvest each)."""
    series, truth_by_event, parcels = synthetic_series(work, n_parcels=n_parcels)
    truth, harvests = truth_by_event["mowing"], truth_by_event["harvest"]
    negatives = {p for p in parcels if p not in truth}
    scores = {f"synthetic ({n_parcels} parcels) {name}": match_events(predict(series, params, use_s1=s1), truth,
                                                                      parcels, negatives=negatives)
              for name, s1 in (("S2+S1", True), ("S2 only", False))}
    arable = sorted(harvests)
    predicted = predict_harvest(series, params)
    scores[f"synthetic ({len(arable)} arable parcels) harvest"] = match_events(
        {p: d for p, d in predicted.items() if p in harvests}, harvests, arable)
    return scores
