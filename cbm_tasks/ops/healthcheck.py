"""Container health checks of the Airflow components that cost a fraction of a second, not seconds.

Docker runs a health check every 30 s in each container. Airflow's own (``airflow jobs check``,
``celery inspect ping`` through Airflow's Celery app) import Airflow each time: 3-5 s of CPU a
check, about half a core of a small machine spent on four containers checking themselves. These
ask the same questions without importing Airflow:

* ``job TYPE``: is a job of TYPE (``TriggererJob``, ``DagProcessorJob``, ``SchedulerJob``) of this
  host running, with a heartbeat more recent than Airflow's threshold for it? That is ``airflow
  jobs check --job-type TYPE --local``: the same row of the metadata database's ``job`` table, the
  same thresholds (``[triggerer] triggerer_health_check_threshold``, ``[dag_processor]
  health_check_threshold``, ``[scheduler] scheduler_health_check_threshold``, from the environment
  as Airflow reads them) and the host name of Airflow's default ``[core] hostname_callable``.
  Where the deployment sets another host name callable, or gives the database URL only through
  ``..._CMD`` or ``..._SECRET`` (a command or secrets backend this module does not run), the check
  runs ``airflow jobs check`` itself.
* ``celery-worker [NODE]``: does the Celery worker NODE (default ``celery@<host name>``, Celery's
  own default) answer a ping over the broker (``[celery] broker_url``) within the timeout? With the
  broker URL given only through ``..._CMD`` / ``..._SECRET``, Celery's own ping through Airflow's
  Celery app runs instead.

``python -m cbm_tasks.ops.healthcheck job TriggererJob``: exit 0 and one line when healthy, exit 1
and the reason otherwise (Docker keeps the line in the container's health log). The database
URL and broker URL come from the environment and are never printed: they hold the passwords.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from datetime import UTC, datetime

__all__ = ["airflow_argv", "celery_worker", "host_name", "job", "main"]

# Airflow's defaults of the thresholds (seconds), by job type: section, option, default
_THRESHOLDS = {
    "SchedulerJob": ("scheduler", "scheduler_health_check_threshold", 30.0),
    "TriggererJob": ("triggerer", "triggerer_health_check_threshold", 30.0),
    "DagProcessorJob": ("dag_processor", "health_check_threshold", 30.0),
}


_PING_TIMEOUT_S = 10.0  # how long a worker's ping answer is awaited (Docker's own check timeout is 30 s)


def _setting(section: str, option: str) -> str | None:
    return os.environ.get(f"AIRFLOW__{section.upper()}__{option.upper()}")


def _only_indirect(section: str, option: str) -> bool:
    """Airflow reads the setting from a command or a secrets backend only (not from the plain variable)."""
    return not _setting(section, option) and bool(_setting(section, f"{option}_cmd")
                                                  or _setting(section, f"{option}_secret"))


def airflow_argv(check: str, target: str, timeout_s: float = _PING_TIMEOUT_S) -> list[str] | None:
    """Airflow's own check where this module cannot answer the same question; None where it can.

    *check* is ``job`` (target: the job type) or ``celery-worker`` (target: the node name).
    """
    if check == "job":
        callable_ = _setting("core", "hostname_callable")
        if (callable_ and callable_ != "airflow.utils.net.getfqdn") or _only_indirect("database", "sql_alchemy_conn"):
            return ["airflow", "jobs", "check", "--job-type", target, "--local"]
        return None
    if _only_indirect("celery", "broker_url"):
        return ["celery", "--app", "airflow.providers.celery.executors.celery_executor.app", "inspect", "ping",
                "--destination", target, "--timeout", f"{timeout_s:g}"]
    return None


def host_name() -> str:
    """The host name Airflow's default ``hostname_callable`` (``airflow.utils.net.getfqdn``) records."""
    name = socket.gethostname()
    try:
        addresses = socket.getaddrinfo(name, None, 0, socket.SOCK_DGRAM, 0, socket.AI_CANONNAME)
    except OSError:
        return name
    return next((canonical for *_, canonical, _ in addresses if canonical), name)


def _default_node() -> str:
    """Celery's own default node name of a worker on this machine (``celery@<host name>``)."""
    return f"celery@{socket.gethostname()}"


def _database_url() -> str:
    url = _setting("database", "sql_alchemy_conn")
    if not url:
        raise SystemExit("unhealthy: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise SystemExit(f"unhealthy: the metadata database is {scheme or 'not a URL'}, this check reads PostgreSQL")
    return f"postgresql://{rest}"  # the SQLAlchemy dialect (+psycopg2) is not libpq's


def job(job_type: str, *, hostname: str | None = None, now: datetime | None = None) -> str:
    """Why the *job_type* job of this host is healthy; raises SystemExit with why not otherwise."""
    import psycopg

    if job_type not in _THRESHOLDS:
        raise SystemExit(f"unhealthy: unknown job type {job_type!r} (one of {', '.join(_THRESHOLDS)})")
    section, option, default = _THRESHOLDS[job_type]
    threshold = float(_setting(section, option) or default)
    host = hostname or host_name()
    try:
        with psycopg.connect(_database_url(), connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT latest_heartbeat FROM job WHERE state = 'running' AND job_type = %s AND hostname = %s "
                "ORDER BY latest_heartbeat DESC LIMIT 1", (job_type, host)).fetchall()
    except psycopg.Error as err:  # the message names the host and database, never the password
        raise SystemExit(f"unhealthy: metadata database: {type(err).__name__}: {err}".splitlines()[0]) from None
    if not rows or rows[0][0] is None:
        raise SystemExit(f"unhealthy: no running {job_type} on host {host}")
    beat = rows[0][0] if rows[0][0].tzinfo else rows[0][0].replace(tzinfo=UTC)
    age = ((now or datetime.now(UTC)) - beat).total_seconds()
    if age > threshold:
        raise SystemExit(f"unhealthy: {job_type} on host {host}: last heartbeat {age:.0f} s ago (> {threshold:g} s)")
    return f"{job_type} on host {host}: heartbeat {age:.0f} s ago"


def celery_worker(node: str | None = None, *, broker_url: str | None = None, timeout_s: float = _PING_TIMEOUT_S) -> str:
    """Why the Celery worker *node* is healthy; raises SystemExit with why not otherwise."""
    from celery import Celery

    url = broker_url or _setting("celery", "broker_url")
    if not url:
        raise SystemExit("unhealthy: AIRFLOW__CELERY__BROKER_URL is not set")
    name = node or _default_node()
    app = Celery("cbm-healthcheck", broker=url, set_as_current=False)
    try:
        answers = app.control.ping(destination=[name], timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 - any broker failure is the answer "unhealthy"
        raise SystemExit(f"unhealthy: broker: {type(err).__name__}") from None
    finally:
        app.close()
    if not any(name in answer for answer in answers):
        raise SystemExit(f"unhealthy: Celery worker {name} did not answer a ping within {timeout_s:g} s")
    return f"Celery worker {name} answers"


def main(argv: list[str] | None = None) -> int:
    """Run one check from the command line: 0 and why when healthy, SystemExit with why not otherwise."""
    parser = argparse.ArgumentParser(prog="python -m cbm_tasks.ops.healthcheck", description=__doc__.splitlines()[0])
    checks = parser.add_subparsers(dest="check", required=True)
    job_parser = checks.add_parser("job", help="a running job of this host with a recent heartbeat")
    job_parser.add_argument("job_type", choices=sorted(_THRESHOLDS))
    worker_parser = checks.add_parser("celery-worker", help="the Celery worker answers a ping")
    worker_parser.add_argument("node", nargs="?", help="the worker's node name (default celery@<host name>)")
    worker_parser.add_argument("--timeout", type=float, default=_PING_TIMEOUT_S, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    target = args.job_type if args.check == "job" else args.node or _default_node()
    delegate = airflow_argv(args.check, target, getattr(args, "timeout", _PING_TIMEOUT_S))
    if delegate:  # an argv list, never a shell: the job type is one of the parser's choices
        os.execvp(delegate[0], delegate)  # noqa: S606
    if args.check == "job":
        sys.stdout.write(job(args.job_type) + "\n")
    else:
        sys.stdout.write(celery_worker(target, timeout_s=args.timeout) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
