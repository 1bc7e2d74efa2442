"""Shared fixtures: a real PostGIS in the project-local cluster, one fresh database per test.

The session builds a migrated template database once; each test gets its own copy
(``CREATE DATABASE ... TEMPLATE``, ~0.1 s), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cbm_tasks import db
from cbm_tasks.ops import cluster, kernel_cache, settings

# the Numba cache that `cbm kernels warm` filled at install (make test installs first), as the CLI and
# Airflow use it: the suite loads the kernels instead of compiling them
kernel_cache.use_cache_dir()

pytest_plugins = ["api_world"]  # the API tests' shared world (fixture api_world)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Return a path under ../shared/data, failing clearly when the data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared test data missing: {path} (see DEVELOPERS.md, Data)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the pipeline benchmark's test first, the Docker stack tests last, and start their scenario now.

    Building, starting and running the stack is minutes of downloads and waiting; overlapping it
    with the rest of the suite keeps ``make test`` within its budget (ARCHITECTURE.md, Tests).
    """
    # the pipeline benchmark measures a fresh deployment: before the other Airflow tests leave runs
    # and asset events in the shared metadata database that could hold its cbm_extract run back
    bench = [item for item in items if item.path.name == "test_pipeline_bench.py"]
    items[:] = bench + [item for item in items if item.path.name != "test_pipeline_bench.py"]
    docker = [item for item in items if item.path.name == "test_docker_stack.py"]
    if not docker or config.option.collectonly:
        return
    items[:] = [item for item in items if item.path.name != "test_docker_stack.py"] + docker
    import test_docker_stack

    test_docker_stack.start_scenario()


@pytest.fixture(scope="session")
def pg_cluster() -> cluster.ClusterConfig:
    cfg = settings.local_cluster()
    cluster.start(cfg)
    return cfg


@pytest.fixture(scope="session")
def template_db(pg_cluster: cluster.ClusterConfig) -> Iterator[str]:
    name = f"cbm_test_tmpl_{os.getpid()}"
    cluster.ensure_database(pg_cluster, name)
    with db.connect(pg_cluster.url(name)) as conn:
        db.migrate(conn)
    yield name
    cluster.drop_database(pg_cluster, name)


@contextmanager
def fresh_database(pg_cluster: cluster.ClusterConfig, template_db: str) -> Iterator[str]:
    """URL of a new database copied from the migrated template, dropped at the end."""
    name = f"cbm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
        )
    try:
        yield pg_cluster.url(name)
    finally:
        cluster.drop_database(pg_cluster, name)


@pytest.fixture
def db_url(pg_cluster: cluster.ClusterConfig, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test only."""
    with fresh_database(pg_cluster, template_db) as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """An open connection to this test's database (autocommit off)."""
    with psycopg.connect(db_url) as connection:
        yield connection
