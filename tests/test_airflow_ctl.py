"""cbm_tasks.ops.airflow_ctl without starting Airflow: configuration, secrets, connections, pid files."""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cbm_tasks.errors import ConfigError, ServiceError
from cbm_tasks.ops import airflow_ctl
from cbm_tasks.ops.airflow_config import FORKSERVER_PRELOAD, process_environment
from cbm_tasks.ops.cluster import ClusterConfig


@pytest.fixture
def cfg(tmp_path: Path) -> airflow_ctl.AirflowConfig:
    return airflow_ctl.AirflowConfig(
        home=tmp_path / "airflow", project=Path("/srv/cbm"), cluster=ClusterConfig(root=tmp_path / "pg", port=55999),
        data_url="postgresql://cbm:s3cret@/cbm_data?host=/run/pg&port=55999&sslmode=disable",
        store_root=tmp_path / "store", port=18123,
    )


def test_config_file_has_the_deployment_settings_and_is_private(cfg: airflow_ctl.AirflowConfig) -> None:
    path = airflow_ctl.write_config(cfg)
    assert path.stat().st_mode & 0o777 == 0o600
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(path)
    core = parsed["core"]
    assert core["executor"] == "LocalExecutor"
    assert (core["parallelism"], core["max_active_tasks_per_dag"]) == ("4", "4")
    assert core["load_examples"] == "False"
    assert core["dags_folder"] == "/srv/cbm/dags" and core["plugins_folder"] == "/srv/cbm/plugins"
    assert core["auth_manager"].endswith("SimpleAuthManager")
    assert core["simple_auth_manager_users"] == "admin:admin"
    assert core["execution_api_server_url"] == "http://127.0.0.1:18123/execution/"
    assert parsed["database"]["sql_alchemy_conn"] == (
        f"postgresql+psycopg2://cbm@/airflow?host={cfg.home.parent / 'pg' / 'run'}&port=55999"
    )
    assert (parsed["api"]["host"], parsed["api"]["port"]) == ("127.0.0.1", "18123")
    assert parsed["scheduler"]["mp_start_method"] == "forkserver"
    assert "cbm_tasks.pipeline.extract" in parsed["scheduler"]["mp_forkserver_preload"]
    assert dict(parsed["cbm"]) == {}  # the DAGs' own retry delays and the 60 s claim lease
    tuned = configparser.ConfigParser(interpolation=None)
    tuned.read(airflow_ctl.write_config(dataclasses.replace(cfg, retry_delay_s=5, claim_lease_s=20)))
    assert dict(tuned["cbm"]) == {"retry_delay_seconds": "5", "claim_lease_seconds": "20"}


def test_secrets_and_password_are_generated_once(cfg: airflow_ctl.AirflowConfig) -> None:
    airflow_ctl.write_config(cfg)
    first = (cfg.home / "secrets.json").read_text()
    password = airflow_ctl.admin_password(cfg)
    airflow_ctl.write_config(dataclasses.replace(cfg, port=18124))
    assert (cfg.home / "secrets.json").read_text() == first  # the fernet key must never change
    assert airflow_ctl.admin_password(cfg) == password and len(password) >= 16
    assert json.loads(cfg.passwords_file.read_text()) == {"admin": password}
    for name in ("secrets.json", "passwords.json"):
        assert (cfg.home / name).stat().st_mode & 0o777 == 0o600


def test_connections_in_json_form(cfg: airflow_ctl.AirflowConfig) -> None:
    env = airflow_ctl.environment(cfg)
    assert env["AIRFLOW_HOME"] == str(cfg.home)
    assert json.loads(env["AIRFLOW_CONN_CBM_POSTGIS"]) == {
        "conn_type": "postgres", "host": "/run/pg", "port": 55999, "login": "cbm", "password": "s3cret",
        "schema": "cbm_data", "extra": {"sslmode": "disable"},
    }
    assert json.loads(env["AIRFLOW_CONN_CBM_STORE"]) == {
        "conn_type": "generic", "extra": {"kind": "local", "root": str(cfg.store_root)},
    }
    lines = airflow_ctl.export_lines(cfg)
    assert lines[0] == f"export AIRFLOW_HOME={cfg.home}"
    assert lines[-1].startswith(f"export PATH={Path(sys.executable).parent}:")


def test_bad_settings_are_refused() -> None:
    base = {"home": Path("/h"), "project": Path("/p"), "cluster": ClusterConfig(root=Path("/tmp/x")),
            "data_url": "postgresql:///cbm", "store_root": Path("/s")}
    with pytest.raises(ConfigError, match="port"):
        airflow_ctl.AirflowConfig(**base, port=80)
    with pytest.raises(ConfigError, match="0.0.0.0"):
        airflow_ctl.AirflowConfig(**base, host="0.0.0.0")
    with pytest.raises(ConfigError, match="extract_pool_slots"):
        airflow_ctl.AirflowConfig(**base, extract_pool_slots=0)
    with pytest.raises(ConfigError, match="retry_delay_s"):
        airflow_ctl.AirflowConfig(**base, retry_delay_s=0)
    with pytest.raises(ConfigError, match="claim_lease_s"):
        airflow_ctl.AirflowConfig(**base, claim_lease_s=3)


def test_stale_or_foreign_pid_files_mean_stopped(cfg: airflow_ctl.AirflowConfig) -> None:
    cfg.run_dir.mkdir(parents=True)
    # a live process that is not a session leader, and a pid that does not exist
    cfg.pid_file("scheduler").write_text(f"{os.getpid()} 1\n")
    cfg.pid_file("triggerer").write_text("999999999 1\n")
    cfg.pid_file("api-server").write_text("garbage\n")
    assert not any(s.running for s in airflow_ctl.status(cfg))
    assert airflow_ctl.stop(cfg) == []
    assert not any(cfg.pid_file(c).exists() for c in airflow_ctl.COMPONENTS)


def test_stop_ends_a_component_with_everything_it_forked(cfg: airflow_ctl.AirflowConfig) -> None:
    cfg.run_dir.mkdir(parents=True)
    # a stand-in component: a session leader whose child sits in a process group of its own,
    # as Airflow's task runners do; the child ignores SIGTERM, so only SIGKILL ends it
    script = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, signal, time; os.setpgid(0, 0); "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert leader.stdout is not None
    child_pid = int(leader.stdout.readline())
    ticks = Path(f"/proc/{leader.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    cfg.pid_file("scheduler").write_text(f"{leader.pid} {ticks}\n")
    assert [s.component for s in airflow_ctl.status(cfg) if s.running] == ["scheduler"]

    assert airflow_ctl.stop(cfg, timeout_s=4) == ["scheduler"]
    leader.wait(timeout=10)
    state = Path(f"/proc/{child_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(
        f"/proc/{child_pid}").exists() else "gone"
    assert state in ("gone", "Z")
    assert not cfg.pid_file("scheduler").exists()


def test_a_busy_port_is_refused_before_anything_starts(cfg: airflow_ctl.AirflowConfig) -> None:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        busy = dataclasses.replace(cfg, port=other_program.getsockname()[1])
        with pytest.raises(ServiceError, match=f"port {busy.port} on 127.0.0.1 is in use"):
            airflow_ctl.start(busy)
    assert not busy.run_dir.exists()


def test_celery_deployment_config_broker_on_loopback_with_a_password(cfg: airflow_ctl.AirflowConfig) -> None:
    celery = dataclasses.replace(cfg, executor="celery", celery_workers=3, worker_concurrency=2, redis_port=16399,
                                 task_heartbeat_timeout_s=45)
    assert celery.components == ("redis", "api-server", "scheduler", "dag-processor", "triggerer",
                                 "celery-worker-1", "celery-worker-2", "celery-worker-3")
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(airflow_ctl.write_config(celery))
    password = airflow_ctl.broker_password(celery)
    assert len(password) >= 24
    assert parsed["core"]["executor"] == "CeleryExecutor"
    assert parsed["celery"]["broker_url"] == f"redis://:{password}@127.0.0.1:16399/0"
    assert parsed["celery"]["worker_concurrency"] == "2"
    assert parsed["scheduler"]["task_instance_heartbeat_timeout"] == "45"
    redis_conf = (celery.redis_dir / "redis.conf").read_text().splitlines()
    assert (celery.redis_dir / "redis.conf").stat().st_mode & 0o777 == 0o600
    for line in ("bind 127.0.0.1", "port 16399", 'save ""', "appendonly no", f"requirepass {password}"):
        assert line in redis_conf
    # the local default stays the LocalExecutor, and nothing of Celery's is written for it
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(airflow_ctl.write_config(cfg))
    assert parsed["core"]["executor"] == "LocalExecutor" and "celery" not in parsed
    assert cfg.components == airflow_ctl.COMPONENTS


# A task process as Airflow makes it: the preload imported (by the LocalExecutor's forkserver, or by a
# Celery worker before it forks its pool), then the task runner's start-up, which loads every plugin for
# its listeners; last, what Airflow's Celery app is configured with.
_TASK_START = """
import configparser, importlib, json, sys
parsed = configparser.ConfigParser(interpolation=None)
parsed.read(sys.argv[1])
for name in parsed["scheduler"]["mp_forkserver_preload"].split(","):
    importlib.import_module(name)
from airflow.sdk.listener import get_listener_manager
before = set(sys.modules)
get_listener_manager()
plugins = sorted(set(sys.modules) - before)
from airflow.providers.celery.executors.celery_executor import app
print(json.dumps([plugins, list(app.conf.imports), app.conf.broker_url, app.conf.worker_prefetch_multiplier]))
"""


def test_task_processes_inherit_what_the_plugins_import(cfg: airflow_ctl.AirflowConfig) -> None:
    # what the plugins import and the preload lacks is paid by every task (FastAPI and Airflow's API
    # security: ~4 s of CPU each time): after the preload only the plugin files themselves may be new
    project = Path(__file__).resolve().parents[1]
    celery = dataclasses.replace(cfg, project=project, executor="celery", redis_port=16399)
    path = airflow_ctl.write_config(celery)
    out = subprocess.run([sys.executable, "-c", _TASK_START, str(path)], env=process_environment(celery),
                         capture_output=True, text=True, timeout=300, check=True).stdout
    plugins, imports, broker, prefetch = json.loads(out.splitlines()[-1])
    assert set(plugins) == {p.stem for p in (project / "plugins").glob("*.py")}, plugins
    # Celery workers import the same before forking their pool; the written module keeps Airflow's
    # Celery defaults with the deployment's broker
    assert imports == [name for name in FORKSERVER_PRELOAD if name != "airflow.executors.local_executor"]
    assert broker == f"redis://:{airflow_ctl.broker_password(celery)}@127.0.0.1:16399/0" and prefetch == 1


def test_each_celery_worker_has_its_own_node_name(cfg: airflow_ctl.AirflowConfig) -> None:
    celery = dataclasses.replace(cfg, executor="celery", celery_workers=2)
    argv = airflow_ctl._argv(celery, "celery-worker-2")
    # Celery expands %h to this machine's name; a ping from outside names the worker the same way
    assert argv[argv.index("--celery-hostname") + 1] == "cbm2@%h"
    assert airflow_ctl.celery_node_name("celery-worker-2", socket.gethostname()) == f"cbm2@{socket.gethostname()}"
    with pytest.raises(ValueError, match="'scheduler' is not a Celery worker component"):
        airflow_ctl.celery_node_name("scheduler")


def test_bad_celery_settings_are_refused(cfg: airflow_ctl.AirflowConfig) -> None:
    with pytest.raises(ConfigError, match="executor must be one of local, celery, got 'kubernetes'"):
        dataclasses.replace(cfg, executor="kubernetes")
    with pytest.raises(ConfigError, match="celery_workers must be >= 1, got 0"):
        dataclasses.replace(cfg, executor="celery", celery_workers=0)
    with pytest.raises(ConfigError, match="redis_port .* got 18123"):
        dataclasses.replace(cfg, executor="celery", redis_port=cfg.port)


def test_cli_start_refuses_workers_without_celery(capsys: pytest.CaptureFixture[str]) -> None:
    from cbm_tasks.cli import main

    assert main(["airflow", "start", "--workers", "2"]) == 2
    assert "--workers and --concurrency need --executor celery" in capsys.readouterr().err
