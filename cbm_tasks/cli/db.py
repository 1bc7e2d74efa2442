"""``cbm db``: the project-local PostgreSQL/PostGIS cluster and schema migrations."""

from __future__ import annotations

import argparse
import sys

from cbm_tasks.ops import cluster, settings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm db ...`` to the command line."""
    parser = subparsers.add_parser("db", help="project-local PostGIS cluster and schema")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    commands.add_parser("start", help="create (first time) and start the cluster, create the database").set_defaults(
        func=_start
    )
    commands.add_parser("stop", help="stop the cluster").set_defaults(func=_stop)
    commands.add_parser("status", help="tell whether the cluster runs, and where").set_defaults(func=_status)
    url = commands.add_parser("url", help="print the database URL")
    url.add_argument("--sqlalchemy", action="store_true", help="SQLAlchemy form (for Airflow's metadata DB)")
    url.add_argument("--dbname", help="another database of the local cluster")
    url.set_defaults(func=_url)
    commands.add_parser("migrate", help="apply pending schema migrations from sql/").set_defaults(func=_migrate)


def _start(args: argparse.Namespace) -> int:
    cfg = settings.local_cluster()
    cluster.start(cfg)
    cluster.ensure_database(cfg, settings.database_name())
    sys.stdout.write(f"cluster running: {cfg.root} (socket {cfg.socket_dir}, port {cfg.port})\n")
    return 0


def _stop(args: argparse.Namespace) -> int:
    cfg = settings.local_cluster()
    stopped = cluster.stop(cfg)
    sys.stdout.write("cluster stopped\n" if stopped else "cluster was not running\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    cfg = settings.local_cluster()
    running = cluster.is_running(cfg)
    sys.stdout.write(f"{'running' if running else 'stopped'}: {cfg.root} (port {cfg.port})\n")
    return 0 if running else 3


def _url(args: argparse.Namespace) -> int:
    cfg = settings.local_cluster()
    name = args.dbname or settings.database_name()
    if args.sqlalchemy:
        sys.stdout.write(cfg.sqlalchemy_url(name) + "\n")
    elif args.dbname:
        sys.stdout.write(cfg.url(name) + "\n")
    else:
        sys.stdout.write(settings.database_url() + "\n")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from cbm_tasks import db  # psycopg: only the commands that connect pay its import

    with db.connect(settings.database_url()) as conn:
        applied = db.migrate(conn)
    sys.stdout.write(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}\n")
    return 0
