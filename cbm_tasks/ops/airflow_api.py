"""A small client of Airflow's REST API (``/api/v2``): unpause, trigger and watch DAG runs.

Used by the demo and the UI test to drive a running deployment as a maintainer would, without
importing Airflow. Authentication is the simple auth manager's: ``POST /auth/token`` with a
user and password returns a JWT, sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import requests

from cbm_tasks.errors import NotFoundError, ServiceError

__all__ = ["FINISHED", "AirflowApi"]

log = logging.getLogger(__name__)

FINISHED = ("success", "failed")


class AirflowApi:
    """Talk to one Airflow API server as one user.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        username: user of the auth manager.
        password: its password; never logged.
        timeout_s: timeout of each HTTP request.
        session: HTTP session to use (tests); None = a new one.
    """

    __slots__ = ("_password", "_session", "_token", "base_url", "timeout_s", "username")

    def __init__(self, base_url: str, *, username: str, password: str, timeout_s: float = 30,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout_s = timeout_s
        self._session = session or requests.Session()
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"AirflowApi({self.base_url!r}, username={self.username!r})"

    def token(self) -> str:
        """Return a JWT for the user (``POST /auth/token``), fetched once and reused.

        Raises:
            ServiceError: wrong credentials or the server does not answer.
        """
        if self._token is None:
            try:
                answer = self._session.post(f"{self.base_url}/auth/token", timeout=self.timeout_s,
                                            json={"username": self.username, "password": self._password})
            except requests.RequestException as err:
                raise ServiceError(f"Airflow API {self.base_url} does not answer: {err}") from err
            if answer.status_code not in (200, 201):
                raise ServiceError(f"Airflow API {self.base_url}: login as {self.username!r} refused "
                                   f"(HTTP {answer.status_code}: {answer.text[:200]})")
            self._token = str(answer.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                query: dict[str, Any] | None = None) -> Any:
        """Send one request to ``/api/v2/<path>``; return the decoded JSON answer.

        Raises:
            NotFoundError: HTTP 404 (no such DAG or run).
            ServiceError: any other failure; the message has the status and the answer's start.
        """
        url = f"{self.base_url}/api/v2/{path.lstrip('/')}"
        for attempt in (1, 2):
            try:
                answer = self._session.request(method, url, json=body, params=query, timeout=self.timeout_s,
                                               headers={"Authorization": f"Bearer {self.token()}"})
            except requests.RequestException as err:
                raise ServiceError(f"{method} {url} failed: {err}") from err
            if answer.status_code == 401 and attempt == 1:
                self._token = None  # expired: log in again once
                continue
            break
        if answer.status_code == 404:
            raise NotFoundError(f"{method} {url}: not found ({answer.text[:200]})")
        if answer.status_code >= 400:
            raise ServiceError(f"{method} {url}: HTTP {answer.status_code}: {answer.text[:500]}")
        return answer.json() if answer.content else None

    def wait_for_dags(self, dag_ids: Sequence[str], *, timeout_s: float = 300, poll_s: float = 2) -> None:
        """Wait until the DAG processor has parsed *dag_ids* (they appear in ``GET /dags/{id}``).

        Raises:
            ServiceError: a DAG is still unknown after *timeout_s* (an import error, a wrong folder).
        """
        deadline = time.monotonic() + timeout_s
        missing = list(dag_ids)
        while missing:
            missing = [dag_id for dag_id in missing if not self._dag_known(dag_id)]
            if missing and time.monotonic() > deadline:
                errors = self.request("GET", "importErrors").get("import_errors", [])
                raise ServiceError(f"DAGs {', '.join(missing)} not parsed after {timeout_s:.0f} s; "
                                   f"import errors: {errors or 'none'}")
            if missing:
                time.sleep(poll_s)

    def _dag_known(self, dag_id: str) -> bool:
        try:
            self.request("GET", f"dags/{dag_id}")
        except NotFoundError:
            return False
        return True

    def set_paused(self, dag_id: str, *, paused: bool) -> None:
        """Pause or unpause *dag_id*."""
        self.request("PATCH", f"dags/{dag_id}", body={"is_paused": paused})
        log.info("dag=%s paused=%s", dag_id, paused)

    def quiesce(self, dag_ids: Sequence[str], *, retry_pause_s: float = 1.0) -> None:
        """Drop the queued asset events of *dag_ids* and fail their queued and running runs.

        For a deployment about to be measured or tested from a clean state: a run left by an
        interrupted earlier session would otherwise start (or, with ``max_active_runs=1``, hold
        back the new runs) as soon as the DAG is unpaused.
        """
        for dag_id in dag_ids:
            try:
                self.request("DELETE", f"dags/{dag_id}/assets/queuedEvents")
            except NotFoundError:  # none queued (or no such DAG)
                pass
            try:
                active = self.request("GET", f"dags/{dag_id}/dagRuns",
                                      query={"state": ["queued", "running"], "limit": 100})["dag_runs"]
            except NotFoundError:
                continue
            for run in active:
                self._fail_run(dag_id, str(run["dag_run_id"]), pause_s=retry_pause_s)
                log.info("dag=%s run_id=%s: %s run failed by quiesce", dag_id, run["dag_run_id"], run["state"])

    def _fail_run(self, dag_id: str, run_id: str, *, pause_s: float, attempts: int = 5) -> None:
        """Set a queued or running run to failed; done when it ended (or vanished) meanwhile.

        The API server answers 500 ("Database error") when the scheduler writes the same run at that
        moment (a lock conflict in the metadata database): the state is read again and the change retried.
        """
        for attempt in range(attempts):
            try:
                self.request("PATCH", f"dags/{dag_id}/dagRuns/{run_id}", body={"state": "failed"})
                return
            except NotFoundError:
                return
            except ServiceError as err:
                try:
                    state = self.run(dag_id, run_id)["state"]
                except NotFoundError:
                    return
                if state not in ("queued", "running"):
                    return
                if attempt == attempts - 1:
                    raise
                log.warning("dag=%s run_id=%s: failing the run did not take (%s); again", dag_id, run_id, err)
                time.sleep(pause_s * (1 + attempt))

    def trigger(self, dag_id: str, *, conf: dict[str, Any] | None = None) -> str:
        """Start a manual run of *dag_id* with *conf* as its params; return its run id."""
        run = self.request("POST", f"dags/{dag_id}/dagRuns", body={"logical_date": None, "conf": conf or {}})
        log.info("triggered dag=%s run_id=%s conf=%s", dag_id, run["dag_run_id"], conf)
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """Return the DAG run record (``state``, ``run_type``, ``start_date``, ``end_date``, ...)."""
        answer: dict[str, Any] = self.request("GET", f"dags/{dag_id}/dagRuns/{run_id}")
        return answer

    def runs(
        self, dag_id: str, *, run_after_gte: str | None = None, run_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Return the runs of *dag_id*, oldest first; optionally only those after a time, of a type."""
        query: dict[str, Any] = {"order_by": "run_after", "limit": 100}
        if run_after_gte:
            query["run_after_gte"] = run_after_gte
        if run_type:
            query["run_type"] = run_type
        return list(self.request("GET", f"dags/{dag_id}/dagRuns", query=query)["dag_runs"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, list[str]]:
        """Return the states of every task instance of a run: task id -> states (one per map index)."""
        answer = self.request("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", query={"limit": 1000})
        states: dict[str, list[str]] = {}
        for instance in answer["task_instances"]:
            states.setdefault(instance["task_id"], []).append(str(instance["state"]))
        return states

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout_s: float, poll_s: float = 3,
                     report_s: float = 30) -> dict[str, Any]:
        """Wait until a run is finished; return its record.

        Every *report_s* seconds logs what it waits for: the run's state and task states, and
        while it is queued, the other active runs of the DAG it waits behind.

        Raises:
            ServiceError: still not finished after *timeout_s*; the message has its task states.
        """
        deadline = time.monotonic() + timeout_s
        next_report = time.monotonic() + report_s
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED:
                log.info("dag=%s run_id=%s state=%s", dag_id, run_id, run["state"])
                return run
            if time.monotonic() > deadline:
                raise ServiceError(f"{dag_id} run {run_id} still {run['state']} after {timeout_s:.0f} s; "
                                   f"tasks: {self.task_states(dag_id, run_id)}")
            if time.monotonic() >= next_report:
                next_report += report_s
                self._report_wait(dag_id, run_id, str(run["state"]))
            time.sleep(poll_s)

    def _report_wait(self, dag_id: str, run_id: str, state: str) -> None:
        if state == "queued":
            others = [str(r["dag_run_id"]) for r in self.runs(dag_id)
                      if r["state"] == "running" and r["dag_run_id"] != run_id]
            log.info("waiting for dag=%s run_id=%s: queued, behind running runs %s (max_active_runs)",
                     dag_id, run_id, others or "none")
        else:
            log.info("waiting for dag=%s run_id=%s: %s, tasks %s", dag_id, run_id, state,
                     self.task_states(dag_id, run_id))
