"""The docker-compose deployment: valid, pinned, healthy by construction, no secret in clear.

The compose file is resolved with the real ``docker compose config`` (or Debian's
``docker-compose``) when one is installed; that is a client-side command, no engine needed.
Without either, the same checks run on the file resolved by ``_interpolate`` below, which
implements the compose rules the file uses (``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``,
``$$``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from psycopg.conninfo import make_conninfo

from cbm_tasks import db
from cbm_tasks.ops import cluster
from cbm_tasks.ops.airflow_config import CELERY_CONFIG_MODULE, FORKSERVER_PRELOAD
from cbm_tasks.store import StoreConfig

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker")
LONG_RUNNING = ("postgis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "redis", "airflow-worker")
ALL_SERVICES = {*LONG_RUNNING, "airflow-init", "cbm"}  # cbm: the command line, profile "tools"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}")


def _required_secrets() -> list[str]:
    """Names given with an empty value in .env.example: the secrets every site must set."""
    return [m.group(1) for m in re.finditer(r"^([A-Z_]+)=$", ENV_EXAMPLE.read_text(), re.MULTILINE)]


def _dummy_env(**overrides: str) -> dict[str, str]:
    env = {name: f"dummy-{name.lower()}" for name in _required_secrets()}
    env.update(overrides)
    return env


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, colon, op, arg = match.groups()
        current = env.get(name)
        missing = current is None or (colon == ":" and current == "")
        if op == "?" and missing:
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        if op == "-" and missing:
            return str(arg)
        return current or ""

    return _VAR.sub(substitute, value)


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _write_env(folder: Path, env: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".env"
    path.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return path


def _run_cli(cli: list[str], env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*cli, "--project-directory", str(ROOT), "--env-file", str(env_file), "-f", str(COMPOSE),
            "--profile", "celery", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, cwd=ROOT)


def _resolved(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """The compose model with variables substituted: by the real CLI when there is one."""
    cli = _compose_cli()
    if cli is None:
        resolved: dict[str, Any] = _interpolate(yaml.safe_load(COMPOSE.read_text()), env)
        return resolved
    result = _run_cli(cli, _write_env(tmp_path, env), "config")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = yaml.safe_load(result.stdout)
    return model


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the list form KEY=VALUE
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


@pytest.fixture
def model(tmp_path: Path) -> dict[str, Any]:
    return _resolved(tmp_path, _dummy_env())


def test_cli_validates_the_file_when_installed(tmp_path: Path) -> None:
    cli = _compose_cli()
    env = _dummy_env()
    by_python = _interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    assert set(by_python["services"]) == ALL_SERVICES
    if cli is None:  # no compose CLI on this machine: the other tests check the Python resolution
        return
    result = _run_cli(cli, _write_env(tmp_path, env), "config", "-q")
    assert result.returncode == 0, result.stderr
    by_cli = _resolved(tmp_path, env)
    for name, service in by_cli["services"].items():  # the fallback resolves as compose does
        assert _environment(service) == _environment(by_python["services"][name]), name


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "_AIRFLOW_WWW_USER_PASSWORD",
                                    "CBM_DB_PASSWORD", "AIRFLOW_JWT_SECRET"])
def test_missing_secret_is_refused(tmp_path: Path, secret: str) -> None:
    env = _dummy_env(**{secret: ""})
    cli = _compose_cli()
    if cli is None:
        with pytest.raises(ValueError, match=secret):
            _interpolate(yaml.safe_load(COMPOSE.read_text()), env)
        return
    result = _run_cli(cli, _write_env(tmp_path, env), "config", "-q")
    assert result.returncode != 0 and secret in result.stderr


def test_env_example_has_placeholders_only() -> None:
    secrets = _required_secrets()
    assert {"POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "_AIRFLOW_WWW_USER_PASSWORD", "AIRFLOW_DB_PASSWORD",
            "CBM_DB_PASSWORD", "CBM_DB_OWNER_PASSWORD", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET"} <= set(secrets)
    set_lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=.", line)]
    assert set_lines == [], "the example sets values; secrets must be left empty, others commented out"
    # every required variable of the compose file is listed in the example
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", COMPOSE.read_text()))
    assert required == set(secrets)


def test_every_service_is_pinned_and_checked(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == ALL_SERVICES
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":[^:/]*\d", image) and not image.endswith(":latest"), f"{name}: unpinned {image}"
        if name in LONG_RUNNING:
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(" ".join(test)) > 15, name
    assert services["postgis"]["image"].startswith("postgis/postgis:15-3.")
    assert services["airflow-apiserver"]["healthcheck"]["test"][-1].endswith("/api/v2/monitor/health")
    assert services["airflow-scheduler"]["healthcheck"]["test"][-1] == "http://localhost:8974/health"
    # the cheap checks of cbm_tasks.ops.healthcheck (tests/test_healthcheck.py), each of its own component
    check = ["CMD", "python", "-m", "cbm_tasks.ops.healthcheck"]
    assert services["airflow-triggerer"]["healthcheck"]["test"] == [*check, "job", "TriggererJob"]
    assert services["airflow-dag-processor"]["healthcheck"]["test"] == [*check, "job", "DagProcessorJob"]
    assert services["airflow-worker"]["healthcheck"]["test"] == [*check, "celery-worker"]
    assert "pg_isready" in services["postgis"]["healthcheck"]["test"][-1]
    assert services["redis"]["profiles"] == ["celery"] and services["airflow-worker"]["profiles"] == ["celery"]
    assert services["cbm"]["profiles"] == ["tools"]
    # the official images by default; docker/local/build-images.sh makes stand-ins where no registry is reachable
    assert services["redis"]["image"].startswith("redis:7.")
    assert services["airflow-init"]["build"]["args"]["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"


def test_ports_on_loopback_only(model: dict[str, Any]) -> None:
    published = {name: service.get("ports", []) for name, service in model["services"].items()}
    assert {name for name, ports in published.items() if ports} == {"airflow-apiserver"}
    for port in published["airflow-apiserver"]:
        host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1"


def test_no_secret_in_clear(model: dict[str, Any]) -> None:
    """With every secret set to a dummy, each password and key found must be that dummy."""
    found = 0
    for name, service in model["services"].items():
        for key, value in _environment(service).items():
            if key.startswith("AIRFLOW_CONN_"):
                value = json.loads(value).get("password") or "dummy-"
            elif "://" in value:
                value = urlsplit(value).password or "dummy-"
            elif not re.search(r"PASSWORD|SECRET|FERNET|_KEY$", key) or key.endswith("_FILE"):
                continue
            assert value.startswith("dummy-"), f"{name}: {key} holds a value that is not from .env"
            found += 1
    assert found > 20


def test_airflow_settings_match_the_deployment(model: dict[str, Any]) -> None:
    services = model["services"]
    envs = {name: _environment(services[name]) for name in AIRFLOW_SERVICES}
    for name, env in envs.items():
        assert env["AIRFLOW__CORE__PARALLELISM"] == "4", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False", name
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/cbm/dags", name
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/cbm/plugins", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:"), name
        assert "AIRFLOW_CONN_CBM_POSTGIS" in env and "AIRFLOW_CONN_CBM_STORE" in env, name
        # all components must share the keys, or tokens and encrypted values do not verify
        for shared in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
            assert env[shared] == envs["airflow-apiserver"][shared], (name, shared)
        volumes = [str(v["target"] if isinstance(v, dict) else v.split(":")[1]) for v in services[name]["volumes"]]
        assert {"/opt/cbm/dags", "/opt/cbm/plugins", "/opt/airflow/logs", "/opt/cbm/var"} <= set(volumes), name
        # task start-up as the local deployment's (ARCHITECTURE.md): the same preload for both executors
        assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver", name
        assert env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"].split(",") == list(FORKSERVER_PRELOAD), name
        assert env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == f"{CELERY_CONFIG_MODULE}.CELERY_CONFIG", name
    assert envs["airflow-scheduler"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert envs["airflow-worker"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    postgis = json.loads(envs["airflow-scheduler"]["AIRFLOW_CONN_CBM_POSTGIS"])
    assert (postgis["conn_type"], postgis["host"], postgis["port"], postgis["schema"]) == ("postgres", "postgis", 5432,
                                                                                          "cbm")
    assert "cbm db migrate" in " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in " ".join(services["airflow-init"]["command"])


def test_store_connection_builds_a_store_config(tmp_path: Path) -> None:
    local = _environment(_resolved(tmp_path / "a", _dummy_env())["services"]["airflow-scheduler"])
    conn = json.loads(local["AIRFLOW_CONN_CBM_STORE"])
    cfg = StoreConfig(access_key=conn["login"], secret_key=conn["password"], **conn["extra"])
    assert (cfg.kind, cfg.root, cfg.endpoint_url, cfg.access_key) == ("local", "/opt/cbm/var/store", None, None)

    cdse = _dummy_env(CBM_STORE_KIND="s3", CBM_STORE_ENDPOINT_URL="https://eodata.dataspace.copernicus.eu",
                      CBM_STORE_REGION="default", CBM_STORE_BUCKET="eodata", CBM_STORE_ROOT="",
                      CBM_STORE_ACCESS_KEY="ak", CBM_STORE_SECRET_KEY="sk")
    worker = _resolved(tmp_path / "b", cdse)["services"]["airflow-worker"]
    conn = json.loads(_environment(worker)["AIRFLOW_CONN_CBM_STORE"])
    cfg = StoreConfig(access_key=conn["login"], secret_key=conn["password"], **conn["extra"])
    assert (cfg.kind, cfg.bucket, cfg.endpoint_url, cfg.region) == (
        "s3", "eodata", "https://eodata.dataspace.copernicus.eu", "default")
    assert "sk" not in repr(cfg)


def test_dockerfile_installs_the_pinned_requirements() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim-bookworm$", dockerfile, re.MULTILINE)
    assert base, "the base image must be a pinned python:<x.y>-slim-bookworm"
    assert base.group(1) == "3.11"  # Debian bookworm's Python: the local stand-in cbm-python has the same
    assert re.search(r"^apache-airflow==3\.3\.\d+$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert "-r /opt/cbm/requirements.txt" in dockerfile and "-e /opt/cbm" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text()
    assert "\n**\n" in ignored and "!cbm_tasks/**" in ignored and "!sql/**" in ignored  # allow-list


# --- the PostGIS init script, run against a throwaway cluster (roles are cluster-wide) ------------


@pytest.fixture(scope="module")
def scratch_cluster() -> Iterator[cluster.ClusterConfig]:
    # /var/tmp: as root the cluster runs as the postgres user, who cannot enter pytest's 0700 folders
    parent = "/var/tmp" if os.geteuid() == 0 else None  # noqa: S108
    cfg = cluster.ClusterConfig(root=Path(tempfile.mkdtemp(prefix="cbm-initdb-", dir=parent)), port=55440)
    try:
        cluster.start(cfg)
        yield cfg
    finally:
        cluster.remove(cfg)


def _as(cfg: cluster.ClusterConfig, dbname: str, user: str) -> str:
    return make_conninfo(cfg.url(dbname), user=user)


def test_postgis_init_script_then_migrations_as_owner(scratch_cluster: cluster.ClusterConfig) -> None:
    cfg = scratch_cluster
    names = {"AIRFLOW_DB_NAME": "airflow_meta", "AIRFLOW_DB_USER": "airflow_svc", "CBM_DB_NAME": "cbm_prod",
             "CBM_DB_OWNER": "cbm_owner", "CBM_DB_USER": "cbm_task"}
    env = {**os.environ, **names, "POSTGRES_USER": cluster.SUPERUSER, "PGHOST": str(cfg.socket_dir),
           "PGPORT": str(cfg.port), "PATH": f"{cluster.find_bindir()}:{os.environ['PATH']}",
           "AIRFLOW_DB_PASSWORD": "pw'a", "CBM_DB_OWNER_PASSWORD": "pw-o", "CBM_DB_PASSWORD": "pw-c"}
    script = ROOT / "docker" / "postgis-init" / "10-cbm-databases.sh"
    for _run in range(2):  # a second run changes nothing and does not fail
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, result.stderr

    with db.connect(_as(cfg, "cbm_prod", "cbm_owner")) as conn:
        applied = db.migrate(conn)
    assert applied[:2] == ["000_schema_migrations", "001_extensions"] and len(applied) == len(db.list_migrations())

    with psycopg.connect(_as(cfg, "cbm_prod", "cbm_task")) as conn:  # the pipeline: rows yes, DDL no
        aoi_id = conn.execute("INSERT INTO cbm.aoi (name) VALUES ('demo') RETURNING aoi_id").fetchone()
        assert aoi_id is not None and aoi_id[0] >= 1
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE cbm.rogue (i int)")

    with psycopg.connect(_as(cfg, "airflow_meta", "airflow_svc"), autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_probe (i int)")  # airflow db migrate creates its tables
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'airflow_meta'")
        assert owner.fetchone() == ("airflow_svc",)
    with psycopg.connect(cfg.url("postgres")) as conn:  # a quote in a password goes in as a literal
        rows = conn.execute("SELECT rolname, rolpassword LIKE 'SCRAM-SHA-256$%', rolsuper FROM pg_authid"
                            " WHERE rolname IN ('airflow_svc', 'cbm_owner', 'cbm_task') ORDER BY rolname").fetchall()
    assert rows == [("airflow_svc", True, False), ("cbm_owner", True, False), ("cbm_task", True, False)]


def test_airflow_init_script_runs(model: dict[str, Any], tmp_path: Path) -> None:
    """The init job's shell is valid, and its Python step really checks connections and writes the password file."""
    init = model["services"]["airflow-init"]
    script = init["command"][-1].replace("$$", "$")  # the CLI's output keeps compose's $$ escapes
    assert subprocess.run(["bash", "-n", "-c", script], capture_output=True, check=False).returncode == 0
    python_step = script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    env = {**_environment(init), "PATH": os.environ["PATH"],
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "airflow" / "passwords.json")}
    result = subprocess.run([sys.executable, "-c", python_step], env=env, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "StoreConfig(kind='local', root='/opt/cbm/var/store'" in result.stdout
    written = tmp_path / "airflow" / "passwords.json"
    assert json.loads(written.read_text()) == {"admin": "dummy-_airflow_www_user_password"}
    assert written.stat().st_mode & 0o777 == 0o600

    env["AIRFLOW_CONN_CBM_STORE"] = '{"extra": {"kind": "s3", "endpoint": "x"}}'  # a misspelt extra
    result = subprocess.run([sys.executable, "-c", python_step], env=env, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode != 0 and "endpoint" in result.stderr
