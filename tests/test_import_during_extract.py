"""A parcel import committed while ``cbm extract`` runs: the real commands as processes, on the real PostGIS.

The extraction is stopped deterministically at its write: the test holds the lock on the
image's ``cbm.extraction`` row, which the row writer takes first, and waits until the
extraction process is queued on it; the import then commits a changed register before the
lock is let go.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import shapely
from affine import Affine
from integrity_support import run_cbm, start_cbm, wait_for_lock_waiter, wait_for_version, write_register
from test_extract_support import obs_rows, write_tif

X0, Y0 = 500000.0, 5600000.0
COLS, ROWS, STEP, SIZE = 40, 25, 100.0, 40.0  # 1,000 parcels of 40 m x 40 m, 100 m apart


def _parcels(*, removed: range = range(0), moved: range = range(0)) -> list[tuple[str, shapely.Geometry]]:
    parcels = []
    for i in range(COLS * ROWS):
        if i in removed:
            continue
        x, y = X0 + STEP * (i % COLS), Y0 - STEP * (i // COLS)
        shift = 50.0 if i in moved else 0.0  # into the empty strip south of the parcel
        parcels.append((f"p{i:04d}", shapely.box(x, y - SIZE - shift, x + SIZE, y - shift)))
    return parcels


def _image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(8)
    bands = rng.integers(1, 10000, size=(2, 350, 500), dtype=np.uint16)
    return write_tif(tmp_path / "S2_20230601.tif", bands, transform=Affine(10, 0, X0 - 500, 0, -10, Y0 + 500),
                     nodata=0, descriptions=["B04", "B08"], tags={"TIFFTAG_DATETIME": "2023:06:01 10:30:00"})


def test_import_committed_during_extraction_leaves_no_stale_rows(db_url: str, conn: psycopg.Connection,
                                                                  tmp_path: Path) -> None:
    v1 = write_register(tmp_path / "v1.gpkg", _parcels())
    v2 = write_register(tmp_path / "v2.gpkg", _parcels(removed=range(0, 250), moved=range(250, 500)))
    image = _image(tmp_path)
    extract_args = ["extract", str(image), "--aoi", "race", "--year", "2023"]
    import_args = ["--aoi", "race", "--year", "2023", "--crop-name-column", "-"]
    assert run_cbm(["parcels", "import", str(v1), *import_args], db_url).returncode == 0
    first = run_cbm(extract_args, db_url)
    assert first.returncode == 0, first.stderr
    row = conn.execute("SELECT parcel_set_id, product_id FROM cbm.extraction").fetchone()
    conn.commit()
    assert row is not None
    set_id, product_id = row
    assert len(obs_rows(conn, product_id)) == 1000

    with psycopg.connect(db_url) as barrier:
        barrier.execute("SELECT 1 FROM cbm.extraction WHERE parcel_set_id = %s AND product_id = %s FOR UPDATE",
                        (set_id, product_id))
        extraction = start_cbm(extract_args, db_url)
        wait_for_lock_waiter(conn, extraction)  # read the set at version 1, computed, waiting to write
        importer = start_cbm(["parcels", "import", str(v2), *import_args], db_url)
        # the import commits the set's version 2 first, then looks for extracted images to queue again,
        # which waits for the extraction's locks on its image: let the extraction go once version 2 is in
        wait_for_version(conn, set_id, 2, importer)
        barrier.commit()  # the extraction may write now
    out, err = importer.communicate(timeout=300)
    assert importer.returncode == 0, err
    assert "version 2" in out
    out, err = extraction.communicate(timeout=300)
    assert extraction.returncode == 0, err

    version = conn.execute("SELECT version, n_parcels FROM cbm.parcel_set WHERE parcel_set_id = %s",
                           (set_id,)).fetchone()
    recorded = conn.execute("SELECT parcel_set_version, n_parcels FROM cbm.extraction WHERE product_id = %s",
                            (product_id,)).fetchone()
    keys = {int(k) for (k,) in conn.execute("SELECT parcel_key FROM cbm.parcel WHERE parcel_set_id = %s",
                                            (set_id,)).fetchall()}
    conn.commit()
    assert version == (2, 750)
    raced = obs_rows(conn, product_id)
    assert set(raced) == keys  # no row of a removed parcel, every kept or moved parcel has one
    assert recorded == (2, 750)
    status = conn.execute("SELECT status FROM cbm.product_status WHERE product_id = %s", (product_id,)).fetchone()
    conn.commit()
    assert status == ("extracted",)  # complete at version 2: not queued again
    # the rows equal those of a fresh extraction on version 2 (moved parcels carry their new polygon's values)
    assert run_cbm(extract_args, db_url).returncode == 0
    fresh = obs_rows(conn, product_id)
    assert set(fresh) == set(raced)
    for key, stats in fresh.items():
        np.testing.assert_array_equal(raced[key], stats)
