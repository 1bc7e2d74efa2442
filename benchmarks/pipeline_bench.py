"""Throughput of the whole pipeline through the real Airflow: cbm_catalogue -> cbm_extract on full tiles.

A seeded synthetic AOI (``pipeline_data.py``: ~100,000 fields, N Sentinel-2 L2A tiles of
10980 x 10980 at 10 m with the demo catalogue's eleven bands, N Sentinel-1 CARD-BS scenes with VV
and VH gamma0 at 10 m, COGs in a local catalogue, cached under ``var/bench``) is imported into a
fresh database; then, for each executor asked for, the deployment ``cbm airflow start`` runs is
started on it (``cbm_tasks.ops.airflow_ctl.start``: its own AIRFLOW_HOME under the output folder,
a fresh copy of the database, a fresh store and label cache), ``cbm_catalogue`` is triggered
through the REST API as a maintainer does, and the ``cbm_extract`` runs its asset event starts
are waited for. Reported per executor, and in one line as JSON with ``--json``:

* images per hour and parcel-band statistics per second per core, end to end (trigger of
  ``cbm_catalogue`` to the end of the last ``cbm_extract`` run; a statistic = one parcel x one
  measured band: SCL class counts are not counted), over ``os.cpu_count()`` cores;
* the ratio to JRC's published record per core: 3 M parcels x 2 S1 bands x ~1,100 images in
  24 h on one 8-CPU machine;
* Airflow overhead per extraction task: its duration in Airflow's task instances minus the
  in-process extraction seconds recorded in ``cbm.extraction``, and its share of task time;
* with Celery at 1 and 2 workers, the 2-worker / 1-worker throughput ratio.

Usage:
    .venv/bin/python benchmarks/pipeline_bench.py                 # 3 + 3 full tiles, LocalExecutor
    .venv/bin/python benchmarks/pipeline_bench.py --executors local,celery:1,celery:2
    .venv/bin/python benchmarks/pipeline_bench.py --quick         # 512 px, 400 parcels, 1 + 1 images
    .venv/bin/python benchmarks/pipeline_bench.py --generate-only # build the cache, nothing else
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pipeline_data
import psycopg
from psycopg import sql

from cbm_tasks import db
from cbm_tasks.catalogue import registry
from cbm_tasks.errors import CbmError, NotFoundError, ServiceError
from cbm_tasks.ops import airflow_ctl, cluster, settings
from cbm_tasks.ops.airflow_api import AirflowApi
from cbm_tasks.parcels import sets as parcel_sets

log = logging.getLogger("pipeline_bench")

# JRC's record (ec-jrc/cbm): 3 M parcels x 2 S1 bands x ~1,100 images in 24 h on one 8-CPU machine
JRC_STATS_PER_S_PER_CORE = 3_000_000 * 2 * 1_100 / (24 * 3600) / 8
_FINAL = {registry.ProductStatus.EXTRACTED.value, registry.ProductStatus.SKIPPED.value,
          registry.ProductStatus.FAILED.value}
_DAGS = ("cbm_catalogue", "cbm_extract")
_WINDOW = ("2024-01-01", "2024-12-31")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Return the benchmark's options (``--quick`` sets small defaults)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small tiles and few parcels (a check, not a figure)")
    parser.add_argument("--size", type=int, help="tile width in 10 m pixels (default 10980; quick 512)")
    parser.add_argument("--parcels", type=int, help="parcels (default 100000; quick 400)")
    parser.add_argument("--s2", type=int, help="Sentinel-2 L2A tiles (default 3; quick 1)")
    parser.add_argument("--s1", type=int, help="Sentinel-1 CARD-BS scenes (default 3; quick 1)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--executors", default="local",
                        help="comma-separated: local, celery:<workers> (default local)")
    parser.add_argument("--out", type=Path, default=settings.project_dir() / "var" / "bench",
                        help="cache of the generated data and the benchmark's Airflow home (default var/bench)")
    parser.add_argument("--port", type=int, default=None, help="Airflow API port (default $CBM_AIRFLOW_PORT or 8080)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one executor's runs")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--generate-only", action="store_true", help="build the data cache and stop")
    options = parser.parse_args(argv)
    quick = {"size": 512, "parcels": 400, "s2": 1, "s1": 1}
    full = {"size": 10980, "parcels": 100_000, "s2": 3, "s1": 3}
    for name, value in (quick if options.quick else full).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    options.executor_list = [_executor(text) for text in options.executors.split(",") if text.strip()]
    return options


def _executor(text: str) -> tuple[str, int]:
    name, _, workers = text.strip().partition(":")
    if name == "local" and not workers:
        return "local", 1
    if name == "celery" and workers.isdigit() and int(workers) >= 1:
        return "celery", int(workers)
    raise SystemExit(f"--executors: expected local or celery:<workers>, got {text!r}")


def deployment(base: airflow_ctl.AirflowConfig, executor: str, workers: int, *, data_url: str,
               store_root: Path) -> airflow_ctl.AirflowConfig:
    """The deployment ``cbm airflow start --executor E --workers N`` runs, on the bench's database and store.

    With Celery, task slots and the extraction pool grow to the workers' slots as
    ``airflow_config.default_config`` makes them; the broker listens on ``$CBM_REDIS_PORT``, else
    on the API port + 10000 (so that benchmarks of several checkouts do not share a broker).
    """
    changes: dict[str, Any] = {"data_url": data_url, "store_root": store_root, "executor": executor}
    if executor == "celery":
        slots = workers * base.worker_concurrency
        changes |= {"celery_workers": workers, "parallelism": max(base.parallelism, slots + 2),
                    "max_active_tasks_per_dag": max(base.max_active_tasks_per_dag, slots + 2),
                    "extract_pool_slots": max(base.extract_pool_slots, slots),
                    "redis_port": int(os.environ.get("CBM_REDIS_PORT", base.port + 10000))}
    return dataclasses.replace(base, **changes)


def _create_database(cfg: cluster.ClusterConfig, name: str, *, template: str | None = None) -> str:
    with psycopg.connect(cfg.url("postgres"), autocommit=True) as admin:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        admin.execute(statement)
    return cfg.url(name)


def _set_variable(api: AirflowApi, key: str, value: dict[str, Any], description: str) -> None:
    body = {"key": key, "value": json.dumps(value), "description": description}
    try:
        api.request("GET", f"variables/{key}")
        api.request("PATCH", f"variables/{key}", body=body)
    except NotFoundError:
        api.request("POST", "variables", body=body)


def _time(text: str | None) -> datetime:
    if not text:
        raise ServiceError("Airflow returned a run or task without its start or end time")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _wait_for_extraction(api: AirflowApi, data_url: str, *, since: datetime, n_images: int,
                         deadline: float) -> list[dict[str, Any]]:
    """Wait until every image is in a final state and every cbm_extract run since *since* finished."""
    next_report = time.monotonic() + 30
    settle = time.monotonic() + 20  # an asset-triggered run may take a few seconds to appear
    while True:
        runs = api.runs("cbm_extract", run_after_gte=since.isoformat())
        with db.connect(data_url, autocommit=True) as conn:
            counts = registry.status_counts(conn, aoi=pipeline_data.AOI)
        final = sum(n for status, n in counts.items() if status in _FINAL)
        ended = bool(runs) and all(run["state"] in ("success", "failed") for run in runs)
        if ended and final >= n_images:
            return runs
        if ended and time.monotonic() > settle:
            # every run has ended and nothing else will pick the images up: waiting longer is useless
            states = {run["dag_run_id"]: api.task_states("cbm_extract", run["dag_run_id"]) for run in runs}
            raise ServiceError(f"cbm_extract runs ended with images not done: images {counts}, runs {states}")
        if time.monotonic() > deadline:
            raise ServiceError(f"cbm_extract not finished in time: images {counts}, "
                               f"runs {[(r['dag_run_id'], r['state']) for r in runs]}")
        if time.monotonic() >= next_report:
            next_report += 30
            log.info("waiting: images %s, cbm_extract runs %s", counts, [r["state"] for r in runs])
        time.sleep(2)


_EXTRACTIONS = """
SELECT r.run_id, r.map_index, p.product_type, e.n_parcels, cardinality(e.bands), e.n_rows, e.seconds
FROM cbm.extraction e JOIN cbm.pipeline_run r USING (pipeline_run_id) JOIN cbm.product p USING (product_id)
WHERE r.dag_id = 'cbm_extract'
"""


def measure(api: AirflowApi, data_url: str, *, triggered: datetime, catalogue_run: dict[str, Any],
            extract_runs: list[dict[str, Any]], cores: int) -> dict[str, Any]:
    """Figures of one executor's runs, from Airflow's task instances and cbm.extraction."""
    with db.connect(data_url, autocommit=True) as conn:
        rows = conn.execute(_EXTRACTIONS).fetchall()
        counts = registry.status_counts(conn, aoi=pipeline_data.AOI)
        errors = [str(e) for (e,) in conn.execute(
            "SELECT DISTINCT error FROM cbm.pipeline_run WHERE dag_id = 'cbm_extract' AND error IS NOT NULL")]
    by_task: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
    for row in rows:
        by_task.setdefault((row[0], row[1]), []).append(row)
    tasks = []
    for run in extract_runs:
        answer = api.request("GET", f"dags/cbm_extract/dagRuns/{run['dag_run_id']}/taskInstances",
                             query={"limit": 1000})
        for ti in answer["task_instances"]:
            done = by_task.get((run["dag_run_id"], ti["map_index"]))
            if ti["task_id"] != "extract" or not done or ti["duration"] is None:
                continue
            extraction_s = sum(float(r[6] or 0) for r in done)
            tasks.append({"run_id": run["dag_run_id"], "map_index": ti["map_index"],
                          "product_types": sorted({r[2] for r in done}), "images": len(done),
                          "hostname": ti.get("hostname"), "start": _time(ti["start_date"]),
                          "duration_s": float(ti["duration"]), "extraction_s": extraction_s,
                          "overhead_s": float(ti["duration"]) - extraction_s})
    if not tasks:
        raise ServiceError(f"no extraction task with rows found (images {counts})")
    end = max(_time(run["end_date"]) for run in extract_runs)
    wall_s = (end - triggered).total_seconds()
    stats = sum(int(r[3]) * int(r[4]) for r in rows)
    images = sum(t["images"] for t in tasks)
    task_s = sum(t["duration_s"] for t in tasks)
    overhead_s = sum(t["overhead_s"] for t in tasks)
    per_type = {}
    for product_type in sorted({p for t in tasks for p in t["product_types"]}):
        mine = [t for t in tasks if t["product_types"] == [product_type]]
        if mine:
            per_type[product_type] = {
                "tasks": len(mine),
                "task_s": round(sum(t["duration_s"] for t in mine) / len(mine), 2),
                "extraction_s": round(sum(t["extraction_s"] for t in mine) / len(mine), 2),
                "overhead_s": round(sum(t["overhead_s"] for t in mine) / len(mine), 2),
            }
    per_s_core = stats / wall_s / cores
    # the extraction phase alone: first extraction task start to the end (no catalogue poll, no first scheduling)
    phase_s = (end - min(t["start"] for t in tasks)).total_seconds()
    return {
        "images": images, "statuses": counts, "errors": errors, "stats": stats,
        "rows_written": sum(int(r[5]) for r in rows),
        "wall_s": round(wall_s, 1),
        "catalogue_s": round((_time(catalogue_run["end_date"]) - triggered).total_seconds(), 1),
        "first_extract_start_s": round((min(t["start"] for t in tasks) - triggered).total_seconds(), 1),
        "images_per_hour": round(images / wall_s * 3600, 1),
        "stats_per_s_per_core": round(per_s_core),
        "jrc_ratio_per_core": round(per_s_core / JRC_STATS_PER_S_PER_CORE, 2),
        "extract_phase_s": round(phase_s, 1),
        "extract_phase_stats_per_s_per_core": round(stats / phase_s / cores),
        "extract_phase_jrc_ratio": round(stats / phase_s / cores / JRC_STATS_PER_S_PER_CORE, 2),
        "extract_tasks": len(tasks),
        "task_s_mean": round(task_s / len(tasks), 2),
        "extraction_s_mean": round(sum(t["extraction_s"] for t in tasks) / len(tasks), 2),
        "overhead_s_mean": round(overhead_s / len(tasks), 2),
        "overhead_share": round(overhead_s / task_s, 3),
        "per_product_type": per_type,
        "hosts": sorted({str(t["hostname"]) for t in tasks}),
    }


def run_executor(base: airflow_ctl.AirflowConfig, data: pipeline_data.BenchData, template: str, *, executor: str,
                 workers: int, work_dir: Path, timeout_s: float, migrate: bool) -> dict[str, Any]:
    """Start the deployment with *executor* on a fresh copy of the database, run the pipeline, measure."""
    name = f"{template.removesuffix('_tmpl')}_{executor}{workers}"
    data_url = _create_database(base.cluster, name, template=template)
    store_root = work_dir / f"store_{executor}{workers}"  # fresh: its label cache starts empty
    shutil.rmtree(store_root, ignore_errors=True)
    cfg = deployment(base, executor, workers, data_url=data_url, store_root=store_root)
    try:
        t0 = time.perf_counter()
        airflow_ctl.start(cfg, migrate=migrate, timeout_s=600)
        started_s = time.perf_counter() - t0
        api = AirflowApi(cfg.url, username=airflow_ctl.ADMIN_USER, password=airflow_ctl.admin_password(cfg))
        _set_variable(api, "cbm_catalogue", {pipeline_data.AOI: {"kind": "local", "root": str(data.catalogue_root)}},
                      "pipeline benchmark: the synthetic AOI's local catalogue")
        # the default label cache (<tmp>/cbm-scratch/labels) is shared by every deployment of the machine and
        # keyed by parcel-set id, not database: each executor gets an empty one of its own
        _set_variable(api, "cbm_label_cache", {"directory": str(store_root / "labels")},
                      "pipeline benchmark: this executor's label cache")
        api.wait_for_dags(_DAGS)
        api.quiesce(_DAGS)  # runs or asset events left by an earlier session would run in this measurement
        for dag_id in _DAGS:
            api.set_paused(dag_id, paused=False)
        deadline = time.monotonic() + timeout_s
        load_before = os.getloadavg()[0]
        triggered = datetime.now(UTC)
        run_id = api.trigger("cbm_catalogue", conf={"aoi": pipeline_data.AOI, "start": _WINDOW[0],
                                                    "end": _WINDOW[1]})
        catalogue_run = api.wait_for_run("cbm_catalogue", run_id, timeout_s=timeout_s)
        if catalogue_run["state"] != "success":
            raise ServiceError(f"cbm_catalogue failed: {api.task_states('cbm_catalogue', run_id)}")
        n_images = len(data.s2_ids) + len(data.s1_ids)
        runs = _wait_for_extraction(api, data_url, since=triggered, n_images=n_images, deadline=deadline)
        result = measure(api, data_url, triggered=triggered, catalogue_run=catalogue_run, extract_runs=runs,
                         cores=os.cpu_count() or 1)
        # other work on the machine competes for its cores: the load average says how much
        result |= {"executor": executor, "workers": workers, "airflow_start_s": round(started_s, 1),
                   "load_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                   "extract_runs": [(r["dag_run_id"], r["state"]) for r in runs]}
        api.quiesce(_DAGS)  # leave no run or asset event behind for whoever uses this deployment next
        for dag_id in _DAGS:
            api.set_paused(dag_id, paused=True)
        return result
    finally:
        airflow_ctl.stop(cfg)
        cluster.drop_database(base.cluster, name)
        shutil.rmtree(store_root, ignore_errors=True)


def prepare_database(cfg: cluster.ClusterConfig, data: pipeline_data.BenchData) -> tuple[str, float]:
    """Create the template database: migrated, with the AOI's parcels imported; return (name, seconds)."""
    name = f"cbm_pipebench_{uuid.uuid4().hex[:8]}_tmpl"
    t0 = time.perf_counter()
    url = _create_database(cfg, name)
    try:
        with db.connect(url) as conn:
            db.migrate(conn)
        with db.connect(url, autocommit=True) as conn:
            parcel_sets.import_parcels(conn, data.parcels_file, aoi=pipeline_data.AOI, year=data.year)
    except BaseException:
        cluster.drop_database(cfg, name)
        raise
    return name, time.perf_counter() - t0


def run(options: argparse.Namespace, *, base: airflow_ctl.AirflowConfig | None = None,
        migrate: bool = True) -> dict[str, Any]:
    """Generate (or reuse) the data, run every executor of *options*, return the results.

    Args:
        options: from :func:`parse_args`.
        base: the deployment to start per executor (home, metadata database, port); default the
            project's with AIRFLOW_HOME ``<out>/airflow`` and metadata database ``airflow_pipebench``.
        migrate: run ``airflow db migrate`` and set the pools at each start (False: already done).
    """
    data = pipeline_data.build(options.out, size=options.size, n_parcels=options.parcels, n_s2=options.s2,
                               n_s1=options.s1, seed=options.seed)
    config = {"size_px": options.size, "parcels": data.n_parcels, "s2_tiles": len(data.s2_ids),
              "s1_scenes": len(data.s1_ids), "seed": options.seed, "cores": os.cpu_count(),
              "data_gb": round(data.disk_bytes() / 1e9, 2), "generated_s": round(data.seconds, 1),
              "jrc_stats_per_s_per_core": round(JRC_STATS_PER_S_PER_CORE)}
    results: dict[str, Any] = {"config": config, "runs": []}
    if options.generate_only:
        return results
    if base is None:
        project = airflow_ctl.default_config(port=options.port)
        base = dataclasses.replace(project, home=options.out / "airflow", metadata_db="airflow_pipebench")
    cluster.start(base.cluster)
    template, import_s = prepare_database(base.cluster, data)
    config["parcel_import_s"] = round(import_s, 1)
    try:
        for executor, workers in options.executor_list:
            log.info("running executor=%s workers=%d", executor, workers)
            try:
                results["runs"].append(run_executor(base, data, template, executor=executor, workers=workers,
                                                    work_dir=options.out / "work", timeout_s=options.timeout,
                                                    migrate=migrate))
            except CbmError as err:  # the other executors' figures are still worth having
                log.error("executor=%s workers=%d failed: %s", executor, workers, err)
                results["failed"] = [*results.get("failed", []), f"{executor}:{workers}: {err}"]
    finally:
        cluster.drop_database(base.cluster, template)
    celery = {r["workers"]: r for r in results["runs"] if r["executor"] == "celery"}
    if 1 in celery and 2 in celery:
        results["celery_2_over_1"] = round(celery[2]["images_per_hour"] / celery[1]["images_per_hour"], 2)
    return results


def report(results: dict[str, Any]) -> list[str]:
    """The results as text lines."""
    c = results["config"]
    lines = [f"config: {c['s2_tiles']} S2 L2A tiles (11 bands, {c['size_px']} px at 10 m) + {c['s1_scenes']} S1 "
             f"CARD-BS scenes (VV, VH at 10 m), {c['parcels']} parcels, seed {c['seed']}, {c['cores']} cores; "
             f"data {c['data_gb']} GB (generated in {c['generated_s']} s), parcel import "
             f"{c.get('parcel_import_s', '-')} s",
             f"JRC record per core: {c['jrc_stats_per_s_per_core']} parcel-band statistics/s "
             "(3 M parcels x 2 bands x 1,100 images / 24 h / 8 CPUs)"]
    for r in results["runs"]:
        name = "LocalExecutor" if r["executor"] == "local" else f"Celery, {r['workers']} worker(s)"
        lines += [
            f"{name}: {r['images']} images in {r['wall_s']} s end to end (catalogue {r['catalogue_s']} s, first "
            f"extraction started at {r['first_extract_start_s']} s; Airflow start {r['airflow_start_s']} s not "
            "counted)",
            f"  images/hour {r['images_per_hour']}   parcel-band stats/s/core {r['stats_per_s_per_core']}   "
            f"x JRC per core {r['jrc_ratio_per_core']}",
            f"  extraction phase only ({r['extract_phase_s']} s): parcel-band stats/s/core "
            f"{r['extract_phase_stats_per_s_per_core']}   x JRC per core {r['extract_phase_jrc_ratio']}",
            f"  extraction task: {r['task_s_mean']} s in Airflow, {r['extraction_s_mean']} s in process, overhead "
            f"{r['overhead_s_mean']} s = {100 * r['overhead_share']:.1f} % of task time",
            *[f"    {t}: {v['tasks']} tasks, {v['task_s']} s task, {v['extraction_s']} s extraction, "
              f"{v['overhead_s']} s overhead" for t, v in r["per_product_type"].items()],
            f"  images {r['statuses']}, {r['stats']} parcel-band statistics, hosts {r['hosts']}, "
            f"load average (1 min) before/after {r['load_1m']}",
            *[f"  error: {e[:300]}" for e in r["errors"]],
        ]
    lines += [f"FAILED {text[:600]}" for text in results.get("failed", [])]
    if "celery_2_over_1" in results:
        lines.append(f"Celery 2 workers / 1 worker throughput: {results['celery_2_over_1']}x")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # SIGTERM (a stopped job) unwinds like Ctrl-C: Airflow is stopped and the databases dropped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    options = parse_args(argv)
    results = run(options)
    sys.stdout.write("\n".join(report(results)) + "\n")
    if options.json:
        options.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 1 if results.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
