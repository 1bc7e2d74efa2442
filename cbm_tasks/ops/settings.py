"""Where the command line finds the database and the local cluster.

Read at call time from the environment, never at import time. Airflow tasks do not use
this module: ``dags/cbm_conn.py`` builds the same values from Airflow connections.

Environment:
    CBM_DATABASE_URL  libpq URL of an existing PostGIS (production); unset = local cluster
    CBM_PG_ROOT       folder of the project-local cluster (default: var/pg, see cluster.default_root)
    CBM_PG_PORT       its port (default 55432)
    CBM_DB_NAME       database of the local cluster (default cbm)
    CBM_STORE_KIND, CBM_STORE_ROOT, CBM_STORE_BUCKET, CBM_STORE_ENDPOINT_URL, CBM_STORE_REGION,
    CBM_STORE_SCRATCH_DIR, CBM_STORE_ACCESS_KEY, CBM_STORE_SECRET_KEY
                      the object store of ``cbm extract`` (default: local files), the same
                      names as in docker-compose.yml
    CBM_LABEL_CACHE_DIR  where ``cbm extract`` keeps parcel label rasters between runs (default:
                      ``labels/`` in the store's scratch folder, as the Airflow tasks' default)
    CBM_LABEL_CACHE_GB   its disk budget (default 8)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cbm_tasks.errors import ConfigError
from cbm_tasks.ops.cluster import DEFAULT_PORT, ClusterConfig, default_root
from cbm_tasks.paths import REPO_ROOT
from cbm_tasks.store import StoreConfig

if TYPE_CHECKING:
    from cbm_tasks.extraction.label_cache import LabelCache

__all__ = ["database_name", "database_url", "label_cache", "local_cluster", "project_dir", "store_config"]


def project_dir() -> Path:
    """Return the checkout this package runs from (holds sql/, dags/, plugins/)."""
    return REPO_ROOT


def local_cluster() -> ClusterConfig:
    """Return the project-local cluster's settings."""
    root = os.environ.get("CBM_PG_ROOT")
    port_text = os.environ.get("CBM_PG_PORT", str(DEFAULT_PORT))
    try:
        port = int(port_text)
    except ValueError as err:
        raise ConfigError(f"CBM_PG_PORT must be an integer, got {port_text!r}") from err
    return ClusterConfig(root=Path(root) if root else default_root(project_dir()), port=port)


def database_name() -> str:
    """Return the name of the CbM database in the local cluster."""
    return os.environ.get("CBM_DB_NAME", "cbm")


def database_url() -> str:
    """Return the libpq URL of the CbM database: CBM_DATABASE_URL, else the local cluster's."""
    return os.environ.get("CBM_DATABASE_URL") or local_cluster().url(database_name())


def label_cache() -> LabelCache:
    """Return the label-raster cache of ``cbm extract``: on disk, so the next image of a tile reuses its labels.

    The default folder is the one the Airflow tasks use by default (``dags/cbm_conn.label_cache``),
    so the command line and the tasks of this machine share their label rasters.

    Raises:
        ConfigError: ``CBM_LABEL_CACHE_GB`` is not a number >= 0; the folder cannot be created.
    """
    from cbm_tasks.extraction.label_cache import LabelCache  # numpy: not at the command's start

    directory = os.environ.get("CBM_LABEL_CACHE_DIR") or store_config().scratch_root() / "labels"
    budget_text = os.environ.get("CBM_LABEL_CACHE_GB", "8")
    try:
        budget_gb = float(budget_text)
    except ValueError as err:
        raise ConfigError(f"CBM_LABEL_CACHE_GB must be a number of gigabytes, got {budget_text!r}") from err
    if not budget_gb >= 0:
        raise ConfigError(f"CBM_LABEL_CACHE_GB must be >= 0, got {budget_text!r}")
    try:  # one raster in memory: one image is extracted per process (a 10 m S2 tile's labels take 482 MB)
        return LabelCache(max_entries=1, directory=Path(directory), max_disk_bytes=int(budget_gb * 1e9))
    except OSError as err:
        raise ConfigError(f"label cache folder {directory} (CBM_LABEL_CACHE_DIR): cannot create it: {err}") from err


def store_config() -> StoreConfig:
    """Return the object store settings from the ``CBM_STORE_*`` variables (unset: local files)."""
    fields = ("kind", "root", "bucket", "endpoint_url", "region", "scratch_dir", "access_key", "secret_key")
    values = {name: os.environ.get(f"CBM_STORE_{name.upper()}") for name in fields}
    return StoreConfig(**{name: value for name, value in values.items() if value})
