"""Orthophoto backgrounds (JRC's backgroundByLocation / ByParcelID): a GeoTIFF orthophoto and a TMS tile service
on 127.0.0.1, configured by name; the answer's URL fetched without login, as JRC's client does."""

from __future__ import annotations

import http.server
import io
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from api_world import P2_LAT, P2_LON, World, write_ortho
from fastapi.testclient import TestClient
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from cbm_tasks.api.app import create_app
from cbm_tasks.api.backgrounds import parse_backgrounds
from cbm_tasks.api.context import ApiConfig
from cbm_tasks.errors import ConfigError
from cbm_tasks.store import StoreConfig

LON, LAT = P2_LON, P2_LAT


def _tile() -> bytes:
    rgb = np.zeros((3, 256, 256), np.uint8)
    rgb[0], rgb[1], rgb[2] = 200, 120, 40
    with MemoryFile() as mem:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with mem.open(driver="PNG", width=256, height=256, count=3, dtype="uint8") as out:
                out.write(rgb)
        return bytes(mem.read())


@pytest.fixture(scope="module")
def tile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """A TMS service answering one orange tile for every z/x/y, and its GDAL WMS description."""
    tile, requests_seen = _tile(), []

    class Tiles(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the handler's protocol
            requests_seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(tile)))
            self.end_headers()
            self.wfile.write(tile)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    xml = tmp_path_factory.mktemp("tms") / "tiles.xml"
    xml.write_text(
        f'<GDAL_WMS><Service name="TMS"><ServerUrl>http://127.0.0.1:{server.server_address[1]}/${{z}}/${{x}}/${{y}}.png'
        "</ServerUrl></Service><DataWindow><UpperLeftX>-20037508.34</UpperLeftX><UpperLeftY>20037508.34</UpperLeftY>"
        "<LowerRightX>20037508.34</LowerRightX><LowerRightY>-20037508.34</LowerRightY><TileLevel>19</TileLevel>"
        "<TileCountX>1</TileCountX><TileCountY>1</TileCountY><YOrigin>top</YOrigin></DataWindow>"
        "<Projection>EPSG:3857</Projection><BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY>"
        "<BandsCount>3</BandsCount></GDAL_WMS>")
    yield xml, requests_seen
    server.shutdown()


@pytest.fixture(scope="module")
def ortho(api_world: World) -> Path:
    return write_ortho(api_world.store_root / "ortho.tif")


@pytest.fixture(scope="module")
def client(api_world: World, ortho: Path, tile_server: tuple[Path, list[str]]) -> Iterator[TestClient]:
    config = ApiConfig(dsn=api_world.db_url, store=StoreConfig(root=str(api_world.store_root)),
                       backgrounds={"ortho": str(ortho), "tiles": str(tile_server[0])})
    with TestClient(create_app(config)) as test_client:
        yield test_client


def _open(data: bytes) -> tuple[np.ndarray, rasterio.Affine | None, int | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(io.BytesIO(data)) as image:
            return image.read(), image.transform, image.crs.to_epsg() if image.crs else None


def test_background_url_of_a_geotiff_orthophoto(client: TestClient, api_world: World) -> None:
    answer = client.get("/query/backgroundByLocation", auth=api_world.basic("ann"),
                        params={"lon": LON, "lat": LAT, "tms": "ortho", "chipsize": 100, "extend": 100,
                                "iformat": "tif"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    url = answer.text
    assert url.startswith("http://testserver/dump/") and url.endswith("/ortho.tif")
    values, transform, epsg = _open(client.get(url).content)  # no login, as JRC's client fetches it
    assert epsg == 32631 and values.shape == (3, 100, 100) and values.dtype == np.uint16
    assert transform is not None and transform.a == pytest.approx(1.0)
    # 100 m around parcel 2's centre at 1 m: the orthophoto's own pixels (column 310..409, row 200..299)
    assert abs(int(values[0, 50, 50]) - 360) <= 1 and abs(int(values[1, 50, 50]) - 250) <= 1
    page = client.get("/query/backgroundByParcelID", auth=api_world.basic("ann"),
                      params={"aoi": "alpha", "year": 2018, "pid": 2, "tms": "ORTHO", "extend": 300})
    assert page.headers["content-type"].startswith("text/html") and '<img src="http://testserver/dump/' in page.text
    png_url = page.text.split('<img src="')[1].split('"')[0].replace("&amp;", "&")
    rgba, _, _ = _open(client.get(png_url).content)
    assert rgba.shape == (4, 256, 256) and rgba[3].min() == 255  # 300 m inside the orthophoto: all opaque
    assert rgba[0, 128, 0] < rgba[0, 128, 255]  # red grows with the column: stretched 16-bit values


def test_background_from_a_tms_tile_service(client: TestClient, api_world: World,
                                            tile_server: tuple[Path, list[str]]) -> None:
    url = client.get("/query/backgroundByLocation", auth=api_world.basic("ann"),
                     params={"lon": LON, "lat": LAT, "tms": "tiles", "raw": "True"}).text
    assert url.endswith("/tiles.png")
    before = len(tile_server[1])
    rgba, _, _ = _open(client.get(url).content)
    assert len(tile_server[1]) > before  # the tiles were fetched from the service
    assert rgba.shape == (4, 256, 256)
    np.testing.assert_array_equal(rgba[:, 128, 128], [200, 120, 40, 255])


def test_info_page_lists_the_backgrounds_with_working_examples(client: TestClient, api_world: World) -> None:
    info = client.get("/query/info", auth=api_world.basic("ann")).json()
    assert info["helpers"]["backgrounds"] == ["ortho", "tiles"]
    example = info["aois"]["alpha"]["request_examples"]["backgroundByParcelID_ortho"]
    url = client.get(example.removeprefix("http://testserver"), auth=api_world.basic("ann")).text
    assert url.endswith("/ortho.png") and client.get(url).headers["content-type"] == "image/png"


def test_background_errors(client: TestClient, api_world: World) -> None:
    ann = api_world.basic("ann")
    unknown = client.get("/query/backgroundByLocation", params={"lon": LON, "lat": LAT, "tms": "google"}, auth=ann)
    assert unknown.status_code == 404 and unknown.json() == {}  # JRC's "no image", which its cbm client checks
    assert "configured: ortho, tiles" in unknown.headers["x-detail"]
    bob = client.get("/query/backgroundByLocation", params={"lon": LON, "lat": LAT, "tms": "ortho"},
                     auth=api_world.basic("bob"))
    assert bob.status_code == 404  # not where bob's parcels are: no proxy to the agency's imagery
    assert client.get("/query/backgroundByLocation", params={"lon": LON, "lat": LAT, "tms": "ortho"}).status_code == 401
    for bad in ({"tms": "../etc"}, {"tms": "ortho", "chipsize": 5000}, {"tms": "ortho", "extend": 0},
                {"tms": "ortho", "iformat": "jpg"}):
        assert client.get("/query/backgroundByLocation", params={"lon": LON, "lat": LAT, **bad},
                          auth=ann).status_code == 422, bad


def test_background_settings_are_checked() -> None:
    assert parse_backgrounds(None, where="x") == {} and parse_backgrounds(" ", where="x") == {}
    assert parse_backgrounds('{"Ortho": " /data/o.vrt "}', where="x") == {"ortho": "/data/o.vrt"}
    for text in ("[1]", "{", '{"a b": "x"}', '{"ok": ""}', '{"ok": 3}'):
        with pytest.raises(ConfigError, match="CBM_API_BACKGROUNDS"):
            parse_backgrounds(text, where="CBM_API_BACKGROUNDS")
