"""After a re-import, the pipeline brings the season back to complete by itself, for the changed parcels only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyproj
import pytest
import shapely
from affine import Affine
from integrity_support import write_register
from test_extract_support import add_product, write_tif

from cbm_tasks import cli, lineage
from cbm_tasks.parcels.sets import import_parcels
from cbm_tasks.pipeline.extract import claim_ready, extract_claimed, requeue_incomplete
from cbm_tasks.store import StoreConfig, open_store

X0, Y0 = 500000.0, 5600000.0
COLS, ROWS = 15, 10  # 150 parcels of 40 m x 40 m, 100 m apart
STORE = open_store(StoreConfig())


def _register(*, removed: range = range(0), moved: range = range(0),
              new: int = 0) -> list[tuple[str, shapely.Geometry]]:
    parcels = []
    for i in range(COLS * ROWS):
        if i in removed:
            continue
        x, y = X0 + 100 * (i % COLS), Y0 - 100 * (i // COLS)
        shift = 50.0 if i in moved else 0.0
        parcels.append((f"p{i:03d}", shapely.box(x, y - 40 - shift, x + 40, y - shift)))
    for j in range(new):  # new parcels in the gaps, and one inside parcel p149 (an overlap)
        x, y = X0 + 100 * j + 50, Y0 - 60
        parcels.append((f"n{j:03d}", shapely.box(x, y - 30, x + 30, y)))
    if new:
        x, y = X0 + 100 * 14, Y0 - 100 * 9
        parcels.append(("inside_p149", shapely.box(x + 10, y - 30, x + 30, y - 10)))
    return parcels


def _products(conn: psycopg.Connection, tmp_path: Path, aoi: str) -> list[int]:
    rng = np.random.default_rng(3)
    transform = Affine(10, 0, X0 - 100, 0, -10, Y0 + 100)
    ids = []
    for day in (1, 11, 21):
        b04 = write_tif(tmp_path / f"B04_{day}.tif", rng.integers(0, 4000, (120, 170), dtype=np.uint16),
                        transform=transform, nodata=0)
        scl = write_tif(tmp_path / f"SCL_{day}.tif", rng.integers(0, 12, (120, 170), dtype=np.uint8),
                        transform=transform, nodata=0)
        bands = [{"name": "B04", "href": str(b04), "band": 1, "nodata": 0, "scale": 1e-4, "offset": 0},
                 {"name": "SCL", "href": str(scl), "band": 1, "nodata": 0, "categorical": True, "n_classes": 12}]
        ids.append(add_product(conn, aoi=aoi, name=f"S2_202306{day:02d}", location=str(tmp_path),
                               acquired_at=datetime(2023, 6, day, 10, tzinfo=UTC), bands=bands))
    return ids


def _run_extract(conn: psycopg.Connection, aoi: str) -> list[int]:
    """What one cbm_extract run does: claim, then extract each claimed image."""
    claimed = claim_ready(conn, aois=[aoi], worker="cbm_extract/test")
    for claimed_aoi, product_id in claimed:
        run = lineage.RunContext(step="extract", dag_id="cbm_extract", run_id="test", task_id="extract",
                                 map_index=product_id, try_number=1)
        extract_claimed(conn, STORE, product_id, aoi=claimed_aoi, run=run, last_try=False)
    return [product_id for _, product_id in claimed]


def _series(conn: psycopg.Connection, aoi: str) -> dict[tuple[str, int], tuple[list[float], list[int] | None]]:
    """(parcel_id, product_id) -> (stats, SCL counts) of the AOI's 2023 set."""
    rows = conn.execute(
        "SELECT p.parcel_id, o.product_id, o.stats, c.counts FROM cbm.parcel_obs o "
        "JOIN cbm.parcel p USING (parcel_set_id, parcel_key) JOIN cbm.parcel_set s USING (parcel_set_id) "
        "JOIN cbm.aoi a USING (aoi_id) LEFT JOIN cbm.parcel_class_counts c "
        "  ON (c.parcel_set_id, c.parcel_key, c.product_id) = (o.parcel_set_id, o.parcel_key, o.product_id) "
        "WHERE a.name = %s", (aoi,)).fetchall()
    conn.commit()
    return {(pid, product): (stats, counts) for pid, product, stats, counts in rows}


def test_reimport_is_completed_by_the_next_extract_run(conn: psycopg.Connection, db_url: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import_parcels(conn, write_register(tmp_path / "v1.gpkg", _register()), aoi="season", year=2023,
                   crop_name_column="-")
    conn.commit()
    products = _products(conn, tmp_path, "season")
    assert sorted(_run_extract(conn, "season")) == products
    v2 = write_register(tmp_path / "v2.gpkg", _register(removed=range(0, 20), moved=range(20, 40), new=10))

    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    assert cli.main(["parcels", "import", str(v2), "--aoi", "season", "--year", "2023",
                     "--crop-name-column", "-"]) == 0
    out = capsys.readouterr().out
    assert "3 images queued again (ready) for the 11 new and 20 changed parcels" in out
    status = conn.execute("SELECT status, count(*) FROM cbm.product_status GROUP BY status").fetchall()
    conn.commit()
    assert status == [("ready", 3)]
    assert requeue_incomplete(conn, aois=["season"]) == []  # idempotent: already queued

    with caplog.at_level(logging.INFO, logger="cbm_tasks.extraction.extract"):
        assert sorted(_run_extract(conn, "season")) == products  # the next cbm_extract run
    completed = [m for m in caplog.messages if m.startswith("completed product=")]
    # 11 new and 20 moved parcels, and p149, which holds a new parcel (its neighbour)
    assert len(completed) == 3 and all("parcels_missing=32 " in m for m in completed)
    assert requeue_incomplete(conn, aois=["season"]) == [] and _run_extract(conn, "season") == []

    # the same register and images extracted from scratch
    import_parcels(conn, v2, aoi="fresh", year=2023, crop_name_column="-")
    conn.commit()
    assert _products(conn, tmp_path, "fresh") == products
    assert sorted(_run_extract(conn, "fresh")) == products
    completed_rows, fresh_rows = _series(conn, "season"), _series(conn, "fresh")
    assert len(fresh_rows) == 3 * (150 - 20 + 11)
    assert completed_rows.keys() == fresh_rows.keys()
    for key, (stats, counts) in fresh_rows.items():
        np.testing.assert_array_equal(np.asarray(completed_rows[key][0], np.float32), np.asarray(stats, np.float32),
                                      err_msg=str(key))
        assert completed_rows[key][1] == counts, key
    versions = conn.execute("SELECT DISTINCT e.parcel_set_version, e.n_parcels, e.n_rows FROM cbm.extraction e "
                            "JOIN cbm.parcel_set s USING (parcel_set_id) WHERE s.version = 2").fetchall()
    fresh_records = conn.execute("SELECT DISTINCT e.n_parcels, e.n_rows FROM cbm.extraction e "
                                 "JOIN cbm.parcel_set s USING (parcel_set_id) WHERE s.version = 1").fetchall()
    assert [(v[1], v[2]) for v in versions] == fresh_records and versions[0][0] == 2


def _image_over(conn: psycopg.Connection, tmp_path: Path, aoi: str, name: str, x0: float, y0: float, *,
                day: int) -> int:
    """A 300 m x 300 m image with its UTM corner at (x0, y0) (top left) and its catalogue footprint."""
    transform = Affine(10, 0, x0, 0, -10, y0)
    values = np.random.default_rng(day).integers(1, 4000, (30, 30), dtype=np.uint16)
    b04 = write_tif(tmp_path / f"{name}_B04.tif", values, transform=transform, nodata=0)
    to_lonlat = pyproj.Transformer.from_crs(32631, 4326, always_xy=True)
    footprint = shapely.transform(shapely.box(x0, y0 - 300, x0 + 300, y0),
                                  lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
    bands = [{"name": "B04", "href": str(b04), "band": 1, "nodata": 0, "scale": 1e-4, "offset": 0}]
    return add_product(conn, aoi=aoi, name=name, location=str(tmp_path), footprint_wkt=footprint.wkt,
                       acquired_at=datetime(2023, 6, day, 10, tzinfo=UTC), bands=bands)


def _statuses(conn: psycopg.Connection, products: list[int]) -> list[str]:
    rows = dict(conn.execute("SELECT product_id, status FROM cbm.product_status WHERE product_id = ANY(%s)",
                             (products,)).fetchall())
    conn.commit()
    return [rows[p] for p in products]


def test_a_skipped_image_is_claimed_again_when_a_reimport_puts_parcels_inside_it(
        conn: psycopg.Connection, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parcels = _register()  # 150 parcels in X0 .. X0 + 1440, Y0 - 940 .. Y0
    import_parcels(conn, write_register(tmp_path / "v1.gpkg", parcels), aoi="gaps", year=2023,
                   crop_name_column="-")
    conn.commit()
    east, far = X0 + 5000, X0 + 9000  # two images over fields not in the register yet
    products = [_image_over(conn, tmp_path, "gaps", "covered", X0, Y0, day=1),
                _image_over(conn, tmp_path, "gaps", "east", east, Y0, day=2),
                _image_over(conn, tmp_path, "gaps", "far", far, Y0, day=3)]
    assert sorted(_run_extract(conn, "gaps")) == products
    assert _statuses(conn, products) == ["extracted", "skipped", "skipped"]
    assert requeue_incomplete(conn, aois=["gaps"]) == []  # nothing changed: skipped stays skipped
    conn.commit()

    # the re-import adds two parcels inside the east image; nothing reaches the far one
    added = [("e1", shapely.box(east + 20, Y0 - 120, east + 80, Y0 - 40)),
             ("e2", shapely.box(east + 150, Y0 - 260, east + 250, Y0 - 160))]
    import_parcels(conn, write_register(tmp_path / "v2.gpkg", parcels + added), aoi="gaps", year=2023,
                   crop_name_column="-")
    conn.commit()
    with caplog.at_level(logging.INFO, logger="cbm_tasks.pipeline.extract"):
        requeued = requeue_incomplete(conn, aois=["gaps"])
    conn.commit()
    # the covered image lacks the new parcels too (it is extracted at version 1)
    assert requeued == [("gaps", products[0]), ("gaps", products[1])]
    assert f"requeued product_id={products[1]} aoi=gaps: skipped before an import" in caplog.text
    assert _statuses(conn, products) == ["ready", "ready", "skipped"]
    assert requeue_incomplete(conn, aois=["gaps"]) == []  # idempotent: already queued

    assert sorted(_run_extract(conn, "gaps")) == products[:2]
    assert _statuses(conn, products) == ["extracted", "extracted", "skipped"]
    rows = conn.execute(
        "SELECT p.parcel_id, o.stats[1] FROM cbm.parcel_obs o JOIN cbm.parcel p USING (parcel_set_id, parcel_key) "
        "WHERE o.product_id = %s ORDER BY 1", (products[1],)).fetchall()
    conn.commit()
    assert [(pid, count) for pid, count in rows] == [("e1", 48), ("e2", 100)]  # pixel centres inside each
    # a later run takes nothing again, and the far image, skipped after the import too, stays skipped
    assert requeue_incomplete(conn, aois=["gaps"]) == [] and _run_extract(conn, "gaps") == []
