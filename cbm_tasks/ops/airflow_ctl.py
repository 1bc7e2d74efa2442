"""Run the local Apache Airflow deployment as plain processes: prepare, start, stop, status.

No Airflow import here (STYLE R1): Airflow is driven through its own command line, each
component in its own session (``start_new_session``), so that ``stop`` can end a component
with everything it forked (LocalExecutor workers, task supervisors, task processes). The
settings, files and connections of the deployment are in :mod:`cbm_tasks.ops.airflow_config`;
its public names are available here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbm_tasks.errors import ServiceError
from cbm_tasks.ops import cluster, redis_broker
from cbm_tasks.ops.airflow_config import (
    ADMIN_USER,
    AIRFLOW_COMPONENTS,
    CARD_POOL,
    CELERY_QUEUE,
    EXTRACT_POOL,
    AirflowConfig,
    admin_password,
    broker_password,
    default_config,
    environment,
    export_lines,
    process_environment,
    record_deployment,
    write_config,
)

__all__ = [
    "ADMIN_USER",
    "COMPONENTS",
    "EXTRACT_POOL",
    "AirflowConfig",
    "ComponentStatus",
    "admin_password",
    "airflow_cli",
    "default_config",
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

COMPONENTS = AIRFLOW_COMPONENTS  # those of the LocalExecutor; AirflowConfig.components adds Celery's
# components whose command has --skip-serve-logs (checked with `airflow <cmd> --help`, 3.3):
# every component runs on this machine, so the API server reads task logs from local files
# (and nothing listens on the log server port, 0.0.0.0:8793)
_SKIP_SERVE_LOGS = ("scheduler", "triggerer")
_WORKER_PREFIX = "celery-worker-"
# what a Celery worker logs once it consumes from the broker ("celery@cbm1@host ready.")
_WORKER_READY = b" ready."


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



def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_cli(cfg: AirflowConfig, args: list[str], *, timeout_s: float = 300) -> str:
    """Run ``airflow <args>`` against this deployment; return its stdout.

    Raises:
        ServiceError: the command failed or timed out; the message ends with its stderr.
    """
    argv = [_airflow_bin(), *args]
    try:
        result = subprocess.run(argv, env=process_environment(cfg), capture_output=True, text=True, check=True,
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
    airflow_cli(cfg, ["pools", "set", CARD_POOL, str(cfg.card_pool_slots),
                      "Sentinel-1 CARD jobs running at once (sarsen/SNAP memory)"])
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
        alive = _start_ticks(pid) == ticks and os.getsid(pid) == pid and not _reaped_zombie(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
    return pid if alive else None


def _reaped_zombie(pid: int) -> bool:
    """True when *pid* has exited (a zombie, e.g. a killed component of this process); reaps it when it can."""
    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def _known_components(cfg: AirflowConfig) -> list[str]:
    """The deployment's components and any other with a pid file (workers of an earlier, larger start)."""
    names = list(cfg.components)
    if cfg.run_dir.is_dir():
        names += sorted(p.stem for p in cfg.run_dir.glob("*.pid") if p.stem not in names)
    return names


def status(cfg: AirflowConfig) -> list[ComponentStatus]:
    """Return the state of every component."""
    return [ComponentStatus(name, _live_pid(cfg, name), cfg.log_file(name)) for name in _known_components(cfg)]


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


def celery_node_name(component: str, host: str = "%h") -> str:
    """The Celery node name of worker component ``celery-worker-<i>``: ``cbm<i>@<host>``.

    The default host is Celery's own placeholder for this machine's name (expanded by the worker);
    pass ``socket.gethostname()`` to address the worker from outside, e.g. in a ping.
    """
    if not component.startswith(_WORKER_PREFIX):
        raise ValueError(f"{component!r} is not a Celery worker component ({_WORKER_PREFIX}<i>)")
    return f"cbm{component.removeprefix(_WORKER_PREFIX)}@{host}"


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        return probe.connect_ex((host, port)) == 0


def _argv(cfg: AirflowConfig, component: str) -> list[str]:
    if component == "redis":
        return redis_broker.redis_argv(cfg.redis_dir / "redis.conf")
    if component.startswith(_WORKER_PREFIX):
        # its own Celery node name and slots; every worker serves the default queue
        return [_airflow_bin(), "celery", "worker", "--celery-hostname", celery_node_name(component),
                "--queues", CELERY_QUEUE, "--concurrency", str(cfg.worker_concurrency), "--skip-serve-logs"]
    argv = [_airflow_bin(), component]
    if component in _SKIP_SERVE_LOGS:
        argv.append("--skip-serve-logs")
    if component == "api-server":
        argv += ["--host", cfg.host, "--port", str(cfg.port)]
    return argv


def _spawn(cfg: AirflowConfig, component: str, env: dict[str, str]) -> int:
    argv = _argv(cfg, component)
    with cfg.log_file(component).open("ab") as out:
        process = subprocess.Popen(argv, env=env, cwd=cfg.home, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    cfg.pid_file(component).write_text(f"{process.pid} {_start_ticks(process.pid)}\n")
    return process.pid


def _log_size(cfg: AirflowConfig, component: str) -> int:
    try:
        return cfg.log_file(component).stat().st_size
    except FileNotFoundError:
        return 0


def _workers_ready(cfg: AirflowConfig, log_offsets: dict[str, int]) -> bool:
    """True when every worker started now has logged that it consumes from the broker."""
    for name, offset in log_offsets.items():
        with cfg.log_file(name).open("rb") as log_file:
            log_file.seek(offset)
            if _WORKER_READY not in log_file.read():
                return False
    return True


def _start_broker(cfg: AirflowConfig, env: dict[str, str], deadline: float) -> None:
    """Start the Celery broker unless it runs; wait until it answers."""
    password = broker_password(cfg)
    if _live_pid(cfg, "redis") is not None:
        return
    if _port_in_use(redis_broker.REDIS_HOST, cfg.redis_port):
        raise ServiceError(f"port {cfg.redis_port} on {redis_broker.REDIS_HOST} is in use by another program; "
                           "choose another Celery broker port with CBM_REDIS_PORT")
    pid = _spawn(cfg, "redis", env)
    log.info("started celery broker component=redis pid=%d port=%d", pid, cfg.redis_port)
    while not redis_broker.ping(cfg.redis_port, password):
        if _live_pid(cfg, "redis") is None or time.monotonic() > deadline:
            stop(cfg)
            tail = cfg.log_file("redis").read_text(errors="replace")[-3000:]
            raise ServiceError(f"the Celery broker (redis-server) did not start on port {cfg.redis_port}\n"
                               f"--- {cfg.log_file('redis')} ---\n{tail}")
        time.sleep(0.2)


def start(cfg: AirflowConfig, *, timeout_s: float = 300, migrate: bool = True) -> list[ComponentStatus]:
    """Prepare the deployment and start the components that are not running; wait until healthy.

    Nothing is done when every component runs and the deployment is healthy. With the Celery
    executor the broker (redis-server) starts first, and the workers count as started once
    each has logged that it consumes from the broker.

    Args:
        cfg: the deployment.
        timeout_s: how long to wait for health.
        migrate: run :func:`prepare` first (False: the caller just did).

    Raises:
        ServiceError: a component exited, or the deployment was not healthy within *timeout_s*;
            the message names the component and ends with its log.
    """
    t0 = time.perf_counter()
    components = cfg.components
    if all(_live_pid(cfg, name) is not None for name in components) and _is_healthy(health(cfg)):
        log.info("airflow already running url=%s", cfg.url)
        return status(cfg)
    if _live_pid(cfg, "api-server") is None and _port_in_use(cfg.host, cfg.port):
        # the health check would otherwise talk to whatever answers there
        raise ServiceError(f"port {cfg.port} on {cfg.host} is in use by another program; "
                           "choose another with --port or CBM_AIRFLOW_PORT")
    if migrate:
        prepare(cfg)
    else:
        write_config(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    record_deployment(cfg)
    env = process_environment(cfg)
    deadline = time.monotonic() + timeout_s
    if cfg.executor == "celery":
        _start_broker(cfg, env, deadline)
    started = [name for name in components if name != "redis" and _live_pid(cfg, name) is None]
    log_offsets = {name: _log_size(cfg, name) for name in started if name.startswith(_WORKER_PREFIX)}
    for name in started:
        pid = _spawn(cfg, name, env)
        log.info("started airflow component=%s pid=%d log=%s", name, pid, cfg.log_file(name))
    answer = health(cfg)
    while not (_is_healthy(answer) and _workers_ready(cfg, log_offsets)):
        dead = [name for name in components if _live_pid(cfg, name) is None]
        if dead or time.monotonic() > deadline:
            stop(cfg)
            reason = f"{', '.join(dead)} exited" if dead else f"not healthy after {timeout_s:.0f} s ({answer})"
            culprit = dead[0] if dead else "api-server"
            tail = cfg.log_file(culprit).read_text(errors="replace")[-3000:]
            raise ServiceError(f"Airflow did not start: {reason}\n--- {cfg.log_file(culprit)} ---\n{tail}")
        time.sleep(2)
        answer = health(cfg)
    log.info("airflow healthy url=%s executor=%s started=%s seconds=%.1f", cfg.url, cfg.executor,
             ",".join(started) or "none", time.perf_counter() - t0)
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


def _stop_sessions(running: dict[str, int], timeout_s: float) -> None:
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


def stop(cfg: AirflowConfig, *, timeout_s: float = 30) -> list[str]:
    """Stop every running component with all its descendants; return the components stopped.

    SIGTERM goes to each component first (the scheduler then stops its executor's workers),
    then to every process left in its session, and SIGKILL ends what is still there after
    *timeout_s*. Task runners sit in process groups of their own, so the session, not the
    process group, is what holds a component's whole tree. The Celery broker stops last,
    once nothing uses it.
    """
    names = _known_components(cfg)
    running = {name: pid for name in names if (pid := _live_pid(cfg, name)) is not None}
    _stop_sessions({name: pid for name, pid in running.items() if name != "redis"}, timeout_s)
    if "redis" in running:
        _stop_sessions({"redis": running["redis"]}, timeout_s)
    for name in names:
        cfg.pid_file(name).unlink(missing_ok=True)
    cfg.deployment_file.unlink(missing_ok=True)
    for name, pid in running.items():
        log.info("stopped airflow component=%s pid=%d", name, pid)
    return list(running)
