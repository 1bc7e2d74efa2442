"""``cbm kernels warm``: compile the Numba kernels into the cache once, so that no extraction compiles.

``scripts/install.sh`` runs it; run it again after editing a kernel (see cbm_tasks.ops.kernel_cache).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cbm kernels ...`` to the command line."""
    parser = subparsers.add_parser("kernels", help="Numba kernels: compile them into the on-disk cache")
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    commands.add_parser(
        "warm", help="compile (or load) every kernel for the types the pipeline passes, into NUMBA_CACHE_DIR",
        description="Compiles the extraction, markers and traffic-light kernels into Numba's cache "
        "(<venv>/var/numba_cache unless NUMBA_CACHE_DIR is set); later processes load them instead of compiling.",
    ).set_defaults(func=_warm)


def _warm(args: argparse.Namespace) -> int:
    from cbm_tasks.ops.kernel_cache import warm_kernels  # numba: only here

    done = warm_kernels()
    sys.stdout.write(f"numba kernels: {done.kernels} kernels, {done.signatures} signatures ({done.compiled} compiled, "
                     f"{done.loaded} loaded from the cache) in {done.seconds:.1f} s; cache {done.cache_dir}\n")
    return 0
