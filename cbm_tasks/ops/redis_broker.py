"""The Celery broker of the local deployment: the distribution's ``redis-server`` as a project-local process.

Used only with ``cbm airflow start --executor celery`` (:mod:`cbm_tasks.ops.airflow_ctl` starts
and stops it like an Airflow component, pid file ``run/redis.pid``). Its configuration
``redis/redis.conf`` under AIRFLOW_HOME is written on every start:

- ``bind 127.0.0.1`` and a port of the deployment's settings: nothing listens beyond this machine;
- a password (``requirepass``, generated once with the deployment's other secrets), since any
  local user could otherwise read and inject task messages;
- no persistence (no RDB snapshots, no append-only file): a lost queue message is a task the
  scheduler re-queues, and the work state lives in PostGIS (``cbm.product_status``).

No Airflow import here (STYLE R1).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from cbm_tasks.errors import ServiceError

__all__ = ["REDIS_HOST", "broker_url", "ping", "redis_argv", "write_redis_config"]

REDIS_HOST = "127.0.0.1"


def broker_url(port: int, password: str) -> str:
    """Return Celery's ``broker_url`` for the local Redis (database 0)."""
    return f"redis://:{password}@{REDIS_HOST}:{port}/0"


def write_redis_config(folder: Path, *, port: int, password: str) -> Path:
    """Write ``redis.conf`` into *folder* (readable by the owner only: it holds the password); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# written by `cbm airflow start --executor celery` (cbm_tasks.ops.redis_broker); edits are overwritten",
        f"bind {REDIS_HOST}",
        "protected-mode yes",
        f"port {port}",
        "daemonize no",
        'logfile ""',  # stdout: the component's log file (run/redis.log)
        f"dir {folder}",
        'save ""',  # no RDB snapshots
        "appendonly no",
        f"requirepass {password}",
    ]
    path = folder / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def redis_argv(config_file: Path) -> list[str]:
    """Return the command line of the broker process.

    Raises:
        ServiceError: ``redis-server`` is not installed (``scripts/install.sh`` installs it).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError("redis-server not found on PATH: the Celery executor needs it "
                           "(apt-get install redis-server, done by scripts/install.sh)")
    return [binary, str(config_file)]


def ping(port: int, password: str, *, timeout_s: float = 2) -> bool:
    """Return True when the broker on *port* answers ``AUTH`` and ``PING`` (RESP over a socket)."""
    request = b"".join(
        f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
        for args in (("AUTH", password), ("PING",))
    )
    try:
        with socket.create_connection((REDIS_HOST, port), timeout=timeout_s) as conn:
            conn.sendall(request)
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = conn.recv(256)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return False
    return answer == b"+OK\r\n+PONG\r\n"
