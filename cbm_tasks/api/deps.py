"""Request plumbing shared by the routers: authentication, the context, JSON and CSV answers.

Authentication is enforced here for every route that declares :data:`CurrentUser` (all but
``/health`` and ``/version``): the Airflow api-server does not authenticate the FastAPI apps of
plugins, so nothing in front of this application can be relied on. So are the limits on failed
logins per user name and client address (``login_limit``; 429 once exceeded).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from cbm_tasks.api.auth import Principal, parse_bearer
from cbm_tasks.api.context import ApiContext
from cbm_tasks.errors import BadInputError, CbmError

__all__ = ["AuthError", "Context", "CurrentUser", "app_root", "csv_response", "json_response", "jsonable"]

_basic = HTTPBasic(auto_error=False, realm="cbm", description="API user name and secret")
_bearer = HTTPBearer(auto_error=False, description="token <user>.<secret>")


class AuthError(CbmError):
    """No credential, or a wrong one (HTTP 401)."""


def app_root(request: Request) -> str:
    """The application's own base URL, with whatever prefix it is mounted under (Airflow: /cbm).

    Taken from the request URL less as many path segments as the matched route has, because
    ``request.base_url`` does not carry the prefix of a mounted application in every server.
    """
    route = request.scope.get("route")
    segments = len(route.path.strip("/").split("/")) if route is not None and route.path.strip("/") else 0
    path = request.url.path.rstrip("/")
    for _ in range(segments):
        path = path.rsplit("/", 1)[0]
    return str(request.url.replace(path=path, query="", fragment="")).rstrip("/")


def _context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.cbm
    return context


Context = Annotated[ApiContext, Depends(_context)]


async def _principal(
    request: Request,
    basic: Annotated[HTTPBasicCredentials | None, Security(_basic)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    if basic is not None:
        name, secret = basic.username, basic.password
    elif bearer is not None:
        try:
            name, secret = parse_bearer(bearer.credentials)
        except BadInputError as err:
            raise AuthError(str(err)) from err
    else:
        raise AuthError("authentication required: HTTP Basic (user, secret) or Bearer <user>.<secret>")
    context = _context(request)
    client = request.client.host if request.client else "unknown"
    context.logins.check(name, client)  # before any check: a locked pair learns nothing, costs no scrypt
    principal = context.credentials.get(name, secret)
    if principal is None:  # scrypt and the database: off the event loop
        principal = await run_in_threadpool(context.authenticate, name, secret)
    if principal is None:
        context.logins.failed(name, client)
        raise AuthError("unknown user or wrong secret")
    context.logins.succeeded(name, client)
    return principal


CurrentUser = Annotated[Principal, Depends(_principal)]


def jsonable(value: Any) -> Any:
    """Return *value* with NaN/inf as None, dates as ISO 8601 text and tuples as lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def json_response(content: Any, *, status_code: int = 200, media_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> Response:
    """Serialise *content* as strict JSON (no NaN) without a response model (hot paths)."""
    body = json.dumps(jsonable(content), separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status_code, media_type=media_type, headers=headers)


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]], *, filename: str) -> Response:
    """Return rows as CSV with a header line (empty cells for null/NaN)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else
                         (v.isoformat() if isinstance(v, datetime | date) else v) for v in row])
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
