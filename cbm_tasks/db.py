"""Database connections and the schema migration runner.

Migrations are the numbered files in ``sql/`` (``NNN_what.sql``). Each is applied once, in
its own transaction, and recorded in ``public.schema_migrations`` with its checksum; an
applied file that has changed since is an error, because a merged migration is never
edited. An advisory lock serialises concurrent runners (two Airflow workers starting at
once).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cbm_tasks.errors import MigrationError, TransientError
from cbm_tasks.paths import SQL_DIR

__all__ = ["Migration", "SQL_DIR", "applied_migrations", "connect", "list_migrations", "migrate"]

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x43424D  # "CBM": pg_advisory_xact_lock key of the migration runner
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: str  # file name without .sql
    path: Path
    checksum: str


def connect(dsn: str, *, autocommit: bool = False, application_name: str = "cbm") -> psycopg.Connection:
    """Open a connection, translating a refused or lost connection into TransientError.

    Args:
        dsn: libpq URL or key/value string; never logged, it may hold a password.
        autocommit: as psycopg's; False means every statement runs in a transaction.
        application_name: shown in pg_stat_activity.
    """
    try:
        return psycopg.connect(dsn, autocommit=autocommit, application_name=application_name)
    except psycopg.OperationalError as err:
        # the message may name host and user but never the password
        raise TransientError(f"cannot connect to PostGIS: {err}".strip()) from err


def list_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Return the migration files of *sql_dir* in order.

    Raises:
        MigrationError: a file is misnamed or two files share a number.
    """
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration {path} is not named NNN_what.sql")
        number = match.group(1)
        if number in seen:
            raise MigrationError(f"migrations {seen[number]} and {path.name} share the number {number}")
        seen[number] = path.name
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        migrations.append(Migration(path.stem, path, checksum))
    if not migrations:
        raise MigrationError(f"no migrations found in {sql_dir}")
    return migrations


def applied_migrations(conn: psycopg.Connection) -> dict[str, str]:
    """Return {version: checksum} of the migrations recorded in the database."""
    if conn.execute("SELECT to_regclass('public.schema_migrations')").fetchone() == (None,):
        return {}
    rows = conn.execute("SELECT version, checksum FROM public.schema_migrations").fetchall()
    return {version: checksum for version, checksum in rows}


def migrate(conn: psycopg.Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the pending migrations of *sql_dir*; return the versions applied now.

    Raises:
        MigrationError: an applied migration was edited, or a migration failed (its
            transaction is rolled back and the error names the file).
    """
    migrations = list_migrations(sql_dir)
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        done = applied_migrations(conn)
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.path.name} was edited after it was applied "
                        f"(recorded sha256 {done[migration.version][:12]}, file {migration.checksum[:12]}); "
                        "add a new migration instead"
                    )
                continue
            t0 = time.perf_counter()
            try:
                with conn.transaction():
                    conn.execute(migration.path.read_text().encode())  # our own file, no parameters
                    conn.execute(
                        "INSERT INTO public.schema_migrations (version, checksum) VALUES (%s, %s)",
                        (migration.version, migration.checksum),
                    )
            except psycopg.Error as err:
                raise MigrationError(f"migration {migration.path.name} failed: {err}") from err
            applied_now.append(migration.version)
            log.info("applied migration=%s seconds=%.2f", migration.version, time.perf_counter() - t0)
    return applied_now
