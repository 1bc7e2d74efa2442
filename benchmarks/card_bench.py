"""CARD-BS benchmark: our sarsen backend against sarsen's own terrain_correction, per output pixel.

The input is the real Rome GRD (real orbit, annotation, calibration; the shared copy has no
pixels, so its measurement is filled with known DNs around the area, as in the tests) with
VV and VH. Each case runs in its own process, so its peak RSS is its own:

* ours: ``SarsenBackend.make`` - SAFE check, UTM 10 m grid of the AOI plus margin, DEM warped with
  the EGM96 geoid added, one acquisition simulation shared by VV and VH, gamma0, north-up COG;
* peer: ``sarsen.apps.terrain_correction`` on the same DEM grid (written as a GeoTIFF), once per
  polarisation (its API takes one measurement group), same radiometry (gamma_bilinear, 5x5
  grouping) and interpolation; its output is south-up and not a COG.

Areas: ``rome`` (the 0.1-degree Rome DEM, ~0.9 Mpx at 10 m) and smaller boxes inside it; with
``--large``, a synthetic DEM (smooth hills, EGM96 heights) three times as wide and high (~8 Mpx).
Printed per case: seconds, peak RSS, both per million output pixels, and the AOI cropping
ratio (pixels of the whole scene at 10 m / pixels computed).

Usage:
    .venv/bin/python benchmarks/card_bench.py              # rome + 2 km box, ~1-2 minutes on 2 cores
    .venv/bin/python benchmarks/card_bench.py --large      # adds the ~8 Mpx synthetic extent
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Rome GRD filler shared with the tests
GEOID = "/usr/share/proj/egm96_15.gtx"
LON, LAT = 12.4999, 42.0001  # centre of the Rome DEM
CASES = {"box2km": 0.01, "rome": 0.043, "large": 0.15}  # half size in degrees (rome: the DEM less the margin)


def _inputs(work: Path, half: float) -> tuple[Path, str]:
    """Fill the Rome GRD around the area; return the SAFE and the DEM (synthetic when beyond Rome's)."""
    from card_data import rome_grd

    safe = work / "safe"
    if not safe.exists():
        safe.mkdir(parents=True)
        rome_grd(safe, lon=LON, lat=LAT, half_size_deg=max(half, 0.05) + 0.03, dn_first={"VV": 300, "VH": 100},
                 dn_second={"VV": 600, "VH": 200})
    dem = str(ROOT.parent / "shared" / "data" / "s1_sarsen_rome" / "Rome-30m-DEM.tif")
    if half > 0.05:
        dem = str(_synthetic_dem(work / "dem_large.tif", half + 0.02))
    return next(safe.glob("*.SAFE")), dem


def _synthetic_dem(path: Path, half: float) -> Path:
    """Smooth hills (0-400 m above EGM96) at 1 arc-second, in the Rome DEM's compound CRS."""
    import numpy as np
    import rasterio
    from affine import Affine

    if path.exists():
        return path
    step = 1 / 3600
    n = int(2 * half / step)
    y, x = np.mgrid[0:n, 0:n] * step
    heights = 200 + 150 * np.sin(x * 40) * np.cos(y * 30) + 50 * np.sin(x * 170 + y * 90)
    with rasterio.open(ROOT.parent / "shared" / "data" / "s1_sarsen_rome" / "Rome-30m-DEM.tif") as rome:
        crs = rome.crs
    profile = {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "float32", "crs": crs,
               "transform": Affine(step, 0, LON - half, 0, -step, LAT + half), "tiled": True, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(heights.astype(np.float32), 1)
    return path


def run_case(case: str, contender: str, work: Path) -> dict[str, Any]:
    """One measurement (in this process): make the CARD-BS of the case's area."""
    import shapely
    from card_data import rome_job, rome_product

    from cbm_tasks.card.backend import BackendConfig
    from cbm_tasks.card.dem import DemConfig, heights_on_grid
    from cbm_tasks.card.grid import auto_utm_epsg, output_grid
    from cbm_tasks.card.sarsen_backend import SarsenBackend

    half = CASES[case]
    safe, dem = _inputs(work, half)
    area = shapely.box(LON - half, LAT - half, LON + half, LAT + half).wkt
    product = rome_product(safe)
    job = rome_job(product, area)
    cfg = BackendConfig(dem_path=dem, geoid_path=GEOID, margin_m=100.0)
    grid = output_grid(job.footprint_wkt, epsg=auto_utm_epsg(product.footprint_wkt or ""), resolution_m=10.0,
                       margin_m=cfg.margin_m)
    out = work / f"{case}_{contender}"
    out.mkdir(exist_ok=True)
    started = time.perf_counter()
    if contender == "ours":
        SarsenBackend(cfg).make(job, [(product, safe)], out)
    else:
        import numpy as np
        import rasterio
        import sarsen
        from sarsen import apps

        heights = heights_on_grid(DemConfig(dem, GEOID), grid, product=product.name)  # the same DEM grid
        dem_file = out / "dem_utm.tif"
        with rasterio.open(dem_file, "w", driver="GTiff", width=grid.width, height=grid.height, count=1,
                           dtype="float32", crs=grid.crs, transform=grid.transform) as dst:
            dst.write(heights.astype(np.float32), 1)
        for pol in ("VV", "VH"):
            apps.terrain_correction(sarsen.Sentinel1SarProduct(str(safe), measurement_group=f"IW/{pol}"),
                                    str(dem_file), output_urlpath=str(out / f"gtc_{pol}.tif"),
                                    correct_radiometry="gamma_bilinear", interp_method="linear",
                                    grouping_area_factor=(5.0, 5.0), chunks=1024, radiometry_chunks=1024)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scene = shapely.from_wkt(product.footprint_wkt or "")
    from pyproj import Transformer

    to_utm = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    scene_utm = shapely.Polygon(zip(*to_utm.transform(*scene.exterior.xy), strict=True))
    return {"case": case, "contender": contender, "pixels": grid.n_pixels, "seconds": round(seconds, 2),
            "peak_mb": round(peak_mb), "scene_pixels": round(scene_utm.area / 100.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="add the ~8 Mpx synthetic extent")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cbm_card_bench")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.work)))  # noqa: T201 - read by the parent
        return
    args.work.mkdir(parents=True, exist_ok=True)
    cases = ["box2km", "rome"] + (["large"] if args.large else [])
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for case in cases:
        for contender in ("ours", "peer"):
            done = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--one", case, contender],
                                  capture_output=True, text=True, check=True)
            results[(case, contender)] = json.loads(done.stdout.strip().splitlines()[-1])
    header = (f"{'case':<8} {'contender':<9} {'Mpx':>6} {'s':>7} {'peak MB':>8} {'s/Mpx':>7} {'MB/Mpx':>7} "
              f"{'crop ratio':>10} {'peer/ours s':>11}")
    print(header)  # noqa: T201
    for (case, contender), r in results.items():
        mpx = r["pixels"] / 1e6
        ratio = results[(case, "peer")]["seconds"] / results[(case, "ours")]["seconds"]
        print(f"{case:<8} {contender:<9} {mpx:>6.2f} {r['seconds']:>7.1f} {r['peak_mb']:>8} "  # noqa: T201
              f"{r['seconds'] / mpx:>7.1f} {r['peak_mb'] / mpx:>7.0f} {r['scene_pixels'] / r['pixels']:>10.0f} "
              f"{ratio if contender == 'ours' else float('nan'):>11.2f}")


if __name__ == "__main__":
    main()
