"""Run the local Apache Airflow deployment as plain processes: configure, start, stop, status.

No Airflow import here (STYLE R1): Airflow is driven through its own command line, each
component in its own session (``start_new_session``), so that ``stop`` can end a component
with everything it forked (LocalExecutor workers, task supervisors, task processes).

Layout under ``AirflowConfig.home`` (``AIRFLOW_HOME``, default ``<project>/var/airflow``)::

    airflow.cfg              written on every start from AirflowConfig (mode 0600: holds secrets)
    secrets.json             fernet key, JWT and API secrets: generated once, kept (0600)
    passwords.json           the simple auth manager's users and passwords (0600)
    run/<component>.pid      pid of each component = its session and process group id
    run/<component>.log      its stdout and stderr
    logs/                    Airflow's task logs

The metadata database is ``metadata_db`` in the project-local PostgreSQL cluster (psycopg2
over the Unix socket); the pipeline's own connections ``cbm_postgis`` and ``cbm_store`` are
passed to every component as ``AIRFLOW_CONN_*`` environment variables.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from cbm_tasks import cluster, settings
from cbm_tasks.cluster import ClusterConfig
from cbm_tasks.errors import ConfigError, ServiceError

__all__ = [
    "ADMIN_USER",
    "COMPONENTS",
    "EXTRACT_POOL",
    "AirflowConfig",
    "ComponentStatus",
    "admin_password",
    "default_config",
    "airflow_cli",
    "environment",
    "export_lines",
    "health",
    "prepare",
    "start",
    "status",
    "stop",
    "write_config",
]

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# components whose command has --skip-serve-logs (checked with `airflow <cmd> --help`, 3.3):
# every component runs on this machine, so the API server reads task logs from local files
_SKIP_SERVE_LOGS = ("scheduler", "triggerer")
ADMIN_USER = "admin"
EXTRACT_POOL = "cbm_extract"
_PRELOAD = ("airflow.executors.local_executor", "airflow.sdk.execution_time.task_runner", "cbm_tasks.workflow",
            "cbm_tasks.store", "cbm_tasks.catalogue.clients")
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

    def __post_init__(self) -> None:
        if not 1024 <= self.port <= 65535:
            raise ConfigError(f"Airflow API server port must be within 1024..65535, got {self.port}")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"the local deployment listens on loopback only, got host {self.host!r}")
        for name in ("parallelism", "max_active_tasks_per_dag", "extract_pool_slots"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def url(self) -> str:
        """Base URL of the API server and UI."""
        return f"http://{self.host}:{self.port}"

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


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """State of one component: running with its pid, or stopped (pid None)."""

    component: str
    pid: int | None
    log_file: Path

    @property
    def running(self) -> bool:
        """True while the component's process runs."""
        return self.pid is not None


def default_config(*, port: int | None = None) -> AirflowConfig:
    """Return the deployment of this checkout.

    AIRFLOW_HOME is ``<project>/var/airflow`` wherever the PostgreSQL cluster lives (as root
    the cluster may sit in /var/tmp, see :func:`cbm_tasks.cluster.default_root`).

    Args:
        port: API server port; None = ``CBM_AIRFLOW_PORT`` or 8080.

    Environment:
        CBM_AIRFLOW_PORT  default API server port (8080)
        CBM_STORE_ROOT    folder of the local object store (default ``<project>/var``)
        and those of :mod:`cbm_tasks.settings` (cluster, CbM database).

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
    }


def write_config(cfg: AirflowConfig) -> Path:
    """Write ``airflow.cfg`` (and first-time secrets and admin password) under ``cfg.home``; return its path."""
    admin_password(cfg)
    lines = ["# written by `cbm airflow start` from cbm_tasks.airflow_ctl.AirflowConfig; edits are overwritten"]
    for section, values in _settings(cfg).items():
        lines.append(f"\n[{section}]")
        # configparser interpolates %(...)s: a literal % is written %%
        lines.extend(f"{key} = {value.replace('%', '%%')}" for key, value in values.items())
    path = cfg.home / "airflow.cfg"
    _write_private(path, "\n".join(lines) + "\n")
    return path


def _postgis_connection(data_url: str) -> dict[str, Any]:
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
    }


def export_lines(cfg: AirflowConfig) -> list[str]:
    """Return shell ``export`` lines that let a maintainer run ``airflow ...`` by hand."""
    bindir = Path(sys.executable).parent
    lines = [f"export {key}={shlex.quote(value)}" for key, value in environment(cfg).items()]
    lines.append(f'export PATH={shlex.quote(str(bindir))}:"$PATH"')
    return lines


def _process_env(cfg: AirflowConfig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.update(environment(cfg))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_cli(cfg: AirflowConfig, args: list[str], *, timeout_s: float = 300) -> str:
    """Run ``airflow <args>`` against this deployment; return its stdout.

    Raises:
        ServiceError: the command failed or timed out; the message ends with its stderr.
    """
    argv = [_airflow_bin(), *args]
    try:
        result = subprocess.run(argv, env=_process_env(cfg), capture_output=True, text=True, check=True,
                                timeout=timeout_s, cwd=cfg.home)
    except subprocess.CalledProcessError as err:
        raise ServiceError(f"`airflow {' '.join(args[:3])}` failed (exit {err.returncode}): "
                           f"{err.stderr.strip()[-2000:]}") from err
    except subprocess.TimeoutExpired as err:
        raise ServiceError(f"`airflow {' '.join(args[:3])}` timed out after {timeout_s} s") from err
    return result.stdout


def prepare(cfg: AirflowConfig) -> None:
    """Write the configuration, create and migrate the metadata database, create the pools.

    Safe to repeat: ``airflow db migrate`` applies only pending migrations.
    """
    t0 = time.perf_counter()
    write_config(cfg)
    cluster.ensure_database(cfg.cluster, cfg.metadata_db)
    airflow_cli(cfg, ["db", "migrate"], timeout_s=600)
    airflow_cli(cfg, ["pools", "set", EXTRACT_POOL, str(cfg.extract_pool_slots),
                      "CbM image extractions running at once (bounded by worker memory)"])
    log.info("prepared airflow home=%s metadata_db=%s seconds=%.1f", cfg.home, cfg.metadata_db,
             time.perf_counter() - t0)


def _session_pids(sid: int) -> list[int]:
    """Return the pids of the live processes in session *sid* (the component and all it forked)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) != sid:
                continue
            # a zombie has exited already; reap it when it is our child (tests start components)
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                continue
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
        pids.append(pid)
    return pids


def _start_ticks(pid: int) -> str:
    """Return the start time of process *pid* in clock ticks since boot (pid + this = a unique process)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _live_pid(cfg: AirflowConfig, component: str) -> int | None:
    """Return the pid in the component's pid file when that process is still our component.

    The pid file holds the pid and the process start time: a recycled pid (a stale file after
    a reboot) has another start time. The command line cannot tell, since Airflow rewrites
    its process title.
    """
    try:
        pid_text, ticks = cfg.pid_file(component).read_text().split()
        pid = int(pid_text)
        alive = _start_ticks(pid) == ticks and os.getsid(pid) == pid
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
    return pid if alive else None


def status(cfg: AirflowConfig) -> list[ComponentStatus]:
    """Return the state of every component."""
    return [ComponentStatus(name, _live_pid(cfg, name), cfg.log_file(name)) for name in COMPONENTS]


def health(cfg: AirflowConfig, *, timeout_s: float = 5) -> dict[str, Any] | None:
    """Return the API server's ``/api/v2/monitor/health`` answer, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{cfg.url}/api/v2/monitor/health", timeout=timeout_s) as response:  # noqa: S310
            answer: dict[str, Any] = json.load(response)
            return answer
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _is_healthy(answer: dict[str, Any] | None) -> bool:
    if answer is None:
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((answer.get(part) or {}).get("status") == "healthy" for part in parts)


def _spawn(cfg: AirflowConfig, component: str, env: dict[str, str]) -> int:
    argv = [_airflow_bin(), component]
    if component in _SKIP_SERVE_LOGS:
        argv.append("--skip-serve-logs")
    if component == "api-server":
        argv += ["--host", cfg.host, "--port", str(cfg.port)]
    with cfg.log_file(component).open("ab") as out:
        process = subprocess.Popen(argv, env=env, cwd=cfg.home, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    cfg.pid_file(component).write_text(f"{process.pid} {_start_ticks(process.pid)}\n")
    return process.pid


def start(cfg: AirflowConfig, *, timeout_s: float = 300, migrate: bool = True) -> list[ComponentStatus]:
    """Prepare the deployment and start the components that are not running; wait until healthy.

    Nothing is done when every component runs and the deployment is healthy.

    Args:
        cfg: the deployment.
        timeout_s: how long to wait for health.
        migrate: run :func:`prepare` first (False: the caller just did).

    Raises:
        ServiceError: a component exited, or the deployment was not healthy within *timeout_s*;
            the message names the component and ends with its log.
    """
    t0 = time.perf_counter()
    if all(_live_pid(cfg, name) is not None for name in COMPONENTS) and _is_healthy(health(cfg)):
        log.info("airflow already running url=%s", cfg.url)
        return status(cfg)
    if migrate:
        prepare(cfg)
    else:
        write_config(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    env = _process_env(cfg)
    started = [name for name in COMPONENTS if _live_pid(cfg, name) is None]
    for name in started:
        pid = _spawn(cfg, name, env)
        log.info("started airflow component=%s pid=%d log=%s", name, pid, cfg.log_file(name))
    deadline = time.monotonic() + timeout_s
    answer = health(cfg)
    while not _is_healthy(answer):
        dead = [name for name in COMPONENTS if _live_pid(cfg, name) is None]
        if dead or time.monotonic() > deadline:
            stop(cfg)
            reason = f"{', '.join(dead)} exited" if dead else f"not healthy after {timeout_s:.0f} s ({answer})"
            culprit = dead[0] if dead else "api-server"
            tail = cfg.log_file(culprit).read_text(errors="replace")[-3000:]
            raise ServiceError(f"Airflow did not start: {reason}\n--- {cfg.log_file(culprit)} ---\n{tail}")
        time.sleep(2)
        answer = health(cfg)
    log.info("airflow healthy url=%s started=%s seconds=%.1f", cfg.url, ",".join(started) or "none",
             time.perf_counter() - t0)
    return status(cfg)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def _wait_gone(sids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = [pid for sid in sids for pid in _session_pids(sid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [pid for sid in sids for pid in _session_pids(sid)]
    return left


def stop(cfg: AirflowConfig, *, timeout_s: float = 30) -> list[str]:
    """Stop every running component with all its descendants; return the components stopped.

    SIGTERM goes to each component first (the scheduler then stops its executor's workers),
    then to every process left in its session, and SIGKILL ends what is still there after
    *timeout_s*. Task runners sit in process groups of their own, so the session, not the
    process group, is what holds a component's whole tree.
    """
    running = {name: pid for name in COMPONENTS if (pid := _live_pid(cfg, name)) is not None}
    sids = list(running.values())
    _signal_all(sids, signal.SIGTERM)
    left = _wait_gone(sids, timeout_s / 2)
    if left:
        _signal_all(left, signal.SIGTERM)
        left = _wait_gone(sids, timeout_s / 2)
    if left:
        log.warning("airflow processes ignored SIGTERM for %.0f s, killing pids=%s", timeout_s, left)
        _signal_all(left, signal.SIGKILL)
        _wait_gone(sids, 10)
    for name in COMPONENTS:
        cfg.pid_file(name).unlink(missing_ok=True)
    for name, pid in running.items():
        log.info("stopped airflow component=%s pid=%d", name, pid)
    return list(running)
