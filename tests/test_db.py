"""The migration runner and the schema, against the real PostGIS cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from cbm_tasks import db
from cbm_tasks.errors import MigrationError


def test_all_migrations_applied_once_in_order(conn: psycopg.Connection) -> None:
    versions = [m.version for m in db.list_migrations()]
    assert versions == sorted(versions)
    assert set(db.applied_migrations(conn)) == set(versions)
    assert db.migrate(conn) == []  # nothing pending: re-running is a no-op
    postgis = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'postgis'").fetchone()
    assert postgis is not None and postgis[0].startswith("3.")


def test_edited_migration_is_refused(conn: psycopg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(db.SQL_DIR, sql_dir)
    target = sql_dir / "003_parcels.sql"
    target.write_text(target.read_text() + "\n-- edited after merge\n")
    with pytest.raises(MigrationError, match="003_parcels.sql was edited"):
        db.migrate(conn, sql_dir)


def test_failing_migration_rolls_back_and_names_file(conn: psycopg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(db.SQL_DIR, sql_dir)
    (sql_dir / "900_broken.sql").write_text("CREATE TABLE cbm.half_done (x int);\nSELECT no_such_function();\n")
    with pytest.raises(MigrationError, match="900_broken.sql failed"):
        db.migrate(conn, sql_dir)
    assert conn.execute("SELECT to_regclass('cbm.half_done')").fetchone() == (None,)
    assert "900_broken" not in db.applied_migrations(conn)


def test_misnamed_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "4_bad name.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="is not named NNN_what.sql"):
        db.list_migrations(tmp_path)


def test_reader_role_cannot_write(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO cbm.aoi (name) VALUES ('demo')")
    conn.execute("SET ROLE cbm_reader")
    assert conn.execute("SELECT name FROM cbm.aoi").fetchall() == [("demo",)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO cbm.aoi (name) VALUES ('other')")
    conn.rollback()


def test_writer_role_writes_rows_but_makes_no_ddl(conn: psycopg.Connection) -> None:
    conn.execute("SET ROLE cbm_writer")
    conn.execute("INSERT INTO cbm.aoi (name) VALUES ('demo')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("CREATE TABLE cbm.not_allowed (x int)")
    conn.rollback()


def test_partitions_are_made_by_the_function_and_idempotent(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO cbm.aoi (name) VALUES ('demo')")
    set_id = conn.execute(
        "INSERT INTO cbm.parcel_set (aoi_id, year, srid, source_file) "
        "SELECT aoi_id, 2018, 32631, 'x.gpkg' FROM cbm.aoi RETURNING parcel_set_id"
    ).fetchone()[0]
    conn.execute("SET ROLE cbm_writer")
    for _ in range(2):
        conn.execute("SELECT cbm.ensure_parcel_set_partitions(%s::smallint)", (set_id,))
    conn.execute("RESET ROLE")
    parts = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent IN ('cbm.parcel_obs'::regclass, 'cbm.parcel_class_counts'::regclass) ORDER BY 1"
    ).fetchall()
    assert parts == [(f"parcel_class_counts_{set_id}",), (f"parcel_obs_{set_id}",)]
