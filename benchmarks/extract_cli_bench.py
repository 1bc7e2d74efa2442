"""``cbm extract`` of a full Sentinel-2 tile as a user runs it, against the same extraction in-process.

The tile and the ~100,000 parcels are ``extract_bench.py``'s (seeded, cached in --out). They are
written once more as one 10 m GeoTIFF with the bands B04, B08 and SCL (SCL repeated from 20 m to
10 m; tiled, deflate; acquisition time in TIFFTAG_DATETIME) and a FlatGeobuf, imported with
``cbm_tasks.parcels.sets.import_parcels`` into a fresh database (dropped at the end). Then, each
run extracting a new product (hard links of the image: same bytes, another catalogue record):

* **in-process**, in one Python process whose imports and kernels are loaded before timing:
  ``cbm_tasks.pipeline.files.extract_file`` cold (labels rasterised, in-memory cache) and warm
  (the next image of the tile: labels from that cache) - the engine's time, what Airflow's
  preloaded task pays;
* **CLI**: ``cbm extract IMAGE --aoi A --year Y``, wall clock of the whole process (start-up,
  imports, kernels from Numba's cache, database, extraction, exit): cold with an empty label
  cache folder, then warm (the next image of the tile finds the labels on disk, as a user's
  next ``cbm extract`` of the tile or an Airflow task does).

Prints every time, the CLI's overhead over the extraction it reports, and the ratios CLI /
in-process (goal: warm CLI within 1.3x of the in-process cold engine). Usage:

    .venv/bin/python benchmarks/extract_cli_bench.py                          # full tile, ~5 minutes
    .venv/bin/python benchmarks/extract_cli_bench.py --size 2048 --parcels 4000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from extract_bench import EPSG, OUT_DEFAULT, generate

PROJECT = Path(__file__).resolve().parents[1]
AOI, YEAR = "clibench", 2018
WHEN = "2018:06:01 10:30:00"
IN_PROCESS = """
import json, sys, time
from cbm_tasks.ops import kernel_cache
kernel_cache.use_cache_dir()
from cbm_tasks import db
from cbm_tasks.extraction.kernels import warm_kernels
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.pipeline.files import extract_file
from cbm_tasks.store import StoreConfig, open_store
warm_kernels()  # loaded from the cache, before timing (an Airflow task gets them from the forkserver)
url, AOI, YEAR, images = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
store, cache, runs = open_store(StoreConfig()), LabelCache(max_entries=2), []
with db.connect(url) as conn:
    for image in images:
        t0 = time.perf_counter()
        result = extract_file(conn, store, image, aoi=AOI, year=YEAR, label_cache=cache)
        runs.append({"seconds": time.perf_counter() - t0, "parcels": result.n_parcels, "rows": result.n_rows})
print(json.dumps(runs))
"""


def _tile_image(paths: dict[str, str]) -> Path:
    """The bench tile as one 10 m GeoTIFF (B04, B08, SCL), written once next to its bands."""
    import rasterio

    out = Path(paths["B04"]).with_name("tile_B04_B08_SCL.tif")
    if out.exists():
        return out
    with rasterio.open(paths["B04"]) as b04, rasterio.open(paths["B08"]) as b08, rasterio.open(paths["SCL"]) as scl:
        profile = {**b04.profile, "count": 3, "dtype": "uint16", "tiled": True, "blockxsize": 512,
                   "blockysize": 512, "compress": "deflate", "nodata": 0}
        partial = out.with_name(f".{out.name}.partial")
        with rasterio.open(partial, "w", **profile) as dst:
            dst.write(b04.read(1), 1)
            dst.write(b08.read(1), 2)
            classes = np.repeat(np.repeat(scl.read(1).astype(np.uint16), 2, axis=0), 2, axis=1)
            dst.write(classes[:b04.height, :b04.width], 3)
            for index, name in enumerate(("B04", "B08", "SCL"), start=1):
                dst.set_band_description(index, name)
            dst.scales, dst.offsets = (1e-4, 1e-4, 1.0), (0.0, 0.0, 0.0)
            dst.update_tags(TIFFTAG_DATETIME=WHEN)
    partial.rename(out)
    return out


def _parcel_file(paths: dict[str, str]) -> Path:
    """The bench parcels as a FlatGeobuf (parcel_id, EPSG:32631), written once."""
    from pyogrio.raw import write

    out = Path(paths["wkb"]).with_name("parcels.fgb")
    if not out.exists():
        wkb = np.load(paths["wkb"], allow_pickle=True)
        ids = np.array([f"P{i:06d}" for i in range(1, len(wkb) + 1)], dtype=object)
        partial = out.with_name(".parcels.fgb")
        write(partial, wkb, [ids], ["parcel_id"], driver="FlatGeobuf", crs=f"EPSG:{EPSG}", geometry_type="Unknown")
        partial.rename(out)
    return out


def _cli(image: Path, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "cbm"), "extract", str(image), "--aoi", AOI,
                           "--year", str(YEAR)], capture_output=True, text=True, env=env, cwd=PROJECT, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"cbm extract {image} failed:\n{done.stderr[-3000:]}")
    found = re.search(r"product \d+: (\d+) parcels, (\d+) statistics rows, .*, ([\d.]+) s", done.stdout)
    if found is None:
        raise RuntimeError(f"cbm extract {image}: unexpected output {done.stdout!r}")
    return {"seconds": wall, "parcels": int(found[1]), "rows": int(found[2]), "extraction_s": float(found[3])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980, help="tile rows = columns at 10 m (default 10980)")
    parser.add_argument("--parcels", type=int, default=100_000, help="number of parcels (default 100000)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT, help=f"scratch directory (default {OUT_DEFAULT})")
    parser.add_argument("--warm-runs", type=int, default=2, help="warm CLI runs (default 2)")
    args = parser.parse_args()

    from cbm_tasks import db
    from cbm_tasks.ops import cluster, settings
    from cbm_tasks.parcels.columns import NO_COLUMN
    from cbm_tasks.parcels.sets import import_parcels

    paths = generate(args.out, args.size, args.parcels, args.seed)
    image, parcels = _tile_image(paths), _parcel_file(paths)
    cfg = settings.local_cluster()
    cluster.start(cfg)
    name = f"cbm_bench_{uuid.uuid4().hex[:10]}"
    cluster.ensure_database(cfg, name)
    links = tempfile.TemporaryDirectory(dir=image.parent, prefix=".cli_bench_")
    try:
        url = cfg.url(name)
        with db.connect(url) as conn:
            db.migrate(conn)
            t0 = time.perf_counter()
            report = import_parcels(conn, parcels, aoi=AOI, year=YEAR, id_column="parcel_id",
                                    crop_code_column=NO_COLUMN, crop_name_column=NO_COLUMN)
            import_s = time.perf_counter() - t0
        images = []
        for i in range(4 + args.warm_runs):  # a new product per run: the same bytes under another name
            link = Path(links.name) / f"S2_tile_{i}.tif"
            os.link(image, link)
            images.append(link)
        image.read_bytes()  # page cache: every contender reads the file from memory
        load_before = os.getloadavg()
        done = subprocess.run([sys.executable, "-c", IN_PROCESS, url, AOI, str(YEAR), *map(str, images[:2])],
                              capture_output=True, text=True, cwd=PROJECT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"in-process extraction failed:\n{done.stderr[-3000:]}")
        engine_cold, engine_warm = json.loads(done.stdout.strip().splitlines()[-1])
        with tempfile.TemporaryDirectory(prefix="cbm_labels_") as labels:
            env = {**os.environ, "CBM_DATABASE_URL": url, "CBM_LABEL_CACHE_DIR": labels}
            cli_cold = _cli(images[2], env)
            cli_warm = [_cli(images[3 + i], env) for i in range(args.warm_runs)]
        load_after = os.getloadavg()
    finally:
        links.cleanup()
        cluster.drop_database(cfg, name)
    _report(args, report.n_imported, import_s, engine_cold, engine_warm, cli_cold, cli_warm, load_before, load_after)


def _report(args: argparse.Namespace, n_parcels: int, import_s: float, engine_cold: dict[str, Any],
            engine_warm: dict[str, Any], cli_cold: dict[str, Any], cli_warm: list[dict[str, Any]],
            load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    warm = min(cli_warm, key=lambda run: run["seconds"])
    print(f"\n== extract_cli_bench: {args.size}x{args.size} px at 10 m, bands B04 B08 SCL in one GeoTIFF, "
          f"{n_parcels} parcels (imported in {import_s:.1f} s), seed {args.seed}")
    print(f"machine: {os.cpu_count()} CPUs, load average before {load_before[0]:.2f} after {load_after[0]:.2f} "
          f"(shared machine)")
    print(f"in-process extract_file: cold {engine_cold['seconds']:.2f} s, warm {engine_warm['seconds']:.2f} s "
          f"({engine_cold['parcels']} parcels, {engine_cold['rows']} statistics rows)")
    for label, run in (("cold (labels rasterised)", cli_cold), ("warm (labels on disk)", warm)):
        print(f"cbm extract {label:25s}: {run['seconds']:.2f} s wall = extraction {run['extraction_s']:.2f} s + "
              f"start-up, connection and exit {run['seconds'] - run['extraction_s']:.2f} s "
              f"({run['parcels']} parcels, {run['rows']} rows)")
    if len(cli_warm) > 1:
        times = ", ".join(f"{r['seconds']:.2f}" for r in cli_warm)
        print(f"cbm extract warm runs: {times} s "
              f"(median {statistics.median(r['seconds'] for r in cli_warm):.2f})")
    print(f"ratio CLI / in-process: warm CLI / cold engine {warm['seconds'] / engine_cold['seconds']:.2f}x "
          f"(goal <= 1.3), warm / warm {warm['seconds'] / engine_warm['seconds']:.2f}x, "
          f"cold / cold {cli_cold['seconds'] / engine_cold['seconds']:.2f}x")
    if {engine_cold["rows"], engine_warm["rows"], cli_cold["rows"], warm["rows"]} != {engine_cold["rows"]}:
        print("WARNING: the runs wrote different row counts")


if __name__ == "__main__":
    main()
