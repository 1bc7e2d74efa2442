"""Helpers of the extraction tests: rasters in tmp_path, parcels and products inserted with SQL.

Not a test module (holds no tests); named so because the extraction task owns tests/test_extract*.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import rasterio
import shapely
from affine import Affine

from cbm_tasks.aoi import ensure_aoi
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product


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
        aoi_id = ensure_aoi(conn, aoi)
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


def wait_until_waiting_on_a_lock(db_url: str, backend_pid: int, *, timeout_s: float = 60) -> None:
    """Return once the session *backend_pid* waits on a lock; fail the test after *timeout_s*.

    Proves that a concurrent writer really is blocked, where ``thread.is_alive()`` after a
    short join would also pass for a thread that has not reached the database yet.
    """
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(db_url, autocommit=True) as observer:
        while True:
            row = observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                   (backend_pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"session {backend_pid} did not wait on a lock within {timeout_s} s "
                                     f"(wait_event_type {row[0] if row else 'gone'})")
            time.sleep(0.05)
