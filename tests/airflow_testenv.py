"""Airflow for the tests: a throw-away AIRFLOW_HOME and metadata database of this test session.

Airflow reads its configuration once, when ``airflow`` is first imported, so the test modules
that use it call :func:`activate` at import time, before importing anything from Airflow. The
configuration is the one ``cbm airflow start`` writes (cbm_tasks.ops.airflow_ctl), with a private
home, a private metadata database ``airflow_test_<pid>`` in the project-local cluster (no
SQLite) and the real ``dags/`` folder. Both are removed when the session ends.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cbm_tasks.ops import airflow_ctl, cluster, settings
from cbm_tasks.ops.airflow_api import AirflowApi
from cbm_tasks.ops.api_process import free_port

_HOME = Path(tempfile.mkdtemp(prefix="cbm-airflow-test-"))
_METADATA_DB = f"airflow_test_{os.getpid()}"
_CREATED: list[airflow_ctl.AirflowConfig] = []


def _cleanup() -> None:
    # registered before airflow is imported, so it runs after Airflow's own atexit hooks
    # (dispose_orm) have closed their connections to the metadata database
    for cfg in _CREATED:
        airflow_ctl.stop(cfg)
        cluster.drop_database(cfg.cluster, cfg.metadata_db)
    shutil.rmtree(_HOME, ignore_errors=True)


atexit.register(_cleanup)


@functools.cache
def config() -> airflow_ctl.AirflowConfig:
    """The test deployment: the project's settings with a private home, database and port."""
    base = airflow_ctl.default_config(port=free_port(), executor="local")
    return dataclasses.replace(base, home=_HOME, metadata_db=_METADATA_DB, store_root=_HOME / "store",
                               parallelism=2, max_active_tasks_per_dag=2, extract_pool_slots=2)


def activate() -> airflow_ctl.AirflowConfig:
    """Write the test configuration and point this process at it; call before importing airflow.

    Raises:
        RuntimeError: airflow was imported earlier with another configuration.
    """
    cfg = config()
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(cfg.home):
        raise RuntimeError("airflow was imported before tests/airflow_testenv.activate(); "
                           "import it first in every test module that uses Airflow")
    airflow_ctl.write_config(cfg)
    for key in [k for k in os.environ if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
        del os.environ[key]
    os.environ.update(airflow_ctl.environment(cfg))
    # Airflow's dag-processor and task runner put the DAG bundle folder on sys.path (BundleDagBag),
    # so DAG files import their helpers (cbm_common, cbm_conn); a plain DagBag in a test does not
    dags = str(cfg.project / "dags")
    if dags not in sys.path:
        sys.path.append(dags)
    return cfg


@functools.cache
def metadata_db() -> str:
    """Create and migrate the session's metadata database once (``airflow db migrate``); return its name."""
    cfg = config()
    cluster.start(cfg.cluster)
    cluster.ensure_database(cfg.cluster, cfg.metadata_db)
    _CREATED.append(cfg)
    airflow_ctl.prepare(cfg)
    return cfg.metadata_db


def postgis_connection(db_url: str) -> str:
    """Return connection ``cbm_postgis`` for *db_url* in the JSON form of ``AIRFLOW_CONN_CBM_POSTGIS``."""
    cfg = dataclasses.replace(config(), data_url=db_url)
    return airflow_ctl.environment(cfg)["AIRFLOW_CONN_CBM_POSTGIS"]


def store_connection(root: Path) -> str:
    """Return connection ``cbm_store`` for a local store at *root* (JSON form)."""
    cfg = dataclasses.replace(config(), store_root=root)
    return airflow_ctl.environment(cfg)["AIRFLOW_CONN_CBM_STORE"]


def project_dir() -> Path:
    """The checkout under test."""
    return settings.project_dir()


def session_members(sid: int) -> list[int]:
    """The live processes of session *sid* (an Airflow component started by ``airflow_ctl`` leads its own)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if os.getsid(int(entry.name)) == sid and state != "Z":
                    members.append(int(entry.name))
            except (ProcessLookupError, FileNotFoundError):
                continue
    return members



CBM_DAGS = ("cbm_catalogue", "cbm_s1_card", "cbm_extract", "cbm_markers", "cbm_audit")


def quiesce(api: AirflowApi, dag_ids: Sequence[str] = CBM_DAGS) -> None:
    """Leave the project's DAGs with nothing queued or running (``AirflowApi.quiesce``).

    The tests share the session's metadata database: a run or an asset event an earlier test left
    behind would start in the next test's deployment, and with ``max_active_runs=1`` hold that
    test's own runs back until it times out.
    """
    api.quiesce(dag_ids)
