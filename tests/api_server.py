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
