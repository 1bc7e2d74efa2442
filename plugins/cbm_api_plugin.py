"""The CbM REST API inside the Airflow api-server, under ``/cbm`` (``/cbm/docs`` for its OpenAPI page).

Airflow 3 does not authenticate the FastAPI apps of plugins: the application checks every
request itself (HTTP Basic or Bearer with its own API users, per-AOI grants), exactly as when
served by ``cbm api serve``. Its settings come from the Airflow connections ``cbm_api`` (else
``cbm_postgis``) and ``cbm_store`` through ``dags/cbm_conn.py``, read when the first request
arrives, not when the plugin is imported.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from cbm_tasks.api.app import create_app
from cbm_tasks.api.context import ApiConfig

URL_PREFIX = "/cbm"


def _api_config() -> ApiConfig:
    # dags/cbm_conn.py is the one reader of connections (STYLE R2); the api-server does not put
    # the DAGs folder on sys.path as the DAG processor does
    dags_folder = conf.get("core", "dags_folder")
    if dags_folder not in sys.path:
        sys.path.append(dags_folder)
    import cbm_conn

    config: ApiConfig = cbm_conn.api_config()
    return config


class BuiltOnFirstRequest:
    """The REST API application (an ASGI app), built when the api-server passes it its first request.

    Every Airflow process imports the plugins, every task process too (the task runner loads them
    for their listeners); building the application's routes costs half a second of CPU that only the
    api-server needs. Starlette does not pass lifespan events to a mounted app, so none is lost.
    """

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI connection with the application, built first if this is the first."""
        if self.app is None:  # no await before the assignment: one build even for concurrent first requests
            self.app = create_app(_api_config)
        await self.app(scope, receive, send)


class CbmApiPlugin(AirflowPlugin):
    """Mounts the REST API application."""

    name = "cbm_api"
    fastapi_apps = [{"app": BuiltOnFirstRequest(), "url_prefix": URL_PREFIX, "name": "CbM REST API"}]
