"""A project-local PostgreSQL/PostGIS cluster: initdb once, then start, stop, status, url.

The cluster listens on a Unix socket only (no TCP port is opened), in a directory
private to it, and trusts local socket connections: whoever can enter the socket
directory (root and the ``postgres`` user) is a superuser of this cluster. A production
deployment does not use this module; it points ``cbm_postgis`` at an existing server.

initdb refuses to run as root, so as root every server command runs as the ``postgres``
OS user through ``runuser``. That user must be able to reach the data directory: a
checkout inside root's home is not reachable, and :func:`default_root` then falls back
to a world-traversable scratch directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from cbm_tasks.errors import ClusterError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ClusterConfig",
    "default_root",
    "drop_database",
    "ensure_database",
    "find_bindir",
    "init",
    "is_running",
    "remove",
    "start",
    "stop",
]

log = logging.getLogger(__name__)

SUPERUSER = "cbm"
DEFAULT_PORT = 55432
SERVICE_USER = "postgres"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Where the local cluster lives and how to reach it.

    Attributes:
        root: folder holding ``data/`` (PGDATA), ``run/`` (socket) and ``postgres.log``.
        port: port number; with no TCP listener it only names the socket file.
        bindir: folder of ``initdb``, ``pg_ctl`` and ``postgres``.
    """

    root: Path
    port: int = DEFAULT_PORT
    bindir: Path | None = None

    def __post_init__(self) -> None:
        if not 1024 <= self.port <= 65535:
            raise ClusterError(f"cluster port must be within 1024..65535, got {self.port}")
        if len(str(self.socket_dir)) > 90:
            # sun_path holds 107 bytes, and the socket file name takes ~17 of them
            raise ClusterError(f"socket directory path is too long for a Unix socket: {self.socket_dir}")

    @property
    def data_dir(self) -> Path:
        """PGDATA."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's Unix socket."""
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        """Server log."""
        return self.root / "postgres.log"

    def url(self, dbname: str = "cbm") -> str:
        """Return a libpq URL for *dbname* over the cluster's socket."""
        return f"postgresql://{SUPERUSER}@/{quote(dbname)}?host={quote(str(self.socket_dir))}&port={self.port}"

    def sqlalchemy_url(self, dbname: str) -> str:
        """Return the SQLAlchemy URL (psycopg2 driver) that Airflow's metadata database needs."""
        return (
            f"postgresql+psycopg2://{SUPERUSER}@/{quote(dbname)}"
            f"?host={quote(str(self.socket_dir))}&port={self.port}"
        )


def _as_root() -> bool:
    return os.geteuid() == 0


def _service_can_reach(path: Path) -> bool:
    """Tell whether the ``postgres`` OS user could create and enter *path*."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    # resolving the path as that user checks every ancestor too; the missing folders below
    # *probe* are made by us and are traversable
    result = subprocess.run(
        ["runuser", "-u", SERVICE_USER, "--", "test", "-x", str(probe)], capture_output=True, check=False
    )
    return result.returncode == 0


def default_root(project_dir: Path) -> Path:
    """Return the cluster folder for a checkout: ``var/pg`` in it, or a scratch folder.

    As root, ``var/pg`` is used only when the ``postgres`` user can reach it; otherwise
    ``/var/tmp/cbm-pg-<hash of the checkout path>`` keeps one cluster per checkout.
    """
    local = project_dir.resolve() / "var" / "pg"
    if not _as_root() or _service_can_reach(local):
        return local
    digest = hashlib.sha1(str(project_dir.resolve()).encode()).hexdigest()[:10]  # noqa: S324 - a name, not security
    # a fixed name in a shared folder: _prepare_dirs refuses one owned by another user
    return Path("/var/tmp") / f"cbm-pg-{digest}"  # noqa: S108


def find_bindir() -> Path:
    """Return the bin folder of the newest installed PostgreSQL that has PostGIS.

    Raises:
        ClusterError: no PostgreSQL server with the postgis extension is installed.
    """
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    for initdb in reversed(candidates):
        version = initdb.parts[-3]
        if Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists():
            return initdb.parent
    raise ClusterError(
        "no PostgreSQL server with PostGIS found under /usr/lib/postgresql; "
        "install it with: apt-get install postgresql-15-postgis-3"
    )


def _as_service(argv: list[str]) -> list[str]:
    """Return *argv* run as the ``postgres`` OS user when we are root (initdb refuses root)."""
    return ["runuser", "-u", SERVICE_USER, "--", *argv] if _as_root() else argv


def _run(cfg: ClusterConfig, argv: list[str], *, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    tool = Path(argv[0]).name
    try:
        return subprocess.run(_as_service(argv), capture_output=True, text=True, check=True, timeout=timeout_s)
    except subprocess.CalledProcessError as err:
        raise ClusterError(f"{tool} failed for cluster {cfg.root}: {err.stderr.strip()[-2000:]}") from err
    except subprocess.TimeoutExpired as err:
        raise ClusterError(f"{tool} timed out after {timeout_s} s for cluster {cfg.root}") from err


def _bindir(cfg: ClusterConfig) -> Path:
    return cfg.bindir or find_bindir()


def _prepare_dirs(cfg: ClusterConfig) -> None:
    if cfg.root.exists():
        allowed = {os.geteuid(), pwd.getpwnam(SERVICE_USER).pw_uid if _as_root() else os.geteuid()}
        if cfg.root.stat().st_uid not in allowed:
            raise ClusterError(f"cluster folder {cfg.root} belongs to another user (uid {cfg.root.stat().st_uid})")
    for folder in (cfg.root, cfg.socket_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if _as_root():
        owner = pwd.getpwnam(SERVICE_USER)
        for folder in (cfg.root, cfg.socket_dir):
            os.chown(folder, owner.pw_uid, owner.pw_gid)
    cfg.root.chmod(0o700)
    cfg.socket_dir.chmod(0o700)


def init(cfg: ClusterConfig) -> bool:
    """Create the cluster unless it exists; return True when it was created."""
    if (cfg.data_dir / "PG_VERSION").exists():
        return False
    _prepare_dirs(cfg)
    _run(cfg, [str(_bindir(cfg) / "initdb"), "-D", str(cfg.data_dir), "-U", SUPERUSER,
               "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C.UTF-8"])
    settings = {
        "listen_addresses": "''",
        "port": str(cfg.port),
        "unix_socket_directories": f"'{cfg.socket_dir}'",
        "max_connections": "100",
        "shared_buffers": "'256MB'",
        "work_mem": "'32MB'",
        "maintenance_work_mem": "'256MB'",
        "max_wal_size": "'2GB'",
        "logging_collector": "off",
    }
    with (cfg.data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write("# written by cbm db start\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")
    log.info("initialised cluster root=%s port=%d", cfg.root, cfg.port)
    return True


def is_running(cfg: ClusterConfig) -> bool:
    """Tell whether the cluster's postmaster is up."""
    if not (cfg.data_dir / "PG_VERSION").exists():
        return False
    argv = _as_service([str(_bindir(cfg) / "pg_ctl"), "status", "-D", str(cfg.data_dir)])
    return subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode == 0


def start(cfg: ClusterConfig, *, timeout_s: float = 60) -> None:
    """Create (first time) and start the cluster; return when it accepts connections.

    Raises:
        ClusterError: initdb or pg_ctl failed; the message carries the end of the server log.
    """
    init(cfg)
    if is_running(cfg):
        return
    _prepare_dirs(cfg)
    if _as_root() and not cfg.log_file.exists():
        cfg.log_file.touch()
        owner = pwd.getpwnam(SERVICE_USER)
        os.chown(cfg.log_file, owner.pw_uid, owner.pw_gid)
    try:
        _run(cfg, [str(_bindir(cfg) / "pg_ctl"), "start", "-w", "-t", str(int(timeout_s)),
                   "-D", str(cfg.data_dir), "-l", str(cfg.log_file)], timeout_s=timeout_s + 10)
    except ClusterError as err:
        tail = cfg.log_file.read_text(errors="replace")[-2000:] if cfg.log_file.exists() else ""
        raise ClusterError(f"{err}\n--- {cfg.log_file} ---\n{tail}") from err
    log.info("started cluster root=%s socket=%s port=%d", cfg.root, cfg.socket_dir, cfg.port)


def stop(cfg: ClusterConfig, *, timeout_s: float = 60) -> bool:
    """Stop the cluster (fast shutdown); return False when it was not running."""
    if not is_running(cfg):
        return False
    _run(cfg, [str(_bindir(cfg) / "pg_ctl"), "stop", "-w", "-m", "fast", "-t", str(int(timeout_s)),
               "-D", str(cfg.data_dir)], timeout_s=timeout_s + 10)
    log.info("stopped cluster root=%s", cfg.root)
    return True


def _admin_connection(cfg: ClusterConfig) -> psycopg.Connection:
    """Connect to the cluster's ``postgres`` database (autocommit), waiting up to 30 s for it to accept."""
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            return psycopg.connect(cfg.url("postgres"), autocommit=True)
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise ClusterError(f"cannot connect to cluster {cfg.root}: {err}") from err
            time.sleep(0.2)


def ensure_database(cfg: ClusterConfig, dbname: str) -> bool:
    """Create database *dbname* unless it exists; return True when it was created."""
    from psycopg import sql

    with _admin_connection(cfg) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return True


def drop_database(cfg: ClusterConfig, dbname: str) -> None:
    """Drop database *dbname* if it exists, ending its sessions (test and benchmark databases)."""
    from psycopg import sql

    with _admin_connection(cfg) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def remove(cfg: ClusterConfig) -> None:
    """Stop the cluster and delete its folder (throw-away clusters of the tests)."""
    stop(cfg)
    shutil.rmtree(cfg.root, ignore_errors=True)
