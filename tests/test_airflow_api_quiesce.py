"""``AirflowApi.quiesce`` against a small local HTTP server that answers like the Airflow API server.

The real API server answers 500 ("Database error") when the scheduler writes the same DAG run at the
moment a client sets its state (a lock conflict in the metadata database). Quiescing must ride that
out: read the run again, retry while it is still queued or running, stop when it ended meanwhile.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cbm_tasks.errors import ServiceError
from cbm_tasks.ops.airflow_api import AirflowApi


class _Airflow:
    """What the fake server knows: one running run; how many PATCHes fail before one takes."""

    def __init__(self, failing_patches: int, *, ends_meanwhile: bool = False) -> None:
        self.failing_patches = failing_patches
        self.ends_meanwhile = ends_meanwhile
        self.state = "running"
        self.patches = 0


@pytest.fixture
def airflow() -> Iterator[tuple[list[_Airflow], str]]:
    current: list[_Airflow] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(201, {"access_token": "t"})

        def do_DELETE(self) -> None:  # noqa: N802
            self._answer(404, {"detail": "no queued events"})

        def do_GET(self) -> None:  # noqa: N802
            state = current[0]
            if self.path.startswith("/api/v2/dags/d/dagRuns?"):
                self._answer(200, {"dag_runs": [{"dag_run_id": "r1", "state": state.state}]})
            else:
                self._answer(200, {"dag_run_id": "r1", "state": state.state})

        def do_PATCH(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state = current[0]
            state.patches += 1
            if state.patches <= state.failing_patches:
                if state.ends_meanwhile:
                    state.state = "success"
                self._answer(500, {"detail": {"reason": "Database error"}})
            else:
                state.state = "failed"
                self._answer(200, {"dag_run_id": "r1", "state": "failed"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield current, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_conflict_while_failing_a_run_is_retried(airflow: tuple[list[_Airflow], str]) -> None:
    current, url = airflow
    current[:] = [_Airflow(failing_patches=2)]
    AirflowApi(url, username="u", password="p").quiesce(["d"], retry_pause_s=0.01)
    assert (current[0].patches, current[0].state) == (3, "failed")


def test_a_run_that_ended_meanwhile_is_left_alone(airflow: tuple[list[_Airflow], str]) -> None:
    current, url = airflow
    current[:] = [_Airflow(failing_patches=1, ends_meanwhile=True)]
    AirflowApi(url, username="u", password="p").quiesce(["d"], retry_pause_s=0.01)
    assert (current[0].patches, current[0].state) == (1, "success")


def test_a_run_that_cannot_be_failed_is_an_error(airflow: tuple[list[_Airflow], str]) -> None:
    current, url = airflow
    current[:] = [_Airflow(failing_patches=99)]
    with pytest.raises(ServiceError, match="HTTP 500"):
        AirflowApi(url, username="u", password="p").quiesce(["d"], retry_pause_s=0.01)
    assert current[0].patches == 5 and current[0].state == "running"
