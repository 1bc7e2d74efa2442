"""Seeded synthetic data of the pipeline benchmark: a parcel register and full-size Sentinel products.

What :func:`build` writes under ``<out>/<key>/`` (key = tile size, parcels, seed), in the local
catalogue format (ARCHITECTURE.md, "Formats") through the demo's writers
(:func:`cbm_tasks.demo.writer.write_product`, :func:`~cbm_tasks.demo.writer.write_parcels`):

* ``parcels/bench_parcels.gpkg``: about *n_parcels* fields (0.1-20 ha, irregular, some with holes
  or in two parts; ``synthetic_fields.field_parcels``) over MGRS tile 31UDS, EPSG:32631;
* ``catalogue/sentinel-2-l2a/<id>/``: Sentinel-2 L2A products of that tile, the bands of the demo
  catalogue: B02 B03 B04 B08 at 10 m (size x size), B05 B06 B07 B8A B11 B12 and SCL at 20 m
  (size/2 squared); uint16 DN with processing baseline 05.10's scale 1e-4 and offset -0.1; a
  vegetation fraction per parcel and date drives the reflectance; clouds with shadows (SCL 8, 9,
  3) and a nodata corner outside the swath;
* ``catalogue/sentinel-1-card-bs/<id>/``: Sentinel-1 CARD-BS scenes, VV and VH gamma0 (linear
  power, float32) at 10 m on the scene's own grid (shifted 2 km west and 1.5 km north of the
  tile), speckled; NaN outside the swath.

Every product is cached on its own (kept when its item JSON exists, written last), so asking for
more images adds only the new ones. Arrays are made with NumPy in row blocks; the label raster
of the parcels (the project's rasteriser) gives each pixel its field. Nothing here is real data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from shapely.geometry import MultiPolygon
from synthetic_fields import field_parcels

from cbm_tasks.demo.writer import SCL_CLASSES, BandFile, write_parcels, write_product
from cbm_tasks.extraction.rasterize import rasterize_parcels

__all__ = ["AOI", "EPSG", "S2_BANDS", "BenchData", "build"]

log = logging.getLogger(__name__)

AOI = "bench"
EPSG = 32631
X0, Y0 = 399960.0, 5600040.0  # upper-left corner of MGRS tile 31UDS
S1_SHIFT_PX = (150, 200)  # the CARD grid's origin: 150 rows north, 200 columns west of the tile's
# band -> (bare soil, full green cover) surface reflectance, resolution in m
S2_BANDS = {
    "B02": (0.06, 0.03, 10), "B03": (0.09, 0.06, 10), "B04": (0.12, 0.03, 10), "B08": (0.22, 0.45, 10),
    "B05": (0.14, 0.09, 20), "B06": (0.18, 0.30, 20), "B07": (0.20, 0.40, 20), "B8A": (0.23, 0.46, 20),
    "B11": (0.30, 0.20, 20), "B12": (0.25, 0.10, 20),
}
# WorldCereal crop-type code, name, share of parcels
_CROPS = ((1110, "Winter wheat", 0.35), (1200, "Maize", 0.2), (9120, "Permanent grass (mown)", 0.35),
          (3100, "Potatoes", 0.1))
_BLOCK_ROWS = 1024
_FIRST_S2 = datetime(2024, 4, 1, 10, 56, 21, tzinfo=UTC)
_FIRST_S1 = datetime(2024, 4, 3, 17, 32, 8, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BenchData:
    """The generated AOI: where it is and what it holds."""

    root: Path
    catalogue_root: Path
    parcels_file: Path
    n_parcels: int
    s2_ids: tuple[str, ...]
    s1_ids: tuple[str, ...]
    size: int
    seconds: float  # generation time of this call (0 when everything came from the cache)

    @property
    def year(self) -> int:
        """Campaign year of the parcels and images."""
        return _FIRST_S2.year

    def disk_bytes(self) -> int:
        """Bytes of every file of the AOI."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


class _Labels:
    """The parcel label raster of the tile (10 m), made on first use only (cached products need none)."""

    def __init__(self, geoms: Callable[[], tuple[np.ndarray, np.ndarray]], size: int) -> None:
        self._geoms, self._size = geoms, size
        self._labels: np.ndarray | None = None

    def tile(self) -> np.ndarray:
        if self._labels is None:
            t0 = time.perf_counter()
            geoms, keys = self._geoms()
            self._labels = rasterize_parcels(geoms, keys, transform=Affine(10.0, 0, X0, 0, -10.0, Y0),
                                             shape=(self._size, self._size))
            log.info("rasterised %d parcels on %dx%d in %.1f s", len(keys), self._size, self._size,
                     time.perf_counter() - t0)
        return self._labels

    def s1_grid(self) -> np.ndarray:
        """The tile's labels on the CARD grid (shifted whole pixels; 0 where the tile has no label)."""
        dy, dx = (min(s, self._size // 4) for s in S1_SHIFT_PX)
        shifted = np.zeros((self._size, self._size), np.int32)
        shifted[dy:, dx:] = self.tile()[:self._size - dy, :self._size - dx]
        return shifted


def _swath(rows: slice, size: int, *, fraction: float) -> np.ndarray:
    """Pixels of a block outside the orbit's swath: a corner cut off diagonally, as on many S2 tiles."""
    yy = np.arange(rows.start, min(rows.stop, size))[:, None]
    xx = np.arange(size)[None, :]
    return (xx + yy) < int(fraction * size)  # type: ignore[no-any-return]


def _clouds(size20: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cloud core, rim and shadow masks on the 20 m grid: a few round clouds, 0-25 % of the tile."""
    core = np.zeros((size20, size20), bool)
    rim = np.zeros((size20, size20), bool)
    yy, xx = np.ogrid[:size20, :size20]
    for _ in range(int(rng.integers(0, 5))):
        cy, cx = rng.uniform(0, size20, 2)
        radius = rng.uniform(0.03, 0.15) * size20
        distance = np.hypot(yy - cy, xx - cx)
        core |= distance < 0.8 * radius
        rim |= distance < radius
    rim &= ~core
    cloud = core | rim
    offset = max(1, size20 // 50)
    shadow = np.zeros_like(cloud)
    shadow[offset:, offset:] = cloud[:-offset, :-offset]
    return core, rim, shadow & ~cloud


def _s2_product(labels: np.ndarray, fraction: np.ndarray, rng: np.random.Generator) -> list[BandFile]:
    """Return the eleven band files of one Sentinel-2 L2A date (DN = 10000 x reflectance + 1000)."""
    size = labels.shape[0]
    size20 = size // 2
    core, rim, shadow = _clouds(size20, rng)
    cloud = core | rim
    bands: list[BandFile] = []
    for name, (soil, green, resolution) in S2_BANDS.items():
        grid = labels if resolution == 10 else labels[::2, ::2]
        n = grid.shape[0]
        dn = np.empty((n, n), np.uint16)
        for start in range(0, n, _BLOCK_ROWS):
            rows = slice(start, min(start + _BLOCK_ROWS, n))
            block = grid[rows]
            reflectance = soil + (green - soil) * fraction[block]
            reflectance += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(0.004)
            up = 1 if resolution == 20 else 2  # masks are at 20 m
            cloudy = np.repeat(np.repeat(cloud[start // up:(rows.stop + up - 1) // up], up, 0), up, 1)[:block.shape[0]]
            dark = np.repeat(np.repeat(shadow[start // up:(rows.stop + up - 1) // up], up, 0), up, 1)[:block.shape[0]]
            reflectance = np.where(cloudy[:, :n], np.float32(0.35), np.where(dark[:, :n], reflectance * 0.5,
                                                                             reflectance))
            values = np.clip(np.rint(reflectance * 10000 + 1000), 1, 65535).astype(np.uint16)
            values[_swath(rows, n, fraction=0.15)] = 0
            dn[rows] = values
        transform = Affine(float(resolution), 0, X0, 0, -float(resolution), Y0)
        bands.append(BandFile(name, dn, transform, nodata=0, scale=1e-4, offset=-0.1))
    labels20 = labels[::2, ::2]
    scl = np.where(fraction[labels20] > 0.45, 4, 5).astype(np.uint8)
    scl[shadow] = 3
    scl[rim] = 8
    scl[core] = 9
    for start in range(0, size20, _BLOCK_ROWS):
        rows = slice(start, min(start + _BLOCK_ROWS, size20))
        scl[rows][_swath(rows, size20, fraction=0.15)] = 0
    bands.append(BandFile("SCL", scl, Affine(20.0, 0, X0, 0, -20.0, Y0), nodata=0, classes=SCL_CLASSES))
    return bands


def _s1_product(labels: np.ndarray, fraction: np.ndarray, rng: np.random.Generator,
                transform: Affine) -> list[BandFile]:
    """Return VV and VH gamma0 (linear power, float32) of one CARD-BS scene; 4.4-look speckle."""
    size = labels.shape[0]
    bands = []
    for name, (bare_db, green_db) in (("VV", (-15.0, -9.0)), ("VH", (-25.0, -15.0))):
        power = np.empty((size, size), np.float32)
        for start in range(0, size, _BLOCK_ROWS):
            rows = slice(start, min(start + _BLOCK_ROWS, size))
            block = labels[rows]
            db = bare_db + (green_db - bare_db) * fraction[block]
            speckle = rng.gamma(4.4, 1 / 4.4, block.shape).astype(np.float32)
            values = (np.power(np.float32(10), db / np.float32(10)) * speckle).astype(np.float32)
            values[_swath(rows, size, fraction=0.1)] = np.nan
            power[rows] = values
        bands.append(BandFile(name, power, transform, nodata=float("nan"), title=f"{name} gamma0, linear power"))
    return bands


def _fraction(n_parcels: int, rng: np.random.Generator) -> np.ndarray:
    """Green vegetation fraction per label (0 = outside any parcel: hedges, roads, villages)."""
    fraction = rng.beta(2.0, 2.0, n_parcels + 1).astype(np.float32)
    fraction[0] = 0.3
    return fraction


def build(out: Path, *, size: int, n_parcels: int, n_s2: int, n_s1: int, seed: int) -> BenchData:
    """Write (or reuse) the AOI: parcels, *n_s2* Sentinel-2 L2A and *n_s1* CARD-BS products.

    Args:
        out: cache folder; the AOI goes to ``out/s<size>_p<n_parcels>_seed<seed>``.
        size: tile width in 10 m pixels (10980 = a full Sentinel-2 tile); even.
        n_parcels: parcels wanted.
        n_s2, n_s1: products per sensor (every 5 and 6 days from April 2024).
        seed: seed of everything; the same arguments give the same products.

    Raises:
        ValueError: *size* is odd or below 64, or a count is negative.
    """
    if size < 64 or size % 2 or min(n_parcels, n_s2, n_s1) < 0:
        raise ValueError(f"bench data: need an even size >= 64 and counts >= 0, got size={size} "
                         f"n_parcels={n_parcels} n_s2={n_s2} n_s1={n_s1}")
    t0 = time.perf_counter()
    root = out / f"s{size}_p{n_parcels}_seed{seed}"
    catalogue = root / "catalogue"
    parcels_file = root / "parcels" / "bench_parcels.gpkg"
    cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def geoms() -> tuple[np.ndarray, np.ndarray]:
        if "parcels" not in cached:
            cached["parcels"] = field_parcels(size, n_parcels, seed, x0=X0, y0=Y0)
        return cached["parcels"]

    if not parcels_file.exists():
        shapes, keys = geoms()
        rng = np.random.default_rng([seed, 0])
        crops = rng.choice(len(_CROPS), len(keys), p=[share for _, _, share in _CROPS])
        write_parcels(parcels_file, layer="bench_parcels", epsg=EPSG,
                      geometries=[g if isinstance(g, MultiPolygon) else MultiPolygon([g]) for g in shapes],
                      columns={"parcel_id": np.array([f"bench-{k:06d}" for k in keys], dtype=object),
                               "crop_code": np.array([_CROPS[c][0] for c in crops], dtype=np.int32),
                               "crop_name": np.array([_CROPS[c][1] for c in crops], dtype=object)})
    labels = _Labels(geoms, size)
    dy, dx = (min(s, size // 4) for s in S1_SHIFT_PX)
    s1_x0, s1_y0 = X0 - 10.0 * dx, Y0 + 10.0 * dy
    common = {"cbm:synthetic": True, "cbm:seed": seed}

    def s2(index: int) -> str:
        when = _FIRST_S2 + timedelta(days=5 * index)
        item_id = f"SYNTH_S2_31UDS_{when:%Y%m%dT%H%M%S}"
        folder = catalogue / "sentinel-2-l2a" / item_id
        if not (folder / f"{item_id}.json").exists():
            rng = np.random.default_rng([seed, 2, index])
            bands = _s2_product(labels.tile(), _fraction(int(labels.tile().max()), rng), rng)
            write_product(folder, item_id, bands=bands, acquired_at=when, epsg=EPSG, overviews=False,
                          bounds=(X0, Y0 - 10.0 * size, X0 + 10.0 * size, Y0),
                          properties={"cbm:collection": "SENTINEL-2", "cbm:product_type": "S2MSI2A",
                                      "constellation": "sentinel-2", "grid:code": "MGRS-31UDS",
                                      "processing:version": "05.10", **common},
                          extensions=("projection", "raster", "classification", "grid", "processing"))
            log.info("wrote %s", item_id)
        return item_id

    def s1(index: int) -> str:
        when = _FIRST_S1 + timedelta(days=6 * index)
        item_id = f"SYNTH_S1_CARD-BS_{when:%Y%m%dT%H%M%S}"
        folder = catalogue / "sentinel-1-card-bs" / item_id
        if not (folder / f"{item_id}.json").exists():
            rng = np.random.default_rng([seed, 1, index])
            bands = _s1_product(labels.s1_grid(), _fraction(int(labels.tile().max()), rng), rng,
                                Affine(10.0, 0, s1_x0, 0, -10.0, s1_y0))
            write_product(folder, item_id, bands=bands, acquired_at=when, epsg=EPSG, overviews=False,
                          bounds=(s1_x0, s1_y0 - 10.0 * size, s1_x0 + 10.0 * size, s1_y0),
                          properties={"cbm:collection": "SENTINEL-1", "cbm:product_type": "CARD-BS",
                                      "constellation": "sentinel-1", "sat:orbit_state": "ascending",
                                      "sat:relative_orbit": 110, **common},
                          extensions=("projection", "raster", "sat"))
            log.info("wrote %s", item_id)
        return item_id

    s2_ids, s1_ids = [], []
    # alternating, so that a cache built part-way holds both sensors; the COG driver compresses
    # with every core (GDAL_NUM_THREADS); no overviews: the extraction reads full resolution only
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        for index in range(max(n_s2, n_s1)):
            if index < n_s2:
                s2_ids.append(s2(index))
            if index < n_s1:
                s1_ids.append(s1(index))
    n_found = len(geoms()[1]) if "parcels" in cached else _count_parcels(parcels_file)
    return BenchData(root, catalogue, parcels_file, n_found, tuple(s2_ids), tuple(s1_ids), size,
                     time.perf_counter() - t0)


def _count_parcels(path: Path) -> int:
    import pyogrio

    return int(pyogrio.read_info(path)["features"])
