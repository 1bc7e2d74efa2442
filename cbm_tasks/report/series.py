"""A parcel set's stored time series as the markers' :class:`SeriesTable` (the database path).

Reads ``cbm.parcel_obs`` (band means of every extracted image) and the S2 scene classification
counts (``cbm.parcel_class_counts``, class band ``SCL``) of some or all parcels of a set, keeps
the sources and bands the markers know (``PRODUCT_TYPES``, ``BANDS``) and gives each S2 row its
share of unusable SCL pixels. Parcels are identified by their ``parcel_key`` (as strings in
``SeriesTable.parcel_ids``). The reproducibility check and the parcel report recompute markers
from exactly this table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import psycopg

from cbm_tasks.markers import BAND_CODE, SOURCE_CODE, SeriesTable, scl_bad_share_from_counts
from cbm_tasks.markers.series import PRODUCT_TYPES

__all__ = ["SCL_BAND", "load_series"]

log = logging.getLogger(__name__)

SCL_BAND = "SCL"

_MEANS = """
SELECT o.parcel_key, pr.product_id, pr.product_type, b.band,
       extract(epoch FROM pr.acquired_at) / 86400.0, o.stats[(b.i - 1) * 8 + 2], coalesce(pr.relative_orbit, -1)
FROM cbm.parcel_obs o
JOIN cbm.extraction e ON e.parcel_set_id = o.parcel_set_id AND e.product_id = o.product_id
JOIN cbm.product pr ON pr.product_id = o.product_id
CROSS JOIN LATERAL unnest(e.bands) WITH ORDINALITY AS b(band, i)
WHERE o.parcel_set_id = %(set)s AND (%(keys)s::integer[] IS NULL OR o.parcel_key = ANY(%(keys)s::integer[]))
  AND pr.product_type = ANY(%(types)s) AND b.band = ANY(%(bands)s)
"""

_SCL = """
SELECT c.parcel_key, c.product_id, c.counts
FROM cbm.parcel_class_counts c
JOIN cbm.extraction e ON e.parcel_set_id = c.parcel_set_id AND e.product_id = c.product_id
WHERE c.parcel_set_id = %(set)s AND (%(keys)s::integer[] IS NULL OR c.parcel_key = ANY(%(keys)s::integer[]))
  AND e.class_bands[c.class_band] = %(scl)s
"""


def load_series(conn: psycopg.Connection, *, parcel_set_id: int,
                parcel_keys: Sequence[int] | None = None) -> SeriesTable:
    """Return the observations of *parcel_keys* (None = every parcel) of a parcel set.

    Args:
        conn: CbM database.
        parcel_set_id: the set (``cbm.parcel_set``).
        parcel_keys: the parcels; None = all with observations.

    Returns:
        The series; parcels without observations are absent.
    """
    t0 = time.perf_counter()
    query = {"set": parcel_set_id, "keys": None if parcel_keys is None else [int(k) for k in parcel_keys],
             "types": list(PRODUCT_TYPES), "bands": list(BAND_CODE), "scl": SCL_BAND}
    with conn.transaction():
        rows = conn.execute(_MEANS, query).fetchall()
        scl_rows = conn.execute(_SCL, query).fetchall()
    n = len(rows)
    key = np.fromiter((r[0] for r in rows), np.int64, n)
    product = np.fromiter((r[1] for r in rows), np.int64, n)
    source = np.fromiter((SOURCE_CODE[PRODUCT_TYPES[r[2]]] for r in rows), np.int8, n)
    band = np.fromiter((BAND_CODE[r[3]] for r in rows), np.int8, n)
    obs_day = np.fromiter((float(r[4]) for r in rows), np.float64, n)
    mean = np.fromiter((np.nan if r[5] is None else float(r[5]) for r in rows), np.float64, n)
    orbit = np.fromiter((int(r[6]) for r in rows), np.int32, n)
    scl = np.full(n, np.nan)
    if scl_rows:
        width = max(len(r[2]) for r in scl_rows)
        counts = np.zeros((len(scl_rows), width), np.int64)
        for i, (_, _, values) in enumerate(scl_rows):
            counts[i, :len(values)] = values
        share = scl_bad_share_from_counts(counts)
        lookup = {(int(r[0]), int(r[1])): float(s) for r, s in zip(scl_rows, share, strict=True)}
        is_s2 = source == SOURCE_CODE["s2"]
        scl[is_s2] = [lookup.get((int(k), int(p)), np.nan) for k, p in zip(key[is_s2], product[is_s2], strict=True)]
    series = SeriesTable.from_arrays(parcel_id=key, source=source, band=band, obs_day=obs_day, mean=mean,
                                     orbit=orbit, scl_bad_share=scl)
    log.info("loaded time series parcel_set=%d parcels=%d rows=%d seconds=%.3f", parcel_set_id, series.n_parcels,
             series.n_rows, time.perf_counter() - t0)
    return series
