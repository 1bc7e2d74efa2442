"""The API mounted in the real Airflow api-server by plugins/cbm_api_plugin.py, with its own authentication."""

from __future__ import annotations

import airflow_testenv  # noqa: F401 - before anything imports airflow
import requests
from api_server import serve_in_airflow
from api_world import World


def test_api_is_served_under_cbm_with_auth_enforced(api_world: World) -> None:
    with serve_in_airflow(api_world.db_url, api_world.store_root) as url:
        assert url.endswith("/cbm")
        assert requests.get(f"{url}/health", timeout=30).json() == {"status": "ok", "database": True}
        anonymous = requests.get(f"{url}/v1/aois/alpha/2018/parcels/1", timeout=30)
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
        assert requests.get(f"{url}/query/parcelByID?aoi=alpha&year=2018&pid=1", timeout=30).status_code == 401
        assert requests.get(f"{url}/ogc/collections", timeout=30).status_code == 401
        # Airflow's own login does not open it either: only the API's users do
        ann = ("ann", api_world.secrets["ann"])
        parcel = requests.get(f"{url}/v1/aois/alpha/2018/parcels/1", auth=ann, timeout=30)
        assert parcel.status_code == 200 and parcel.json()["parcel_id"] == "A-1"
        assert requests.get(f"{url}/v1/aois/beta/2018/parcels/1", auth=ann, timeout=30).status_code == 403
        series = requests.get(f"{url}/query/parcelTimeSeries?aoi=alpha&year=2018&pid=1&tstype=s2&band=B4",
                              auth=ann, timeout=30).json()
        assert series["band"] == ["B4", "B4", "B4"]
        chip = requests.get(f"{url}/v1/aois/alpha/2018/parcels/1/chip?product_id={api_world.s2_products[0]}",
                            auth=ann, timeout=30)
        assert chip.status_code == 200 and chip.content[:4] == b"\x89PNG"
        collections = requests.get(f"{url}/ogc/collections", auth=ann, timeout=30).json()
        items_link = collections["collections"][0]["links"][1]["href"]
        assert items_link == f"{url}/ogc/collections/alpha_2018/items"  # links carry the mount prefix
        assert requests.get(items_link, auth=ann, timeout=30).json()["numberMatched"] == 6
        assert requests.get(f"{url}/openapi.json", timeout=30).json()["info"]["title"] == "CbM REST API"
        info = requests.get(f"{url}/query/info", auth=ann, timeout=30).json()  # JRC's info page, its URLs under /cbm
        assert info["helpers"]["information_page"] == f"{url}/query/info"
        example = info["aois"]["alpha"]["request_examples"]["markers"]
        assert example == f"{url}/query/markers?aoi=alpha&year=2018&pid=1"
        assert requests.get(example, auth=ann, timeout=30).json()["marker"] == ["mowing", "mowing"]
        # JRC's raw chips: the answer's relative link, appended to the base URL as JRC's notebooks do, without login
        raw = requests.get(f"{url}/query/rawChipByParcelID?aoi=alpha&year=2018&pid=1&start_date=2018-04-01"
                           "&end_date=2018-04-30&band=SCL", auth=ann, timeout=30).json()
        tif = requests.get(f"{url}{raw['chips'][0]}", timeout=30)
        assert tif.status_code == 200 and tif.content[:4] in (b"II*\x00", b"MM\x00*")
