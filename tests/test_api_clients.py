"""Real clients against the API served by ``cbm api serve``: a JRC-style notebook (requests + pandas)
and GDAL's OGC API - Features driver (ogrinfo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
from api_world import P2_LAT, P2_LON, S2_DATES, X0, Y0, World
from shapely.geometry import box

from cbm_tasks.ops.api_process import serve_standalone

NOTEBOOK = Path(__file__).parent / "notebooks" / "jrc_style_notebook.py"


@pytest.fixture(scope="module")
def api_url(api_world: World) -> Iterator[str]:
    with serve_standalone(api_world.db_url, store_root=api_world.store_root) as url:
        yield url


def test_jrc_style_notebook_runs_unchanged(api_url: str, api_world: World) -> None:
    lon, lat = P2_LON, P2_LAT
    env = os.environ | {"API_URL": f"{api_url}", "API_USER": "ann", "API_PASS": api_world.secrets["ann"],
                        "AOI": "alpha", "YEAR": "2018", "LON": str(lon), "LAT": str(lat)}
    result = subprocess.run([sys.executable, str(NOTEBOOK)], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    lines = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines()}
    assert lines["info"] == "info ['alpha'] ['s2', 'bs']"
    assert lines["parcel"] == "parcel 2 grassland 201 10000 32631"
    assert lines["geometry"] == "geometry MultiPolygon 5"
    assert lines["byid"].startswith("byid ['ogc_fid', 'pid', 'cropname', 'cropcode', 'srid', 'area', 'clon', 'clat']")
    assert lines["newer"] == "newer True True"
    assert lines["polygon"] == "polygon [1, 2, 3]"
    assert lines["peers"] == "peers [1, 3, 6] [10, 10, 340]"
    # 3 dates x 10 bands... of which the world has B2 B3 B4 B8; NDVI from the stored means
    # 3 dates x (4 bands + JRC's SC row of the scene classification)
    assert lines["s2"].startswith("s2 15 ['B02', 'B03', 'B04', 'B08', 'SC'] ndvi [")
    assert lines["clouds"] == "clouds 3 [0] S2_alpha_20180405 {'4': 30, '5': 10}"
    assert lines["b8"] == "b8 3" and lines["csv"] == "csv 15"
    assert lines["bs"] == "bs 4 ['VHb', 'VVb'] 0.05"
    assert lines["scl"] == "scl 3 ['SC'] 4.25"
    assert lines["markers"] == "markers ['mowing', 'mowing'] ['2018-05-01', '2018-06-01'] [9, 14]"
    # the SCL classes under parcel 2 in each raw chip: those of the product's own raster, counted here apart
    expected = [_classes_under(api_world.store_root / f"S2_alpha_{d:%Y%m%d}_SCL.tif", 2) for d in S2_DATES[:2]]
    assert lines["rawchips"] == f"rawchips {[f'{d:%Y%m%dT%H%M%S}' for d in S2_DATES[:2]]} {expected}"
    assert all(sum(h.values()) >= 20 and set(h) <= {4, 5} for h in expected)  # 100 m x 100 m of 20 m pixels


def _classes_under(scl_file: Path, key: int) -> dict[int, int]:
    with rasterio.open(scl_file) as src:
        data, transform = src.read(1), src.transform
    parcel = box(X0 + (key - 1) * 110, Y0, X0 + (key - 1) * 110 + 100, Y0 + 100)
    inside = rasterio.features.geometry_mask([parcel], out_shape=data.shape, transform=transform, invert=True)
    classes, counts = np.unique(data[inside & (data != 0)], return_counts=True)
    return {int(k): int(n) for k, n in zip(classes, counts, strict=True)}


def _ogrinfo(args: list[str], user: str, secret: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"GDAL_HTTP_AUTH": "BASIC", "GDAL_HTTP_USERPWD": f"{user}:{secret}",
                        "GDAL_HTTP_TIMEOUT": "30", "CPL_DEBUG": "OFF"}
    return subprocess.run(["ogrinfo", "-ro", *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_gdal_reads_the_parcels_with_their_lights(api_url: str, api_world: World) -> None:
    secret = api_world.secrets["ann"]
    listing = _ogrinfo([f"OAPIF:{api_url}/ogc"], "ann", secret)
    assert listing.returncode == 0, listing.stderr
    assert "alpha_2018" in listing.stdout and "beta_2018" not in listing.stdout
    features = _ogrinfo(["-al", "-q", f"OAPIF:{api_url}/ogc/collections/alpha_2018"], "ann", secret)
    assert features.returncode == 0, features.stderr
    text = features.stdout
    assert text.count("OGRFeature(") == 6
    assert "traffic_light (String) = yellow" in text  # parcel 1: worst of green and yellow
    assert "traffic_light (String) = red" in text and "parcel_id (String) = A-6" in text
    assert "BISS: yellow (too few cloud-free images); ECO-MOW: green (mowing detected)" in text
    summary = _ogrinfo(["-so", "-al", f"OAPIF:{api_url}/ogc/collections/alpha_2018"], "ann", secret)
    assert "Feature Count: 6" in summary.stdout
    paged = _ogrinfo(["-al", "-q", "-oo", "PAGE_SIZE=2", f"OAPIF:{api_url}/ogc/collections/alpha_2018"], "ann",
                     secret)
    assert paged.stdout.count("OGRFeature(") == 6  # three pages through the next links
    other = _ogrinfo(["-so", "-al", f"OAPIF:{api_url}/ogc/collections/beta_2018"], "ann", secret)
    assert other.returncode != 0 and "HTTP error code : 403" in other.stderr and "OGRFeature" not in other.stdout
    wrong = _ogrinfo([f"OAPIF:{api_url}/ogc"], "ann", "wrong-secret")
    assert wrong.returncode != 0 and "HTTP error code : 401" in wrong.stderr


def test_native_crs_and_bbox(api_url: str, api_world: World) -> None:
    import requests

    auth = ("ann", api_world.secrets["ann"])
    native = "http://www.opengis.net/def/crs/EPSG/0/32631"
    response = requests.get(f"{api_url}/ogc/collections/alpha_2018/items", auth=auth, timeout=30,
                            params={"crs": native, "bbox-crs": native, "bbox": f"{X0},{Y0},{X0 + 150},{Y0 + 50}"})
    assert response.status_code == 200 and response.headers["content-crs"] == f"<{native}>"
    body = response.json()
    assert [f["id"] for f in body["features"]] == [1, 2] and body["numberMatched"] == 2
    ring = body["features"][0]["geometry"]["coordinates"][0][0]
    assert min(x for x, _ in ring) == pytest.approx(X0) and min(y for _, y in ring) == pytest.approx(Y0)
    item = requests.get(f"{api_url}/ogc/collections/alpha_2018/items/2", auth=auth, timeout=30)
    assert item.headers["content-type"] == "application/geo+json"
    assert json.loads(item.text)["properties"]["traffic_light"] == "red"
