"""AOI and parcel-set ids (smallint) are drawn only for new rows, and running out says so clearly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
import shapely
from affine import Affine
from test_extract_support import add_parcel_set, write_tif
from test_parcel_bad_input import write_gpkg

from cbm_tasks import cli
from cbm_tasks.aoi import ensure_aoi
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.errors import IdLimitError
from cbm_tasks.parcels.sets import import_parcels

X0, Y0 = 500000, 5600100


def _last_ids(conn: psycopg.Connection) -> tuple[int | None, ...]:
    """The last value drawn from the AOI, parcel-set and product id sequences (None: never drawn)."""
    row = conn.execute(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('cbm.aoi', 'aoi_id')), "
        "pg_sequence_last_value(pg_get_serial_sequence('cbm.parcel_set', 'parcel_set_id')), "
        "pg_sequence_last_value(pg_get_serial_sequence('cbm.product', 'product_id'))"
    ).fetchone()
    conn.commit()
    assert row is not None
    return tuple(row)


def _product(uid: str) -> Product:
    return Product(uid=uid, name=uid, catalogue="local", collection="SENTINEL-2", product_type="S2MSI2A",
                   acquired_at=datetime(2018, 6, 1, tzinfo=UTC), location=f"/data/{uid}")


def test_repeated_extract_register_and_import_draw_no_ids(
    conn: psycopg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    parcels = [(f"p{i}", shapely.box(X0 + 20 * i, Y0 - 40, X0 + 20 * i + 20, Y0)) for i in range(3)]
    add_parcel_set(conn, aoi="cli", year=2018, srid=32631, parcels=parcels)
    register_file = write_gpkg(tmp_path / "parcels.gpkg", ["a", "b"], crs="EPSG:3035")
    image = write_tif(tmp_path / "S2_20180601.tif", np.full((1, 4, 6), 1000, np.uint16),
                      transform=Affine(10, 0, X0, 0, -10, Y0), nodata=0, descriptions=["B04"])
    # first of each: these draw one id each
    import_parcels(conn, register_file, aoi="nl", year=2023, crop_name_column="-")
    registry.register(conn, [_product("S2A_1")], aoi="cli")
    conn.commit()
    assert cli.main(["extract", str(image), "--aoi", "cli", "--year", "2018"]) == 0
    before = _last_ids(conn)
    for _ in range(5):  # the same again: look-ups only
        import_parcels(conn, register_file, aoi="nl", year=2023, crop_name_column="-")
        registry.register(conn, [_product("S2A_1")], aoi="cli")
        ensure_aoi(conn, "cli")
        conn.commit()
        assert cli.main(["extract", str(image), "--aoi", "cli", "--year", "2018"]) == 0
    assert _last_ids(conn) == before
    assert conn.execute("SELECT count(*), max(version) FROM cbm.parcel_set").fetchone() == (2, 6)
    assert conn.execute("SELECT count(*) FROM cbm.product").fetchone() == (2,)


def test_used_up_aoi_ids_give_a_clear_error(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE cbm.aoi ALTER COLUMN aoi_id RESTART WITH 32767")
    conn.commit()
    assert ensure_aoi(conn, "last") == 32767
    conn.commit()
    assert ensure_aoi(conn, "last") == 32767  # an existing AOI still works at the limit
    with pytest.raises(IdLimitError, match=r"AOI 'one_more'.*every id of cbm\.aoi is used.*32767"):
        registry.register(conn, [_product("S2B_2")], aoi="one_more")
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM cbm.product").fetchone() == (0,)  # nothing half-registered


def test_used_up_parcel_set_ids_give_a_clear_error_on_the_command_line(
    conn: psycopg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CBM_DATABASE_URL", db_url)
    conn.execute("ALTER TABLE cbm.parcel_set ALTER COLUMN parcel_set_id RESTART WITH 32767")
    conn.commit()
    register_file = write_gpkg(tmp_path / "parcels.gpkg", ["a", "b"], crs="EPSG:3035")
    args = ["parcels", "import", str(register_file), "--aoi", "nl", "--crop-name-column", "-", "--year"]
    assert cli.main([*args, "2023"]) == 0
    assert cli.main([*args, "2023"]) == 0  # a re-import at the limit
    capsys.readouterr()
    assert cli.main([*args, "2024"]) == 2
    err = capsys.readouterr().err
    assert "parcel set of AOI id" in err and "2024" in err and "cbm.parcel_set" in err and "32767" in err
    assert "Traceback" not in err
    assert conn.execute("SELECT year, version FROM cbm.parcel_set").fetchall() == [(2023, 2)]
