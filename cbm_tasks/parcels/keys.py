"""Parcel keys across re-imports: a known parcel id keeps its key, a new id gets a never-used one.

Parcel keys (1..n, the label value in rasterised masks and the key of every time-series row)
are stable, so the time series of unchanged parcels stay valid after a re-import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KeyPlan", "plan_keys"]


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """Parcel keys of a new set relative to the stored one (see :func:`plan_keys`)."""

    keys: np.ndarray  # int32 key of each new parcel, aligned with the new ids
    fresh: np.ndarray  # bool, aligned with the new ids: a new id, or a kept id whose geometry changed
    stale_keys: tuple[int, ...]  # keys whose time series must go: removed or changed parcels
    n_new: int
    n_changed: int
    n_removed: int


def plan_keys(
    old: Sequence[tuple[str, int, str]], new_ids: Sequence[str], new_md5: Sequence[str], *, key_floor: int = 0
) -> KeyPlan:
    """Assign parcel keys: kept ids keep theirs, new ids get keys above every key ever given.

    Args:
        old: (parcel_id, parcel_key, geometry md5) of the stored set; empty for a new set.
        new_ids: the parcel ids being imported (unique).
        new_md5: md5 of each new geometry, as :func:`cbm_tasks.parcels.geometry.geometry_md5`.
        key_floor: the highest key the set ever gave (``parcel_set.max_parcel_key``), so that
            the key of a removed parcel is never reused.
    """
    old_key = {pid: key for pid, key, _ in old}
    old_md5 = {pid: digest for pid, _, digest in old}
    next_key = max(max(old_key.values(), default=0), key_floor) + 1
    keys = np.empty(len(new_ids), dtype=np.int32)
    fresh = np.zeros(len(new_ids), dtype=bool)
    stale: list[int] = []
    n_new = n_changed = 0
    for i, (pid, digest) in enumerate(zip(new_ids, new_md5, strict=True)):
        key = old_key.get(pid)
        if key is None:
            key, next_key, n_new = next_key, next_key + 1, n_new + 1
            fresh[i] = True
        elif old_md5[pid] != digest:
            stale.append(key)
            n_changed += 1
            fresh[i] = True
        keys[i] = key
    kept = set(new_ids)
    removed = [key for pid, key, _ in old if pid not in kept]
    return KeyPlan(keys, fresh, tuple(sorted(stale + removed)), n_new, n_changed, len(removed))
