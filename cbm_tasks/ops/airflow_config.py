"""The local Airflow deployment's settings: ``airflow.cfg``, secrets, admin password, connections.

Layout under ``AirflowConfig.home`` (``AIRFLOW_HOME``, default ``<project>/var/airflow``)::

    airflow.cfg              written on every start from AirflowConfig (mode 0600: holds secrets)
    secrets.json             fernet key, JWT and API secrets: generated once, kept (0600)
    passwords.json           the simple auth manager's users and passwords (0600)
    run/<component>.pid      pid and start time of each component (its session id)
    run/<component>.log      its stdout and stderr
    logs/                    Airflow's task logs
    openlineage/events.jsonl OpenLineage events of every task (one JSON object a line), unless
                             CBM_OPENLINEAGE_URL sends them to an OpenLineage server (Marquez)

The metadata database is ``metadata_db`` in the project-local PostgreSQL cluster (psycopg2
over the Unix socket); the pipeline's own connections ``cbm_postgis`` and ``cbm_store`` are
passed to every component as ``AIRFLOW_CONN_*`` environment variables (:func:`environment`).
No Airflow import here (STYLE R1).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbm_tasks.errors import ConfigError
from cbm_tasks.ops import kernel_cache, settings
from cbm_tasks.ops.cluster import ClusterConfig

__all__ = [
    "ADMIN_USER",
    "CARD_POOL",
    "EXTRACT_POOL",
    "AirflowConfig",
    "admin_password",
    "default_config",
    "environment",
    "export_lines",
    "write_config",
]

ADMIN_USER = "admin"
EXTRACT_POOL = "cbm_extract"
CARD_POOL = "cbm_card"
_PRELOAD = ("airflow.executors.local_executor", "airflow.sdk.execution_time.task_runner",
            "cbm_tasks.pipeline.extract", "cbm_tasks.pipeline.poll", "cbm_tasks.store", "cbm_tasks.catalogue.clients",
            "cbm_tasks.extraction.preload")
_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@dataclass(frozen=True, slots=True)
class AirflowConfig:
    """Everything the local deployment needs; ``airflow.cfg`` and the environment derive from it.

    Attributes:
        home: AIRFLOW_HOME.
        project: the checkout (holds ``dags/`` and ``plugins/``).
        cluster: the local PostgreSQL cluster holding the metadata database.
        data_url: libpq URL of the CbM database; becomes connection ``cbm_postgis``.
        store_root: folder of the local object store; becomes connection ``cbm_store``.
        metadata_db: name of Airflow's metadata database in ``cluster``.
        port: API server (UI) port, bound to ``host`` only.
        parallelism: task slots of the LocalExecutor (2 cores: keep 2-4).
        max_active_tasks_per_dag: running tasks per DAG at most.
        extract_pool_slots: slots of pool ``cbm_extract``: concurrent extractions, bounded by memory.
        card_pool_slots: slots of pool ``cbm_card``: concurrent CARD jobs (sarsen ~1 GB per Mpx of
            AOI, SNAP 8-16 GB each): worker memory / memory of one job.
        openlineage_url: an OpenLineage server (e.g. Marquez, ``http://127.0.0.1:5000``) the events
            go to; None = the JSON-lines file ``openlineage_file`` (nothing external needed).
    """

    home: Path
    project: Path
    cluster: ClusterConfig
    data_url: str
    store_root: Path
    metadata_db: str = "airflow"
    host: str = "127.0.0.1"
    port: int = 8080
    parallelism: int = 4
    max_active_tasks_per_dag: int = 4
    extract_pool_slots: int = 2
    card_pool_slots: int = 1
    openlineage_url: str | None = None

    def __post_init__(self) -> None:
        if not 1024 <= self.port <= 65535:
            raise ConfigError(f"Airflow API server port must be within 1024..65535, got {self.port}")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"the local deployment listens on loopback only, got host {self.host!r}")
        if self.openlineage_url is not None and not self.openlineage_url.startswith(("http://", "https://")):
            raise ConfigError(f"openlineage_url must be an http(s) URL, got {self.openlineage_url!r}")
        for name in ("parallelism", "max_active_tasks_per_dag", "extract_pool_slots", "card_pool_slots"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def url(self) -> str:
        """Base URL of the API server and UI."""
        return f"http://{self.host}:{self.port}"

    @property
    def openlineage_file(self) -> Path:
        """The JSON-lines file of OpenLineage events (the default transport)."""
        return self.home / "openlineage" / "events.jsonl"

    @property
    def run_dir(self) -> Path:
        """Folder of the pid and log files of the components."""
        return self.home / "run"

    @property
    def passwords_file(self) -> Path:
        """The simple auth manager's password file."""
        return self.home / "passwords.json"

    def pid_file(self, component: str) -> Path:
        """Pid file of *component*."""
        return self.run_dir / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        """Log file (stdout and stderr) of *component*."""
        return self.run_dir / f"{component}.log"


def default_config(*, port: int | None = None) -> AirflowConfig:
    """Return the deployment of this checkout.

    AIRFLOW_HOME is ``<project>/var/airflow`` wherever the PostgreSQL cluster lives (as root
    the cluster may sit in /var/tmp, see :func:`cbm_tasks.ops.cluster.default_root`).

    Args:
        port: API server port; None = ``CBM_AIRFLOW_PORT`` or 8080.

    Environment:
        CBM_AIRFLOW_PORT  default API server port (8080)
        CBM_STORE_ROOT    folder of the local object store (default ``<project>/var``)
        CBM_OPENLINEAGE_URL  OpenLineage server for the events (default: a local JSON-lines file)
        and those of :mod:`cbm_tasks.ops.settings` (cluster, CbM database).

    Raises:
        ConfigError: ``CBM_AIRFLOW_PORT`` is not an integer.
    """
    project = settings.project_dir()
    if port is None:
        port_text = os.environ.get("CBM_AIRFLOW_PORT", "8080")
        try:
            port = int(port_text)
        except ValueError as err:
            raise ConfigError(f"CBM_AIRFLOW_PORT must be an integer, got {port_text!r}") from err
    store_root = os.environ.get("CBM_STORE_ROOT")
    return AirflowConfig(
        home=project / "var" / "airflow",
        project=project,
        cluster=settings.local_cluster(),
        data_url=settings.database_url(),
        store_root=Path(store_root) if store_root else project / "var",
        port=port,
        openlineage_url=os.environ.get("CBM_OPENLINEAGE_URL") or None,
    )


def _write_private(path: Path, text: str) -> None:
    """Write *text* to *path*, readable by the owner only (the file holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _secrets(cfg: AirflowConfig) -> dict[str, str]:
    """Return the deployment's secrets, generating them on first use.

    The fernet key must never change once connections or variables are stored encrypted in
    the metadata database, so the file is written once and then only read.
    """
    path = cfg.home / "secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    generated = {
        "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "jwt_secret": secrets.token_urlsafe(32),
        "api_secret_key": secrets.token_urlsafe(32),
    }
    _write_private(path, json.dumps(generated, indent=1) + "\n")
    return generated


def admin_password(cfg: AirflowConfig) -> str:
    """Return the UI password of user ``admin``, generating it on first use."""
    if cfg.passwords_file.exists():
        passwords: dict[str, str] = json.loads(cfg.passwords_file.read_text() or "{}")
        if ADMIN_USER in passwords:
            return passwords[ADMIN_USER]
    else:
        passwords = {}
    passwords[ADMIN_USER] = secrets.token_urlsafe(12)
    _write_private(cfg.passwords_file, json.dumps(passwords) + "\n")
    return passwords[ADMIN_USER]


def _settings(cfg: AirflowConfig) -> dict[str, dict[str, str]]:
    keys = _secrets(cfg)
    return {
        "core": {
            "dags_folder": str(cfg.project / "dags"),
            "plugins_folder": str(cfg.project / "plugins"),
            "executor": "LocalExecutor",
            "parallelism": str(cfg.parallelism),
            "max_active_tasks_per_dag": str(cfg.max_active_tasks_per_dag),
            "load_examples": "False",
            "dags_are_paused_at_creation": "True",
            "fernet_key": keys["fernet_key"],
            "auth_manager": _AUTH_MANAGER,
            "simple_auth_manager_users": f"{ADMIN_USER}:admin",
            "simple_auth_manager_passwords_file": str(cfg.passwords_file),
            "execution_api_server_url": f"{cfg.url}/execution/",
        },
        "database": {"sql_alchemy_conn": cfg.cluster.sqlalchemy_url(cfg.metadata_db)},
        "api": {
            "host": cfg.host,
            "port": str(cfg.port),
            "base_url": cfg.url,
            "workers": "1",  # 2 shared cores: one worker serves a maintainer's UI fine
            "secret_key": keys["api_secret_key"],
        },
        "api_auth": {"jwt_secret": keys["jwt_secret"]},
        "scheduler": {
            "catchup_by_default": "False",
            # LocalExecutor workers start from a forkserver that has imported the task libraries
            # (numba, rasterio, GDAL, psycopg): every task process forked from a worker inherits
            # them instead of spending ~2 s importing them again
            "mp_start_method": "forkserver",
            "mp_forkserver_preload": ",".join(_PRELOAD),
        },
        # new DAG files show up within a minute instead of five
        "dag_processor": {"refresh_interval": "60"},
        "logging": {"base_log_folder": str(cfg.home / "logs"), "colored_console_log": "False"},
        "openlineage": {"namespace": "cbm", "transport": json.dumps(_openlineage_transport(cfg))},
    }


def _openlineage_transport(cfg: AirflowConfig) -> dict[str, Any]:
    """The OpenLineage provider's transport: an OpenLineage server's HTTP API, or a local file."""
    if cfg.openlineage_url is not None:
        return {"type": "http", "url": cfg.openlineage_url, "endpoint": "api/v1/lineage"}
    cfg.openlineage_file.parent.mkdir(parents=True, exist_ok=True)
    return {"type": "file", "log_file_path": str(cfg.openlineage_file), "append": True}


def write_config(cfg: AirflowConfig) -> Path:
    """Write ``airflow.cfg`` (and first-time secrets and admin password) under ``cfg.home``; return its path."""
    admin_password(cfg)
    lines = ["# written by `cbm airflow start` from cbm_tasks.ops.airflow_ctl.AirflowConfig; edits are overwritten"]
    for section, values in _settings(cfg).items():
        lines.append(f"\n[{section}]")
        # configparser interpolates %(...)s: a literal % is written %%
        lines.extend(f"{key} = {value.replace('%', '%%')}" for key, value in values.items())
    path = cfg.home / "airflow.cfg"
    _write_private(path, "\n".join(lines) + "\n")
    return path


def _postgis_connection(data_url: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict  # psycopg: not for `cbm airflow status` (CLI start-up)

    params = conninfo_to_dict(data_url)
    conn: dict[str, Any] = {"conn_type": "postgres"}
    for field, key in (("host", "host"), ("login", "user"), ("password", "password"), ("schema", "dbname")):
        if params.get(key):
            conn[field] = str(params.pop(key))
    if params.get("port"):
        conn["port"] = int(str(params.pop("port")))
    extra = {key: str(value) for key, value in params.items() if value is not None}
    if extra:
        conn["extra"] = extra
    return conn


def environment(cfg: AirflowConfig) -> dict[str, str]:
    """Return the variables every Airflow process of this deployment needs besides ``airflow.cfg``."""
    store = {"conn_type": "generic", "extra": {"kind": "local", "root": str(cfg.store_root)}}
    return {
        "AIRFLOW_HOME": str(cfg.home),
        "AIRFLOW_CONN_CBM_POSTGIS": json.dumps(_postgis_connection(cfg.data_url)),
        "AIRFLOW_CONN_CBM_STORE": json.dumps(store),
        # the forkserver's preload and every task load the kernels `cbm kernels warm` compiled at install
        kernel_cache.CACHE_ENV: str(kernel_cache.cache_dir()),
    }


def export_lines(cfg: AirflowConfig) -> list[str]:
    """Return shell ``export`` lines that let a maintainer run ``airflow ...`` by hand."""
    bindir = Path(sys.executable).parent
    lines = [f"export {key}={shlex.quote(value)}" for key, value in environment(cfg).items()]
    lines.append(f'export PATH={shlex.quote(str(bindir))}:"$PATH"')
    return lines
