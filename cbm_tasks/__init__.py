"""Checks by Monitoring backend: the domain library behind the Airflow DAGs.

Pure Python: nothing in this package imports Airflow (tests/test_layering.py checks it).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
