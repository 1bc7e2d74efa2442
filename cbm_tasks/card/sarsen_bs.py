"""CARD-BS with sarsen: radiometrically terrain-corrected gamma0 from an IW GRD, pure Python.

sarsen geocodes backwards: for every pixel of a DEM on the output grid it finds the
zero-Doppler azimuth time and slant range from the orbit, reads calibrated beta0 there
(linear interpolation), and for terrain flattening sums the illuminated DEM area per radar
pixel (``gamma_bilinear``): gamma0 = beta0 / simulated beta0 area (Small 2011). The acquisition
geometry is simulated once and shared by all polarisations.

Three traps, handled here:

- sarsen keeps the DEM's row order and wants it south-up (y increasing); its output is
  south-up too, so the DEM goes in flipped and the result is flipped back to north-up;
- the flattening works on dask blocks with a 128-row/column overlap and fails on a block
  smaller than that, so blocks are cut evenly (:func:`block_sizes`) and grids are at least 128
  pixels a side (:data:`cbm_tasks.card.grid.MIN_PIXELS`);
- heights must be ellipsoidal (:mod:`cbm_tasks.card.dem` adds the geoid).

Memory grows with the grid (about 1 KB per output pixel while the simulation runs, measured
by ``benchmarks/card_bench.py``) plus the GRD blocks the grid touches; ``block_pixels`` bounds
the simulation's working set.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from cbm_tasks.card.grid import MIN_PIXELS, OutputGrid
from cbm_tasks.errors import CorruptProductError

__all__ = ["block_sizes", "gamma0_rtc", "sarsen_version"]

log = logging.getLogger(__name__)


def sarsen_version() -> str:
    """Return the installed sarsen version (recorded in lineage)."""
    import sarsen

    return str(sarsen.__version__)


def block_sizes(n: int, *, block: int) -> tuple[int, ...]:
    """Split *n* pixels into near-equal blocks of about *block*, none smaller than 128.

    Raises:
        ValueError: *n* < 128 or *block* < 256 (two blocks of at least 128 must fit).
    """
    if n < MIN_PIXELS or block < 2 * MIN_PIXELS:
        raise ValueError(f"need n >= {MIN_PIXELS} and block >= {2 * MIN_PIXELS}, got n={n}, block={block}")
    count = max(1, round(n / block))
    base, extra = divmod(n, count)
    return tuple(base + 1 if index < extra else base for index in range(count))


def _dem_raster(heights: np.ndarray, grid: OutputGrid, *, block: int) -> xr.DataArray:
    """The heights as sarsen wants them: south-up, pixel-centre coordinates, CRS, dask blocks."""
    import rioxarray  # noqa: F401 - registers the .rio accessor sarsen uses

    half = grid.resolution_m / 2
    xs = grid.left + half + grid.resolution_m * np.arange(grid.width)
    ys = grid.top - half - grid.resolution_m * np.arange(grid.height)
    raster = xr.DataArray(heights[::-1], dims=("y", "x"), coords={"y": ys[::-1], "x": xs}, name="dem")
    raster = raster.chunk({"y": block_sizes(grid.height, block=block), "x": block_sizes(grid.width, block=block)})
    with_crs: xr.DataArray = raster.rio.write_crs(grid.crs)
    return with_crs


def gamma0_rtc(
    safe: Path,
    *,
    polarisations: tuple[str, ...],
    grid: OutputGrid,
    heights: np.ndarray,
    terrain_flattening: bool = True,
    grouping_area_factor: tuple[float, float] = (5.0, 5.0),
    block_pixels: int = 1024,
    threads: int = 2,
) -> dict[str, np.ndarray]:
    """Return gamma0 (or beta0 without *terrain_flattening*) per polarisation on *grid*, north-up.

    Args:
        safe: a checked IW GRD SAFE folder (:func:`cbm_tasks.card.safe.inspect_safe`).
        polarisations: e.g. ``("VV", "VH")``.
        grid: the output grid.
        heights: ellipsoidal heights on *grid*, north-up (:func:`cbm_tasks.card.dem.heights_on_grid`).
        terrain_flattening: True: gamma0 flattened by the simulated illuminated area (CARD-BS);
            False: geocoded beta0 (what the calibration LUT alone gives, for checks).
        grouping_area_factor: (azimuth, range) size of the radar bins the DEM areas are summed
            in, in GRD pixels. With a 10 m DEM and 10 m GRD pixels, sarsen's default 3 leaves
            ~9 DEM samples per bin and a +-8 % pixel pattern in gamma0 on flat land (measured on
            the Rome GRD); 5 brings it under 3 % at a 50 m smoothing of the terrain correction.
        block_pixels: dask block side; memory of the simulation grows with its square.
        threads: dask threads.

    Returns:
        float32 arrays, linear power; NaN outside the swath and where the simulated area is 0 (shadow).

    Raises:
        ValueError: *heights* does not match *grid*.
        CorruptProductError: sarsen cannot read the product (annotation, calibration, measurement).
    """
    if heights.shape != (grid.height, grid.width):
        raise ValueError(f"heights {heights.shape} do not match grid {(grid.height, grid.width)}")
    from sarsen import Sentinel1SarProduct, apps, chunking, orbit, radiometry, scene

    started = time.perf_counter()
    dem_raster = _dem_raster(heights, grid, block=block_pixels)
    products = {pol: Sentinel1SarProduct(str(safe), measurement_group=f"IW/{pol}") for pol in polarisations}
    first = products[polarisations[0]]
    out: dict[str, np.ndarray] = {}
    try:
        with warnings.catch_warnings(), dask.config.set(scheduler="threads", num_workers=threads):
            # the measurement TIFFs carry GCPs, not a geotransform; that is expected
            warnings.simplefilter("ignore", category=UserWarning)
            dem_ecef = xr.map_blocks(scene.convert_to_dem_ecef, dem_raster)
            template = dem_ecef.isel(axis=0).drop_vars(["axis", "spatial_ref"]) * 0.0
            interpolator = orbit.OrbitPolyfitInterpolator.from_position(first.state_vectors())
            acquisition = apps.map_simulate_acquisition(
                dem_ecef, interpolator, correct_radiometry="gamma_bilinear" if terrain_flattening else None,
            ).persist()
            area = None
            if terrain_flattening:
                area = chunking.map_overlap(
                    obj=acquisition, function=radiometry.gamma_weights_bilinear, chunks=block_pixels,
                    bound=MIN_PIXELS, kwargs=first.grid_parameters(grouping_area_factor), template=template,
                ).compute()
            for pol, product in products.items():
                geocoded = xr.map_blocks(apps.geocode_grd_chunk, acquisition,
                                         kwargs={"product": product, "method": "linear"}).compute()
                values = geocoded.values if area is None else geocoded.values / area.values
                values = np.where(np.isfinite(values), values, np.nan).astype(np.float32)
                out[pol] = values[::-1].copy()  # south-up -> north-up
    except (OSError, KeyError) as err:
        raise CorruptProductError(f"product {safe.name}: sarsen cannot read it: {type(err).__name__}: {err}") from err
    valid = {pol: float(np.isfinite(values).mean()) for pol, values in out.items()}
    log.info("sarsen product=%s polarisations=%s pixels=%d valid=%s flattening=%s seconds=%.2f", safe.name,
             ",".join(polarisations), grid.n_pixels, {p: round(v, 3) for p, v in valid.items()}, terrain_flattening,
             time.perf_counter() - started)
    return out
