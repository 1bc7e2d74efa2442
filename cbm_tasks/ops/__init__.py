"""Deployment tooling: the local PostGIS cluster, Airflow control and settings (not domain code)."""
