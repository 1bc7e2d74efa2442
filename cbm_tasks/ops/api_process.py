"""Run the REST API in a child process on 127.0.0.1 until a block ends: standalone or in the Airflow api-server.

For what needs a real HTTP server and not an in-process test client: the GDAL and notebook
client tests, the Airflow mount test and the API benchmark (``benchmarks/api_bench.py``) all
start it here, so each waits for it and stops it the same way. The server runs in its own
process group (its workers end with it); its output goes to a log file, whose end is in the
error when it does not come up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from cbm_tasks.errors import ServiceError
from cbm_tasks.ops import airflow_config
from cbm_tasks.ops.airflow_config import AirflowConfig

__all__ = ["free_port", "serve_in_airflow", "serve_standalone"]

_BIN = Path(sys.executable).parent


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_standalone(db_url: str, *, store_root: Path | None = None, backgrounds: Mapping[str, str] | None = None,
                     timeout_s: float = 60) -> Iterator[str]:
    """Run ``cbm api serve`` (uvicorn) on a free port; yield its base URL; stop it.

    Args:
        db_url: the CbM database (``CBM_API_DATABASE_URL``).
        store_root: the product store for image chips (``CBM_STORE_ROOT``); the caller's other
            ``CBM_STORE_*`` settings are not passed on. None = no store.
        backgrounds: orthophoto sources by name (``CBM_API_BACKGROUNDS``); None = the caller's setting.
        timeout_s: how long it may take to answer ``/version``.

    Raises:
        ServiceError: the server exited or did not answer in time (with the end of its output).
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBM_STORE_")}
    env |= {"CBM_API_DATABASE_URL": db_url} | ({"CBM_STORE_ROOT": str(store_root)} if store_root else {})
    env |= {"CBM_API_BACKGROUNDS": json.dumps(dict(backgrounds))} if backgrounds is not None else {}
    with tempfile.TemporaryDirectory(prefix="cbm-api-") as folder:
        with _running([str(_BIN / "cbm"), "api", "serve", "--port", str(port)], env=env,
                      log_path=Path(folder) / "api.log", ready_url=f"http://127.0.0.1:{port}/version",
                      timeout_s=timeout_s):
            yield f"http://127.0.0.1:{port}"


@contextmanager
def serve_in_airflow(cfg: AirflowConfig, *, timeout_s: float = 240) -> Iterator[str]:
    """Run only the Airflow api-server of *cfg* (plugins loaded); yield the API's base URL (``.../cbm``); stop it.

    The API plugin is all that is served: the scheduler and the other components are not needed
    for it. The caller has written *cfg*'s configuration and migrated its metadata database.

    Raises:
        ServiceError: the api-server exited or did not serve the API in time (with the end of its log).
    """
    env = airflow_config.process_environment(cfg)
    url = f"{cfg.url}/cbm"
    with _running([str(_BIN / "airflow"), "api-server", "--host", cfg.host, "--port", str(cfg.port)], env=env,
                  log_path=cfg.home / f"api-server-{cfg.port}.log", cwd=cfg.home, ready_url=f"{url}/version",
                  timeout_s=timeout_s):
        yield url


@contextmanager
def _running(argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, ready_url: str, timeout_s: float,
             cwd: Path | None = None) -> Iterator[None]:
    # the server in its own session: ending the group ends its workers too
    with log_path.open("ab") as log:
        process = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(process, ready_url, log_path, timeout_s)
        yield
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own server on 127.0.0.1
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            state = (f"exited with {process.returncode}" if process.returncode is not None
                     else f"no answer in {timeout_s} s")
            raise ServiceError(f"{url}: the server did not come up ({state}); end of {log_path}: "
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:  # the group is gone already
        process.wait()
