"""Overlapping parcels of a set: found in PostGIS at import, reported to the agency.

Two parcels overlap when their interiors share an area (touching edges do not count).
Overlapping declarations are something paying agencies check in their own right; for the
extraction they matter because a pixel whose centre lies in both belongs to both, so the
overlapping parcels get their own label layers (``cbm_tasks.extraction.extract``).
The pairs live in ``cbm.parcel_overlap`` (``sql/009_parcel_overlaps.sql``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

__all__ = ["MAX_LISTED", "SLIVER_M2", "Overlap", "OverlapSummary", "date_neighbours", "find_overlaps",
           "neighbours_of", "overlapping_keys"]

MAX_LISTED = 20  # pairs named in the import report, largest shared area first
# pairs sharing less are digitising slivers (shared edges off by millimetres), counted apart in the
# report; they stay in cbm.parcel_overlap, since a pixel centre could still fall in one
SLIVER_M2 = 1.0


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two overlapping parcels (agency ids) and the area they share."""

    parcel_id_a: str
    parcel_id_b: str
    area_m2: float


@dataclass(frozen=True, slots=True)
class OverlapSummary:
    """The overlaps of one parcel set: pairs, parcels involved, shared area, the largest pairs."""

    n_pairs: int = 0
    n_parcels: int = 0
    area_m2: float = 0.0
    largest: tuple[Overlap, ...] = ()
    n_slivers: int = 0  # pairs sharing less than SLIVER_M2


def find_overlaps(cur: psycopg.Cursor[TupleRow], parcel_set_id: int) -> OverlapSummary:
    """Recompute the overlapping pairs of a set in ``cbm.parcel_overlap`` and summarise them.

    Runs in the caller's transaction (the import's), so the pairs always match the set's version.

    Args:
        cur: cursor of the importing transaction.
        parcel_set_id: the set, its parcels already written.

    Returns:
        The summary; ``largest`` names at most MAX_LISTED pairs.
    """
    cur.execute("SELECT cbm.find_parcel_overlaps(%s::smallint)", (parcel_set_id,))
    row = cur.execute(
        "SELECT count(*), coalesce(sum(area_m2), 0), count(*) FILTER (WHERE area_m2 < %(sliver)s), "
        "       (SELECT count(*) FROM (SELECT parcel_key_a FROM cbm.parcel_overlap WHERE parcel_set_id = %(set)s "
        "        UNION SELECT parcel_key_b FROM cbm.parcel_overlap WHERE parcel_set_id = %(set)s) k) "
        "FROM cbm.parcel_overlap WHERE parcel_set_id = %(set)s",
        {"set": parcel_set_id, "sliver": SLIVER_M2},
    ).fetchone()
    if row is None or row[0] == 0:
        return OverlapSummary()
    largest = cur.execute(
        "SELECT a.parcel_id, b.parcel_id, o.area_m2 FROM cbm.parcel_overlap o "
        "JOIN cbm.parcel a ON a.parcel_set_id = o.parcel_set_id AND a.parcel_key = o.parcel_key_a "
        "JOIN cbm.parcel b ON b.parcel_set_id = o.parcel_set_id AND b.parcel_key = o.parcel_key_b "
        "WHERE o.parcel_set_id = %s ORDER BY o.area_m2 DESC, a.parcel_id, b.parcel_id LIMIT %s",
        (parcel_set_id, MAX_LISTED),
    ).fetchall()
    return OverlapSummary(n_pairs=int(row[0]), n_parcels=int(row[3]), area_m2=float(row[1]),
                          largest=tuple(Overlap(str(a), str(b), float(area)) for a, b, area in largest),
                          n_slivers=int(row[2]))


def overlapping_keys(cur: psycopg.Cursor[TupleRow], parcel_set_id: int) -> set[int]:
    """The parcels of the set that overlap another, as ``cbm.parcel_overlap`` holds them now."""
    rows = cur.execute("SELECT parcel_key_a FROM cbm.parcel_overlap WHERE parcel_set_id = %(set)s "
                       "UNION SELECT parcel_key_b FROM cbm.parcel_overlap WHERE parcel_set_id = %(set)s",
                       {"set": parcel_set_id}).fetchall()
    return {int(k) for (k,) in rows}


def neighbours_of(cur: psycopg.Cursor[TupleRow], parcel_set_id: int, keys: Sequence[int]) -> list[int]:
    """The parcels touching or overlapping the parcels *keys* of the set as stored now (not in *keys*).

    A pixel whose centre lies exactly on an edge two parcels share belongs to one of them (the
    rasteriser's tie rule), so a parcel's pixels can change when a neighbour changes. The
    import asks this of the old set (before removed and changed parcels are deleted) and dates
    the answer with :func:`date_neighbours`.
    """
    if not keys:
        return []
    rows = cur.execute(
        "SELECT DISTINCT a.parcel_key FROM cbm.parcel a JOIN cbm.parcel b "
        "  ON b.parcel_set_id = a.parcel_set_id AND b.parcel_key = ANY(%(keys)s) AND ST_Intersects(a.geom, b.geom) "
        "WHERE a.parcel_set_id = %(set)s AND NOT a.parcel_key = ANY(%(keys)s)",
        {"set": parcel_set_id, "keys": list(keys)},
    ).fetchall()
    return [int(k) for (k,) in rows]


def date_neighbours(cur: psycopg.Cursor[TupleRow], parcel_set_id: int, version: int,
                    old_neighbours: Sequence[int]) -> int:
    """Give the parcels whose pixels may have changed at *version* that ``geom_version``; return how many.

    Those are the neighbours (touching or overlapping) of the parcels new or changed at
    *version*, and *old_neighbours*: the neighbours of the parcels removed or changed (see
    :func:`neighbours_of`), and the parcels that began or ceased to overlap another and their
    neighbours (they move between the label raster and the overlap layers, which changes who
    wins a pixel centre on a shared edge). Images extracted before *version* then recompute
    them too, and the completed time series equals a fresh extraction of the new set (up to
    such edge pixels between parcels of one overlap layer whose colour changed, which are rare).
    """
    return cur.execute(
        "UPDATE cbm.parcel a SET geom_version = %(version)s "
        "WHERE a.parcel_set_id = %(set)s AND a.geom_version < %(version)s "
        "  AND (a.parcel_key = ANY(%(old)s) OR EXISTS (SELECT 1 FROM cbm.parcel b WHERE b.parcel_set_id = %(set)s "
        "       AND b.geom_version = %(version)s AND b.parcel_key <> a.parcel_key AND ST_Intersects(a.geom, b.geom)))",
        {"set": parcel_set_id, "version": version, "old": list(old_neighbours)},
    ).rowcount
