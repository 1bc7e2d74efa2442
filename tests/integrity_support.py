"""Helpers of the integrity tests: registers written as GeoPackages, the real ``cbm`` command as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
import pyogrio
import shapely

CBM = str(Path(sys.executable).parent / "cbm")


def write_register(path: Path, parcels: Sequence[tuple[str, shapely.Geometry]], *, crs: str = "EPSG:32631") -> Path:
    """Write (parcel_id, polygon) pairs as a GeoPackage register with a crop code column."""
    pyogrio.raw.write(
        path,
        shapely.to_wkb(np.array([g for _, g in parcels], dtype=object)),
        [np.array([pid for pid, _ in parcels], dtype=object), np.array(["265"] * len(parcels), dtype=object)],
        ["parcel_id", "crop_code"],
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs,
        layer="parcels",
    )
    return path


def cbm_env(db_url: str) -> dict[str, str]:
    """The environment of a ``cbm`` process working on the test's database."""
    return {**os.environ, "CBM_DATABASE_URL": db_url}


def run_cbm(args: Sequence[str], db_url: str, *, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``cbm ARGS`` as its own process and return what it did."""
    return subprocess.run([CBM, *args], env=cbm_env(db_url), capture_output=True, text=True, timeout=timeout_s,
                          check=False)


def start_cbm(args: Sequence[str], db_url: str) -> subprocess.Popen[str]:
    """Start ``cbm ARGS`` as its own process."""
    return subprocess.Popen([CBM, *args], env=cbm_env(db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_lock_waiter(conn: psycopg.Connection, process: subprocess.Popen[str], *,
                             timeout_s: float = 300) -> None:
    """Return once another session waits for a lock (the barrier the test holds).

    Polls the server's lock table: the condition is a state of the database, not a time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
        conn.commit()
        if row is not None and row[0] > 0:
            return
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended (rc={process.returncode}) before reaching the barrier: "
                                 f"{out} {err}")
        time.sleep(0.05)
    raise AssertionError(f"no session waited for the barrier's lock within {timeout_s} s")


def wait_for_version(conn: psycopg.Connection, parcel_set_id: int, version: int, process: subprocess.Popen[str], *,
                     timeout_s: float = 300) -> None:
    """Return once the parcel set's committed version is *version* (an import by *process* committed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute("SELECT version FROM cbm.parcel_set WHERE parcel_set_id = %s", (parcel_set_id,)).fetchone()
        conn.commit()
        if row is not None and row[0] == version:
            return
        if process.poll() is not None and process.returncode != 0:
            out, err = process.communicate()
            raise AssertionError(f"the import failed (rc={process.returncode}): {out} {err}")
        time.sleep(0.05)
    raise AssertionError(f"parcel set {parcel_set_id} did not reach version {version} within {timeout_s} s")
