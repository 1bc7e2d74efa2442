"""zonal_stats and class_counts against plain NumPy per label, on random and real Sentinel-2 data."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
import xarray as xr
from affine import Affine
from conftest import shared_data

from cbm_tasks.errors import BandError, GridMismatchError
from cbm_tasks.extraction.categorical import ClassCounts, class_counts
from cbm_tasks.extraction.rasterize import rasterize_parcels
from cbm_tasks.extraction.zonal import ParcelStats, zonal_stats

T10 = Affine(10, 0, 501360, 0, -10, 5629680)
T20 = Affine(20, 0, 501360, 0, -20, 5629680)


def _check_against_numpy(stats: ParcelStats, labels: np.ndarray, values: np.ndarray, nodata: float | None) -> None:
    """Every statistic of every label against NumPy: percentiles exactly, mean/std to 1e-9."""
    valid = labels > 0
    if nodata is not None:
        valid &= values != nodata
    if values.dtype.kind == "f":
        valid &= ~np.isnan(values)
    expected_keys = np.unique(labels[valid])
    np.testing.assert_array_equal(stats.keys, expected_keys)
    assert stats.keys.dtype == np.int32 and stats.count.dtype == np.int64
    order = np.argsort(labels[valid], kind="stable")
    grouped = np.split(values[valid][order], np.cumsum(np.bincount(labels[valid])[expected_keys])[:-1])
    for i, v in enumerate(grouped):
        v64 = v.astype(np.float64)
        assert stats.count[i] == v.size
        assert stats.min[i] == v.min() and stats.max[i] == v.max()
        # numpy's percentile of the raw values (list of q: float64 result), bit for bit
        assert [stats.p25[i], stats.p50[i], stats.p75[i]] == np.percentile(v, [25, 50, 75]).tolist()
        np.testing.assert_allclose(stats.mean[i], v64.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats.std[i], v64.std(), rtol=1e-9, atol=1e-12 * abs(v64.mean()))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int32, np.uint32, np.float32, np.float64])
def test_random_band_matches_numpy(dtype: type) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 120, (300, 257)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 0
    labels[labels == 17] = 0  # a label without pixels
    if np.dtype(dtype).kind == "f":
        values = (rng.normal(0.3, 0.1, labels.shape) * 1e4).astype(dtype)
        values[rng.random(labels.shape) < 0.05] = np.nan
        nodata: float | None = -9999.0
        values[rng.random(labels.shape) < 0.05] = nodata
    else:
        values = rng.integers(0, min(np.iinfo(dtype).max, 12000), labels.shape).astype(dtype)
        nodata = 0
    values[labels == 23] = nodata  # a parcel with only nodata: no row
    stats = zonal_stats(labels, values, band="B04", nodata=nodata, n_labels=130)
    assert 23 not in stats.keys and 17 not in stats.keys and len(stats) > 100
    _check_against_numpy(stats, labels, values, nodata)


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_negative_values_sort_correctly(dtype: type) -> None:
    """Signed 8/16-bit bands (radix sort with a bias), e.g. S1 backscatter in dB x 100."""
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 4, (64, 64)).astype(np.int32)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, labels.shape, endpoint=True).astype(dtype)
    stats = zonal_stats(labels, values, band="VH", nodata=None, n_labels=3)
    assert stats.min.min() == info.min or stats.min.min() < 0
    _check_against_numpy(stats, labels, values, None)


def test_large_uint16_values_keep_std_accuracy() -> None:
    """A large mean and a small spread: a one-pass sum of squares would lose the std."""
    rng = np.random.default_rng(5)
    labels = rng.integers(1, 6, (200, 200)).astype(np.int32)
    values = (60000 + rng.integers(0, 3, labels.shape)).astype(np.uint16)
    _check_against_numpy(zonal_stats(labels, values, band="B08", nodata=None, n_labels=5), labels, values, None)


def test_single_pixel_parcels_and_nan_only_float_parcel() -> None:
    labels = np.array([[1, 2, 2], [3, 3, 0]], np.int32)
    values = np.array([[5.0, np.nan, 7.5], [np.nan, np.nan, 1.0]], np.float32)
    stats = zonal_stats(labels, values, band="VV", nodata=None, n_labels=3)
    np.testing.assert_array_equal(stats.keys, [1, 2])
    np.testing.assert_array_equal(stats.count, [1, 1])
    assert stats.std.tolist() == [0.0, 0.0] and stats.p25.tolist() == [5.0, 7.5] and stats.p75.tolist() == [5.0, 7.5]


def test_image_without_parcels_gives_empty_stats() -> None:
    stats = zonal_stats(np.zeros((8, 9), np.int32), np.ones((8, 9), np.uint16), band="B04", nodata=0, n_labels=0)
    assert len(stats) == 0 and stats.keys.dtype == np.int32 and stats.mean.dtype == np.float64
    counts = class_counts(np.zeros((4, 4), np.int32), np.ones((4, 4), np.uint8), band="SCL", n_classes=12, nodata=0)
    assert len(counts) == 0 and counts.counts.shape == (0, 12)


def test_nodata_outside_the_dtype_matches_nothing() -> None:
    labels = np.ones((2, 2), np.int32)
    values = np.array([[0, 1], [2, 3]], np.uint16)
    assert zonal_stats(labels, values, band="B04", nodata=-9999, n_labels=1).count.tolist() == [4]
    assert zonal_stats(labels, values, band="B04", nodata=0.5, n_labels=1).count.tolist() == [4]


@pytest.mark.parametrize(("scale", "offset"), [(1e-4, -0.1), (-2.5, 3.0), (0.0, 1.0)])
def test_scaled_equals_statistics_of_scaled_values(scale: float, offset: float) -> None:
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 40, (100, 100)).astype(np.int32)
    values = rng.integers(1, 10000, labels.shape).astype(np.uint16)
    scaled = zonal_stats(labels, values, band="B04", nodata=0, n_labels=40).scaled(scale=scale, offset=offset)
    physical = zonal_stats(labels, values.astype(np.float64) * scale + offset, band="B04", nodata=None, n_labels=40)
    np.testing.assert_array_equal(scaled.keys, physical.keys)
    np.testing.assert_array_equal(scaled.count, physical.count)
    for field in ("mean", "std", "min", "max", "p25", "p50", "p75"):
        np.testing.assert_allclose(getattr(scaled, field), getattr(physical, field), rtol=1e-12, atol=1e-12,
                                   err_msg=field)


def test_scaled_rejects_non_finite() -> None:
    stats = zonal_stats(np.ones((2, 2), np.int32), np.ones((2, 2), np.uint16), band="B04", nodata=0, n_labels=1)
    with pytest.raises(ValueError, match="finite"):
        stats.scaled(scale=float("nan"), offset=0.0)


def test_class_counts_match_numpy() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 50, (123, 77)).astype(np.int32)
    scl = rng.integers(0, 12, labels.shape).astype(np.uint8)
    scl[labels == 9] = 0  # all nodata: no row
    counts = class_counts(labels, scl, band="SCL", n_classes=12, nodata=0)
    expected = np.zeros((50, 12), np.int64)
    np.add.at(expected, (labels.ravel(), scl.ravel()), 1)
    expected[:, 0] = 0  # nodata is not counted
    expected[0] = 0  # label 0 is no parcel
    keys = np.flatnonzero(expected.any(axis=1))
    assert isinstance(counts, ClassCounts) and 9 not in counts.keys
    np.testing.assert_array_equal(counts.keys, keys)
    np.testing.assert_array_equal(counts.counts, expected[keys])
    assert counts.counts.dtype == np.int32
    without_nodata = class_counts(labels, scl, band="SCL", n_classes=12, nodata=None)
    assert without_nodata.counts[:, 0].sum() == ((scl == 0) & (labels > 0)).sum()


@pytest.mark.parametrize(("value", "dtype"), [(12, np.uint8), (-1, np.int8), (300, np.uint16)])
def test_class_value_out_of_range_is_named(value: int, dtype: type) -> None:
    scl = np.full((3, 3), 4, dtype)
    scl[1, 2] = value
    with pytest.raises(BandError, match=f"band SCL: class value {value} outside 0..11"):
        class_counts(np.ones((3, 3), np.int32), scl, band="SCL", n_classes=12, nodata=0)


def test_grid_and_dtype_errors_name_the_band() -> None:
    labels = np.ones((4, 5), np.int32)
    with pytest.raises(GridMismatchError, match=r"band B08: values \(5, 4\) do not match label grid \(4, 5\)"):
        zonal_stats(labels, np.ones((5, 4), np.uint16), band="B08", nodata=0, n_labels=1)
    with pytest.raises(GridMismatchError, match="band SCL"):
        class_counts(labels, np.ones((2, 2), np.uint8), band="SCL", n_classes=12, nodata=0)
    with pytest.raises(BandError, match="band B08: unsupported dtype complex64"):
        zonal_stats(labels, np.ones((4, 5), np.complex64), band="B08", nodata=0, n_labels=1)
    with pytest.raises(BandError, match="band SCL: unsupported dtype float32"):
        class_counts(labels, np.ones((4, 5), np.float32), band="SCL", n_classes=12, nodata=0)
    with pytest.raises(BandError, match="band B08: expected 2-D"):
        zonal_stats(labels[None], np.ones((1, 4, 5), np.uint16), band="B08", nodata=0, n_labels=1)
    with pytest.raises(BandError, match="labels must be int32"):
        zonal_stats(labels.astype(np.int64), np.ones((4, 5), np.uint16), band="B08", nodata=0, n_labels=1)
    with pytest.raises(BandError, match="band B08: label raster holds 7 outside 0..n_labels=3"):
        zonal_stats(labels * 7, np.ones((4, 5), np.uint16), band="B08", nodata=0, n_labels=3)


@pytest.fixture(scope="module")
def chip() -> dict[str, np.ndarray]:
    """Real 31UDS pixels (3 dates of B04/B08 at 10 m, SCL at 20 m) and parcels polygonised from CT."""
    folder = shared_data("worldcereal_31UDS")
    out: dict[str, np.ndarray] = {}
    for prefix, names in (("S2_L2A_10m", ("B04", "B08")), ("S2_L2A_20m", ("SCL",)), ("OUTPUT_POLY-110_10m", ("CT",))):
        (path,) = folder.glob(f"{prefix}_*.nc")
        with xr.open_dataset(path, engine="netcdf4", mask_and_scale=False) as cube:
            for name in names:
                out[name] = cube[name].values[[10, 48, 84]] if name != "CT" else cube[name].values
    return out


def test_real_sentinel2_parcels_match_numpy(chip: dict[str, np.ndarray]) -> None:
    shapes = list(rasterio.features.shapes(chip["CT"], mask=chip["CT"] > 0, transform=T10))
    geoms = [shapely.geometry.shape(g) for g, _ in shapes]
    keys = np.arange(1, len(geoms) + 1, dtype=np.int32)
    labels10 = rasterize_parcels(geoms, keys, transform=T10, shape=chip["CT"].shape)
    labels20 = rasterize_parcels(geoms, keys, transform=T20, shape=chip["SCL"].shape[1:])
    assert labels20.shape == (32, 32) and (labels20 > 0).sum() > 300
    for date in range(3):
        for band in ("B04", "B08"):
            values = chip[band][date]
            assert values.dtype == np.uint16
            stats = zonal_stats(labels10, values, band=band, nodata=0, n_labels=len(keys))
            _check_against_numpy(stats, labels10, values, 0)
        scl = chip["SCL"][date]
        counts = class_counts(labels20, scl, band="SCL", n_classes=12, nodata=0)
        for i, key in enumerate(counts.keys):
            observed = scl[(labels20 == key) & (scl != 0)]
            np.testing.assert_array_equal(counts.counts[i], np.bincount(observed, minlength=12))


def test_read_only_labels_and_strided_values() -> None:
    """Cached label rasters are read-only; a band may be a strided view (window of a larger read)."""
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 6, (40, 50)).astype(np.int32)
    labels.flags.writeable = False
    values = rng.integers(1, 5000, (40, 100)).astype(np.uint16)[:, ::2]
    _check_against_numpy(zonal_stats(labels, values, band="B04", nodata=0, n_labels=5), labels, values, 0)
    scl = (values % 12).astype(np.uint8)[:, ::-1]
    counts = class_counts(labels, scl, band="SCL", n_classes=12, nodata=None)
    assert counts.counts.sum() == (labels > 0).sum()
