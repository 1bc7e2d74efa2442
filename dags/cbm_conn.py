"""The one place that reads Airflow connections and variables (STYLE R2).

Every DAG task calls these at run time (never at import time) and passes the frozen values
down to ``cbm_tasks``. This file holds no DAG and is listed in ``.airflowignore``.

Connections and variables:

- ``cbm_postgis`` (postgres): host (or Unix-socket folder), port, login, password, schema = database;
  extras become libpq parameters (``sslmode``, ...).
- ``cbm_store`` (any type): login/password = S3 access and secret key; extras are the fields of
  :class:`cbm_tasks.store.StoreConfig` (``kind``, ``root``, ``bucket``, ``endpoint_url``, ``region``,
  ``scratch_dir``); an unknown extra fails at once (TypeError naming it).
- Variable ``cbm_catalogue`` (JSON): ``{"<aoi>": {...}, "*": {...}}``, the fields of
  :class:`cbm_tasks.catalogue.clients.CatalogueConfig` per AOI, ``*`` for every other AOI.
  Without an entry, connection ``cbm_catalogue`` (host = service URL, password = bearer token,
  extras = the other fields); without either, the public CDSE OData catalogue.
- ``cbm_api`` (postgres, optional): the REST API's database login, a member of ``cbm_reader``;
  without it the API uses ``cbm_postgis`` and switches to ``cbm_reader`` (``SET ROLE``).
- Variable ``cbm_card`` (JSON, optional): the fields of :class:`cbm_tasks.card.backend.BackendConfig`,
  e.g. ``{"backend": "sarsen", "dem_path": "/data/dem/europe.vrt", "geoid_path": "/usr/share/proj/egm96_15.gtx"}``;
  default: the sarsen backend without a DEM (CARD jobs then fail with a ConfigError naming ``dem_path``).
- ``cbm_odp`` (http, optional): the CDSE on-demand production service for backend ``cdse-odp``:
  host = OData root (default the public service), password = bearer token, extras = the other
  fields of :class:`cbm_tasks.card.odp.OdpConfig` (``workflows``, ``priority``, ``poll_interval_s``, ``timeout_s``).
- Variable ``cbm_backgrounds`` (JSON, optional): the orthophoto backgrounds the REST API serves (JRC's
  ``backgroundByLocation``), ``{"<name>": "<anything GDAL opens: WMS/TMS XML file, WMTS:..., /vsicurl/ COG>"}``.
- Variable ``cbm_jrc_band_names`` (optional): ``B04`` (default) or ``B4``, how the JRC-compatible time
  series name Sentinel-2 bands (as JRC's servers, or as its open-source extractor; ``ApiConfig.jrc_band_names``).
- Variable ``cbm_reports_dir`` (optional): folder of the audit and run reports; default
  ``<AIRFLOW_HOME>/reports``.
- Variable ``cbm_label_cache`` (JSON, optional): ``{"directory": "...", "max_disk_gb": 8}``, where
  extraction tasks of a worker keep rasterised parcel labels for later images of the same grid;
  default: ``labels/`` in the store's scratch folder, 8 GB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import Connection, Variable
from airflow.sdk.exceptions import AirflowNotFoundException
from psycopg.conninfo import make_conninfo

from cbm_tasks.api.context import ApiConfig
from cbm_tasks.api.validation import DEFAULT_JRC_BAND_STYLE
from cbm_tasks.card.backend import BackendConfig
from cbm_tasks.card.odp import OdpConfig
from cbm_tasks.catalogue.clients import CatalogueConfig
from cbm_tasks.extraction.label_cache import LabelCache
from cbm_tasks.report.datasets import DatabaseNamespace
from cbm_tasks.store import StoreConfig

__all__ = [
    "API_CONN_ID",
    "CARD_VARIABLE",
    "CATALOGUE_CONN_ID",
    "CATALOGUE_VARIABLE",
    "POSTGIS_CONN_ID",
    "STORE_CONN_ID",
    "api_config",
    "card_config",
    "catalogue_config",
    "label_cache",
    "odp_config",
    "postgis_dsn",
    "postgis_namespace",
    "reports_dir",
    "store_config",
]

POSTGIS_CONN_ID = "cbm_postgis"
API_CONN_ID = "cbm_api"
STORE_CONN_ID = "cbm_store"
CATALOGUE_CONN_ID = "cbm_catalogue"
CATALOGUE_VARIABLE = "cbm_catalogue"
LABEL_CACHE_VARIABLE = "cbm_label_cache"
CARD_VARIABLE = "cbm_card"
ODP_CONN_ID = "cbm_odp"
REPORTS_VARIABLE = "cbm_reports_dir"
BACKGROUNDS_VARIABLE = "cbm_backgrounds"
JRC_BAND_NAMES_VARIABLE = "cbm_jrc_band_names"


def postgis_dsn() -> str:
    """Return the libpq connection string of the CbM database (never log or return it from a task)."""
    return _dsn(Connection.get(POSTGIS_CONN_ID))


def _dsn(conn: Connection) -> str:
    params: dict[str, Any] = {key: str(value) for key, value in conn.extra_dejson.items()}
    for key, value in (("host", conn.host), ("port", conn.port), ("dbname", conn.schema),
                       ("user", conn.login), ("password", conn.password)):
        if value not in (None, ""):
            params[key] = value
    return make_conninfo(**params)


def api_config() -> ApiConfig:
    """Return the REST API's settings (plugins/cbm_api_plugin.py): ``cbm_api``, else ``cbm_postgis``; ``cbm_store``."""
    try:
        dsn = _dsn(Connection.get(API_CONN_ID))
    except AirflowNotFoundException:
        dsn = postgis_dsn()
    try:
        store: StoreConfig | None = store_config()
    except AirflowNotFoundException:
        store = None  # no image chips
    from cbm_tasks.api.backgrounds import parse_backgrounds  # rasterio and the chips: only the API server needs them

    backgrounds = parse_backgrounds(Variable.get(BACKGROUNDS_VARIABLE, default=None), where="Variable cbm_backgrounds")
    band_names = Variable.get(JRC_BAND_NAMES_VARIABLE, default=None) or DEFAULT_JRC_BAND_STYLE
    return ApiConfig(dsn=dsn, store=store, backgrounds=backgrounds, jrc_band_names=band_names.strip())


def postgis_namespace() -> DatabaseNamespace:
    """Return host, port and database of the CbM database, the namespace of its tables as OpenLineage datasets."""
    conn = Connection.get(POSTGIS_CONN_ID)
    return DatabaseNamespace.of(host=conn.host, port=conn.port, database=conn.schema)


def reports_dir() -> Path:
    """Return the folder of the audit and run reports (Variable ``cbm_reports_dir``)."""
    default = str(Path(os.environ.get("AIRFLOW_HOME", ".")) / "reports")
    return Path(Variable.get(REPORTS_VARIABLE, default=default))


def store_config() -> StoreConfig:
    """Return the object store settings of connection ``cbm_store``."""
    conn = Connection.get(STORE_CONN_ID)
    return StoreConfig(access_key=conn.login or None, secret_key=conn.password or None, **conn.extra_dejson)


def catalogue_config(aoi: str) -> CatalogueConfig:
    """Return the catalogue settings for *aoi* (see the module docstring for the lookup order)."""
    per_aoi = Variable.get(CATALOGUE_VARIABLE, default=None, deserialize_json=True)
    if per_aoi is not None:
        if not isinstance(per_aoi, dict):
            raise TypeError(f"Variable {CATALOGUE_VARIABLE} must be a JSON object of AOI -> settings, "
                            f"got {type(per_aoi).__name__}")
        entry = per_aoi.get(aoi, per_aoi.get("*"))
        if entry is not None:
            return CatalogueConfig(**entry)
    try:
        conn = Connection.get(CATALOGUE_CONN_ID)
    except AirflowNotFoundException:
        return CatalogueConfig()
    return CatalogueConfig(url=conn.host or None, bearer_token=conn.password or None, **conn.extra_dejson)


def label_cache() -> LabelCache:
    """Return the label-raster cache of this worker (variable ``cbm_label_cache``, see above)."""
    settings = Variable.get(LABEL_CACHE_VARIABLE, default=None, deserialize_json=True) or {}
    unknown = set(settings) - {"directory", "max_disk_gb"}
    if unknown:
        raise TypeError(f"Variable {LABEL_CACHE_VARIABLE}: unknown keys {sorted(unknown)}; "
                        "valid: directory, max_disk_gb")
    directory = settings.get("directory") or store_config().scratch_root() / "labels"
    max_disk_gb = float(settings.get("max_disk_gb", 8))
    # one raster in memory: a 10 m S2 tile's labels take 482 MB, and tasks run side by side
    return LabelCache(max_entries=1, directory=Path(directory), max_disk_bytes=int(max_disk_gb * 1e9))


def card_config() -> BackendConfig:
    """Return the CARD backend settings of this deployment (variable ``cbm_card``, see above)."""
    settings = Variable.get(CARD_VARIABLE, default=None, deserialize_json=True) or {}
    if not isinstance(settings, dict):
        raise TypeError(f"Variable {CARD_VARIABLE} must be a JSON object, got {type(settings).__name__}")
    if "coherence_window" in settings:
        settings = {**settings, "coherence_window": tuple(settings["coherence_window"])}
    return BackendConfig(**settings)


def odp_config() -> tuple[OdpConfig, str | None]:
    """Return the on-demand production service settings and its bearer token (never log or return it)."""
    try:
        conn = Connection.get(ODP_CONN_ID)
    except AirflowNotFoundException:
        return OdpConfig(), None
    url = {"url": conn.host} if conn.host else {}
    return OdpConfig(**url, **conn.extra_dejson), conn.password or None
