"""Where the checkout is: the one place that finds the repository root from this package."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "SQL_DIR"]

# cbm_tasks is installed editable (pip install -e), so the checkout holding sql/, dags/ and
# plugins/ is the parent of this package's folder, in a container image as on a laptop.
REPO_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = REPO_ROOT / "sql"
