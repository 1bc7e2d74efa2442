"""benchmarks/pipeline_bench.py --quick end to end through the real Airflow (keeps the benchmark from rotting).

The deployment is the test session's (private AIRFLOW_HOME and metadata database, see
airflow_testenv); the benchmark makes its own databases in the project-local cluster and drops them.
Figures are not checked here (timings belong to the benchmark); what is checked is that every
image went through cbm_catalogue and cbm_extract, and that the figures are computed from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import airflow_testenv
import psycopg
import pytest

from cbm_tasks.ops import airflow_ctl, cluster

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import pipeline_bench  # noqa: E402
import pipeline_data  # noqa: E402


def _bench_databases(cfg: cluster.ClusterConfig) -> list[str]:
    with psycopg.connect(cfg.url("postgres")) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cbm_pipebench_%'").fetchall()
    return [name for (name,) in rows]


def test_quick_run_goes_through_airflow_and_reports(pg_cluster: cluster.ClusterConfig, tmp_path: Path) -> None:
    airflow_testenv.metadata_db()  # migrated once per session, pools set
    before = _bench_databases(pg_cluster)
    options = pipeline_bench.parse_args(["--quick", "--out", str(tmp_path), "--parcels", "300"])
    base = airflow_testenv.config()

    results = pipeline_bench.run(options, base=base, migrate=False)

    config = results["config"]
    assert (config["size_px"], config["s2_tiles"], config["s1_scenes"]) == (512, 1, 1)
    assert 250 <= config["parcels"] <= 300
    (local,) = results["runs"]
    assert local["executor"] == "local"
    assert local["statuses"] == {"extracted": 2}, local["errors"]
    # the quick run's images are small: cbm_extract may batch them into one task (full tiles get one each)
    assert local["images"] == 2 and 1 <= local["extract_tasks"] <= 2
    assert set(local["per_product_type"]) <= {"S2MSI2A", "CARD-BS"}
    # a statistic is one parcel x one measured band: 10 S2 bands, 2 S1 bands, SCL not counted
    assert 0 < local["stats"] <= config["parcels"] * (len(pipeline_data.S2_BANDS) + 2)
    assert local["rows_written"] > local["stats"]  # the SCL class counts are rows too
    assert local["images_per_hour"] == pytest.approx(2 / local["wall_s"] * 3600, rel=0.01)
    assert local["stats_per_s_per_core"] == pytest.approx(local["stats"] / local["wall_s"] / config["cores"],
                                                          rel=0.01, abs=1)  # printed as a whole number
    assert local["jrc_ratio_per_core"] == pytest.approx(
        local["stats_per_s_per_core"] / pipeline_bench.JRC_STATS_PER_S_PER_CORE, abs=0.01)
    assert 0 < local["extraction_s_mean"] < local["task_s_mean"] <= local["wall_s"]
    assert local["overhead_s_mean"] == pytest.approx(local["task_s_mean"] - local["extraction_s_mean"], abs=0.02)
    assert 0 < local["overhead_share"] < 1
    text = "\n".join(pipeline_bench.report(results))
    assert "LocalExecutor: 2 images" in text and "x JRC per core" in text

    # nothing left behind: the benchmark's databases are dropped, Airflow is stopped
    assert _bench_databases(pg_cluster) == before
    assert not any(s.running for s in airflow_ctl.status(base))
