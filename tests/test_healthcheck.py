"""The containers' cheap health checks give the answers of Airflow's own, on a real metadata database.

Job rows of a made-up host are written to the session's Airflow metadata database (migrated by
``airflow db migrate``), checked by ``cbm_tasks.ops.healthcheck`` and by ``airflow jobs check``,
and removed. The Celery worker check runs against real workers in tests/test_celery.py; the
Docker stack test sees every container healthy through these checks.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import airflow_testenv
import psycopg
import pytest

from cbm_tasks.ops import airflow_ctl, healthcheck

HOST = "healthcheck-test-host.invalid"
MARK = "cbm-healthcheck-test"  # the unixname of this test's job rows: removed by it alone


@pytest.fixture
def metadata_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's metadata database in the environment as the containers have it; its libpq URL."""
    airflow_testenv.metadata_db()
    cfg = airflow_testenv.config()
    sqlalchemy_url = cfg.cluster.sqlalchemy_url(cfg.metadata_db)  # airflow.cfg's, as the containers' environment
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", sqlalchemy_url)
    for name in ("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "AIRFLOW__CORE__HOSTNAME_CALLABLE"):
        monkeypatch.delenv(name, raising=False)
    url = "postgresql://" + sqlalchemy_url.partition("://")[2]
    yield url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM job WHERE unixname = %s", (MARK,))


def _job(url: str, job_type: str, *, age_s: float, state: str = "running", host: str = HOST) -> None:
    beat = datetime.now(UTC) - timedelta(seconds=age_s)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM job WHERE unixname = %s", (MARK,))
        conn.execute("INSERT INTO job (state, job_type, start_date, latest_heartbeat, hostname, unixname) "
                     "VALUES (%s, %s, %s, %s, %s, %s)", (state, job_type, beat, beat, host, MARK))


def _airflow_says_alive(job_type: str) -> bool:
    """``airflow jobs check`` for the made-up host, in the test deployment's environment."""
    env = {**os.environ, **airflow_ctl.environment(airflow_testenv.config())}
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    result = subprocess.run([airflow, "jobs", "check", "--job-type", job_type, "--hostname", HOST],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode == 0


def test_host_name_is_the_one_airflow_records() -> None:
    script = "from airflow.utils.net import get_hostname; print(get_hostname())"
    airflow_host = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                  check=True, env={k: v for k, v in os.environ.items()
                                                   if k != "AIRFLOW__CORE__HOSTNAME_CALLABLE"}).stdout.strip()
    assert healthcheck.host_name() == airflow_host


def test_a_fresh_heartbeat_is_healthy_and_a_stale_one_is_not_as_airflow_says(metadata_env: str) -> None:
    _job(metadata_env, "TriggererJob", age_s=2)
    assert healthcheck.job("TriggererJob", hostname=HOST).startswith(f"TriggererJob on host {HOST}: heartbeat")
    assert _airflow_says_alive("TriggererJob")

    _job(metadata_env, "TriggererJob", age_s=45)  # the default threshold is 30 s
    with pytest.raises(SystemExit, match=r"TriggererJob on host .*: last heartbeat 4\d s ago \(> 30 s\)"):
        healthcheck.job("TriggererJob", hostname=HOST)
    assert not _airflow_says_alive("TriggererJob")


def test_thresholds_states_and_job_types(metadata_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _job(metadata_env, "TriggererJob", age_s=45)
    monkeypatch.setenv("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "60")
    assert "heartbeat 4" in healthcheck.job("TriggererJob", hostname=HOST)
    # another job type, another host, or a job that ended: none of them is this host's running job
    with pytest.raises(SystemExit, match=f"no running DagProcessorJob on host {HOST}"):
        healthcheck.job("DagProcessorJob", hostname=HOST)
    with pytest.raises(SystemExit, match="no running TriggererJob on host elsewhere"):
        healthcheck.job("TriggererJob", hostname="elsewhere")
    _job(metadata_env, "TriggererJob", age_s=1, state="success")
    with pytest.raises(SystemExit, match="no running TriggererJob"):
        healthcheck.job("TriggererJob", hostname=HOST)
    with pytest.raises(SystemExit, match="unknown job type 'LocalTaskJob'"):
        healthcheck.job("LocalTaskJob", hostname=HOST)


def test_no_database_is_unhealthy_without_printing_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    with pytest.raises(SystemExit, match="AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set"):
        healthcheck.job("TriggererJob")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/airflow.db")
    with pytest.raises(SystemExit, match="the metadata database is sqlite, this check reads PostgreSQL"):
        healthcheck.job("TriggererJob")
    # nothing listens on port 1: a clear "unhealthy", the password nowhere in it
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                       "postgresql+psycopg2://airflow:s3cret-pw@127.0.0.1:1/airflow")
    with pytest.raises(SystemExit) as raised:
        healthcheck.job("TriggererJob")
    assert str(raised.value).startswith("unhealthy: metadata database: OperationalError")
    assert "s3cret-pw" not in str(raised.value)


def test_command_line_exit_codes(metadata_env: str) -> None:
    env = {**os.environ, "AIRFLOW__CORE__HOSTNAME_CALLABLE": ""}
    argv = [sys.executable, "-m", "cbm_tasks.ops.healthcheck", "job", "TriggererJob"]
    # a triggerer of this machine with a fresh heartbeat, as a container's own
    _job(metadata_env, "TriggererJob", age_s=1, host=healthcheck.host_name())
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"TriggererJob on host {healthcheck.host_name()}: heartbeat ")
    _job(metadata_env, "TriggererJob", age_s=1, host=HOST)  # a triggerer of another host only
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and result.stderr.startswith("unhealthy: ")
    bad = subprocess.run([*argv[:3], "job", "LocalTaskJob"], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 2 and "invalid choice: 'LocalTaskJob'" in bad.stderr


def test_settings_this_check_cannot_read_hand_over_to_airflows_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIRFLOW__CORE__HOSTNAME_CALLABLE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                 "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET",
                 "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__BROKER_URL_CMD"):
        monkeypatch.delenv(name, raising=False)
    execs: list[list[str]] = []

    def exec_instead(file: str, argv: list[str]) -> None:
        execs.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvp", exec_instead)
    airflow_jobs_check = ["airflow", "jobs", "check", "--job-type", "DagProcessorJob", "--local"]
    # a database URL from a command or a secrets backend, another host name callable: Airflow's check
    for name, value in (("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "cat /run/secrets/airflow-db"),
                        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET", "airflow-db"),
                        ("AIRFLOW__CORE__HOSTNAME_CALLABLE", "socket.gethostname")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit):
            healthcheck.main(["job", "DagProcessorJob"])
        assert execs.pop() == airflow_jobs_check
        monkeypatch.delenv(name)
    # the plain URL wins over the command, as in Airflow: this module answers itself
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////tmp/airflow.db")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "cat /run/secrets/airflow-db")
    with pytest.raises(SystemExit, match="this check reads PostgreSQL"):
        healthcheck.main(["job", "DagProcessorJob"])
    assert execs == []
    # a broker URL from a command: Celery's own ping through Airflow's Celery app, of the same node
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL_CMD", "cat /run/secrets/broker")
    with pytest.raises(SystemExit):
        healthcheck.main(["celery-worker", "cbm1@node-a", "--timeout", "5"])
    assert execs.pop() == ["celery", "--app", "airflow.providers.celery.executors.celery_executor.app", "inspect",
                           "ping", "--destination", "cbm1@node-a", "--timeout", "5"]


def test_a_database_url_from_a_command_is_checked_by_airflow(metadata_env: str, tmp_path: Path) -> None:
    """The hand-over for real: the URL only in ``..._CMD``; ``airflow jobs check`` reads it and answers."""
    sqlalchemy_url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]  # metadata_env's, moved into the command
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path)  # no airflow.cfg naming the database: only the command does
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] = f"printf %s {shlex.quote(sqlalchemy_url)}"
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
    argv = [sys.executable, "-m", "cbm_tasks.ops.healthcheck", "job", "TriggererJob"]
    _job(metadata_env, "TriggererJob", age_s=1, host=healthcheck.host_name())
    alive = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    _job(metadata_env, "TriggererJob", age_s=1, host=HOST)  # a triggerer of another host only
    dead = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert (alive.returncode, dead.returncode) == (0, 1), (alive.stderr[-2000:], dead.stderr[-2000:])
    assert "Found one alive job." in alive.stdout + alive.stderr
    assert "No alive jobs found." in dead.stdout + dead.stderr
