"""The ``cbm`` command: one sub-command group per module of this package.

Start-up is part of what a user waits for (``cbm --help``, ``cbm db status``): the group modules
import only argparse and light modules at the top; a handler imports what it needs (numpy,
rasterio, pandas, FastAPI, ...) when it runs. ``tests/test_cli_startup.py`` checks it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cbm_tasks import __version__
from cbm_tasks.errors import CbmError, TransientError
from cbm_tasks.ops import kernel_cache

if TYPE_CHECKING:
    import psycopg

__all__ = ["main"]

# Exit statuses: 2 for an error a retry cannot fix, 75 (EX_TEMPFAIL of sysexits.h) for one that
# may pass (lost database connection, lock timeout, catalogue or store unavailable): retry later.
EXIT_ERROR, EXIT_TRANSIENT = 2, 75

# Each module has register(subparsers) and sets args.func(args) -> int.
_GROUPS = ("db", "airflow", "parcels", "demo", "extract", "timeseries", "api", "markers", "audit", "kernels")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the whole ``cbm`` command."""
    parser = argparse.ArgumentParser(prog="cbm", description="Checks by Monitoring backend.")
    parser.add_argument("--version", action="version", version=f"cbm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG messages")
    subparsers = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name in _GROUPS:
        importlib.import_module(f"cbm_tasks.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cbm`` command; return the exit status (2 for a CbM error, 75 for a transient one)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    kernel_cache.use_cache_dir()  # before a handler imports Numba: the kernels compiled at install
    try:
        return int(args.func(args))
    except _psycopg_operational_errors() as err:  # a connection not opened through db.connect
        from cbm_tasks import db

        return _fail(db.transient_error(err))
    except CbmError as err:
        return _fail(err)


def _psycopg_operational_errors() -> tuple[type[psycopg.OperationalError], ...]:
    # evaluated only when a handler raised: a command that never loaded psycopg cannot raise its errors,
    # and importing it here would cost every light command its start-up
    loaded = sys.modules.get("psycopg")
    return (loaded.OperationalError,) if loaded is not None else ()


def _fail(err: CbmError) -> int:
    transient = isinstance(err, TransientError)
    hint = " (temporary: retry later)" if transient else ""
    print(f"cbm: error: {err}{hint}", file=sys.stderr)  # noqa: T201 - the CLI's own output
    return EXIT_TRANSIENT if transient else EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
