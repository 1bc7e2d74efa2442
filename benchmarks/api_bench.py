"""REST API load: one parcel's season time series, standalone and inside the Airflow api-server.

Builds a throw-away database in the project-local cluster: an AOI of ``--parcels`` parcels
(100 m squares, EPSG:32631) with a season of data, ``--s2`` Sentinel-2 images (10 bands) and
``--bs`` CARD-BS images (VV, VH), every parcel in every image (rows written as the extraction
writes them). Then serves the API twice on 127.0.0.1, ``cbm api serve`` (uvicorn, one process)
and the real Airflow api-server with plugins/cbm_api_plugin.py (only the api-server runs), and
drives each with closed-loop clients (aiohttp, one event loop in a separate process), 1 and 50
at a time, for ``--seconds`` each: ``GET /v1/aois/bench/2018/parcels/{random key}/timeseries?source=s2``
with HTTP Basic. Prints requests/s, p50 and p99 latency, and, as the floor, the same query
run directly with psycopg. Everything it made is removed at the end. Usage:

    .venv/bin/python benchmarks/api_bench.py                       # 100,000 parcels, 24 + 24 images
    .venv/bin/python benchmarks/api_bench.py --parcels 20000 --seconds 5 --no-airflow
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import psycopg

from cbm_tasks import db
from cbm_tasks.aoi import ensure_aoi
from cbm_tasks.api import auth, queries
from cbm_tasks.api.validation import source
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.ops import airflow_ctl, api_process, cluster, settings
from cbm_tasks.timeseries import write as obs

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
AOI, YEAR = "bench", 2018


def _build(url: str, n_parcels: int, n_s2: int, n_bs: int) -> tuple[str, float]:
    """Write the bench AOI; return (the user's secret, seconds)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(42)
    with db.connect(url) as conn:
        db.migrate(conn)
        aoi_id = ensure_aoi(conn, AOI)
        set_id = conn.execute(
            "INSERT INTO cbm.parcel_set (aoi_id, year, srid, source_file, n_parcels, extent) VALUES "
            "(%s, %s, 32631, 'api_bench', %s, ST_Transform(ST_MakeEnvelope(500000, 5600000, 535000, 5635000, 32631), "
            "4326)) RETURNING parcel_set_id", (aoi_id, YEAR, n_parcels)).fetchone()[0]
        conn.execute(
            "INSERT INTO cbm.parcel (parcel_set_id, parcel_key, parcel_id, crop_code, crop_name, area_m2, geom) "
            "SELECT %(s)s, k, 'P' || k, (k %% 7)::text, 'crop ' || (k %% 7), 10000, "
            "ST_Multi(ST_MakeEnvelope(500000 + (k %% 316) * 110, 5600000 + (k / 316) * 110, "
            "500100 + (k %% 316) * 110, 5600100 + (k / 316) * 110, 32631)) FROM generate_series(1, %(n)s) k",
            {"s": set_id, "n": n_parcels})
        conn.commit()
        obs.ensure_partitions(conn, set_id)
        start = datetime(2018, 4, 1, 10, 50, tzinfo=UTC)
        products = [Product(uid=f"api-bench-s2-{i}", name=f"s2 {i}", catalogue="file", collection="SENTINEL-2",
                            product_type="S2MSI2A", acquired_at=start + timedelta(days=7 * i), location="/dev/null")
                    for i in range(n_s2)]
        products += [Product(uid=f"api-bench-bs-{i}", name=f"bs {i}", catalogue="file", collection="SENTINEL-1",
                             product_type="CARD-BS", acquired_at=start + timedelta(days=7 * i, hours=7),
                             location="/dev/null") for i in range(n_bs)]
        registry.register(conn, products, aoi=AOI)
        ids = [r[0] for r in conn.execute("SELECT product_id, product_type FROM cbm.product "
                                          "WHERE uid LIKE 'api-bench-%%' ORDER BY product_id").fetchall()]
        keys = np.arange(1, n_parcels + 1, dtype=np.int32)
        for i, product_id in enumerate(ids):
            bands = S2_BANDS if i < n_s2 else ("VV", "VH")
            stats = rng.uniform(0.0, 0.6, size=(n_parcels, 8 * len(bands))).astype(np.float32)
            stats[:, 0::8] = 100
            obs.replace_image_stats(conn, set_id, product_id, obs.ImageStats(bands, keys, stats),
                                    parcel_set_version=1, params={}, seconds=0.0)
        conn.execute("ANALYZE")
        conn.commit()
        secret = auth.add_user(conn, "bench", aois=(AOI,))
    return secret, time.perf_counter() - t0


@contextmanager
def _in_airflow(db_url: str, home: Path) -> Iterator[str]:
    base = airflow_ctl.default_config(port=api_process.free_port())
    cfg = dataclasses.replace(base, home=home, metadata_db=f"airflow_api_bench_{os.getpid()}", data_url=db_url,
                              store_root=home / "store")
    try:
        airflow_ctl.prepare(cfg)  # metadata database: created and migrated (~1 min)
        with api_process.serve_in_airflow(cfg) as url:
            yield url
    finally:
        cluster.drop_database(cfg.cluster, cfg.metadata_db)


async def _drive(base: str, user: str, secret: str, n_parcels: int, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    auth_header = aiohttp.BasicAuth(user, secret)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, auth=auth_header) as session:
        async with session.get(f"{base}/v1/aois/{AOI}/{YEAR}/parcels/1/timeseries?source=s2") as first:
            assert first.status == 200, await first.text()  # noqa: S101 - benchmark precondition
            assert len((await first.json())["rows"]) > 0  # noqa: S101
        deadline = time.perf_counter() + seconds
        rng = random.Random(7)  # noqa: S311 - parcel keys, not secrets

        async def client() -> None:
            while time.perf_counter() < deadline:
                key = rng.randint(1, n_parcels)
                t0 = time.perf_counter()
                async with session.get(f"{base}/v1/aois/{AOI}/{YEAR}/parcels/{key}/timeseries?source=s2") as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"HTTP {answer.status} for parcel {key}")
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def _drive_process(args: tuple[str, str, str, int, int, float]) -> list[float]:
    return asyncio.run(_drive(*args))


def _report(label: str, clients: int, latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
    rps = len(ordered) / seconds
    print(f"{label:<22} clients={clients:<3} requests={len(ordered):<6} req/s={rps:8.1f} "
          f"p50={p50:7.1f} ms  p99={p99:7.1f} ms")
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def _direct(db_url: str, n_parcels: int, n: int = 300) -> float:
    """Median ms of the time-series query itself (psycopg, as cbm_reader), the floor under the API."""
    principal = auth.Principal("bench", 0, frozenset({AOI}))
    rng = random.Random(3)  # noqa: S311
    times = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET ROLE cbm_reader")
        ps = queries.parcel_set(conn, principal, AOI, YEAR)
        for _ in range(n):
            t0 = time.perf_counter()
            queries.time_series(conn, ps, rng.randint(1, n_parcels), source("s2"))
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parcels", type=int, default=100_000)
    parser.add_argument("--s2", type=int, default=24, help="Sentinel-2 images in the season")
    parser.add_argument("--bs", type=int, default=24, help="CARD-BS images in the season")
    parser.add_argument("--seconds", type=float, default=10.0, help="per server and concurrency")
    parser.add_argument("--clients", default="1,50", help="concurrency levels")
    parser.add_argument("--no-airflow", action="store_true", help="skip the Airflow api-server")
    args = parser.parse_args()

    cfg = settings.local_cluster()
    cluster.start(cfg)
    name = f"cbm_api_bench_{uuid.uuid4().hex[:8]}"
    cluster.ensure_database(cfg, name)
    db_url = cfg.url(name)
    results: dict[str, dict[str, float]] = {}
    try:
        secret, seconds = _build(db_url, args.parcels, args.s2, args.bs)
        print(f"built AOI {AOI}: {args.parcels} parcels, {args.s2} S2 + {args.bs} CARD-BS images "
              f"({args.parcels * (args.s2 + args.bs)} parcel_obs rows) in {seconds:.0f} s")
        floor = _direct(db_url, args.parcels)
        print(f"{'query only (psycopg)':<22} p50={floor:.2f} ms (one parcel, {args.s2} dates x 10 bands)")
        servers = [("standalone (uvicorn)", lambda: api_process.serve_standalone(db_url))]
        if not args.no_airflow:
            home = Path(tempfile.mkdtemp(prefix="cbm-api-bench-"))
            servers.append(("Airflow api-server", lambda: _in_airflow(db_url, home)))
        context = multiprocessing.get_context("spawn")  # the load generator has its own interpreter
        for label, server in servers:
            with server() as base:
                for clients in [int(c) for c in args.clients.split(",")]:
                    with context.Pool(1) as pool:
                        latencies = pool.apply(_drive_process,
                                               ((base, "bench", secret, args.parcels, clients, args.seconds),))
                    results[f"{label} x{clients}"] = _report(label, clients, latencies, args.seconds)
        print(json.dumps({"date": date.today().isoformat(), "parcels": args.parcels, "results": results}))
    finally:
        cluster.drop_database(cfg, name)


if __name__ == "__main__":
    main()
