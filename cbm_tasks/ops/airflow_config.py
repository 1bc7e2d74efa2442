"""The local Airflow deployment's settings: ``airflow.cfg``, secrets, admin password, connections.

Layout under ``AirflowConfig.home`` (``AIRFLOW_HOME``, default ``<project>/var/airflow``)::

    airflow.cfg              written on every start from AirflowConfig (mode 0600: holds secrets)
    secrets.json             fernet key, JWT and API secrets: generated once, kept (0600)
    passwords.json           the simple auth manager's users and passwords (0600)
    run/<component>.pid      pid and start time of each component (its session id)
    run/<component>.log      its stdout and stderr
    run/deployment.json      the executor and workers of the running deployment (``cbm airflow start``)
    redis/redis.conf         the Celery broker's configuration (``executor="celery"`` only, 0600)
    logs/                    Airflow's task logs
    openlineage/events.jsonl OpenLineage events of every task (one JSON object a line), unless
                             CBM_OPENLINEAGE_URL sends them to an OpenLineage server (Marquez)

The metadata database is ``metadata_db`` in the project-local PostgreSQL cluster (psycopg2
over the Unix socket); the pipeline's own connections ``cbm_postgis`` and ``cbm_store`` are
passed to every component as ``AIRFLOW_CONN_*`` environment variables (:func:`environment`).
No Airflow import here (STYLE R1).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbm_tasks.errors import ConfigError
from cbm_tasks.ops import kernel_cache, redis_broker, settings
from cbm_tasks.ops.airflow_secrets import ADMIN_USER, admin_password, broker_password, deployment_secrets, write_private
from cbm_tasks.ops.cluster import ClusterConfig

__all__ = [
    "ADMIN_USER",
    "AIRFLOW_COMPONENTS",
    "CARD_POOL",
    "CELERY_CONFIG_MODULE",
    "EXECUTORS",
    "EXTRACT_POOL",
    "FORKSERVER_PRELOAD",
    "AirflowConfig",
    "admin_password",
    "broker_password",
    "default_config",
    "environment",
    "export_lines",
    "process_environment",
    "record_deployment",
    "write_celery_config",
    "write_config",
]

EXTRACT_POOL = "cbm_extract"
CARD_POOL = "cbm_card"
# Imported once by the LocalExecutor's forkserver ([scheduler] mp_forkserver_preload); every task process
# forked from it inherits them. What the tasks run: the task runner, the pipeline, the extraction's kernels.
_TASK_MODULES = ("airflow.sdk.execution_time.task_runner", "cbm_tasks.pipeline.extract", "cbm_tasks.pipeline.poll",
                 "cbm_tasks.store", "cbm_tasks.catalogue.clients", "cbm_tasks.extraction.preload")
# What the files in plugins/ import: the task runner loads every plugin in every task process (for
# their listeners), and these imports (FastAPI, Airflow's API security, the OpenLineage plugin) cost
# about 4 s of CPU per task when not inherited (benchmarks/pipeline_bench.py --quick: a task's
# overhead 3.6 -> 1.3 s). tests/test_airflow_ctl.py fails when a plugin imports something not listed.
_PLUGIN_MODULES = ("cbm_tasks.api.app", "airflow.api_fastapi.core_api.security",
                   "airflow.providers.openlineage.plugins.openlineage", "jinja2")
_TASK_PRELOAD = (*_TASK_MODULES, *_PLUGIN_MODULES)
FORKSERVER_PRELOAD = ("airflow.executors.local_executor", *_TASK_PRELOAD)
# The Celery workers' preload: Celery imports the modules of its `imports` setting in a worker's main
# process before it forks the pool, and each task process (forked from a pool process) inherits them.
# Airflow takes a Celery configuration only as a whole dict ([celery] celery_config_options), so the
# deployment writes a module holding Airflow's defaults plus `imports` in AIRFLOW_HOME/config, which
# Airflow puts on every component's sys.path (cbm_tasks itself never imports Airflow); the Docker
# image carries the same module (docker/Dockerfile).
CELERY_CONFIG_MODULE = "cbm_celery_config"
_CELERY_CONFIG_SOURCE = f"""# written by cbm_tasks.ops.airflow_config.write_celery_config; edits are overwritten
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG = {{**DEFAULT_CELERY_CONFIG, "imports": {list(_TASK_PRELOAD)!r}}}
"""
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
CELERY_QUEUE = "default"  # Airflow's [operators] default_queue: every worker serves it
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
        executor: ``local`` (LocalExecutor, the default) or ``celery`` (CeleryExecutor with
            ``celery_workers`` workers on this machine and a local Redis broker on ``redis_port``).
        celery_workers: Celery workers started (each ``airflow celery worker`` process has its
            own hostname ``cbm<i>@<host>``).
        worker_concurrency: task slots of each Celery worker.
        redis_port: port of the Celery broker on 127.0.0.1.
        task_heartbeat_timeout_s: a running task whose heartbeat stops this long (its worker
            died) is failed by the scheduler and retried ([scheduler] task_instance_heartbeat_timeout).
        retry_delay_s: every cbm task's first retry delay, replacing each DAG's own (1-2 min);
            None keeps those ([cbm] retry_delay_seconds, read by ``dags/cbm_common.py``).
        claim_lease_s: how long an image whose worker died stays taken before a retry may take it
            (``pipeline.lease.LeaseTerms``, 60 s); None keeps it ([cbm] claim_lease_seconds).
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
    executor: str = "local"
    celery_workers: int = 2
    worker_concurrency: int = 1
    redis_port: int = 6379
    task_heartbeat_timeout_s: int = 300
    retry_delay_s: int | None = None
    claim_lease_s: int | None = None

    def __post_init__(self) -> None:
        if not 1024 <= self.port <= 65535:
            raise ConfigError(f"Airflow API server port must be within 1024..65535, got {self.port}")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"the local deployment listens on loopback only, got host {self.host!r}")
        if self.openlineage_url is not None and not self.openlineage_url.startswith(("http://", "https://")):
            raise ConfigError(f"openlineage_url must be an http(s) URL, got {self.openlineage_url!r}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if not 1024 <= self.redis_port <= 65535 or self.redis_port == self.port:
            raise ConfigError(f"redis_port must be within 1024..65535 and differ from the API server port "
                              f"{self.port}, got {self.redis_port}")
        for name in ("parallelism", "max_active_tasks_per_dag", "extract_pool_slots", "card_pool_slots",
                     "celery_workers", "worker_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.task_heartbeat_timeout_s < 10:
            raise ConfigError(f"task_heartbeat_timeout_s must be >= 10, got {self.task_heartbeat_timeout_s}")
        if self.retry_delay_s is not None and self.retry_delay_s < 1:
            raise ConfigError(f"retry_delay_s must be >= 1, got {self.retry_delay_s}")
        if self.claim_lease_s is not None and self.claim_lease_s < 4:
            raise ConfigError(f"claim_lease_s must be >= 4, got {self.claim_lease_s}")

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
    def components(self) -> tuple[str, ...]:
        """The processes of this deployment, in start order (the broker before its clients)."""
        if self.executor != "celery":
            return AIRFLOW_COMPONENTS
        workers = tuple(f"celery-worker-{i}" for i in range(1, self.celery_workers + 1))
        return ("redis", *AIRFLOW_COMPONENTS, *workers)

    @property
    def redis_dir(self) -> Path:
        """Folder of the Celery broker's configuration."""
        return self.home / "redis"

    @property
    def deployment_file(self) -> Path:
        """Where ``start`` records the executor and workers of the running deployment."""
        return self.run_dir / "deployment.json"

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


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError as err:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from err


def default_config(*, port: int | None = None, executor: str | None = None, workers: int | None = None,
                   concurrency: int | None = None) -> AirflowConfig:
    """Return the deployment of this checkout.

    AIRFLOW_HOME is ``<project>/var/airflow`` wherever the PostgreSQL cluster lives (as root
    the cluster may sit in /var/tmp, see :func:`cbm_tasks.ops.cluster.default_root`).

    Args:
        port: API server port; None = ``CBM_AIRFLOW_PORT`` or 8080.
        executor: ``local`` or ``celery``; None = that of the running deployment (recorded by
            ``start`` in ``run/deployment.json``), else ``local``.
        workers: Celery workers; None = those recorded, else 2.
        concurrency: task slots per Celery worker; None = those recorded, else 1. With Celery,
            ``parallelism``, ``max_active_tasks_per_dag`` and the extraction pool grow to the
            workers' slots (``workers * concurrency``) when those are more than the defaults.

    Environment:
        CBM_AIRFLOW_PORT  default API server port (8080)
        CBM_REDIS_PORT    port of the Celery broker on 127.0.0.1 (6379)
        CBM_STORE_ROOT    folder of the local object store (default ``<project>/var``)
        CBM_OPENLINEAGE_URL  OpenLineage server for the events (default: a local JSON-lines file)
        and those of :mod:`cbm_tasks.ops.settings` (cluster, CbM database).

    Raises:
        ConfigError: ``CBM_AIRFLOW_PORT`` or ``CBM_REDIS_PORT`` is not an integer; a bad executor.
    """
    project = settings.project_dir()
    home = project / "var" / "airflow"
    if port is None:
        port = _int_env("CBM_AIRFLOW_PORT", 8080)
    recorded = _recorded_deployment(home / "run" / "deployment.json")
    executor = executor or str(recorded.get("executor", "local"))
    workers = workers or int(recorded.get("celery_workers", 2))
    concurrency = concurrency or int(recorded.get("worker_concurrency", 1))
    slots = workers * concurrency if executor == "celery" else 0
    store_root = os.environ.get("CBM_STORE_ROOT")
    return AirflowConfig(
        home=home,
        project=project,
        cluster=settings.local_cluster(),
        data_url=settings.database_url(),
        store_root=Path(store_root) if store_root else project / "var",
        port=port,
        openlineage_url=os.environ.get("CBM_OPENLINEAGE_URL") or None,
        executor=executor,
        celery_workers=workers,
        worker_concurrency=concurrency,
        redis_port=_int_env("CBM_REDIS_PORT", 6379),
        parallelism=max(4, slots + 2),  # + 2: the light claim/summary tasks beside the extractions
        max_active_tasks_per_dag=max(4, slots + 2),
        extract_pool_slots=max(2, slots),
    )


def _recorded_deployment(path: Path) -> dict[str, Any]:
    try:
        recorded: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return recorded


def record_deployment(cfg: AirflowConfig) -> None:
    """Record the executor and workers of the deployment being started (read by :func:`default_config`)."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    cfg.deployment_file.write_text(json.dumps({"executor": cfg.executor, "celery_workers": cfg.celery_workers,
                                               "worker_concurrency": cfg.worker_concurrency}) + "\n")


def _settings(cfg: AirflowConfig) -> dict[str, dict[str, str]]:
    keys = deployment_secrets(cfg)
    values = {
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
            "mp_forkserver_preload": ",".join(FORKSERVER_PRELOAD),
        },
        # new DAG files show up within a minute instead of five
        "dag_processor": {"refresh_interval": "60"},
        "logging": {"base_log_folder": str(cfg.home / "logs"), "colored_console_log": "False"},
        "openlineage": {"namespace": "cbm", "transport": json.dumps(_openlineage_transport(cfg))},
    }
    values["core"]["executor"] = EXECUTORS[cfg.executor]
    # a task whose worker died (no heartbeat) is failed and retried by the scheduler after this long
    values["scheduler"]["task_instance_heartbeat_timeout"] = str(cfg.task_heartbeat_timeout_s)
    # the deployment's own settings, read by dags/cbm_common.py (cbm_setting)
    cbm = {"retry_delay_seconds": cfg.retry_delay_s, "claim_lease_seconds": cfg.claim_lease_s}
    values["cbm"] = {key: str(value) for key, value in cbm.items() if value is not None}
    if cfg.executor == "celery":
        values.update(_celery_settings(cfg, keys["redis_password"]))
    return values


def _celery_settings(cfg: AirflowConfig, redis_password: str) -> dict[str, dict[str, str]]:
    """The CeleryExecutor's sections: the local Redis broker; results in the metadata database (the default)."""
    return {
        "operators": {"default_queue": CELERY_QUEUE},
        "celery": {
            "broker_url": redis_broker.broker_url(cfg.redis_port, redis_password),
            "worker_concurrency": str(cfg.worker_concurrency),
            # one message at a time per slot: a worker does not hoard tasks another could run now
            "worker_prefetch_multiplier": "1",
            "task_acks_late": "True",
            "pool": "prefork",
            "celery_config_options": f"{CELERY_CONFIG_MODULE}.CELERY_CONFIG",
        },
        # an unacknowledged message (its worker died) goes back to the queue after this long; the
        # scheduler has long failed and re-queued the task by then (task_instance_heartbeat_timeout)
        "celery_broker_transport_options": {"visibility_timeout": "21600"},
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
    write_private(path, "\n".join(lines) + "\n")
    if cfg.executor == "celery":
        redis_broker.write_redis_config(cfg.redis_dir, port=cfg.redis_port, password=broker_password(cfg))
        write_celery_config(cfg.home / "config")
    return path


def write_celery_config(folder: Path) -> Path:
    """Write the Celery configuration module (Airflow's defaults plus the workers' preload) into *folder*.

    *folder* is ``$AIRFLOW_HOME/config``, on every Airflow component's ``sys.path``; ``[celery]
    celery_config_options`` names ``CELERY_CONFIG_MODULE.CELERY_CONFIG``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{CELERY_CONFIG_MODULE}.py"
    path.write_text(_CELERY_CONFIG_SOURCE)
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


def process_environment(cfg: AirflowConfig) -> dict[str, str]:
    """Return the environment to start an Airflow process of this deployment with.

    This process's environment without its own Airflow settings (``AIRFLOW__*``, connections,
    variables: another deployment's would override ``airflow.cfg``), plus :func:`environment`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    return env | environment(cfg) | {"PYTHONUNBUFFERED": "1"}


def export_lines(cfg: AirflowConfig) -> list[str]:
    """Return shell ``export`` lines that let a maintainer run ``airflow ...`` by hand."""
    bindir = Path(sys.executable).parent
    lines = [f"export {key}={shlex.quote(value)}" for key, value in environment(cfg).items()]
    lines.append(f'export PATH={shlex.quote(str(bindir))}:"$PATH"')
    return lines
