"""The demo's REST API user and the lines ``make demo`` prints about the API.

User ``demo`` is granted the demo AOI. Its secret is kept in ``<AIRFLOW_HOME>/api_demo_secret``
(mode 0600) so that running the demo again prints the same working example; when the file is
gone the user is made again with a new secret.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from cbm_tasks.api import auth

__all__ = ["DEMO_USER", "api_lines"]

DEMO_USER = "demo"


def _secret(conn: psycopg.Connection, aoi: str, secret_file: Path) -> str:
    known = {user.name: user for user in auth.list_users(conn)}
    if DEMO_USER in known and secret_file.exists():
        auth.grant(conn, DEMO_USER, aoi)
        return secret_file.read_text().strip()
    if DEMO_USER in known:
        auth.remove_user(conn, DEMO_USER)
    secret = auth.add_user(conn, DEMO_USER, aois=(aoi,))
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def api_lines(conn: psycopg.Connection, *, airflow_url: str, aoi: str, year: int, secret_file: Path) -> list[str]:
    """Make sure the demo API user exists; return the summary lines with the base URL and curl examples."""
    secret = _secret(conn, aoi, secret_file)
    base = f"{airflow_url}/cbm"
    row = conn.execute(
        "SELECT p.parcel_key, p.parcel_id FROM cbm.parcel p JOIN cbm.parcel_set s USING (parcel_set_id) "
        "JOIN cbm.aoi a USING (aoi_id) WHERE a.name = %s AND s.year = %s ORDER BY p.parcel_key LIMIT 1",
        (aoi, year),
    ).fetchone()
    key = row[0] if row else 1
    return [
        f"REST API           {base}  (OpenAPI page {base}/docs; the same app standalone: cbm api serve)",
        f"  user             {DEMO_USER} / {secret}  (stored in {secret_file})",
        f"  time series      curl -u {DEMO_USER}:{secret} "
        f"'{base}/v1/aois/{aoi}/{year}/parcels/{key}/timeseries?source=s2&band=B04'",
        f"  JRC style        curl -u {DEMO_USER}:{secret} "
        f"'{base}/query/parcelTimeSeries?aoi={aoi}&year={year}&pid={key}&tstype=s2&band=B04'",
        f"  JRC markers      curl -u {DEMO_USER}:{secret} '{base}/query/markers?aoi={aoi}&year={year}&pid={key}'",
        f"  JRC info page    {base}/query/info",
        f"  JRC raw chips    curl -u {DEMO_USER}:{secret} '{base}/query/rawChipByParcelID?aoi={aoi}&year={year}"
        f"&pid={key}&start_date={year}-01-01&end_date={year}-12-31&band=SCL'  (then GET {base}<chip>, no login)",
        f"  JRC chips page   {base}/query/chipsByParcelID?aoi={aoi}&year={year}&pid={key}&start_date={year}-06-01"
        f"&end_date={year}-06-30  (a browser, user {DEMO_USER})",
        f"  QGIS / GDAL      OGC API - Features at {base}/ogc (HTTP Basic, user {DEMO_USER})",
    ]
