"""The API in the test Airflow deployment's api-server, for the mount test. Not a test module.

Starting, waiting and stopping are ``cbm_tasks.ops.api_process``'s, shared with the benchmark;
``cbm api serve`` alone is ``api_process.serve_standalone``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import airflow_testenv

from cbm_tasks.ops import airflow_ctl, api_process


@contextmanager
def serve_in_airflow(db_url: str, store_root: Path, *, timeout_s: float = 180) -> Iterator[str]:
    """Start the test deployment's Airflow api-server (plugins/ loaded) on a free port; yield the API's URL."""
    airflow_testenv.metadata_db()
    cfg = dataclasses.replace(airflow_testenv.config(), data_url=db_url, store_root=store_root,
                              port=api_process.free_port())
    airflow_ctl.write_config(cfg)
    with api_process.serve_in_airflow(cfg, timeout_s=timeout_s) as url:
        yield url
