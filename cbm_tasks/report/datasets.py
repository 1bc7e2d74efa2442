"""Dataset names for OpenLineage: the products a task read and the tables it wrote, as URIs.

OpenLineage names a dataset by a namespace and a name; Airflow builds both from an asset URI
(``s3://bucket/key``, ``file:///path``, ``postgres://host:port/database/schema/table``). These
functions make those URIs from what the pipeline knows: a product's ``location`` and the CbM
database's host, port and name (never its user or password). The DAGs hand them to Airflow's
hook-lineage collector, so the OpenLineage events of TaskFlow tasks name real datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cbm_tasks.store import is_remote, local_path

__all__ = ["DatabaseNamespace", "location_uri", "product_uris", "table_uri"]


@dataclass(frozen=True, slots=True)
class DatabaseNamespace:
    """Host, port and database name of the CbM database: the namespace of its tables (no credentials)."""

    host: str
    port: int
    database: str

    @classmethod
    def of(cls, *, host: str | None, port: int | None, database: str | None) -> DatabaseNamespace:
        """Build it from a connection's fields.

        A Unix-socket host (a folder) becomes ``localhost``: a dataset name must not change with
        the socket's location, and the tables are the same whichever way a task connects.

        Raises:
            ValueError: no database name.
        """
        if not database:
            raise ValueError("the CbM database name is empty; cannot name its tables as datasets")
        return cls("localhost" if not host or host.startswith("/") else host, int(port) if port else 5432, database)


def table_uri(namespace: DatabaseNamespace, table: str) -> str:
    """Return the asset URI of *table* (``schema.table``, e.g. ``cbm.parcel_obs``).

    Raises:
        ValueError: *table* is not ``schema.table``.
    """
    schema, dot, name = table.partition(".")
    if not dot or not schema or not name or "/" in table:
        raise ValueError(f"table must be given as schema.table, got {table!r}")
    return f"postgres://{namespace.host}:{namespace.port}/{namespace.database}/{schema}/{name}"


def location_uri(location: str, *, store_root: str | Path = "") -> str:
    """Return the asset URI of a product location: ``s3://...`` as is, a local path as ``file:///abs/path``.

    Args:
        location: ``cbm.product.location``: an ``s3://`` URI, a ``file://`` URI or a path.
        store_root: the local store's root, which relative paths are relative to.
    """
    if is_remote(location):
        return location.rstrip("/") or location
    path = local_path(location)
    if not path.is_absolute():
        path = Path(store_root or ".") / path
    return path.resolve().as_uri()


def product_uris(conn: psycopg.Connection, product_ids: Sequence[int], *, store_root: str | Path = "") -> list[str]:
    """Return the asset URIs of the products *product_ids* (in id order; unknown ids are left out)."""
    if not product_ids:
        return []
    with conn.transaction():
        rows = conn.execute(
            "SELECT location FROM cbm.product WHERE product_id = ANY(%s) ORDER BY product_id",
            (list(product_ids),),
        ).fetchall()
    return [location_uri(str(location), store_root=store_root) for (location,) in rows]
