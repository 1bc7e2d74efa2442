"""Bytes per parcel-band observation: our time-series layout against the JRC long layout.

Ours (sql/006_timeseries.sql): one row per parcel and image with all bands in ``stats real[]``,
partitioned by parcel set, unique btree (parcel_key, product_id) + BRIN (product_id).
Peer (benchmarks/peer_jrc_signatures.sql): one row per parcel, image and band with eight
float4 statistics and a primary key (pid, obsid, band), as the JRC cbm signature tables.

Both are loaded in the same run with the same (seeded, random) statistics into a fresh database
of the project-local cluster, which is dropped at the end; sizes are pg_total_relation_size
(heap + TOAST + indexes) after VACUUM. Usage:

    .venv/bin/python benchmarks/storage_bench.py                     # 20,000 parcels x 12 images
    .venv/bin/python benchmarks/storage_bench.py --parcels 100000 --images 24 --bands 1,2,4,10
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg

from cbm_tasks import db
from cbm_tasks.aoi import ensure_aoi
from cbm_tasks.catalogue import registry
from cbm_tasks.catalogue.product import Product
from cbm_tasks.ops import cluster, settings
from cbm_tasks.timeseries import write as obs

PEER_DDL = Path(__file__).with_name("peer_jrc_signatures.sql")
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _random_stats(rng: np.random.Generator, n_parcels: int, n_bands: int) -> np.ndarray:
    stats = rng.uniform(0.0, 0.6, size=(n_parcels, 8 * n_bands)).astype(np.float32)
    stats[:, 0::8] = rng.integers(1, 2000, size=(n_parcels, n_bands))  # pixel counts
    return stats


def _setup(conn: psycopg.Connection, n_images: int, bands: list[int]) -> tuple[dict[int, int], list[int]]:
    """One parcel set per band count and n_images products; return ({bands: parcel_set_id}, product ids)."""
    aoi_id = ensure_aoi(conn, "storage_bench")
    sets = {}
    for year, n_bands in enumerate(bands, start=2020):
        sets[n_bands] = conn.execute(
            "INSERT INTO cbm.parcel_set (aoi_id, year, srid, source_file) VALUES (%s, %s, 32631, 'storage_bench') "
            "RETURNING parcel_set_id", (aoi_id, year)).fetchone()[0]
    conn.commit()
    when = datetime(2024, 5, 1, tzinfo=UTC)
    products = registry.register(conn, [
        Product(uid=f"storage-bench-{i}", name=f"image {i}", catalogue="file", collection="SENTINEL-2",
                product_type="S2MSI2A", acquired_at=when + timedelta(days=5 * i), location="/dev/null")
        for i in range(n_images)], aoi="storage_bench")
    for set_id in sets.values():
        obs.ensure_partitions(conn, set_id)
    return sets, products


def _size(conn: psycopg.Connection, relation: str) -> int:
    return int(conn.execute("SELECT pg_total_relation_size(%s::regclass)", (relation,)).fetchone()[0])


def _load_ours(conn: psycopg.Connection, set_id: int, products: list[int], n_parcels: int, n_bands: int,
               rng: np.random.Generator) -> float:
    keys = np.arange(1, n_parcels + 1, dtype=np.int32)
    t0 = time.perf_counter()
    for product_id in products:
        image = obs.ImageStats(bands=S2_BANDS[:n_bands], parcel_keys=keys,
                               stats=_random_stats(rng, n_parcels, n_bands))
        obs.replace_image_stats(conn, set_id, product_id, image, parcel_set_version=1, params={}, seconds=0.0)
    return time.perf_counter() - t0


def _load_peer(conn: psycopg.Connection, products: list[int], n_parcels: int, n_bands: int,
               rng: np.random.Generator) -> float:
    t0 = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("TRUNCATE bench_peer.signatures")
        for product_id in products:
            stats = _random_stats(rng, n_parcels, n_bands)
            with cur.copy("COPY bench_peer.signatures FROM STDIN") as copy:
                for row in range(n_parcels):
                    for band in range(n_bands):
                        copy.write_row((row + 1, product_id, S2_BANDS[band],
                                        *stats[row, 8 * band:8 * band + 8].tolist()))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parcels", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--bands", default="1,2,4,10", help="band counts per image to measure")
    args = parser.parse_args()
    bands = [int(b) for b in args.bands.split(",")]
    if not all(1 <= b <= len(S2_BANDS) for b in bands):
        parser.error(f"--bands must be within 1..{len(S2_BANDS)}")

    cfg = settings.local_cluster()
    cluster.start(cfg)
    name = f"cbm_storage_bench_{uuid.uuid4().hex[:10]}"
    cluster.ensure_database(cfg, name)
    try:
        with db.connect(cfg.url(name)) as conn:
            db.migrate(conn)
            conn.execute(PEER_DDL.read_text().encode())
            conn.commit()
            sets, products = _setup(conn, args.images, bands)
            rng = np.random.default_rng(42)
            print(f"{args.parcels} parcels x {args.images} images; bytes per parcel-band observation "
                  "(heap + indexes, after VACUUM)")
            print(f"{'bands':>5} {'ours B/obs':>11} {'peer B/obs':>11} {'peer/ours':>9} {'ours load s':>11} "
                  f"{'peer load s':>11}")
            for n_bands in bands:
                ours_s = _load_ours(conn, sets[n_bands], products, args.parcels, n_bands, rng)
                peer_s = _load_peer(conn, products, args.parcels, n_bands, rng)
                conn.autocommit = True
                conn.execute("VACUUM ANALYZE")
                conn.autocommit = False
                n_obs = args.parcels * args.images * n_bands
                ours = _size(conn, f"cbm.parcel_obs_{sets[n_bands]}") / n_obs
                peer = _size(conn, "bench_peer.signatures") / n_obs
                conn.commit()
                print(f"{n_bands:>5} {ours:>11.1f} {peer:>11.1f} {peer / ours:>8.2f}x {ours_s:>11.2f} {peer_s:>11.2f}")
    finally:
        cluster.drop_database(cfg, name)


if __name__ == "__main__":
    main()
