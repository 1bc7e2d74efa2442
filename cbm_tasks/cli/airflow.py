"""``cbm airflow``: start, stop and watch the local Airflow deployment (see cbm_tasks.ops.airflow_ctl)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cbm_tasks.ops import airflow_ctl

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm airflow ...`` to the command line."""
    parser = subparsers.add_parser("airflow", help="the local Airflow deployment (scheduler, UI, ...)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    start = commands.add_parser(
        "start", help="start PostGIS if needed, migrate Airflow's database, start the Airflow components"
    )
    start.add_argument("--timeout", type=float, default=300, help="seconds to wait for health (default 300)")
    start.add_argument("--executor", choices=("local", "celery"), default="local",
                       help="local: LocalExecutor (default); celery: CeleryExecutor with a local Redis broker "
                            "(port $CBM_REDIS_PORT or 6379) and --workers Celery workers on this machine")
    start.add_argument("--workers", type=int, default=None,
                       help="Celery workers to start (default 2; --executor celery only)")
    start.add_argument("--concurrency", type=int, default=None,
                       help="task slots of each Celery worker (default 1; --executor celery only)")
    start.set_defaults(func=_start)
    stop = commands.add_parser("stop", help="stop every Airflow component (Celery workers and broker too) "
                                            "and all it started")
    stop.add_argument("--executor", choices=("local", "celery"), default=None,
                      help="accepted for symmetry with start: stop ends whatever runs")
    stop.set_defaults(func=_stop)
    commands.add_parser("status", help="state of each component, UI URL and login").set_defaults(func=_status)
    commands.add_parser(
        "env", help="print the export lines for running `airflow ...` by hand (eval \"$(cbm airflow env)\")"
    ).set_defaults(func=_env)
    for sub in commands.choices.values():
        sub.add_argument("--port", type=int, default=None,
                         help="API server (UI) port on 127.0.0.1 (default: $CBM_AIRFLOW_PORT or 8080)")


def _login_lines(cfg: airflow_ctl.AirflowConfig) -> list[str]:
    from cbm_tasks.ops import airflow_ctl

    return [
        f"UI:       {cfg.url}/",
        f"login:    {airflow_ctl.ADMIN_USER} / {airflow_ctl.admin_password(cfg)}  (stored in {cfg.passwords_file})",
    ]


# airflow_ctl (subprocess, sockets, the configuration) is imported by the handlers: `cbm --help` needs none of it
def _start(args: argparse.Namespace) -> int:
    from cbm_tasks.ops import airflow_ctl, cluster, settings

    if args.executor != "celery" and (args.workers is not None or args.concurrency is not None):
        sys.stderr.write("cbm airflow start: --workers and --concurrency need --executor celery\n")
        return 2
    cfg = airflow_ctl.default_config(port=args.port, executor=args.executor, workers=args.workers,
                                     concurrency=args.concurrency)
    cluster.start(cfg.cluster)
    cluster.ensure_database(cfg.cluster, settings.database_name())
    airflow_ctl.start(cfg, timeout_s=args.timeout)
    executor = "LocalExecutor" if cfg.executor == "local" else (
        f"CeleryExecutor, {cfg.celery_workers} workers x {cfg.worker_concurrency} slots, "
        f"broker redis on 127.0.0.1:{cfg.redis_port}")
    lines = ["airflow running", f"executor: {executor}", *_login_lines(cfg), "stop it:  cbm airflow stop"]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from cbm_tasks.ops import airflow_ctl

    cfg = airflow_ctl.default_config(port=args.port)
    stopped = airflow_ctl.stop(cfg)
    sys.stdout.write(f"stopped: {', '.join(stopped)}\n" if stopped else "airflow was not running\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from cbm_tasks.ops import airflow_ctl

    cfg = airflow_ctl.default_config(port=args.port)
    states = airflow_ctl.status(cfg)
    lines = [
        f"{s.component:<16} {'running' if s.running else 'stopped':<8} "
        f"{'pid ' + str(s.pid) if s.running else '':<11} log {s.log_file}"
        for s in states
    ]
    all_running = all(s.running for s in states)
    if all_running:
        answer = airflow_ctl.health(cfg)
        lines.append(f"health:   {'unreachable' if answer is None else _health_summary(answer)}")
    lines += _login_lines(cfg)
    lines.append(f"AIRFLOW_HOME={cfg.home}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if all_running else 3


def _health_summary(answer: dict[str, object]) -> str:
    parts = []
    for name, value in answer.items():
        state = value.get("status") if isinstance(value, dict) else None
        parts.append(f"{name}={state}")
    return " ".join(parts)


def _env(args: argparse.Namespace) -> int:
    from cbm_tasks.ops import airflow_ctl

    cfg = airflow_ctl.default_config(port=args.port)
    airflow_ctl.write_config(cfg)
    sys.stdout.write("\n".join(airflow_ctl.export_lines(cfg)) + "\n")
    return 0
