"""The Docker deployment, run for real: images built, the Celery stack started, the demo AOI run in it.

The steps are the commands of the README's "Docker" section, in its order: the base images from
Debian (``docker/local/build-images.sh``: no registry is reachable here), ``docker-compose build``,
``up`` with the ``celery`` profile and two workers, the demo data mounted read-only, the parcels
imported by the stack's ``cbm`` service, the DAGs started by the Airflow CLI in the api-server
container. One worker container is killed (SIGKILL) while it extracts an image (its write held back by
a lock the test takes on the parcel sets, so the kill lands mid-extraction however fast that is): Airflow notices
the missing heartbeat, the task is retried on the other worker, and every image ends
``extracted`` once. The rows are checked with psql in the PostGIS container; ``down -v`` removes
everything at the end. All of it runs in a background thread while the rest of the suite runs
(:class:`Scenario`); the two tests, last in the run, assert what it saw. Secrets: an env file
generated here (mode 0600, under var/, removed at the end), never printed.

Without a Docker engine (no docker.io installed, not root, dockerd fails here) the test is
skipped with the reason; ``make test`` prints it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker_engine
import pytest

from cbm_tasks.errors import ServiceError
from cbm_tasks.ops.airflow_api import AirflowApi

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var" / "docker"
# compose project: containers, network and volumes are named cbmtest_* (another name: a second stack beside it)
PROJECT = os.environ.get("CBM_DOCKER_PROJECT", "cbmtest")
N_PER_SENSOR = 4  # 4 Sentinel-2 L2A + 4 Sentinel-1 CARD-BS images of the real 31UDS cube
WINDOW = {"aoi": "demo", "start": "2017-08-01", "end": "2018-11-30"}
LOCAL_IMAGES = {  # what docker/local/build-images.sh makes (the compose defaults are the official images)
    "CBM_PYTHON_IMAGE": "cbm-python:bookworm",
    "CBM_POSTGIS_IMAGE": "cbm-postgis:bookworm",
    "CBM_REDIS_IMAGE": "cbm-redis:bookworm",
}
_BLOCKER = "cbm-test-lock"  # application name of the psql session that holds the parcel sets
SERVICES = {"postgis", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker"}


@dataclass
class Stack:
    """The compose project under test: its env file and the compose command line."""

    env_file: Path
    port: int
    timings: dict[str, float]

    def argv(self, *args: str) -> list[str]:
        """The compose command line with *args*."""
        return ["docker-compose", "--project-name", PROJECT, "--project-directory", str(ROOT),
                "--file", str(ROOT / "docker-compose.yml"), "--env-file", str(self.env_file),
                "--profile", "celery", *args]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.argv(*args), timeout=timeout, check=check)

    def psql(self, query: str) -> list[list[str]]:
        """Rows of *query* run by psql in the PostGIS container, in the CbM database."""
        out = self.compose("exec", "-T", "postgis", "psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-U", "postgres",
                           "-d", "cbm", "-At", "-F", "|", "-c", query, timeout=60).stdout
        return [line.split("|") for line in out.splitlines() if line]

    @contextlib.contextmanager
    def parcel_sets_locked(self, *, timeout_s: float = 120) -> Iterator[None]:
        """Hold every cbm.parcel_set row FOR UPDATE (a psql session in the PostGIS container) inside the block.

        An extraction's write waits on this lock (FOR SHARE on its parcel set): its task is caught
        mid-extraction, holding its image's lease, however fast the extraction is.
        """
        session = subprocess.Popen(
            self.argv("exec", "-T", "-e", f"PGAPPNAME={_BLOCKER}", "postgis", "psql", "--no-psqlrc", "-v",
                      "ON_ERROR_STOP=1", "-U", "postgres", "-d", "cbm", "-c",
                      "BEGIN; SELECT 1 FROM cbm.parcel_set FOR UPDATE; SELECT pg_sleep(1800); COMMIT;"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            deadline = time.monotonic() + timeout_s
            # the rows are locked once the session sleeps
            while self.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{_BLOCKER}' "
                            "AND wait_event = 'PgSleep'") != [["1"]]:
                assert session.poll() is None, f"the lock session ended (exit {session.returncode})"
                assert time.monotonic() < deadline, f"the parcel sets were not locked within {timeout_s:.0f} s"
                time.sleep(1)
            yield
        finally:
            self.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{_BLOCKER}'")
            try:
                session.wait(timeout=60)
            except subprocess.TimeoutExpired:
                session.kill()

    def api(self) -> AirflowApi:
        username, password = "admin", _env_value(self.env_file, "_AIRFLOW_WWW_USER_PASSWORD")
        # 120 s: on a loaded machine (2 cores, several stacks) the api-server answers slowly
        return AirflowApi(f"http://127.0.0.1:{self.port}", username=username, password=password, timeout_s=120)

    def containers(self, *service: str) -> list[dict[str, Any]]:
        """``docker inspect`` of the containers of *service* (of every service when none is given)."""
        ids = self.compose("ps", "-q", *service, timeout=60).stdout.split()
        if not ids:
            return []
        out = _run(["docker", "inspect", *ids], timeout=60).stdout
        return list(json.loads(out))


def _run(argv: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    if check and result.returncode != 0:
        # argv holds no secret (they are in the env file); the output's tail says what failed
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise AssertionError(f"{' '.join(argv[:12])} ... exited {result.returncode}:\n{tail}")
    return result


def _env_value(env_file: Path, name: str) -> str:
    for line in env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return value
    raise KeyError(f"{name} not in {env_file}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write_env_file(path: Path, *, port: int, data_dir: Path) -> None:
    """The deployment's .env: fresh random secrets (hex: they go into URLs and JSON), then the settings."""
    fernet = base64.urlsafe_b64encode(os.urandom(32)).decode()
    names = ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "CBM_DB_OWNER_PASSWORD", "CBM_DB_PASSWORD",
             "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET", "_AIRFLOW_WWW_USER_PASSWORD")
    lines = [f"{name}={secrets.token_hex(24)}" for name in names]
    lines += [f"AIRFLOW_FERNET_KEY={fernet}", "CBM_EXECUTOR=CeleryExecutor", f"CBM_AIRFLOW_PORT={port}",
              f"CBM_AIRFLOW_BASE_URL=http://127.0.0.1:{port}", f"CBM_DATA_DIR={data_dir}",
              # a killed worker's task is failed after 30 s without heartbeat (default 300), retried 5 s
              # later (the DAG's own: a minute) and takes the image once its 20 s lease ran out (60 s)
              "CBM_TASK_HEARTBEAT_TIMEOUT=30", "CBM_TASK_RETRY_DELAY=5", "CBM_CLAIM_LEASE=20",
              *(f"{name}={image}" for name, image in LOCAL_IMAGES.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")


def _wait_healthy(stack: Stack, *, timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states: dict[str, str] = {}
        for container in stack.containers():
            name = container["Config"]["Labels"]["com.docker.compose.service"]
            state = container["State"]
            health = state.get("Health", {}).get("Status")
            if name == "airflow-init":
                states[name] = "done" if state["Status"] == "exited" and state["ExitCode"] == 0 else state["Status"]
            else:
                states[f"{name}/{container['Name']}"] = health or state["Status"]
        if states and all(s in ("healthy", "done") for s in states.values()):
            return
        failed = [n for n, s in states.items() if s in ("unhealthy", "exited", "dead")]
        if failed or time.monotonic() > deadline:
            logs = stack.compose("logs", "--no-color", "--tail", "30", check=False).stdout
            raise AssertionError(f"stack not healthy: {states}\n{logs[-6000:]}")
        time.sleep(3)


@dataclass
class StackSeen:
    """What the scenario saw of the healthy stack, for test_stack_healthy_private_and_cached."""

    containers: list[dict[str, Any]]
    scheduler_status: str
    image_before: str  # the cbm-airflow image id, then after a second `docker-compose build`
    image_after: str
    worker_logs: str  # of the Celery workers since their start


@dataclass
class DemoSeen:
    """What the scenario saw of the demo AOI run with a worker killed, for the demo test."""

    run_states: list[str]
    instances: dict[tuple[str, int], dict[str, Any]]
    killed_host: str
    killed_task: tuple[str, int]
    statuses: list[list[str]]
    per_image: list[list[str]]
    duplicates: list[list[str]]


class Scenario:
    """The whole Docker scenario, run in a background thread from the suite's collection on.

    Building the images, starting the stack and running the demo AOI in it take minutes, mostly
    waiting (downloads, health checks, a dead worker's heartbeat timeout). ``tests/conftest.py``
    starts this at collection, so that it overlaps the rest of the suite; the module's tests run
    last and assert what it saw (ARCHITECTURE.md, Tests). A failure while building or starting
    fails both tests; one in the demo fails the demo test only.
    """

    def __init__(self) -> None:
        # a free port unless one is given: `make demo` leaves the local Airflow on 8080, and `make test`
        # right after it must not collide with it
        self.stack = Stack(env_file=VAR / f"{PROJECT}.env", port=int(os.environ.get("CBM_AIRFLOW_PORT", 0))
                           or _free_port(), timings={})
        self.skip_reason: str | None = None
        self.error: BaseException | None = None
        self.demo_error: BaseException | None = None
        self.stack_seen: StackSeen | None = None
        self.demo_seen: DemoSeen | None = None
        self._thread = threading.Thread(target=self._run, name="docker-stack-scenario", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        engine: docker_engine.Engine | None = None
        try:
            found = docker_engine.engine(VAR)
            if isinstance(found, str):
                self.skip_reason = found
                return
            engine = found
            try:
                self._build()
                self._up()
                self.stack_seen = _look_at(self.stack)
            except BaseException as err:  # noqa: BLE001 - re-raised in the tests' thread by the fixture
                self.error = err
                return
            try:
                self.demo_seen = _demo_with_a_worker_killed(self.stack)
            except BaseException as err:  # noqa: BLE001 - re-raised by the demo test
                self.demo_error = err
        finally:
            if engine is not None:
                self.stack.compose("down", "--volumes", "--remove-orphans", timeout=300, check=False)
                (VAR / f"{PROJECT}-timings.json").write_text(json.dumps(self.stack.timings, indent=1))
                engine.stop()
            self.stack.env_file.unlink(missing_ok=True)

    def _build(self) -> None:
        stack, data_dir = self.stack, VAR / "data"
        _write_env_file(stack.env_file, port=stack.port, data_dir=data_dir)
        stack.compose("down", "--volumes", "--remove-orphans", timeout=180)  # leftovers of an interrupted run
        t0 = time.monotonic()
        _run([str(ROOT / "docker" / "local" / "build-images.sh")], timeout=1800)
        stack.timings["base images"] = time.monotonic() - t0
        t0 = time.monotonic()
        stack.compose("build", timeout=3600)
        stack.timings["compose build"] = time.monotonic() - t0
        _run([str(Path(sys.executable).parent / "cbm"), "demo", "build", "--out", str(data_dir),
              "--max-products", str(N_PER_SENSOR)], timeout=600)

    def _up(self) -> None:
        stack = self.stack
        t0 = time.monotonic()
        up = stack.compose("up", "-d", "--scale", "airflow-worker=2", timeout=900, check=False)
        if up.returncode != 0:
            logs = stack.compose("logs", "--no-color", "--tail", "40", check=False).stdout
            raise AssertionError(f"docker-compose up failed:\n{up.stderr[-3000:]}\n{logs[-8000:]}")
        _wait_healthy(stack)
        stack.timings["up until healthy"] = time.monotonic() - t0


def _look_at(stack: Stack) -> StackSeen:
    """The containers and the scheduler's health once the stack is healthy; the image id around a second build."""
    containers = stack.containers()
    scheduler = stack.api().request("GET", "monitor/health")["scheduler"]["status"]
    image = "cbm-airflow:0.1.0"  # the compose default of CBM_AIRFLOW_IMAGE
    before = _run(["docker", "image", "inspect", "--format", "{{.Id}}", image], timeout=60).stdout
    t0 = time.monotonic()
    stack.compose("build", timeout=600)
    stack.timings["compose build (cached)"] = time.monotonic() - t0
    after = _run(["docker", "image", "inspect", "--format", "{{.Id}}", image], timeout=60).stdout
    workers = stack.compose("logs", "--no-color", "airflow-worker", timeout=120).stdout
    return StackSeen(containers=containers, scheduler_status=str(scheduler), image_before=before, image_after=after,
                     worker_logs=workers)


_scenario: Scenario | None = None


def start_scenario() -> None:
    """Start the scenario in the background (once); called by tests/conftest.py at collection."""
    global _scenario
    if _scenario is None:
        _scenario = Scenario()
        _scenario.start()


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    start_scenario()  # a no-op when conftest started it; this module run alone starts it here
    assert _scenario is not None
    _scenario.wait()
    if _scenario.skip_reason:
        pytest.skip(_scenario.skip_reason)
    if _scenario.error is not None:
        raise _scenario.error
    return _scenario


def test_stack_healthy_private_and_cached(scenario: Scenario) -> None:
    seen = scenario.stack_seen
    assert seen is not None
    running: dict[str, int] = {}
    for container in seen.containers:
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        if service == "airflow-init":
            continue
        running[service] = running.get(service, 0) + 1
        assert container["State"]["Health"]["Status"] == "healthy", service
        # published ports: the api-server's only, on 127.0.0.1 only
        bindings = [b for ports in (container["HostConfig"]["PortBindings"] or {}).values() for b in ports]
        if service == "airflow-apiserver":
            assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(scenario.stack.port)}]
        else:
            assert bindings == [], service
        networks = set(container["NetworkSettings"]["Networks"])
        assert networks == {f"{PROJECT}_default"}, service
    assert set(running) == SERVICES and running["airflow-worker"] == 2
    assert seen.scheduler_status == "healthy"
    # a second build changes nothing: every layer comes from the cache
    assert seen.image_after == seen.image_before
    # each worker loaded the kernels (from the image's cache) before forking its pool: Celery's `imports`
    # of the image's cbm_celery_config module, so every task process inherits them
    assert seen.worker_logs.count("numba kernels preloaded") == 2, seen.worker_logs[-3000:]


def _extract_instances(api: AirflowApi) -> list[dict[str, Any]]:
    """The mapped extract tasks of every cbm_extract run (none while the api-server does not answer)."""
    instances: list[dict[str, Any]] = []
    try:
        for run in api.runs("cbm_extract"):
            answer = api.request("GET", f"dags/cbm_extract/dagRuns/{run['dag_run_id']}/taskInstances",
                                 query={"limit": 1000, "task_id_pattern": "extract"})
            instances += [ti for ti in answer["task_instances"] if ti["task_id"] == "extract"]
    except ServiceError:  # a slow answer: ask again at the next poll
        return []
    return instances


def _kill_a_busy_worker(stack: Stack, api: AirflowApi, *, timeout_s: float = 900) -> tuple[str, tuple[str, int]]:
    """Wait for an extract task running on a worker; SIGKILL that worker's container.

    Returns the worker's host name and the task's (run id, map index).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ti in _extract_instances(api):
            if ti["state"] == "running" and ti.get("hostname"):
                for container in stack.containers("airflow-worker"):
                    if container["Config"]["Hostname"] == str(ti["hostname"]).split(".")[0]:
                        _run(["docker", "kill", "--signal", "KILL", container["Id"]], timeout=60)
                        return str(ti["hostname"]), (str(ti["dag_run_id"]), int(ti["map_index"]))
        time.sleep(1)
    raise AssertionError(f"no extract task ran on a worker within {timeout_s:.0f} s")


def _wait_extract_done(api: AirflowApi, *, timeout_s: float = 900) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            runs = api.runs("cbm_extract")
        except ServiceError:  # a slow answer: ask again
            runs = []
        if runs and all(run["state"] in ("success", "failed") for run in runs):
            return runs
        if time.monotonic() > deadline:
            states = [(run["dag_run_id"], run["state"]) for run in runs]
            raise AssertionError(f"cbm_extract not done in {timeout_s:.0f} s: {states}")
        time.sleep(3)


def _demo_with_a_worker_killed(stack: Stack) -> DemoSeen:
    """The demo AOI imported, polled and extracted in the stack, one worker killed while it extracts."""
    t0 = time.monotonic()
    stack.compose("run", "--rm", "--no-deps", "cbm", "parcels", "import",
                  "/opt/cbm/data/demo/parcels/demo_parcels_2018.gpkg", "--aoi", "demo", "--year", "2018")
    # the REST API on 127.0.0.1, as the README's curl lines (the Airflow CLI in a container: ~10 s a call)
    api = stack.api()
    api.wait_for_dags(["cbm_catalogue", "cbm_extract"], timeout_s=300)
    catalogue = json.dumps({"demo": {"kind": "local", "root": "/opt/cbm/data/demo/catalogue"}})
    api.request("POST", "variables", body={"key": "cbm_catalogue", "value": catalogue})
    api.set_paused("cbm_catalogue", paused=False)
    api.set_paused("cbm_extract", paused=False)
    with stack.parcel_sets_locked():  # a worker is caught mid-extraction however fast it extracts
        api.trigger("cbm_catalogue", conf=WINDOW)
        killed_host, killed_task = _kill_a_busy_worker(stack, api)
    runs = _wait_extract_done(api)
    stack.timings["demo AOI (import, poll, extract with a worker killed)"] = time.monotonic() - t0
    # a run started by a later asset event with nothing left to claim has only the unmapped placeholder, index -1
    instances = {(ti["dag_run_id"], ti["map_index"]): ti for ti in _extract_instances(api) if ti["map_index"] >= 0}
    # the rows, read by psql in the PostGIS container
    statuses = stack.psql("SELECT s.status, count(*) FROM cbm.product_status s GROUP BY 1")
    per_image = stack.psql(
        "SELECT p.product_id, (SELECT count(*) FROM cbm.parcel_obs o WHERE o.product_id = p.product_id), "
        "(SELECT count(*) FROM cbm.extraction e WHERE e.product_id = p.product_id), "
        "(SELECT count(*) FROM cbm.pipeline_run r WHERE r.step = 'extract' AND r.status = 'success' "
        "   AND r.params->>'product_id' = p.product_id::text) "
        "FROM cbm.product p ORDER BY 1")
    duplicates = stack.psql("SELECT count(*) FROM (SELECT 1 FROM cbm.parcel_obs "
                            "GROUP BY parcel_set_id, parcel_key, product_id HAVING count(*) > 1) d")
    return DemoSeen(run_states=[run["state"] for run in runs], instances=instances, killed_host=killed_host,
                    killed_task=killed_task, statuses=statuses, per_image=per_image, duplicates=duplicates)


def test_demo_aoi_through_the_containers_with_a_worker_killed(scenario: Scenario) -> None:
    if scenario.demo_error is not None:
        raise scenario.demo_error
    seen = scenario.demo_seen
    assert seen is not None
    assert seen.run_states == ["success"] * len(seen.run_states)

    # the killed task was retried, on the surviving worker; one mapped task per batch of images over all runs
    # (small images share a batch)
    assert 1 <= len(seen.instances) <= 2 * N_PER_SENSOR
    retried = seen.instances[seen.killed_task]
    assert retried["state"] == "success" and retried["try_number"] >= 2
    assert retried["hostname"] != seen.killed_host
    assert all(ti["state"] == "success" for ti in seen.instances.values())

    # every image extracted, once
    assert seen.statuses == [["extracted", str(2 * N_PER_SENSOR)]]
    assert len(seen.per_image) == 2 * N_PER_SENSOR
    assert all(int(obs) > 0 and extractions == "1" and successes == "1"
               for _, obs, extractions, successes in seen.per_image)
    assert seen.duplicates == [["0"]]
