"""Start-up of the ``cbm`` command: light commands timed as a user runs them, against peer CLIs.

Each command runs ``--runs`` times (after one unmeasured run that fills the page cache) as a
new process, like hyperfine; the wall time of each run is measured from ``fork`` to exit.
Ours: ``cbm --help``, every ``cbm GROUP --help``, ``cbm db status|url``, ``cbm parcels list``,
``cbm airflow status|env`` and ``cbm api user list`` (these read a throw-away migrated database
in the project-local cluster, dropped at the end). Peers in the same run: ``python -c pass``
(the interpreter's own floor), ``rio --help`` (rasterio's click CLI, from the same venv) and
``gdalinfo --version`` (GDAL's C tool) when installed. Prints min / median / max per command,
our median against the 0.5 s goal and against the peers' (ratios). Usage:

    .venv/bin/python benchmarks/cli_startup_bench.py              # 10 runs each, ~1 minute
    .venv/bin/python benchmarks/cli_startup_bench.py --runs 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOAL_S = 0.5
GROUPS = ("db", "airflow", "parcels", "demo", "extract", "timeseries", "api", "markers", "audit", "kernels")


def _time(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall seconds of *runs* runs of *argv* (after one warm-up run); fails on an unexpected exit status."""
    seconds = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=PROJECT,
                              check=False, timeout=120)
        elapsed = time.perf_counter() - t0
        if done.returncode not in (0, 3):  # 3: `status` of a stopped service
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
        if i:
            seconds.append(elapsed)
    return seconds


def _ours() -> list[list[str]]:
    cbm = str(BIN / "cbm")
    commands = [[cbm, "--help"], *([cbm, group, "--help"] for group in GROUPS)]
    commands += [[cbm, "db", "status"], [cbm, "db", "url"], [cbm, "parcels", "list"], [cbm, "airflow", "status"],
                 [cbm, "airflow", "env"], [cbm, "api", "user", "list"]]
    return commands


def _peers() -> list[list[str]]:
    peers = [[sys.executable, "-c", "pass"]]
    if (BIN / "rio").exists():
        peers.append([str(BIN / "rio"), "--help"])
    for tool, arg in (("gdalinfo", "--version"), ("exactextract", "--help")):
        path = shutil.which(tool)
        if path:
            peers.append([path, arg])
    return peers


def _label(argv: list[str]) -> str:
    name = Path(argv[0]).name
    return " ".join([name if name != Path(sys.executable).name else "python", *argv[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="measured runs per command (default 10)")
    args = parser.parse_args()

    from cbm_tasks import db
    from cbm_tasks.ops import cluster, settings

    cfg = settings.local_cluster()
    cluster.start(cfg)
    name = f"cbm_bench_{uuid.uuid4().hex[:10]}"
    cluster.ensure_database(cfg, name)
    try:
        with db.connect(cfg.url(name)) as conn:
            db.migrate(conn)
        env = {**os.environ, "CBM_DATABASE_URL": cfg.url(name)}
        load_before = os.getloadavg()
        ours = {_label(argv): _time(argv, args.runs, env) for argv in _ours()}
        peers = {_label(argv): _time(argv, args.runs, env) for argv in _peers()}
        load_after = os.getloadavg()
    finally:
        cluster.drop_database(cfg, name)
    _report(args.runs, ours, peers, load_before, load_after)


def _report(runs: int, ours: dict[str, list[float]], peers: dict[str, list[float]],
            load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    print(f"\n== cli_startup_bench: {runs} runs per command (after one warm-up), wall seconds per process")
    print(f"machine: {os.cpu_count()} CPUs, load average before {load_before[0]:.2f} after {load_after[0]:.2f} "
          f"(shared machine); PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    width = max(len(label) for label in [*ours, *peers])
    print(f"{'command':<{width}}  {'min':>6} {'median':>6} {'max':>6}")
    for title, group in (("ours", ours), ("peers", peers)):
        print(f"-- {title}")
        for label, seconds in group.items():
            print(f"{label:<{width}}  {min(seconds):6.3f} {statistics.median(seconds):6.3f} {max(seconds):6.3f}")
    medians = {label: statistics.median(seconds) for label, seconds in ours.items()}
    worst = max(medians, key=lambda label: medians[label])
    over = [label for label, median in medians.items() if median >= GOAL_S]
    print(f"slowest of ours: {worst} {medians[worst]:.3f} s (goal < {GOAL_S} s): "
          + (f"{len(over)} over the goal: {', '.join(over)}" if over else "every command under the goal"))
    help_median = medians["cbm --help"]
    for label, seconds in peers.items():
        peer = statistics.median(seconds)
        print(f"cbm --help / {label}: {help_median / peer:.2f}x   slowest of ours / {label}: "
              f"{medians[worst] / peer:.2f}x")


if __name__ == "__main__":
    main()
