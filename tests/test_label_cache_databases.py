"""Label rasters cached on disk never cross databases.

The disk cache (``CBM_LABEL_CACHE_DIR``) is shared by every process of a machine: two deployments,
a restored copy, the test databases. Parcel set ids repeat across databases (each starts at 1),
so the cache key names the database too; found by the pipeline benchmark, where a second database
read the first one's labels (issue 13).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import shapely
from affine import Affine
from conftest import fresh_database
from test_extract_support import add_parcel_set, write_tif

from cbm_tasks.ops import cluster

X0, Y0 = 500000, 5600100
TRANSFORM = Affine(10, 0, X0, 0, -10, Y0)
BOXES = [shapely.box(X0 + 20 * i, Y0 - 60, X0 + 20 * i + 20, Y0) for i in range(4)]  # 2 x 6 pixels each


@pytest.fixture
def other_db_url(pg_cluster: cluster.ClusterConfig, template_db: str) -> Iterator[str]:
    """A second fresh database beside the test's own (``db_url``)."""
    with fresh_database(pg_cluster, template_db) as url:
        yield url


def _extract(image: Path, db_url: str, label_dir: Path, store: Path) -> None:
    env = {**os.environ, "CBM_DATABASE_URL": db_url, "CBM_STORE_ROOT": str(store),
           "CBM_LABEL_CACHE_DIR": str(label_dir)}
    done = subprocess.run([str(Path(sys.executable).parent / "cbm"), "extract", str(image), "--aoi", "same",
                           "--year", "2018"], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def _means(db_url: str) -> dict[int, float]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT parcel_key, stats[2] FROM cbm.parcel_obs ORDER BY 1").fetchall()
    return {int(key): float(mean) for key, mean in rows}


def test_two_databases_with_the_same_set_id_get_their_own_labels(tmp_path: Path, db_url: str,
                                                                   other_db_url: str) -> None:
    columns = np.arange(10) // 2  # box i covers columns 2i, 2i + 1 (columns 8, 9: no parcel)
    b04 = np.broadcast_to(1000 * (columns + 1), (8, 10)).astype(np.uint16)
    image = write_tif(tmp_path / "S2_20180601.tif", b04[None], transform=TRANSFORM, nodata=0,
                      descriptions=["B04"], scales=[1e-4], offsets=[-0.1])
    ids = []
    for url, boxes in ((db_url, BOXES), (other_db_url, BOXES[::-1])):  # same keys, parcels in mirror order
        with psycopg.connect(url) as conn:
            ids.append(add_parcel_set(conn, aoi="same", year=2018, srid=32631,
                                      parcels=[(f"p{i}", box) for i, box in enumerate(boxes)]))
    assert ids == [ids[0], ids[0]]  # both sets have the same id and version: only the database differs

    labels = tmp_path / "labels"  # one cache folder, as every deployment of a machine shares by default
    _extract(image, db_url, labels, tmp_path / "store_a")
    _extract(image, other_db_url, labels, tmp_path / "store_b")
    assert len(list(labels.glob("labels_*.npy"))) == 2  # one raster per database, not one reused

    scaled = [1000 * (i + 1) * 1e-4 - 0.1 for i in range(4)]  # B04 of box i, reflectance
    assert _means(db_url) == pytest.approx({k: scaled[k - 1] for k in range(1, 5)}, abs=1e-6)
    assert _means(other_db_url) == pytest.approx({k: scaled[4 - k] for k in range(1, 5)}, abs=1e-6)
