"""Airflow UI page "Parcel audit": type an AOI, year and parcel id; see its lights, markers and time series.

A FastAPI app mounted by the API server under ``/cbm-audit`` and shown in the UI's navigation as
an external view (an iframe of the same origin). Every route depends on Airflow's own user check
(``get_user``: the JWT cookie the UI login sets, or a bearer token), so the page is behind the
login like the rest of the UI. The routes hold no SQL: they call ``cbm_tasks.report`` as
``cbm audit parcel`` does.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import get_user
from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

_AOI = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                         autoescape=select_autoescape(["html"]))
_TEMPLATES.filters["b64"] = lambda data: base64.b64encode(data).decode()  # the pictures of the images (PNG)

app = FastAPI(title="CbM parcel audit", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(get_user)])

Aoi = Annotated[str, Query(max_length=63, description="AOI name")]
Year = Annotated[int, Query(ge=2014, le=2100, description="parcel-set year")]
ParcelId = Annotated[str, Query(min_length=1, max_length=100, description="parcel id as declared")]
Scheme = Annotated[str | None, Query(max_length=100, description="only this aid scheme")]


def _cbm_conn() -> Any:
    # dags/cbm_conn.py is the one reader of connections (STYLE R2); the api-server does not put
    # the DAGs folder on sys.path as the DAG processor does
    dags_folder = conf.get("core", "dags_folder")
    if dags_folder not in sys.path:
        sys.path.append(dags_folder)
    import cbm_conn

    return cbm_conn


def _gather(aoi: str, year: int, parcel: str, scheme: str | None, *, images: bool = True) -> Any:
    from cbm_tasks import db
    from cbm_tasks.errors import NotFoundError
    from cbm_tasks.report.parcel_audit import gather
    from cbm_tasks.store import open_store

    if not _AOI.match(aoi):
        raise HTTPException(status_code=422, detail=f"AOI must match {_AOI.pattern}, got {aoi!r}")
    connections = _cbm_conn()
    try:
        with db.connect(str(connections.postgis_dsn()), autocommit=True, application_name="cbm audit page") as conn:
            # the images behind the events come from connection cbm_store, as the tasks read them
            store = open_store(connections.store_config()) if images else None
            return gather(conn, aoi=aoi, year=year, parcel_id=parcel, scheme=scheme, store=store)
    except NotFoundError as err:
        raise HTTPException(status_code=404, detail=str(err)) from err


@app.get("/", response_class=HTMLResponse)
def parcel_page(aoi: Aoi = "", year: Annotated[int | None, Query(ge=2014, le=2100)] = None,
                parcel: Annotated[str, Query(max_length=100)] = "", scheme: Scheme = None) -> HTMLResponse:
    """The form, and when it is filled in, the parcel's lights, markers, the images behind them and time series."""
    audit, error = None, None
    scheme = scheme or None  # the form sends an empty field when no scheme is chosen
    if aoi and year and parcel:
        try:
            audit = _gather(aoi, year, parcel, scheme)
        except HTTPException as err:
            error = str(err.detail)
    page = _TEMPLATES.get_template("cbm_audit.html").render(aoi=aoi, year=year or "", parcel=parcel,
                                                             scheme=scheme or "", a=audit, error=error)
    return HTMLResponse(page, status_code=200 if error is None else 404)


@app.get("/plot.png")
def parcel_plot(aoi: Aoi, year: Year, parcel: ParcelId) -> Response:
    """The parcel's time-series figure with its events (PNG)."""
    audit = _gather(aoi, year, parcel, None, images=False)
    if audit.plot_png is None:
        raise HTTPException(status_code=404, detail=f"parcel {parcel!r} has no observation")
    return Response(audit.plot_png, media_type="image/png")


@app.get("/report", response_class=HTMLResponse)
def parcel_report(aoi: Aoi, year: Year, parcel: ParcelId, scheme: Scheme = None) -> HTMLResponse:
    """The full audit report (the HTML ``cbm audit parcel`` writes)."""
    from cbm_tasks.report.render import render_html

    return HTMLResponse(render_html(_gather(aoi, year, parcel, scheme or None)))


@app.get("/report.pdf")
def parcel_report_pdf(aoi: Aoi, year: Year, parcel: ParcelId, scheme: Scheme = None) -> Response:
    """The full audit report as PDF."""
    import weasyprint

    from cbm_tasks.report.render import render_html

    document = weasyprint.HTML(string=render_html(_gather(aoi, year, parcel, scheme or None))).write_pdf()
    return Response(document, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{aoi}_{year}_audit.pdf"'})


class CbmAuditPlugin(AirflowPlugin):
    """The "Parcel audit" page."""

    name = "cbm_audit"
    fastapi_apps = [{"app": app, "url_prefix": "/cbm-audit", "name": "CbM parcel audit"}]
    external_views = [{"name": "Parcel audit", "href": "/cbm-audit/", "url_route": "cbm-audit",
                       "destination": "nav", "category": "browse"}]
