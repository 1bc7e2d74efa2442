"""A real S3-protocol server for tests: moto in server mode, in its own process, on 127.0.0.1.

Its own process (not a thread of the test process) so that GDAL's /vsis3/ reads, which run in
C without releasing the GIL, can never wait on a server thread that needs the GIL. The server's
request log (werkzeug: one line per request with the HTTP status) is kept in a file so tests
can check which requests were made, e.g. that a COG was read with ranged GETs (206).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3

__all__ = ["MotoServer", "moto_server"]

ACCESS_KEY = "cbm-test-access"
SECRET_KEY = "cbm-test-secret"  # moto accepts any credentials
REGION = "us-east-1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True, slots=True)
class MotoServer:
    """A running moto server: its endpoint and the file its request log goes to."""

    endpoint_url: str
    request_log: Path

    def client(self) -> object:
        """Return a plain boto3 client of the server, for test set-up (creating buckets)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def requests(self) -> list[str]:
        """Return the request lines logged so far, without werkzeug's colour codes."""
        text = _ANSI.sub("", self.request_log.read_text())
        return [line for line in text.splitlines() if "HTTP/1.1" in line]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@contextmanager
def moto_server(log_dir: Path, *, timeout_s: float = 60.0) -> Iterator[MotoServer]:
    """Run ``python -m moto.server`` on a free 127.0.0.1 port; stop it afterwards."""
    request_log = log_dir / "moto-requests.log"
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        with request_log.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            if _wait_listening(port, process, timeout_s=timeout_s):
                yield MotoServer(endpoint_url=f"http://127.0.0.1:{port}", request_log=request_log)
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    raise RuntimeError(f"moto server did not start; see {request_log}")
