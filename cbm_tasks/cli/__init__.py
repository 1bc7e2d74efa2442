"""The ``cbm`` command: one sub-command group per module of this package."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cbm_tasks import __version__
from cbm_tasks.errors import CbmError

__all__ = ["main"]

# Each module has register(subparsers) and sets args.func(args) -> int.
_GROUPS = ("db", "airflow", "parcels", "demo", "extract", "timeseries", "api")


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
    """Run the ``cbm`` command; return the exit status (2 for a CbM error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except CbmError as err:
        print(f"cbm: error: {err}", file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
