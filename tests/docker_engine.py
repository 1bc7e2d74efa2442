"""A Docker engine for the stack test: the running one, or Debian's dockerd started here for the session.

Where no engine can start (no dockerd installed, not root, the daemon fails), :func:`engine`
returns why, and the test is skipped with that reason: the only skip the Docker test has.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Engine:
    """The engine the test uses; ``started`` is the dockerd this session started (stopped at the end)."""

    started: subprocess.Popen[bytes] | None
    log: Path | None

    def stop(self) -> None:
        """Stop the dockerd this session started (none when the engine was running before)."""
        if self.started is None:
            return
        self.started.terminate()
        try:
            self.started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait(timeout=10)


def _answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, check=False)
    return probe.returncode == 0


def engine(log_dir: Path, *, wait_s: float = 60) -> Engine | str:
    """Return the engine to use, starting dockerd when needed; or the reason no engine can run."""
    if _answers():
        return Engine(started=None, log=None)
    missing = [tool for tool in ("docker", "dockerd", "docker-compose") if shutil.which(tool) is None]
    if missing:
        return f"no Docker engine: {', '.join(missing)} not installed (scripts/install.sh installs docker.io)"
    if shutil.which("dockerd") and not _is_root():
        return "no Docker engine: dockerd is not running and starting it needs root"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "dockerd.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            return f"no Docker engine: dockerd exited with {proc.returncode}: {' | '.join(tail)}"
        if _answers():
            return Engine(started=proc, log=log)
        time.sleep(1)
    proc.terminate()
    proc.wait(timeout=30)
    return f"no Docker engine: dockerd did not answer within {wait_s:.0f} s (log {log})"


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
