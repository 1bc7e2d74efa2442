"""Run the API for real (``cbm api serve``, uvicorn on 127.0.0.1) for clients that need an HTTP server.

Not a test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from airflow_testenv import free_port


@contextmanager
def serve(db_url: str, store_root: Path, *, timeout_s: float = 30) -> Iterator[str]:
    """Start ``cbm api serve`` on a free port; yield its base URL; stop it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBM_STORE_")}
    env |= {"CBM_API_DATABASE_URL": db_url, "CBM_STORE_ROOT": str(store_root)}
    cbm = str(Path(sys.executable).parent / "cbm")
    process = subprocess.Popen([cbm, "api", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:  # noqa: S310 - our own server
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                raise RuntimeError(f"cbm api serve did not come up on {url}: {output[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@contextmanager
def serve_in_airflow(db_url: str, store_root: Path, *, timeout_s: float = 180) -> Iterator[str]:
    """Start the real Airflow api-server (test deployment, plugins/ loaded) on a free port; yield its URL.

    Only the api-server runs: the plugin's application is all there is to test, and the
    scheduler and friends are not needed to serve it. The process group is ended afterwards.
    """
    import dataclasses
    import signal

    import airflow_testenv

    from cbm_tasks.ops import airflow_ctl

    airflow_testenv.metadata_db()
    cfg = dataclasses.replace(airflow_testenv.config(), data_url=db_url, store_root=store_root, port=free_port())
    airflow_ctl.write_config(cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env |= airflow_ctl.environment(cfg) | {"PYTHONUNBUFFERED": "1"}
    log_path = cfg.home / f"api-server-{cfg.port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "api-server", "--host", cfg.host,
                                    "--port", str(cfg.port)], env=env, cwd=cfg.home, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"{cfg.url}/cbm"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/version", timeout=2) as answer:  # noqa: S310 - our own server
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"airflow api-server did not serve {url}: {log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
