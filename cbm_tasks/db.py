"""Database connections and the schema migration runner.

Migrations are the numbered files in ``sql/`` (``NNN_what.sql``). Each is applied once, in
its own transaction, and recorded in ``public.schema_migrations`` with its checksum; an
applied file that has changed since is an error, because a merged migration is never
edited. Concurrent runners (two Airflow workers starting at once) take turns on a table lock
of ``public.schema_migrations`` that only its owner can take (a reader cannot hold it to block
migrations, as it could hold an advisory lock key).

Every connection of the pipeline comes from :func:`connect`: it sets the session limits
(``lock_timeout``, ``statement_timeout``, ``client_connection_check_interval``) and turns a lost
connection or a timeout into :class:`TransientError`, wherever in the ``with`` block it happens.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from cbm_tasks.errors import MigrationError, TransientError
from cbm_tasks.paths import SQL_DIR

__all__ = [
    "CLIENT_CHECK_INTERVAL_S",
    "LOCK_TIMEOUT_S",
    "STATEMENT_TIMEOUT_S",
    "CbmConnection",
    "Migration",
    "SQL_DIR",
    "applied_migrations",
    "connect",
    "list_migrations",
    "migrate",
    "transient_error",
]

log = logging.getLogger(__name__)

# Session limits of every pipeline connection (README, "Guarantees under concurrency and faults").
LOCK_TIMEOUT_S = 600  # a task waits at most 10 min for a row or table lock, then retries later
STATEMENT_TIMEOUT_S = 3600  # no single statement of the pipeline runs for an hour
CLIENT_CHECK_INTERVAL_S = 10  # a killed client's session ends within 10 s, even while it waits on a lock

# Taken only while public.schema_migrations does not exist yet (an empty database): from then on
# the runners lock that table, which a read-only role cannot do.
_BOOTSTRAP_LOCK = 0x43424D  # "CBM"
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: str  # file name without .sql
    path: Path
    checksum: str


def transient_error(err: psycopg.OperationalError) -> TransientError:
    """Return the TransientError that says what *err* (a lost connection, a timeout) means.

    The message may name host and user as libpq does, never the password.
    """
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, psycopg.errors.LockNotAvailable):
        return TransientError(f"gave up waiting for a database lock (lock_timeout): {detail}; "
                              "another session holds it, retry later")
    if isinstance(err, psycopg.errors.QueryCanceled):
        return TransientError(f"a database statement was cancelled (statement_timeout or cancel): {detail}")
    if isinstance(err, psycopg.errors.TransactionRollback):  # deadlock, serialization failure
        return TransientError(f"the database rolled the transaction back: {detail}; retry")
    return TransientError(f"lost the connection to PostGIS: {detail}")


class CbmConnection(psycopg.Connection[TupleRow]):
    """A psycopg connection whose ``with`` block turns a lost connection or a timeout into TransientError."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if isinstance(exc_val, psycopg.OperationalError) and self.broken:
            self.close()  # nothing to roll back on a dead socket, and no warning about trying
        try:
            super().__exit__(exc_type, exc_val, exc_tb)
        except psycopg.OperationalError as err:  # the commit at the end of the block failed
            raise transient_error(err) from err
        if isinstance(exc_val, psycopg.OperationalError):
            raise transient_error(exc_val) from exc_val


def connect(
    dsn: str,
    *,
    autocommit: bool = False,
    application_name: str = "cbm",
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
) -> CbmConnection:
    """Open a connection of the pipeline with its session limits.

    A refused connection, and any lost connection or timeout inside the connection's ``with``
    block, raise :class:`TransientError` with a one-line message (the command line prints it and
    exits 75; an Airflow task is retried).

    Args:
        dsn: libpq URL or key/value string; never logged, it may hold a password.
        autocommit: as psycopg's; False means every statement runs in a transaction.
        application_name: shown in pg_stat_activity.
        lock_timeout_s: longest wait for one lock (``lock_timeout``); 0 = no limit.
        statement_timeout_s: longest statement (``statement_timeout``); 0 = no limit.

    Raises:
        TransientError: the server cannot be reached or refused the connection.
    """
    params: dict[str, Any] = conninfo_to_dict(dsn)
    limits = (f"-c lock_timeout={int(lock_timeout_s * 1000)} -c statement_timeout={int(statement_timeout_s * 1000)} "
              f"-c client_connection_check_interval={CLIENT_CHECK_INTERVAL_S * 1000}")
    params["options"] = f"{params.get('options') or ''} {limits}".strip()  # the DSN's own options come first
    params["application_name"] = application_name
    try:
        return CbmConnection.connect(make_conninfo(**params), autocommit=autocommit)
    except psycopg.OperationalError as err:
        raise TransientError(f"cannot connect to PostGIS: {str(err).strip()}") from err


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


def _lock_migrations(conn: psycopg.Connection) -> None:
    """Make concurrent runners take turns, until the end of the caller's transaction.

    EXCLUSIVE mode conflicts with itself but not with plain SELECTs, and needs more than the
    SELECT privilege, so a read-only role can neither take it nor block it. Only an empty
    database (no ``schema_migrations`` yet) falls back to an advisory lock.
    """
    if conn.execute("SELECT to_regclass('public.schema_migrations')").fetchone() == (None,):
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK,))
        if conn.execute("SELECT to_regclass('public.schema_migrations')").fetchone() == (None,):
            return  # still empty: this runner creates the table, later ones lock it
    conn.execute("LOCK TABLE public.schema_migrations IN EXCLUSIVE MODE")


def migrate(conn: psycopg.Connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the pending migrations of *sql_dir*; return the versions applied now.

    Raises:
        MigrationError: an applied migration was edited, or a migration failed (its
            transaction is rolled back and the error names the file).
    """
    migrations = list_migrations(sql_dir)
    applied_now: list[str] = []
    with conn.transaction():
        _lock_migrations(conn)
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
