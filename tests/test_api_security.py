"""Security of the API: the authorisation matrix, hostile parameters, the reader role and the secrets table."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pyproj
import pytest
from api_world import X0, Y0, World
from fastapi.testclient import TestClient

from cbm_tasks.api import auth
from cbm_tasks.api.app import create_app
from cbm_tasks.api.context import ApiConfig, ApiContext
from cbm_tasks.errors import BadInputError, NotFoundError


@pytest.fixture(scope="module")
def client(api_client: TestClient) -> TestClient:
    return api_client


def _urls(aoi: str, product_id: int) -> list[str]:
    """Every authenticated route, for parcel 1 of *aoi*'s 2018 set."""
    q = f"aoi={aoi}&year=2018"
    return [
        f"/v1/aois/{aoi}/2018/parcels/1",
        f"/v1/aois/{aoi}/2018/parcels?parcel_id=x",
        f"/v1/aois/{aoi}/2018/parcels?lon=3&lat=51",
        f"/v1/aois/{aoi}/2018/parcels/1/peers",
        f"/v1/aois/{aoi}/2018/parcels/1/timeseries",
        f"/v1/aois/{aoi}/2018/parcels/1/markers",
        f"/v1/aois/{aoi}/2018/parcels/1/traffic-lights",
        f"/v1/aois/{aoi}/2018/traffic-lights",
        f"/v1/aois/{aoi}/2018/parcels/1/chip?product_id={product_id}",
        f"/v1/aois/{aoi}/2018/parcels/1/chips?start=2018-04-01&end=2018-04-30",
        f"/query/parcelByID?{q}&pid=1",
        f"/query/parcelByLocation?parcels={aoi}2018&lon=3&lat=51",
        f"/query/parcelsByPolygon?{q}&polygon=3_51-3.001_51-3.001_51.001-3_51.001",
        f"/query/parcelPeers?{q}&pid=1",
        f"/query/parcelTimeSeries?{q}&pid=1&tstype=s2",
        f"/query/markers?{q}&pid=1",
        f"/query/info?aoi={aoi}",
        f"/query/rawChipByParcelID?{q}&pid=1&start_date=2018-04-01&end_date=2018-04-30&band=SCL",
        f"/query/chipsByParcelID?{q}&pid=1&start_date=2018-04-01&end_date=2018-04-30",
        f"/ogc/collections/{aoi}_2018",
        f"/ogc/collections/{aoi}_2018/items",
        f"/ogc/collections/{aoi}_2018/items/1",
    ]


def test_authorisation_matrix(client: TestClient, api_world: World) -> None:
    grants = {"ann": {"alpha"}, "bob": {"beta"}, "eve": set(), "root": {"alpha", "beta"}}
    products = {"alpha": api_world.s2_products[0], "beta": api_world.beta_products[0], "gamma": 1}
    for user, granted in grants.items():
        for aoi in ("alpha", "beta", "gamma"):
            for url in _urls(aoi, products[aoi]):
                response = client.get(url, auth=api_world.basic(user))
                if aoi in granted:
                    assert response.status_code == 200, (user, url, response.text)
                else:  # also for the AOI that does not exist: its existence is not revealed
                    assert response.status_code == 403, (user, url, response.text)
                    assert response.json()["error"] == "forbidden"
                    assert "secret reason" not in response.text
    limiter = client.app.state.cbm.logins  # type: ignore[attr-defined]
    for url in _urls("alpha", products["alpha"]):  # a wrong secret costs a full scrypt check: once per route
        limiter.clear()  # 18 wrong secrets of ann from one address: the limit is test_api_login_limit's subject
        assert client.get(url).status_code == 401, url
        assert client.get(url, auth=("ann", "not-the-secret")).status_code == 401, url
    limiter.clear()
    listed = client.get("/ogc/collections", auth=api_world.basic("ann")).json()["collections"]
    assert [c["id"] for c in listed] == ["alpha_2018"]
    assert client.get("/ogc/collections", auth=api_world.basic("eve")).json()["collections"] == []
    assert [s["aoi"] for s in client.get("/v1/aois", auth=api_world.basic("bob")).json()["parcel_sets"]] == ["beta"]


ALPHA_LON, ALPHA_LAT = (str(v) for v in pyproj.Transformer.from_crs(32631, 4326, always_xy=True).transform(
    X0 + 50, Y0 + 50))  # parcel 1
HOSTILE = ["1 OR 1=1", "1'; DROP TABLE cbm.parcel; --", "alpha' OR '1'='1", "../../etc/passwd", "%00", "\u202e",
           "A" * 5000, "-1", "1e309", "NaN", "{\"type\": \"Point\"}", "POLYGON((0 0))", "$(reboot)", "<script>"]


def _routes(products: dict[str, int]) -> list[tuple[str, dict[str, str]]]:
    """(path template with {aoi}, query parameters) of each route, with valid values for alpha."""
    p = products["alpha"]
    return [
        ("/v1/aois/{aoi}/{year}/parcels/{key}", {"geometry": "wgs84"}),
        ("/v1/aois/{aoi}/{year}/parcels", {"parcel_id": "A-1", "limit": "10", "offset": "0"}),
        ("/v1/aois/{aoi}/{year}/parcels", {"lon": "3", "lat": "51"}),
        ("/v1/aois/{aoi}/{year}/parcels", {"polygon": "POLYGON((3 51, 3.001 51, 3.001 51.001, 3 51))"}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/peers", {"distance_m": "100", "limit": "5"}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/timeseries",
         {"source": "s2", "band": "B04", "start": "2018-01-01", "end": "2018-12-31", "format": "json"}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/chip",
         {"product_id": str(p), "band": "B04", "size": "32", "buffer_m": "10", "format": "png"}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/chips", {"start": "2018-04-01", "end": "2018-04-30", "source": "s2"}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/mowing-falls", {}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/harvest-cycles", {}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/bare-soil", {}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/emergence", {}),
        ("/v1/aois/{aoi}/{year}/parcels/{key}/traffic-lights/{scheme}/explanation", {}),
        ("/query/parcelByID", {"aoi": "alpha", "year": "2018", "pid": "1", "withGeometry": "True"}),
        ("/query/parcelByLocation", {"parcels": "alpha2018", "lon": "3", "lat": "51"}),
        ("/query/parcelsByPolygon", {"aoi": "alpha", "year": "2018", "polygon": "3_51-3.001_51-3.001_51.001"}),
        ("/query/parcelPeers", {"aoi": "alpha", "year": "2018", "pid": "1", "distance": "100", "max": "3"}),
        ("/query/parcelTimeSeries", {"aoi": "alpha", "year": "2018", "pid": "1", "tstype": "s2", "band": "B4",
                                     "tsformat": "json", "scl": "True", "ref": "True"}),
        ("/query/markers", {"aoi": "alpha", "year": "2018", "pid": "1"}),
        ("/query/info", {"aoi": "alpha"}),
        ("/query/rawChipByLocation", {"lon": ALPHA_LON, "lat": ALPHA_LAT, "start_date": "2018-04-01",
                                      "end_date": "2018-04-30", "band": "B4", "chipsize": "640", "plevel": "LEVEL2A"}),
        ("/query/rawChipByParcelID", {"aoi": "alpha", "year": "2018", "pid": "1", "start_date": "2018-04-01",
                                      "end_date": "2018-04-30", "band": "SCL", "chipsize": "640"}),
        ("/query/chipsByLocation", {"lon": ALPHA_LON, "lat": ALPHA_LAT, "start_date": "2018-04-01",
                                    "end_date": "2018-04-30", "bands": "B8_B4_B3", "lut": "2_98", "chipsize": "640"}),
        ("/ogc/collections/{aoi}_{year}/items", {"bbox": "3,51,3.1,51.1", "limit": "2", "offset": "0",
                                                  "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}),
    ]


def test_hostile_values_in_every_parameter(client: TestClient, api_world: World, db_url: str) -> None:
    ann = api_world.basic("ann")
    with psycopg.connect(api_world.db_url) as conn:
        before = conn.execute("SELECT (SELECT count(*) FROM cbm.parcel), (SELECT count(*) FROM cbm.parcel_obs), "
                              "(SELECT count(*) FROM cbm.api_user)").fetchone()
    path_values = {"aoi": "alpha", "year": "2018", "key": "1", "scheme": "grassland_mowing"}
    n_requests = 0
    for template, params in _routes({"alpha": api_world.s2_products[0]}):
        assert client.get(template.format(**path_values), params=params, auth=ann).status_code == 200, template
        targets = [("path", name) for name in path_values if "{" + name + "}" in template]
        targets += [("query", name) for name in params]
        for kind, name in targets:
            for value in HOSTILE:
                path = dict(path_values)
                query = dict(params)
                if kind == "path":
                    path[name] = value
                else:
                    query[name] = value
                response = client.get(template.format(**path), params=query, auth=ann)
                n_requests += 1
                assert response.status_code in (200, 400, 403, 404, 422), (template, name, value, response.text)
                assert "Traceback" not in response.text and "psycopg" not in response.text
                if response.status_code >= 400:
                    assert response.json()["error"], (template, name, value)
                if kind == "query" and name == "parcel_id" and response.status_code == 200:
                    assert response.json()["parcels"] == [], value  # taken literally, matched nothing
    assert n_requests > 500
    with psycopg.connect(api_world.db_url) as conn:
        after = conn.execute("SELECT (SELECT count(*) FROM cbm.parcel), (SELECT count(*) FROM cbm.parcel_obs), "
                             "(SELECT count(*) FROM cbm.api_user)").fetchone()
    assert after == before


def test_hostile_chip_links_are_refused(client: TestClient, api_world: World) -> None:
    for value in [*HOSTILE, "a.b", "e30.", ".AAAA"]:
        for url in (f"/dump/{value}/x.SCL.tif", f"/dump/AAAA.AAAA/{value}"):
            response = client.get(url)  # no credentials: a link is its own proof, and these prove nothing
            assert response.status_code in (404, 422), (url, response.text)
            assert "Traceback" not in response.text and "psycopg" not in response.text


def test_reader_connections_cannot_read_secrets_but_can_authenticate(api_world: World) -> None:
    context = ApiContext(ApiConfig(dsn=api_world.db_url))
    try:
        with context.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("cbm_reader",)
            for table in ("cbm.api_user", "cbm.api_grant", "cbm.api_link_key"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT * FROM {table}")  # noqa: S608 - constant names
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO cbm.aoi (name) VALUES ('zzz')")
            principal = auth.authenticate(conn, "ann", api_world.secrets["ann"])
            assert principal is not None and principal.aois == frozenset({"alpha"})
            assert auth.authenticate(conn, "ann", api_world.secrets["bob"]) is None
            assert auth.authenticate(conn, "nobody", "whatever") is None
            salt_known = conn.execute("SELECT salt FROM cbm.api_salt('ann', 'scrypt:n=16384,r=8,p=1')").fetchone()
            salt_unknown = conn.execute("SELECT salt FROM cbm.api_salt('nobody', 'scrypt:n=16384,r=8,p=1')").fetchone()
            assert salt_known is not None and salt_unknown is not None and len(salt_unknown[0]) == 16
    finally:
        context.close()


def test_stored_secret_is_a_salted_scrypt_hash(conn: psycopg.Connection) -> None:
    first = auth.add_user(conn, "carol", secret="correct horse battery")
    second = auth.add_user(conn, "dave", secret="correct horse battery")
    assert first == second == "correct horse battery"
    rows = conn.execute("SELECT name, kdf, salt, secret_hash FROM cbm.api_user ORDER BY name").fetchall()
    (_, kdf, salt1, hash1), (_, _, salt2, hash2) = rows
    assert kdf == auth.DEFAULT_KDF and salt1 != salt2 and hash1 != hash2
    assert bytes(hash1) == auth.stretch("correct horse battery", bytes(salt1))
    assert b"correct" not in bytes(hash1)
    with pytest.raises(BadInputError, match="exists already"):
        auth.add_user(conn, "carol")
    with pytest.raises(BadInputError, match="API user name"):
        auth.add_user(conn, "Robert'); DROP TABLE cbm.api_user;--")
    with pytest.raises(BadInputError, match="12"):
        auth.add_user(conn, "short", secret="abc")
    with pytest.raises(NotFoundError, match="no AOI 'nowhere'"):
        auth.grant(conn, "carol", "nowhere")
    auth.remove_user(conn, "dave")
    with pytest.raises(NotFoundError, match="no API user 'dave'"):
        auth.remove_user(conn, "dave")


def test_revoked_grant_stops_working_after_the_cache_ttl(api_world: World, conn: psycopg.Connection) -> None:
    from api_world import build_world  # a private world: this test changes grants

    world = build_world(conn, api_world.store_root.parent / "revoke_store")
    db_url = conn.info.dsn
    app = create_app(ApiConfig(dsn=db_url, auth_cache_ttl_s=0))
    with TestClient(app) as client:
        assert client.get("/v1/aois/alpha/2018/parcels/1", auth=world.basic("ann")).status_code == 200
        auth.grant(conn, "ann", "alpha", revoke=True)
        assert client.get("/v1/aois/alpha/2018/parcels/1", auth=world.basic("ann")).status_code == 403
        auth.remove_user(conn, "ann")
        assert client.get("/v1/aois/alpha/2018/parcels/1", auth=world.basic("ann")).status_code == 401


def test_demo_api_user_is_made_once_and_its_example_works(conn: psycopg.Connection, tmp_path: Path) -> None:
    from cbm_tasks.aoi import ensure_aoi
    from cbm_tasks.demo.api_access import api_lines

    ensure_aoi(conn, "demo")
    conn.commit()
    secret_file = tmp_path / "api_demo_secret"
    first = api_lines(conn, airflow_url="http://127.0.0.1:8080", aoi="demo", year=2018, secret_file=secret_file)
    again = api_lines(conn, airflow_url="http://127.0.0.1:8080", aoi="demo", year=2018, secret_file=secret_file)
    assert first == again and secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    assert f"curl -u demo:{secret} 'http://127.0.0.1:8080/cbm/v1/aois/demo/2018/parcels/1/timeseries" in first[2]
    principal = auth.authenticate(conn, "demo", secret)
    assert principal is not None and principal.aois == frozenset({"demo"})
    secret_file.unlink()  # lost file: a new secret, the old one stops working
    api_lines(conn, airflow_url="http://127.0.0.1:8080", aoi="demo", year=2018, secret_file=secret_file)
    assert auth.authenticate(conn, "demo", secret) is None
