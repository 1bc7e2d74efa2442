"""OpenLineage for TaskFlow tasks: name the datasets a task read and wrote.

A TaskFlow task is a ``PythonOperator`` that the OpenLineage provider has no extractor for, so
by itself its events carry empty ``inputs`` and ``outputs``. The provider reads Airflow's
hook-lineage collector instead when something was reported to it: a task calls
:func:`report_lineage` with asset URIs (``file:///...``, ``s3://...``,
``postgres://host:port/db/schema/table``; built by :mod:`cbm_tasks.report.datasets`) and its
COMPLETE (or FAIL) event lists them. Without the provider (or with OpenLineage disabled) the
collector does nothing. This file holds no DAG and is listed in ``.airflowignore``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["report_lineage", "tables"]


class _CbmTask:
    """The lineage context the collector keys entries by (one per reporting call is enough)."""


def tables(*names: str) -> list[str]:
    """Return the dataset URIs of CbM tables (``cbm.parcel_obs``, ...) in the database of ``cbm_postgis``."""
    from cbm_conn import postgis_namespace

    from cbm_tasks.report.datasets import table_uri

    namespace = postgis_namespace()
    return [table_uri(namespace, name) for name in names]


def report_lineage(*, inputs: Iterable[str] = (), outputs: Iterable[str] = ()) -> None:
    """Report the datasets the running task read (*inputs*) and wrote (*outputs*), as asset URIs."""
    from airflow.sdk.lineage import get_hook_lineage_collector

    collector = get_hook_lineage_collector()
    context = _CbmTask()
    for uri in inputs:
        collector.add_input_asset(context=context, uri=uri)
    for uri in outputs:
        collector.add_output_asset(context=context, uri=uri)
