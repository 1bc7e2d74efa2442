"""Audit reports: from a traffic light back to the images, code and runs that made it.

Modules: ``datasets`` (OpenLineage dataset URIs), ``lineage_read`` (runs, products and their
lineage), ``parcel_audit`` (what one parcel's report shows), ``render`` (HTML and PDF),
``run_report`` (what an Airflow run did), ``verify`` (recompute markers and lights, list the
differences), ``series`` (a parcel set's stored time series as the markers' ``SeriesTable``).
No Airflow here; the DAG task, the ``cbm audit`` command and the UI page call these.
"""
