"""Helpers of the extraction tests: rasters in tmp_path, parcels and products inserted with SQL.

Not a test module (holds no tests); named so because the extraction task owns tests/test_extract*.
Until the Numba engine lands (cbm_tasks.zonal, cbm_tasks.label_cache), plain NumPy stand-ins
with the documented signatures are installed here, for these tests only.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import rasterio
import shapely
from affine import Affine

from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product


def _install_engine_standins() -> None:
    if importlib.util.find_spec("cbm_tasks.zonal") is None:
        zonal = types.ModuleType("cbm_tasks.zonal")

        @dataclass(frozen=True)
        class ParcelStats:
            count: np.ndarray
            mean: np.ndarray
            std: np.ndarray
            min: np.ndarray
            max: np.ndarray
            p25: np.ndarray
            p50: np.ndarray
            p75: np.ndarray

            def scaled(self, *, scale: float, offset: float) -> ParcelStats:
                lo, hi = (self.min, self.max) if scale > 0 else (self.max, self.min)
                return ParcelStats(self.count, self.mean * scale + offset, self.std * abs(scale),
                                   lo * scale + offset, hi * scale + offset, self.p25 * scale + offset,
                                   self.p50 * scale + offset, self.p75 * scale + offset)

        @dataclass(frozen=True)
        class ClassCounts:
            counts: np.ndarray

        def zonal_stats(labels: np.ndarray, values: np.ndarray, *, band: str, nodata: float | None,
                        n_labels: int) -> ParcelStats:
            out = {k: np.full(n_labels, np.nan) for k in ("mean", "std", "min", "max", "p25", "p50", "p75")}
            count = np.zeros(n_labels, np.int64)
            valid = labels > 0
            if nodata is not None:
                valid &= values != nodata
            for label in np.unique(labels[valid]):
                v = values[valid & (labels == label)].astype(np.float64)
                count[label] = v.size
                out["mean"][label], out["std"][label] = v.mean(), v.std()
                out["min"][label], out["max"][label] = v.min(), v.max()
                out["p25"][label], out["p50"][label], out["p75"][label] = np.percentile(v, [25, 50, 75])
            return ParcelStats(count, **out)

        def class_counts(labels: np.ndarray, values: np.ndarray, *, band: str, n_classes: int,
                         nodata: float | None) -> ClassCounts:
            counts = np.zeros((int(labels.max(initial=0)) + 1, n_classes), np.int64)
            valid = (labels > 0) & (values < n_classes)
            if nodata is not None:
                valid &= values != nodata
            np.add.at(counts, (labels[valid], values[valid].astype(np.int64)), 1)
            return ClassCounts(counts)

        zonal.ParcelStats, zonal.ClassCounts = ParcelStats, ClassCounts  # type: ignore[attr-defined]
        zonal.zonal_stats, zonal.class_counts = zonal_stats, class_counts  # type: ignore[attr-defined]
        sys.modules["cbm_tasks.zonal"] = zonal
    if importlib.util.find_spec("cbm_tasks.label_cache") is None:
        cache_module = types.ModuleType("cbm_tasks.label_cache")

        @dataclass(frozen=True)
        class GridKey:
            crs: str
            transform: tuple[float, ...]
            shape: tuple[int, int]
            parcel_set_id: int
            parcel_set_version: int

        class LabelCache:
            def __init__(self) -> None:
                self.entries: dict[GridKey, np.ndarray] = {}

            def get(self, key: GridKey) -> np.ndarray | None:
                return self.entries.get(key)

            def put(self, key: GridKey, labels: np.ndarray) -> None:
                self.entries[key] = labels

        cache_module.GridKey, cache_module.LabelCache = GridKey, LabelCache  # type: ignore[attr-defined]
        sys.modules["cbm_tasks.label_cache"] = cache_module


_install_engine_standins()


def write_tif(path: Path, bands: np.ndarray, *, transform: Affine, crs: str | None = "EPSG:32631",
              nodata: float | None = None, descriptions: Sequence[str] | None = None,
              tags: dict[str, str] | None = None, scales: Sequence[float] | None = None,
              offsets: Sequence[float] | None = None) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a tiled GeoTIFF."""
    array = bands[np.newaxis] if bands.ndim == 2 else bands
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0],
        "dtype": array.dtype.name, "transform": transform, "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(array)
        for index, name in enumerate(descriptions or (), start=1):
            dataset.set_band_description(index, name)
        if tags:
            dataset.update_tags(**tags)
        if scales is not None:
            dataset.scales = tuple(scales)
        if offsets is not None:
            dataset.offsets = tuple(offsets)
    return path


def add_parcel_set(conn: psycopg.Connection, *, aoi: str, year: int, srid: int,
                   parcels: Sequence[tuple[str, shapely.Geometry]], version: int = 1) -> int:
    """Insert an AOI's parcel set with parcels (keys 1..n in order) and its partitions; commit."""
    with conn.transaction():
        aoi_id = registry.ensure_aoi(conn, aoi)
        row = conn.execute(
            "INSERT INTO cbm.parcel_set (aoi_id, year, srid, version, source_file, n_parcels) "
            "VALUES (%s, %s, %s, %s, 'test', %s) RETURNING parcel_set_id",
            (aoi_id, year, srid, version, len(parcels)),
        ).fetchone()
        assert row is not None
        parcel_set_id = int(row[0])
        for key, (parcel_id, geom) in enumerate(parcels, start=1):
            conn.execute(
                "INSERT INTO cbm.parcel (parcel_set_id, parcel_key, parcel_id, area_m2, geom) "
                "VALUES (%s, %s, %s, %s, ST_Multi(ST_GeomFromWKB(%s, %s)))",
                (parcel_set_id, key, parcel_id, geom.area, shapely.to_wkb(geom), srid),
            )
        conn.execute("SELECT cbm.ensure_parcel_set_partitions(%s::smallint)", (parcel_set_id,))
    return parcel_set_id


def add_product(conn: psycopg.Connection, *, aoi: str, name: str, location: str, acquired_at: datetime,
                product_type: str = "S2MSI2A", bands: list[dict[str, Any]] | None = None,
                footprint_wkt: str | None = None) -> int:
    """Register a product for *aoi* (catalogue ``local``); return its id."""
    product = Product(uid=name, name=name, catalogue="local", collection="SENTINEL-2", product_type=product_type,
                      acquired_at=acquired_at, location=location, footprint_wkt=footprint_wkt,
                      attributes={"bands": bands} if bands else {})
    registry.register(conn, [product], aoi=aoi)
    row = conn.execute("SELECT product_id FROM cbm.product WHERE uid = %s", (name,)).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


TABLES = ("cbm.parcel_obs", "cbm.parcel_class_counts", "cbm.extraction", "cbm.product", "cbm.product_status")


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Rows per table written by an extraction."""
    counts = {}
    for table in TABLES:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - constant names
        assert row is not None
        counts[table] = int(row[0])
    conn.commit()
    return counts


def obs_rows(conn: psycopg.Connection, product_id: int) -> dict[int, np.ndarray]:
    """parcel_key -> stats (float32) of one product."""
    rows = conn.execute(
        "SELECT parcel_key, stats FROM cbm.parcel_obs WHERE product_id = %s ORDER BY parcel_key", (product_id,)
    ).fetchall()
    conn.commit()
    return {int(k): np.asarray(v, np.float32) for k, v in rows}
