"""The REST API application: routers, error answers and the two ways to serve it.

:func:`create_app` builds one FastAPI application; ``cbm api serve`` runs it with uvicorn, and
``plugins/cbm_api_plugin.py`` mounts it in the Airflow api-server under ``/cbm``. Routes:

- ``/health``, ``/version``: without authentication, as ``/dump`` (signed links);
- ``/v1/...``: parcels, peers, time series, markers, traffic lights, image chips (:mod:`.v1`);
- ``/query/...``: JRC's query names and answer shapes for existing notebooks (:mod:`.jrc`), its raw
  chip queries (:mod:`.jrc_chips`);
- ``/dump/...``: the chips those answer, behind signed links (no login: JRC's notebooks send none);
- ``/ogc/...``: OGC API - Features, parcels with their traffic lights (:mod:`.ogc`).

Errors are JSON ``{"error": <kind>, "detail": <message>}`` with 400 (bad parameter), 401 (no or
wrong credential), 403 (AOI not granted), 404 (no such parcel, set or product), 422 (malformed
request), 429 (too many failed logins of that user from that address, with ``Retry-After``;
:mod:`.login_limit`), 503 (database unavailable); anything unexpected is a 500 with no detail, logged
with its traceback on the server only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cbm_tasks import __version__
from cbm_tasks.api import jrc, jrc_chips, ogc, v1
from cbm_tasks.api.context import ApiConfig, ApiContext
from cbm_tasks.api.deps import AuthError, json_response
from cbm_tasks.api.login_limit import TooManyLoginsError
from cbm_tasks.api.queries import AccessDeniedError
from cbm_tasks.errors import BadInputError, NotFoundError, TransientError

__all__ = ["create_app"]

log = logging.getLogger(__name__)
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Basic realm="cbm", charset="UTF-8"'}


def _error(status: int, kind: str, detail: object, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": kind, "detail": detail}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def _auth(request: Request, err: AuthError) -> Response:
        return _error(401, "unauthorized", str(err), _WWW_AUTHENTICATE)

    @app.exception_handler(TooManyLoginsError)
    async def _too_many_logins(request: Request, err: TooManyLoginsError) -> Response:
        return _error(429, "too many requests", str(err), {"Retry-After": str(err.retry_after_s)})

    @app.exception_handler(AccessDeniedError)
    async def _forbidden(request: Request, err: AccessDeniedError) -> Response:
        return _error(403, "forbidden", str(err))

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, err: NotFoundError) -> Response:
        return _error(404, "not found", str(err))

    @app.exception_handler(BadInputError)
    async def _bad_input(request: Request, err: BadInputError) -> Response:
        return _error(400, "bad request", str(err))

    @app.exception_handler(TransientError)
    async def _unavailable(request: Request, err: TransientError) -> Response:
        log.warning("api unavailable path=%s reason=%s", request.url.path, err)
        return _error(503, "service unavailable", "the database is not reachable; try again later",
                      {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:300]} for e in err.errors()]
        return _error(422, "invalid request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        headers = dict(err.headers or {})
        if err.status_code == 401:
            headers |= _WWW_AUTHENTICATE
        return _error(err.status_code, "error", str(err.detail), headers or None)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> Response:
        log.exception("api internal error path=%s", request.url.path)
        return _error(500, "internal error", "the server failed to answer; the error is in its log")


def create_app(config: ApiConfig | Callable[[], ApiConfig], *, root_path: str = "") -> FastAPI:
    """Build the API application.

    Args:
        config: the settings, or a function that returns them when the first request needs them
            (the Airflow plugin reads Airflow connections only then).
        root_path: the prefix the application is served under behind a proxy ('' standalone).
    """
    context = ApiContext(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        context.close()

    app = FastAPI(
        title="CbM REST API",
        version=__version__,
        description="Parcels, time series, markers, traffic lights and image chips of the Checks by Monitoring "
                    "backend. Every route except /health and /version needs HTTP Basic or a Bearer token.",
        lifespan=lifespan,
        root_path=root_path,
    )
    app.state.cbm = context
    _install_error_handlers(app)

    @app.get("/health", tags=["service"], summary="Liveness and database reachability (no authentication)")
    def health() -> Response:
        try:
            with context.connection() as conn:
                conn.execute("SELECT 1")
        except TransientError:
            return json_response({"status": "unavailable", "database": False}, status_code=503)
        return json_response({"status": "ok", "database": True})

    @app.get("/version", tags=["service"], summary="API and code version (no authentication)")
    def version() -> Response:
        return json_response({"name": "cbm-api", "version": __version__, "api": "v1"})

    app.include_router(v1.router, prefix="/v1")
    app.include_router(jrc.router, prefix="/query")
    app.include_router(jrc_chips.router, prefix="/query")
    app.include_router(jrc_chips.dump_router)
    app.include_router(ogc.router, prefix="/ogc")
    return app
