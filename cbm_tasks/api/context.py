"""What every request of the API needs: settings, the cbm_reader connection pool, the credential cache, login limits.

The pool is opened on first use, not when the application is built: inside the Airflow
api-server the application is mounted as a sub-application, whose startup events never run,
and configuration is read from Airflow connections only when a request needs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from cbm_tasks.api.auth import CredentialCache, Principal, authenticate
from cbm_tasks.api.login_limit import LoginLimiter
from cbm_tasks.api.validation import DEFAULT_JRC_BAND_STYLE, JRC_BAND_STYLES
from cbm_tasks.errors import ConfigError, NotFoundError, TransientError
from cbm_tasks.store import Store, StoreConfig, open_store

__all__ = ["ApiConfig", "ApiContext"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Settings of one API process.

    Attributes:
        dsn: libpq connection string of the CbM database (never logged).
        db_role: role every pooled connection switches to (``SET ROLE``); the login of *dsn* must
            be a member. None = use the login as is (it must then be a cbm_reader member itself).
        store: object store of the product files (image chips); None = chips answer 404.
        backgrounds: orthophoto sources by name (JRC's ``tms``; :mod:`.backgrounds`); {} = none served.
        jrc_band_names: how JRC time-series answers name Sentinel-2 bands, by the red band: ``B04`` (the
            default: JRC's servers, whose notebooks and database client filter on B04) or ``B4`` (the
            extractor of JRC's open-source repository); a band asked for by name is answered under that
            name either way.
        pool_min, pool_max: connections kept open / at most.
        pool_timeout_s: wait for a free connection before answering 503.
        statement_timeout_ms: longest query (a hostile or unlucky request cannot hold the database).
        auth_cache_ttl_s: how long a verified credential is trusted without a new scrypt check.
        login_max_failures, login_window_s: failed logins of one user name from one client address
            within the window after which it gets 429 until the oldest leaves the window (``login_limit``;
            per process).
    """

    dsn: str
    db_role: str | None = "cbm_reader"
    store: StoreConfig | None = None
    backgrounds: Mapping[str, str] = field(default_factory=dict)
    jrc_band_names: str = DEFAULT_JRC_BAND_STYLE
    pool_min: int = 1
    pool_max: int = 8
    pool_timeout_s: float = 10.0
    statement_timeout_ms: int = 15_000
    auth_cache_ttl_s: float = 30.0
    login_max_failures: int = 5
    login_window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.jrc_band_names not in JRC_BAND_STYLES:
            raise ConfigError(f"JRC band naming (Airflow Variable cbm_jrc_band_names, standalone "
                              f"CBM_API_JRC_BAND_NAMES) must be one of {', '.join(JRC_BAND_STYLES)} (the red "
                              f"band's name), got {self.jrc_band_names!r}")
        if not 0 <= self.pool_min <= self.pool_max or self.pool_max < 1:
            raise ConfigError(f"API pool sizes must satisfy 0 <= pool_min <= pool_max >= 1, "
                              f"got {self.pool_min}, {self.pool_max}")
        if self.statement_timeout_ms < 100:
            raise ConfigError(f"statement_timeout_ms must be >= 100, got {self.statement_timeout_ms}")
        if self.login_max_failures < 1 or self.login_window_s <= 0:
            raise ConfigError(f"login_max_failures must be >= 1 and login_window_s > 0, "
                              f"got {self.login_max_failures}, {self.login_window_s}")

    def __repr__(self) -> str:  # the DSN may hold a password
        return (f"ApiConfig(db_role={self.db_role!r}, store={self.store!r}, backgrounds={sorted(self.backgrounds)}, "
                f"jrc_band_names={self.jrc_band_names!r}, "
                f"pool_max={self.pool_max})")


class ApiContext:
    """The shared state of one application instance (one per process)."""

    def __init__(self, config: ApiConfig | Callable[[], ApiConfig]) -> None:
        self._config_source = config
        self._config: ApiConfig | None = config if isinstance(config, ApiConfig) else None
        self._pool: ConnectionPool | None = None
        self._store: Store | None = None
        self._lock = threading.RLock()  # pool() reads config under the same lock
        self.credentials = CredentialCache(ttl_s=self.config.auth_cache_ttl_s if self._config else 30.0)
        # a lazy configuration (the Airflow mount) keeps the defaults: it is read only at the first request
        self.logins = (LoginLimiter(max_failures=self.config.login_max_failures, window_s=self.config.login_window_s)
                       if self._config else LoginLimiter())

    @property
    def config(self) -> ApiConfig:
        """The settings, read from their source on first use."""
        if self._config is None:
            with self._lock:
                if self._config is None:
                    source = self._config_source
                    self._config = source if isinstance(source, ApiConfig) else source()
        return self._config

    def store(self) -> Store:
        """Return the object store of the product files.

        Raises:
            NotFoundError: no store is configured (image chips are not served).
        """
        if self._store is None:
            if self.config.store is None:
                raise NotFoundError("image chips are not served: this API has no object store configured")
            self._store = open_store(self.config.store)
        return self._store

    def _configure(self, conn: psycopg.Connection) -> None:
        cfg = self.config
        if cfg.db_role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(cfg.db_role)))
        conn.execute("SELECT set_config('statement_timeout', %s, false), "
                     "set_config('default_transaction_read_only', 'on', false)",
                     (str(cfg.statement_timeout_ms),))

    def pool(self) -> ConnectionPool:
        """Return the connection pool, opening it on first use."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    cfg = self.config
                    self._pool = ConnectionPool(
                        cfg.dsn, min_size=cfg.pool_min, max_size=cfg.pool_max, timeout=cfg.pool_timeout_s,
                        kwargs={"autocommit": True, "application_name": "cbm-api"},
                        configure=self._configure, open=True, name="cbm-api",
                    )
        return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Lend a pooled cbm_reader connection.

        Raises:
            TransientError: no connection within pool_timeout_s, or the database is unreachable.
        """
        try:
            with self.pool().connection() as conn:
                yield conn
        except PoolTimeout as err:
            raise TransientError(f"no database connection free within {self.config.pool_timeout_s} s") from err
        except psycopg.OperationalError as err:
            raise TransientError(f"database unavailable: {str(err).splitlines()[0][:200]}") from err

    def authenticate(self, name: str, secret: str) -> Principal | None:
        """Return the principal for a credential (cached when valid), or None."""
        principal = self.credentials.get(name, secret)
        if principal is not None:
            return principal
        with self.connection() as conn:
            principal = authenticate(conn, name, secret)
        if principal is not None:
            self.credentials.put(name, secret, principal)
        return principal

    def close(self) -> None:
        """Close the pool (standalone server shutdown, tests)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
