"""A small world for the API tests: two AOIs, parcels, images with known statistics, markers, lights, users.

Not a test module. ``build_world`` writes it into a fresh test database and small GeoTIFFs in a
folder (the object store of the image chips), and returns what the tests assert against.

AOI ``alpha`` 2018 (EPSG:32631): six 100 m x 100 m parcels in a row, keys 1..6, crop codes
grass (keys 1, 2, 3, 6) and maize (4, 5); three Sentinel-2 images (B02 B03 B04 B08 at 10 m,
SCL at 20 m) and two CARD-BS images. AOI ``beta`` 2018 (EPSG:31370): two parcels, one image.
Users: ``ann`` (alpha), ``bob`` (beta), ``eve`` (nothing), ``root`` (both).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from fastapi.testclient import TestClient
from psycopg import sql
from shapely.geometry import box
from test_extract_support import add_product, write_tif

from cbm_tasks import aoi as aoi_registry
from cbm_tasks.api import auth
from cbm_tasks.api.app import create_app
from cbm_tasks.api.context import ApiConfig
from cbm_tasks.ops import cluster
from cbm_tasks.store import StoreConfig
from cbm_tasks.timeseries import write as obs

X0, Y0 = 500_000.0, 5_650_000.0  # UTM 31N, West Flanders
P2_X, P2_Y = X0 + 160, Y0 + 50  # inside parcel 2 (its centre)
P2_LON, P2_LAT = pyproj.Transformer.from_crs(32631, 4326, always_xy=True).transform(P2_X, P2_Y)
S2_DATES = (datetime(2018, 4, 5, 10, 50, 31, tzinfo=UTC), datetime(2018, 5, 10, 10, 50, 31, tzinfo=UTC),
            datetime(2018, 6, 15, 10, 50, 31, tzinfo=UTC))
BS_DATES = (datetime(2018, 4, 7, 17, 30, tzinfo=UTC), datetime(2018, 5, 13, 17, 30, tzinfo=UTC))
S2_BANDS = ("B02", "B03", "B04", "B08")
CROPS = {1: "201", 2: "201", 3: "201", 4: "1100", 5: "1100", 6: "201"}


@dataclass
class World:
    """What build_world made: ids, secrets and the expected statistics."""

    store_root: Path
    db_url: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    s2_products: list[int] = field(default_factory=list)
    bs_products: list[int] = field(default_factory=list)
    beta_products: list[int] = field(default_factory=list)
    marker_run_id: int = 0

    def basic(self, user: str) -> tuple[str, str]:
        """HTTP Basic credentials of *user*."""
        return user, self.secrets[user]

    def bearer(self, user: str) -> dict[str, str]:
        """Authorization header with *user*'s bearer token."""
        return {"Authorization": f"Bearer {user}.{self.secrets[user]}"}


def s2_stats(key: int, date_index: int, band_index: int) -> list[float]:
    """The statistics stored for parcel *key*, image *date_index*, band *band_index* (count, mean, ...)."""
    mean = 0.01 * key + 0.1 * date_index + 0.001 * band_index
    return [100.0, mean, 0.01, mean - 0.02, mean + 0.03, mean - 0.01, mean, mean + 0.01]


def _parcel_set(conn: psycopg.Connection, aoi: str, year: int, srid: int,
                parcels: list[tuple[str, str, shapely.Geometry]]) -> int:
    with conn.transaction():
        aoi_id = aoi_registry.ensure_aoi(conn, aoi)
        row = conn.execute(
            "INSERT INTO cbm.parcel_set (aoi_id, year, srid, source_file, n_parcels, extent) VALUES "
            "(%s, %s, %s, 'test', %s, ST_Transform(ST_MakeEnvelope(%s, %s, %s, %s, %s), 4326)) "
            "RETURNING parcel_set_id",
            (aoi_id, year, srid, len(parcels), *shapely.MultiPolygon([g for _, _, g in parcels]).bounds, srid),
        ).fetchone()
        assert row is not None
        for key, (parcel_id, crop, geom) in enumerate(parcels, start=1):
            conn.execute(
                "INSERT INTO cbm.parcel (parcel_set_id, parcel_key, parcel_id, crop_code, crop_name, area_m2, geom) "
                "VALUES (%s, %s, %s, %s, %s, %s, ST_Multi(ST_GeomFromWKB(%s, %s)))",
                (row[0], key, parcel_id, crop, {"201": "grassland", "1100": "maize"}.get(crop, crop), geom.area,
                 shapely.to_wkb(geom), srid),
            )
        conn.execute("SELECT cbm.ensure_parcel_set_partitions(%s::smallint)", (row[0],))
    return int(row[0])


def _s2_image(folder: Path, name: str, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    transform10 = Affine(10, 0, X0 - 200, 0, -10, Y0 + 300)
    transform20 = Affine(20, 0, X0 - 200, 0, -20, Y0 + 300)
    dn = rng.integers(500, 3000, size=(4, 50, 100), dtype=np.uint16)
    dn[:, :3, :3] = 0  # a nodata corner
    ten = write_tif(folder / f"{name}_10m.tif", dn, transform=transform10, nodata=0)
    scl = write_tif(folder / f"{name}_SCL.tif", rng.integers(4, 6, size=(25, 50), dtype=np.uint8),
                    transform=transform20, nodata=0)
    bands: list[dict[str, object]] = [
        {"name": band, "href": str(ten), "band": i, "nodata": 0, "scale": 1e-4, "offset": 0}
        for i, band in enumerate(S2_BANDS, start=1)]
    bands.append({"name": "SCL", "href": str(scl), "band": 1, "nodata": 0, "categorical": True, "n_classes": 12})
    return bands


def build_world(conn: psycopg.Connection, store_root: Path) -> World:
    """Write the world into *conn*'s database and *store_root*; return it."""
    world = World(store_root)
    store_root.mkdir(parents=True, exist_ok=True)
    alpha = [(f"A-{k}", CROPS[k], box(X0 + (k - 1) * 110, Y0, X0 + (k - 1) * 110 + 100, Y0 + 100))
             for k in range(1, 7)]
    alpha_set = _parcel_set(conn, "alpha", 2018, 32631, alpha)
    # beta: Lambert 72 near Ghent; parcel ids with a slash, as Danish ones
    beta = [("B/1", "201", box(100_000, 190_000, 100_100, 190_100)),
            ("B/2", "201", box(100_200, 190_000, 100_300, 190_100))]
    beta_set = _parcel_set(conn, "beta", 2018, 31370, beta)

    for d, when in enumerate(S2_DATES):
        name = f"S2_alpha_{when:%Y%m%d}"
        bands = _s2_image(store_root, name, seed=d)
        pid = add_product(conn, aoi="alpha", name=name, location=str(store_root / name), acquired_at=when,
                          bands=bands)
        world.s2_products.append(pid)
        keys = np.arange(1, 7, dtype=np.int32)
        stats = np.array([[v for b in range(4) for v in s2_stats(int(k), d, b)] for k in keys], np.float32)
        scl_counts = np.zeros((6, 12), np.int32)
        scl_counts[:, 4] = 30 + d
        scl_counts[:, 5] = 10
        image = obs.ImageStats(S2_BANDS, keys, stats, (obs.ClassCountRows("SCL", keys, scl_counts),))
        obs.replace_image_stats(conn, alpha_set, pid, image, parcel_set_version=1, params={}, seconds=0.1)
    for d, when in enumerate(BS_DATES):
        name = f"BS_alpha_{when:%Y%m%d}"
        path = write_tif(store_root / f"{name}.tif",
                         np.full((2, 25, 50), 0.05 + d * 0.01, np.float32), nodata=None,
                         transform=Affine(20, 0, X0 - 200, 0, -20, Y0 + 300))
        pid = add_product(conn, aoi="alpha", name=name, location=str(path), acquired_at=when, product_type="CARD-BS",
                          bands=[{"name": "VV", "href": str(path), "band": 1},
                                 {"name": "VH", "href": str(path), "band": 2}])
        world.bs_products.append(pid)
        keys = np.arange(1, 7, dtype=np.int32)
        stats = np.tile(np.array([50, 0.05 + d * 0.01, 0.001, 0.04, 0.06, 0.045, 0.05, 0.055] * 2, np.float32),
                        (6, 1))
        obs.replace_image_stats(conn, alpha_set, pid, obs.ImageStats(("VV", "VH"), keys, stats),
                                parcel_set_version=1, params={}, seconds=0.1)
    beta_bands = _s2_image(store_root, "S2_beta", seed=9)
    pid = add_product(conn, aoi="beta", name="S2_beta", location=str(store_root / "S2_beta"),
                      acquired_at=S2_DATES[0], bands=beta_bands)
    world.beta_products.append(pid)
    keys = np.arange(1, 3, dtype=np.int32)
    stats = np.array([[v for b in range(4) for v in s2_stats(int(k), 0, b)] for k in keys], np.float32)
    obs.replace_image_stats(conn, beta_set, pid, obs.ImageStats(S2_BANDS, keys, stats), parcel_set_version=1,
                            params={}, seconds=0.1)

    with conn.transaction():
        run = conn.execute("INSERT INTO cbm.marker_run (parcel_set_id, marker, params, product_ids) "
                           "VALUES (%s, 'mowing', '{}', %s) RETURNING marker_run_id",
                           (alpha_set, world.s2_products)).fetchone()
        assert run is not None
        world.marker_run_id = int(run[0])
        conn.execute("INSERT INTO cbm.marker_event (marker_run_id, parcel_key, marker, seq, event_start, event_end, "
                     "value, confidence, evidence, start_product, end_product) VALUES (%s, 1, 'mowing', 1, "
                     "'2018-05-01', '2018-05-10', 0.3, 0.9, %s, %s, %s), (%s, 1, 'mowing', 2, '2018-06-01', "
                     "'2018-06-15', 0.2, 0.7, %s, NULL, NULL)",
                     (run[0], world.s2_products[:2], *world.s2_products[:2], run[0], world.s2_products[1:]))
        conn.execute("INSERT INTO cbm.traffic_light (parcel_set_id, parcel_key, scheme, colour, reason, "
                     "marker_run_ids, rule_id, event_marker, event_seq) VALUES "
                     "(%(s)s, 1, 'ECO-MOW', 'green', 'mowing detected', %(r)s, 'MOW-1', 'mowing', 1)",
                     {"s": alpha_set, "r": [run[0]]})
        conn.execute("INSERT INTO cbm.traffic_light (parcel_set_id, parcel_key, scheme, colour, reason, "
                     "marker_run_ids) VALUES "
                     "(%(s)s, 1, 'BISS', 'yellow', 'too few cloud-free images', %(r)s), "
                     "(%(s)s, 2, 'ECO-MOW', 'red', 'no mowing detected', %(r)s), "
                     "(%(s)s, 3, 'ECO-MOW', 'green', 'mowing detected', %(r)s)",
                     {"s": alpha_set, "r": [run[0]]})
        conn.execute("INSERT INTO cbm.traffic_light (parcel_set_id, parcel_key, scheme, colour, reason) "
                     "VALUES (%s, 1, 'ECO-MOW', 'red', 'beta secret reason')", (beta_set,))
    for user, aois in (("ann", ("alpha",)), ("bob", ("beta",)), ("eve", ()), ("root", ("alpha", "beta"))):
        world.secrets[user] = auth.add_user(conn, user, aois=aois)
    conn.commit()
    return world


def write_ortho(path: Path) -> Path:
    """A 1 m 16-bit orthophoto over alpha's parcels, red = column, green = row: where a pixel comes from shows."""
    rows, cols = np.mgrid[0:600, 0:900]
    values = np.stack([cols, rows, np.full_like(cols, 500)]).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=900, height=600, count=3, dtype="uint16", crs="EPSG:32631",
                       transform=Affine(1, 0, X0 - 200, 0, -1, Y0 + 300), nodata=0) as out:
        out.write(values)
    return path


@pytest.fixture(scope="module")
def api_world(pg_cluster: cluster.ClusterConfig, template_db: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The world in a database of its own, shared by the tests of one module (they only read it)."""
    name = f"cbm_test_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                        sql.Identifier(template_db)))
    url = pg_cluster.url(name)
    try:
        with psycopg.connect(url) as conn:
            world = build_world(conn, tmp_path_factory.mktemp("api_store"))
        world.db_url = url
        yield world
    finally:
        cluster.drop_database(pg_cluster, name)


@pytest.fixture(scope="module")
def api_client(api_world: World) -> Iterator[TestClient]:
    """The API application on the world, in process, with the world's files as the object store of the chips."""
    app = create_app(ApiConfig(dsn=api_world.db_url, store=StoreConfig(root=str(api_world.store_root))))
    with TestClient(app) as client:
        yield client
