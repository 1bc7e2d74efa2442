"""rasterize_parcels against GDAL (rasterio.features.rasterize, all_touched=False) pixel for pixel.

Random polygons (also with vertices exactly on pixel centres, where GDAL's tie rules decide),
both ring orientations, holes, MultiPolygons, overlaps, parts outside the grid; and the real
Flemish parcel register of the WorldCereal 31UDS chip, polygonised and burnt back.
"""

from __future__ import annotations

import numpy as np
import pyogrio.raw
import pytest
import rasterio.features
import shapely
import xarray as xr
from affine import Affine
from conftest import shared_data

from cbm_tasks.errors import GeometryError
from cbm_tasks.extraction.rasterize import rasterize_parcels

T10 = Affine(10, 0, 501360, 0, -10, 5629680)  # the WorldCereal chip's 10 m grid
TRANSFORMS = [
    Affine(10, 0, 500000, 0, -10, 5600000),  # north-up, as every Sentinel-2 tile
    Affine.identity(),  # y pointing down in CRS units: ring orientation flips in pixel space
    Affine(20, 0, 399960.5, 0, -20, 5700000.25),  # origin off the 20 m lattice
    Affine(8.66, 5, 500000, 5, -8.66, 5600000),  # rotated: GDAL's general inverse geotransform
]


def _gdal(geoms: list[shapely.Geometry], keys: np.ndarray, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    return rasterio.features.rasterize(zip(geoms, keys.tolist(), strict=True), out_shape=shape,
                                       transform=transform, fill=0, dtype="int32", all_touched=False)


def _to_crs(t: Affine, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    return np.c_[t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f]


def _random_polygon(rng: np.random.Generator, transform: Affine, shape: tuple[int, int],
                    snap: float | None) -> shapely.Polygon:
    """A star-shaped polygon in pixel space (partly outside the grid at times), mapped to CRS units."""
    rows, cols = shape
    cx, cy = rng.uniform(-10, cols + 10), rng.uniform(-10, rows + 10)
    n = int(rng.integers(3, 14))
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(0.2, 20, n)
    x, y = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
    if snap is not None:  # vertices on pixel centres / edges: the tie-breaking cases
        x, y = np.round(x / snap) * snap, np.round(y / snap) * snap
    hole = None
    if rng.random() < 0.3:
        hr = rng.uniform(0.5, 3)
        hx, hy = cx + hr * np.array([-1, 1, 1, -1]), cy + hr * np.array([-1, -1, 1, 1])
        if snap is not None:
            hx, hy = np.round(hx / snap) * snap, np.round(hy / snap) * snap
        hole = _to_crs(transform, hx, hy)
    exterior = _to_crs(transform, x, y)
    if rng.random() < 0.5:
        exterior = exterior[::-1]
    if hole is not None and rng.random() < 0.5:
        hole = hole[::-1]
    return shapely.Polygon(exterior, [] if hole is None else [hole])


@pytest.mark.parametrize("transform", TRANSFORMS, ids=["north-up", "identity", "offset-20m", "rotated"])
@pytest.mark.parametrize("snap", [None, 0.5, 1.0], ids=["free", "half-pixel", "pixel"])
def test_random_polygons_match_gdal(transform: Affine, snap: float | None) -> None:
    rng = np.random.default_rng(7)
    shape = (120, 150)
    geoms: list[shapely.Geometry] = [_random_polygon(rng, transform, shape, snap) for _ in range(400)]
    geoms += [shapely.MultiPolygon([_random_polygon(rng, transform, shape, snap) for _ in range(2)])
              for _ in range(60)]  # parts may overlap: GDAL burns each part on its own
    keys = rng.permutation(np.arange(1, len(geoms) + 1)).astype(np.int32)
    ours = rasterize_parcels(geoms, keys, transform=transform, shape=shape)
    assert ours.dtype == np.int32 and ours.shape == shape
    np.testing.assert_array_equal(ours, _gdal(geoms, keys, transform, shape))
    assert (ours > 0).mean() > 0.3


def test_one_polygon_at_a_time_matches_gdal_on_ties() -> None:
    """Each polygon alone (no overlap can hide a difference), vertices on half pixels."""
    rng = np.random.default_rng(11)
    shape = (60, 60)
    for transform in TRANSFORMS[:2]:
        for _ in range(300):
            geom = _random_polygon(rng, transform, (40, 40), 0.5)
            ours = rasterize_parcels([geom], np.array([1]), transform=transform, shape=shape)
            np.testing.assert_array_equal(ours, _gdal([geom], np.array([1]), transform, shape), err_msg=geom.wkt)


def test_pixel_centre_rule_and_burn_order() -> None:
    t = Affine.identity()
    square = shapely.box(1.0, 1.0, 4.0, 3.0)  # centres 1.5..3.5 x 1.5..2.5 are inside
    sliver = shapely.box(5.1, 5.1, 5.4, 5.9)  # smaller than a pixel, no centre inside
    later = shapely.box(3.0, 2.0, 5.0, 4.0)  # overlaps the square: burnt later, wins
    labels = rasterize_parcels([square, sliver, later], np.array([7, 8, 9]), transform=t, shape=(6, 6))
    expected = np.zeros((6, 6), np.int32)
    expected[1:3, 1:4] = 7
    expected[2:4, 3:5] = 9
    np.testing.assert_array_equal(labels, expected)
    assert 8 not in labels


def test_holes_multipolygons_and_parts_outside() -> None:
    t = Affine(10, 0, 0, 0, -10, 100)  # 10 x 10 grid, y from 100 down to 0
    donut = shapely.box(0, 40, 60, 100).difference(shapely.box(20, 60, 40, 80))
    two_parts = shapely.MultiPolygon([shapely.box(70, 80, 90, 100), shapely.box(70, 40, 90, 60)])
    outside = shapely.box(-50, -50, 30, 20)  # only the bottom-left 3 x 2 pixels are in the grid
    labels = rasterize_parcels([donut, two_parts, outside], np.array([1, 2, 3]), transform=t, shape=(10, 10))
    assert (labels == 1).sum() == 6 * 6 - 2 * 2 and (labels[2:4, 2:4] == 0).all()
    assert (labels == 2).sum() == 8 and (labels[2:4, 7:9] == 0).all()
    assert (labels == 3).sum() == 6 and (labels[8:, :3] == 3).all()


def test_no_geometries_gives_an_empty_raster() -> None:
    labels = rasterize_parcels([], np.empty(0, np.int32), transform=T10, shape=(5, 4))
    assert labels.shape == (5, 4) and not labels.any()


@pytest.mark.parametrize(
    ("geoms", "keys", "error", "match"),
    [
        ([shapely.box(0, 0, 1, 1), shapely.Polygon()], [4, 5], GeometryError, "geometry 1 \\(key 5\\) is empty"),
        ([shapely.Point(1, 1)], [3], GeometryError, "geometry 0 \\(key 3\\) is a Point"),
        ([None], [3], GeometryError, "geometry 0 \\(key 3\\) is not a shapely geometry"),
        ([shapely.box(0, 0, 1, np.inf)], [2], GeometryError, "geometry 0 \\(key 2\\) has non-finite"),
        ([shapely.box(0, 0, 1, 1)], [0], ValueError, "key 0 at index 0"),
        ([shapely.box(0, 0, 1, 1)], [2**31], ValueError, "1..2147483647"),
        ([shapely.box(0, 0, 1, 1)], [1.5], ValueError, "integers"),
        ([shapely.box(0, 0, 1, 1)], [1, 2], ValueError, "one key per geometry"),
    ],
)
def test_bad_input_is_named(geoms: list[object], keys: list[float], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        rasterize_parcels(geoms, np.array(keys), transform=Affine.identity(), shape=(4, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(4,), (0, 4), (4, 4, 1), (2.5, 4)])
def test_shape_must_be_two_positive_sizes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape must be 2 positive integers"):
        rasterize_parcels([shapely.box(0, 0, 1, 1)], np.array([1]), transform=Affine.identity(),
                          shape=shape)  # type: ignore[arg-type]


def test_singular_transform_is_rejected() -> None:
    with pytest.raises(ValueError, match="not invertible"):
        rasterize_parcels([shapely.box(0, 0, 1, 1)], np.array([1]), transform=Affine(1, 2, 0, 2, 4, 0), shape=(4, 4))


def test_real_parcel_register_round_trip() -> None:
    """Polygonise the real crop-type raster, burn the polygons back: same as GDAL and as the source."""
    (path,) = shared_data("worldcereal_31UDS").glob("OUTPUT_POLY-110_*.nc")
    with xr.open_dataset(path, engine="netcdf4", mask_and_scale=False) as poly:
        ct = poly["CT"].values
    assert ct.shape == (64, 64)
    shapes = list(rasterio.features.shapes(ct, mask=ct > 0, transform=T10))
    geoms = [shapely.geometry.shape(g) for g, _ in shapes]
    keys = np.arange(1, len(geoms) + 1, dtype=np.int32)
    assert len(geoms) >= 15 and any(len(g.interiors) for g in geoms)
    ours = rasterize_parcels(geoms, keys, transform=T10, shape=ct.shape)
    np.testing.assert_array_equal(ours, _gdal(geoms, keys, T10, ct.shape))
    # every labelled pixel carries its source component's crop type, every parcel pixel is labelled
    crop_of_key = np.array([0] + [v for _, v in shapes])
    np.testing.assert_array_equal(crop_of_key[ours], np.where(ct > 0, ct, 0))
    # buffered a little and burnt in reverse order, overlaps are resolved as GDAL does
    grown = [g.buffer(4.0, quad_segs=2) for g in geoms][::-1]
    np.testing.assert_array_equal(rasterize_parcels(grown, keys, transform=T10, shape=ct.shape),
                                  _gdal(grown, keys, T10, ct.shape))


def test_multipolygon_with_an_empty_part_and_3d_coordinates() -> None:
    t = Affine.identity()
    with_empty = shapely.from_wkt("MULTIPOLYGON (EMPTY, ((1 1, 3 1, 3 3, 1 3, 1 1)))")
    in_3d = shapely.from_wkt("POLYGON Z ((4 4 7, 6 4 7, 6 6 7, 4 6 7, 4 4 7))")
    labels = rasterize_parcels([with_empty, in_3d], np.array([1, 2]), transform=t, shape=(8, 8))
    assert (labels == 1).sum() == 4 and (labels == 2).sum() == 4


@pytest.mark.parametrize(
    "name", ["nl_brp_2023.gpkg", "be_vlg_2023_gpkg.zip", "at_2025_gpkg.zip", "dk_2026_shp.zip", "fi_gsaa.gpkg"]
)
@pytest.mark.parametrize("pixel_m", [10.0, 2.5])
def test_real_parcel_registers_match_gdal(name: str, pixel_m: float) -> None:
    """Real LPIS/GSAA geometries in their national CRS, burnt on a grid covering them."""
    path = str(shared_data("parcels", name))
    if name.endswith(".zip"):
        path = f"/vsizip/{path}"
    _, _, wkb, _ = pyogrio.raw.read(path)
    geoms = shapely.force_2d(shapely.make_valid(shapely.from_wkb(wkb)))
    geoms = geoms[shapely.get_type_id(geoms) >= 0]
    geoms = np.array([g if g.geom_type in ("Polygon", "MultiPolygon")
                      else shapely.MultiPolygon([p for p in shapely.get_parts(g) if p.geom_type == "Polygon"])
                      for g in geoms], dtype=object)
    geoms = geoms[~shapely.is_empty(geoms)]
    assert len(geoms) >= 90
    # a grid of at most 1500 x 1500 pixels around the parcels' median (samples may span a country);
    # its origin is off the coordinates' decimal lattice, as a Sentinel-2 grid is in a national CRS
    centres = shapely.get_coordinates(shapely.centroid(geoms))
    near = (np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1)) < 1000 * pixel_m).sum(axis=1)
    cx, cy = centres[np.argmax(near)]  # the densest cluster of the sample
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    cols = min(1500, int((x1 - x0) / pixel_m) + 3)
    rows = min(1500, int((y1 - y0) / pixel_m) + 3)
    transform = Affine(pixel_m, 0, np.floor(cx - cols * pixel_m / 2) - 3.3, 0, -pixel_m,
                       np.ceil(cy + rows * pixel_m / 2) + 1.7)
    shape = (rows, cols)
    keys = np.arange(1, len(geoms) + 1, dtype=np.int32)
    ours = rasterize_parcels(geoms, keys, transform=transform, shape=shape)
    np.testing.assert_array_equal(ours, _gdal(list(geoms), keys, transform, shape))
    assert len(np.unique(ours)) > 10
